//! The node: everything one gateway process shares between its sockets (settings, hub, routing
//! backends, route reconciliation, resync). The background tasks that need all of it live beside
//! it (`liveness.rs`, `delivery.rs`); the ones that need a part take that part (`routes.rs`,
//! `resync.rs`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use shared::auth::Verifier;
use shared::ratelimit::RateLimiter;
use shared::revocation::RevocationCheck;
use shared::routing::{NodeBus, NodeInfo, RouteRegistry};

use crate::acks::AckForwarder;
use crate::config::Settings;
use crate::hub::{Hub, QueueLimits};
use crate::resync::Resync;
use crate::routes::RouteSync;
use crate::typing::TypingForwarder;

/// What the gateway needs from the outside: routing backends, the token verifier and (optionally)
/// the Prometheus handle that `/metrics` renders.
#[derive(Clone)]
pub struct Deps {
    pub registry: Arc<dyn RouteRegistry>,
    pub bus: Arc<dyn NodeBus>,
    pub verifier: Verifier,
    pub metrics: Option<PrometheusHandle>,
    /// Connection-rate limits per client IP (in-process, or Redis shared by all nodes).
    pub limiter: Arc<dyn RateLimiter>,
    /// Per-user token revocations (`POST /v1/admin/users/{user_id}/revoke`), checked on connect
    /// and refresh; shared with the API in embedded mode, in Redis otherwise.
    pub revocations: Arc<RevocationCheck>,
}

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
    /// Coalesces `ack` frames and forwards them to chat-api in batches; `None` without `API_URL`.
    pub acks: Option<AckForwarder>,
    /// Gaps in this node's deliveries and the `resync` broadcasts that close them.
    pub resync: Resync,
    /// Presence reports waiting out their grace period (`crate::presence`).
    pub presence: crate::presence::PresenceReporter,
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
        let acks = settings.api_url.as_deref().and_then(AckForwarder::new);
        Node {
            handshakes,
            handshakes_per_ip: crate::handshakes::HandshakesPerIp::new(
                settings.max_handshakes_per_ip,
            ),
            held_refusals: Semaphore::new(settings.connect_rate_limited_held_max),
            typing,
            acks,
            presence: crate::presence::PresenceReporter::new(),
            settings,
            info,
            deps,
            hub: Hub::new(),
            routes: RouteSync::new(),
            draining: AtomicBool::new(false),
            registry_ok: AtomicBool::new(false),
            resync: Resync::default(),
        }
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            frames: self.settings.send_queue_frames,
            bytes: self.settings.send_queue_bytes,
        }
    }
}
