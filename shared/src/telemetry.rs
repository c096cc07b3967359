//! Prometheus set-up shared by both services: histogram buckets chosen per metric family (so that
//! dashboards can aggregate quantiles across pods) and the periodic upkeep the exporter needs; and
//! the names and label values of the metrics this crate's code records (rate limits, the Redis
//! routing calls, the in-process bus). Like `gateway::telemetry` and `chat_api::telemetry`, this
//! is the only place a metric name or label value is spelled out: `chat-api/tests/metric_names.rs`
//! fails on a string literal in a metric call elsewhere and checks `docs/OPERATIONS.md` against
//! these names.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, 100 µs to 10 s: fine below 10 ms, where the budgets are.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Count buckets (batch sizes): powers of two up to the largest batch setting worth having.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Rate-limit checks that failed in the backend and passed (fail open) or fell back to this
/// process's limits, by `bucket` (see [`bucket`]).
pub const RATELIMIT_BACKEND_ERRORS_TOTAL: &str = "ratelimit_backend_errors_total";
/// Histogram of one route registry or node bus call to Redis, by `op` (see [`redis_op`]).
pub const REDIS_OP_SECONDS: &str = "redis_op_seconds";
/// Failed or timed-out route registry and node bus calls to Redis, by `op`.
pub const REDIS_ERRORS_TOTAL: &str = "redis_errors_total";
/// Envelopes the in-process node bus (embedded mode) dropped at a full node queue.
pub const BUS_DROPPED_TOTAL: &str = "bus_dropped_total";

/// The `bucket` of [`RATELIMIT_BACKEND_ERRORS_TOTAL`]: the rate limit checked (also part of the
/// limiter's Redis key).
pub mod bucket {
    /// New connections per client address (gateway).
    pub const CONNECTIONS: &str = "conn";
    /// Requests per user (chat-api).
    pub const REQUESTS: &str = "req";
    /// Messages per user (chat-api).
    pub const MESSAGES: &str = "msg";
}

/// Token revocation checks whose Redis read failed or timed out (the token was accepted).
pub const REVOCATION_CHECK_ERRORS_TOTAL: &str = "revocation_check_errors_total";

/// The `op` of the Redis routing metrics: the route registry and node bus methods, and `read`
/// (a node-stream read).
pub mod redis_op {
    pub const HEARTBEAT: &str = "heartbeat";
    pub const LEAVE: &str = "leave";
    pub const ADD_ROUTES: &str = "add_routes";
    pub const REMOVE_ROUTES: &str = "remove_routes";
    pub const LOOKUP: &str = "lookup";
    pub const PRESENCE: &str = "presence";
    pub const LIVE_NODES: &str = "live_nodes";
    pub const REPORT_LOAD: &str = "report_load";
    pub const NODE_STATUSES: &str = "node_statuses";
    pub const SWAP_ANNOUNCED: &str = "swap_announced";
    pub const REPORT_PRESENCE: &str = "report_presence";
    pub const PRESENCE_REPORTS: &str = "presence_reports";
    pub const PUBLISH: &str = "publish";
    pub const SUBSCRIBE: &str = "subscribe";
    pub const READ: &str = "read";
}

/// Every `op` of [`REDIS_OP_SECONDS`] and [`REDIS_ERRORS_TOTAL`].
pub const REDIS_OPS: &[&str] = &[
    redis_op::HEARTBEAT,
    redis_op::LEAVE,
    redis_op::ADD_ROUTES,
    redis_op::REMOVE_ROUTES,
    redis_op::LOOKUP,
    redis_op::PRESENCE,
    redis_op::LIVE_NODES,
    redis_op::REPORT_LOAD,
    redis_op::NODE_STATUSES,
    redis_op::SWAP_ANNOUNCED,
    redis_op::REPORT_PRESENCE,
    redis_op::PRESENCE_REPORTS,
    redis_op::PUBLISH,
    redis_op::SUBSCRIBE,
    redis_op::READ,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("installing the Prometheus recorder: {0}")]
    Install(#[from] BuildError),
}

/// Installs the global Prometheus recorder: every `*_seconds` histogram gets latency buckets,
/// every `*_size` histogram count buckets. Spawns the exporter's upkeep (it trims histogram
/// storage), so call it inside a Tokio runtime.
pub fn install_prometheus() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_S)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), COUNT_BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
