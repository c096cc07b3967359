//! In-process route registry and node bus for embedded mode (one process, both tiers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::{
    Envelope, NodeBus, NodeGroups, NodeInfo, NodeLoad, NodeStatus, PresenceInfo, PresenceReports,
    RouteRegistry, RoutingError, Subscription,
};
use crate::ids::now_unix_ms;

#[derive(Default)]
struct UserRoutes {
    /// (node id, incarnation) pairs; a handful at most.
    nodes: Vec<(String, u64)>,
    last_seen_ms: Option<u64>,
    /// The presence state last announced to the user's co-members.
    announced: Option<bool>,
}

/// Route registry held in memory. Liveness is the set of joined nodes and their incarnations.
#[derive(Default)]
pub struct MemoryRegistry {
    users: DashMap<String, UserRoutes>,
    live: DashMap<String, u64>,
    /// Last reported load per node: (incarnation, load, unix ms).
    loads: DashMap<String, (u64, NodeLoad, u64)>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn is_live(&self, node_id: &str, incarnation: u64) -> bool {
        self.live.get(node_id).is_some_and(|i| *i == incarnation)
    }
}

#[async_trait]
impl RouteRegistry for MemoryRegistry {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<bool, RoutingError> {
        let previous = self.live.insert(node.node_id.clone(), node.incarnation);
        Ok(previous == Some(node.incarnation))
    }

    async fn leave(&self, node: &NodeInfo) -> Result<(), RoutingError> {
        self.live
            .remove_if(&node.node_id, |_, inc| *inc == node.incarnation);
        self.loads
            .remove_if(&node.node_id, |_, (inc, _, _)| *inc == node.incarnation);
        let now = now_unix_ms();
        for mut entry in self.users.iter_mut() {
            let before = entry.nodes.len();
            entry
                .nodes
                .retain(|(n, i)| !(n == &node.node_id && *i == node.incarnation));
            if before > 0 && entry.nodes.is_empty() {
                entry.last_seen_ms = Some(now);
            }
        }
        Ok(())
    }

    async fn add_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        for user in users {
            let mut entry = self.users.entry(user.clone()).or_default();
            // A newer incarnation of the same node replaces the older route.
            entry.nodes.retain(|(n, _)| n != &node.node_id);
            entry.nodes.push((node.node_id.clone(), node.incarnation));
        }
        Ok(())
    }

    async fn remove_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        let now = now_unix_ms();
        for user in users {
            if let Some(mut entry) = self.users.get_mut(user) {
                entry
                    .nodes
                    .retain(|(n, i)| !(n == &node.node_id && *i == node.incarnation));
                if entry.nodes.is_empty() {
                    entry.last_seen_ms = Some(now);
                }
            }
        }
        Ok(())
    }

    async fn lookup(&self, users: &[String]) -> Result<NodeGroups, RoutingError> {
        let mut groups: NodeGroups = Vec::new();
        for user in users {
            let Some(entry) = self.users.get(user) else {
                continue;
            };
            for (node, inc) in &entry.nodes {
                if !self.is_live(node, *inc) {
                    continue;
                }
                match groups.iter_mut().find(|(n, _)| n == node) {
                    Some((_, list)) => list.push(user.clone()),
                    None => groups.push((node.clone(), vec![user.clone()])),
                }
            }
        }
        Ok(groups)
    }

    async fn presence(&self, users: &[String]) -> Result<Vec<PresenceInfo>, RoutingError> {
        Ok(users
            .iter()
            .map(|u| match self.users.get(u) {
                Some(e) => {
                    let online = e.nodes.iter().any(|(n, i)| self.is_live(n, *i));
                    PresenceInfo {
                        user_id: u.clone(),
                        online,
                        last_seen_ms: if online { None } else { e.last_seen_ms },
                    }
                }
                None => PresenceInfo {
                    user_id: u.clone(),
                    online: false,
                    last_seen_ms: None,
                },
            })
            .collect())
    }

    async fn live_nodes(&self) -> Result<Vec<String>, RoutingError> {
        Ok(self.live.iter().map(|e| e.key().clone()).collect())
    }

    async fn report_load(&self, node: &NodeInfo, load: NodeLoad) -> Result<(), RoutingError> {
        self.loads.insert(
            node.node_id.clone(),
            (node.incarnation, load, now_unix_ms()),
        );
        Ok(())
    }

    async fn node_statuses(&self) -> Result<Vec<NodeStatus>, RoutingError> {
        let mut out: Vec<NodeStatus> = self
            .live
            .iter()
            .map(|e| {
                let (node_id, incarnation) = (e.key().clone(), *e.value());
                let load = self
                    .loads
                    .get(&node_id)
                    .filter(|l| l.0 == incarnation)
                    .map(|l| (l.1, l.2));
                NodeStatus {
                    node_id,
                    incarnation,
                    load,
                }
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    async fn swap_announced(
        &self,
        users: &[(String, bool)],
    ) -> Result<Vec<Option<bool>>, RoutingError> {
        Ok(users
            .iter()
            .map(|(user, online)| {
                // Only users the registry already knows (they had a route): no entry is made
                // for a user id that never connected.
                match self.users.get_mut(user) {
                    Some(mut entry) => entry.announced.replace(*online),
                    None => None,
                }
            })
            .collect())
    }
}

/// Describes the in-process bus's metric and registers it at zero (embedded mode).
pub fn describe() {
    metrics::describe_counter!(
        crate::telemetry::BUS_DROPPED_TOTAL,
        "Envelopes the in-process node bus dropped at a full node queue (each marks a resync)"
    );
    metrics::counter!(crate::telemetry::BUS_DROPPED_TOTAL).increment(0);
}

/// Node bus held in memory: one bounded channel per subscribed node. A full channel drops the
/// envelope (counted in `bus_dropped_total`) rather than blocking the API, and marks a gap for
/// that node: its subscription reports it ([`Subscription::take_gap`]) and the node sends
/// `resync` to its sockets, as after an outage.
pub struct MemoryBus {
    nodes: DashMap<String, NodeChannel>,
    capacity: usize,
    /// The reader of presence reports (the latest to ask); reports made while there is none,
    /// or while its queue is full, are dropped.
    presence: parking_lot::Mutex<Option<mpsc::Sender<Vec<String>>>>,
}

/// Report batches queued for the reader of presence reports before further ones are dropped.
const PRESENCE_QUEUE: usize = 1024;

#[derive(Clone)]
struct NodeChannel {
    tx: mpsc::Sender<Envelope>,
    /// Set when an envelope for the node was dropped; taken by its subscription.
    gap: Arc<AtomicBool>,
}

impl MemoryBus {
    pub fn new(capacity: usize) -> Self {
        MemoryBus {
            nodes: DashMap::new(),
            capacity: capacity.max(1),
            presence: parking_lot::Mutex::new(None),
        }
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(65_536)
    }
}

#[async_trait]
impl NodeBus for MemoryBus {
    async fn publish(&self, entries: Vec<(String, Envelope)>) -> Result<(), RoutingError> {
        for (node, envelope) in entries {
            let Some(channel) = self.nodes.get(&node).map(|t| t.clone()) else {
                continue;
            };
            if channel.tx.try_send(envelope).is_err() {
                channel.gap.store(true, Ordering::Release);
                metrics::counter!(crate::telemetry::BUS_DROPPED_TOTAL).increment(1);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, node: &NodeInfo) -> Result<Box<dyn Subscription>, RoutingError> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let gap = Arc::new(AtomicBool::new(false));
        self.nodes.insert(
            node.node_id.clone(),
            NodeChannel {
                tx,
                gap: gap.clone(),
            },
        );
        Ok(Box::new(MemorySubscription { rx, gap }))
    }

    async fn report_presence(&self, users: Vec<String>) -> Result<(), RoutingError> {
        if users.is_empty() {
            return Ok(());
        }
        let tx = self.presence.lock().clone();
        if let Some(tx) = tx {
            if tx.try_send(users).is_err() {
                tracing::debug!("presence report dropped: no room in the reader's queue");
            }
        }
        Ok(())
    }

    async fn presence_reports(&self) -> Result<Box<dyn PresenceReports>, RoutingError> {
        let (tx, rx) = mpsc::channel(PRESENCE_QUEUE);
        *self.presence.lock() = Some(tx);
        Ok(Box::new(MemoryReports { rx }))
    }
}

struct MemoryReports {
    rx: mpsc::Receiver<Vec<String>>,
}

#[async_trait]
impl PresenceReports for MemoryReports {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<String>, RoutingError> {
        let mut batches = Vec::new();
        match tokio::time::timeout(IDLE_WAIT, self.rx.recv_many(&mut batches, max.max(1))).await {
            // Replaced by a newer reader.
            Ok(0) => Err(RoutingError::Unavailable("presence reports closed".into())),
            Ok(_) | Err(_) => Ok(batches.into_iter().flatten().collect()),
        }
    }
}

struct MemorySubscription {
    rx: mpsc::Receiver<Envelope>,
    gap: Arc<AtomicBool>,
}

/// How long an idle subscription waits before returning an empty batch.
const IDLE_WAIT: Duration = Duration::from_millis(500);

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, RoutingError> {
        let mut out = Vec::new();
        match tokio::time::timeout(IDLE_WAIT, self.rx.recv_many(&mut out, max.max(1))).await {
            Ok(0) => Err(RoutingError::Unavailable("bus closed".into())),
            Ok(_) | Err(_) => Ok(out),
        }
    }

    /// A drop is flagged before `publish` returns, so an envelope its caller publishes later is
    /// never delivered before the flag is seen (the caller checks before delivering a batch).
    fn take_gap(&mut self) -> bool {
        self.gap.swap(false, Ordering::AcqRel)
    }
}
