//! Resync: after this node may have missed deliveries (its node stream or the route registry was
//! unreachable, the registry lost its routes, entries were trimmed before they were read, or
//! chat-api sent a whole-node notice), every local socket gets a `resync` frame telling the client
//! to run its catch-up. [`Resync`] is the one owner of that state; one long-lived task sends the
//! broadcasts.
//!
//! Two rules keep the catch-up complete. The gap is marked at once (the epoch), and from then on a
//! socket's next delivery is preceded by its `resync` (`Writer::push_delivery`): a client never
//! sees a message from after the gap before the `resync`, so the watermark its catch-up starts
//! from is below every message it missed. Sockets that get no delivery get their `resync` from the
//! broadcast here, sent only once the routes are registered again (so that a message stored after
//! the client's catch-up began reaches it in real time) and spread over the drain window so that
//! the catch-ups do not hit the API all at once.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use shared::protocol::{Encoding, ServerFrame};

use crate::drain::spread;
use crate::hub::{Hub, QueueLimits};
use crate::routes::RouteSync;
use crate::wsio;

/// How long a resync waits for the routes to be registered again before it goes out anyway.
const ROUTES_WAIT: Duration = Duration::from_secs(10);

pub struct Resync {
    /// Bumped whenever this node may have missed deliveries; a socket behind it gets `resync`
    /// before its next delivery or from the broadcast.
    epoch: AtomicU32,
    /// A broadcast asked for and not yet begun: the reason of the latest request.
    pending: Mutex<Option<&'static str>>,
    wake: Notify,
    /// Set when the node drains: requests are ignored and the task ends.
    stopped: AtomicBool,
    /// The `resync` frame, encoded once per encoding.
    json: Bytes,
    msgpack: Bytes,
}

impl Default for Resync {
    fn default() -> Self {
        Resync {
            epoch: AtomicU32::new(0),
            pending: Mutex::new(None),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            json: wsio::server_frame(Encoding::Json, &ServerFrame::Resync),
            msgpack: wsio::server_frame(Encoding::Msgpack, &ServerFrame::Resync),
        }
    }
}

impl Resync {
    /// The current epoch: a socket that joins now owes no resync for gaps before it.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks the start of a possible gap in this node's deliveries: every socket now owes its
    /// client a `resync` before anything delivered later.
    pub fn begin_gap(&self) -> u32 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The `resync` frame in `encoding`.
    pub fn frame(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Json => &self.json,
            Encoding::Msgpack => &self.msgpack,
        }
    }

    /// Marks a gap at once and asks for a broadcast. Requests coalesce: one that arrives while a
    /// broadcast is under way gets one of its own afterwards (its routes may be newer).
    pub fn request(&self, reason: &'static str) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        // At once, before the routes come back: any delivery from now on goes behind a resync.
        self.begin_gap();
        *self.pending.lock() = Some(reason);
        self.wake.notify_one();
    }

    /// Ends the task and ignores requests from now on (the node drains).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Sends the broadcasts asked for, one after the other, until [`Resync::stop`].
    pub async fn run(&self, hub: &Hub, routes: &RouteSync, window: Duration, limits: QueueLimits) {
        loop {
            self.wake.notified().await;
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(reason) = self.pending.lock().take() else {
                continue;
            };
            routes.wait_synced(ROUTES_WAIT).await;
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            self.broadcast(hub, window, limits, reason).await;
        }
    }

    async fn broadcast(&self, hub: &Hub, window: Duration, limits: QueueLimits, reason: &str) {
        let sockets = hub.all_sockets();
        tracing::info!(
            sockets = sockets.len(),
            reason,
            "asking clients to catch up (resync)"
        );
        metrics::counter!(crate::telemetry::RESYNCS_TOTAL).increment(1);
        let epoch = self.epoch();
        // Sockets that got a delivery since the gap already had their resync ahead of it.
        spread(&sockets, window, Instant::now() + window, |s| {
            s.enqueue_resync(epoch, self.frame(s.encoding).clone(), limits);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shared::routing::memory::MemoryRegistry;
    use shared::routing::{NodeInfo, RouteRegistry};
    use tokio::sync::watch;

    use super::*;
    use crate::hub::SocketHandle;

    const LIMITS: QueueLimits = QueueLimits {
        frames: 16,
        bytes: 1 << 16,
    };

    fn socket(hub: &Hub, user: &str, epoch: u32) -> Arc<SocketHandle> {
        let h = Arc::new(SocketHandle::new(
            hub.next_socket_id(),
            user.into(),
            Encoding::Json,
            epoch,
        ));
        hub.add(h.clone(), 4).unwrap();
        h
    }

    /// Waits (bounded) until `socket` holds `frames` queued frames.
    async fn queued(socket: &SocketHandle, frames: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while socket.writer.queued().0 < frames {
            assert!(Instant::now() < deadline, "{frames} frames in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(socket.writer.queued().0, frames);
    }

    #[tokio::test]
    async fn requests_coalesce_into_one_broadcast_and_a_later_one_gets_its_own() {
        let hub = Hub::new();
        let routes = RouteSync::new();
        let resync = Resync::default();
        let a = socket(&hub, "a", resync.epoch());
        let b = socket(&hub, "b", resync.epoch());
        // Before the task runs: two gaps, one broadcast.
        resync.request("first");
        resync.request("second");
        assert_eq!(resync.epoch(), 2);
        let run = resync.run(&hub, &routes, Duration::ZERO, LIMITS);
        let test = async {
            queued(&a, 1).await;
            queued(&b, 1).await;
            // A socket that joins now owes nothing for the gaps before it.
            let c = socket(&hub, "c", resync.epoch());
            resync.request("third");
            queued(&a, 2).await;
            queued(&b, 2).await;
            queued(&c, 1).await;
            resync.stop();
            resync.request("ignored while draining");
            assert_eq!(resync.epoch(), 3);
        };
        // The task ends on `stop`.
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, test) })
            .await
            .expect("the task ends on stop");
        assert_eq!(a.writer.queued().0, 2);
    }

    #[tokio::test]
    async fn the_broadcast_waits_until_the_routes_are_registered_again() {
        let hub = Hub::new();
        let routes = RouteSync::new();
        let resync = Resync::default();
        let registry = MemoryRegistry::new();
        let info = NodeInfo {
            node_id: "n".into(),
            incarnation: 1,
        };
        registry.heartbeat(&info).await.unwrap();
        let a = socket(&hub, "a", 0);
        routes.mark(&a.user);
        resync.request("registry lost this node");
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = resync.run(&hub, &routes, Duration::ZERO, LIMITS);
        let test = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(a.writer.queued().0, 0, "no resync before the route is back");
            let sync = routes.run(&hub, &registry, &info, stop_rx, |_, _| async {});
            let check = async {
                queued(&a, 1).await;
                let found = registry.lookup(&["a".into()]).await.unwrap();
                assert_eq!(found.len(), 1, "the route is registered before the resync");
                resync.stop();
                let _ = stop_tx.send(true);
            };
            tokio::join!(sync, check);
        };
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, test) })
            .await
            .expect("in time");
    }
}
