//! Resync: after this node may have missed deliveries (its node stream or the route registry was
//! unreachable, or the registry lost its routes), every local socket gets a `resync` frame telling
//! the client to run its catch-up. Sent only once the routes are registered again, so that a
//! message stored after a client's catch-up began reaches it in real time; spread over the drain
//! window so that the catch-ups do not hit the API all at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use shared::protocol::{Encoding, ServerFrame};

use crate::node::Node;
use crate::wsio;

/// How long a resync waits for the routes to be registered again before it goes out anyway.
const ROUTES_WAIT: Duration = Duration::from_secs(10);

/// Asks for a resync. One task serves requests one after the other; a request that arrives while
/// one is being served gets a resync of its own afterwards (its routes may be newer).
pub fn request(node: &Arc<Node>, reason: &'static str) {
    if node.draining.load(Ordering::Acquire) {
        return;
    }
    node.resync_requests.fetch_add(1, Ordering::AcqRel);
    if node.resync_running.swap(true, Ordering::AcqRel) {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        loop {
            if node.resync_requests.swap(0, Ordering::AcqRel) == 0 {
                node.resync_running.store(false, Ordering::Release);
                // A request between the swap and the store found the task still running.
                if node.resync_requests.load(Ordering::Acquire) > 0
                    && !node.resync_running.swap(true, Ordering::AcqRel)
                {
                    continue;
                }
                return;
            }
            node.routes.wait_synced(ROUTES_WAIT).await;
            if node.draining.load(Ordering::Acquire) {
                node.resync_running.store(false, Ordering::Release);
                return;
            }
            send(&node, reason).await;
        }
    });
}

async fn send(node: &Arc<Node>, reason: &'static str) {
    let sockets = node.hub.all_sockets();
    tracing::info!(
        sockets = sockets.len(),
        reason,
        "asking clients to catch up (resync)"
    );
    metrics::counter!("gateway_resyncs_total").increment(1);
    let json = wsio::server_frame(Encoding::Json, &ServerFrame::Resync);
    let msgpack = wsio::server_frame(Encoding::Msgpack, &ServerFrame::Resync);
    let window = node.settings.drain_window;
    let limits = node.queue_limits();
    crate::spread(&sockets, window, Instant::now() + window, |s| {
        let frame = match s.encoding {
            Encoding::Json => json.clone(),
            Encoding::Msgpack => msgpack.clone(),
        };
        s.enqueue(frame, limits);
    })
    .await;
}
