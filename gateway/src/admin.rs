//! What operators do to a node through the API's `/v1/admin/…` endpoints: close a user's sockets
//! on an instruction read from the node stream (a disconnect or a revoke), and report the node's
//! socket and user counts for the node listing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use shared::close::CloseCode;
use shared::routing::{NodeControl, NodeLoad};

use crate::node::Node;

/// How often a node reports its socket and user counts (the admin page's refresh rate).
pub const LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Acts on a control envelope for `users`.
pub fn apply(node: &Node, users: &[String], control: NodeControl) {
    match control {
        NodeControl::CloseSockets { code, not_before } => {
            let Some(code) = CloseCode::from_code(code) else {
                tracing::warn!(
                    code,
                    "close instruction with an unknown close code; ignored"
                );
                return;
            };
            for user in users {
                // First the revoke, then the close: a socket that joins the hub concurrently
                // checks the revocation after joining (`socket::run`), so it either sees the
                // revoke or is in the hub when the close runs.
                if let Some(nbf) = not_before {
                    node.deps.revocations.remember(user, nbf);
                }
                let mut sockets = 0u32;
                node.hub.for_each_socket(user, |socket| {
                    socket.close(code);
                    sockets += 1;
                });
                tracing::info!(%user, code = code.code(), sockets, "closing a user's sockets at an operator's request");
            }
        }
    }
}

/// Reports this node's socket and user counts every [`LOAD_REPORT_INTERVAL`] until `stop`.
pub async fn load_report_task(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        let load = NodeLoad {
            sockets: node.hub.socket_count() as u64,
            users: node.hub.user_count() as u64,
        };
        if let Err(e) = node.deps.registry.report_load(&node.info, load).await {
            // The heartbeat reports registry outages; this only leaves the listing stale.
            tracing::debug!(error = %e, "load report failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(LOAD_REPORT_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}
