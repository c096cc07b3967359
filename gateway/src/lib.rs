//! The gateway: a thin node holding many WebSocket connections. It verifies the JWT on connect,
//! keeps each socket in a local registry, registers user → node routes, reads its own node stream
//! and writes each delivery to the right local sockets. It holds no chat logic.

pub mod acks;
pub mod admin;
pub mod cli;
pub mod config;
pub mod deflate;
pub mod delivery;
mod drain;
mod forward;
pub mod handshakes;
pub mod hub;
mod liveness;
pub mod node;
pub mod presence;
mod resync;
mod routes;
mod server;
mod socket;
mod sweep;
pub mod telemetry;
pub mod typing;
pub mod writer;
pub mod wsio;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

pub use config::{GatewayArgs, Settings};
pub use node::Deps;
use node::Node;

/// Serves sockets on `listener` until `shutdown` resolves, then drains: stops accepting, flips
/// `/readyz`, closes sockets with the draining code spread over the drain window, removes its
/// routes and returns before the drain deadline.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    deps: Deps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = Arc::new(Node::new(settings, deps));
    metrics::gauge!(telemetry::CONNECTIONS_MAX).set(node.settings.max_connections as f64);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, node_id = %node.info.node_id, incarnation = node.info.incarnation, "gateway listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = [
        tokio::spawn(liveness::liveness_task(node.clone(), stop_rx.clone())),
        tokio::spawn(sweep::sweep_task(node.clone(), stop_rx.clone())),
        tokio::spawn({
            let (node, stop) = (node.clone(), stop_rx.clone());
            async move {
                let registry = &*node.deps.registry;
                let synced = |added: Vec<String>, removed: Vec<String>| {
                    let node = node.clone();
                    async move {
                        let (grace, bus) = (node.settings.presence_grace, &*node.deps.bus);
                        presence::routes_synced(&node.presence, grace, bus, &added, &removed).await
                    }
                };
                node.routes
                    .run(&node.hub, registry, &node.info, stop, synced)
                    .await
            }
        }),
        tokio::spawn(delivery::delivery_task(node.clone(), stop_rx.clone())),
        tokio::spawn({
            let node = node.clone();
            async move {
                let limits = node.queue_limits();
                let window = node.settings.drain_window;
                node.resync
                    .run(&node.hub, &node.routes, window, limits)
                    .await
            }
        }),
        tokio::spawn(admin::load_report_task(node.clone(), stop_rx.clone())),
        tokio::spawn({
            let (node, stop) = (node.clone(), stop_rx.clone());
            async move {
                presence::presence_task(&node.presence, &node.hub, &*node.deps.bus, stop).await
            }
        }),
    ];
    let (accept_stop_tx, accept_stop_rx) = watch::channel(false);
    let accept = tokio::spawn(server::accept_loop(node.clone(), listener, accept_stop_rx));

    shutdown.await;
    let deadline = Instant::now() + node.settings.drain_deadline;
    tracing::info!(sockets = node.hub.socket_count(), "draining");
    node.draining.store(true, Ordering::Release);
    node.resync.stop();
    metrics::gauge!(crate::telemetry::DRAINING).set(1.0);
    let _ = accept_stop_tx.send(true);
    let _ = accept.await;

    drain::drain_sockets(&node.hub, node.settings.drain_window, deadline).await;
    let _ = stop_tx.send(true);
    for task in background {
        let _ = tokio::time::timeout_at(deadline, task).await;
    }
    if let Err(e) = tokio::time::timeout_at(deadline, node.deps.registry.leave(&node.info)).await {
        tracing::warn!(error = %e, "could not remove routes before the deadline");
    }
    tracing::info!(left = node.hub.socket_count(), "gateway stopped");
    Ok(())
}

/// Many sockets need many descriptors: lifts the soft open-files limit to the hard one.
pub fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}
