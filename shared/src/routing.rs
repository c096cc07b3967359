//! Routing between the tiers: the route registry (which gateway node holds which user's sockets,
//! node liveness, presence) and the node bus (one stream of deliveries per gateway node). Both are
//! traits with an in-process implementation for embedded mode and a Redis one for distributed mode.

pub mod conformance;
pub mod memory;
pub mod metered;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::{encode_server, Encoding, ServerFrame};

/// A gateway node as the registry knows it: its configured id and the incarnation of this boot.
/// Routes carry the incarnation so that a restarted node never receives its predecessor's routes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub node_id: String,
    pub incarnation: u64,
}

/// One delivery to one node: the recipients on that node and the frame, encoded once (canonical
/// MessagePack of a [`ServerFrame`]).
///
/// An envelope with no recipients is a gap notice ([`Envelope::node_gap`]): the node may have
/// missed deliveries and must tell every local socket to catch up (`resync`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub recipients: Vec<String>,
    pub frame: Bytes,
}

impl Envelope {
    pub fn new(recipients: Vec<String>, frame: &ServerFrame) -> Envelope {
        Envelope {
            recipients,
            frame: Bytes::from(encode_server(Encoding::Msgpack, frame)),
        }
    }

    /// A gap notice for a whole node: every local socket gets `resync`.
    pub fn node_gap() -> Envelope {
        Envelope::new(Vec::new(), &ServerFrame::Resync)
    }

    /// Whether this is a gap notice for the whole node rather than a delivery.
    pub fn is_node_gap(&self) -> bool {
        self.recipients.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceInfo {
    pub user_id: String,
    pub online: bool,
    /// Unix milliseconds of the moment the user's last socket closed; `None` if never seen or online.
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RoutingError {
    #[error("routing backend unavailable: {0}")]
    Unavailable(String),
    #[error("routing backend timed out")]
    Timeout,
}

/// Recipients grouped by the live node that holds their sockets.
pub type NodeGroups = Vec<(String, Vec<String>)>;

#[async_trait]
pub trait RouteRegistry: Send + Sync + 'static {
    /// Marks the node live (and refreshes its liveness). Called at start and periodically.
    /// Returns true if the registry already held this node live with this incarnation; false
    /// means it lost the node (first start, expiry during an outage, a restarted registry) and the
    /// node must re-register its routes.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<bool, RoutingError>;
    /// Removes the node's liveness and all its routes (clean shutdown).
    async fn leave(&self, node: &NodeInfo) -> Result<(), RoutingError>;
    /// Adds a route user → node for each user (their first socket on this node).
    async fn add_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError>;
    /// Removes the route user → node for each user (their last socket on this node closed).
    async fn remove_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError>;
    /// Groups `users` by the live nodes that hold them; users with no live route are left out.
    async fn lookup(&self, users: &[String]) -> Result<NodeGroups, RoutingError>;
    /// Online state and last-seen time per user, in the order given.
    async fn presence(&self, users: &[String]) -> Result<Vec<PresenceInfo>, RoutingError>;
    /// The ids of the nodes live now (for notices to every node when routes cannot be read).
    async fn live_nodes(&self) -> Result<Vec<String>, RoutingError>;
    /// Records, per `(user, online)`, the presence state last announced to the user's
    /// co-members, and returns the state recorded before (`None`: never announced, or forgotten
    /// after the last-seen TTL). Atomic per user, so that of several API replicas handling
    /// reports of the same user, only the one that changes the state announces it.
    async fn swap_announced(
        &self,
        users: &[(String, bool)],
    ) -> Result<Vec<Option<bool>>, RoutingError>;
}

#[async_trait]
pub trait NodeBus: Send + Sync + 'static {
    /// Appends one envelope to each named node's stream, all in one batch.
    async fn publish(&self, entries: Vec<(String, Envelope)>) -> Result<(), RoutingError>;
    /// Starts reading this node's stream from now on.
    async fn subscribe(&self, node: &NodeInfo) -> Result<Box<dyn Subscription>, RoutingError>;
    /// Reports users whose presence may have changed (a gateway: a user's first socket on the
    /// node opened, or the grace period after the last one closed ran out), in one append. The
    /// report carries no state: chat-api reads the truth from the registry when it handles it.
    async fn report_presence(&self, users: Vec<String>) -> Result<(), RoutingError>;
    /// Starts reading presence reports made from now on. Each report reaches one reader of all
    /// those reading (the chat-api replicas share the work).
    async fn presence_reports(&self) -> Result<Box<dyn PresenceReports>, RoutingError>;
}

/// The reading end of [`NodeBus::report_presence`].
#[async_trait]
pub trait PresenceReports: Send {
    /// Waits for the next reported users, at most `max` reports' worth. Returns an empty batch
    /// when the wait timed out without traffic. Reports lost to a full queue or a trimmed
    /// stream are not told: presence read over HTTP is the truth, pushed presence a hint.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<String>, RoutingError>;
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next envelopes, at most `max` of them. Returns an empty batch when the wait
    /// timed out without traffic, so that callers can check for shutdown.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, RoutingError>;
    /// How long the oldest envelope of the last non-empty batch waited in the stream, when the
    /// backend knows (Redis stream ids carry the append time); for the stream-lag metric.
    fn oldest_age(&self) -> Option<Duration> {
        None
    }
    /// Whether envelopes for this node were lost since the last call (entries trimmed from the
    /// stream before they were read, envelopes dropped by a full in-process channel); clears it.
    /// Callers check it after each batch and before delivering it, and treat a loss like an
    /// outage: every local socket gets `resync` before anything delivered later.
    fn take_gap(&mut self) -> bool {
        false
    }
}

/// What a fan-out did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FanOut {
    pub nodes: usize,
    pub recipients_online: usize,
}

/// Looks up the recipients' routes and appends one envelope per target node: two batched
/// backend calls whatever the number of recipients.
pub async fn fan_out(
    registry: &Arc<dyn RouteRegistry>,
    bus: &Arc<dyn NodeBus>,
    users: &[String],
    frame: &ServerFrame,
) -> Result<FanOut, RoutingError> {
    let groups = registry.lookup(users).await?;
    if groups.is_empty() {
        return Ok(FanOut::default());
    }
    // Encoded once for all nodes; `Bytes` clones share the buffer.
    let payload = Envelope::new(Vec::new(), frame).frame;
    let mut report = FanOut {
        nodes: groups.len(),
        recipients_online: 0,
    };
    let entries = groups
        .into_iter()
        .map(|(node, recipients)| {
            report.recipients_online += recipients.len();
            (
                node,
                Envelope {
                    recipients,
                    frame: payload.clone(),
                },
            )
        })
        .collect();
    bus.publish(entries).await?;
    Ok(report)
}
