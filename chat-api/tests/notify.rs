//! The offline hook end to end: real `chat-api` processes (embedded, and two `serve` replicas on
//! a private Redis) post push-notification batches to a real HTTP receiver in this test process,
//! which fails a configurable number of times per batch before it accepts. Checked: one batch
//! per offline member (none for online members or the sender), valid signatures, the same
//! idempotency key on every retry, no loss across a `kill -9` between queueing and sending, and
//! dead letters after the attempts.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;
use shared::auth::Signer;
use shared::protocol::Encoding;
use tokio::time::Instant;

use support::{bounded_by, free_port, Cluster, Options, WsClient};

const HOOK_SECRET: &str = "notify-test-hook-secret-0123456789";
const JWT_SECRET: &str = "notify-test-jwt-secret-0123456789abcdef";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Delivery {
    key: String,
    signature: String,
    body: Vec<u8>,
    status: u16,
}

impl Delivery {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    fn user(&self) -> String {
        self.json()["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn signature_is_valid(&self) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
        mac.update(&self.body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.signature == format!("sha256={want}")
    }
}

/// A webhook receiver on a real socket: answers 500 to the first `fail_first` requests of each
/// idempotency key, then 200.
struct Receiver {
    url: String,
    log: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ReceiverState {
    log: Arc<Mutex<Vec<Delivery>>>,
    fail_first: Arc<AtomicUsize>,
}

async fn hook(State(st): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let key = header("idempotency-key");
    let mut log = st.log.lock();
    let earlier = log.iter().filter(|d| d.key == key).count();
    let status = if earlier < st.fail_first.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    log.push(Delivery {
        key,
        signature: header("x-chat-signature"),
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let state = ReceiverState {
            log: Arc::default(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            log: state.log,
            task,
        }
    }

    fn all(&self) -> Vec<Delivery> {
        self.log.lock().clone()
    }

    fn accepted(&self) -> Vec<Delivery> {
        self.all().into_iter().filter(|d| d.status == 200).collect()
    }

    /// Waits until `n` batches were accepted, then a little longer for any extra one.
    async fn await_accepted(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + limit;
        while self.accepted().len() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} batches accepted within {limit:?}: {:?}",
                self.accepted().len(),
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.accepted()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn notify_env(url: &str, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = vec![
        ("NOTIFY_WEBHOOK_URL", url.to_string()),
        ("NOTIFY_WEBHOOK_SECRET", HOOK_SECRET.to_string()),
        ("NOTIFY_BATCH_WINDOW", "1s".into()),
        ("NOTIFY_RETRY_BACKOFF", "50ms".into()),
        ("NOTIFY_REQUEST_TIMEOUT", "1s".into()),
        ("NOTIFY_CLAIM_IDLE", "3s".into()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, v.to_string()));
    }
    env
}

/// `chat-api embedded` as a child process on free ports, with its store in `dir`.
struct Embedded {
    child: Option<Child>,
    api: String,
    ws: String,
    log: PathBuf,
}

impl Embedded {
    async fn start(dir: &Path, env: &[(&'static str, String)]) -> Embedded {
        let http = reqwest::Client::new();
        for attempt in 0..3 {
            let (api_port, gw_port) = (
                free_port().expect("a free port"),
                free_port().expect("a free port"),
            );
            let log = dir.join(format!(
                "embedded-{}-{attempt}.log",
                free_port().expect("a free port")
            ));
            let file = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-api"));
            cmd.arg("embedded")
                .env("DATA_DIR", dir)
                .env("API_ADDR", format!("127.0.0.1:{api_port}"))
                .env("GATEWAY_ADDR", format!("127.0.0.1:{gw_port}"))
                .env("JWT_SECRET", JWT_SECRET)
                .env("RUST_LOG", "info")
                .env_remove("STORE_URL")
                .stdin(Stdio::null())
                .stdout(Stdio::from(file.try_clone().unwrap()))
                .stderr(Stdio::from(file));
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawning chat-api embedded");
            let api = format!("http://127.0.0.1:{api_port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let ready = http.get(format!("{api}/readyz")).send().await;
                if matches!(&ready, Ok(r) if r.status().is_success()) {
                    return Embedded {
                        child: Some(child),
                        api,
                        ws: format!("ws://127.0.0.1:{gw_port}/ws"),
                        log,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(text.contains("binding"), "embedded exited:\n{text}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "embedded not ready:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("could not start chat-api embedded on free ports");
    }

    /// SIGTERM, then waits for the exit.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        metric(&format!("{}/metrics", self.api), name).await
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- {}:\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A counter or gauge summed over its label sets, 0 when absent.
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn signer() -> Signer {
    Signer::hmac(jsonwebtoken::Algorithm::HS256, JWT_SECRET.as_bytes())
}

fn token(user: &str) -> String {
    signer().token(user, Duration::from_secs(600), None)
}

async fn post(api: &str, user: &str, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{api}{path}"))
        .bearer_auth(token(user))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "POST {path}");
    r.json().await.unwrap()
}

async fn create_chat(api: &str, creator: &str, members: &[&str]) -> String {
    let chat = post(api, creator, "/v1/chats", json!({ "members": members })).await;
    chat["chat_id"].as_str().unwrap().to_string()
}

async fn send(api: &str, sender: &str, chat: &str, id: &str, body: &str) -> String {
    let m = post(
        api,
        sender,
        &format!("/v1/chats/{chat}/messages"),
        json!({ "client_msg_id": id, "body": body }),
    )
    .await;
    m["message_id"].as_str().unwrap().to_string()
}

/// Accepted batches by user; panics on a second accepted batch for a user.
fn by_user(accepted: &[Delivery]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for d in accepted {
        let prev = out.insert(d.user(), d.json());
        assert!(
            prev.is_none(),
            "two accepted batches for {}: {accepted:?}",
            d.user()
        );
    }
    out
}

async fn await_metric(url: &str, name: &str, at_least: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if metric(url, name).await >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} below {at_least} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn embedded_offline_members_get_one_signed_batch_after_two_failures() {
    bounded_by(Duration::from_secs(90), async {
        let receiver = Receiver::start(2).await;
        let dir = tempfile::tempdir().unwrap();
        let sys = Embedded::start(dir.path(), &notify_env(&receiver.url, &[])).await;
        let chat = create_chat(&sys.api, "alice", &["bob", "carol", "dave", "erin"]).await;
        // dave is online: the messages reach his socket, and no notification.
        let _dave = WsClient::connect(&sys.ws, &token("dave"), Encoding::Json)
            .await
            .unwrap();
        let m1 = send(&sys.api, "alice", &chat, "c1", "first").await;
        let m2 = send(&sys.api, "alice", &chat, "c2", "second message").await;
        // erin was offline when they were sent, and comes online within the batch window.
        let _erin = WsClient::connect(&sys.ws, &token("erin"), Encoding::Json)
            .await
            .unwrap();

        let accepted = receiver.await_accepted(2, Duration::from_secs(20)).await;
        let batches = by_user(&accepted);
        assert_eq!(batches.len(), 2, "bob and carol only: {accepted:?}");
        for user in ["bob", "carol"] {
            assert_eq!(
                batches[user],
                json!({ "user_id": user, "chat_id": chat, "message_ids": [m1, m2],
                    "count": 2, "preview": "second message" })
            );
        }
        // Every attempt signed; each batch failed twice, then was accepted, under one key.
        let all = receiver.all();
        assert_eq!(all.len(), 6, "{all:?}");
        assert!(all.iter().all(Delivery::signature_is_valid), "{all:?}");
        for d in &accepted {
            let same_key: Vec<u16> = all
                .iter()
                .filter(|a| a.key == d.key)
                .map(|a| a.status)
                .collect();
            assert_eq!(same_key, vec![500, 500, 200]);
        }
        assert_eq!(sys.metric("api_notify_queued_total").await, 6.0);
        assert_eq!(sys.metric("api_notify_sent_total").await, 2.0);
        assert_eq!(sys.metric("api_notify_retries_total").await, 4.0);
        assert_eq!(sys.metric("api_notify_dead_lettered_total").await, 0.0);
        assert_eq!(
            sys.metric("api_notify_dropped_total").await,
            2.0,
            "erin's two entries"
        );
        assert_eq!(
            queue_rows(dir.path()),
            (0, 0),
            "delivered entries are deleted"
        );
    })
    .await;
}

#[tokio::test]
async fn a_fan_out_retried_after_a_failed_enqueue_queues_without_delivering_twice() {
    bounded_by(Duration::from_secs(90), async {
        let receiver = Receiver::start(0).await;
        let dir = tempfile::tempdir().unwrap();
        let env = notify_env(
            &receiver.url,
            &[
                ("FAILPOINTS", "notify::enqueue=1*return"),
                ("NOTIFY_BATCH_WINDOW", "200ms"),
            ],
        );
        let sys = Embedded::start(dir.path(), &env).await;
        let chat = create_chat(&sys.api, "alice", &["bob", "dave"]).await;
        let mut dave = WsClient::connect(&sys.ws, &token("dave"), Encoding::Json)
            .await
            .unwrap();
        let m1 = send(&sys.api, "alice", &chat, "c1", "hello").await;
        // The first attempt delivered to dave and failed to queue bob; the retry queues bob only.
        dave.expect(&[m1.parse().unwrap()], 0, Duration::from_secs(5))
            .await;
        let accepted = receiver.await_accepted(1, Duration::from_secs(20)).await;
        assert_eq!(by_user(&accepted)["bob"]["message_ids"], json!([m1]));
        dave.assert_quiet(Duration::from_millis(500)).await;
        let url = format!("{}/metrics", sys.api);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert!(
            text.contains("api_fanout_retries_total{outcome=\"delivered\"} 1"),
            "{text}"
        );
        assert_eq!(sys.metric("api_notify_enqueue_failures_total").await, 0.0);
    })
    .await;
}

#[tokio::test]
async fn embedded_kill_9_between_queueing_and_sending_loses_nothing() {
    bounded_by(Duration::from_secs(90), async {
        let receiver = Receiver::start(0).await;
        let dir = tempfile::tempdir().unwrap();
        let env = notify_env(&receiver.url, &[("NOTIFY_BATCH_WINDOW", "5s")]);
        let mut sys = Embedded::start(dir.path(), &env).await;
        let chat = create_chat(&sys.api, "alice", &["bob"]).await;
        let m1 = send(&sys.api, "alice", &chat, "c1", "hello").await;
        // Claimed by the dispatcher, waiting for its window: now the process dies.
        await_metric(
            &format!("{}/metrics", sys.api),
            "api_notify_held",
            1.0,
            Duration::from_secs(5),
        )
        .await;
        sys.kill9();
        assert!(receiver.all().is_empty(), "sent before the kill");

        let sys = Embedded::start(dir.path(), &env).await;
        let accepted = receiver.await_accepted(1, Duration::from_secs(20)).await;
        let batches = by_user(&accepted);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches["bob"]["message_ids"], json!([m1]));
        assert_eq!(sys.metric("api_notify_sent_total").await, 1.0);
        assert_eq!(queue_rows(dir.path()), (0, 0));
    })
    .await;
}

/// A clean stop hands the waiting entries over at once: the restarted process sends them long
/// before NOTIFY_CLAIM_IDLE would have let it.
#[tokio::test]
async fn a_stopping_replica_releases_its_waiting_entries() {
    bounded_by(Duration::from_secs(90), async {
        let receiver = Receiver::start(0).await;
        let dir = tempfile::tempdir().unwrap();
        let env = notify_env(
            &receiver.url,
            &[("NOTIFY_BATCH_WINDOW", "3s"), ("NOTIFY_CLAIM_IDLE", "60s")],
        );
        let mut sys = Embedded::start(dir.path(), &env).await;
        let chat = create_chat(&sys.api, "alice", &["bob"]).await;
        let m1 = send(&sys.api, "alice", &chat, "c1", "hello").await;
        await_metric(
            &format!("{}/metrics", sys.api),
            "api_notify_held",
            1.0,
            Duration::from_secs(5),
        )
        .await;
        sys.stop().await;
        assert!(receiver.all().is_empty(), "sent before the stop");
        let started = Instant::now();
        let _sys = Embedded::start(dir.path(), &env).await;
        let accepted = receiver.await_accepted(1, Duration::from_secs(20)).await;
        assert_eq!(by_user(&accepted)["bob"]["message_ids"], json!([m1]));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "released, not left to NOTIFY_CLAIM_IDLE"
        );
    })
    .await;
}

#[tokio::test]
async fn embedded_batches_dead_letter_after_the_attempts() {
    bounded_by(Duration::from_secs(90), async {
        let receiver = Receiver::start(usize::MAX).await;
        let dir = tempfile::tempdir().unwrap();
        let env = notify_env(
            &receiver.url,
            &[
                ("NOTIFY_MAX_ATTEMPTS", "3"),
                ("NOTIFY_BATCH_WINDOW", "200ms"),
            ],
        );
        let sys = Embedded::start(dir.path(), &env).await;
        let chat = create_chat(&sys.api, "alice", &["bob"]).await;
        send(&sys.api, "alice", &chat, "c1", "hello").await;
        await_metric(
            &format!("{}/metrics", sys.api),
            "api_notify_dead_lettered_total",
            1.0,
            Duration::from_secs(20),
        )
        .await;
        // No attempt after the last one, even once the claim would have run out.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let all = receiver.all();
        assert_eq!(
            all.len(),
            3,
            "exactly NOTIFY_MAX_ATTEMPTS attempts: {all:?}"
        );
        assert!(all.iter().all(|d| d.status == 500 && d.key == all[0].key));
        assert_eq!(sys.metric("api_notify_retries_total").await, 2.0);
        assert_eq!(sys.metric("api_notify_sent_total").await, 0.0);
        assert_eq!(queue_rows(dir.path()), (0, 1), "moved to the dead letters");
    })
    .await;
}

#[tokio::test]
async fn embedded_a_full_queue_drops_new_entries_and_the_send_still_succeeds() {
    bounded_by(Duration::from_secs(90), async {
        let receiver = Receiver::start(0).await;
        let dir = tempfile::tempdir().unwrap();
        let env = notify_env(
            &receiver.url,
            &[("NOTIFY_QUEUE_MAX", "1"), ("NOTIFY_BATCH_WINDOW", "200ms")],
        );
        let sys = Embedded::start(dir.path(), &env).await;
        let chat = create_chat(&sys.api, "alice", &["bob", "carol"]).await;
        // `send` asserts the 201: a full queue never fails or holds up a send.
        send(&sys.api, "alice", &chat, "c1", "hello").await;
        let accepted = receiver.await_accepted(1, Duration::from_secs(20)).await;
        assert_eq!(by_user(&accepted).len(), 1, "{accepted:?}");
        assert_eq!(sys.metric("api_notify_queued_total").await, 1.0);
        let text = reqwest::get(format!("{}/metrics", sys.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("api_notify_dropped_total{reason=\"queue_full\"} 1"),
            "{text}"
        );
        // Room again once delivered.
        send(&sys.api, "alice", &chat, "c2", "again").await;
        receiver.await_accepted(2, Duration::from_secs(20)).await;
    })
    .await;
}

/// (entries queued, dead letters) in the embedded SQLite file.
fn queue_rows(dir: &Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(dir.join("chat.db")).unwrap();
    db.query_row(
        "SELECT (SELECT COUNT(*) FROM notify_queue), (SELECT COUNT(*) FROM notify_dead)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[tokio::test]
async fn distributed_replica_killed_before_sending_hands_its_claims_to_the_other() {
    bounded_by(Duration::from_secs(120), async {
        let receiver = Receiver::start(2).await;
        let env = notify_env(&receiver.url, &[("NOTIFY_BATCH_WINDOW", "4s")]);
        let mut c = Cluster::start(Options {
            gateways: vec!["gw-a"],
            apis: 1,
            api_env: env.clone(),
            ..Options::default()
        })
        .await;
        let members: Vec<String> = ["bob", "carol", "dave"].map(String::from).to_vec();
        let chat = c.create_chat(0, "alice", &members).await;
        let _dave = c.connect(0, "dave", Encoding::Json).await;
        let m1 = c.send(0, "alice", chat, "c1", "hi all").await;
        // Both offline members' entries claimed by replica 0, waiting for their window.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.api_metric(0, "api_notify_held", "").await < 2.0 {
            assert!(
                Instant::now() < deadline,
                "replica 0 never claimed the entries"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let other = c.spawn_api(2, &env, true).await;
        c.apis[0].proc.kill9();
        assert!(receiver.all().is_empty(), "sent before the kill");

        // The survivor claims them once replica 0's claims went unrenewed for NOTIFY_CLAIM_IDLE.
        let accepted = receiver.await_accepted(2, Duration::from_secs(30)).await;
        let batches = by_user(&accepted);
        assert_eq!(
            batches
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            ["bob", "carol"].map(String::from).into(),
            "{accepted:?}"
        );
        for b in batches.values() {
            assert_eq!(b["message_ids"], json!([m1.message_id.to_string()]));
            assert_eq!(b["preview"], "hi all");
        }
        let all = receiver.all();
        assert!(all.iter().all(Delivery::signature_is_valid));
        assert_eq!(
            all.len(),
            6,
            "two failures and one success per batch: {all:?}"
        );
        assert_eq!(c.api_metric(other, "api_notify_sent_total", "").await, 2.0);
        let len = support::redis_command(
            match &mut c.redis {
                support::Redis::Standalone(r) => r.port(),
                support::Redis::Cluster(_) => unreachable!(),
            },
            &[b"XLEN", b"notify:{q}"],
        )
        .unwrap();
        assert_eq!(len, ":0", "queue empty after delivery");
        c.assert_no_panics();
    })
    .await;
}

#[tokio::test]
async fn distributed_batches_dead_letter_into_the_dead_letter_stream() {
    bounded_by(Duration::from_secs(90), async {
        let receiver = Receiver::start(usize::MAX).await;
        let env = notify_env(
            &receiver.url,
            &[
                ("NOTIFY_MAX_ATTEMPTS", "2"),
                ("NOTIFY_BATCH_WINDOW", "200ms"),
            ],
        );
        let mut c = Cluster::start(Options {
            gateways: vec!["gw-a"],
            apis: 1,
            api_env: env,
            ..Options::default()
        })
        .await;
        let chat = c.create_chat(0, "alice", &["bob".to_string()]).await;
        c.send(0, "alice", chat, "c1", "hello").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.api_metric(0, "api_notify_dead_lettered_total", "").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "no dead letter: {:?}",
                receiver.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            receiver.all().len(),
            2,
            "exactly NOTIFY_MAX_ATTEMPTS attempts"
        );
        let port = match &mut c.redis {
            support::Redis::Standalone(r) => r.port(),
            support::Redis::Cluster(_) => unreachable!(),
        };
        let xlen = |key: &str| support::redis_command(port, &[b"XLEN", key.as_bytes()]).unwrap();
        assert_eq!(xlen("notify:{q}:dead"), ":1");
        assert_eq!(xlen("notify:{q}"), ":0", "a dead letter leaves the queue");
        c.assert_no_panics();
    })
    .await;
}
