//! The Redis [`RateLimiter`]: GCRA in one Lua script (one round trip), shared by every replica,
//! falling back to a per-process limiter for a while when Redis fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::LuaInterface;

use super::{Decision, MemoryLimiter, Quota, RateLimitError, RateLimiter};

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
                metrics::counter!(crate::telemetry::RATELIMIT_BACKEND_ERRORS_TOTAL, "bucket" => bucket.to_owned())
                    .increment(1);
                tracing::warn!(error = %e, bucket, "rate limits fall back to this process for a while");
                Ok(self.local.check_now(bucket, key, quota))
            }
        }
    }
}
