//! The in-process [`RateLimiter`]: GCRA over a swept map (embedded mode, and the fallback the
//! Redis limiter uses while Redis is away).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

use super::{Decision, Quota, RateLimitError, RateLimiter};

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

    pub(super) fn now_us(&self) -> u64 {
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
