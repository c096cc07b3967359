//! The Redis [`RateLimiter`]: GCRA in one Lua script (one round trip), shared by every replica,
//! falling back to a per-process limiter for a while when Redis fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::{ClusterHash, CustomCommand};
use sha1::{Digest, Sha1};

use super::{Check, Decision, MemoryLimiter, Quota, RateLimitError, RateLimiter};

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

/// The SHA-1 of [`GCRA_SCRIPT`], which `EVALSHA` names it by: a check sends 40 bytes instead of
/// the script's text, and Redis looks the compiled script up instead of hashing the text.
static GCRA_SHA1: LazyLock<String> = LazyLock::new(|| {
    Sha1::digest(GCRA_SCRIPT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
});

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
        let mut d = self
            .check_redis_all(&[Check { bucket, key, quota }])
            .await?;
        Ok(d.pop().unwrap_or(Decision::Allowed))
    }

    /// Checks against Redis only, in one round trip: `EVALSHA` of the GCRA script per check,
    /// pipelined. A server that does not know the script yet (restarted, flushed, a new cluster
    /// node) answers `NOSCRIPT` without running anything; that check is then sent once with the
    /// script's text (`EVAL`, which also caches it there), so no budget is spent twice.
    pub async fn check_redis_all(
        &self,
        checks: &[Check<'_>],
    ) -> Result<Vec<Decision>, RateLimitError> {
        let args = |c: &Check<'_>| {
            let t = c.quota.interval_us();
            let tau = t.saturating_mul(u64::from(c.quota.burst));
            (self.key(c.bucket, c.key), [t.to_string(), tau.to_string()])
        };
        let run = async {
            let mut replies: Vec<Result<i64, fred::error::Error>> = if let [c] = checks {
                let (key, argv) = args(c);
                vec![
                    self.client
                        .evalsha::<i64, _, _, _>(GCRA_SHA1.as_str(), key, argv.to_vec())
                        .await,
                ]
            } else {
                // Pipelines lack the Lua interface: `EVALSHA sha 1 key t tau` as a custom
                // command, routed by its key (argument 2) on a cluster.
                let p = self.client.pipeline();
                for c in checks {
                    let (key, [t, tau]) = args(c);
                    let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false);
                    let argv = vec![GCRA_SHA1.clone(), "1".to_string(), key, t, tau];
                    p.custom::<(), _>(cmd, argv)
                        .await
                        .map_err(|e| RateLimitError::Unavailable(e.to_string()))?;
                }
                p.try_all::<i64>().await
            };
            for (c, reply) in checks.iter().zip(replies.iter_mut()) {
                if matches!(reply, Err(e) if e.details().starts_with("NOSCRIPT")) {
                    let (key, argv) = args(c);
                    *reply = self
                        .client
                        .eval::<i64, _, _, _>(GCRA_SCRIPT, key, argv.to_vec())
                        .await;
                }
            }
            replies
                .into_iter()
                .map(|r| match r {
                    Err(e) => Err(RateLimitError::Unavailable(e.to_string())),
                    Ok(0) => Ok(Decision::Allowed),
                    Ok(wait_us) => Ok(Decision::Limited {
                        retry_after: Duration::from_micros(wait_us.max(1) as u64),
                    }),
                })
                .collect()
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .unwrap_or(Err(RateLimitError::Timeout))
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
        let mut d = self.check_all(&[Check { bucket, key, quota }]).await?;
        Ok(d.pop().unwrap_or(Decision::Allowed))
    }

    async fn check_all(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, RateLimitError> {
        let local = |checks: &[Check<'_>]| {
            checks
                .iter()
                .map(|c| self.local.check_now(c.bucket, c.key, c.quota))
                .collect()
        };
        if self.local.now_us() < self.degraded_until_us.load(Ordering::Relaxed) {
            return Ok(local(checks));
        }
        match self.check_redis_all(checks).await {
            Ok(d) => Ok(d),
            Err(e) => {
                let until = self.local.now_us() + REDIS_RETRY_INTERVAL.as_micros() as u64;
                self.degraded_until_us.store(until, Ordering::Relaxed);
                for c in checks {
                    metrics::counter!(crate::telemetry::RATELIMIT_BACKEND_ERRORS_TOTAL, "bucket" => c.bucket.to_owned())
                        .increment(1);
                }
                tracing::warn!(error = %e, "rate limits fall back to this process for a while");
                Ok(local(checks))
            }
        }
    }
}
