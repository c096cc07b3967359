//! Chaos tests: SPEC §6 ("nothing lost for a client that catches up") under failure, across real
//! processes (a private Redis, two `gateway` nodes, two `chat-api serve` replicas on one SQLite
//! file). Each scenario keeps a steady stream of messages going to a chat whose members sit on
//! both gateways, breaks something in the middle, lets the clients reconnect (or resync) and
//! catch up as `docs/PROTOCOL.md` says, then checks that every acknowledged message is held
//! exactly once, in id order, by every member, and that no process panicked.
//!
//! The scenarios run one at a time (they measure latency and memory) and each is bounded.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use shared::protocol::{Encoding, Message};
use shared::Id;
use support::{now_ms, CatchUpClient, Cluster, Http, Options, Recv, SendLog, Sender, WsClient};

/// Upper bound of each scenario, process start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);
/// How long the clients get, once the stream stops, to hold every acknowledged message.
const SETTLE: Duration = Duration::from_secs(10);

/// One scenario at a time: they share two cores and measure latency and memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    let _one = SERIAL.lock().await;
    tokio::task::spawn_blocking(support::gateway_binary)
        .await
        .expect("building the gateway binary");
    let started = Instant::now();
    tokio::time::timeout(SCENARIO_LIMIT, test)
        .await
        .expect("scenario ran past its time limit");
    eprintln!("scenario took {:?}", started.elapsed());
}

fn encoding(i: usize) -> Encoding {
    if i % 2 == 0 {
        Encoding::Json
    } else {
        Encoding::Msgpack
    }
}

/// Where a client reconnects, and through which API it catches up.
#[derive(Clone)]
struct Plan {
    ws_url: String,
    api: String,
}

/// Lets each client read its socket until `until`; a client whose socket closed reconnects to its
/// plan's gateway (after a short backoff) and catches up; a client told to resync catches up.
async fn drive(clients: &mut [CatchUpClient], plans: &[Plan], http: &Http, until: Instant) {
    join_all(clients.iter_mut().zip(plans).map(|(c, plan)| async move {
        drive_one(c, plan, http, until, None).await;
    }))
    .await;
}

async fn drive_one(
    c: &mut CatchUpClient,
    plan: &Plan,
    http: &Http,
    until: Instant,
    want: Option<&HashSet<Id>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if want.is_some_and(|w| w.iter().all(|id| c.holds(*id))) || Instant::now() >= until {
            return;
        }
        if c.socket.is_none() {
            tokio::time::sleep(backoff).await;
            if let Err(e) = c.try_connect(http, &plan.ws_url, &plan.api).await {
                eprintln!("{}: reconnect failed ({e}); retrying", c.user);
                backoff = (backoff * 2).min(Duration::from_millis(800));
            }
            continue;
        }
        if c.resync_requested {
            c.catch_up(http, &plan.api).await;
        }
        c.pump(until, want).await;
    }
}

/// After the stream stopped: every client must come to hold every acknowledged message (through
/// frames, reconnects and resyncs only); then [`support::assert_every_member_holds`].
async fn assert_every_member_holds_every_ack(
    clients: &mut [CatchUpClient],
    plans: &[Plan],
    http: &Http,
    chat: Id,
    log: &SendLog,
) {
    let want: HashSet<Id> = log.acked.iter().map(|m| m.message_id).collect();
    let deadline = Instant::now() + SETTLE;
    join_all(clients.iter_mut().zip(plans).map(|(c, plan)| {
        let want = &want;
        async move { drive_one(c, plan, http, deadline, Some(want)).await }
    }))
    .await;
    // Anything still in flight would show up now as a repeat on some socket.
    drive(
        clients,
        plans,
        http,
        Instant::now() + Duration::from_millis(300),
    )
    .await;
    support::assert_every_member_holds(clients, chat, log);
}

/// A chat with `per_gateway` members on each of the two gateways (encodings mixed) plus the
/// sender, who holds no socket.
async fn members_on_both_gateways(
    cluster: &Cluster,
    tag: &str,
    per_gateway: usize,
) -> (Id, Vec<CatchUpClient>, String) {
    let sender = format!("{tag}-sender");
    let mut clients = Vec::new();
    for gw in 0..2 {
        for i in 0..per_gateway {
            let user = format!("{tag}-{}{i}", ["a", "b"][gw]);
            let mut c = CatchUpClient::new(&user, cluster.token(&user), encoding(i + gw));
            c.connect(
                &cluster.http,
                &cluster.gateways[gw].ws_url(),
                cluster.api(i),
            )
            .await;
            clients.push(c);
        }
    }
    let members: Vec<String> = clients.iter().map(|c| c.user.clone()).collect();
    let chat = cluster.create_chat(0, &sender, &members).await;
    (chat, clients, sender)
}

/// The end of every scenario: prints what happened, then checks that every process still meant
/// to run does and that none logged a panic.
fn finish_scenario(cluster: &mut Cluster, name: &str, log: &SendLog, clients: &[CatchUpClient]) {
    let history: Vec<usize> = clients.iter().map(|c| c.fetched_from_history).collect();
    let reconnects: Vec<usize> = clients.iter().map(|c| c.connections - 1).collect();
    let resyncs: Vec<usize> = clients.iter().map(|c| c.resyncs).collect();
    eprintln!(
        "{name}: {} acknowledged, {} failed attempts, {} replays; per client: reconnects \
         {reconnects:?}, resyncs {resyncs:?}, fetched from history {history:?}",
        log.acked.len(),
        log.failures.len(),
        log.replayed.len()
    );
    cluster.assert_all_running();
    cluster.assert_no_panics();
}

/// Scenario 1: `kill -9` of a gateway. Its clients see the connection drop, reconnect to the
/// other node and catch up; the routes of the dead node stop being used within its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_gateway_kill_9() {
    bounded(async {
        let mut cluster = Cluster::start(Options {
            node_ttl: Duration::from_secs(2),
            ..Options::default()
        })
        .await;
        let (chat, mut clients, sender) = members_on_both_gateways(&cluster, "k9", 3).await;
        let to_b = Plan {
            ws_url: cluster.gateways[1].ws_url(),
            api: cluster.api(1).to_string(),
        };
        let plans = vec![to_b; clients.len()];
        let stream = Sender::start(&cluster, &sender, chat, Duration::from_millis(20), 64);
        drive(
            &mut clients,
            &plans,
            &cluster.http,
            Instant::now() + Duration::from_millis(800),
        )
        .await;

        cluster.gateways[0].proc.kill9();
        drive(
            &mut clients,
            &plans,
            &cluster.http,
            Instant::now() + Duration::from_secs(3),
        )
        .await;
        let log = stream.finish().await;
        assert_every_member_holds_every_ack(&mut clients, &plans, &cluster.http, chat, &log).await;
        for c in &clients[..3] {
            assert_eq!(c.connections, 2, "{}: should have reconnected once", c.user);
            assert!(c.fetched_from_history > 0, "{}: caught up nothing", c.user);
        }
        for c in &clients[3..] {
            assert_eq!(
                c.connections, 1,
                "{}: B's clients keep their socket",
                c.user
            );
        }
        assert!(log.failures.is_empty(), "sends failed: {:?}", log.failures);
        cluster.gateways.remove(0);
        finish_scenario(&mut cluster, "kill -9 gateway", &log, &clients);
    })
    .await;
}

/// Scenario 2: SIGTERM drain of a gateway. Its sockets are closed with 4100 spread over the drain
/// window, the clients reconnect to the other node and catch up, and the node exits cleanly
/// before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_gateway_drain() {
    bounded(async {
        let window = Duration::from_millis(1500);
        let deadline = Duration::from_secs(4);
        let mut cluster = Cluster::start(Options {
            gateway_env: vec![
                ("DRAIN_WINDOW", format!("{}ms", window.as_millis())),
                ("DRAIN_DEADLINE", format!("{}ms", deadline.as_millis())),
            ],
            ..Options::default()
        })
        .await;
        let (chat, mut clients, sender) = members_on_both_gateways(&cluster, "dr", 3).await;
        let to_b = Plan {
            ws_url: cluster.gateways[1].ws_url(),
            api: cluster.api(1).to_string(),
        };
        let plans = vec![to_b; clients.len()];
        // More sockets on A, to see how the closes are spread.
        let names: Vec<String> = (0..17).map(|i| format!("dr-probe{i}")).collect();
        let mut probes: Vec<WsClient> = join_all(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| cluster.connect(0, n, encoding(i))),
        )
        .await;
        let stream = Sender::start(&cluster, &sender, chat, Duration::from_millis(20), 64);
        drive(&mut clients, &plans, &cluster.http, Instant::now() + Duration::from_millis(800)).await;

        let term = Instant::now();
        cluster.gateways[0].proc.sigterm();
        let probe_closes = async {
            join_all(probes.iter_mut().map(|p| async move {
                let limit = Instant::now() + deadline + Duration::from_secs(1);
                loop {
                    match p.recv(limit).await {
                        Recv::Frame(_) => continue,
                        Recv::Closed(why) => return (term.elapsed(), why),
                        Recv::Timeout => return (term.elapsed(), "no close".to_string()),
                    }
                }
            }))
            .await
        };
        let (probe_closes, _) = tokio::join!(
            probe_closes,
            drive(&mut clients, &plans, &cluster.http, Instant::now() + Duration::from_secs(3))
        );
        let status = cluster.gateways[0].proc.wait_exit(deadline).await;
        let exited_after = term.elapsed();
        let log = stream.finish().await;
        assert_every_member_holds_every_ack(&mut clients, &plans, &cluster.http, chat, &log).await;

        let status = status.expect("the draining gateway did not exit before its deadline");
        assert!(status.success(), "drained gateway exited with {status}");
        assert!(
            exited_after <= deadline + Duration::from_millis(500),
            "exit took {exited_after:?} (DRAIN_DEADLINE {deadline:?})"
        );
        let gw_log = cluster.gateways[0].proc.log();
        assert!(gw_log.contains("gateway stopped"), "no clean stop in the log");
        let mut times: Vec<Duration> = Vec::new();
        for (t, why) in &probe_closes {
            assert!(why.contains("4100"), "probe closed with {why} instead of 4100");
            times.push(*t);
        }
        for c in &clients[..3] {
            assert!(
                c.closes.first().is_some_and(|w| w.contains("4100")),
                "{}: closed with {:?} instead of 4100",
                c.user,
                c.closes
            );
            assert_eq!(c.connections, 2, "{}: should have reconnected once", c.user);
        }
        for c in &clients[3..] {
            assert_eq!(c.connections, 1, "{}: B's clients keep their socket", c.user);
        }
        times.sort();
        let first = times[0];
        let last = times[times.len() - 1];
        // 20 sockets over 1.5 s: the last closes about 1.4 s after the first; not a herd.
        assert!(
            last - first >= window / 2 && last <= window + Duration::from_secs(1),
            "closes not spread over the {window:?} window: first {first:?}, last {last:?}"
        );
        assert!(log.failures.is_empty(), "sends failed: {:?}", log.failures);
        eprintln!("drain: 4100 closes from {first:?} to {last:?} after SIGTERM; exit after {exited_after:?}");
        cluster.gateways.remove(0);
        finish_scenario(&mut cluster, "drain gateway", &log, &clients);
    })
    .await;
}

/// Scenario 3: Redis restarts (all routes, streams and liveness keys gone). Sends keep being
/// stored (201) or answer 503 and are retried; the sockets stay open; once the gateways are
/// registered again they send `resync`, and the clients catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_restart() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let (chat, mut clients, sender) = members_on_both_gateways(&cluster, "rr", 3).await;
        let plans: Vec<Plan> = (0..clients.len())
            .map(|i| Plan {
                ws_url: cluster.gateways[i / 3].ws_url(),
                api: cluster.api(i).to_string(),
            })
            .collect();
        let stream = Sender::start(&cluster, &sender, chat, Duration::from_millis(20), 64);
        drive(
            &mut clients,
            &plans,
            &cluster.http,
            Instant::now() + Duration::from_millis(800),
        )
        .await;

        cluster.redis.standalone().stop();
        drive(
            &mut clients,
            &plans,
            &cluster.http,
            Instant::now() + Duration::from_millis(1500),
        )
        .await;
        tokio::task::block_in_place(|| cluster.redis.standalone().start_again())
            .expect("restarting redis");
        drive(
            &mut clients,
            &plans,
            &cluster.http,
            Instant::now() + Duration::from_secs(4),
        )
        .await;
        let log = stream.finish().await;
        assert_every_member_holds_every_ack(&mut clients, &plans, &cluster.http, chat, &log).await;
        for c in &clients {
            assert_eq!(
                c.connections, 1,
                "{}: the socket should outlive the outage",
                c.user
            );
            assert!(c.resyncs >= 1, "{}: no resync after the outage", c.user);
        }
        for (cid, why) in &log.failures {
            assert!(
                why == "503",
                "{cid}: a send during the outage failed with {why}"
            );
        }
        finish_scenario(&mut cluster, "redis restart", &log, &clients);
    })
    .await;
}

/// Scenario 4: `kill -9` of a chat-api replica while sends are in flight (four senders, each
/// sending back to back). Interrupted sends are retried with the same `client_msg_id` on the
/// other replica: nothing is stored twice, every acknowledged message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_api_kill_9_mid_request() {
    api_replica_stops(true).await;
}

/// SIGTERM of a chat-api replica under the same load: it stops accepting, finishes the requests
/// in flight and exits 0 before its shutdown deadline (`API_SHUTDOWN_GRACE`, 1 s here); nothing
/// is lost or stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_api_sigterm_drains() {
    api_replica_stops(false).await;
}

async fn api_replica_stops(kill: bool) {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let per_gateway = 2;
        let (chat, mut clients, _) = members_on_both_gateways(&cluster, "ak", per_gateway).await;
        let plans: Vec<Plan> = (0..clients.len())
            .map(|i| Plan {
                ws_url: cluster.gateways[i / per_gateway].ws_url(),
                api: cluster.api(1).to_string(),
            })
            .collect();
        let senders: Vec<Sender> = clients
            .iter()
            .map(|c| Sender::start(&cluster, &c.user, chat, Duration::ZERO, 64))
            .collect();
        drive(
            &mut clients,
            &plans,
            &cluster.http,
            Instant::now() + Duration::from_millis(1000),
        )
        .await;
        // Stop the replica while a send is on its way to it (each member sends in a closed loop,
        // every other send to it). Left to chance none was, about one run in 15; and the error a
        // cut send reports cannot tell it apart from one refused after the stop (the client
        // retries a request its pooled connection lost before writing it), so count at the stop.
        let deadline = Instant::now() + Duration::from_secs(2);
        while senders.iter().all(|s| s.in_flight(0) == 0) && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        let cut: usize = senders.iter().map(|s| s.in_flight(0)).sum();
        let stopped = Instant::now();
        if kill {
            cluster.apis[0].proc.kill9();
        } else {
            cluster.apis[0].proc.sigterm();
        }
        let ((), status) = tokio::join!(
            drive(
                &mut clients,
                &plans,
                &cluster.http,
                Instant::now() + Duration::from_millis(1500)
            ),
            cluster.apis[0].proc.wait_exit(Duration::from_secs(3))
        );
        let exited_after = stopped.elapsed();
        if !kill {
            let status = status.expect("the replica did not exit within 3 s of SIGTERM");
            assert!(
                status.success(),
                "replica exited with {status} after SIGTERM"
            );
            // Grace 1 s, plus process exit.
            assert!(
                exited_after < Duration::from_secs(2),
                "exit took {exited_after:?}"
            );
            assert!(cluster.apis[0].proc.log().contains("chat-api draining"));
        }
        let mut logs = Vec::new();
        for s in senders {
            logs.push(s.finish().await);
        }
        if kill {
            assert!(
                cut > 0,
                "no send was in flight when the replica died: the test did not test anything"
            );
        }
        // No extra catch-up here: a send stored by the dying replica before its fan-out is
        // delivered by the replayed retry, to sockets that never closed.
        let mut all = SendLog::default();
        for l in &logs {
            all.acked.extend(l.acked.iter().cloned());
            all.failures.extend(l.failures.iter().cloned());
            all.replayed.extend(l.replayed.iter().cloned());
        }
        // Four senders interleave: compare with the store's own order instead of send order.
        all.acked.sort_by_key(|m| m.message_id);
        assert_every_member_holds_every_ack(&mut clients, &plans, &cluster.http, chat, &all).await;
        // The store itself: every client_msg_id exactly once.
        let mut stored: Vec<Message> = Vec::new();
        let token = cluster.token(&clients[0].user);
        loop {
            let path = match stored.last() {
                Some(m) => format!("/v1/chats/{chat}/messages?after={}&limit=200", m.message_id),
                None => format!("/v1/chats/{chat}/messages?after=0&limit=200"),
            };
            let page = cluster.http.get(cluster.api(1), &token, &path).await;
            assert_eq!(page.status, 200, "{}", page.body);
            let messages: Vec<Message> =
                serde_json::from_value(page.body["messages"].clone()).expect("messages");
            stored.extend(messages);
            if page.body["has_more"] != serde_json::Value::Bool(true) {
                break;
            }
        }
        let mut per_cid: HashMap<(&str, &str), usize> = HashMap::new();
        for m in &stored {
            *per_cid
                .entry((m.sender_id.as_str(), m.client_msg_id.as_str()))
                .or_default() += 1;
        }
        let dups: Vec<_> = per_cid.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dups.is_empty(), "stored twice: {dups:?}");
        assert_eq!(
            stored.len(),
            all.acked.len(),
            "stored messages that were never acknowledged"
        );
        eprintln!(
            "{cut} sends in flight to the replica when it was stopped; gone after {exited_after:?}"
        );
        cluster.apis.remove(0);
        let name = if kill {
            "kill -9 API replica"
        } else {
            "SIGTERM API replica"
        };
        finish_scenario(&mut cluster, name, &all, &clients);
    })
    .await;
}

/// p99 of `samples` (milliseconds).
fn p99(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Scenario 5: a client that stops reading, next to healthy ones on the same gateway. The slow
/// one is closed with 4101 (its send queue is bounded), the healthy ones' latency does not
/// change, the gateway's memory comes back, and the slow client catches up after reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_slow_consumer() {
    bounded(async {
        // A 64-frame queue (the default is 256 frames or 1 MiB) behind a 16 KiB kernel send
        // buffer fills within a second or two of the heavy stream below once the client stops
        // reading (with the kernel's autotuning, megabytes would be absorbed first); healthy
        // clients never hold more than a few frames.
        let mut cluster = Cluster::start(Options {
            gateway_env: vec![
                ("SEND_QUEUE_FRAMES", "64".to_string()),
                ("SOCKET_SEND_BUFFER_BYTES", "16384".to_string()),
            ],
            ..Options::default()
        })
        .await;
        let (chat, mut healthy, sender) = members_on_both_gateways(&cluster, "sc", 2).await;
        let plans: Vec<Plan> = (0..healthy.len())
            .map(|i| Plan {
                ws_url: cluster.gateways[i / 2].ws_url(),
                api: cluster.api(i).to_string(),
            })
            .collect();
        // The slow client is in a chat of its own that carries a heavier stream (1 KiB bodies),
        // on gateway A, with a 4 KiB receive buffer so that its queue fills quickly once it
        // stops reading.
        let mut slow = CatchUpClient::new("sc-slow", cluster.token("sc-slow"), Encoding::Json);
        let socket = WsClient::connect_small_buffer(
            &cluster.gateways[0].ws_url(),
            &slow.token,
            Encoding::Json,
            4096,
        )
        .await
        .expect("slow client connects");
        slow.attach(&cluster.http, socket, cluster.api(0)).await;
        let heavy = cluster
            .create_chat(0, "sc-heavy-sender", &["sc-slow".to_string()])
            .await;
        let stream = Sender::start(&cluster, &sender, chat, Duration::from_millis(20), 64);
        let heavy_stream = Sender::start(
            &cluster,
            "sc-heavy-sender",
            heavy,
            Duration::from_millis(5),
            1000,
        );

        // Latency of a healthy client: receive time minus the send time in the message id.
        async fn measure(
            clients: &mut [CatchUpClient],
            plans: &[Plan],
            http: &Http,
            d: Duration,
        ) -> Vec<u64> {
            let until = Instant::now() + d;
            let samples = join_all(clients.iter_mut().zip(plans).map(|(c, plan)| async move {
                let mut out = Vec::new();
                while Instant::now() < until {
                    let Some(socket) = c.socket.as_mut() else {
                        drive_one(c, plan, http, until, None).await;
                        continue;
                    };
                    match socket.recv(until).await {
                        Recv::Frame(shared::protocol::ServerFrame::Message { message }) => {
                            out.push(now_ms().saturating_sub(message.sent_at_ms));
                            c.held.hold(message);
                        }
                        Recv::Closed(why) => panic!("{}: healthy socket closed: {why}", c.user),
                        _ => {}
                    }
                }
                out
            }))
            .await;
            samples.into_iter().flatten().collect()
        }

        // Phase 1: the slow client still reads (same load, nobody stuck).
        let slow_plan = Plan {
            ws_url: cluster.gateways[0].ws_url(),
            api: cluster.api(0).to_string(),
        };
        let (mut base, _) = tokio::join!(
            measure(&mut healthy, &plans, &cluster.http, Duration::from_secs(2)),
            drive_one(
                &mut slow,
                &slow_plan,
                &cluster.http,
                Instant::now() + Duration::from_secs(2),
                None
            )
        );
        assert!(
            slow.socket.is_some(),
            "slow client closed while still reading: {:?}",
            slow.closes
        );
        let rss_base = cluster.gateways[0].proc.rss_kib().expect("gateway RSS");

        // Phase 2: the slow client stops reading (holds its socket, reads nothing).
        let stuck = slow.socket.take().expect("slow socket");
        let closes_before = cluster
            .gateway_metric(0, "gateway_disconnects_total", "code=\"4101\"")
            .await;
        let stuck_at = Instant::now();
        let mut with_stuck =
            measure(&mut healthy, &plans, &cluster.http, Duration::from_secs(3)).await;
        let mut closed_after = None;
        let limit = Instant::now() + Duration::from_secs(10);
        while Instant::now() < limit {
            let n = cluster
                .gateway_metric(0, "gateway_disconnects_total", "code=\"4101\"")
                .await;
            if n > closes_before {
                closed_after = Some(stuck_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let closed_after =
            closed_after.expect("the stuck client was not closed with 4101 within 10 s + 3 s");
        let rss_stuck = cluster.gateways[0].proc.rss_kib().expect("gateway RSS");
        drop(stuck);
        // The slow client comes back, reading again, and catches up.
        slow.try_connect(&cluster.http, &slow_plan.ws_url, &slow_plan.api)
            .await
            .expect("slow client reconnects");
        let mut after = measure(&mut healthy, &plans, &cluster.http, Duration::from_secs(1)).await;
        with_stuck.append(&mut after);
        let rss_after = cluster.gateways[0].proc.rss_kib().expect("gateway RSS");

        let log = stream.finish().await;
        let heavy_log = heavy_stream.finish().await;
        assert_every_member_holds_every_ack(&mut healthy, &plans, &cluster.http, chat, &log).await;
        assert_every_member_holds_every_ack(
            std::slice::from_mut(&mut slow),
            std::slice::from_ref(&slow_plan),
            &cluster.http,
            heavy,
            &heavy_log,
        )
        .await;
        for c in &healthy {
            assert_eq!(c.connections, 1, "{}: a healthy socket was closed", c.user);
        }
        let (p99_base, p99_stuck) = (p99(&mut base), p99(&mut with_stuck));
        eprintln!(
            "slow consumer: closed with 4101 {closed_after:?} after it stopped reading; healthy \
             p99 {p99_base} ms before ({} samples), {p99_stuck} ms while stuck and after ({} \
             samples); gateway RSS {rss_base} KiB before, {rss_stuck} KiB at the close, \
             {rss_after} KiB after",
            base.len(),
            with_stuck.len()
        );
        assert!(
            base.len() > 100 && with_stuck.len() > 100,
            "too few latency samples"
        );
        // A healthy client stuck behind the slow one would wait seconds. The latency measured
        // here includes the send's durable write, and on this machine's disk an SQLite fsync or
        // WAL checkpoint stalls now and then for a few hundred milliseconds whatever the
        // gateway does (seen: p99 12 ms -> 324 ms in one run, 6 -> 40 ms in another).
        assert!(
            p99_stuck <= 3 * p99_base + 500,
            "healthy p99 went from {p99_base} ms to {p99_stuck} ms next to a stuck client"
        );
        // The queue is bounded (1 MiB by default) and dropped at the close.
        assert!(
            rss_after <= rss_base + 4096,
            "gateway RSS grew from {rss_base} KiB to {rss_after} KiB after the slow client left"
        );
        assert!(
            rss_stuck <= rss_base + 8192,
            "gateway RSS grew from {rss_base} KiB to {rss_stuck} KiB with one stuck client"
        );
        finish_scenario(&mut cluster, "slow consumer", &log, &healthy);
    })
    .await;
}
