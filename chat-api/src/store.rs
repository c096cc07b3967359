//! The message store: chats, members, each user's chat list and messages. A trait with one
//! conformance suite (`store::conformance`) run against every implementation: SQLite (embedded,
//! and several processes on one host) and ScyllaDB (production).

pub mod conformance;
pub mod metered;
pub mod scylla;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use shared::protocol::Message;
use shared::Id;

/// A chat as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chat {
    pub chat_id: Id,
    pub title: Option<String>,
    pub created_by: String,
    pub created_at_ms: u64,
    /// The newest message id, `None` for a chat without messages.
    pub last_message_id: Option<Id>,
}

/// Where a history page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The newest messages.
    Latest,
    /// Messages with ids strictly below this one (older).
    Before(Id),
    /// Messages with ids strictly above this one (newer).
    After(Id),
}

/// Result of an idempotent insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insert {
    /// The message was stored.
    Created(Message),
    /// A message with the same (chat, sender, client_msg_id) already exists: it is returned and
    /// nothing new is stored.
    Duplicate(Message),
}

impl Insert {
    pub fn message(&self) -> &Message {
        match self {
            Insert::Created(m) | Insert::Duplicate(m) => m,
        }
    }
}

/// Which of a member's two markers in a chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Marker {
    /// Up to where the member has read (`POST /v1/chats/{chat_id}/read`).
    Read,
    /// Up to where the member's devices have received (`ack` frames).
    Delivered,
}

impl Marker {
    /// The name used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Marker::Read => crate::telemetry::marker_kind::READ,
            Marker::Delivered => crate::telemetry::marker_kind::DELIVERED,
        }
    }
}

/// One member's stored markers in a chat; a marker never set is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Markers {
    pub user_id: String,
    pub read_up_to: Option<Id>,
    pub delivered_up_to: Option<Id>,
}

/// The result of a bounded unread count ([`MessageStore::count_unread`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unread {
    /// Messages from others among those read.
    pub count: usize,
    /// `false` when the read stopped at its bound with messages left: `count` is then a lower
    /// bound.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or timed out: the caller answers 503 with Retry-After.
    #[error("message store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data; logged, answered 500.
    #[error("message store error: {0}")]
    Internal(String),
}

/// The stored (signed 64-bit) form of a chat-list cursor: the page holds chat ids above it;
/// `i64::MIN` for the first page. `None` when `after` is above every storable id, so that no
/// further chat exists. Both stores keep ids as signed 64-bit integers.
pub fn stored_chat_cursor(after: Option<Id>) -> Option<i64> {
    after.map_or(Some(i64::MIN), |a| i64::try_from(a.0).ok())
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Creates a chat with its members (the creator is one of them).
    async fn create_chat(&self, chat: &Chat, members: &[String]) -> Result<(), StoreError>;
    /// The chat with its `last_message_id`, if it exists.
    async fn get_chat(&self, chat_id: Id) -> Result<Option<Chat>, StoreError>;
    /// One page of the chats `user` is a member of: the (at most) `limit` with the lowest chat ids
    /// above `after` (all when `None`), each with its `last_message_id`, newest activity first
    /// (a chat without messages by its creation). Bounded: never more than `limit` chats read.
    async fn user_chats(
        &self,
        user: &str,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<Chat>, StoreError>;
    /// Adds members (already-present ones are left as they are).
    async fn add_members(&self, chat_id: Id, users: &[String]) -> Result<(), StoreError>;
    /// Removes a member; `false` if it was not a member.
    async fn remove_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError>;
    async fn is_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError>;
    /// All members, sorted.
    async fn members(&self, chat_id: Id) -> Result<Vec<String>, StoreError>;
    /// Stores a message unless (chat, sender, client_msg_id) was stored before (within at least
    /// 24 h), in which case the original is returned. Durable when it returns `Ok`.
    async fn insert_message(&self, message: &Message) -> Result<Insert, StoreError>;
    /// [`MessageStore::insert_message`] for a send that must be answered by `deadline`: a store
    /// that can tell abandons the write, storing nothing, when it could not commit before then.
    /// A send answered 503 must never be committed later, or a retry would acknowledge it with
    /// an id from long before (docs/PROTOCOL.md, "Delivery and catch-up"). The default cannot
    /// tell (ScyllaDB: a write that timed out may still apply; docs/RELIABILITY.md).
    async fn insert_message_before(
        &self,
        message: &Message,
        deadline: Instant,
    ) -> Result<Insert, StoreError> {
        let _ = deadline;
        self.insert_message(message).await
    }
    /// Up to `limit` messages from the cursor, in ascending id order. `Before`/`Latest` return the
    /// newest messages below the bound, `After` the oldest above it.
    async fn history(
        &self,
        chat_id: Id,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;
    /// Moves `user`'s `marker` in `chat_id` up to `message_id`, never back: a lower or equal id
    /// changes nothing. `true` when it moved (two replicas racing may both see `true`; the stored
    /// marker is still the highest). Durable when it returns `Ok`. Membership is the caller's
    /// check.
    async fn advance_marker(
        &self,
        chat_id: Id,
        user: &str,
        marker: Marker,
        message_id: Id,
    ) -> Result<bool, StoreError>;
    /// Every stored marker row of the chat, sorted by user (users that never read or acknowledged
    /// have none; former members' rows are kept). Bounded by the members a chat has had.
    async fn markers(&self, chat_id: Id) -> Result<Vec<Markers>, StoreError>;
    /// `user`'s read markers in `chat_ids` (chats without one are absent). One point read per
    /// chat at most.
    async fn read_markers(
        &self,
        user: &str,
        chat_ids: &[Id],
    ) -> Result<HashMap<Id, Id>, StoreError>;
    /// Counts the messages of `chat_id` above `after` (all when `None`) that `user` did not send,
    /// reading at most `scan_max` messages, oldest first: bounded whatever the chat's history.
    /// The default reads a history page of `scan_max + 1` messages.
    async fn count_unread(
        &self,
        chat_id: Id,
        user: &str,
        after: Option<Id>,
        scan_max: usize,
    ) -> Result<Unread, StoreError> {
        let page = self
            .history(chat_id, Cursor::After(after.unwrap_or(Id(0))), scan_max + 1)
            .await?;
        Ok(Unread {
            count: page
                .iter()
                .take(scan_max)
                .filter(|m| m.sender_id != user)
                .count(),
            complete: page.len() <= scan_max,
        })
    }
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
