//! The `gateway` binary: one gateway node in distributed mode (routes and its node stream in
//! Redis). Parses and validates configuration, then calls [`gateway::serve`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use gateway::cli::Cli;
use shared::routing::metered::Metered;
use shared::routing::redis::{connect, RedisOptions};

/// The same allocator as `chat-api` (see its `main.rs`), without transparent huge pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::config::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shared::config::init_tracing(cli.log_format);
    let settings = cli.gateway.settings().context("gateway configuration")?;
    let verifier = cli.jwt.verifier().context("JWT configuration")?;
    gateway::raise_nofile_limit();
    let opts = RedisOptions {
        command_timeout: cli.redis_timeout,
        liveness_ttl: settings.node_ttl,
        ca_file: cli.redis_ca_file.clone(),
        ..RedisOptions::default()
    };
    let routing = connect(&cli.redis_url, opts)
        .await
        .with_context(|| format!("REDIS_URL {}", cli.redis_url))?;
    let listener = tokio::net::TcpListener::bind(cli.gateway.gateway_addr)
        .await
        .with_context(|| format!("binding GATEWAY_ADDR {}", cli.gateway.gateway_addr))?;
    let metrics = shared::telemetry::install_prometheus()?;
    gateway::telemetry::describe();
    shared::routing::metered::describe();
    // Like a rate-limit check: one tiny command on the connect path, bounded tighter.
    let check_timeout = cli.redis_timeout.min(Duration::from_millis(250));
    let revocations = Arc::new(shared::revocation::RevocationCheck::new(
        Arc::new(shared::revocation::RedisRevocations::new(
            routing.client().clone(),
            "",
            check_timeout,
        )),
        cli.revocation.revocation_cache_ttl,
        check_timeout,
    ));
    let deps = gateway::Deps {
        registry: Arc::new(Metered::new(routing.registry.clone())),
        bus: Arc::new(Metered::new(routing.bus.clone())),
        verifier,
        metrics: Some(metrics),
        limiter: Arc::new(shared::ratelimit::RedisLimiter::new(
            routing.client().clone(),
            "",
            // A check is one tiny script; past this, fall back to local limits rather than stall.
            cli.redis_timeout.min(Duration::from_millis(250)),
        )),
        revocations,
    };
    gateway::serve(listener, settings, deps, shutdown_signal()).await?;
    routing.quit().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received");
}
