//! Distributed mode: message ids follow Redis time. Every replica measures its clock against
//! Redis `TIME` at start and then periodically and draws ids from a [`ReferenceClock`] set from
//! those measurements, so that replicas whose host clocks differ still agree on time within
//! half a round trip. A replica that cannot measure, or whose own clock is further off than
//! `API_MAX_CLOCK_SKEW`, refuses sends (503) and is not ready (docs/RELIABILITY.md).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shared::config::parse_nonzero_duration;
use shared::ids::{ClockSample, ReferenceClock};

/// Above this offset a replica still serves (its ids follow Redis) but says so in its log.
pub const OFFSET_WARN: Duration = Duration::from_secs(1);

/// Settings of the clock check (`chat-api serve`).
#[derive(clap::Args, Clone, Debug)]
pub struct ClockArgs {
    /// Largest difference between this host's clock and Redis's that the replica accepts; past
    /// it, sends are refused (503) and /readyz fails. Message ids follow Redis time whatever the
    /// difference, but token expiry (`exp`, JWT_LEEWAY) is checked against the local clock, so a
    /// host clock off by more than the leeway is a fault to fix; the default equals JWT_LEEWAY's.
    /// API_REQUEST_TIMEOUT + API_FANOUT_TIMEOUT + API_FANOUT_RETRY_WINDOW + 2 × this must fit in
    /// the 30 s catch-up overlap.
    #[arg(long, env = "API_MAX_CLOCK_SKEW", value_name = "API_MAX_CLOCK_SKEW", default_value = "5s", value_parser = parse_nonzero_duration)]
    pub max_clock_skew: Duration,
    /// How often the clock is measured against Redis `TIME`.
    #[arg(long, env = "API_CLOCK_CHECK_INTERVAL", value_name = "API_CLOCK_CHECK_INTERVAL", default_value = "1s", value_parser = parse_nonzero_duration)]
    pub clock_check_interval: Duration,
    /// Without a successful measurement for this long, sends are refused (503) and /readyz
    /// fails. Between measurements ids run on the monotonic clock, which drifts by well under a
    /// millisecond a minute; the bound catches a Redis that stays unreachable.
    #[arg(long, env = "API_CLOCK_STALE_AFTER", value_name = "API_CLOCK_STALE_AFTER", default_value = "60s", value_parser = parse_nonzero_duration)]
    pub clock_stale_after: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockConfigError {
    #[error("API_CLOCK_CHECK_INTERVAL ({interval:?}) must be shorter than API_CLOCK_STALE_AFTER ({stale:?})")]
    IntervalExceedsStale { interval: Duration, stale: Duration },
}

impl ClockArgs {
    pub fn check(&self) -> Result<(), ClockConfigError> {
        if self.clock_check_interval >= self.clock_stale_after {
            return Err(ClockConfigError::IntervalExceedsStale {
                interval: self.clock_check_interval,
                stale: self.clock_stale_after,
            });
        }
        Ok(())
    }
}

/// Why this replica does not trust its clock now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockProblem {
    #[error(
        "the clock has not been measured against Redis TIME for {since:?} \
         (API_CLOCK_STALE_AFTER {limit:?}); is Redis reachable?"
    )]
    Unmeasured { since: Duration, limit: Duration },
    #[error(
        "this host's clock is {offset_ms} ms off Redis time, more than API_MAX_CLOCK_SKEW \
         ({limit:?}); fix the host's time synchronisation (NTP)"
    )]
    Skewed { offset_ms: i64, limit: Duration },
}

/// The replica's clock state: the reference clock its ids use and when it was last measured.
#[derive(Debug)]
pub struct ClockGuard {
    clock: Arc<ReferenceClock>,
    max_skew: Duration,
    stale_after: Duration,
    /// When the last successful measurement was taken (`None`: never).
    measured_at: Mutex<Option<Instant>>,
    /// Whether the last check found a problem (so that changes are logged once).
    state: Mutex<Logged>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logged {
    Fine,
    Warned,
    Refusing,
}

impl ClockGuard {
    pub fn new(clock: Arc<ReferenceClock>, args: &ClockArgs) -> ClockGuard {
        ClockGuard {
            clock,
            max_skew: args.max_clock_skew,
            stale_after: args.clock_stale_after,
            measured_at: Mutex::new(None),
            state: Mutex::new(Logged::Fine),
        }
    }

    pub fn clock(&self) -> &Arc<ReferenceClock> {
        &self.clock
    }

    /// `Ok` while ids may be drawn: measured recently, and the local clock within the bound.
    pub fn check(&self) -> Result<(), ClockProblem> {
        let since = match *self.measured_at.lock() {
            Some(at) => at.elapsed(),
            None => Duration::MAX,
        };
        if since > self.stale_after {
            return Err(ClockProblem::Unmeasured {
                since,
                limit: self.stale_after,
            });
        }
        let offset_ms = self.clock.offset_ms();
        if offset_ms.unsigned_abs() > u64::try_from(self.max_skew.as_millis()).unwrap_or(u64::MAX) {
            return Err(ClockProblem::Skewed {
                offset_ms,
                limit: self.max_skew,
            });
        }
        Ok(())
    }

    /// Takes one reading of the reference (`reference_unix_us`, asked at `sent`, answered at
    /// `received`), and logs when the state changes.
    pub fn observe(&self, reference_unix_us: u64, sent: Instant, received: Instant) -> ClockSample {
        let sample = self.clock.set(reference_unix_us, sent, received);
        *self.measured_at.lock() = Some(received);
        metrics::gauge!(crate::telemetry::CLOCK_OFFSET_SECONDS)
            .set(sample.offset_ms as f64 / 1000.0);
        self.log_state(Some(sample));
        sample
    }

    /// Logs a change of state: WARN when the offset passes [`OFFSET_WARN`] (ids follow Redis),
    /// ERROR when sends start being refused, INFO when they are accepted again.
    fn log_state(&self, sample: Option<ClockSample>) {
        let problem = self.check();
        let now = match (&problem, sample) {
            (Err(_), _) => Logged::Refusing,
            (Ok(()), Some(s)) if s.offset_ms.unsigned_abs() > OFFSET_WARN.as_millis() as u64 => {
                Logged::Warned
            }
            (Ok(()), _) => Logged::Fine,
        };
        let mut state = self.state.lock();
        if *state == now {
            return;
        }
        let offset_ms = sample.map(|s| s.offset_ms);
        let round_trip_ms = sample.map(|s| s.round_trip.as_secs_f64() * 1000.0);
        match (&problem, now) {
            (Err(problem), _) => tracing::error!(
                ?offset_ms,
                %problem,
                "refusing sends (503) and not ready until the clock can be trusted"
            ),
            (Ok(()), Logged::Warned) => tracing::warn!(
                ?offset_ms,
                ?round_trip_ms,
                "this host's clock differs from Redis time by more than 1 s; message ids follow \
                 Redis time (check the host's time synchronisation)"
            ),
            (Ok(()), _) => tracing::info!(
                ?offset_ms,
                ?round_trip_ms,
                "clock agrees with Redis time; sends accepted"
            ),
        }
        *state = now;
    }

    /// Measures every `interval` with `read_us` (Redis `TIME` in Unix µs), for ever. A failed
    /// reading is logged (once per run of failures) and leaves the clock as it was.
    pub async fn run<F, Fut, E>(self: Arc<Self>, interval: Duration, read_us: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
        E: std::fmt::Display,
    {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let sent = Instant::now();
            match read_us().await {
                Ok(us) => {
                    failing = false;
                    self.observe(us, sent, Instant::now());
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "cannot read Redis TIME; the clock keeps its last measurement");
                    }
                    failing = true;
                    self.log_state(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use shared::ids::now_unix_ms;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        clock: ClockArgs,
    }

    fn args(extra: &[&str]) -> ClockArgs {
        let mut all = vec!["x"];
        all.extend_from_slice(extra);
        Cli::try_parse_from(all).unwrap().clock
    }

    #[test]
    fn defaults_and_validation() {
        let a = args(&[]);
        assert_eq!(a.max_clock_skew, Duration::from_secs(5));
        assert_eq!(a.clock_check_interval, Duration::from_secs(1));
        assert_eq!(a.clock_stale_after, Duration::from_secs(60));
        assert!(a.check().is_ok());
        let e = args(&["--clock-check-interval", "5s", "--clock-stale-after", "5s"])
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("API_CLOCK_STALE_AFTER"), "{e}");
    }

    #[test]
    fn refuses_until_measured_then_while_skewed_or_stale() {
        let a = args(&["--max-clock-skew", "2s", "--clock-stale-after", "50ms"]);
        let guard = ClockGuard::new(Arc::new(ReferenceClock::new()), &a);
        assert!(matches!(
            guard.check(),
            Err(ClockProblem::Unmeasured { .. })
        ));
        let now = Instant::now();
        // Redis 1.5 s ahead of this host: within the bound; ids follow Redis.
        let s = guard.observe((now_unix_ms() + 1_500) * 1000, now, now);
        assert!((1_450..=1_550).contains(&s.offset_ms), "{s:?}");
        assert_eq!(guard.check(), Ok(()));
        assert!(guard.clock().now_unix_ms() >= now_unix_ms() + 1_400);
        // 3 s behind: beyond it.
        let now = Instant::now();
        guard.observe((now_unix_ms() - 3_000) * 1000, now, now);
        let e = guard.check().unwrap_err();
        assert!(matches!(e, ClockProblem::Skewed { .. }), "{e}");
        assert!(e.to_string().contains("API_MAX_CLOCK_SKEW"), "{e}");
        // Back in line, then no measurement for longer than the staleness bound.
        let now = Instant::now();
        guard.observe(now_unix_ms() * 1000, now, now);
        assert_eq!(guard.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(80));
        let e = guard.check().unwrap_err();
        assert!(e.to_string().contains("API_CLOCK_STALE_AFTER"), "{e}");
    }
}
