//! Every CQL statement the ScyllaDB store prepares, as constants, so that their text is reviewed and
//! pinned by tests in one place. Table names are unqualified: the session is bound to the keyspace
//! from `STORE_URL`.
//!
//! Statements executed on their own are prepared with `USING TIMEOUT` (a ScyllaDB extension) so
//! that the server gives up, and says so, before the client does ([`timed`]). Statements that run
//! inside a logged batch carry no timeout of their own: a protocol batch is bounded by the
//! server's `write_request_timeout_in_ms`.

use std::time::Duration;

/// Upserts the chat row; `last_message_id` is left to [`UPDATE_CHAT_LAST_MESSAGE`].
pub const INSERT_CHAT: &str = "INSERT INTO chats (chat_id, title, created_by, created_at_ms, \
     first_bucket) VALUES (?, ?, ?, ?, ?)";

pub const SELECT_CHAT: &str = "SELECT chat_id, title, created_by, created_at_ms, first_bucket, \
     last_message_id FROM chats WHERE chat_id = ?";

/// Binds (write timestamp µs, message id, chat id). The timestamp is derived from the message id
/// so that the cell converges to the largest id without reading it first (see schema/README.md).
pub const UPDATE_CHAT_LAST_MESSAGE: &str =
    "UPDATE chats USING TIMESTAMP ? SET last_message_id = ? WHERE chat_id = ?";

pub const INSERT_MEMBER: &str = "INSERT INTO members (chat_id, user_id) VALUES (?, ?)";

/// Binds (chat id, user id), the same order as [`INSERT_MEMBER`], so that one membership batch
/// takes one value type.
pub const INSERT_USER_CHAT: &str = "INSERT INTO user_chats (chat_id, user_id) VALUES (?, ?)";

pub const DELETE_MEMBER: &str = "DELETE FROM members WHERE chat_id = ? AND user_id = ?";

/// Binds (chat id, user id), like [`DELETE_MEMBER`].
pub const DELETE_USER_CHAT: &str = "DELETE FROM user_chats WHERE chat_id = ? AND user_id = ?";

pub const SELECT_MEMBER: &str = "SELECT user_id FROM members WHERE chat_id = ? AND user_id = ?";

/// A whole `members` partition, read paged.
pub const SELECT_MEMBERS: &str = "SELECT user_id FROM members WHERE chat_id = ?";

/// One page of a `user_chats` partition: the lowest chat ids above a cursor (a clustering
/// range, so a page costs `LIMIT` rows however many chats the user has).
pub const SELECT_USER_CHATS: &str =
    "SELECT chat_id FROM user_chats WHERE user_id = ? AND chat_id > ? LIMIT ?";

/// The cross-replica idempotency claim (LWT). On a lost claim the result row carries the
/// winner's `message_id` and `body`.
pub const CLAIM_SEND: &str = "INSERT INTO idempotency (chat_id, sender_id, client_msg_id, \
     message_id, body) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS";

pub const INSERT_MESSAGE: &str = "INSERT INTO messages (chat_id, bucket, message_id, sender_id, \
     client_msg_id, body) VALUES (?, ?, ?, ?, ?, ?)";

/// One message by its full primary key.
pub const SELECT_MESSAGE: &str = "SELECT chat_id, message_id, sender_id, client_msg_id, body \
     FROM messages WHERE chat_id = ? AND bucket = ? AND message_id = ?";

/// Newest first (the clustering order) below a bound, within one bucket.
pub const SELECT_MESSAGES_BEFORE: &str = "SELECT chat_id, message_id, sender_id, client_msg_id, \
     body FROM messages WHERE chat_id = ? AND bucket = ? AND message_id < ? LIMIT ?";

/// Oldest first above a bound, within one bucket.
pub const SELECT_MESSAGES_AFTER: &str = "SELECT chat_id, message_id, sender_id, client_msg_id, \
     body FROM messages WHERE chat_id = ? AND bucket = ? AND message_id > ? \
     ORDER BY message_id ASC LIMIT ?";

/// Records that a chat has messages in a bucket: written in the same logged batch as every message,
/// so that history walks read only buckets that hold messages (see schema/README.md).
pub const INSERT_CHAT_BUCKET: &str = "INSERT INTO chat_buckets (chat_id, bucket) VALUES (?, ?)";

/// The chat's non-empty buckets at or below a bucket, newest first (the clustering order).
pub const SELECT_BUCKETS_DOWN: &str =
    "SELECT bucket FROM chat_buckets WHERE chat_id = ? AND bucket <= ? LIMIT ?";

/// The chat's non-empty buckets at or above a bucket, oldest first.
pub const SELECT_BUCKETS_UP: &str = "SELECT bucket FROM chat_buckets WHERE chat_id = ? AND \
     bucket >= ? ORDER BY bucket ASC LIMIT ?";

/// One member's markers in a chat, by full key.
pub const SELECT_MARKER: &str =
    "SELECT read_up_to, delivered_up_to FROM read_state WHERE chat_id = ? AND user_id = ?";

/// A chat's whole `read_state` partition, read paged.
pub const SELECT_MARKERS: &str =
    "SELECT user_id, read_up_to, delivered_up_to FROM read_state WHERE chat_id = ?";

/// Binds (write timestamp µs, message id, chat id, user id). Like [`UPDATE_CHAT_LAST_MESSAGE`],
/// the timestamp comes from the message id, so that the cell converges to the highest marker
/// without a read before the write. Run on its own, so its text carries the server timeout as
/// a second `USING` parameter ([`timed_update`]).
pub const ADVANCE_READ: &str =
    "UPDATE read_state USING TIMESTAMP ? SET read_up_to = ? WHERE chat_id = ? AND user_id = ?";

/// [`ADVANCE_READ`] for the delivered marker.
pub const ADVANCE_DELIVERED: &str = "UPDATE read_state USING TIMESTAMP ? SET delivered_up_to = ? \
     WHERE chat_id = ? AND user_id = ?";
/// An edit: the new body with its time and change id, written at the change's own timestamp
/// (µs of the change id) so that a delete, written later in timestamp, always wins over an edit
/// that raced it. Binds (timestamp, body, edited_at_ms, change_id, chat_id, bucket, message_id).
pub const UPDATE_MESSAGE_EDIT: &str = "UPDATE message_edits USING TIMESTAMP ? SET body = ?, \
     edited_at_ms = ?, change_id = ? WHERE chat_id = ? AND bucket = ? AND message_id = ?";

/// A delete's tombstone state: body '' and `deleted = 1`, with a timestamp above any edit that
/// could race it. Binds (timestamp, body, deleted, change_id, chat_id, bucket, message_id).
pub const UPDATE_MESSAGE_DELETE: &str = "UPDATE message_edits USING TIMESTAMP ? SET body = ?, \
     deleted = ?, change_id = ? WHERE chat_id = ? AND bucket = ? AND message_id = ?";

/// Overwrites the original body in `messages` with '' (no null, so no cell tombstone); the old
/// value leaves the disk as SSTables compact. Binds (body, chat_id, bucket, message_id).
pub const UPDATE_MESSAGE_BODY: &str =
    "UPDATE messages SET body = ? WHERE chat_id = ? AND bucket = ? AND message_id = ?";

/// Rewrites a deleted message's send claim without its body (an upsert by full key, so the
/// claim keeps naming the same message).
pub const INSERT_IDEMPOTENCY: &str = "INSERT INTO idempotency (chat_id, sender_id, \
     client_msg_id, message_id, body) VALUES (?, ?, ?, ?, ?)";

pub const INSERT_CHAT_CHANGE: &str =
    "INSERT INTO chat_changes (chat_id, change_id, message_id) VALUES (?, ?, ?)";

/// One message's edit state by full key.
pub const SELECT_MESSAGE_EDIT: &str = "SELECT message_id, body, edited_at_ms, deleted, \
     change_id FROM message_edits WHERE chat_id = ? AND bucket = ? AND message_id = ?";

/// The edit states of one bucket's messages in an id range (a history page's span).
pub const SELECT_MESSAGE_EDITS: &str = "SELECT message_id, body, edited_at_ms, deleted, \
     change_id FROM message_edits WHERE chat_id = ? AND bucket = ? AND message_id >= ? \
     AND message_id <= ?";

/// The chat's newest change: the first row in the clustering order.
pub const SELECT_LAST_CHANGE: &str =
    "SELECT change_id, message_id FROM chat_changes WHERE chat_id = ? LIMIT 1";

/// The oldest changes above a change id.
pub const SELECT_CHANGES_AFTER: &str = "SELECT change_id, message_id FROM chat_changes WHERE \
     chat_id = ? AND change_id > ? ORDER BY change_id ASC LIMIT ?";

/// A granted role, written with an explicit timestamp taken before the membership check, so
/// that a removal that raced the grant shadows it. Binds (chat_id, user_id, role, timestamp).
pub const INSERT_MEMBER_ROLE: &str =
    "INSERT INTO member_roles (chat_id, user_id, role) VALUES (?, ?, ?) USING TIMESTAMP ?";

/// Batched with the membership's removal, bound (chat id, user id) like [`DELETE_MEMBER`].
pub const DELETE_MEMBER_ROLE: &str = "DELETE FROM member_roles WHERE chat_id = ? AND user_id = ?";

pub const SELECT_MEMBER_ROLE: &str =
    "SELECT role FROM member_roles WHERE chat_id = ? AND user_id = ?";

/// A whole `member_roles` partition, read paged.
pub const SELECT_MEMBER_ROLES: &str = "SELECT user_id, role FROM member_roles WHERE chat_id = ?";

/// Reachability: one local-table row, no bind markers.
pub const PING: &str = "SELECT release_version FROM system.local";

/// `cql` with a server-side deadline, in whole milliseconds (at least 1).
pub fn timed(cql: &str, server_timeout: Duration) -> String {
    let ms = server_timeout.as_millis().max(1);
    format!("{cql} USING TIMEOUT {ms}ms")
}

/// An `UPDATE … USING TIMESTAMP ? SET …` with the server-side deadline added to its `USING`
/// clause (`USING TIMESTAMP ? AND TIMEOUT 2000ms`), where an `UPDATE` takes it.
pub fn timed_update(cql: &str, server_timeout: Duration) -> String {
    let ms = server_timeout.as_millis().max(1);
    cql.replacen(
        "USING TIMESTAMP ?",
        &format!("USING TIMESTAMP ? AND TIMEOUT {ms}ms"),
        1,
    )
}

/// The text each statement of the store is prepared with, for one server timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Texts {
    pub insert_chat: String,
    pub select_chat: String,
    pub select_member: String,
    pub select_members: String,
    pub select_user_chats: String,
    pub claim_send: String,
    pub select_message: String,
    pub select_messages_before: String,
    pub select_messages_after: String,
    pub select_buckets_down: String,
    pub select_buckets_up: String,
    pub select_marker: String,
    pub select_markers: String,
    pub advance_read: String,
    pub advance_delivered: String,
    pub select_message_edit: String,
    pub select_message_edits: String,
    pub select_last_change: String,
    pub select_changes_after: String,
    pub select_member_role: String,
    pub select_member_roles: String,
    /// [`INSERT_MEMBER_ROLE`] with its timeout joined to its `USING TIMESTAMP`.
    pub insert_member_role: String,
    /// Batched statements: no timeout of their own.
    pub batched: [&'static str; 13],
    pub ping: &'static str,
}

impl Texts {
    pub fn new(server_timeout: Duration) -> Texts {
        let t = |cql: &str| timed(cql, server_timeout);
        Texts {
            insert_chat: t(INSERT_CHAT),
            select_chat: t(SELECT_CHAT),
            select_member: t(SELECT_MEMBER),
            select_members: t(SELECT_MEMBERS),
            select_user_chats: t(SELECT_USER_CHATS),
            claim_send: t(CLAIM_SEND),
            select_message: t(SELECT_MESSAGE),
            select_messages_before: t(SELECT_MESSAGES_BEFORE),
            select_messages_after: t(SELECT_MESSAGES_AFTER),
            select_buckets_down: t(SELECT_BUCKETS_DOWN),
            select_buckets_up: t(SELECT_BUCKETS_UP),
            select_marker: t(SELECT_MARKER),
            select_markers: t(SELECT_MARKERS),
            advance_read: timed_update(ADVANCE_READ, server_timeout),
            advance_delivered: timed_update(ADVANCE_DELIVERED, server_timeout),
            select_message_edit: t(SELECT_MESSAGE_EDIT),
            select_message_edits: t(SELECT_MESSAGE_EDITS),
            select_last_change: t(SELECT_LAST_CHANGE),
            select_changes_after: t(SELECT_CHANGES_AFTER),
            select_member_role: t(SELECT_MEMBER_ROLE),
            select_member_roles: t(SELECT_MEMBER_ROLES),
            insert_member_role: format!(
                "{INSERT_MEMBER_ROLE} AND TIMEOUT {}ms",
                server_timeout.as_millis().max(1)
            ),
            batched: [
                INSERT_MEMBER,
                INSERT_USER_CHAT,
                DELETE_MEMBER,
                DELETE_USER_CHAT,
                INSERT_MESSAGE,
                UPDATE_CHAT_LAST_MESSAGE,
                INSERT_CHAT_BUCKET,
                UPDATE_MESSAGE_EDIT,
                UPDATE_MESSAGE_DELETE,
                UPDATE_MESSAGE_BODY,
                INSERT_IDEMPOTENCY,
                INSERT_CHAT_CHANGE,
                DELETE_MEMBER_ROLE,
            ],
            ping: PING,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_chat() {
        assert_eq!(
            INSERT_CHAT,
            "INSERT INTO chats (chat_id, title, created_by, created_at_ms, first_bucket) \
             VALUES (?, ?, ?, ?, ?)"
        );
    }

    #[test]
    fn select_chat() {
        assert_eq!(
            SELECT_CHAT,
            "SELECT chat_id, title, created_by, created_at_ms, first_bucket, last_message_id \
             FROM chats WHERE chat_id = ?"
        );
    }

    #[test]
    fn update_chat_last_message() {
        assert_eq!(
            UPDATE_CHAT_LAST_MESSAGE,
            "UPDATE chats USING TIMESTAMP ? SET last_message_id = ? WHERE chat_id = ?"
        );
    }

    #[test]
    fn insert_member() {
        assert_eq!(
            INSERT_MEMBER,
            "INSERT INTO members (chat_id, user_id) VALUES (?, ?)"
        );
    }

    #[test]
    fn insert_user_chat() {
        assert_eq!(
            INSERT_USER_CHAT,
            "INSERT INTO user_chats (chat_id, user_id) VALUES (?, ?)"
        );
    }

    #[test]
    fn delete_member() {
        assert_eq!(
            DELETE_MEMBER,
            "DELETE FROM members WHERE chat_id = ? AND user_id = ?"
        );
    }

    #[test]
    fn delete_user_chat() {
        assert_eq!(
            DELETE_USER_CHAT,
            "DELETE FROM user_chats WHERE chat_id = ? AND user_id = ?"
        );
    }

    #[test]
    fn select_member() {
        assert_eq!(
            SELECT_MEMBER,
            "SELECT user_id FROM members WHERE chat_id = ? AND user_id = ?"
        );
    }

    #[test]
    fn select_members() {
        assert_eq!(
            SELECT_MEMBERS,
            "SELECT user_id FROM members WHERE chat_id = ?"
        );
    }

    #[test]
    fn select_user_chats() {
        assert_eq!(
            SELECT_USER_CHATS,
            "SELECT chat_id FROM user_chats WHERE user_id = ? AND chat_id > ? LIMIT ?"
        );
    }

    #[test]
    fn claim_send() {
        assert_eq!(
            CLAIM_SEND,
            "INSERT INTO idempotency (chat_id, sender_id, client_msg_id, message_id, body) \
             VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
        );
    }

    #[test]
    fn insert_message() {
        assert_eq!(
            INSERT_MESSAGE,
            "INSERT INTO messages (chat_id, bucket, message_id, sender_id, client_msg_id, body) \
             VALUES (?, ?, ?, ?, ?, ?)"
        );
    }

    #[test]
    fn select_message() {
        assert_eq!(
            SELECT_MESSAGE,
            "SELECT chat_id, message_id, sender_id, client_msg_id, body FROM messages \
             WHERE chat_id = ? AND bucket = ? AND message_id = ?"
        );
    }

    #[test]
    fn select_messages_before() {
        assert_eq!(
            SELECT_MESSAGES_BEFORE,
            "SELECT chat_id, message_id, sender_id, client_msg_id, body FROM messages \
             WHERE chat_id = ? AND bucket = ? AND message_id < ? LIMIT ?"
        );
    }

    #[test]
    fn select_messages_after() {
        assert_eq!(
            SELECT_MESSAGES_AFTER,
            "SELECT chat_id, message_id, sender_id, client_msg_id, body FROM messages \
             WHERE chat_id = ? AND bucket = ? AND message_id > ? ORDER BY message_id ASC LIMIT ?"
        );
    }

    #[test]
    fn bucket_index() {
        assert_eq!(
            INSERT_CHAT_BUCKET,
            "INSERT INTO chat_buckets (chat_id, bucket) VALUES (?, ?)"
        );
        assert_eq!(
            SELECT_BUCKETS_DOWN,
            "SELECT bucket FROM chat_buckets WHERE chat_id = ? AND bucket <= ? LIMIT ?"
        );
        assert_eq!(
            SELECT_BUCKETS_UP,
            "SELECT bucket FROM chat_buckets WHERE chat_id = ? AND bucket >= ? \
             ORDER BY bucket ASC LIMIT ?"
        );
    }

    #[test]
    fn standalone_statements_carry_the_configured_server_timeout() {
        let texts = Texts::new(Duration::from_millis(1500));
        assert_eq!(
            texts.claim_send,
            "INSERT INTO idempotency (chat_id, sender_id, client_msg_id, message_id, body) \
             VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TIMEOUT 1500ms"
        );
        assert_eq!(
            texts.select_messages_before,
            "SELECT chat_id, message_id, sender_id, client_msg_id, body FROM messages \
             WHERE chat_id = ? AND bucket = ? AND message_id < ? LIMIT ? USING TIMEOUT 1500ms"
        );
        assert_eq!(
            texts.select_chat,
            format!("{SELECT_CHAT} USING TIMEOUT 1500ms")
        );
        for standalone in [
            &texts.insert_chat,
            &texts.select_chat,
            &texts.select_member,
            &texts.select_members,
            &texts.select_user_chats,
            &texts.claim_send,
            &texts.select_message,
            &texts.select_messages_before,
            &texts.select_messages_after,
            &texts.select_buckets_down,
            &texts.select_buckets_up,
            &texts.select_marker,
            &texts.select_markers,
            &texts.select_message_edit,
            &texts.select_message_edits,
            &texts.select_last_change,
            &texts.select_changes_after,
            &texts.select_member_role,
            &texts.select_member_roles,
        ] {
            assert!(
                standalone.ends_with(" USING TIMEOUT 1500ms"),
                "{standalone}"
            );
        }
        assert_eq!(
            texts.insert_member_role,
            "INSERT INTO member_roles (chat_id, user_id, role) VALUES (?, ?, ?) \
             USING TIMESTAMP ? AND TIMEOUT 1500ms"
        );
        // A protocol batch has no USING clause; its statements must not carry one either.
        for batched in texts.batched {
            assert!(!batched.contains("TIMEOUT"), "{batched}");
        }
        assert_eq!(
            Texts::new(Duration::from_secs(2)).select_chat,
            format!("{SELECT_CHAT} USING TIMEOUT 2000ms")
        );
        assert_eq!(
            timed(PING, Duration::from_micros(10)),
            format!("{PING} USING TIMEOUT 1ms")
        );
    }

    #[test]
    fn read_state() {
        assert_eq!(
            SELECT_MARKER,
            "SELECT read_up_to, delivered_up_to FROM read_state WHERE chat_id = ? AND user_id = ?"
        );
        assert_eq!(
            SELECT_MARKERS,
            "SELECT user_id, read_up_to, delivered_up_to FROM read_state WHERE chat_id = ?"
        );
        assert_eq!(
            ADVANCE_DELIVERED,
            "UPDATE read_state USING TIMESTAMP ? SET delivered_up_to = ? \
             WHERE chat_id = ? AND user_id = ?"
        );
        let texts = Texts::new(Duration::from_millis(1500));
        assert_eq!(
            texts.advance_read,
            "UPDATE read_state USING TIMESTAMP ? AND TIMEOUT 1500ms SET read_up_to = ? \
             WHERE chat_id = ? AND user_id = ?"
        );
        assert!(texts
            .advance_delivered
            .contains("USING TIMESTAMP ? AND TIMEOUT 1500ms SET delivered_up_to"));
    }

    #[test]
    fn ping() {
        assert_eq!(PING, "SELECT release_version FROM system.local");
    }
}
