//! Liveness: the heartbeat that keeps this node's key in the route registry fresh, and what
//! happens when the registry turns out to have lost the node.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::node::Node;

/// Keeps the node's liveness key fresh; after the registry lost the node (an outage or a restart
/// of the registry), re-registers every local user.
pub async fn liveness_task(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let period = node.settings.node_ttl / 3;
    let mut first = true;
    loop {
        match node.deps.registry.heartbeat(&node.info).await {
            Ok(known) => {
                let was_ok = node.registry_ok.swap(true, Ordering::AcqRel);
                if (!known || !was_ok) && !first {
                    let users = node.hub.users();
                    tracing::info!(
                        users = users.len(),
                        "route registry lost this node; re-registering routes"
                    );
                    node.routes.mark_all(users);
                    node.resync.request("route registry lost this node");
                }
                first = false;
            }
            Err(e) => {
                if node.registry_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "route registry heartbeat failed");
                    // Sends during the outage may not reach this node; whatever it delivers
                    // after it comes behind a resync.
                    node.resync.begin_gap();
                }
                metrics::counter!(crate::telemetry::HEARTBEAT_ERRORS_TOTAL).increment(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}
