//! The catch-up guarantee under clock skew and reordering, across real processes: `chat-api
//! serve` replicas on one private Redis and one SQLite file, one of them with its wall clock
//! shifted by libfaketime (as on a host whose clock is wrong), and concurrent sends made to
//! commit out of id order by a failpoint. Clients run the documented catch-up
//! (`CatchUpClient`: from the highest id held minus the overlap, deduplicated by id).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use shared::protocol::{Encoding, Message};
use shared::Id;
use support::{faketime_env, CatchUpClient, Cluster, Options};

/// Upper bound of each test, processes included.
const TEST_LIMIT: Duration = Duration::from_secs(50);
/// Longest wait for a frame that should arrive.
const DELIVERY: Duration = Duration::from_secs(5);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    support::bounded_by(TEST_LIMIT, test).await
}

fn one_of_each() -> Options {
    Options {
        gateways: vec!["gw-a"],
        apis: 1,
        ..Options::default()
    }
}

/// `last_message_id` of `chat` in `GET /v1/chats` as `user` sees it.
async fn last_message_id(cluster: &Cluster, api: usize, user: &str, chat: Id) -> Option<Id> {
    let r = cluster
        .http
        .get(cluster.api(api), &cluster.token(user), "/v1/chats")
        .await;
    assert_eq!(r.status, 200, "GET /v1/chats: {}", r.body);
    r.body["chats"]
        .as_array()
        .and_then(|chats| {
            chats
                .iter()
                .find(|c| c["chat_id"].as_str() == Some(&chat.to_string()))
        })
        .and_then(|c| c["last_message_id"].as_str()?.parse().ok())
}

/// Reads `client`'s socket until it holds `id` (bounded).
async fn await_held(client: &mut CatchUpClient, id: Id) {
    let want: HashSet<Id> = [id].into();
    client.pump(Instant::now() + DELIVERY, Some(&want)).await;
    assert!(client.holds(id), "{} never received {id}", client.user);
}

/// The scenario: a user's socket drops, another member sends 5 messages through a
/// replica whose clock is 3 s behind, the user reconnects and catches up: all 5 are held,
/// exactly once, in order, and `GET /v1/chats` shows the chat moved on. The slow replica's ids
/// follow Redis time, so they sort after what the user held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_with_a_slow_clock_draws_ids_on_redis_time_and_nothing_is_skipped() {
    bounded(async {
        let mut cluster = Cluster::start(one_of_each()).await;
        let slow = cluster.spawn_api(2, &faketime_env("-3s"), true).await;
        let log = cluster.apis[slow].proc.log();
        assert!(
            log.contains("differs from Redis time by more than 1 s"),
            "the slow replica does not say its clock is off:\n{log}"
        );
        let chat = cluster
            .create_chat(0, "sk-alice", &["sk-bob".to_string()])
            .await;
        let ws = cluster.gateways[0].ws_url();
        let mut bob = CatchUpClient::new("sk-bob", cluster.token("sk-bob"), Encoding::Json);
        bob.connect(&cluster.http, &ws, cluster.api(0)).await;
        let first = cluster.send(0, "sk-alice", chat, "sk-0", "on time").await;
        await_held(&mut bob, first.message_id).await;

        // Bob's socket drops; Alice sends 5 through the slow replica meanwhile.
        bob.socket = None;
        let mut sent: Vec<Message> = Vec::new();
        for i in 1..=5 {
            sent.push(
                cluster
                    .send(
                        slow,
                        "sk-alice",
                        chat,
                        &format!("sk-{i}"),
                        "from the slow one",
                    )
                    .await,
            );
        }
        for m in &sent {
            assert!(
                m.message_id > first.message_id,
                "an id of the slow replica ({}, {} ms) is below one drawn earlier ({}, {} ms)",
                m.message_id,
                m.message_id.unix_ms(),
                first.message_id,
                first.message_id.unix_ms()
            );
        }
        let last = last_message_id(&cluster, 0, "sk-bob", chat).await;
        assert_eq!(
            last,
            Some(sent[4].message_id),
            "GET /v1/chats did not move on"
        );

        bob.connect(&cluster.http, &ws, cluster.api(0)).await;
        let held = bob.chat(chat);
        let want: Vec<Id> = std::iter::once(&first)
            .chain(&sent)
            .map(|m| m.message_id)
            .collect();
        let got: Vec<Id> = held.iter().map(|m| m.message_id).collect();
        assert_eq!(got, want, "held after catch-up (in id order)");
        let bodies: Vec<&str> = held.iter().map(|m| m.client_msg_id.as_str()).collect();
        assert_eq!(bodies, ["sk-0", "sk-1", "sk-2", "sk-3", "sk-4", "sk-5"]);
        assert!(bob.socket_repeats.is_empty(), "{:?}", bob.socket_repeats);
        cluster.assert_no_panics();
    })
    .await;
}

/// A replica whose clock is further off than API_MAX_CLOCK_SKEW refuses sends with 503 and
/// Retry-After and is not ready, saying why in its log; the other replica is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_beyond_the_clock_bound_refuses_sends_and_is_not_ready() {
    bounded(async {
        let mut cluster = Cluster::start(one_of_each()).await;
        let mut env = faketime_env("-60s");
        env.push(("API_MAX_CLOCK_SKEW", "2s".into()));
        let skewed = cluster.spawn_api(2, &env, false).await;
        let base = cluster.api(skewed).to_string();
        let ready = cluster.http.get(&base, "", "/readyz").await;
        assert_eq!(ready.status, 503, "readyz: {}", ready.body);
        assert!(
            ready.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("message id clock")),
            "{}",
            ready.body
        );
        let chat = cluster
            .create_chat(0, "cb-alice", &["cb-bob".to_string()])
            .await;
        let r = cluster
            .http
            .send_message(&base, &cluster.token("cb-alice"), chat, "cb-1", "hi")
            .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.retry_after.is_some(), "503 without Retry-After: {r:?}");
        assert_eq!(
            r.body["type"],
            "https://chat.example/problems/service-unavailable"
        );
        let log = cluster.apis[skewed].proc.log();
        assert!(
            log.contains("refusing sends") && log.contains("API_MAX_CLOCK_SKEW"),
            "no clear log line:\n{log}"
        );
        // Nothing was stored; the healthy replica still takes the same send.
        let ok = cluster.send(0, "cb-alice", chat, "cb-1", "hi").await;
        assert_eq!(
            last_message_id(&cluster, 0, "cb-bob", chat).await,
            Some(ok.message_id)
        );
        cluster.assert_no_panics();
    })
    .await;
}

/// Two concurrent sends on one replica: the first draws the lower id and is held (failpoint)
/// before its store write, so the second commits and is delivered first. A client that holds
/// the higher id and missed the lower one gets it from its catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_committed_out_of_id_order_are_caught_up() {
    bounded(async {
        let opts = Options {
            api_env: vec![("FAILPOINTS", "send::after_id=1*return(1500)".into())],
            ..one_of_each()
        };
        let cluster = Cluster::start(opts).await;
        let chat = cluster
            .create_chat(0, "oo-alice", &["oo-bob".to_string()])
            .await;
        let ws = cluster.gateways[0].ws_url();
        let mut bob = CatchUpClient::new("oo-bob", cluster.token("oo-bob"), Encoding::Msgpack);
        bob.connect(&cluster.http, &ws, cluster.api(0)).await;

        let (http, base, token) = (
            cluster.http.clone(),
            cluster.api(0).to_string(),
            cluster.token("oo-alice"),
        );
        let slow = tokio::spawn(async move {
            let r = http.send_message(&base, &token, chat, "oo-1", "held").await;
            (r, Instant::now())
        });
        // The first send has drawn its id and is held; the second overtakes it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let fast = cluster.send(0, "oo-alice", chat, "oo-2", "quick").await;
        let fast_at = Instant::now();
        await_held(&mut bob, fast.message_id).await;
        bob.socket = None; // drops before the held send commits
        let (r, slow_at) = slow.await.expect("send task");
        assert_eq!(r.status, 201, "{}", r.body);
        let held: Message = serde_json::from_value(r.body).expect("message");
        assert!(
            held.message_id < fast.message_id && slow_at > fast_at,
            "the failpoint did not reorder the sends (is the binary built with failpoints?): \
             {} acknowledged after {}",
            held.message_id,
            fast.message_id
        );

        bob.connect(&cluster.http, &ws, cluster.api(0)).await;
        let got: Vec<Id> = bob.chat(chat).iter().map(|m| m.message_id).collect();
        assert_eq!(got, vec![held.message_id, fast.message_id]);
        cluster.assert_no_panics();
    })
    .await;
}

/// The `/readyz` status of `api`, polled until it is `want` or `limit` passed.
async fn await_readiness(cluster: &Cluster, api: usize, want: u16, limit: Duration) -> u16 {
    let deadline = Instant::now() + limit;
    loop {
        let r = cluster.http.get(cluster.api(api), "", "/readyz").await;
        if r.status == want || Instant::now() >= deadline {
            return r.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica that cannot measure its clock (Redis unreachable) for longer than
/// API_CLOCK_STALE_AFTER refuses sends and is not ready; once Redis is back, both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_without_a_recent_measurement_refuses_sends_until_it_has_one() {
    bounded(async {
        let opts = Options {
            api_env: vec![
                ("API_CLOCK_CHECK_INTERVAL", "100ms".into()),
                ("API_CLOCK_STALE_AFTER", "1s".into()),
            ],
            ..one_of_each()
        };
        let mut cluster = Cluster::start(opts).await;
        let chat = cluster
            .create_chat(0, "st-alice", &["st-bob".to_string()])
            .await;
        cluster.redis.standalone().stop();
        assert_eq!(
            await_readiness(&cluster, 0, 503, Duration::from_secs(5)).await,
            503,
            "still ready without a clock measurement"
        );
        let r = cluster
            .http
            .send_message(
                cluster.api(0),
                &cluster.token("st-alice"),
                chat,
                "st-1",
                "hi",
            )
            .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.retry_after.is_some(), "503 without Retry-After: {r:?}");
        let log = cluster.apis[0].proc.log();
        assert!(
            log.contains("API_CLOCK_STALE_AFTER"),
            "no clear log line:\n{log}"
        );

        tokio::task::block_in_place(|| cluster.redis.standalone().start_again())
            .expect("restarting redis");
        assert_eq!(
            await_readiness(&cluster, 0, 200, Duration::from_secs(10)).await,
            200,
            "not ready again after Redis came back"
        );
        cluster.send(0, "st-alice", chat, "st-1", "hi").await;
        cluster.assert_no_panics();
    })
    .await;
}
