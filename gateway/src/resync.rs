//! Resync: after this node may have missed deliveries (its node stream or the route registry was
//! unreachable, or the registry lost its routes), every local socket gets a `resync` frame telling
//! the client to run its catch-up.
//!
//! Two rules keep the catch-up complete. The gap is marked at once (the node's resync epoch), and
//! from then on a socket's next delivery is preceded by its `resync`: a client never sees a message
//! from after the gap before the `resync`, so the watermark its catch-up starts from is below every
//! message it missed. Sockets that get no delivery get their `resync` from the broadcast here, sent
//! only once the routes are registered again (so that a message stored after the client's catch-up
//! began reaches it in real time) and spread over the drain window so that the catch-ups do not hit
//! the API all at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::node::Node;

/// How long a resync waits for the routes to be registered again before it goes out anyway.
const ROUTES_WAIT: Duration = Duration::from_secs(10);

/// Asks for a resync. One task serves requests one after the other; a request that arrives while
/// one is being served gets a resync of its own afterwards (its routes may be newer).
pub fn request(node: &Arc<Node>, reason: &'static str) {
    if node.draining.load(Ordering::Acquire) {
        return;
    }
    // At once, before the routes come back: any delivery from now on goes behind a resync.
    node.begin_gap();
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
    let epoch = node.resync_epoch.load(Ordering::Acquire);
    let window = node.settings.drain_window;
    let limits = node.queue_limits();
    // Sockets that got a delivery since the gap already had their resync ahead of it.
    crate::drain::spread(&sockets, window, Instant::now() + window, |s| {
        s.enqueue_resync(epoch, node.resync_frame(s.encoding).clone(), limits);
    })
    .await;
}
