//! The gateway: a thin node holding many WebSocket connections. It verifies the JWT on connect,
//! keeps each socket in a local registry, registers user → node routes, reads its own node stream
//! and writes each delivery to the right local sockets. It holds no chat logic.

pub mod config;

use std::future::Future;
use std::sync::Arc;

use shared::auth::Verifier;
use shared::routing::{NodeBus, NodeInfo, RouteRegistry};

pub use config::{GatewayArgs, Settings};

/// What the gateway needs from the outside: routing backends and the token verifier.
#[derive(Clone)]
pub struct Deps {
    pub registry: Arc<dyn RouteRegistry>,
    pub bus: Arc<dyn NodeBus>,
    pub verifier: Verifier,
}

/// Serves sockets on `listener` until `shutdown` resolves, then drains (tells clients to
/// reconnect, spread over the drain window), removes its routes and returns before the deadline.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    deps: Deps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = (
        listener,
        settings,
        deps,
        NodeInfo {
            node_id: String::new(),
            incarnation: 0,
        },
    );
    shutdown.await;
    anyhow::bail!("gateway not implemented yet")
}
