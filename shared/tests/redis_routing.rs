//! Runs the routing conformance suite against the Redis implementation on a private standalone
//! server and on a private 3-master Redis Cluster, and checks what only Redis can show: constant
//! round trips per fan-out, lazy and swept cleanup of dead nodes' routes, surviving a Redis
//! restart, and exclusive worker-id leases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface};
use shared::protocol::ServerFrame;
use shared::routing::conformance as suite;
use shared::routing::redis::{
    connect, LeaseError, LeaseOptions, RedisOptions, RedisRouting, WorkerLease, STREAM_READ_MAX,
};
use shared::routing::{fan_out, Envelope, NodeBus, NodeInfo, RouteRegistry, RoutingError};
use shared::testkit::{RedisCluster, RedisServer, ServerStats};

fn opts(prefix: &str) -> RedisOptions {
    RedisOptions {
        key_prefix: prefix.to_string(),
        ..RedisOptions::default()
    }
}

async fn routing(url: &str, options: RedisOptions) -> RedisRouting {
    connect(url, options)
        .await
        .expect("connect to the test redis")
}

fn node(id: &str, incarnation: u64) -> NodeInfo {
    NodeInfo {
        node_id: id.to_string(),
        incarnation,
    }
}

fn regs(r: &RedisRouting) -> (Arc<dyn RouteRegistry>, Arc<dyn NodeBus>) {
    (r.registry.clone(), r.bus.clone())
}

/// The whole conformance suite (plus the liveness-expiry case) against one Redis deployment.
async fn run_suite(url: &str, prefix: &str) {
    let r = routing(url, opts(prefix)).await;
    let (reg, bus) = regs(&r);
    suite::registry_routes_and_liveness(reg.clone()).await;
    suite::registry_ignores_stale_incarnations(reg.clone()).await;
    suite::registry_presence(reg.clone()).await;
    suite::bus_delivers_per_node(bus.clone()).await;
    suite::fan_out_groups_by_node(reg.clone(), bus.clone()).await;
    suite::registry_lists_live_nodes(reg.clone()).await;
    suite::registry_announced_presence(reg.clone()).await;
    suite::bus_presence_reports(bus.clone()).await;
    // The smallest cap a bus accepts, so that the test appends few entries.
    let capped = routing(
        url,
        RedisOptions {
            stream_maxlen: STREAM_READ_MAX as u64,
            ..opts(prefix)
        },
    )
    .await;
    suite::bus_reports_lost_envelopes(capped.bus.clone(), STREAM_READ_MAX).await;
    let short = routing(
        url,
        RedisOptions {
            liveness_ttl: Duration::from_millis(600),
            ..opts(prefix)
        },
    )
    .await;
    suite::registry_expired_node_not_routed(short.registry.clone(), Duration::from_millis(600))
        .await;
}

/// Polls `check` until it holds or 5 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node whose liveness expired is skipped by lookup, its routes are removed lazily by that
/// lookup, and `sweep` removes the routes nobody looked up and forgets the node.
async fn dead_node_cleanup(url: &str, prefix: &str) {
    let ttl = Duration::from_millis(500);
    let r = routing(
        url,
        RedisOptions {
            liveness_ttl: ttl,
            ..opts(prefix)
        },
    )
    .await;
    let reg = r.registry.clone();
    let dead = node("gw-dead", 11);
    reg.heartbeat(&dead).await.unwrap();
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    reg.add_routes(&dead, &users).await.unwrap();
    assert_eq!(reg.lookup(&users[..1]).await.unwrap().len(), 1);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;

    assert!(reg.lookup(&users[..10]).await.unwrap().is_empty());
    let client = r.client().clone();
    let key = |u: &str| format!("{prefix}route:{{{u}}}");
    eventually("lookup removes routes to the dead node", || {
        let (client, k) = (client.clone(), key(&users[0]));
        async move {
            client
                .hgetall::<Vec<String>, _>(k)
                .await
                .unwrap()
                .is_empty()
        }
    })
    .await;
    // Not looked up: still stored until the sweep.
    assert_eq!(
        client.hlen::<u64, _>(key(&users[20])).await.unwrap(),
        1,
        "only looked-up routes are removed lazily"
    );

    let first = reg.sweep(25).await.unwrap();
    assert_eq!(first.routes_examined, 25);
    assert_eq!(first.nodes_forgotten, 0, "budget left routes behind");
    let second = reg.sweep(1000).await.unwrap();
    assert_eq!(second.routes_examined, 25);
    assert_eq!(second.nodes_forgotten, 1);
    for u in &users {
        assert_eq!(client.hlen::<u64, _>(key(u)).await.unwrap(), 0, "{u}");
    }
    let incs: u64 = client
        .scard(format!("{prefix}gw:{{gw-dead}}:incs"))
        .await
        .unwrap();
    assert_eq!(incs, 0);
    assert_eq!(reg.sweep(1000).await.unwrap().nodes_checked, 0);
}

/// Fans one frame out to `members` users on 3 nodes; returns (client round trips, server stats).
async fn measured_fan_out(
    r: &RedisRouting,
    members: usize,
    stats: &dyn Fn() -> ServerStats,
) -> (u64, ServerStats) {
    let (reg, bus) = regs(r);
    let nodes: Vec<NodeInfo> = (0..3)
        .map(|i| node(&format!("rt{members}-{i}"), 1))
        .collect();
    let users: Vec<String> = (0..members).map(|i| format!("rt{members}-u{i}")).collect();
    for (i, n) in nodes.iter().enumerate() {
        reg.heartbeat(n).await.unwrap();
        let mine: Vec<String> = users.iter().skip(i).step_by(3).cloned().collect();
        reg.add_routes(n, &mine).await.unwrap();
    }
    let frame = ServerFrame::Event {
        event: serde_json::json!({ "kind": "round-trip-test" }),
    };
    let before = stats();
    let trips = r.round_trips();
    let started = Instant::now();
    let report = fan_out(&reg, &bus, &users, &frame).await.unwrap();
    let elapsed = started.elapsed();
    let trips = r.round_trips() - trips;
    let used = stats().since(&before);
    println!("fan_out to {members} members took {elapsed:?}");
    assert_eq!((report.nodes, report.recipients_online), (3, members));
    (trips, used)
}

async fn round_trips_constant(r: &RedisRouting, stats: &dyn Fn() -> ServerStats, label: &str) {
    let (trips_10, small) = measured_fan_out(r, 10, stats).await;
    let (trips_1000, large) = measured_fan_out(r, 1000, stats).await;
    // The same users again: their nodes are known now.
    let (trips_warm, warm) = measured_fan_out(r, 1000, stats).await;
    println!("{label}: 10 members: {trips_10} round trips, server {small:?}");
    println!("{label}: 1000 members: {trips_1000} round trips, server {large:?}");
    println!("{label}: 1000 members again: {trips_warm} round trips, server {warm:?}");
    // Lookup (routes, then the liveness of nodes not seen before) and publish: three round trips
    // whatever the size; two once the nodes are known, their liveness read with the routes.
    assert_eq!((trips_10, trips_1000, trips_warm), (3, 3, 2));
    // Per node, not per member: the three nodes of the fan-out, plus those of earlier lookups
    // read along with the routes (the first fan-out's three).
    for (members, s, gets) in [(10, &small, 3), (1000, &large, 6), (1000, &warm, 6)] {
        assert_eq!(s.calls.get("hgetall"), Some(&members), "{s:?}");
        assert_eq!(s.calls.get("get"), Some(&gets), "{s:?}");
        assert_eq!(s.calls.get("xadd"), Some(&3), "{s:?}");
        let others: u64 = s
            .calls
            .iter()
            .filter(|(k, _)| !["hgetall", "get", "xadd", "info"].contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(others, 0, "unexpected commands {s:?}");
    }
    // Socket read/write events on the servers are printed above for the record but not
    // asserted: fred flushes a pipeline command by command, so their number follows TCP timing,
    // while the client never waits for a reply within a pipeline.
}

#[tokio::test]
async fn standalone_conformance() {
    let server = RedisServer::start().unwrap();
    run_suite(&server.url(), "").await;
}

#[tokio::test]
async fn standalone_dead_node_cleanup() {
    let server = RedisServer::start().unwrap();
    dead_node_cleanup(&server.url(), "").await;
}

#[tokio::test]
async fn standalone_fan_out_round_trips_are_constant() {
    let server = RedisServer::start().unwrap();
    let r = routing(&server.url(), opts("")).await;
    round_trips_constant(&r, &|| server.stats().unwrap(), "standalone").await;
}

/// Everything against one cluster: starting it takes a second or two, so it is shared by the
/// sub-tests, each with its own key prefix.
#[tokio::test]
async fn cluster_suite() {
    let cluster = RedisCluster::start().unwrap();
    let url = cluster.url();
    run_suite(&url, "suite:").await;
    dead_node_cleanup(&url, "dead:").await;
    let r = routing(&url, opts("rt:")).await;
    round_trips_constant(&r, &|| cluster.stats().unwrap(), "cluster").await;
    // The users of one fan-out are spread over all shards, still in three round trips.
    let ports = cluster.ports();
    let per_shard = || -> Vec<ServerStats> {
        ports
            .iter()
            .map(|p| shared::testkit::server_stats(*p).unwrap())
            .collect()
    };
    let before = per_shard();
    let (trips, used) = measured_fan_out(&r, 300, &|| cluster.stats().unwrap()).await;
    assert_eq!((trips, used.calls.get("hgetall")), (3, Some(&300)));
    for (after, before) in per_shard().iter().zip(&before) {
        let d = after.since(before);
        assert!(
            d.calls.get("hgetall").copied().unwrap_or(0) > 50,
            "a shard saw too few of the users: {d:?}"
        );
    }
    leases_are_exclusive(&url, "lease:").await;
    // Clock readings (API replicas measure their clock against them) always come from one master.
    let before = per_shard();
    for _ in 0..5 {
        assert_near_local_clock(r.server_time_us().await.expect("TIME"));
    }
    let times: Vec<u64> = per_shard()
        .iter()
        .zip(&before)
        .map(|(after, before)| after.since(before).calls.get("time").copied().unwrap_or(0))
        .collect();
    assert_eq!(times.iter().filter(|n| **n > 0).count(), 1, "{times:?}");
    assert_eq!(times.iter().sum::<u64>(), 5, "{times:?}");
}

/// A Redis clock reading (Unix µs) from a server on this host agrees with the local clock.
fn assert_near_local_clock(redis_us: u64) {
    let local_us = shared::ids::now_unix_ms() * 1000;
    assert!(
        redis_us.abs_diff(local_us) < 2_000_000,
        "redis {redis_us} µs vs local {local_us} µs"
    );
}

#[tokio::test]
async fn standalone_time_is_the_servers_clock() {
    let server = RedisServer::start().unwrap();
    let r = routing(&server.url(), opts("")).await;
    let first = r.server_time_us().await.expect("TIME");
    assert_near_local_clock(first);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = r.server_time_us().await.expect("TIME");
    assert!(second >= first + 15_000, "{first} then {second}");
}

#[tokio::test]
async fn redis_restart_while_subscribed() {
    let mut server = RedisServer::start().unwrap();
    let timeout = Duration::from_millis(500);
    let r = routing(
        &server.url(),
        RedisOptions {
            command_timeout: timeout,
            block_timeout: Duration::from_millis(300),
            ..opts("")
        },
    )
    .await;
    let (reg, bus) = regs(&r);
    let gw = node("gw-restart", 5);
    reg.heartbeat(&gw).await.unwrap();
    reg.add_routes(&gw, &["alice".to_string()]).await.unwrap();
    let mut sub = bus.subscribe(&gw).await.unwrap();
    let mut epoch = r.registration_epoch();
    epoch.borrow_and_update();
    let envelope = |tag: &str| {
        Envelope::new(
            vec!["alice".to_string()],
            &ServerFrame::Event {
                event: serde_json::json!({ "tag": tag }),
            },
        )
    };
    bus.publish(vec![(gw.node_id.clone(), envelope("before"))])
        .await
        .unwrap();
    let got = sub.next_batch(10).await.unwrap();
    assert_eq!(got, vec![envelope("before")]);

    server.stop();
    // During the outage every call fails within its timeout instead of hanging.
    for _ in 0..3 {
        let started = Instant::now();
        let err = reg.lookup(&["alice".to_string()]).await.unwrap_err();
        assert!(
            matches!(err, RoutingError::Timeout | RoutingError::Unavailable(_)),
            "{err:?}"
        );
        assert!(started.elapsed() < timeout + Duration::from_millis(300));
        let started = Instant::now();
        assert!(bus
            .publish(vec![(gw.node_id.clone(), envelope("lost"))])
            .await
            .is_err());
        assert!(started.elapsed() < timeout + Duration::from_millis(300));
        let started = Instant::now();
        let _ = sub.next_batch(10).await;
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    server.start_again().unwrap();
    // The gateway's side: heartbeat until it succeeds, then re-register on an epoch change.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reg.heartbeat(&gw).await.is_err() {
        assert!(Instant::now() < deadline, "no heartbeat after restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        epoch.has_changed().unwrap(),
        "a reconnect must bump the registration epoch"
    );
    assert!(
        reg.lookup(&["alice".to_string()]).await.unwrap().is_empty(),
        "the restarted server is empty"
    );
    reg.add_routes(&gw, &["alice".to_string()]).await.unwrap();
    assert_eq!(reg.lookup(&["alice".to_string()]).await.unwrap().len(), 1);

    bus.publish(vec![(gw.node_id.clone(), envelope("after"))])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    while received.is_empty() {
        assert!(Instant::now() < deadline, "subscription did not recover");
        if let Ok(batch) = sub.next_batch(10).await {
            received = batch;
        }
    }
    // A publish sent just as the server went away may still have been executed after the
    // reconnect although its caller got an error; later ones failed fast and never ran.
    let (last, earlier) = received.split_last().unwrap();
    assert_eq!(last, &envelope("after"));
    assert!(
        earlier.len() <= 1 && earlier.iter().all(|e| e == &envelope("lost")),
        "{earlier:?}"
    );
}

#[tokio::test]
async fn worker_leases_are_exclusive() {
    let server = RedisServer::start().unwrap();
    leases_are_exclusive(&server.url(), "").await;
}

async fn leases_are_exclusive(url: &str, prefix: &str) {
    let r = routing(url, opts(prefix)).await;
    let fast = LeaseOptions {
        ttl: Duration::from_millis(600),
        settle: Some(Duration::ZERO),
    };
    let a = WorkerLease::acquire(&r, fast.clone()).await.unwrap();
    let b = WorkerLease::acquire(&r, fast.clone()).await.unwrap();
    assert_ne!(a.id(), b.id());
    // Renewal keeps both alive past their TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!a.lost() && !b.lost());
    let client = r.client().clone();
    let key_a = format!("{prefix}worker:{{{}}}", a.id());
    assert!(client.exists::<u64, _>(&key_a).await.unwrap() == 1);

    // Someone else holds a's id now (as after a Redis restart and a new acquirer): a notices.
    let mut lost = a.watch_lost();
    let _: () = client
        .set(&key_a, "intruder", None, None, false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), lost.wait_for(|l| *l))
        .await
        .expect("lease loss reported within the TTL")
        .unwrap();
    assert!(a.lost() && !b.lost());
    drop(a);
    // Releasing b frees its id; a's id stays with the intruder.
    let id_b = b.id();
    b.release().await;
    let key_b = format!("{prefix}worker:{{{id_b}}}");
    assert_eq!(client.exists::<u64, _>(&key_b).await.unwrap(), 0);
    assert_eq!(client.get::<String, _>(&key_a).await.unwrap(), "intruder");

    // With every id taken, acquiring fails instead of sharing one.
    for id in 0..=1023u16 {
        let _: () = client
            .set(
                format!("{prefix}worker:{{{id}}}"),
                "taken",
                None,
                None,
                false,
            )
            .await
            .unwrap();
    }
    assert!(matches!(
        WorkerLease::acquire(&r, fast).await,
        Err(LeaseError::Exhausted)
    ));
}
