//! Distributed mode across real processes: a private Redis, two `gateway` nodes and two
//! `chat-api serve` replicas sharing one SQLite file, driven over real sockets. Covers delivery
//! exactly once across nodes, a gateway crash followed by reconnect and catch-up, and a Redis
//! restart. The `gateway` binary is built by the test itself when missing or stale.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tokio::time::Instant;

use shared::protocol::{encode_server, Encoding, Message, ServerFrame};
use shared::Id;
use support::{now_ms, CatchUpClient, Cluster, Options, Recv, Sender, WsClient};

/// Upper bound of each test, processes included.
const TEST_LIMIT: Duration = Duration::from_secs(50);
/// How long a socket must stay silent after its expected frames to count as "exactly once".
const GRACE: Duration = Duration::from_millis(400);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    support::bounded_by(TEST_LIMIT, test).await
}

fn encoding(i: usize) -> Encoding {
    if i % 2 == 0 {
        Encoding::Json
    } else {
        Encoding::Msgpack
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_apis_deliver_once() {
    deliver_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_apis_deliver_once_on_redis_cluster() {
    deliver_once(true).await;
}

async fn deliver_once(redis_cluster: bool) {
    bounded(async {
        let cluster = Cluster::start(Options {
            redis_cluster,
            ..Options::default()
        })
        .await;
        // 100 group members alternating between the nodes, encodings mixed; every tenth user
        // also holds a second socket on the other node.
        let users: Vec<String> = (0..100).map(|i| format!("u{i:03}")).collect();
        let mut plan: Vec<(usize, String, Encoding)> = Vec::new();
        for (i, u) in users.iter().enumerate() {
            plan.push((i % 2, u.clone(), encoding(i / 2)));
            if i % 10 == 0 {
                plan.push(((i + 1) % 2, u.clone(), encoding(i / 2 + 1)));
            }
        }
        plan.push((0, "dm-x".into(), Encoding::Json));
        plan.push((1, "dm-y".into(), Encoding::Msgpack));
        plan.push((1, "dm-x".into(), Encoding::Msgpack));
        let mut sockets: Vec<(usize, WsClient)> = join_all(
            plan.iter()
                .map(|(gw, user, enc)| async { (*gw, cluster.connect(*gw, user, *enc).await) }),
        )
        .await;

        let direct = cluster.create_chat(0, "dm-x", &["dm-y".into()]).await;
        let group = cluster.create_chat(1, "u000", &users[1..]).await;
        let dm = cluster.send(1, "dm-x", direct, "dm-1", "hello y").await;
        let g1 = cluster.send(0, "u000", group, "g-1", "hello all").await;
        let g2 = cluster.send(1, "u057", group, "g-2", "hello again").await;
        // A backend push through the other replica, to one user on each node.
        let pushed = cluster
            .http
            .post(
                cluster.api(1),
                &cluster.service_token("billing", "push"),
                "/v1/push",
                &json!({"user_ids": ["u010", "u001"], "event": {"kind": "invoice.paid"}}),
            )
            .await;
        assert_eq!(pushed.status, 202, "{}", pushed.body);
        // 2 users are online; u010 holds sockets on both nodes and the API currently counts it
        // once per node (3), although the field is documented as a count of recipients.
        let online = pushed.body["recipients_online"].as_u64();
        assert!(matches!(online, Some(2 | 3)), "{}", pushed.body);
        // A user token may not push.
        let refused = cluster
            .http
            .post(
                cluster.api(0),
                &cluster.token("u001"),
                "/v1/push",
                &json!({"user_ids": ["u002"], "event": {}}),
            )
            .await;
        assert_eq!(refused.status, 403, "{}", refused.body);

        let bodies = [
            (dm.message_id, "hello y"),
            (g1.message_id, "hello all"),
            (g2.message_id, "hello again"),
        ];
        join_all(sockets.iter_mut().map(|(_, s)| async {
            let (want, events): (Vec<Id>, usize) = match s.user.as_str() {
                "dm-x" | "dm-y" => (vec![dm.message_id], 0),
                "u010" | "u001" => (vec![g1.message_id, g2.message_id], 1),
                _ => (vec![g1.message_id, g2.message_id], 0),
            };
            let got = s.expect(&want, events, Duration::from_secs(10)).await;
            for m in &got.messages {
                let body = bodies
                    .iter()
                    .find(|(id, _)| *id == m.message_id)
                    .map(|b| b.1);
                assert_eq!(Some(m.body.as_str()), body, "{m:?}");
            }
            for e in &got.events {
                assert_eq!(e, &json!({"kind": "invoice.paid"}));
            }
            s.assert_quiet(GRACE).await;
        }))
        .await;
        let per_node: Vec<usize> = (0..2)
            .map(|gw| sockets.iter().filter(|(g, _)| *g == gw).count())
            .collect();
        eprintln!(
            "delivered once to {} sockets ({per_node:?} per node)",
            sockets.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kill_9_then_catch_up() {
    kill_9_then_catch_up(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kill_9_then_catch_up_on_redis_cluster() {
    kill_9_then_catch_up(true).await;
}

async fn kill_9_then_catch_up(redis_cluster: bool) {
    bounded(async {
        let ttl = Duration::from_secs(2);
        let mut cluster = Cluster::start(Options {
            node_ttl: ttl,
            redis_cluster,
            ..Options::default()
        })
        .await;
        let on_a = ["ka0", "ka1", "ka2"];
        let on_b = ["kb0", "kb1", "sender"];
        let mut clients: Vec<CatchUpClient> = on_a
            .iter()
            .chain(on_b.iter())
            .enumerate()
            .map(|(i, u)| CatchUpClient::new(u, cluster.token(u), encoding(i)))
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            let gw = usize::from(i >= on_a.len());
            c.connect(
                &cluster.http,
                &cluster.gateways[gw].ws_url(),
                cluster.api(i),
            )
            .await;
        }
        let members: Vec<String> = on_a
            .iter()
            .chain(&on_b[..2])
            .map(|s| s.to_string())
            .collect();
        let chat = cluster.create_chat(0, "sender", &members).await;

        // Steady stream: one message every ~20 ms, alternating replicas; a failed attempt is
        // retried with the same client_msg_id, as clients do.
        let sender = Sender::start(&cluster, "sender", chat, Duration::from_millis(20), 0);

        let closed = pump_all(&mut clients[..], Duration::from_millis(800)).await;
        assert!(
            closed.iter().all(Option::is_none),
            "a socket closed early: {closed:?}"
        );

        let killed_at_ms = now_ms();
        cluster.gateways[0].proc.kill9();
        let killed = Instant::now();
        // A's clients see their sockets drop; B's keep receiving.
        let closed = pump_all(&mut clients[..], Duration::from_millis(500)).await;
        for (c, why) in clients.iter().zip(&closed) {
            assert_eq!(
                why.is_some(),
                on_a.contains(&c.user.as_str()),
                "{}: close state after the kill: {why:?}",
                c.user
            );
        }
        // Within the liveness TTL the registry stops listing A's users.
        let offline_after = cluster
            .await_presence(&on_a, false, ttl + Duration::from_secs(3))
            .await;
        let since_kill = killed.elapsed();
        assert!(
            since_kill <= ttl + Duration::from_millis(1500),
            "A's users still online {since_kill:?} after the kill (NODE_TTL {ttl:?})"
        );
        let online = cluster.presence(1, &on_b).await.expect("presence");
        assert!(
            on_b.iter().all(|u| online[*u]),
            "B's users must stay online: {online:?}"
        );

        // Keep the stream going with A gone, then A's clients move to B and catch up.
        pump_all(&mut clients[..], Duration::from_millis(600)).await;
        for (i, c) in clients.iter_mut().enumerate().take(on_a.len()) {
            c.connect(&cluster.http, &cluster.gateways[1].ws_url(), cluster.api(i))
                .await;
        }
        pump_all(&mut clients[..], Duration::from_millis(600)).await;
        let log = sender.finish().await;

        let acked: Vec<Id> = log.acked.iter().map(|m| m.message_id).collect();
        let want: HashSet<Id> = acked.iter().copied().collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        join_all(clients.iter_mut().map(|c| {
            let want = &want;
            async move {
                let closed = c.pump(deadline, Some(want)).await;
                assert!(closed.is_none(), "{}: socket closed: {closed:?}", c.user);
            }
        }))
        .await;
        // Anything still in flight would show up now as a repeat on some socket.
        pump_all(&mut clients[..], Duration::from_millis(300)).await;
        support::assert_every_member_holds(&clients, chat, &log);
        // No replica routed to A once its liveness key could have expired: nothing newer was
        // appended to its stream. (The route sweep, which would delete the stream of a dead
        // node, runs only every 30 s here, so the stream still shows its newest entry.)
        let newest = cluster
            .redis
            .newest_stream_entry("gw:{gw-a}:stream")
            .expect("XREVRANGE")
            .expect("A's stream holds the entries written before the kill");
        let bound = killed_at_ms + ttl.as_millis() as u64 + 500;
        assert!(
            newest.0 <= bound,
            "an API appended to dead node A's stream {} ms after the kill (NODE_TTL {ttl:?})",
            newest.0.saturating_sub(killed_at_ms)
        );
        assert!(
            log.failures.is_empty(),
            "sends failed while a gateway died: {:?}",
            log.failures
        );
        assert!(
            log.slowest < Duration::from_secs(2),
            "slowest send took {:?}",
            log.slowest
        );
        cluster.gateways.remove(0);
        cluster.assert_all_running();
        let from_history: Vec<usize> = clients.iter().map(|c| c.fetched_from_history).collect();
        eprintln!(
            "{} messages acknowledged; A's users offline {since_kill:?} after the kill \
             ({offline_after:?} of polling); fetched from history per client {from_history:?}; \
             A's stream's newest entry {} ms after the kill",
            acked.len(),
            newest.0 as i64 - killed_at_ms as i64
        );
        assert!(
            from_history[..on_a.len()].iter().all(|n| *n > 0),
            "A's clients should have needed history to catch up: {from_history:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let mut ra = cluster.connect(0, "ra", Encoding::Json).await;
        let mut rb = cluster.connect(1, "rb", Encoding::Msgpack).await;
        let chat = cluster
            .create_chat(0, "rs", &["ra".into(), "rb".into()])
            .await;
        let before = cluster.send(1, "rs", chat, "r-0", "before").await;
        for s in [&mut ra, &mut rb] {
            s.expect(&[before.message_id], 0, Duration::from_secs(5))
                .await;
        }

        cluster.redis.standalone().stop();
        // Sends during the outage answer quickly: 201 when stored (fan-out is best effort) or
        // 503 with Retry-After; never a hang or a 500.
        let mut outage_ids = Vec::new();
        let mut outage = Vec::new();
        for (i, api) in [0usize, 1].into_iter().enumerate() {
            let started = Instant::now();
            let r = cluster
                .http
                .send_message(
                    cluster.api(api),
                    &cluster.token("rs"),
                    chat,
                    &format!("r-out-{i}"),
                    "during",
                )
                .await;
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(4),
                "send during the outage took {took:?}"
            );
            match r.status {
                201 => outage_ids.push(
                    serde_json::from_value::<Message>(r.body.clone())
                        .expect("message")
                        .message_id,
                ),
                503 => assert!(r.retry_after.is_some(), "503 without Retry-After: {r:?}"),
                other => panic!("send during the outage answered {other}: {}", r.body),
            }
            outage.push((r.status, took));
            let started = Instant::now();
            let p = cluster.presence(api, &["ra", "rb"]).await;
            let took = started.elapsed();
            let r = p.expect_err("presence cannot be known without Redis");
            assert_eq!(r.status, 503, "presence during the outage: {r:?}");
            assert!(r.retry_after.is_some(), "503 without Retry-After: {r:?}");
            assert!(
                took < Duration::from_secs(4),
                "presence during the outage took {took:?}"
            );
        }
        // The sockets outlive the outage.
        for s in [&mut ra, &mut rb] {
            s.ping(Duration::from_secs(3)).await;
        }

        tokio::task::block_in_place(|| cluster.redis.standalone().start_again())
            .expect("restarting redis");
        let restarted = Instant::now();
        let reregistered = cluster
            .await_presence(&["ra", "rb"], true, Duration::from_secs(10))
            .await;
        // Each replica reaches the new server and delivers to both nodes in real time.
        let mut seen = [HashSet::new(), HashSet::new()];
        for (api, cid) in [(0usize, "r-1"), (1, "r-2")] {
            let after = cluster.send(api, "rs", chat, cid, "after").await;
            for (s, seen) in [&mut ra, &mut rb].into_iter().zip(&mut seen) {
                await_message(
                    s,
                    after.message_id,
                    &outage_ids,
                    seen,
                    Duration::from_secs(5),
                )
                .await;
            }
        }
        // The sends acknowledged during the outage are retried in the background (a retry may
        // reach nobody: the restarted Redis lost the routes, and the gateways resync instead).
        // Once no retry is left, nothing but those messages, each once, may still arrive.
        let deadline = Instant::now() + Duration::from_secs(10);
        for api in 0..2 {
            while cluster.api_metric(api, "api_fanout_retry_queue", "").await > 0.0 {
                assert!(Instant::now() < deadline, "fan-out retries still running");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for (s, seen) in [&mut ra, &mut rb].into_iter().zip(&mut seen) {
            let quiet = Instant::now() + GRACE;
            loop {
                match s.recv(quiet).await {
                    Recv::Timeout => break,
                    Recv::Frame(ServerFrame::Message { message }) => {
                        let m = message.message_id;
                        assert!(outage_ids.contains(&m), "{}: extra {message:?}", s.user);
                        assert!(seen.insert(m), "{}: message {m} delivered twice", s.user);
                    }
                    Recv::Frame(_) => {}
                    Recv::Closed(why) => panic!("{}: socket closed: {why}", s.user),
                }
            }
        }
        cluster.assert_all_running();
        eprintln!(
            "during the outage: sends {outage:?}; routes back {reregistered:?} after the restart \
             ({:?} since)",
            restarted.elapsed()
        );
    })
    .await;
}

/// A gateway whose reader falls further behind its node stream than the stream's cap, while the
/// node stays alive (no outage, no liveness loss): the trimmed entries are a gap, and its socket
/// gets `resync` before anything delivered after it. The test appends the entries itself, all in
/// one script (so the reader cannot read in between), with an exact cap of 50 and a read batch
/// of 16 (a cap is never below the batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_behind_its_stream_cap_resyncs_its_sockets() {
    bounded(async {
        let mut cluster = Cluster::start(Options {
            gateways: vec!["gw-a"],
            apis: 1,
            gateway_env: vec![("STREAM_BATCH", "16".into())],
            ..Options::default()
        })
        .await;
        let mut ws = cluster.connect(0, "lagger", Encoding::Json).await;
        let event = ServerFrame::Event {
            event: json!({"kind": "after-the-gap"}),
        };
        let payload = encode_server(Encoding::Msgpack, &event);
        // The recipients field: a MessagePack array of one string.
        let mut recipients = vec![0x91, 0xa0 | 6];
        recipients.extend_from_slice(b"lagger");
        const APPEND: &str = "for i = 1, tonumber(ARGV[1]) do \
            redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'r', ARGV[3], 'p', ARGV[4]) end \
            return redis.call('XLEN', KEYS[1])";
        let port = cluster.redis.standalone().port();
        let reply = support::redis_command(
            port,
            &[
                b"EVAL",
                APPEND.as_bytes(),
                b"1",
                b"gw:{gw-a}:stream",
                b"200",
                b"50",
                &recipients,
                &payload,
            ],
        )
        .expect("appending to the node stream");
        assert_eq!(reply, ":50", "the stream keeps its cap");
        let deadline = Instant::now() + Duration::from_secs(5);
        match ws.recv(deadline).await {
            Recv::Frame(ServerFrame::Resync) => {}
            other => panic!("expected resync before the deliveries after the gap, got {other:?}"),
        }
        let mut events = 0;
        while events < 50 {
            match ws.recv(deadline).await {
                Recv::Frame(f) if f == event => events += 1,
                other => panic!("after {events} of the 50 kept entries: {other:?}"),
            }
        }
        ws.assert_quiet(GRACE).await;
        assert_eq!(
            cluster
                .gateway_metric(0, "gateway_stream_gaps_total", "")
                .await,
            1.0
        );
        cluster.assert_all_running();
    })
    .await;
}

/// A fan-out that fails after its message was stored (injected between the store write and the
/// fan-out): a member with an open socket still gets the message from the background retry, or,
/// when the retry gives up (every attempt fails for `API_FANOUT_RETRY_WINDOW`) or has no room
/// (`API_FANOUT_RETRY_QUEUE=0`), a `resync`, within a few seconds. Replica 0 only fails the first
/// attempt; replica 1 fails every attempt; replica 2 retries nothing and cannot read the routes
/// for its notice, so every live node resyncs all its sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fan_out_is_retried_or_ends_in_resync() {
    bounded(async {
        let mut cluster = Cluster::start(Options {
            gateways: vec!["gw-a", "gw-b"],
            apis: 3,
            api_env_per_replica: vec![
                vec![("FAILPOINTS", "fanout::first=return".into())],
                vec![
                    (
                        "FAILPOINTS",
                        "fanout::first=return;fanout::retry=return".into(),
                    ),
                    ("API_FANOUT_RETRY_WINDOW", "1s".into()),
                ],
                vec![
                    (
                        "FAILPOINTS",
                        "fanout::first=return;fanout::notice_lookup=return".into(),
                    ),
                    ("API_FANOUT_RETRY_QUEUE", "0".into()),
                ],
            ],
            ..Options::default()
        })
        .await;
        let mut bob = cluster.connect(0, "fo-bob", Encoding::Json).await;
        let mut carol = cluster.connect(1, "fo-carol", Encoding::Msgpack).await;
        let mut dave = cluster.connect(1, "fo-dave", Encoding::Json).await;
        let chat = cluster
            .create_chat(0, "fo-alice", &["fo-bob".into(), "fo-carol".into()])
            .await;
        let within = Duration::from_secs(4);

        // The retry delivers it.
        let m1 = cluster.send(0, "fo-alice", chat, "m1", "retried").await;
        for s in [&mut bob, &mut carol] {
            s.expect(&[m1.message_id], 0, within).await;
        }
        assert_eq!(
            cluster
                .api_metric(0, "api_fanout_errors_total", "reason=\"backend\"")
                .await,
            1.0,
            "the first attempt failed"
        );
        assert_eq!(
            cluster
                .api_metric(0, "api_fanout_retries_total", "outcome=\"delivered\"")
                .await,
            1.0
        );

        // The retry gives up: the members get resync instead, nobody else does.
        let started = Instant::now();
        cluster.send(1, "fo-alice", chat, "m2", "abandoned").await;
        for s in [&mut bob, &mut carol] {
            await_resync(s, within).await;
        }
        eprintln!("resync after an abandoned retry: {:?}", started.elapsed());
        dave.assert_quiet(GRACE).await;
        assert_eq!(
            cluster
                .api_metric(1, "api_fanout_retries_total", "outcome=\"abandoned\"")
                .await,
            1.0
        );
        assert_eq!(
            cluster
                .api_metric(1, "api_fanout_resync_notices_total", "scope=\"members\"")
                .await,
            2.0,
            "one notice per node holding members"
        );

        // No room to retry and no routes for the notice: every socket of every node resyncs.
        cluster.send(2, "fo-alice", chat, "m3", "shed").await;
        for s in [&mut bob, &mut carol, &mut dave] {
            await_resync(s, within).await;
        }
        assert_eq!(
            cluster
                .api_metric(2, "api_fanout_retries_total", "outcome=\"shed\"")
                .await,
            1.0
        );
        assert_eq!(
            cluster
                .api_metric(2, "api_fanout_resync_notices_total", "scope=\"node\"")
                .await,
            2.0,
            "one whole-node notice per live node"
        );
        cluster.assert_all_running();
        cluster.assert_no_panics();
    })
    .await;
}

/// Reads `socket` until `resync` arrives, within `limit`; a message frame meanwhile fails.
async fn await_resync(socket: &mut WsClient, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match socket.recv(deadline).await {
            Recv::Frame(ServerFrame::Resync) => return,
            Recv::Frame(ServerFrame::Message { message }) => {
                panic!("{}: message instead of resync: {message:?}", socket.user)
            }
            Recv::Frame(_) => {}
            other => panic!("{}: waiting for resync: {other:?}", socket.user),
        }
    }
}

/// Reads `socket` until message `id` arrives, within `limit`. Messages in `tolerated` (stored
/// while their fan-out could not run, delivered by its retry) may show up before it; anything
/// else fails the test, and so does a message already in `seen` (the socket's messages so far).
async fn await_message(
    socket: &mut WsClient,
    id: Id,
    tolerated: &[Id],
    seen: &mut HashSet<Id>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        match socket.recv(deadline).await {
            Recv::Frame(ServerFrame::Message { message }) => {
                let m = message.message_id;
                assert!(
                    m == id || tolerated.contains(&m),
                    "{}: unexpected message {message:?}",
                    socket.user
                );
                assert!(
                    seen.insert(m),
                    "{}: message {m} delivered twice",
                    socket.user
                );
                if m == id {
                    return;
                }
            }
            Recv::Frame(_) => {}
            other => panic!("{}: waiting for message {id}: {other:?}", socket.user),
        }
    }
}

/// Lets every client read its socket for `d`; returns, per client, why its socket closed.
async fn pump_all(clients: &mut [CatchUpClient], d: Duration) -> Vec<Option<String>> {
    let deadline = Instant::now() + d;
    join_all(clients.iter_mut().map(|c| c.pump(deadline, None))).await
}

/// The next `presence` frame on `socket` within `limit`: (user, online) and how long it took.
/// Other frames are skipped; a close fails the test.
async fn next_presence(socket: &mut WsClient, limit: Duration) -> Option<(String, bool, Duration)> {
    let started = Instant::now();
    loop {
        match socket.recv(started + limit).await {
            Recv::Frame(ServerFrame::Presence {
                user_id,
                status,
                online,
                last_seen,
                last_seen_ms,
            }) => {
                assert_eq!(
                    online,
                    status == shared::protocol::PresenceStatus::Online,
                    "{}: status and online agree",
                    socket.user
                );
                assert!(last_seen.is_some(), "last_seen is always set");
                assert_eq!(
                    last_seen_ms.is_some(),
                    !online,
                    "last_seen_ms only when offline"
                );
                return Some((user_id, online, started.elapsed()));
            }
            Recv::Frame(_) => {}
            Recv::Timeout => return None,
            Recv::Closed(why) => panic!("{}: socket closed: {why}", socket.user),
        }
    }
}

/// Pushed presence across two gateways and two API replicas: a co-member's sockets learn of a
/// user's first socket within 2 s and of the last one closing within the grace period + 2 s
/// (never before the grace period); a reconnect within the grace period, even to the other
/// gateway, pushes nothing; a user sharing no chat never receives the frames and reads the user
/// as `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_pushed_to_co_members_across_gateways() {
    bounded(async {
        let grace = Duration::from_secs(1);
        let cluster = Cluster::start(Options {
            gateway_env: vec![("PRESENCE_GRACE", "1s".into())],
            ..Options::default()
        })
        .await;
        cluster.create_chat(0, "pr-bob", &["pr-alice".into()]).await;
        cluster.create_chat(1, "pr-zed", &["pr-carl".into()]).await;
        let mut bob = cluster.connect(1, "pr-bob", Encoding::Msgpack).await;
        let mut zed = cluster.connect(0, "pr-zed", Encoding::Json).await;
        // Bob's and Zed's own first sockets are announced to co-members not online: nothing here.

        let alice = cluster.connect(0, "pr-alice", Encoding::Json).await;
        let (user, online, took) = next_presence(&mut bob, Duration::from_secs(2))
            .await
            .expect("bob told of alice online within 2 s");
        assert_eq!((user.as_str(), online), ("pr-alice", true));
        eprintln!("online pushed after {took:?}");

        // Privacy: Zed shares no chat with Alice; through either replica she is unknown to him.
        for api in 0..2 {
            let r = cluster
                .http
                .get(
                    cluster.api(api),
                    &cluster.token("pr-zed"),
                    "/v1/presence?user_ids=pr-alice,pr-carl",
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["presence"][0]["status"], "unknown", "{}", r.body);
            assert_eq!(r.body["presence"][1]["status"], "offline", "{}", r.body);
            let r = cluster
                .http
                .get(
                    cluster.api(api),
                    &cluster.token("pr-bob"),
                    "/v1/presence?user_ids=pr-alice",
                )
                .await;
            assert_eq!(r.body["presence"][0]["status"], "online", "{}", r.body);
        }

        let closed = Instant::now();
        drop(alice);
        let (user, online, _) = next_presence(&mut bob, grace + Duration::from_secs(2))
            .await
            .expect("bob told of alice offline within grace + 2 s");
        let took = closed.elapsed();
        assert_eq!((user.as_str(), online), ("pr-alice", false));
        assert!(
            took >= grace,
            "offline pushed before the grace period: {took:?}"
        );
        eprintln!("offline pushed after {took:?} (grace {grace:?})");

        // A quick reconnect, to the other gateway, within the grace period: no flap.
        let alice = cluster.connect(1, "pr-alice", Encoding::Msgpack).await;
        let (_, online, _) = next_presence(&mut bob, Duration::from_secs(2))
            .await
            .expect("online again");
        assert!(online);
        drop(alice);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _alice = cluster.connect(0, "pr-alice", Encoding::Json).await;
        assert_eq!(
            next_presence(&mut bob, grace + Duration::from_secs(2)).await,
            None,
            "a reconnect within the grace period pushes nothing"
        );
        // Zed, who shares no chat with Alice, never got a frame about her.
        assert_eq!(
            next_presence(&mut zed, Duration::from_millis(200)).await,
            None
        );
        cluster.assert_no_panics();
    })
    .await;
}
