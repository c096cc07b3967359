//! The gateway: a thin node holding many WebSocket connections. It verifies the JWT on connect,
//! keeps each socket in a local registry, registers user → node routes, reads its own node stream
//! and writes each delivery to the right local sockets. It holds no chat logic.

pub mod cli;
pub mod config;
pub mod delivery;
pub mod handshakes;
pub mod hub;
pub mod node;
pub mod presence;
mod resync;
mod server;
mod socket;
pub mod telemetry;
pub mod typing;
pub mod wsio;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::time::Instant;

use shared::auth::Verifier;
use shared::close::CloseCode;
use shared::ratelimit::RateLimiter;
use shared::routing::{NodeBus, RouteRegistry};

pub use config::{GatewayArgs, Settings};
use node::Node;

/// What the gateway needs from the outside: routing backends, the token verifier and (optionally)
/// the Prometheus handle that `/metrics` renders.
#[derive(Clone)]
pub struct Deps {
    pub registry: Arc<dyn RouteRegistry>,
    pub bus: Arc<dyn NodeBus>,
    pub verifier: Verifier,
    pub metrics: Option<PrometheusHandle>,
    /// Connection-rate limits per client IP (in-process, or Redis shared by all nodes).
    pub limiter: Arc<dyn RateLimiter>,
}

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
        tokio::spawn(node::liveness_task(node.clone(), stop_rx.clone())),
        tokio::spawn(node::route_sync_task(node.clone(), stop_rx.clone())),
        tokio::spawn(delivery::delivery_task(node.clone(), stop_rx.clone())),
        tokio::spawn(presence::presence_task(node.clone(), stop_rx.clone())),
    ];
    let (accept_stop_tx, accept_stop_rx) = watch::channel(false);
    let accept = tokio::spawn(server::accept_loop(node.clone(), listener, accept_stop_rx));

    shutdown.await;
    let deadline = Instant::now() + node.settings.drain_deadline;
    tracing::info!(sockets = node.hub.socket_count(), "draining");
    node.draining.store(true, Ordering::Release);
    metrics::gauge!("gateway_draining").set(1.0);
    let _ = accept_stop_tx.send(true);
    let _ = accept.await;

    drain_sockets(&node, deadline).await;
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

/// Closes every socket with the draining code, spread evenly over the drain window (socket `i` of
/// `n` at `window × i / n`) so that clients do not reconnect elsewhere all at once, then waits for
/// the sockets to finish (bounded by `deadline`).
async fn drain_sockets(node: &Arc<Node>, deadline: Instant) {
    let sockets = node.hub.all_sockets();
    let window = node.settings.drain_window;
    spread(&sockets, window, deadline, |s| s.close(CloseCode::Draining)).await;
    while node.hub.socket_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `f` on each socket, socket `i` of `n` at `window × i / n` from now (all at once when the
/// window is zero, the rest at once when `deadline` comes first).
pub(crate) async fn spread<T>(
    items: &[T],
    window: Duration,
    deadline: Instant,
    mut f: impl FnMut(&T),
) {
    let start = Instant::now();
    let n = items.len().max(1) as f64;
    for (i, item) in items.iter().enumerate() {
        let at = (start + window.mul_f64(i as f64 / n)).min(deadline);
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        f(item);
    }
}

/// Many sockets need many descriptors: lifts the soft open-files limit to the hard one.
pub fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}
