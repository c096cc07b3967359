//! Runs the rate-limiter conformance suite against the in-process limiter, a private Redis server
//! and a private 3-master Redis Cluster, and checks that a Redis outage fails open.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use shared::ratelimit::{
    check_fail_open, conformance as suite, Check, Decision, MemoryLimiter, Quota, RateLimiter,
    RedisLimiter,
};
use shared::routing::redis::{connect, RedisOptions};
use shared::testkit::{RedisCluster, RedisServer};

async fn redis_limiter(url: &str) -> (shared::routing::redis::RedisRouting, Arc<dyn RateLimiter>) {
    let routing = connect(url, RedisOptions::default())
        .await
        .expect("connect to the test redis");
    let limiter = RedisLimiter::new(routing.client().clone(), "t:", Duration::from_secs(1));
    (routing, Arc::new(limiter))
}

#[tokio::test]
async fn memory_conforms() {
    suite::all(Arc::new(MemoryLimiter::new())).await;
}

#[tokio::test]
async fn redis_conforms() {
    let server = RedisServer::start().expect("redis-server");
    let (_routing, limiter) = redis_limiter(&server.url()).await;
    suite::all(limiter).await;
}

#[tokio::test]
async fn redis_cluster_conforms() {
    let cluster = RedisCluster::start().expect("redis cluster");
    let (_routing, limiter) = redis_limiter(&cluster.url()).await;
    suite::all(limiter).await;
}

/// Checks name the script by its hash (`EVALSHA`); a server that lost its script cache (a
/// restart, `SCRIPT FLUSH`) gets the text once and the checks go on, spending each budget once.
#[tokio::test]
async fn redis_checks_use_evalsha_and_survive_a_flushed_script_cache() {
    let server = RedisServer::start().expect("redis-server");
    let (routing, limiter) = redis_limiter(&server.url()).await;
    let q = Quota::per_minute(1, 3);
    // The first check finds no script: EVALSHA refused, then one EVAL.
    assert!(limiter.check("msg", "ev", &q).await.unwrap().is_allowed());
    let before = server.stats().unwrap();
    let checks = [
        Check {
            bucket: "req",
            key: "ev",
            quota: &q,
        },
        Check {
            bucket: "msg",
            key: "ev",
            quota: &q,
        },
    ];
    let d = limiter.check_all(&checks).await.unwrap();
    assert!(d.iter().all(Decision::is_allowed), "{d:?}");
    let used = server.stats().unwrap().since(&before);
    assert_eq!(used.calls.get("evalsha"), Some(&2), "{used:?}");
    assert_eq!(used.calls.get("eval"), None, "{used:?}");

    let _: () = routing
        .client()
        .custom(
            fred::types::CustomCommand::new_static("SCRIPT", None, false),
            vec!["FLUSH"],
        )
        .await
        .unwrap();
    let before = server.stats().unwrap();
    let d = limiter.check_all(&checks).await.unwrap();
    // req: its 2nd unit of 3; msg: its 3rd of 3.
    assert!(d.iter().all(Decision::is_allowed), "{d:?}");
    let used = server.stats().unwrap().since(&before);
    assert_eq!(used.calls.get("eval"), Some(&2), "{used:?}");
    // Nothing was spent twice: msg's budget is gone now, req has one unit left.
    let d = limiter.check_all(&checks).await.unwrap();
    assert_eq!(d[0], Decision::Allowed);
    assert!(!d[1].is_allowed(), "{d:?}");
}

/// Two replicas (two clients) share one budget.
#[tokio::test]
async fn replicas_share_the_budget() {
    let server = RedisServer::start().expect("redis-server");
    let (_r1, a) = redis_limiter(&server.url()).await;
    let (_r2, b) = redis_limiter(&server.url()).await;
    let q = Quota::per_minute(1, 4);
    let mut allowed = 0;
    for i in 0..10 {
        let l = if i % 2 == 0 { &a } else { &b };
        if l.check("msg", "alice", &q).await.unwrap().is_allowed() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 4);
}

/// With Redis gone the limiter falls back to per-process limits (still enforced), and goes back
/// to Redis once it is reachable again.
#[tokio::test]
async fn redis_down_falls_back_to_local_limits() {
    let mut server = RedisServer::start().expect("redis-server");
    let routing = connect(&server.url(), RedisOptions::default())
        .await
        .expect("connect");
    let limiter = RedisLimiter::new(routing.client().clone(), "t:", Duration::from_millis(300));
    let q = Quota::per_minute(1, 2);
    assert!(limiter.check("x", "k", &q).await.unwrap().is_allowed());
    server.stop();
    assert!(limiter.check_redis("x", "k", &q).await.is_err());
    // Local budget: two allowed, then refused, all without waiting on Redis again.
    let started = std::time::Instant::now();
    let local: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(limiter.check("x", "fresh", &q).await.unwrap().is_allowed());
        }
        v
    };
    assert_eq!(local, [true, true, false]);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        check_fail_open(&limiter, "x", "other", &q).await,
        Decision::Allowed
    );
    // Redis back: after the retry interval, checks reach Redis again (key "k" used 1 of 2).
    server.start_again().expect("restart redis");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(shared::ratelimit::REDIS_RETRY_INTERVAL).await;
        if limiter.check_redis("x", "probe", &q).await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis did not come back"
        );
    }
    tokio::time::sleep(shared::ratelimit::REDIS_RETRY_INTERVAL).await;
    assert!(limiter.check("y", "k", &q).await.unwrap().is_allowed());
    assert!(limiter.check("y", "k", &q).await.unwrap().is_allowed());
    // A second limiter (another replica, with its own local fallback) sees the spent budget:
    // the checks went to Redis.
    let other = RedisLimiter::new(routing.client().clone(), "t:", Duration::from_millis(300));
    assert!(!other.check("y", "k", &q).await.unwrap().is_allowed());
}
