//! The API replicas' caches across real processes (two `chat-api serve` sharing Redis and one
//! SQLite file): a membership change or a message acknowledged by one replica is what the other
//! answers next, even with both caches warm and sends committing out of id order; and a
//! reconnect storm of many clients of a few hot chats costs the store a small fraction of the
//! reads it used to.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::time::Instant;

use shared::protocol::{Encoding, Message, ServerFrame};
use shared::Id;
use support::{Cluster, Options, Recv};

const TEST_LIMIT: Duration = Duration::from_secs(90);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    support::bounded_by(TEST_LIMIT, test).await
}

fn one_gateway(api_env: Vec<(&'static str, String)>) -> Options {
    Options {
        gateways: vec!["gw-a"],
        apis: 2,
        api_env,
        ..Options::default()
    }
}

fn page_ids(body: &Value) -> Vec<Id> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages in {body}"))
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Bob reads and sends through replica B (its caches warm), Alice removes him through replica
/// A: B refuses his next send and read at once, and his socket gets `chat_removed` but no
/// message sent after the removal was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_through_one_replica_is_refused_at_once_by_the_other() {
    bounded(async {
        let cluster = Cluster::start(one_gateway(Vec::new())).await;
        let (alice, bob) = ("rm-alice", "rm-bob");
        let chat = cluster.create_chat(0, alice, &[bob.to_string()]).await;
        let mut socket = cluster.connect(0, bob, Encoding::Json).await;
        let path = format!("/v1/chats/{chat}/messages");
        for i in 0..3 {
            cluster.send(1, bob, chat, &format!("warm-{i}"), "hi").await;
            let r = cluster
                .http
                .get(cluster.api(1), &cluster.token(bob), &path)
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let r = cluster
            .http
            .delete(
                cluster.api(0),
                &cluster.token(alice),
                &format!("/v1/chats/{chat}/members/{bob}"),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let r = cluster
            .http
            .send_message(cluster.api(1), &cluster.token(bob), chat, "after", "x")
            .await;
        assert_eq!(r.status, 403, "send after removal: {}", r.body);
        let r = cluster
            .http
            .get(cluster.api(1), &cluster.token(bob), &path)
            .await;
        assert_eq!(r.status, 403, "read after removal: {}", r.body);
        // Alice's send through B fans out with B's (current) member list.
        let after = cluster
            .send(1, alice, chat, "after-removal", "secret")
            .await;
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut removed = false;
        loop {
            match socket.recv(deadline).await {
                Recv::Frame(ServerFrame::ChatRemoved { chat_id }) if chat_id == chat => {
                    removed = true
                }
                Recv::Frame(ServerFrame::Message { message }) => assert!(
                    message.message_id < after.message_id,
                    "the removed member got a message sent after the removal"
                ),
                Recv::Frame(_) => {}
                Recv::Timeout => break,
                Recv::Closed(why) => panic!("bob's socket closed: {why}"),
            }
        }
        assert!(removed, "no chat_removed frame");
        assert!(
            cluster
                .api_metric(1, "api_cache_requests_total", "result=\"hit\"")
                .await
                > 0.0,
            "replica B never served from its cache: the test proved nothing"
        );
        cluster.assert_no_panics();
    })
    .await;
}

/// Replica A's newest page is warm; each message acknowledged by replica B is on A's next page,
/// and so is an edit made through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_acknowledged_by_one_replica_is_on_the_others_next_page() {
    bounded(async {
        let cluster = Cluster::start(one_gateway(Vec::new())).await;
        let (alice, bob) = ("wr-alice", "wr-bob");
        let chat = cluster.create_chat(0, alice, &[bob.to_string()]).await;
        let path = format!("/v1/chats/{chat}/messages");
        let token = cluster.token(alice);
        let mut sent = Vec::new();
        for i in 0..20 {
            let r = cluster.http.get(cluster.api(0), &token, &path).await;
            assert_eq!(page_ids(&r.body), sent);
            let m = cluster.send(1, bob, chat, &format!("m{i}"), "hi").await;
            sent.push(m.message_id);
            let r = cluster.http.get(cluster.api(0), &token, &path).await;
            assert_eq!(page_ids(&r.body), sent, "after message {i}");
            let r = cluster
                .http
                .get(cluster.api(0), &token, &format!("/v1/chats/{chat}"))
                .await;
            assert_eq!(
                r.body["last_message_id"].as_str(),
                Some(m.message_id.to_string().as_str())
            );
        }
        let r = cluster
            .http
            .patch(
                cluster.api(1),
                &cluster.token(bob),
                &format!("{path}/{}", sent[3]),
                &json!({ "body": "edited" }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = cluster.http.get(cluster.api(0), &token, &path).await;
        assert_eq!(r.body["messages"][3]["body"], "edited");
        assert!(
            cluster
                .api_metric(0, "api_cache_requests_total", "result=\"hit\"")
                .await
                > 0.0
        );
        cluster.assert_no_panics();
    })
    .await;
}

/// Replica B holds its first send between drawing the id and storing it (failpoint); a later
/// send through A commits first and A's newest page is cached without the held one. Once the
/// held send is acknowledged, A's pages have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_committed_out_of_id_order_is_on_the_other_replicas_next_page() {
    bounded(async {
        let opts = Options {
            api_env_per_replica: vec![
                Vec::new(),
                vec![("FAILPOINTS", "send::after_id=1*return(1000)".into())],
            ],
            ..one_gateway(Vec::new())
        };
        let cluster = Cluster::start(opts).await;
        let (alice, bob) = ("oo-alice", "oo-bob");
        let chat = cluster.create_chat(0, alice, &[bob.to_string()]).await;
        let path = format!("/v1/chats/{chat}/messages");
        let token = cluster.token(alice);
        let (http, base, bob_token) = (
            cluster.http.clone(),
            cluster.api(1).to_string(),
            cluster.token(bob),
        );
        let held = tokio::spawn(async move {
            http.send_message(&base, &bob_token, chat, "held", "drawn first")
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fast = cluster.send(0, alice, chat, "fast", "drawn second").await;
        let r = cluster.http.get(cluster.api(0), &token, &path).await;
        assert_eq!(page_ids(&r.body), vec![fast.message_id]);
        let r = held.await.expect("held send");
        assert_eq!(r.status, 201, "{}", r.body);
        let held: Message = serde_json::from_value(r.body).unwrap();
        assert!(
            held.message_id < fast.message_id,
            "the failpoint did not reorder the sends (built with failpoints?)"
        );
        let below_fast = format!("?before={}", fast.message_id);
        for query in ["", "?after=0", below_fast.as_str()] {
            let r = cluster
                .http
                .get(cluster.api(0), &token, &format!("{path}{query}"))
                .await;
            let got = page_ids(&r.body);
            if query == below_fast {
                assert_eq!(got, vec![held.message_id], "{query}");
            } else {
                assert_eq!(got, vec![held.message_id, fast.message_id], "{query}");
            }
        }
        cluster.assert_no_panics();
    })
    .await;
}

/// Store reads by op, summed over both replicas.
async fn store_reads(cluster: &Cluster) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    for op in [
        "user_chats",
        "read_markers",
        "count_unread",
        "is_member",
        "members",
        "admins",
        "get_chat",
        "history",
    ] {
        let mut n = 0.0;
        for api in 0..cluster.apis.len() {
            n += cluster
                .api_metric(api, "api_store_op_seconds_count", &format!("op=\"{op}\""))
                .await;
        }
        out.push((op, n));
    }
    out
}

/// Clients of the reconnect storm.
const STORM_CLIENTS: usize = 200;
/// Hot chats they share.
const STORM_CHATS: usize = 4;

/// 200 clients of 4 hot chats reconnect at once and catch up (`GET /v1/chats`, then one
/// catch-up page per chat from an id they held). The per-chat reads (membership checks, pages,
/// unread counts, the chats) reach the store a few times per chat, not once per client; the
/// per-user reads (`user_chats`, `read_markers`) stay one per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_spares_the_store() {
    bounded(async {
        let cluster = Cluster::start(one_gateway(vec![
            ("API_RATE_REQUESTS", "off".into()),
            ("API_RATE_MESSAGES", "off".into()),
        ]))
        .await;
        let users: Vec<String> = (0..STORM_CLIENTS).map(|i| format!("st-{i}")).collect();
        let per_chat = STORM_CLIENTS / STORM_CHATS;
        let mut chats = Vec::new();
        let mut held = Vec::new();
        for c in 0..STORM_CHATS {
            let members = &users[c * per_chat..(c + 1) * per_chat];
            let chat = cluster.create_chat(0, &members[0], &members[1..]).await;
            let mut ids = Vec::new();
            for i in 0..30 {
                ids.push(
                    cluster
                        .send(
                            i % 2,
                            &members[i % members.len()],
                            chat,
                            &format!("s{i}"),
                            "hello",
                        )
                        .await
                        .message_id,
                );
            }
            chats.push(chat);
            // What the clients held when they dropped: the 20th message sent, and what they
            // missed: every message above it (two replicas' ids need not follow send order).
            held.push((ids[19], ids.iter().filter(|&&id| id > ids[19]).count()));
        }
        let before = store_reads(&cluster).await;
        let started = Instant::now();
        let storm = (0..STORM_CLIENTS).map(|i| {
            let (http, base, token) = (
                cluster.http.clone(),
                cluster.api(i).to_string(),
                cluster.token(&users[i]),
            );
            let (chat, (after, missed)) = (chats[i / per_chat], held[i / per_chat]);
            async move {
                let t0 = Instant::now();
                let list = http.get(&base, &token, "/v1/chats").await;
                assert_eq!(list.status, 200, "{}", list.body);
                let page = http
                    .get(
                        &base,
                        &token,
                        &format!("/v1/chats/{chat}/messages?after={after}"),
                    )
                    .await;
                assert_eq!(page.status, 200, "{}", page.body);
                assert_eq!(page_ids(&page.body).len(), missed, "{}", page.body);
                t0.elapsed()
            }
        });
        let mut took: Vec<Duration> = join_all(storm).await;
        let wall = started.elapsed();
        took.sort();
        let after = store_reads(&cluster).await;
        let mut per_chat_reads = 0.0;
        let mut report = Vec::new();
        for ((op, b), (_, a)) in before.iter().zip(&after) {
            let n = a - b;
            report.push(format!("{op}={n}"));
            if !matches!(*op, "user_chats" | "read_markers") {
                per_chat_reads += n;
            }
        }
        let p99 = took[took.len() * 99 / 100 - 1];
        // Uncached, every client costs the per-chat ops 3 reads: the unread count in its list,
        // the membership check and the page of its catch-up.
        let uncached = 3 * STORM_CLIENTS;
        eprintln!(
            "reconnect storm: {STORM_CLIENTS} clients, {STORM_CHATS} chats, 2 replicas: \
             store reads {}; per-chat reads {per_chat_reads} (uncached: {uncached}); \
             catch-up p99 {p99:?}, all done in {wall:?}",
            report.join(" ")
        );
        // Cached: a load (membership: 3 reads; chat and newest messages: 2) per chat and
        // replica, with room for each to happen twice.
        let bound = 2 * STORM_CHATS * 2 * 5;
        assert!(
            per_chat_reads <= bound as f64,
            "per-chat store reads {per_chat_reads} for {STORM_CLIENTS} clients (bound {bound})"
        );
        cluster.assert_no_panics();
    })
    .await;
}
