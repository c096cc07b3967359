//! Token revocation: a per-user not-before (Unix seconds). A token of that user whose `iat` is
//! below it, or that has no `iat`, is refused for connecting, refreshing and HTTP. The not-before
//! lives in Redis in distributed mode (one small key per revoked user, with a TTL of at least the
//! longest token lifetime) and in process in embedded mode; every process reads it through a small
//! cache ([`RevocationCheck`]), so a check costs a Redis round trip at most once per user and
//! cache TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{KeysInterface, LuaInterface};
use parking_lot::Mutex;

use crate::auth::Identity;

/// Backend checks that failed (error or timeout) and were let through (fail open).
pub use crate::telemetry::REVOCATION_CHECK_ERRORS_TOTAL as CHECK_ERRORS_TOTAL;
/// Users kept in one generation of a [`RevocationCheck`] cache; two generations are held, so a
/// process caches at most twice this many users. A full generation is rotated out early, which
/// only costs backend reads.
pub const CACHE_ENTRIES_MAX: usize = 65_536;
/// Revoked users an in-process store ([`MemoryRevocations`]) holds; past it, a revoke fails
/// ([`RevocationError::Full`]) until older revocations expire.
pub const MEMORY_REVOCATIONS_MAX: usize = 100_000;

/// Longest `REVOCATION_CACHE_TTL`: it is how long a revoked token may still be accepted.
pub const CACHE_TTL_MAX: Duration = Duration::from_secs(60);

/// The cache setting of every process that checks revocations (gateway, `chat-api serve`).
#[derive(clap::Args, Clone, Debug)]
pub struct RevocationCacheArgs {
    /// How long this process trusts what it read of a user's token revocation from Redis (`0s`:
    /// ask Redis on every connect, refresh and request). At most 1m. A revoke applies at once on
    /// the gateways and on the API replica that took it, and within this time everywhere else.
    #[arg(long, env = "REVOCATION_CACHE_TTL", default_value = "1s", value_parser = parse_cache_ttl)]
    pub revocation_cache_ttl: Duration,
}

fn parse_cache_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s)?;
    if d > CACHE_TTL_MAX {
        return Err(format!(
            "at most {CACHE_TTL_MAX:?}: a revoked token may be accepted for this long"
        ));
    }
    Ok(d)
}

/// Registers the metric above at zero.
pub fn describe() {
    metrics::describe_counter!(
        CHECK_ERRORS_TOTAL,
        "Token revocation checks whose backend failed or timed out; the token was accepted (fail open)"
    );
    metrics::counter!(CHECK_ERRORS_TOTAL).increment(0);
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RevocationError {
    #[error("revocation backend unavailable: {0}")]
    Unavailable(String),
    #[error("revocation backend timed out")]
    Timeout,
    #[error("the in-process revocation list is full ({MEMORY_REVOCATIONS_MAX} users)")]
    Full,
}

/// Where the per-user not-before is kept.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Refuses `user`'s tokens issued before `not_before_s` (Unix seconds), for `ttl`. A later
    /// not-before already stored wins.
    async fn revoke(
        &self,
        user: &str,
        not_before_s: u64,
        ttl: Duration,
    ) -> Result<(), RevocationError>;
    /// The user's not-before, if a revoke is in force.
    async fn not_before(&self, user: &str) -> Result<Option<u64>, RevocationError>;
}

/// Whether a token issued at `issued_at` loses to `not_before`. A token without `iat` cannot
/// prove it is newer, so it loses to any revoke.
pub fn refuses(not_before: Option<u64>, issued_at: Option<u64>) -> bool {
    match (not_before, issued_at) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(nbf), Some(iat)) => iat < nbf,
    }
}

/// In-process store (embedded mode and tests), bounded by [`MEMORY_REVOCATIONS_MAX`].
#[derive(Default)]
pub struct MemoryRevocations {
    users: Mutex<HashMap<String, (u64, Instant)>>,
}

impl MemoryRevocations {
    pub fn new() -> MemoryRevocations {
        MemoryRevocations::default()
    }
}

#[async_trait]
impl RevocationStore for MemoryRevocations {
    async fn revoke(
        &self,
        user: &str,
        not_before_s: u64,
        ttl: Duration,
    ) -> Result<(), RevocationError> {
        let now = Instant::now();
        let until = now
            .checked_add(ttl)
            .unwrap_or(now + crate::auth::EXPIRY_HORIZON_MAX);
        let mut users = self.users.lock();
        if users.len() >= MEMORY_REVOCATIONS_MAX && !users.contains_key(user) {
            users.retain(|_, (_, expires)| *expires > now);
            if users.len() >= MEMORY_REVOCATIONS_MAX {
                return Err(RevocationError::Full);
            }
        }
        let entry = users.entry(user.to_string()).or_insert((0, until));
        if entry.1 <= now || entry.0 < not_before_s {
            *entry = (not_before_s, until);
        }
        Ok(())
    }

    async fn not_before(&self, user: &str) -> Result<Option<u64>, RevocationError> {
        let now = Instant::now();
        Ok(self
            .users
            .lock()
            .get(user)
            .filter(|(_, expires)| *expires > now)
            .map(|(nbf, _)| *nbf))
    }
}

/// Sets KEYS[1] to ARGV[1] (with TTL ARGV[2] ms) unless it already holds a larger number.
const REVOKE_SCRIPT: &str = "local v = tonumber(redis.call('GET', KEYS[1])) \
     if v == nil or v < tonumber(ARGV[1]) then \
     redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0";

/// Redis store: key `revoked:{USER}` (after the key prefix) holds the not-before in Unix seconds,
/// with a TTL; the hash tag puts it in the user's slot on a cluster.
pub struct RedisRevocations {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl RedisRevocations {
    /// Uses `client` (usually the routing client); `timeout` bounds each call.
    pub fn new(client: Client, prefix: impl Into<String>, timeout: Duration) -> RedisRevocations {
        RedisRevocations {
            client,
            prefix: prefix.into(),
            timeout,
        }
    }

    fn key(&self, user: &str) -> String {
        format!("{}revoked:{{{user}}}", self.prefix)
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, RevocationError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(RevocationError::Timeout),
            Ok(r) => r.map_err(|e| RevocationError::Unavailable(format!("redis: {e}"))),
        }
    }
}

#[async_trait]
impl RevocationStore for RedisRevocations {
    async fn revoke(
        &self,
        user: &str,
        not_before_s: u64,
        ttl: Duration,
    ) -> Result<(), RevocationError> {
        let ttl_ms = ttl.as_millis().clamp(1, i64::MAX as u128);
        self.timed(self.client.eval::<i64, _, _, _>(
            REVOKE_SCRIPT,
            self.key(user),
            vec![not_before_s.to_string(), ttl_ms.to_string()],
        ))
        .await
        .map(|_| ())
    }

    async fn not_before(&self, user: &str) -> Result<Option<u64>, RevocationError> {
        let v: Option<String> = self.timed(self.client.get(self.key(user))).await?;
        Ok(v.and_then(|s| s.parse().ok()))
    }
}

/// Cached reads of one user's not-before, in two generations: an entry is used while younger than
/// the TTL; the current generation becomes the previous one every TTL (or when it holds
/// [`CACHE_ENTRIES_MAX`] users), and the previous one is dropped, so memory stays bounded without
/// a sweep.
struct Cache {
    current: HashMap<String, (Option<u64>, Instant)>,
    previous: HashMap<String, (Option<u64>, Instant)>,
    rotated_at: Instant,
}

impl Cache {
    fn get(&self, user: &str, now: Instant, ttl: Duration) -> Option<Option<u64>> {
        self.current
            .get(user)
            .or_else(|| self.previous.get(user))
            .filter(|(_, at)| now.duration_since(*at) < ttl)
            .map(|(nbf, _)| *nbf)
    }

    fn put(&mut self, user: &str, not_before: Option<u64>, now: Instant, ttl: Duration) {
        if now.duration_since(self.rotated_at) >= ttl || self.current.len() >= CACHE_ENTRIES_MAX {
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at = now;
        }
        self.current.insert(user.to_string(), (not_before, now));
    }
}

/// The check every process runs: a [`RevocationStore`] behind a short-lived cache.
///
/// Staleness: a process may accept a revoked token for up to the cache TTL after the revoke, except
/// where it learned of the revoke directly ([`RevocationCheck::remember`]: the API replica that
/// handled it, and every gateway through its node stream). A backend that fails or times out lets
/// the token through (fail open, counted in [`CHECK_ERRORS_TOTAL`]): the revoke has already closed
/// the user's sockets, and refusing every caller while Redis is away would turn a partial outage
/// into a full one.
pub struct RevocationCheck {
    store: Arc<dyn RevocationStore>,
    cache: Mutex<Cache>,
    ttl: Duration,
    timeout: Duration,
}

impl RevocationCheck {
    /// Caches each user's not-before for `cache_ttl` (zero: no cache, every check asks `store`);
    /// `timeout` bounds each backend read.
    pub fn new(store: Arc<dyn RevocationStore>, cache_ttl: Duration, timeout: Duration) -> Self {
        RevocationCheck {
            store,
            cache: Mutex::new(Cache {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated_at: Instant::now(),
            }),
            ttl: cache_ttl,
            timeout,
        }
    }

    /// An in-process store with no cache (one process, nothing to save).
    pub fn memory() -> RevocationCheck {
        RevocationCheck::new(
            Arc::new(MemoryRevocations::new()),
            Duration::ZERO,
            Duration::from_secs(1),
        )
    }

    /// Whether `identity`'s token is refused by a revoke of its subject.
    pub async fn is_revoked(&self, identity: &Identity) -> bool {
        let user = identity.subject.as_str();
        let cached = if self.ttl.is_zero() {
            None
        } else {
            self.cache.lock().get(user, Instant::now(), self.ttl)
        };
        let not_before = match cached {
            Some(nbf) => nbf,
            None => {
                let read = tokio::time::timeout(self.timeout, self.store.not_before(user)).await;
                match read.unwrap_or(Err(RevocationError::Timeout)) {
                    Ok(nbf) => {
                        if !self.ttl.is_zero() {
                            self.cache.lock().put(user, nbf, Instant::now(), self.ttl);
                        }
                        nbf
                    }
                    Err(e) => {
                        metrics::counter!(CHECK_ERRORS_TOTAL).increment(1);
                        tracing::warn!(error = %e, "token revocation not checked (failing open)");
                        None
                    }
                }
            }
        };
        refuses(not_before, identity.issued_at)
    }

    /// Stores a revoke of `user`'s tokens issued before `not_before_s`, for `ttl`, and remembers
    /// it in this process at once.
    pub async fn revoke(
        &self,
        user: &str,
        not_before_s: u64,
        ttl: Duration,
    ) -> Result<(), RevocationError> {
        tokio::time::timeout(self.timeout, self.store.revoke(user, not_before_s, ttl))
            .await
            .unwrap_or(Err(RevocationError::Timeout))?;
        self.remember(user, not_before_s);
        Ok(())
    }

    /// Puts a revoke this process learned of (its own, or one announced on its node stream) into
    /// the cache, so that it applies here at once instead of after the cache TTL.
    pub fn remember(&self, user: &str, not_before_s: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock();
        let known = cache.get(user, now, self.ttl).flatten();
        let nbf = known.map_or(not_before_s, |k| k.max(not_before_s));
        cache.put(user, Some(nbf), now, self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, iat: Option<u64>) -> Identity {
        Identity {
            subject: user.into(),
            scopes: Vec::new(),
            expires_at: u64::MAX,
            issued_at: iat,
        }
    }

    #[test]
    fn tokens_before_the_not_before_or_without_iat_are_refused() {
        assert!(!refuses(None, None));
        assert!(!refuses(None, Some(5)));
        assert!(refuses(Some(10), None));
        assert!(refuses(Some(10), Some(9)));
        assert!(!refuses(Some(10), Some(10)));
        assert!(!refuses(Some(10), Some(11)));
    }

    #[tokio::test]
    async fn memory_store_keeps_the_latest_not_before_until_its_ttl() {
        let s = MemoryRevocations::new();
        assert_eq!(s.not_before("u").await.unwrap(), None);
        s.revoke("u", 20, Duration::from_secs(60)).await.unwrap();
        s.revoke("u", 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(s.not_before("u").await.unwrap(), Some(20));
        s.revoke("v", 5, Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.not_before("v").await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_store_is_bounded() {
        let s = MemoryRevocations::new();
        for i in 0..MEMORY_REVOCATIONS_MAX {
            s.revoke(&format!("u{i}"), 1, Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(
            s.revoke("one-more", 1, Duration::from_secs(60)).await,
            Err(RevocationError::Full)
        );
        // A user already listed can still be revoked again.
        s.revoke("u0", 2, Duration::from_secs(60)).await.unwrap();
    }

    #[tokio::test]
    async fn the_cache_serves_stale_answers_for_at_most_its_ttl_unless_told() {
        let store = Arc::new(MemoryRevocations::new());
        let check = RevocationCheck::new(
            store.clone(),
            Duration::from_millis(200),
            Duration::from_secs(1),
        );
        let old = id("u", Some(100));
        assert!(!check.is_revoked(&old).await);
        // Revoked behind the cache's back (another replica): still accepted while cached…
        store
            .revoke("u", 200, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!check.is_revoked(&old).await);
        // …and refused once the entry is older than the TTL.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(check.is_revoked(&old).await);
        assert!(!check.is_revoked(&id("u", Some(200))).await);
        // A revoke this process hears of applies at once.
        let other = id("w", Some(100));
        assert!(!check.is_revoked(&other).await);
        check.remember("w", 150);
        assert!(check.is_revoked(&other).await);
        // A smaller not-before never lowers a known one.
        check.remember("w", 50);
        assert!(check.is_revoked(&other).await);
    }

    #[test]
    fn the_cache_is_bounded_by_two_generations() {
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut cache = Cache {
            current: HashMap::new(),
            previous: HashMap::new(),
            rotated_at: now,
        };
        for i in 0..(3 * CACHE_ENTRIES_MAX) {
            cache.put(&format!("u{i}"), None, now, ttl);
            assert!(cache.current.len() + cache.previous.len() <= 2 * CACHE_ENTRIES_MAX);
        }
        // The newest entries are still served.
        let last = format!("u{}", 3 * CACHE_ENTRIES_MAX - 1);
        assert_eq!(cache.get(&last, now, ttl), Some(None));
    }

    /// A mock: a backend that always fails (a real outage is covered by the Redis test below).
    struct MockFailingStore;
    #[async_trait]
    impl RevocationStore for MockFailingStore {
        async fn revoke(&self, _: &str, _: u64, _: Duration) -> Result<(), RevocationError> {
            Err(RevocationError::Unavailable("down".into()))
        }
        async fn not_before(&self, _: &str) -> Result<Option<u64>, RevocationError> {
            Err(RevocationError::Unavailable("down".into()))
        }
    }

    #[tokio::test]
    async fn a_failing_backend_fails_open_and_a_revoke_reports_it() {
        let check = RevocationCheck::new(
            Arc::new(MockFailingStore),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(!check.is_revoked(&id("u", None)).await);
        assert!(check.revoke("u", 1, Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn redis_store_keeps_the_latest_not_before_with_a_ttl_and_fails_open_when_down() {
        let mut server = crate::testkit::RedisServer::start().expect("redis-server");
        let routing = crate::routing::redis::connect(
            &server.url(),
            crate::routing::redis::RedisOptions::default(),
        )
        .await
        .unwrap();
        let s = Arc::new(RedisRevocations::new(
            routing.client().clone(),
            "t:",
            Duration::from_millis(300),
        ));
        assert_eq!(s.not_before("u").await.unwrap(), None);
        s.revoke("u", 20, Duration::from_secs(60)).await.unwrap();
        s.revoke("u", 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(s.not_before("u").await.unwrap(), Some(20));
        s.revoke("v", 5, Duration::from_millis(50)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(s.not_before("v").await.unwrap(), None);
        let check = RevocationCheck::new(s, Duration::ZERO, Duration::from_millis(300));
        assert!(check.is_revoked(&id("u", Some(19))).await);
        server.stop();
        let started = Instant::now();
        assert!(!check.is_revoked(&id("u", Some(19))).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        // No `quit`: with the server gone it would wait for a reconnect that never comes.
        drop(routing);
    }
}
