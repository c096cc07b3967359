//! Per-chat version tokens: what makes a cached answer provably current. A writer replaces a
//! chat's token after its store write and before it answers; a reader reads the token before it
//! loads from the store and serves a cached value only while the token is still the one it was
//! loaded under. Tokens are random 64-bit values, never counters, so a token that was lost
//! (Redis restarted, the key expired, the in-process table was cleared) comes back as a fresh
//! one and never matches an old entry. Redis in distributed mode (shared by every replica), in
//! process in embedded mode.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::KeysInterface;
use fred::types::{Expiration, SetOptions, Value};
use parking_lot::Mutex;
use shared::Id;

/// What a token versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Members, roles and the owner: replaced by every membership write.
    Members,
    /// Messages and the chat's last ids: replaced by every message insert, edit and delete.
    Messages,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::Members => "m",
            Kind::Messages => "r",
        }
    }
}

/// A token key in Redis lives this long after its last write; an expired key only costs the
/// cached entries of that chat a reload.
pub const TOKEN_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Chats whose tokens the in-process table holds; past it the table is cleared, which only costs
/// reloads (every token becomes fresh).
pub const MEMORY_TOKENS_MAX: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
#[error("cache version tokens unavailable: {0}")]
pub struct VersionError(pub String);

/// Where the tokens live.
#[async_trait]
pub trait Versions: Send + Sync + 'static {
    /// The chat's current token, creating one when there is none.
    async fn current(&self, chat_id: Id, kind: Kind) -> Result<u64, VersionError>;
    /// Replaces the chat's token with a fresh one: every entry loaded before is stale from now.
    async fn bump(&self, chat_id: Id, kind: Kind) -> Result<(), VersionError>;
}

fn fresh() -> u64 {
    rand::random()
}

/// One process (embedded mode): a bounded table.
#[derive(Default)]
pub struct MemoryVersions {
    tokens: Mutex<HashMap<(Id, Kind), u64>>,
}

#[async_trait]
impl Versions for MemoryVersions {
    async fn current(&self, chat_id: Id, kind: Kind) -> Result<u64, VersionError> {
        let mut tokens = self.tokens.lock();
        if tokens.len() >= MEMORY_TOKENS_MAX && !tokens.contains_key(&(chat_id, kind)) {
            tokens.clear();
        }
        Ok(*tokens.entry((chat_id, kind)).or_insert_with(fresh))
    }

    async fn bump(&self, chat_id: Id, kind: Kind) -> Result<(), VersionError> {
        let mut tokens = self.tokens.lock();
        if tokens.len() >= MEMORY_TOKENS_MAX {
            tokens.clear();
        }
        tokens.insert((chat_id, kind), fresh());
        Ok(())
    }
}

/// Every replica (distributed mode): one string key per chat and kind,
/// `{prefix}cache:{CHAT_ID}:m` / `:r`, each with [`TOKEN_KEY_TTL`].
pub struct RedisVersions {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl RedisVersions {
    /// Uses `client` (usually the routing client); `timeout` bounds each call.
    pub fn new(client: Client, prefix: impl Into<String>, timeout: Duration) -> RedisVersions {
        RedisVersions {
            client,
            prefix: prefix.into(),
            timeout,
        }
    }

    fn key(&self, chat_id: Id, kind: Kind) -> String {
        format!("{}cache:{{{}}}:{}", self.prefix, chat_id.0, kind.suffix())
    }

    /// The token under `key`, if any; one that is not a number (written by something else) is
    /// an error, never a match.
    async fn read(&self, key: &str) -> Result<Option<u64>, VersionError> {
        let found: Option<String> = self.timed(self.client.get(key)).await?;
        found
            .map(|s| {
                s.parse()
                    .map_err(|_| VersionError(format!("{key} holds {s:?}, not a token")))
            })
            .transpose()
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, VersionError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(VersionError("redis: timed out".into())),
            Ok(r) => r.map_err(|e| VersionError(format!("redis: {e}"))),
        }
    }
}

fn ttl() -> Option<Expiration> {
    Some(Expiration::EX(TOKEN_KEY_TTL.as_secs() as i64))
}

#[async_trait]
impl Versions for RedisVersions {
    async fn current(&self, chat_id: Id, kind: Kind) -> Result<u64, VersionError> {
        let key = self.key(chat_id, kind);
        if let Some(token) = self.read(&key).await? {
            return Ok(token);
        }
        // None yet (or lost): create one unless a racing reader or writer just did, then read
        // whichever won.
        let _: Value = self
            .timed(self.client.set(
                key.as_str(),
                fresh().to_string(),
                ttl(),
                Some(SetOptions::NX),
                false,
            ))
            .await?;
        self.read(&key)
            .await?
            .ok_or_else(|| VersionError("token vanished right after it was set".into()))
    }

    async fn bump(&self, chat_id: Id, kind: Kind) -> Result<(), VersionError> {
        let _: Value = self
            .timed(self.client.set(
                self.key(chat_id, kind),
                fresh().to_string(),
                ttl(),
                None,
                false,
            ))
            .await?;
        Ok(())
    }
}
