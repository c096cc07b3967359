//! The `gateway` binary: one gateway node in distributed mode (routes and its node stream in
//! Redis). Parses and validates configuration, then calls [`gateway::serve`].

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use shared::config::{parse_nonzero_duration, JwtArgs, LogFormat};
use shared::routing::redis::{connect, RedisOptions};

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "WebSocket gateway node")]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Route registry and node bus: `redis://HOST:PORT[/DB]` or `redis-cluster://HOST:PORT,HOST:PORT`.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Deadline of every Redis command.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "1s", value_parser = parse_nonzero_duration)]
    redis_timeout: Duration,
    #[command(flatten)]
    gateway: gateway::GatewayArgs,
    #[command(flatten)]
    jwt: JwtArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shared::config::init_tracing(cli.log_format);
    let settings = cli.gateway.settings().context("gateway configuration")?;
    let verifier = cli.jwt.verifier().context("JWT configuration")?;
    gateway::raise_nofile_limit();
    let opts = RedisOptions {
        command_timeout: cli.redis_timeout,
        liveness_ttl: settings.node_ttl,
        ..RedisOptions::default()
    };
    let routing = connect(&cli.redis_url, opts)
        .await
        .with_context(|| format!("REDIS_URL {}", cli.redis_url))?;
    let listener = tokio::net::TcpListener::bind(cli.gateway.gateway_addr)
        .await
        .with_context(|| format!("binding GATEWAY_ADDR {}", cli.gateway.gateway_addr))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let deps = gateway::Deps {
        registry: routing.registry.clone(),
        bus: routing.bus.clone(),
        verifier,
        metrics: Some(metrics),
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
