//! Every CQL statement the ScyllaDB store prepares, as constants, so that their text is reviewed and
//! pinned by tests in one place. Table names are unqualified: the session is bound to the keyspace
//! from `STORE_URL`.

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

/// A whole `user_chats` partition, read paged.
pub const SELECT_USER_CHATS: &str = "SELECT chat_id FROM user_chats WHERE user_id = ?";

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

/// Reachability: one local-table row, no bind markers.
pub const PING: &str = "SELECT release_version FROM system.local";

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
            "SELECT chat_id FROM user_chats WHERE user_id = ?"
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
    fn ping() {
        assert_eq!(PING, "SELECT release_version FROM system.local");
    }
}
