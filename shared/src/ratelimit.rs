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
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryLimiter;
pub use redis::{RedisLimiter, REDIS_RETRY_INTERVAL};

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

    /// Several checks at once, each spending its own budget, answered in order. The Redis
    /// limiter makes them one round trip; the default checks one after the other.
    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, RateLimitError> {
        let mut out = Vec::with_capacity(checks.len());
        for c in checks {
            out.push(self.check(c.bucket, c.key, c.quota).await?);
        }
        Ok(out)
    }
}

/// One check of [`RateLimiter::check_all`].
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub quota: &'a Quota,
}

/// [`check_fail_open`] for several checks in one call: the first refusal in the order given,
/// or `Allowed`. Every check spends its budget, also when an earlier one refuses. When the
/// backend fails, all pass (each counted in `ratelimit_backend_errors_total{bucket}`).
pub async fn check_all_fail_open<'a>(
    limiter: &dyn RateLimiter,
    checks: &[Check<'a>],
) -> Option<(&'a str, Decision)> {
    match limiter.check_all(checks).await {
        Ok(decisions) => checks
            .iter()
            .zip(decisions)
            .find(|(_, d)| !d.is_allowed())
            .map(|(c, d)| (c.bucket, d)),
        Err(e) => {
            for c in checks {
                metrics::counter!(crate::telemetry::RATELIMIT_BACKEND_ERRORS_TOTAL, "bucket" => c.bucket.to_owned())
                    .increment(1);
            }
            tracing::warn!(error = %e, "rate limits not checked (failing open)");
            None
        }
    }
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
            metrics::counter!(crate::telemetry::RATELIMIT_BACKEND_ERRORS_TOTAL, "bucket" => bucket)
                .increment(1);
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
    use std::time::Instant;

    use super::*;

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
}
