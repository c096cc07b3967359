//! The `chat-api` binary: parses the command line and runs the chosen subcommand.

use chat_api::cli::{self, Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    shared::config::init_tracing(cli.log_format);
    shared::config::exit_code(match cli.command {
        Command::Token(args) => cli::token(args),
        Command::Embedded(args) => cli::embedded(args).await,
        Command::Serve(args) => cli::serve(args).await,
        Command::Migrate(args) => cli::migrate(args).await,
        Command::Listen(args) => cli::listen(args).await,
    })
}
