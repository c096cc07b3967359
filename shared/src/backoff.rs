//! Exponential backoff with jitter, the one retry pacing every reconnect and retry loop uses
//! (node stream reads and subscribe, route registration, fan-out retries and resync notices). Each
//! loop owns one [`Backoff`] and is the only layer that waits on a failure, so that two layers
//! never stack their pauses on one failure.

use std::time::Duration;

/// Pauses between attempts: the step starts at `min` and doubles after each pause up to `max`;
/// each pause is drawn between half the step and the whole step, so that the retries of many
/// callers that failed together do not line up.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps from `min` doubling up to `max` (`max` below `min` counts as `min`).
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// The pause before the next attempt (between half the step and the step); the step doubles
    /// for the one after, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max).max(self.min);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure pauses from the minimum again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    /// Each pause lies between half the step and the step; the step doubles, then stays at max.
    #[test]
    fn pauses_grow_within_their_bounds_up_to_the_maximum() {
        let mut b = Backoff::new(MIN, MAX);
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        for step in steps.map(Duration::from_millis) {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn reset_starts_from_the_minimum_again() {
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(b.next_delay() > MIN, "grown past the minimum");
        b.reset();
        let d = b.next_delay();
        assert!(d >= MIN / 2 && d <= MIN, "{d:?}");
    }

    /// The draws spread over the range: not all the same, and both halves of it are hit.
    #[test]
    fn jitter_spreads_over_half_to_all_of_the_step() {
        let draws: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(MAX, MAX).next_delay())
            .collect();
        assert!(draws.iter().all(|d| *d >= MAX / 2 && *d <= MAX));
        let low = draws.iter().filter(|d| **d < MAX.mul_f64(0.75)).count();
        assert!(
            low > 0 && low < draws.len(),
            "{low} of {} in the lower half",
            draws.len()
        );
    }

    #[test]
    fn a_maximum_below_the_minimum_keeps_the_minimum() {
        let mut b = Backoff::new(MIN, Duration::ZERO);
        for _ in 0..5 {
            let d = b.next_delay();
            assert!(d >= MIN / 2 && d <= MIN, "{d:?}");
        }
    }

    #[tokio::test]
    async fn wait_sleeps_about_the_pause() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(20));
        let started = std::time::Instant::now();
        b.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(10));
    }
}
