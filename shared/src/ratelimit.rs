//! Rate limits shared by both tiers: a [`RateLimiter`] trait doing GCRA (the generic cell rate
//! algorithm, a token bucket that stores one timestamp per key) with an in-process implementation
//! for embedded mode ([`MemoryLimiter`]) and a Redis one for distributed mode ([`RedisLimiter`]:
//! one Lua script, one round trip, so that every replica shares the same budget).
//!
//! GCRA keeps per key a "theoretical arrival time" (TAT). With an emission interval
//! `T = period / count` and a burst of `B`, a request at `now` is allowed when
//! `max(TAT, now) + T - B·T <= now`, and then the TAT advances by `T`. A fresh key therefore
//! allows `B` requests at once and `count` per `period` sustained; a refused request learns
//! exactly how long to wait.

pub mod conformance;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use fred::clients::Client;
use fred::interfaces::LuaInterface;

/// A rate: `count` events per `period`, with bursts of up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Quota {
    /// `count` per second, burst `burst`.
    pub fn per_second(count: u32, burst: u32) -> Quota {
        Quota {
            count,
            period: Duration::from_secs(1),
            burst,
        }
    }

    /// `count` per minute, burst `burst`.
    pub fn per_minute(count: u32, burst: u32) -> Quota {
        Quota {
            count,
            period: Duration::from_secs(60),
            burst,
        }
    }

    /// The emission interval `T`, in microseconds (at least 1).
    fn interval_us(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.count.max(1))).max(1)
    }

    /// Checks that the quota can be used; the message names the setting.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if self.count == 0 || self.burst == 0 || self.period.is_zero() {
            return Err(format!(
                "{name}: count, burst and period must all be above zero"
            ));
        }
        Ok(())
    }
}

/// Parses `COUNT/PERIOD[:BURST]`, e.g. `10/1s`, `600/1m:50` (the burst defaults to `COUNT`).
/// `off` disables the limit.
pub fn parse_quota(s: &str) -> Result<Option<Quota>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let help = "expected COUNT/PERIOD[:BURST] (e.g. 10/1s, 600/1m:50) or off";
    let (count, rest) = s.split_once('/').ok_or_else(|| help.to_string())?;
    let (period, burst) = match rest.split_once(':') {
        Some((p, b)) => (p, Some(b)),
        None => (rest, None),
    };
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("bad count: {help}"))?;
    let period = humantime::parse_duration(period.trim()).map_err(|e| format!("{e}: {help}"))?;
    let burst: u32 = match burst {
        Some(b) => b.trim().parse().map_err(|_| format!("bad burst: {help}"))?,
        None => count,
    };
    let q = Quota {
        count,
        period,
        burst,
    };
    q.validate("quota")?;
    Ok(Some(q))
}

/// A quota setting as a flag or environment variable: a quota, or `off` (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaArg(pub Option<Quota>);

/// [`parse_quota`] for clap.
pub fn parse_quota_arg(s: &str) -> Result<QuotaArg, String> {
    parse_quota(s).map(QuotaArg)
}

/// The answer to one [`RateLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit; the same request would be allowed after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RateLimitError {
    #[error("rate-limit backend unavailable: {0}")]
    Unavailable(String),
    #[error("rate-limit backend timed out")]
    Timeout,
}

/// A GCRA rate limiter. `bucket` names the limit (e.g. `msg`, `req`, `conn`) and `key` the
/// subject it applies to (a user id, an IP address); each (bucket, key) pair has its own budget.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn check(
        &self,
        bucket: &str,
        key: &str,
        quota: &Quota,
    ) -> Result<Decision, RateLimitError>;
}

/// Checks and, when the backend fails, allows the request (fail open): a rate limit protects
/// capacity, and refusing every request because Redis is briefly away would turn a partial outage
/// into a full one. Each such pass is counted in `ratelimit_backend_errors_total{bucket}`.
pub async fn check_fail_open(
    limiter: &dyn RateLimiter,
    bucket: &'static str,
    key: &str,
    quota: &Quota,
) -> Decision {
    match limiter.check(bucket, key, quota).await {
        Ok(d) => d,
        Err(e) => {
            metrics::counter!("ratelimit_backend_errors_total", "bucket" => bucket).increment(1);
            tracing::warn!(error = %e, bucket, "rate limit not checked (failing open)");
            Decision::Allowed
        }
    }
}

/// Holds a refused request for its own `retry_after`, at most `max`, while `places` has a place
/// for it; returns how long it was held, or `None` when every place was taken (answer at once).
///
/// A client that honours Retry-After loses nothing by the hold (it would have waited anyway); one
/// that retries at once, such as a flood in a closed loop, is paced by the server at one attempt
/// per connection per hold, instead of by how fast the server can refuse: that is what keeps one
/// caller's flood off everyone else's latency. `places` bounds what the holds keep alive.
pub async fn hold_refusal(
    places: &tokio::sync::Semaphore,
    retry_after: Duration,
    max: Duration,
) -> Option<Duration> {
    let hold = retry_after.min(max);
    if hold.is_zero() {
        return Some(Duration::ZERO);
    }
    let _place = places.try_acquire().ok()?;
    tokio::time::sleep(hold).await;
    Some(hold)
}

/// [`hold_refusal`], then the retry-after left to tell the client: what remains after the hold,
/// or all of it when no place was free (counted in the counter `unheld_metric`).
pub async fn retry_after_held(
    places: &tokio::sync::Semaphore,
    retry_after: Duration,
    max: Duration,
    unheld_metric: &'static str,
) -> Duration {
    match hold_refusal(places, retry_after, max).await {
        Some(held) => retry_after - held,
        None => {
            metrics::counter!(unheld_metric).increment(1);
            retry_after
        }
    }
}

/// A retry-after as the `Retry-After` header's whole seconds: rounded up, at least 1, so that a
/// client that waits this long is allowed again.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// GCRA on a TAT in microseconds: returns the new TAT to store, or how long to wait.
fn gcra(tat_us: u64, now_us: u64, quota: &Quota) -> Result<u64, Duration> {
    let t = quota.interval_us();
    let tau = t.saturating_mul(u64::from(quota.burst));
    let new_tat = tat_us.max(now_us).saturating_add(t);
    let allow_at = new_tat.saturating_sub(tau);
    if allow_at > now_us {
        Err(Duration::from_micros(allow_at - now_us))
    } else {
        Ok(new_tat)
    }
}

/// Entries kept before a sweep of expired keys runs.
const MEMORY_SWEEP_AT: usize = 4096;

/// In-process GCRA (embedded mode, and the per-process fallback). Keys whose TAT has passed hold
/// no state worth keeping, so the map is swept of them once it grows past a few thousand entries;
/// its size is bounded by the keys active within one burst window.
pub struct MemoryLimiter {
    epoch: Instant,
    tats: DashMap<(String, String), u64>,
    sweep_at: AtomicU64,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter {
            epoch: Instant::now(),
            tats: DashMap::new(),
            sweep_at: AtomicU64::new(MEMORY_SWEEP_AT as u64),
        }
    }
}

impl std::fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("keys", &self.tats.len())
            .finish()
    }
}

impl MemoryLimiter {
    pub fn new() -> MemoryLimiter {
        MemoryLimiter::default()
    }

    fn now_us(&self) -> u64 {
        // Offset by one hour so that a TAT of 0 (a fresh key) is always in the past.
        self.epoch.elapsed().as_micros() as u64 + 3_600_000_000
    }

    /// Keys currently tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }

    /// Synchronous check; the async trait method calls this.
    pub fn check_now(&self, bucket: &str, key: &str, quota: &Quota) -> Decision {
        let now = self.now_us();
        let decision = {
            let mut entry = self
                .tats
                .entry((bucket.to_owned(), key.to_owned()))
                .or_insert(0);
            match gcra(*entry, now, quota) {
                Ok(tat) => {
                    *entry = tat;
                    Decision::Allowed
                }
                Err(retry_after) => Decision::Limited { retry_after },
            }
        };
        let len = self.tats.len() as u64;
        if len >= self.sweep_at.load(Ordering::Relaxed) {
            self.tats.retain(|_, tat| *tat > now);
            // Sweep again only after the map has doubled from what is still live.
            let next = (self.tats.len() as u64 * 2).max(MEMORY_SWEEP_AT as u64);
            self.sweep_at.store(next, Ordering::Relaxed);
        }
        decision
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn check(
        &self,
        bucket: &str,
        key: &str,
        quota: &Quota,
    ) -> Result<Decision, RateLimitError> {
        Ok(self.check_now(bucket, key, quota))
    }
}

/// GCRA in one script. KEYS[1] the key; ARGV: emission interval T (µs), burst tolerance B·T (µs).
/// Time comes from the Redis server (`TIME`), so replicas with skewed clocks share one budget.
/// Returns 0 when allowed, otherwise the wait in µs. The key expires when its TAT passes.
const GCRA_SCRIPT: &str = r#"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + t
local allow_at = new_tat - tau
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"#;

/// How long the Redis limiter uses its local fallback after a Redis failure before trying Redis
/// again, so that an outage costs one timeout per interval, not one per request.
pub const REDIS_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// GCRA in Redis: one `EVAL` (one round trip) per check. Keys are
/// `{prefix}rl:{BUCKET:KEY}`, one hash slot each, so the script is valid on Redis Cluster.
///
/// When Redis fails or times out, checks fall back to an in-process limiter for
/// [`REDIS_RETRY_INTERVAL`] (each replica then enforces the quota on its own, so the shared budget
/// is exceeded at most by the number of replicas): the limit fails open to per-replica limits
/// instead of refusing everyone or letting everything through. Each fallback counts in
/// `ratelimit_backend_errors_total{bucket}`.
pub struct RedisLimiter {
    client: Client,
    prefix: String,
    timeout: Duration,
    local: MemoryLimiter,
    /// Until this instant (µs on `local`'s clock) checks use `local` only.
    degraded_until_us: AtomicU64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Uses `client` (usually the routing client, see `RedisRouting::client`); `timeout` bounds
    /// each check.
    pub fn new(client: Client, prefix: impl Into<String>, timeout: Duration) -> RedisLimiter {
        RedisLimiter {
            client,
            prefix: prefix.into(),
            timeout,
            local: MemoryLimiter::new(),
            degraded_until_us: AtomicU64::new(0),
        }
    }

    /// One check against Redis only, without the local fallback.
    pub async fn check_redis(
        &self,
        bucket: &str,
        key: &str,
        quota: &Quota,
    ) -> Result<Decision, RateLimitError> {
        let t = quota.interval_us();
        let tau = t.saturating_mul(u64::from(quota.burst));
        let fut = self.client.eval::<i64, _, _, _>(
            GCRA_SCRIPT,
            self.key(bucket, key),
            vec![t.to_string(), tau.to_string()],
        );
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(RateLimitError::Timeout),
            Ok(Err(e)) => Err(RateLimitError::Unavailable(e.to_string())),
            Ok(Ok(0)) => Ok(Decision::Allowed),
            Ok(Ok(wait_us)) => Ok(Decision::Limited {
                retry_after: Duration::from_micros(wait_us.max(1) as u64),
            }),
        }
    }

    fn key(&self, bucket: &str, key: &str) -> String {
        format!("{}rl:{{{bucket}:{key}}}", self.prefix)
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(
        &self,
        bucket: &str,
        key: &str,
        quota: &Quota,
    ) -> Result<Decision, RateLimitError> {
        if self.local.now_us() < self.degraded_until_us.load(Ordering::Relaxed) {
            return Ok(self.local.check_now(bucket, key, quota));
        }
        match self.check_redis(bucket, key, quota).await {
            Ok(d) => Ok(d),
            Err(e) => {
                let until = self.local.now_us() + REDIS_RETRY_INTERVAL.as_micros() as u64;
                self.degraded_until_us.store(until, Ordering::Relaxed);
                metrics::counter!("ratelimit_backend_errors_total", "bucket" => bucket.to_owned())
                    .increment(1);
                tracing::warn!(error = %e, bucket, "rate limits fall back to this process for a while");
                Ok(self.local.check_now(bucket, key, quota))
            }
        }
    }
}

/// A limiter that allows everything (limits switched off).
#[derive(Debug, Default)]
pub struct Unlimited;

#[async_trait]
impl RateLimiter for Unlimited {
    async fn check(&self, _: &str, _: &str, _: &Quota) -> Result<Decision, RateLimitError> {
        Ok(Decision::Allowed)
    }
}

/// A token bucket owned by one socket or task (no sharing, no lock): `rate` tokens per second up
/// to `burst`. The gateway uses one per socket for client frames; other per-socket limits (typing
/// frames) can hold their own.
#[derive(Clone, Copy, Debug)]
pub struct LocalBucket {
    allowance: f32,
    last: tokio::time::Instant,
}

impl LocalBucket {
    /// A full bucket.
    pub fn full(burst: u32) -> LocalBucket {
        LocalBucket {
            allowance: burst as f32,
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate_per_s: u32, burst: u32) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f32();
        self.last = now;
        self.allowance = (self.allowance + elapsed * rate_per_s as f32).min(burst as f32);
        if self.allowance < 1.0 {
            return false;
        }
        self.allowance -= 1.0;
        true
    }
}

/// The in-process limiter as a trait object.
pub fn memory() -> Arc<dyn RateLimiter> {
    Arc::new(MemoryLimiter::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_burst_then_spaces() {
        let q = Quota::per_second(10, 3);
        let mut tat = 0;
        let now = 1_000_000_000;
        for _ in 0..3 {
            tat = gcra(tat, now, &q).unwrap();
        }
        let wait = gcra(tat, now, &q).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(gcra(tat, now + 100_000, &q).is_ok());
    }

    #[test]
    fn retry_after_header_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1200)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }

    #[tokio::test]
    async fn refusals_are_held_for_their_retry_after_within_bounds() {
        let places = tokio::sync::Semaphore::new(1);
        let (long, max) = (Duration::from_secs(5), Duration::from_millis(100));
        let short = Duration::from_millis(20);
        let t0 = Instant::now();
        assert_eq!(hold_refusal(&places, short, max).await, Some(short));
        assert!(t0.elapsed() >= short, "held for its own retry-after");
        let t1 = Instant::now();
        assert_eq!(hold_refusal(&places, long, max).await, Some(max));
        assert!(t1.elapsed() >= max, "held for the maximum");
        assert_eq!(
            hold_refusal(&places, long, Duration::ZERO).await,
            Some(Duration::ZERO)
        );
        // Every place taken: answered at once, not held.
        let _taken = places.try_acquire().unwrap();
        let t2 = Instant::now();
        assert_eq!(hold_refusal(&places, long, long).await, None);
        assert!(t2.elapsed() < long);
    }

    #[tokio::test]
    async fn local_bucket_refills() {
        let mut b = LocalBucket::full(3);
        assert!((0..3).all(|_| b.take(10, 3)));
        assert!(!b.take(10, 3));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(b.take(10, 3), "one token back after 100 ms");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            (0..10).filter(|_| b.take(10, 3)).count(),
            3,
            "capped at the burst"
        );
    }

    #[test]
    fn quotas_parse() {
        assert_eq!(
            parse_quota("10/1s").unwrap(),
            Some(Quota::per_second(10, 10))
        );
        assert_eq!(
            parse_quota("600/1m:50").unwrap(),
            Some(Quota::per_minute(600, 50))
        );
        assert_eq!(parse_quota("off").unwrap(), None);
        for bad in [
            "", "10", "x/1s", "10/soon", "0/1s", "10/0s", "10/1s:0", "10/1s:x",
        ] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_map_is_swept() {
        let m = MemoryLimiter::new();
        let q = Quota::per_second(1_000_000, 1);
        for i in 0..(MEMORY_SWEEP_AT * 3) {
            m.check_now("b", &i.to_string(), &q);
        }
        // Each key's TAT is 1 µs ahead, so sweeps keep the map far below the keys seen.
        assert!(m.len() < MEMORY_SWEEP_AT * 2, "{}", m.len());
    }
}
