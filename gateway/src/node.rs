//! The node: everything one gateway process shares between its sockets (settings, hub, routing
//! backends) plus the background work that keeps the route registry true: liveness heartbeats
//! and route reconciliation, which re-registers every local user after the registry lost state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify, Semaphore};

use bytes::Bytes;

use shared::protocol::{Encoding, ServerFrame};
use shared::routing::NodeInfo;

use crate::hub::{Hub, QueueLimits};
use crate::typing::TypingForwarder;
use crate::wsio;
use crate::{Deps, Settings};

pub struct Node {
    pub settings: Settings,
    pub info: NodeInfo,
    pub deps: Deps,
    pub hub: Hub,
    pub routes: RouteSync,
    pub draining: AtomicBool,
    /// Whether the last liveness heartbeat reached the registry (for /readyz).
    pub registry_ok: AtomicBool,
    /// Permits for connections still in their HTTP handshake (slowloris bound).
    pub handshakes: Arc<Semaphore>,
    /// Handshakes in progress per client address (MAX_HANDSHAKES_PER_IP).
    pub handshakes_per_ip: Arc<crate::handshakes::HandshakesPerIp>,
    /// Places for refused upgrade attempts held before their 429.
    pub held_refusals: Semaphore,
    /// Forwards typing frames to chat-api; `None` without `API_URL`.
    pub typing: Option<TypingForwarder>,
    /// Presence reports waiting out their grace period (`crate::presence`).
    pub presence: crate::presence::PresenceReporter,
    /// Resyncs asked for and not yet served, and whether the task serving them runs.
    pub resync_requests: AtomicU64,
    pub resync_running: AtomicBool,
    /// Bumped whenever this node may have missed deliveries; a socket behind it gets `resync`
    /// before its next delivery (see `SocketHandle::enqueue_delivery`) or from the broadcast.
    pub resync_epoch: AtomicU32,
    /// The `resync` frame, encoded once per encoding.
    resync_json: Bytes,
    resync_msgpack: Bytes,
}

impl Node {
    pub fn new(settings: Settings, deps: Deps) -> Node {
        let incarnation = rand::random::<u64>() >> 1;
        let info = NodeInfo {
            node_id: settings.node_id.clone(),
            incarnation,
        };
        let handshakes = Arc::new(Semaphore::new(settings.max_concurrent_handshakes));
        let typing = settings.api_url.as_deref().and_then(TypingForwarder::new);
        Node {
            handshakes,
            handshakes_per_ip: crate::handshakes::HandshakesPerIp::new(
                settings.max_handshakes_per_ip,
            ),
            held_refusals: Semaphore::new(settings.connect_rate_limited_held_max),
            typing,
            presence: crate::presence::PresenceReporter::new(),
            settings,
            info,
            deps,
            hub: Hub::new(),
            routes: RouteSync::new(),
            draining: AtomicBool::new(false),
            registry_ok: AtomicBool::new(false),
            resync_requests: AtomicU64::new(0),
            resync_running: AtomicBool::new(false),
            resync_epoch: AtomicU32::new(0),
            resync_json: wsio::server_frame(Encoding::Json, &ServerFrame::Resync),
            resync_msgpack: wsio::server_frame(Encoding::Msgpack, &ServerFrame::Resync),
        }
    }

    /// Marks the start of a possible gap in this node's deliveries: every socket now owes its
    /// client a `resync` before anything delivered later.
    pub fn begin_gap(&self) -> u32 {
        self.resync_epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn resync_frame(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Json => &self.resync_json,
            Encoding::Msgpack => &self.resync_msgpack,
        }
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            frames: self.settings.send_queue_frames,
            bytes: self.settings.send_queue_bytes,
        }
    }
}

/// Users whose route may need adding or removing, reconciled in batches by one task: the task
/// looks at the hub when it runs, so a connect racing a disconnect always ends in the right state.
pub struct RouteSync {
    dirty: Mutex<HashSet<Arc<str>>>,
    wake: Notify,
    /// Generation of the last `mark`.
    requested: AtomicU64,
    /// Generation reconciled so far.
    done: watch::Sender<u64>,
}

impl RouteSync {
    fn new() -> Self {
        RouteSync {
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            requested: AtomicU64::new(0),
            done: watch::Sender::new(0),
        }
    }

    pub fn mark(&self, user: &Arc<str>) -> u64 {
        self.dirty.lock().insert(user.clone());
        let generation = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        generation
    }

    /// Marks `user` and waits (at most `limit`) until the registry reflects it.
    pub async fn mark_and_wait(&self, user: &Arc<str>, limit: Duration) {
        let generation = self.mark(user);
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done >= generation)).await;
    }

    /// Waits (at most `limit`) until everything marked so far is reconciled.
    pub async fn wait_synced(&self, limit: Duration) {
        let generation = self.requested.load(Ordering::Acquire);
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done >= generation)).await;
    }

    fn mark_all(&self, users: Vec<String>) {
        let mut dirty = self.dirty.lock();
        dirty.extend(users.into_iter().map(Arc::from));
        drop(dirty);
        self.requested.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// Reconciles dirty users with the registry until `stop` is set.
pub async fn route_sync_task(node: Arc<Node>, stop: watch::Receiver<bool>) {
    const BATCH: usize = 4096;
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        let generation = node.routes.requested.load(Ordering::Acquire);
        let batch: Vec<Arc<str>> = {
            let mut dirty = node.routes.dirty.lock();
            let take: Vec<Arc<str>> = dirty.iter().take(BATCH).cloned().collect();
            take.iter().for_each(|u| {
                dirty.remove(u);
            });
            take
        };
        if batch.is_empty() {
            node.routes.done.send_replace(generation);
            let mut stop = stop.clone();
            tokio::select! {
                _ = node.routes.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let (add, remove): (Vec<String>, Vec<String>) = {
            let mut add = Vec::new();
            let mut remove = Vec::new();
            for u in &batch {
                if node.hub.has_user(u) {
                    add.push(u.to_string());
                } else {
                    remove.push(u.to_string());
                }
            }
            (add, remove)
        };
        let registry = &node.deps.registry;
        let result = async {
            if !add.is_empty() {
                registry.add_routes(&node.info, &add).await?;
            }
            if !remove.is_empty() {
                registry.remove_routes(&node.info, &remove).await?;
            }
            Ok::<_, shared::routing::RoutingError>(())
        }
        .await;
        match result {
            Ok(()) => {
                backoff = Duration::from_millis(50);
                crate::presence::routes_synced(&node, &add, &remove).await;
                // Publish progress only once nothing older is pending.
                if node.routes.dirty.lock().is_empty() {
                    node.routes.done.send_replace(generation);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, users = batch.len(), "route registration failed; retrying");
                metrics::counter!("gateway_route_sync_errors_total").increment(1);
                node.routes.dirty.lock().extend(batch);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

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
                    crate::resync::request(&node, "route registry lost this node");
                }
                first = false;
            }
            Err(e) => {
                if node.registry_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "route registry heartbeat failed");
                    // Sends during the outage may not reach this node; whatever it delivers
                    // after it comes behind a resync.
                    node.begin_gap();
                }
                metrics::counter!("gateway_heartbeat_errors_total").increment(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}
