//! The gateway's metric names, their help texts, and registration at zero so that every series
//! exists (and alerts can be written against it) before the first event. Labels are low
//! cardinality only: close codes, reasons and limit names, never user, chat or connection ids.
//! `docs/OPERATIONS.md` lists these names; a test scrapes a running gateway and checks both agree.

pub const SOCKETS_OPEN: &str = "gateway_sockets_open";
/// `MAX_CONNECTIONS`, so that alerts can compare [`SOCKETS_OPEN`] with it.
pub const CONNECTIONS_MAX: &str = "gateway_connections_max";
pub const CONNECTS_TOTAL: &str = "gateway_connects_total";
pub const DISCONNECTS_TOTAL: &str = "gateway_disconnects_total";
pub const HANDSHAKE_SECONDS: &str = "gateway_handshake_seconds";
pub const FRAMES_IN_TOTAL: &str = "gateway_frames_in_total";
pub const FRAMES_OUT_TOTAL: &str = "gateway_frames_out_total";
pub const DELIVERIES_TOTAL: &str = "gateway_deliveries_total";
pub const SEND_QUEUE_DROPS_TOTAL: &str = "gateway_send_queue_drops_total";
pub const STREAM_LAG_SECONDS: &str = "gateway_stream_lag_seconds";
pub const STREAM_BATCH_SIZE: &str = "gateway_stream_batch_size";
pub const STREAM_ERRORS_TOTAL: &str = "gateway_stream_errors_total";
/// Node-stream reads that found deliveries lost before they were read (trimmed from the Redis
/// stream, dropped by the in-process bus); each marks a gap (`resync`).
pub const STREAM_GAPS_TOTAL: &str = "gateway_stream_gaps_total";
pub const HEARTBEAT_ERRORS_TOTAL: &str = "gateway_heartbeat_errors_total";
pub const ROUTE_SYNC_ERRORS_TOTAL: &str = "gateway_route_sync_errors_total";
pub const ACCEPT_ERRORS_TOTAL: &str = "gateway_accept_errors_total";
/// Upgrades and sockets turned away, by `reason` (see [`REJECT_REASONS`]).
pub const REJECTED_TOTAL: &str = "gateway_rejected_total";
/// Connections refused by a rate limit, by `limit` (see [`RATE_LIMITS`]).
pub const RATE_LIMITED_TOTAL: &str = "gateway_rate_limited_total";
/// 429s answered at once because `CONNECT_RATE_LIMITED_HELD_MAX` attempts were already held.
pub const RATE_LIMITED_UNHELD_TOTAL: &str = "gateway_rate_limited_unheld_total";
pub const DRAINING: &str = "gateway_draining";

/// Every `reason` of [`REJECTED_TOTAL`]; add new ones here so they are registered and documented.
pub const REJECT_REASONS: &[&str] = &[
    "auth",
    "bad_encoding",
    "bad_frame",
    "bad_handshake",
    "draining",
    "handshake_timeout",
    "handshakes_full",
    "ip_handshakes_full",
    "max_connections",
    "not_upgrade",
    "too_many_sockets",
    "rate_limited",
];
/// Every `limit` of [`RATE_LIMITED_TOTAL`]: new connections per client IP.
pub const RATE_LIMITS: &[&str] = &["ip_connections"];

/// Counts one upgrade or socket turned away.
pub fn rejected(reason: &'static str) {
    metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// Counts one connection refused by the rate limit `limit` (and, as every refusal, a rejection).
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED_TOTAL, "limit" => limit).increment(1);
    rejected("rate_limited");
}

/// Describes every gateway metric and registers the unlabelled ones (and every known label value)
/// at zero. Idempotent; call once the recorder is installed.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(SOCKETS_OPEN, "WebSocket connections open on this node");
    describe_gauge!(
        CONNECTIONS_MAX,
        "MAX_CONNECTIONS: the most sockets this node accepts"
    );
    describe_counter!(
        CONNECTS_TOTAL,
        "Sockets accepted (after auth and the upgrade)"
    );
    describe_counter!(DISCONNECTS_TOTAL, "Sockets closed, by close code");
    describe_histogram!(
        HANDSHAKE_SECONDS,
        Unit::Seconds,
        "Time from the upgrade request to a usable socket"
    );
    describe_counter!(FRAMES_IN_TOTAL, "Frames received from clients");
    describe_counter!(FRAMES_OUT_TOTAL, "Frames written to clients");
    describe_counter!(
        DELIVERIES_TOTAL,
        "Frames queued to local sockets from the node stream"
    );
    describe_counter!(SEND_QUEUE_DROPS_TOTAL, "Deliveries dropped because a socket's send queue was full (the socket is closed with 4101)");
    describe_histogram!(
        STREAM_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest entry of each node-stream batch when read"
    );
    describe_histogram!(STREAM_BATCH_SIZE, "Envelopes per node-stream read");
    describe_counter!(STREAM_ERRORS_TOTAL, "Failed node-stream reads");
    describe_counter!(
        STREAM_GAPS_TOTAL,
        "Node-stream reads that found deliveries lost before they were read (each marks a resync)"
    );
    describe_counter!(
        HEARTBEAT_ERRORS_TOTAL,
        "Failed liveness heartbeats to the route registry"
    );
    describe_counter!(
        ROUTE_SYNC_ERRORS_TOTAL,
        "Failed route registrations or removals (retried)"
    );
    describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        "Failed accept() calls (often: out of file descriptors)"
    );
    describe_counter!(REJECTED_TOTAL, "Upgrades or sockets turned away, by reason");
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Connections refused by a rate limit, by limit"
    );
    describe_counter!(
        RATE_LIMITED_UNHELD_TOTAL,
        "429s answered without a hold because CONNECT_RATE_LIMITED_HELD_MAX were already held"
    );
    describe_gauge!(DRAINING, "1 while this node drains for shutdown, else 0");
    metrics::gauge!(SOCKETS_OPEN).increment(0.0);
    metrics::gauge!(DRAINING).increment(0.0);
    for name in [
        CONNECTS_TOTAL,
        FRAMES_IN_TOTAL,
        FRAMES_OUT_TOTAL,
        DELIVERIES_TOTAL,
        SEND_QUEUE_DROPS_TOTAL,
        STREAM_ERRORS_TOTAL,
        STREAM_GAPS_TOTAL,
        HEARTBEAT_ERRORS_TOTAL,
        ROUTE_SYNC_ERRORS_TOTAL,
        ACCEPT_ERRORS_TOTAL,
        RATE_LIMITED_UNHELD_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in REJECT_REASONS {
        metrics::counter!(REJECTED_TOTAL, "reason" => *reason).increment(0);
    }
    for limit in RATE_LIMITS {
        metrics::counter!(RATE_LIMITED_TOTAL, "limit" => *limit).increment(0);
    }
    // Series that appear only on rare events, registered at zero so alerts see them from the start.
    metrics::counter!("gateway_auth_failures_total", "reason" => "expired").increment(0);
    metrics::counter!("gateway_typing_total", "result" => "rate_limited").increment(0);
    metrics::counter!("gateway_resyncs_total").increment(0);
    describe_counter!(
        crate::presence::REPORTS_TOTAL,
        "Users reported to chat-api as possibly changed in presence, by result"
    );
    describe_counter!(
        crate::presence::UNWATCHED_TOTAL,
        "Presence frames not sent to a socket already watching PRESENCE_WATCH_MAX other users"
    );
    metrics::counter!(crate::presence::UNWATCHED_TOTAL).increment(0);
    for result in crate::presence::REPORT_RESULTS {
        metrics::counter!(crate::presence::REPORTS_TOTAL, "result" => *result).increment(0);
    }
    metrics::counter!("ratelimit_backend_errors_total", "bucket" => "conn").increment(0);
}
