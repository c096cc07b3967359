//! The message store: chats, members, each user's chat list and messages. A trait with one
//! conformance suite (`store::conformance`) run against every implementation: SQLite (embedded,
//! and several processes on one host) and ScyllaDB (production).

pub mod cached;
pub mod conformance;
pub mod metered;
pub mod scylla;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
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
    /// The newest change id (edit or delete of one of its messages), `None` before the first.
    pub last_change_id: Option<Id>,
}

/// A member's role. The chat's creator (`created_by`) is its `owner` while a member, so chats
/// stored before roles existed have one; owners grant and revoke `admin`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// Owners and admins moderate: remove members, delete any message.
    pub fn moderates(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// The stored form of a granted role (`owner` is never stored: it is `created_by`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// A stored role; anything but `admin` (absent, `member`, unknown) is a plain member.
    pub fn from_stored(s: Option<&str>) -> Role {
        match s {
            Some("admin") => Role::Admin,
            _ => Role::Member,
        }
    }
}

/// An edit or delete of one message, as the store applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Replace the body; `edited_at` becomes the change id's time.
    Edit { body: String },
    /// Drop the body from the store and keep a tombstone.
    Delete,
}

/// One page of a chat's changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangesPage {
    /// The changed messages in their current state (tombstones included), each once.
    pub messages: Vec<Message>,
    /// The highest change id read: the `after` of the next page. A store that keeps one entry
    /// per change may read entries of messages changed again since, so this is not always a
    /// message's `change_id`.
    pub last: Option<Id>,
    /// `limit` changes were read: more may follow.
    pub full: bool,
}

/// What an edit or delete did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Applied under the given change id: the message's new state.
    Applied(Message),
    /// Nothing to do (an edit to the current body, or a delete of a deleted message): the
    /// current state, no new change id. This is what makes both idempotent.
    Unchanged(Message),
    /// The message was deleted before: an edit cannot revive it.
    Deleted(Message),
    /// No such message in this chat.
    NotFound,
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
    /// [`MessageStore::insert_message_before`], then `then` once the message is stored (created
    /// or found as a duplicate), run alongside whatever the store still does before it returns:
    /// the caching layer's token write, a Redis round trip that a send's route lookup shares
    /// instead of waiting for it. `then` never runs when the insert failed; it may run when the
    /// insert is answered 503 afterwards (its token could not be written).
    async fn insert_message_then<'a>(
        &'a self,
        message: &'a Message,
        deadline: Instant,
        then: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    ) -> Result<Insert, StoreError> {
        let inserted = self.insert_message_before(message, deadline).await?;
        then.await;
        Ok(inserted)
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
    /// One message by id, in its current state (tombstones included).
    async fn get_message(&self, chat_id: Id, message_id: Id)
        -> Result<Option<Message>, StoreError>;
    /// Applies an edit or delete to a message under the fresh `change_id`, moving the chat's
    /// `last_change_id` to it (never down). A delete removes the body from the store. Both are
    /// idempotent: repeating one is [`Changed::Unchanged`]. A store that can tell does not commit
    /// after `deadline` (as [`MessageStore::insert_message_before`]).
    async fn change_message(
        &self,
        chat_id: Id,
        message_id: Id,
        change: &Change,
        change_id: Id,
        deadline: Instant,
    ) -> Result<Changed, StoreError>;
    /// One page of the chat's changes: the (at most `limit`) changes with the lowest change ids
    /// above `after`, as the changed messages in their current state (each at most once, in
    /// change order). See [`ChangesPage`].
    async fn changes(
        &self,
        chat_id: Id,
        after: Id,
        limit: usize,
    ) -> Result<ChangesPage, StoreError>;
    /// `user`'s role in the chat, `None` when not a member (or no such chat).
    async fn role(&self, chat_id: Id, user: &str) -> Result<Option<Role>, StoreError>;
    /// Grants `admin` or makes a member a plain `member` again; `false` when `user` is not a
    /// member (nothing is written). `role` is never [`Role::Owner`].
    async fn set_role(&self, chat_id: Id, user: &str, role: Role) -> Result<bool, StoreError>;
    /// The members holding `admin`, sorted.
    async fn admins(&self, chat_id: Id) -> Result<Vec<String>, StoreError>;
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
