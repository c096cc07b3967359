//! The caching layer of the message store: a [`MessageStore`] around the real (metered) one that
//! serves membership (members, roles, owner), the chat with its last ids, and the newest messages
//! of each chat from memory, coalesces identical concurrent loads, and stays exactly as current
//! as the store for everything acknowledged. Every entry is stamped with the chat's version token
//! ([`versions`]) read before it was loaded; a writer replaces the token after its store write
//! and before it returns, so an entry is served only while no acknowledged write could be missing
//! from it. The argument is in ARCHITECTURE.md ("Caches").

pub mod table;
pub mod versions;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shared::config::parse_duration;
use shared::protocol::Message;
use shared::Id;

use self::table::{Flights, Source, Table};
use self::versions::{Kind, Versions};
use super::{
    Change, Changed, ChangesPage, Chat, Cursor, Insert, Marker, Markers, MessageStore, Role,
    StoreError, Unread,
};
use crate::telemetry::{cache_name, cache_result, CACHE_REQUESTS_TOTAL, CACHE_TOKEN_ERRORS_TOTAL};

/// Longest `API_CACHE_TTL`: an entry whose writer died between its store write and its token
/// write (so the write was never acknowledged) may be served this long.
pub const CACHE_TTL_MAX: Duration = Duration::from_secs(300);
/// Most messages `API_RECENT_CACHE_MESSAGES` may keep per chat.
pub const RECENT_MESSAGES_MAX: usize = 1000;
/// What an entry costs besides its strings (vectors, maps, the slot), in bytes.
const ENTRY_OVERHEAD: usize = 128;
/// What one message costs besides its strings.
const MESSAGE_OVERHEAD: usize = 96;

/// The cache settings of `chat-api serve` and `embedded`.
#[derive(clap::Args, Clone, Debug)]
pub struct CacheArgs {
    /// Longest time a cached entry (membership, newest messages) is served; `0s` turns the caches
    /// off. Entries are current through version tokens whatever this is; it only bounds how long
    /// a write whose replica died before it answered may stay unseen. At most 5m.
    #[arg(long, env = "API_CACHE_TTL", value_name = "API_CACHE_TTL", default_value = "30s", value_parser = parse_cache_ttl)]
    pub cache_ttl: Duration,
    /// Memory for the membership cache (members, admins, owner per chat), in bytes.
    #[arg(
        long,
        env = "API_MEMBERS_CACHE_BYTES",
        value_name = "API_MEMBERS_CACHE_BYTES",
        default_value_t = 32 << 20
    )]
    pub members_cache_bytes: usize,
    /// Memory for the recent-messages cache (the chat and its newest messages), in bytes.
    #[arg(
        long,
        env = "API_RECENT_CACHE_BYTES",
        value_name = "API_RECENT_CACHE_BYTES",
        default_value_t = 64 << 20
    )]
    pub recent_cache_bytes: usize,
    /// Newest messages kept per chat (1-1000). History pages and unread counts that fall inside
    /// them are served without the store; a page reads one row more than it shows, so the
    /// default covers the default page of 50.
    #[arg(
        long,
        env = "API_RECENT_CACHE_MESSAGES",
        value_name = "API_RECENT_CACHE_MESSAGES",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..=RECENT_MESSAGES_MAX as i64)
    )]
    pub recent_cache_messages: u16,
}

fn parse_cache_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > CACHE_TTL_MAX {
        return Err(format!("at most {CACHE_TTL_MAX:?}"));
    }
    Ok(d)
}

impl Default for CacheArgs {
    fn default() -> Self {
        CacheArgs {
            cache_ttl: Duration::from_secs(30),
            members_cache_bytes: 32 << 20,
            recent_cache_bytes: 64 << 20,
            recent_cache_messages: 64,
        }
    }
}

impl CacheArgs {
    /// Off when the TTL is zero.
    pub fn enabled(&self) -> bool {
        !self.cache_ttl.is_zero()
    }
}

/// A chat's membership as one entry.
#[derive(Debug)]
struct Membership {
    /// Sorted.
    members: Vec<String>,
    /// Sorted.
    admins: Vec<String>,
    /// `created_by`; `None` when the chat does not exist.
    owner: Option<String>,
}

impl Membership {
    fn bytes(&self) -> usize {
        fn strings(v: &[String]) -> usize {
            v.iter().map(|s| s.len() + 24).sum()
        }
        ENTRY_OVERHEAD
            + strings(&self.members)
            + strings(&self.admins)
            + self.owner.as_ref().map_or(0, String::len)
    }

    fn is_member(&self, user: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(user))
            .is_ok()
    }

    /// As [`MessageStore::role`]: the creator is the owner while a member.
    fn role(&self, user: &str) -> Option<Role> {
        if !self.is_member(user) {
            return None;
        }
        if self.owner.as_deref() == Some(user) {
            return Some(Role::Owner);
        }
        let admin = self
            .admins
            .binary_search_by(|m| m.as_str().cmp(user))
            .is_ok();
        Some(if admin { Role::Admin } else { Role::Member })
    }
}

/// A chat with its newest messages, as one entry.
#[derive(Debug)]
struct Recent {
    chat: Option<Chat>,
    /// The newest messages at load time, ascending by id.
    messages: Vec<Message>,
    /// The chat had no more messages than these.
    complete: bool,
}

impl Recent {
    fn bytes(&self) -> usize {
        let chat = self.chat.as_ref().map_or(0, |c| {
            c.created_by.len() + c.title.as_ref().map_or(0, String::len)
        });
        ENTRY_OVERHEAD
            + chat
            + self
                .messages
                .iter()
                .map(|m| {
                    MESSAGE_OVERHEAD + m.body.len() + m.sender_id.len() + m.client_msg_id.len()
                })
                .sum::<usize>()
    }

    /// Whether every message above `after` that existed at load time is here.
    fn covers_after(&self, after: Id) -> bool {
        self.complete || self.messages.first().is_some_and(|m| m.message_id <= after)
    }

    /// The page [`MessageStore::history`] would return, when these messages hold all of it.
    fn page(&self, cursor: Cursor, limit: usize) -> Option<Vec<Message>> {
        let m = &self.messages;
        match cursor {
            Cursor::Latest => (limit <= m.len() || self.complete)
                .then(|| m[m.len().saturating_sub(limit)..].to_vec()),
            Cursor::After(after) => self.covers_after(after).then(|| {
                let start = m.partition_point(|x| x.message_id <= after);
                m[start..].iter().take(limit).cloned().collect()
            }),
            Cursor::Before(before) => {
                // Every message between the oldest held and `before` is held.
                let end = m.partition_point(|x| x.message_id < before);
                if end >= limit {
                    Some(m[end - limit..end].to_vec())
                } else {
                    self.complete.then(|| m[..end].to_vec())
                }
            }
        }
    }

    /// The message as [`MessageStore::get_message`] would return it, when this entry can tell.
    fn message(&self, message_id: Id) -> Option<Option<Message>> {
        let held = self.complete
            || self
                .messages
                .first()
                .is_some_and(|m| m.message_id <= message_id);
        if !held {
            return None;
        }
        let m = &self.messages;
        Some(
            m.binary_search_by_key(&message_id, |x| x.message_id)
                .ok()
                .map(|i| m[i].clone()),
        )
    }
}

/// The caching store. `inner` is the metered store, so `api_store_op_seconds` counts the reads
/// the caches did not spare.
pub struct CachedStore {
    inner: Arc<dyn MessageStore>,
    versions: Arc<dyn Versions>,
    members: Arc<Table<Membership>>,
    recent: Arc<Table<Recent>>,
    member_loads: Flights<Membership>,
    recent_loads: Flights<Recent>,
    recent_messages: usize,
}

fn count(cache: &'static str, result: &'static str) {
    metrics::counter!(CACHE_REQUESTS_TOTAL, "cache" => cache, "result" => result).increment(1);
}

impl CachedStore {
    pub fn new(
        inner: Arc<dyn MessageStore>,
        versions: Arc<dyn Versions>,
        args: &CacheArgs,
    ) -> CachedStore {
        CachedStore {
            inner,
            versions,
            members: Arc::new(Table::new(
                cache_name::MEMBERS,
                args.members_cache_bytes,
                args.cache_ttl,
            )),
            recent: Arc::new(Table::new(
                cache_name::RECENT,
                args.recent_cache_bytes,
                args.cache_ttl,
            )),
            member_loads: Flights::default(),
            recent_loads: Flights::default(),
            recent_messages: usize::from(args.recent_cache_messages),
        }
    }

    /// (bytes, entries) of the membership and the recent-messages tables.
    pub fn sizes(&self) -> [(usize, usize); 2] {
        [self.members.size(), self.recent.size()]
    }

    /// The chat's token, `None` (answer from the store) when it cannot be read.
    async fn token(&self, chat_id: Id, kind: Kind, cache: &'static str) -> Option<u64> {
        match self.versions.current(chat_id, kind).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(error = %e, "cache bypassed");
                metrics::counter!(CACHE_TOKEN_ERRORS_TOTAL).increment(1);
                count(cache, cache_result::BYPASS);
                None
            }
        }
    }

    /// The chat's entry in `table` while its `kind` token holds, or the value `load` reads from
    /// the store (identical concurrent loads coalesced through `flights`), put in the table under
    /// the token it was loaded with. `Ok(None)` when the token cannot be read and the caller must
    /// ask the store itself.
    async fn entry<V, F>(
        &self,
        chat_id: Id,
        (kind, cache): (Kind, &'static str),
        (table, flights): (&Arc<Table<V>>, &Flights<V>),
        bytes: fn(&V) -> usize,
        load: impl FnOnce() -> F,
    ) -> Result<Option<Arc<V>>, StoreError>
    where
        V: Send + Sync + 'static,
        F: Future<Output = Result<V, StoreError>> + Send + 'static,
    {
        let Some(token) = self.token(chat_id, kind, cache).await else {
            return Ok(None);
        };
        if let Some(v) = table.get(chat_id, token) {
            count(cache, cache_result::HIT);
            return Ok(Some(v));
        }
        let (entries, load) = (table.clone(), load());
        let load = async move {
            let entry = Arc::new(load.await?);
            entries.put(chat_id, token, entry.clone(), bytes(&entry));
            Ok(entry)
        };
        let landed = || table.get(chat_id, token);
        let (result, source) = flights.run(chat_id, token, landed, load).await;
        count(
            cache,
            match source {
                Source::Loaded => cache_result::MISS,
                Source::Joined => cache_result::COALESCED,
                Source::Landed => cache_result::HIT,
            },
        );
        result.map(Some)
    }

    /// The chat's membership, as [`CachedStore::entry`].
    async fn membership(&self, chat_id: Id) -> Result<Option<Arc<Membership>>, StoreError> {
        let load = || {
            let inner = self.inner.clone();
            async move {
                let (mut members, mut admins, chat) = tokio::try_join!(
                    inner.members(chat_id),
                    inner.admins(chat_id),
                    inner.get_chat(chat_id)
                )?;
                // Sorted as the lookups expect, whatever the store's collation.
                members.sort_unstable();
                admins.sort_unstable();
                Ok(Membership {
                    members,
                    admins,
                    owner: chat.map(|c| c.created_by),
                })
            }
        };
        self.entry(
            chat_id,
            (Kind::Members, cache_name::MEMBERS),
            (&self.members, &self.member_loads),
            Membership::bytes,
            load,
        )
        .await
    }

    /// The chat with its newest messages, as [`CachedStore::entry`].
    async fn recent(&self, chat_id: Id) -> Result<Option<Arc<Recent>>, StoreError> {
        let load = || {
            let (inner, n) = (self.inner.clone(), self.recent_messages);
            async move {
                let (chat, messages) = tokio::try_join!(
                    inner.get_chat(chat_id),
                    inner.history(chat_id, Cursor::Latest, n + 1)
                )?;
                let complete = messages.len() <= n;
                let skip = messages.len().saturating_sub(n);
                Ok(Recent {
                    chat,
                    messages: messages.into_iter().skip(skip).collect(),
                    complete,
                })
            }
        };
        self.entry(
            chat_id,
            (Kind::Messages, cache_name::RECENT),
            (&self.recent, &self.recent_loads),
            Recent::bytes,
            load,
        )
        .await
    }

    /// After a write of `kinds` to the chat (whatever its outcome, since a failed store call
    /// may still have applied): replace the tokens, so that no replica serves an entry loaded
    /// before it. A write whose tokens could not be replaced is not acknowledged (503): its
    /// retry replaces them.
    async fn written<T>(
        &self,
        chat_id: Id,
        kinds: &[Kind],
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for &kind in kinds {
            match kind {
                Kind::Members => self.members.remove(chat_id),
                Kind::Messages => self.recent.remove(chat_id),
            }
            if let Err(e) = self.versions.bump(chat_id, kind).await {
                metrics::counter!(CACHE_TOKEN_ERRORS_TOTAL).increment(1);
                if result.is_ok() {
                    return Err(StoreError::Unavailable(e.to_string()));
                }
            }
        }
        result
    }
}

#[async_trait]
impl MessageStore for CachedStore {
    async fn create_chat(&self, chat: &Chat, members: &[String]) -> Result<(), StoreError> {
        // A reader may have cached "no such chat" under the id before it existed.
        let result = self.inner.create_chat(chat, members).await;
        self.written(chat.chat_id, &[Kind::Members, Kind::Messages], result)
            .await
    }
    async fn get_chat(&self, chat_id: Id) -> Result<Option<Chat>, StoreError> {
        match self.recent(chat_id).await? {
            Some(r) => Ok(r.chat.clone()),
            None => self.inner.get_chat(chat_id).await,
        }
    }
    async fn user_chats(
        &self,
        user: &str,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<Chat>, StoreError> {
        self.inner.user_chats(user, after, limit).await
    }
    async fn add_members(&self, chat_id: Id, users: &[String]) -> Result<(), StoreError> {
        let result = self.inner.add_members(chat_id, users).await;
        self.written(chat_id, &[Kind::Members], result).await
    }
    async fn remove_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        let result = self.inner.remove_member(chat_id, user).await;
        self.written(chat_id, &[Kind::Members], result).await
    }
    async fn is_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        match self.membership(chat_id).await? {
            Some(m) => Ok(m.is_member(user)),
            None => self.inner.is_member(chat_id, user).await,
        }
    }
    async fn members(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        match self.membership(chat_id).await? {
            Some(m) => Ok(m.members.clone()),
            None => self.inner.members(chat_id).await,
        }
    }
    async fn insert_message(&self, message: &Message) -> Result<Insert, StoreError> {
        // A duplicate replaces the token too: its first attempt may have died between its store
        // write and its token write, and this answer acknowledges it.
        let result = self.inner.insert_message(message).await;
        self.written(message.chat_id, &[Kind::Messages], result)
            .await
    }
    async fn insert_message_before(
        &self,
        message: &Message,
        deadline: Instant,
    ) -> Result<Insert, StoreError> {
        let result = self.inner.insert_message_before(message, deadline).await;
        self.written(message.chat_id, &[Kind::Messages], result)
            .await
    }
    async fn insert_message_then<'a>(
        &'a self,
        message: &'a Message,
        deadline: Instant,
        then: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    ) -> Result<Insert, StoreError> {
        let result = self.inner.insert_message_before(message, deadline).await;
        if result.is_err() {
            return self
                .written(message.chat_id, &[Kind::Messages], result)
                .await;
        }
        // Both go to the shared Redis client at once (it writes queued commands together): one
        // round trip's wait instead of two in a row.
        let (result, ()) = tokio::join!(
            self.written(message.chat_id, &[Kind::Messages], result),
            then
        );
        result
    }
    async fn history(
        &self,
        chat_id: Id,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        if limit <= self.recent_messages + 1 {
            if let Some(r) = self.recent(chat_id).await? {
                if let Some(page) = r.page(cursor, limit) {
                    return Ok(page);
                }
                count(cache_name::RECENT, cache_result::UNCOVERED);
            }
        }
        self.inner.history(chat_id, cursor, limit).await
    }
    async fn advance_marker(
        &self,
        chat_id: Id,
        user: &str,
        marker: Marker,
        message_id: Id,
    ) -> Result<bool, StoreError> {
        self.inner
            .advance_marker(chat_id, user, marker, message_id)
            .await
    }
    async fn markers(&self, chat_id: Id) -> Result<Vec<Markers>, StoreError> {
        self.inner.markers(chat_id).await
    }
    async fn read_markers(
        &self,
        user: &str,
        chat_ids: &[Id],
    ) -> Result<HashMap<Id, Id>, StoreError> {
        self.inner.read_markers(user, chat_ids).await
    }
    async fn count_unread(
        &self,
        chat_id: Id,
        user: &str,
        after: Option<Id>,
        scan_max: usize,
    ) -> Result<Unread, StoreError> {
        let after = after.unwrap_or(Id(0));
        if let Some(r) = self.recent(chat_id).await? {
            if r.covers_after(after) {
                let start = r.messages.partition_point(|m| m.message_id <= after);
                let above = &r.messages[start..];
                return Ok(Unread {
                    count: above
                        .iter()
                        .take(scan_max)
                        .filter(|m| m.sender_id != user)
                        .count(),
                    complete: above.len() <= scan_max,
                });
            }
            count(cache_name::RECENT, cache_result::UNCOVERED);
        }
        self.inner
            .count_unread(chat_id, user, Some(after), scan_max)
            .await
    }
    async fn get_message(
        &self,
        chat_id: Id,
        message_id: Id,
    ) -> Result<Option<Message>, StoreError> {
        if let Some(r) = self.recent(chat_id).await? {
            if let Some(found) = r.message(message_id) {
                return Ok(found);
            }
            count(cache_name::RECENT, cache_result::UNCOVERED);
        }
        self.inner.get_message(chat_id, message_id).await
    }
    async fn change_message(
        &self,
        chat_id: Id,
        message_id: Id,
        change: &Change,
        change_id: Id,
        deadline: Instant,
    ) -> Result<Changed, StoreError> {
        let result = self
            .inner
            .change_message(chat_id, message_id, change, change_id, deadline)
            .await;
        self.written(chat_id, &[Kind::Messages], result).await
    }
    async fn changes(
        &self,
        chat_id: Id,
        after: Id,
        limit: usize,
    ) -> Result<ChangesPage, StoreError> {
        self.inner.changes(chat_id, after, limit).await
    }
    async fn role(&self, chat_id: Id, user: &str) -> Result<Option<Role>, StoreError> {
        match self.membership(chat_id).await? {
            Some(m) => Ok(m.role(user)),
            None => self.inner.role(chat_id, user).await,
        }
    }
    async fn set_role(&self, chat_id: Id, user: &str, role: Role) -> Result<bool, StoreError> {
        let result = self.inner.set_role(chat_id, user, role).await;
        self.written(chat_id, &[Kind::Members], result).await
    }
    async fn admins(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        match self.membership(chat_id).await? {
            Some(m) => Ok(m.admins.clone()),
            None => self.inner.admins(chat_id).await,
        }
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
