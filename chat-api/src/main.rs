//! The `chat-api` binary: parses the command line and runs the chosen subcommand.

use chat_api::cli::{self, Cli, Command};

/// mimalloc instead of the system allocator: a send allocates and frees a few hundred small
/// objects across threads; with it the API spends ~20 % less CPU per message. Built without
/// transparent huge pages (`no_thp`): with them an idle socket of `embedded` cost ~40 % more RSS
/// (docs/BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from_env();
    shared::config::init_tracing(cli.log_format);
    // Faults injected by tests through `FAILPOINTS` (only in builds with the `failpoints`
    // feature, which the tests' build enables; release builds ignore the variable).
    let _failpoints = fail::FailScenario::setup();
    shared::config::exit_code(match cli.command {
        Command::Token(args) => cli::token(args),
        Command::Embedded(args) => cli::embedded(args).await,
        Command::Serve(args) => cli::serve(args).await,
        Command::Migrate(args) => cli::migrate(args).await,
        Command::Listen(args) => cli::listen(args).await,
    })
}
