//! chat-api metric names, their help texts, and registration at zero so that every series exists
//! (and alerts can be written against it) before the first event. Labels are low cardinality only
//! (method, route template, status, op, reason, limit), never user or chat ids.
//! `docs/OPERATIONS.md` lists these names; a test scrapes a running API and checks both agree.

/// Requests by `method` (see [`method_label`]), `route` (the template, e.g.
/// `/v1/chats/{chat_id}`, or [`UNMATCHED_ROUTE`]) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "api_http_requests_total";
/// Request latency by `method`, `route` and `status`.
pub const HTTP_REQUEST_SECONDS: &str = "api_http_request_seconds";
/// Message store call latency by `op` (the store method).
pub const STORE_OP_SECONDS: &str = "api_store_op_seconds";
/// Failed message store calls by `op`.
pub const STORE_ERRORS_TOTAL: &str = "api_store_errors_total";
/// Requests answered with an error, by `reason` (the problem type slug, e.g. `payload-too-large`).
pub const REJECTED_TOTAL: &str = "api_rejected_total";
/// Requests refused by a rate limit (answered 429), by `limit` (see [`RATE_LIMITS`]).
pub const RATE_LIMITED_TOTAL: &str = "api_rate_limited_total";
/// 429s answered at once because `API_RATE_LIMITED_HELD_MAX` requests were already held.
pub const RATE_LIMITED_UNHELD_TOTAL: &str = "api_rate_limited_unheld_total";
pub const DRAINING: &str = "api_draining";
/// Connections cut by the server, by `reason` (see [`CONNECTION_CUT_REASONS`]).
pub const CONNECTIONS_CUT_TOTAL: &str = "api_connections_cut_total";
/// Every `reason` of [`CONNECTIONS_CUT_TOTAL`]: a request head slower than
/// `API_HEADER_READ_TIMEOUT`.
pub const CONNECTION_CUT_REASONS: &[&str] = &["header_read_timeout"];
pub const MESSAGES_CREATED_TOTAL: &str = "api_messages_created_total";
pub const IDEMPOTENT_REPLAYS_TOTAL: &str = "api_idempotent_replays_total";
pub const FANOUT_SECONDS: &str = "api_fanout_duration_seconds";
pub const FANOUT_RECIPIENTS_ONLINE_TOTAL: &str = "api_fanout_recipients_online_total";
pub const FANOUT_ERRORS_TOTAL: &str = "api_fanout_errors_total";
/// Fan-outs that failed after their 201, by `outcome` of the background retry (see
/// [`FANOUT_RETRY_OUTCOMES`]).
pub const FANOUT_RETRIES_TOTAL: &str = "api_fanout_retries_total";
/// Failed fan-outs waiting for or in a background retry.
pub const FANOUT_RETRY_QUEUE: &str = "api_fanout_retry_queue";
/// `resync` notices appended to node streams for members a fan-out may have missed, by `scope`
/// (see [`FANOUT_NOTICE_SCOPES`]).
pub const FANOUT_RESYNC_NOTICES_TOTAL: &str = "api_fanout_resync_notices_total";
pub const PUSH_EVENTS_TOTAL: &str = "api_push_events_total";
pub const AUTH_FAILURES_TOTAL: &str = "api_auth_failures_total";
pub const INTERNAL_ERRORS_TOTAL: &str = "api_internal_errors_total";
/// Redis time minus this host's clock at the last measurement (`chat-api serve`; 0 embedded).
pub const CLOCK_OFFSET_SECONDS: &str = "api_clock_offset_seconds";

/// Every `method` of the HTTP metrics: the standard methods; any other (a client may send any
/// token as a method) is counted as [`OTHER_METHOD`], so the label set stays closed.
pub const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];
/// The `method` label of every request whose method is not in [`HTTP_METHODS`].
pub const OTHER_METHOD: &str = "other";
/// The `route` label of requests that matched no route (never the raw path).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The `method` label of a request: one of [`HTTP_METHODS`] or [`OTHER_METHOD`].
pub fn method_label(method: &axum::http::Method) -> &'static str {
    HTTP_METHODS
        .iter()
        .find(|m| **m == method.as_str())
        .copied()
        .unwrap_or(OTHER_METHOD)
}

/// Every `outcome` of [`FANOUT_RETRIES_TOTAL`]: delivered by a retry; abandoned at the end of
/// `API_FANOUT_RETRY_WINDOW`; shed (the retry queue was full, or retries are off). The last two
/// become `resync` notices.
pub const FANOUT_RETRY_OUTCOMES: &[&str] = &["delivered", "abandoned", "shed"];
/// Every `scope` of [`FANOUT_RESYNC_NOTICES_TOTAL`]: an entry naming the members on one node, or
/// a whole-node notice (members or routes unknown).
pub const FANOUT_NOTICE_SCOPES: &[&str] = &["members", "node"];

/// Every `limit` of [`RATE_LIMITED_TOTAL`]: messages and requests per user (SPEC §6).
pub const RATE_LIMITS: &[&str] = &["user_messages", "user_requests"];
/// Every `op` of the store metrics: the [`crate::store::MessageStore`] methods.
pub const STORE_OPS: &[&str] = &[
    "create_chat",
    "get_chat",
    "user_chats",
    "add_members",
    "remove_member",
    "is_member",
    "members",
    "insert_message",
    "history",
    "ping",
];

/// Counts one request refused by the rate limit `limit`. The 429 itself is counted in
/// [`REJECTED_TOTAL`] by the error response.
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED_TOTAL, "limit" => limit).increment(1);
}

/// Describes every chat-api metric and registers the unlabelled ones (and every known label
/// value) at zero. Idempotent; call once the recorder is installed.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency by method, route template and status"
    );
    describe_histogram!(
        STORE_OP_SECONDS,
        Unit::Seconds,
        "Message store call latency by op"
    );
    describe_counter!(STORE_ERRORS_TOTAL, "Failed message store calls by op");
    describe_counter!(
        REJECTED_TOTAL,
        "Requests answered with a problem+json error, by problem type"
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests refused by a rate limit, by limit"
    );
    describe_counter!(
        RATE_LIMITED_UNHELD_TOTAL,
        "429s answered without a hold because API_RATE_LIMITED_HELD_MAX were already held"
    );
    describe_gauge!(DRAINING, "1 while this replica drains for shutdown, else 0");
    describe_counter!(
        CONNECTIONS_CUT_TOTAL,
        "Connections cut by the server (a request head slower than API_HEADER_READ_TIMEOUT), by reason"
    );
    for reason in CONNECTION_CUT_REASONS {
        metrics::counter!(CONNECTIONS_CUT_TOTAL, "reason" => *reason).increment(0);
    }
    describe_counter!(
        MESSAGES_CREATED_TOTAL,
        "Messages stored (idempotent replays excluded)"
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS_TOTAL,
        "Sends answered with an already stored message"
    );
    describe_histogram!(
        FANOUT_SECONDS,
        Unit::Seconds,
        "Route lookup and node-stream append after a message is stored"
    );
    describe_counter!(
        FANOUT_RECIPIENTS_ONLINE_TOTAL,
        "Recipients with a live route, summed over fan-outs"
    );
    describe_counter!(
        FANOUT_ERRORS_TOTAL,
        "Fan-outs that failed (backend) or ran out of time (timeout)"
    );
    describe_counter!(
        FANOUT_RETRIES_TOTAL,
        "Fan-outs that failed after their 201, by outcome of the background retry (delivered, abandoned, shed)"
    );
    describe_gauge!(
        FANOUT_RETRY_QUEUE,
        "Failed fan-outs waiting for or in a background retry"
    );
    describe_counter!(
        FANOUT_RESYNC_NOTICES_TOTAL,
        "resync notices appended to node streams for members a fan-out may have missed, by scope"
    );
    describe_counter!(PUSH_EVENTS_TOTAL, "Backend push events accepted");
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Requests with a missing or invalid token"
    );
    describe_counter!(
        INTERNAL_ERRORS_TOTAL,
        "Requests that failed with a 500 (logged at ERROR)"
    );
    describe_gauge!(
        CLOCK_OFFSET_SECONDS,
        Unit::Seconds,
        "Redis time minus this host's clock at the last measurement (message ids follow Redis time)"
    );
    metrics::gauge!(DRAINING).increment(0.0);
    metrics::gauge!(CLOCK_OFFSET_SECONDS).increment(0.0);
    metrics::gauge!(FANOUT_RETRY_QUEUE).increment(0.0);
    for outcome in FANOUT_RETRY_OUTCOMES {
        metrics::counter!(FANOUT_RETRIES_TOTAL, "outcome" => *outcome).increment(0);
    }
    for scope in FANOUT_NOTICE_SCOPES {
        metrics::counter!(FANOUT_RESYNC_NOTICES_TOTAL, "scope" => *scope).increment(0);
    }
    for name in [
        MESSAGES_CREATED_TOTAL,
        IDEMPOTENT_REPLAYS_TOTAL,
        FANOUT_RECIPIENTS_ONLINE_TOTAL,
        PUSH_EVENTS_TOTAL,
        AUTH_FAILURES_TOTAL,
        INTERNAL_ERRORS_TOTAL,
        RATE_LIMITED_UNHELD_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["backend", "timeout"] {
        metrics::counter!(FANOUT_ERRORS_TOTAL, "reason" => reason).increment(0);
    }
    for (slug, _, _) in crate::error::PROBLEM_TYPES {
        metrics::counter!(REJECTED_TOTAL, "reason" => *slug).increment(0);
    }
    for limit in RATE_LIMITS {
        metrics::counter!(RATE_LIMITED_TOTAL, "limit" => *limit).increment(0);
    }
    for op in STORE_OPS {
        metrics::counter!(STORE_ERRORS_TOTAL, "op" => *op).increment(0);
    }
    describe_counter!(
        crate::presence::REPORTS_TOTAL,
        "Users reported by gateways as possibly changed in presence, by result (changed, unchanged, failed)"
    );
    describe_histogram!(
        crate::presence::WATCHERS,
        "Co-members one presence change was fanned out to"
    );
    for result in crate::presence::RESULTS {
        metrics::counter!(crate::presence::REPORTS_TOTAL, "result" => *result).increment(0);
    }
    // Series that appear only on rare events, registered at zero so alerts see them from the start.
    metrics::counter!("api_typing_notices_total").increment(0);
    metrics::counter!("api_typing_rate_limited_total").increment(0);
    for bucket in ["req", "msg"] {
        metrics::counter!("ratelimit_backend_errors_total", "bucket" => bucket).increment(0);
    }
}
