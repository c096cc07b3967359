//! The one conformance suite for [`RateLimiter`] implementations. Each backend's tests call these
//! functions with a fresh instance; keys are unique per call so that a shared Redis is fine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Check, Decision, Quota, RateLimiter};

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn check(l: &dyn RateLimiter, bucket: &str, key: &str, q: &Quota) -> Decision {
    l.check(bucket, key, q)
        .await
        .expect("the limiter backend answers")
}

/// A fresh key allows exactly `burst` requests at once, then refuses with a wait of about one
/// emission interval (never more than the whole burst window).
pub async fn burst_then_refuse(l: Arc<dyn RateLimiter>) {
    let key = unique("burst");
    // One per minute sustained: nothing refills during the test, however slow the machine.
    let q = Quota::per_minute(1, 5);
    for i in 0..5 {
        assert_eq!(
            check(&*l, "t", &key, &q).await,
            Decision::Allowed,
            "request {i} of the burst"
        );
    }
    for _ in 0..3 {
        match check(&*l, "t", &key, &q).await {
            Decision::Limited { retry_after } => {
                assert!(
                    retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60),
                    "retry_after {retry_after:?} should be about one interval (60 s)"
                );
            }
            Decision::Allowed => panic!("past the burst must be refused"),
        }
    }
}

/// Buckets and keys have separate budgets.
pub async fn keys_and_buckets_are_independent(l: Arc<dyn RateLimiter>) {
    let (a, b) = (unique("a"), unique("b"));
    let q = Quota::per_minute(1, 1);
    assert!(check(&*l, "t", &a, &q).await.is_allowed());
    assert!(!check(&*l, "t", &a, &q).await.is_allowed());
    assert!(check(&*l, "t", &b, &q).await.is_allowed());
    assert!(check(&*l, "other", &a, &q).await.is_allowed());
}

/// After the announced wait, the request is allowed again; before it, it is not.
pub async fn refills_after_retry_after(l: Arc<dyn RateLimiter>) {
    let key = unique("refill");
    // 5 per second, burst 1: a 200 ms interval.
    let q = Quota::per_second(5, 1);
    assert!(check(&*l, "t", &key, &q).await.is_allowed());
    let wait = match check(&*l, "t", &key, &q).await {
        Decision::Limited { retry_after } => retry_after,
        Decision::Allowed => panic!("second request within the interval must be refused"),
    };
    assert!(wait <= Duration::from_millis(200), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert!(
        check(&*l, "t", &key, &q).await.is_allowed(),
        "allowed after waiting retry_after ({wait:?})"
    );
}

/// Over a longer run the number allowed is close to burst + rate × elapsed: the limiter neither
/// leaks (allows far more) nor starves (allows far fewer).
pub async fn sustained_rate(l: Arc<dyn RateLimiter>) {
    let key = unique("rate");
    let q = Quota::per_second(50, 5);
    let started = Instant::now();
    let mut allowed = 0u32;
    let mut checks = 0u32;
    while started.elapsed() < Duration::from_millis(600) && checks < 100_000 {
        checks += 1;
        if check(&*l, "t", &key, &q).await.is_allowed() {
            allowed += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let max = 5.0 + 50.0 * elapsed + 1.0;
    assert!(
        f64::from(allowed) <= max,
        "allowed {allowed} in {elapsed:.3}s, at most {max:.1} expected"
    );
    // The sleeps may stretch under load, so only a loose lower bound: at least the burst plus
    // half of what the rate earned while the loop was really checking.
    assert!(allowed >= 5 + 10, "allowed only {allowed} in {elapsed:.3}s");
}

/// Concurrent checks on one key never allow more than the budget (the check is atomic).
pub async fn atomic_under_concurrency(l: Arc<dyn RateLimiter>) {
    let key = unique("race");
    let q = Quota::per_minute(1, 10);
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let l = l.clone();
            let key = key.clone();
            tokio::spawn(async move { check(&*l, "t", &key, &q).await.is_allowed() })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        if t.await.expect("task") {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "exactly the burst is allowed");
}

/// Runs every case.
/// `check_all` spends every named budget once per call, each on its own (a refusal of one does
/// not spare the other), and answers in the order given.
pub async fn check_all_spends_each_budget(l: Arc<dyn RateLimiter>) {
    let (a, b) = (unique("all-a"), unique("all-b"));
    let small = Quota::per_minute(1, 2);
    let large = Quota::per_minute(1, 3);
    let checks = [
        Check {
            bucket: "req",
            key: &a,
            quota: &large,
        },
        Check {
            bucket: "msg",
            key: &b,
            quota: &small,
        },
    ];
    let mut answers = Vec::new();
    for _ in 0..4 {
        let d = l
            .check_all(&checks)
            .await
            .expect("the limiter backend answers");
        answers.push(d.iter().map(Decision::is_allowed).collect::<Vec<_>>());
    }
    assert_eq!(
        answers,
        [[true, true], [true, true], [true, false], [false, false]],
        "each budget on its own"
    );
    // Each key is spent: a single check of either is refused now.
    assert!(!check(&*l, "req", &a, &large).await.is_allowed());
    assert!(!check(&*l, "msg", &b, &small).await.is_allowed());
    assert!(l.check_all(&[]).await.expect("no checks").is_empty());
}

pub async fn all(l: Arc<dyn RateLimiter>) {
    burst_then_refuse(l.clone()).await;
    check_all_spends_each_budget(l.clone()).await;
    keys_and_buckets_are_independent(l.clone()).await;
    refills_after_retry_after(l.clone()).await;
    sustained_rate(l.clone()).await;
    atomic_under_concurrency(l).await;
}
