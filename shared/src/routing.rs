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
use serde::{Deserialize, Serialize};

use crate::close::CloseCode;
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

    /// An instruction to the node instead of a frame: close every local socket of `users` with
    /// `code` (an operator's disconnect or revoke). `not_before` carries a revoke's not-before,
    /// which the node applies to later connects at once.
    pub fn close_sockets(users: Vec<String>, code: CloseCode, not_before: Option<u64>) -> Envelope {
        let control = NodeControl::CloseSockets {
            code: code.code(),
            not_before,
        };
        Envelope {
            recipients: users,
            frame: Bytes::from(rmp_serde::to_vec_named(&control).unwrap_or_default()),
        }
    }

    /// The instruction this envelope carries, if it is one rather than a frame for clients. Costs
    /// a prefix comparison for frames; only a control envelope is decoded.
    pub fn control(&self) -> Option<NodeControl> {
        if !self.frame.starts_with(CLOSE_SOCKETS_PREFIX) {
            return None;
        }
        match rmp_serde::from_slice::<NodeControl>(&self.frame) {
            Ok(control) => Some(control),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable node control envelope; ignored");
                None
            }
        }
    }
}

/// Instructions to a gateway node that travel on its stream like deliveries (so they reach the
/// node in order with them, on the node's own stream) but are acted on by the node and never
/// sent to a client. Encoded as a MessagePack map tagged by `type`, like a frame; no
/// [`ServerFrame`] uses these tags (a test checks), so a node tells them apart by the prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeControl {
    /// Close every local socket of the envelope's recipients with close code `code`; with
    /// `not_before`, also refuse those users' tokens issued before it (Unix seconds) from now on.
    CloseSockets { code: u16, not_before: Option<u64> },
}

/// What every `close_sockets` envelope starts with: a map of three entries whose first key is
/// `type` with the value `close_sockets`.
const CLOSE_SOCKETS_PREFIX: &[u8] = b"\x83\xa4type\xadclose_sockets";

/// What a gateway node reports about itself for the operators' view (`GET /v1/admin/nodes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLoad {
    pub sockets: u64,
    pub users: u64,
}

/// A live node as the operators' view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: String,
    pub incarnation: u64,
    /// The last load this incarnation reported, and when (Unix ms); `None` before its first report.
    pub load: Option<(NodeLoad, u64)>,
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
    /// Records the node's socket and user counts for the operators' view; they expire with the
    /// node's liveness. The default does nothing (a registry without that view).
    async fn report_load(&self, _node: &NodeInfo, _load: NodeLoad) -> Result<(), RoutingError> {
        Ok(())
    }
    /// The live nodes with their incarnations and last reported loads, by node id.
    async fn node_statuses(&self) -> Result<Vec<NodeStatus>, RoutingError> {
        Err(RoutingError::Unavailable(
            "this route registry does not list nodes".into(),
        ))
    }
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
    /// timed out without traffic, so that callers can check for shutdown. A failure returns at
    /// once: the caller paces its retries (`crate::backoff`), so that pauses do not stack.
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

/// Tells every live node to close `user`'s sockets with `code` (and, for a revoke, to refuse its
/// tokens issued before `not_before`). Every live node, not only those the routes name: a socket
/// whose route is still being registered is closed too. Returns the number of nodes told.
pub async fn close_user_sockets(
    registry: &Arc<dyn RouteRegistry>,
    bus: &Arc<dyn NodeBus>,
    user: &str,
    code: CloseCode,
    not_before: Option<u64>,
) -> Result<usize, RoutingError> {
    let nodes = registry.live_nodes().await?;
    if nodes.is_empty() {
        return Ok(0);
    }
    let envelope = Envelope::close_sockets(vec![user.to_string()], code, not_before);
    let count = nodes.len();
    bus.publish(nodes.into_iter().map(|n| (n, envelope.clone())).collect())
        .await?;
    Ok(count)
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
    publish(bus, groups, frame).await
}

/// Appends `frame` once per node of `groups`, to the recipients there: the second half of
/// [`fan_out`], for a caller that looked the routes up itself.
pub async fn publish(
    bus: &Arc<dyn NodeBus>,
    groups: NodeGroups,
    frame: &ServerFrame,
) -> Result<FanOut, RoutingError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_envelopes_round_trip_and_frames_are_never_taken_for_them() {
        for nbf in [None, Some(1_900_000_000)] {
            let e = Envelope::close_sockets(vec!["u".into()], CloseCode::TokenRevoked, nbf);
            assert_eq!(
                e.control(),
                Some(NodeControl::CloseSockets {
                    code: 4205,
                    not_before: nbf
                })
            );
            assert_eq!(e.recipients, ["u"]);
        }
        let frames = [
            ServerFrame::Pong,
            ServerFrame::Resync,
            ServerFrame::Typing {
                chat_id: crate::Id(1),
                user_id: "close_sockets".into(),
            },
            ServerFrame::Event {
                event: serde_json::json!({"type": "close_sockets", "code": 4205}),
            },
            ServerFrame::Refreshed {
                token_expires_at: 1,
            },
        ];
        for f in frames {
            assert_eq!(Envelope::new(vec!["u".into()], &f).control(), None, "{f:?}");
        }
        assert_eq!(Envelope::node_gap().control(), None);
    }
}
