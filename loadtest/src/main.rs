//! The `loadtest` binary: scenarios against a running system (see `loadtest --help`).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Load generator and benchmarks for the chat system"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open many idle authenticated sockets and measure the gateway's memory per socket.
    Connect(loadtest::connect::ConnectRun),
    /// End-to-end latency from HTTP send to the frame on another socket, open loop.
    Latency(loadtest::latency::LatencyArgs),
    /// Victim latency alone and under a flood from one user and one IP (rate limits at work).
    Flood(loadtest::flood::FloodArgs),
    /// Chats of a given size, members spread over gateways: deliveries/s, frames per gateway core.
    Fanout(loadtest::fanout::FanoutArgs),
    /// Churn sockets for a bounded time and sample the gateways' RSS over time.
    Soak(loadtest::soak::SoakArgs),
    /// Drop sockets at random under a steady stream; every member must catch up on everything.
    Catchup(loadtest::catchup::CatchUpArgs),
    /// Many clients of a few hot chats catch up at once: store reads per client, catch-up times.
    Storm(loadtest::storm::StormArgs),
    /// Print one table from a directory of result files, each figure beside its budget.
    Report(loadtest::report::ReportArgs),
    /// (internal) one worker process of `connect`.
    #[command(hide = true)]
    ConnectWorker(loadtest::connect::WorkerArgs),
    /// (internal) the attacker process of `flood`.
    #[command(hide = true)]
    FloodAttacker(loadtest::flood::AttackerArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Connect(args) => loadtest::connect::run(args).map(|_| ()),
        Cmd::Latency(args) => tokio::runtime::Runtime::new()?
            .block_on(loadtest::latency::run(args))
            .map(|_| ()),
        Cmd::Flood(args) => tokio::runtime::Runtime::new()?
            .block_on(loadtest::flood::run(args))
            .map(|_| ()),
        Cmd::FloodAttacker(args) => {
            tokio::runtime::Runtime::new()?.block_on(loadtest::flood::attacker(args))
        }
        Cmd::Fanout(args) => tokio::runtime::Runtime::new()?
            .block_on(loadtest::fanout::run(args))
            .map(|_| ()),
        Cmd::Soak(args) => tokio::runtime::Runtime::new()?
            .block_on(loadtest::soak::run(args))
            .map(|_| ()),
        Cmd::Catchup(args) => tokio::runtime::Runtime::new()?
            .block_on(loadtest::catchup::run(args))
            .map(|_| ()),
        Cmd::Storm(args) => tokio::runtime::Runtime::new()?
            .block_on(loadtest::storm::run(args))
            .map(|_| ()),
        Cmd::Report(args) => loadtest::report::run(args),
        Cmd::ConnectWorker(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(loadtest::connect::worker(args)),
    }
}
