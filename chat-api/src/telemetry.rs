//! chat-api metric names, their help texts, and registration at zero so that every series exists
//! (and alerts can be written against it) before the first event. Labels are low cardinality only
//! (method, route template, status, op, reason, limit), never user or chat ids.
//! `docs/OPERATIONS.md` lists these names; a test scrapes a running API and checks both agree.
//! Names and label values are spelled out here only (`chat-api/tests/metric_names.rs`).

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
/// The `reason` of [`CONNECTIONS_CUT_TOTAL`].
pub mod cut_reason {
    /// A request head slower than `API_HEADER_READ_TIMEOUT`.
    pub const HEADER_READ_TIMEOUT: &str = "header_read_timeout";
}
/// Every `reason` of [`CONNECTIONS_CUT_TOTAL`].
pub const CONNECTION_CUT_REASONS: &[&str] = &[cut_reason::HEADER_READ_TIMEOUT];
pub const MESSAGES_CREATED_TOTAL: &str = "api_messages_created_total";
pub const IDEMPOTENT_REPLAYS_TOTAL: &str = "api_idempotent_replays_total";
pub const FANOUT_SECONDS: &str = "api_fanout_duration_seconds";
pub const FANOUT_RECIPIENTS_ONLINE_TOTAL: &str = "api_fanout_recipients_online_total";
/// Fan-outs that failed, by `reason` (see [`FANOUT_ERROR_REASONS`]).
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
/// Edits and deletes stored, by `kind` ([`MESSAGE_CHANGE_KINDS`]); repeats that changed nothing
/// are not counted.
pub const MESSAGE_CHANGES_TOTAL: &str = "api_message_changes_total";
/// Every `kind` of [`MESSAGE_CHANGES_TOTAL`].
pub const MESSAGE_CHANGE_KINDS: &[&str] = &[change_kind::EDIT, change_kind::DELETE];
/// The `kind` of [`MESSAGE_CHANGES_TOTAL`].
pub mod change_kind {
    pub const EDIT: &str = "edit";
    pub const DELETE: &str = "delete";
}
/// Members removed by someone else (moderation), not counting members who left.
pub const MEMBERS_REMOVED_TOTAL: &str = "api_members_removed_total";
pub const AUTH_FAILURES_TOTAL: &str = "api_auth_failures_total";
/// The `reason` of [`AUTH_FAILURES_TOTAL`] besides `shared::auth::AuthError::reason`.
pub mod auth_reason {
    /// The token was issued before its user's revocation.
    pub const REVOKED: &str = "revoked";
}
/// Operators' actions through `/v1/admin/users/…`, by `action` (see [`ADMIN_ACTIONS`]).
pub const ADMIN_ACTIONS_TOTAL: &str = "api_admin_actions_total";
/// Every `action` of [`ADMIN_ACTIONS_TOTAL`].
pub const ADMIN_ACTIONS: &[&str] = &[admin_action::DISCONNECT, admin_action::REVOKE];
/// The `action` of [`ADMIN_ACTIONS_TOTAL`].
pub mod admin_action {
    pub const DISCONNECT: &str = "disconnect";
    pub const REVOKE: &str = "revoke";
}
pub const INTERNAL_ERRORS_TOTAL: &str = "api_internal_errors_total";
/// Offline hook (`crate::notify`): queue entries added (one per offline member and message).
pub const NOTIFY_QUEUED_TOTAL: &str = "api_notify_queued_total";
/// Notification batches the webhook accepted (2xx).
pub const NOTIFY_SENT_TOTAL: &str = "api_notify_sent_total";
/// Webhook attempts that failed and were retried.
pub const NOTIFY_RETRIES_TOTAL: &str = "api_notify_retries_total";
/// Batches moved to the dead letters after `NOTIFY_MAX_ATTEMPTS`.
pub const NOTIFY_DEAD_LETTERED_TOTAL: &str = "api_notify_dead_lettered_total";
/// Queue entries dropped, by `reason` (see [`NOTIFY_DROP_REASONS`]).
pub const NOTIFY_DROPPED_TOTAL: &str = "api_notify_dropped_total";
/// The `reason` of [`NOTIFY_DROPPED_TOTAL`].
pub mod notify_drop {
    /// The queue held `NOTIFY_QUEUE_MAX` entries.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The user had a live route again when the batch was due (they see the messages on their
    /// sockets).
    pub const CAME_ONLINE: &str = "came_online";
}
/// Every `reason` of [`NOTIFY_DROPPED_TOTAL`].
pub const NOTIFY_DROP_REASONS: &[&str] = &[notify_drop::QUEUE_FULL, notify_drop::CAME_ONLINE];
/// Stored messages whose offline members could not be queued within the fan-out retry window.
pub const NOTIFY_ENQUEUE_FAILURES_TOTAL: &str = "api_notify_enqueue_failures_total";
/// Queue entries this replica's dispatcher holds (claimed, waiting for their window or in flight).
pub const NOTIFY_HELD: &str = "api_notify_held";
/// Read and delivered marker updates by `kind` ([`MARKER_KINDS`]) and `outcome`
/// ([`MARKER_OUTCOMES`]).
pub const MARKERS_TOTAL: &str = "api_markers_total";
/// Receipt frames (`read`, `delivered`) that could not be handed to the gateways, by `kind`.
/// Receipts are not retried: the markers are stored and readable.
pub const RECEIPT_FANOUT_ERRORS_TOTAL: &str = "api_receipt_fanout_errors_total";
/// Users reported by gateways as possibly changed in presence, by `result`.
pub const PRESENCE_REPORTS_TOTAL: &str = "api_presence_reports_total";
/// Co-members one presence change was fanned out to (histogram).
pub const PRESENCE_FANOUT_SIZE: &str = "api_presence_fanout_size";
/// The `result` of [`PRESENCE_REPORTS_TOTAL`].
pub mod presence_result {
    /// A change was announced.
    pub const CHANGED: &str = "changed";
    /// The state was already announced.
    pub const UNCHANGED: &str = "unchanged";
    /// The registry or store could not be read, or the fan-out failed.
    pub const FAILED: &str = "failed";
}
/// Every `result` of [`PRESENCE_REPORTS_TOTAL`].
pub const PRESENCE_RESULTS: &[&str] = &[
    presence_result::CHANGED,
    presence_result::UNCHANGED,
    presence_result::FAILED,
];
/// Redis time minus this host's clock at the last measurement (`chat-api serve`; 0 embedded).
pub const CLOCK_OFFSET_SECONDS: &str = "api_clock_offset_seconds";
pub const TYPING_NOTICES_TOTAL: &str = "api_typing_notices_total";
pub const TYPING_RATE_LIMITED_TOTAL: &str = "api_typing_rate_limited_total";
/// Inserts committed per SQLite transaction (group commit; SQLite store only).
pub const SQLITE_GROUP_COMMIT_SIZE: &str = "api_sqlite_group_commit_size";
/// Time the group-commit writer waited for SQLite's write lock before each group (another
/// process sharing the file, or another connection, holding it; SQLite store only).
pub const SQLITE_WRITE_LOCK_WAIT_SECONDS: &str = "api_sqlite_write_lock_wait_seconds";

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

/// The `reason` of [`FANOUT_ERRORS_TOTAL`].
pub mod fanout_error {
    /// The route registry or the node bus failed.
    pub const BACKEND: &str = "backend";
    /// The fan-out ran out of time.
    pub const TIMEOUT: &str = "timeout";
}
/// Every `reason` of [`FANOUT_ERRORS_TOTAL`].
pub const FANOUT_ERROR_REASONS: &[&str] = &[fanout_error::BACKEND, fanout_error::TIMEOUT];

/// The `outcome` of [`FANOUT_RETRIES_TOTAL`]. The last two become `resync` notices.
pub mod retry_outcome {
    /// Delivered by a retry.
    pub const DELIVERED: &str = "delivered";
    /// Still failing at the end of `API_FANOUT_RETRY_WINDOW`.
    pub const ABANDONED: &str = "abandoned";
    /// The retry queue was full, or retries are off.
    pub const SHED: &str = "shed";
}
/// Every `outcome` of [`FANOUT_RETRIES_TOTAL`].
pub const FANOUT_RETRY_OUTCOMES: &[&str] = &[
    retry_outcome::DELIVERED,
    retry_outcome::ABANDONED,
    retry_outcome::SHED,
];

/// The `scope` of [`FANOUT_RESYNC_NOTICES_TOTAL`].
pub mod notice_scope {
    /// An entry naming the members on one node.
    pub const MEMBERS: &str = "members";
    /// A whole-node notice (members or routes unknown).
    pub const NODE: &str = "node";
}
/// Every `scope` of [`FANOUT_RESYNC_NOTICES_TOTAL`].
pub const FANOUT_NOTICE_SCOPES: &[&str] = &[notice_scope::MEMBERS, notice_scope::NODE];

/// The `limit` of [`RATE_LIMITED_TOTAL`] (SPEC §6).
pub mod limit {
    /// Messages per user.
    pub const USER_MESSAGES: &str = "user_messages";
    /// Requests per user.
    pub const USER_REQUESTS: &str = "user_requests";
}
/// Every `limit` of [`RATE_LIMITED_TOTAL`].
pub const RATE_LIMITS: &[&str] = &[limit::USER_MESSAGES, limit::USER_REQUESTS];

/// The `op` of the store metrics: the [`crate::store::MessageStore`] methods.
pub mod store_op {
    pub const CREATE_CHAT: &str = "create_chat";
    pub const GET_CHAT: &str = "get_chat";
    pub const USER_CHATS: &str = "user_chats";
    pub const ADD_MEMBERS: &str = "add_members";
    pub const REMOVE_MEMBER: &str = "remove_member";
    pub const IS_MEMBER: &str = "is_member";
    pub const MEMBERS: &str = "members";
    pub const INSERT_MESSAGE: &str = "insert_message";
    pub const HISTORY: &str = "history";
    pub const PING: &str = "ping";
    pub const ADVANCE_MARKER: &str = "advance_marker";
    pub const MARKERS: &str = "markers";
    pub const READ_MARKERS: &str = "read_markers";
    pub const COUNT_UNREAD: &str = "count_unread";
    pub const GET_MESSAGE: &str = "get_message";
    pub const CHANGE_MESSAGE: &str = "change_message";
    pub const CHANGES: &str = "changes";
    pub const ROLE: &str = "role";
    pub const SET_ROLE: &str = "set_role";
    pub const ADMINS: &str = "admins";
}
/// Cached-store lookups by `cache` ([`CACHE_NAMES`]) and `result` ([`CACHE_RESULTS`]); the hit
/// ratio (store reads spared) is `(hit + coalesced) / all`.
pub const CACHE_REQUESTS_TOTAL: &str = "api_cache_requests_total";
/// Bytes held by each `cache` (as the entries estimate themselves).
pub const CACHE_BYTES: &str = "api_cache_bytes";
/// Entries (chats) held by each `cache`.
pub const CACHE_ENTRIES: &str = "api_cache_entries";
/// Version-token reads that failed (the cache was bypassed) and token writes that failed (the
/// write was answered 503).
pub const CACHE_TOKEN_ERRORS_TOTAL: &str = "api_cache_token_errors_total";
/// The `cache` label of the cache metrics.
pub mod cache_name {
    /// Members, admins and owner per chat.
    pub const MEMBERS: &str = "members";
    /// The chat and its newest messages.
    pub const RECENT: &str = "recent";
}
/// Every `cache` of the cache metrics.
pub const CACHE_NAMES: &[&str] = &[cache_name::MEMBERS, cache_name::RECENT];
/// The `result` of [`CACHE_REQUESTS_TOTAL`].
pub mod cache_result {
    /// Served from a current entry.
    pub const HIT: &str = "hit";
    /// Loaded from the store (and kept).
    pub const MISS: &str = "miss";
    /// Waited for the identical load already in flight: a store read spared.
    pub const COALESCED: &str = "coalesced";
    /// The entry was current but did not hold the page asked for: read from the store.
    pub const UNCOVERED: &str = "uncovered";
    /// The version tokens could not be read: read from the store.
    pub const BYPASS: &str = "bypass";
}
/// Every `result` of [`CACHE_REQUESTS_TOTAL`].
pub const CACHE_RESULTS: &[&str] = &[
    cache_result::HIT,
    cache_result::MISS,
    cache_result::COALESCED,
    cache_result::UNCOVERED,
    cache_result::BYPASS,
];
/// The `kind` of the marker metrics: [`crate::store::Marker::as_str`].
pub mod marker_kind {
    pub const READ: &str = "read";
    pub const DELIVERED: &str = "delivered";
}
/// Every `kind` of the marker metrics.
pub const MARKER_KINDS: &[&str] = &[marker_kind::READ, marker_kind::DELIVERED];
/// The `outcome` of [`MARKERS_TOTAL`]: the marker moved forward, or stayed (an id at or below
/// it, or a chat without messages).
pub mod marker_outcome {
    pub const MOVED: &str = "moved";
    pub const UNCHANGED: &str = "unchanged";
}
/// Every `outcome` of [`MARKERS_TOTAL`].
pub const MARKER_OUTCOMES: &[&str] = &[marker_outcome::MOVED, marker_outcome::UNCHANGED];

/// Every `op` of the store metrics.
pub const STORE_OPS: &[&str] = &[
    store_op::CREATE_CHAT,
    store_op::GET_CHAT,
    store_op::USER_CHATS,
    store_op::ADD_MEMBERS,
    store_op::REMOVE_MEMBER,
    store_op::IS_MEMBER,
    store_op::MEMBERS,
    store_op::INSERT_MESSAGE,
    store_op::HISTORY,
    store_op::ADVANCE_MARKER,
    store_op::MARKERS,
    store_op::READ_MARKERS,
    store_op::COUNT_UNREAD,
    store_op::GET_MESSAGE,
    store_op::CHANGE_MESSAGE,
    store_op::CHANGES,
    store_op::ROLE,
    store_op::SET_ROLE,
    store_op::ADMINS,
    store_op::PING,
];

/// Counts one request refused by the rate limit `limit`. The 429 itself is counted in
/// [`REJECTED_TOTAL`] by the error response.
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED_TOTAL, "limit" => limit).increment(1);
}

/// Describes every chat-api metric and registers the unlabelled ones (and every known label
/// value, `problem_types` the `reason`s of [`REJECTED_TOTAL`]) at zero. Idempotent; call once the
/// recorder is installed.
pub fn describe(problem_types: impl IntoIterator<Item = &'static str>) {
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
        MARKERS_TOTAL,
        "Read and delivered marker updates, by kind and outcome (moved or unchanged)"
    );
    describe_counter!(
        RECEIPT_FANOUT_ERRORS_TOTAL,
        "Receipt frames not handed to the gateways (not retried; the markers stay readable), by kind"
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
        MESSAGE_CHANGES_TOTAL,
        "Message edits and deletes stored, by kind (repeats that changed nothing excluded)"
    );
    for kind in MESSAGE_CHANGE_KINDS {
        metrics::counter!(MESSAGE_CHANGES_TOTAL, "kind" => *kind).increment(0);
    }
    describe_counter!(
        MEMBERS_REMOVED_TOTAL,
        "Members removed from a chat by an owner or admin (members leaving excluded)"
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Requests with a missing or invalid token"
    );
    describe_counter!(
        ADMIN_ACTIONS_TOTAL,
        "Disconnects and revokes done through the admin API, by action"
    );
    for action in ADMIN_ACTIONS {
        metrics::counter!(ADMIN_ACTIONS_TOTAL, "action" => *action).increment(0);
    }
    metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => auth_reason::REVOKED).increment(0);
    shared::revocation::describe();
    describe_counter!(
        INTERNAL_ERRORS_TOTAL,
        "Requests that failed with a 500 (logged at ERROR)"
    );
    describe_counter!(TYPING_NOTICES_TOTAL, "Typing notices fanned out to members");
    describe_counter!(
        TYPING_RATE_LIMITED_TOTAL,
        "Typing notices refused by the per-user limit (429)"
    );
    describe_histogram!(
        SQLITE_GROUP_COMMIT_SIZE,
        "Inserts committed per SQLite transaction (group commit)"
    );
    describe_histogram!(
        SQLITE_WRITE_LOCK_WAIT_SECONDS,
        Unit::Seconds,
        "Time the group-commit writer waited for SQLite's write lock before each group"
    );
    describe_gauge!(
        CLOCK_OFFSET_SECONDS,
        Unit::Seconds,
        "Redis time minus this host's clock at the last measurement (message ids follow Redis time)"
    );
    describe_counter!(
        NOTIFY_QUEUED_TOTAL,
        "Push notification queue entries added (one per offline member and message)"
    );
    describe_counter!(
        NOTIFY_SENT_TOTAL,
        "Push notification batches the webhook accepted"
    );
    describe_counter!(
        NOTIFY_RETRIES_TOTAL,
        "Push notification webhook attempts that failed and were retried"
    );
    describe_counter!(
        NOTIFY_DEAD_LETTERED_TOTAL,
        "Push notification batches moved to the dead letters after NOTIFY_MAX_ATTEMPTS"
    );
    describe_counter!(
        NOTIFY_DROPPED_TOTAL,
        "Push notification queue entries dropped, by reason (queue_full, came_online)"
    );
    describe_counter!(
        NOTIFY_ENQUEUE_FAILURES_TOTAL,
        "Stored messages whose offline members could not be queued for push notifications"
    );
    describe_gauge!(
        NOTIFY_HELD,
        "Push notification queue entries held by this replica's dispatcher"
    );
    for reason in NOTIFY_DROP_REASONS {
        metrics::counter!(NOTIFY_DROPPED_TOTAL, "reason" => *reason).increment(0);
    }
    metrics::gauge!(NOTIFY_HELD).increment(0.0);
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
        MEMBERS_REMOVED_TOTAL,
        AUTH_FAILURES_TOTAL,
        INTERNAL_ERRORS_TOTAL,
        RATE_LIMITED_UNHELD_TOTAL,
        NOTIFY_QUEUED_TOTAL,
        NOTIFY_SENT_TOTAL,
        NOTIFY_RETRIES_TOTAL,
        NOTIFY_DEAD_LETTERED_TOTAL,
        NOTIFY_ENQUEUE_FAILURES_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in FANOUT_ERROR_REASONS {
        metrics::counter!(FANOUT_ERRORS_TOTAL, "reason" => *reason).increment(0);
    }
    for slug in problem_types {
        metrics::counter!(REJECTED_TOTAL, "reason" => slug).increment(0);
    }
    for limit in RATE_LIMITS {
        metrics::counter!(RATE_LIMITED_TOTAL, "limit" => *limit).increment(0);
    }
    for op in STORE_OPS {
        metrics::counter!(STORE_ERRORS_TOTAL, "op" => *op).increment(0);
    }
    for kind in MARKER_KINDS {
        for outcome in MARKER_OUTCOMES {
            metrics::counter!(MARKERS_TOTAL, "kind" => *kind, "outcome" => *outcome).increment(0);
        }
        metrics::counter!(RECEIPT_FANOUT_ERRORS_TOTAL, "kind" => *kind).increment(0);
    }
    describe_counter!(
        PRESENCE_REPORTS_TOTAL,
        "Users reported by gateways as possibly changed in presence, by result (changed, unchanged, failed)"
    );
    describe_histogram!(
        PRESENCE_FANOUT_SIZE,
        "Co-members one presence change was fanned out to"
    );
    for result in PRESENCE_RESULTS {
        metrics::counter!(PRESENCE_REPORTS_TOTAL, "result" => *result).increment(0);
    }
    describe_counter!(
        CACHE_REQUESTS_TOTAL,
        "Cached-store lookups by cache (members, recent) and result (hit, miss, coalesced, uncovered, bypass)"
    );
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Bytes held by each cache (API_MEMBERS_CACHE_BYTES, API_RECENT_CACHE_BYTES bound them)"
    );
    describe_gauge!(CACHE_ENTRIES, "Chats held by each cache");
    describe_counter!(
        CACHE_TOKEN_ERRORS_TOTAL,
        "Cache version-token reads (cache bypassed) and writes (write answered 503) that failed"
    );
    for cache in CACHE_NAMES {
        for result in CACHE_RESULTS {
            metrics::counter!(CACHE_REQUESTS_TOTAL, "cache" => *cache, "result" => *result)
                .increment(0);
        }
        metrics::gauge!(CACHE_BYTES, "cache" => *cache).set(0.0);
        metrics::gauge!(CACHE_ENTRIES, "cache" => *cache).set(0.0);
    }
    metrics::counter!(CACHE_TOKEN_ERRORS_TOTAL).increment(0);
    // Series that appear only on rare events, registered at zero so alerts see them from the start.
    metrics::counter!(TYPING_NOTICES_TOTAL).increment(0);
    metrics::counter!(TYPING_RATE_LIMITED_TOTAL).increment(0);
    for bucket in [
        shared::telemetry::bucket::REQUESTS,
        shared::telemetry::bucket::MESSAGES,
    ] {
        metrics::counter!(shared::telemetry::RATELIMIT_BACKEND_ERRORS_TOTAL, "bucket" => bucket)
            .increment(0);
    }
}
