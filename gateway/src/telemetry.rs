//! The gateway's metric names, their help texts, and registration at zero so that every series
//! exists (and alerts can be written against it) before the first event. Labels are low
//! cardinality only: close codes, reasons and limit names, never user, chat or connection ids.
//! `docs/OPERATIONS.md` lists these names; a test scrapes a running gateway and checks both agree.
//! Names and label values are spelled out here only (`chat-api/tests/metric_names.rs`).

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
/// Upgrade tokens refused, by `reason` (`shared::auth::AuthError::reason`).
pub const AUTH_FAILURES_TOTAL: &str = "gateway_auth_failures_total";
/// Typing frames by `result` (see [`TYPING_RESULTS`]).
pub const TYPING_TOTAL: &str = "gateway_typing_total";
/// `resync` broadcasts to this node's sockets after a gap.
pub const RESYNCS_TOTAL: &str = "gateway_resyncs_total";
/// Upgrades that negotiated permessage-deflate.
pub const DEFLATE_SOCKETS_TOTAL: &str = "gateway_deflate_sockets_total";
/// Frames queued compressed (RSV1 set) to sockets that negotiated permessage-deflate.
pub const DEFLATE_FRAMES_TOTAL: &str = "gateway_deflate_frames_total";
/// Bytes of those frames (header included) as they would have gone uncompressed.
pub const DEFLATE_BYTES_IN_TOTAL: &str = "gateway_deflate_bytes_in_total";
/// Bytes of those frames (header included) as queued, compressed.
pub const DEFLATE_BYTES_OUT_TOTAL: &str = "gateway_deflate_bytes_out_total";
/// Payload bytes of compressed client messages as received.
pub const INFLATE_BYTES_IN_TOTAL: &str = "gateway_inflate_bytes_in_total";
/// Payload bytes of compressed client messages once inflated.
pub const INFLATE_BYTES_OUT_TOTAL: &str = "gateway_inflate_bytes_out_total";

/// The `reason` of [`REJECTED_TOTAL`].
pub mod reason {
    pub const AUTH: &str = "auth";
    pub const BAD_ENCODING: &str = "bad_encoding";
    pub const BAD_FRAME: &str = "bad_frame";
    pub const BAD_HANDSHAKE: &str = "bad_handshake";
    pub const DRAINING: &str = "draining";
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
    /// `MAX_CONCURRENT_HANDSHAKES` reached.
    pub const HANDSHAKES_FULL: &str = "handshakes_full";
    /// `MAX_HANDSHAKES_PER_IP` reached.
    pub const IP_HANDSHAKES_FULL: &str = "ip_handshakes_full";
    pub const MAX_CONNECTIONS: &str = "max_connections";
    pub const NOT_UPGRADE: &str = "not_upgrade";
    pub const TOO_MANY_SOCKETS: &str = "too_many_sockets";
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The token was revoked (`POST /v1/admin/users/{user_id}/revoke`).
    pub const REVOKED: &str = "revoked";
}

/// Every `reason` of [`REJECTED_TOTAL`]; add new ones here so they are registered and documented.
pub const REJECT_REASONS: &[&str] = &[
    reason::AUTH,
    reason::BAD_ENCODING,
    reason::BAD_FRAME,
    reason::BAD_HANDSHAKE,
    reason::DRAINING,
    reason::HANDSHAKE_TIMEOUT,
    reason::HANDSHAKES_FULL,
    reason::IP_HANDSHAKES_FULL,
    reason::MAX_CONNECTIONS,
    reason::NOT_UPGRADE,
    reason::TOO_MANY_SOCKETS,
    reason::RATE_LIMITED,
    reason::REVOKED,
];

/// The `limit` of [`RATE_LIMITED_TOTAL`].
pub mod limit {
    /// New connections per client IP.
    pub const IP_CONNECTIONS: &str = "ip_connections";
}
/// Every `limit` of [`RATE_LIMITED_TOTAL`].
pub const RATE_LIMITS: &[&str] = &[limit::IP_CONNECTIONS];

/// The `result` of [`TYPING_TOTAL`]: what became of one typing frame.
pub mod typing_result {
    /// chat-api accepted the notice (202).
    pub const OK: &str = "ok";
    /// The sender is not a member of the chat (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// Over the per-socket limit here, or the per-user limit of chat-api (429).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// chat-api refused the socket's token (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// chat-api unreachable or answering anything else.
    pub const FAILED: &str = "failed";
    /// Too many forwards in flight on this node.
    pub const SHED: &str = "shed";
}
/// Every `result` of [`TYPING_TOTAL`].
pub const TYPING_RESULTS: &[&str] = &[
    typing_result::OK,
    typing_result::FORBIDDEN,
    typing_result::RATE_LIMITED,
    typing_result::UNAUTHORIZED,
    typing_result::FAILED,
    typing_result::SHED,
];

/// Users reported to chat-api as possibly changed in presence, by `result`.
pub const PRESENCE_REPORTS_TOTAL: &str = "gateway_presence_reports_total";
/// Presence frames not sent to a socket that already watches `PRESENCE_WATCH_MAX` other users.
pub const PRESENCE_UNWATCHED_TOTAL: &str = "gateway_presence_unwatched_total";
/// The `result` of [`PRESENCE_REPORTS_TOTAL`].
pub mod presence_report {
    pub const OK: &str = "ok";
    pub const FAILED: &str = "failed";
}
/// Every `result` of [`PRESENCE_REPORTS_TOTAL`].
pub const PRESENCE_REPORT_RESULTS: &[&str] = &[presence_report::OK, presence_report::FAILED];

/// Delivered receipts (`ack` frames) forwarded to chat-api, by `result` ([`ACK_RESULTS`]).
pub const ACKS_TOTAL: &str = "gateway_acks_total";
/// The `result` of [`ACKS_TOTAL`].
pub mod ack_result {
    /// chat-api recorded the marker.
    pub const FORWARDED: &str = "forwarded";
    /// The socket's user is not a member of the chat (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// chat-api refused the socket's token (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// chat-api unreachable or answering anything else.
    pub const FAILED: &str = "failed";
    /// The node's pending-ack table was full.
    pub const SHED: &str = "shed";
}
/// Every `result` of [`ACKS_TOTAL`].
pub const ACK_RESULTS: &[&str] = &[
    ack_result::FORWARDED,
    ack_result::FORBIDDEN,
    ack_result::UNAUTHORIZED,
    ack_result::FAILED,
    ack_result::SHED,
];

/// Counts one upgrade or socket turned away, `reason` one of [`REJECT_REASONS`].
pub fn rejected(reason: &'static str) {
    metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
}

/// Counts one connection refused by the rate limit `limit` (and, as every refusal, a rejection).
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED_TOTAL, "limit" => limit).increment(1);
    rejected(reason::RATE_LIMITED);
}

/// Counts `frames` queued compressed: `before` and `after` are their bytes uncompressed and as sent.
pub fn compressed(frames: u64, before: u64, after: u64) {
    metrics::counter!(DEFLATE_FRAMES_TOTAL).increment(frames);
    metrics::counter!(DEFLATE_BYTES_IN_TOTAL).increment(before);
    metrics::counter!(DEFLATE_BYTES_OUT_TOTAL).increment(after);
}

/// Counts one compressed client message: its payload as received and once inflated.
pub fn inflated(received: u64, inflated: u64) {
    metrics::counter!(INFLATE_BYTES_IN_TOTAL).increment(received);
    metrics::counter!(INFLATE_BYTES_OUT_TOTAL).increment(inflated);
}

/// Describes every gateway metric and registers the unlabelled ones (and every known label value)
/// at zero. Idempotent; call once the recorder is installed.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    shared::revocation::describe();
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
    describe_counter!(AUTH_FAILURES_TOTAL, "Upgrade tokens refused, by reason");
    describe_counter!(TYPING_TOTAL, "Typing frames by result");
    describe_counter!(
        RESYNCS_TOTAL,
        "resync broadcasts to this node's sockets after a gap"
    );
    describe_counter!(
        DEFLATE_SOCKETS_TOTAL,
        "Upgrades that negotiated permessage-deflate"
    );
    describe_counter!(
        DEFLATE_FRAMES_TOTAL,
        "Frames queued compressed to sockets that negotiated permessage-deflate"
    );
    describe_counter!(
        DEFLATE_BYTES_IN_TOTAL,
        Unit::Bytes,
        "Bytes of the frames queued compressed, as they would have been uncompressed"
    );
    describe_counter!(
        DEFLATE_BYTES_OUT_TOTAL,
        Unit::Bytes,
        "Bytes of the frames queued compressed, as queued"
    );
    describe_counter!(
        INFLATE_BYTES_IN_TOTAL,
        Unit::Bytes,
        "Payload bytes of compressed client messages as received"
    );
    describe_counter!(
        INFLATE_BYTES_OUT_TOTAL,
        Unit::Bytes,
        "Payload bytes of compressed client messages once inflated"
    );
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
        DEFLATE_SOCKETS_TOTAL,
        DEFLATE_FRAMES_TOTAL,
        DEFLATE_BYTES_IN_TOTAL,
        DEFLATE_BYTES_OUT_TOTAL,
        INFLATE_BYTES_IN_TOTAL,
        INFLATE_BYTES_OUT_TOTAL,
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
    metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => shared::auth::AuthError::Expired.reason())
        .increment(0);
    metrics::counter!(TYPING_TOTAL, "result" => typing_result::RATE_LIMITED).increment(0);
    metrics::counter!(RESYNCS_TOTAL).increment(0);
    for result in ACK_RESULTS {
        metrics::counter!(ACKS_TOTAL, "result" => *result).increment(0);
    }
    metrics::counter!(
        shared::telemetry::RATELIMIT_BACKEND_ERRORS_TOTAL,
        "bucket" => shared::telemetry::bucket::CONNECTIONS
    )
    .increment(0);
    describe_counter!(
        PRESENCE_REPORTS_TOTAL,
        "Users reported to chat-api as possibly changed in presence, by result"
    );
    describe_counter!(
        PRESENCE_UNWATCHED_TOTAL,
        "Presence frames not sent to a socket already watching PRESENCE_WATCH_MAX other users"
    );
    metrics::counter!(PRESENCE_UNWATCHED_TOTAL).increment(0);
    for result in PRESENCE_REPORT_RESULTS {
        metrics::counter!(PRESENCE_REPORTS_TOTAL, "result" => *result).increment(0);
    }
}
