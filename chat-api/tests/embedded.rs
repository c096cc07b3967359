//! End-to-end tests of embedded mode: the API and the gateway in one process (as
//! `chat-api embedded` runs them), driven over real sockets by an HTTP client and a WebSocket
//! client other than fastwebsockets.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use chat_api::store::sqlite::SqliteStore;
use chat_api::AppState;
use shared::auth::{JwtSettings, KeySource, Signer, Verifier};
use shared::protocol::{
    decode_server, encode_client, ClientFrame, Encoding, ErrorCode, PresenceStatus, ServerFrame,
};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::IdGenerator;

const SECRET: &[u8] = b"embedded-test-secret-0123456789abcdef";

struct System {
    api: String,
    ws: String,
    signer: Signer,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl System {
    async fn start() -> System {
        System::start_with(gateway::Settings::default().presence_grace).await
    }

    /// With `PRESENCE_GRACE` = `presence_grace`.
    async fn start_with(presence_grace: Duration) -> System {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("chat.db")).unwrap();
        let verifier = Verifier::new(&JwtSettings {
            algorithm: jsonwebtoken::Algorithm::HS256,
            key: KeySource::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(1),
        })
        .unwrap();
        let registry = Arc::new(MemoryRegistry::new());
        let bus = Arc::new(MemoryBus::default());
        // One revocation list for both tiers, as `chat-api embedded` shares it.
        let revocations = Arc::new(shared::revocation::RevocationCheck::memory());
        let state = AppState::new(
            Arc::new(store),
            registry.clone(),
            bus.clone(),
            verifier.clone(),
            Arc::new(IdGenerator::new(1)),
        )
        .with_revocations(revocations.clone(), Duration::from_secs(3600));
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", api_listener.local_addr().unwrap());
        let ws = format!("ws://{}/ws", gw_listener.local_addr().unwrap());
        let settings = gateway::Settings {
            node_id: "embedded".into(),
            drain_window: Duration::from_millis(50),
            drain_deadline: Duration::from_secs(2),
            api_url: Some(api.clone()),
            presence_grace,
            ..Default::default()
        };
        let deps = gateway::Deps {
            registry,
            bus,
            verifier,
            metrics: None,
            limiter: shared::ratelimit::memory(),
            revocations,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(chat_api::cli::run_both(
            api_listener,
            state,
            gw_listener,
            settings,
            deps,
            async {
                let _ = rx.await;
            },
        ));
        System {
            api,
            ws,
            signer: Signer::hmac(jsonwebtoken::Algorithm::HS256, SECRET),
            http: reqwest::Client::new(),
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    fn token(&self, user: &str) -> String {
        self.signer.token(user, Duration::from_secs(600), None)
    }

    async fn post(&self, user_token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(user_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A browser-style connection: the token in the query string.
    async fn connect(&self, user: &str, encoding: Encoding) -> Socket {
        let enc = match encoding {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        };
        let url = format!(
            "{}?encoding={enc}&access_token={}",
            self.ws,
            self.token(user)
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut s = Socket { ws, encoding };
        assert!(matches!(s.next().await, ServerFrame::Hello { .. }));
        s
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

struct Socket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    encoding: Encoding,
}

impl Socket {
    /// The next data frame other than `presence`. Presence is pushed whenever a co-member's
    /// sockets come and go, and a socket that connected just before its chat was created may be
    /// told of it after the chat exists: tests of other frames must not depend on that timing.
    async fn next(&mut self) -> ServerFrame {
        loop {
            match self.next_any().await {
                ServerFrame::Presence { .. } => continue,
                frame => return frame,
            }
        }
    }

    /// The next data frame, presence included.
    async fn next_any(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("frame in time");
            if let Some(frame) = self.data_frame(&msg.expect("open").expect("frame")) {
                return frame;
            }
        }
    }

    /// The server frame a data message carries (`None` for control messages); panics on a
    /// binary frame on a JSON socket or an undecodable one.
    fn data_frame(&self, msg: &WsMessage) -> Option<ServerFrame> {
        match msg {
            WsMessage::Text(t) => Some(decode_server(Encoding::Json, t.as_bytes()).unwrap()),
            WsMessage::Binary(b) => {
                assert_eq!(self.encoding, Encoding::Msgpack);
                Some(decode_server(Encoding::Msgpack, b).unwrap())
            }
            _ => None,
        }
    }

    async fn send(&mut self, frame: &ClientFrame) {
        let bytes = encode_client(self.encoding, frame);
        let msg = match self.encoding {
            Encoding::Json => WsMessage::Text(String::from_utf8(bytes).unwrap().into()),
            Encoding::Msgpack => WsMessage::Binary(bytes.into()),
        };
        self.ws.send(msg).await.unwrap();
    }

    /// The close code the server closes with (within 1 s, the admin API's bound).
    async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Nothing but control frames and `presence` arrives for `quiet` (see `next`).
    async fn assert_quiet(&mut self, quiet: Duration) {
        self.quiet_for(quiet, true).await
    }

    /// Nothing but control frames arrives for `quiet`, presence included.
    async fn assert_silent(&mut self, quiet: Duration) {
        self.quiet_for(quiet, false).await
    }

    async fn quiet_for(&mut self, quiet: Duration, presence_allowed: bool) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match msg {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(m))
                    if presence_allowed
                        && matches!(self.data_frame(&m), Some(ServerFrame::Presence { .. })) =>
                {
                    continue
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn message_posted_by_one_user_reaches_the_others_sockets_once() {
    let sys = System::start().await;
    let mut bob_json = sys.connect("bob", Encoding::Json).await;
    let mut bob_mp = sys.connect("bob", Encoding::Msgpack).await;
    let mut carol = sys.connect("carol", Encoding::Json).await;
    let alice = sys.token("alice");
    let (status, chat) = sys
        .post(
            &alice,
            "/v1/chats",
            json!({"members": ["bob"], "title": "t"}),
        )
        .await;
    assert_eq!(status, 201, "{chat}");
    let chat_id = chat["chat_id"].as_str().unwrap().to_string();
    let (status, sent) = sys
        .post(
            &alice,
            &format!("/v1/chats/{chat_id}/messages"),
            json!({"client_msg_id": "c-1", "body": "hi bob"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    for sock in [&mut bob_json, &mut bob_mp] {
        match sock.next().await {
            ServerFrame::Message { message } => {
                assert_eq!(message.body, "hi bob");
                assert_eq!(message.sender_id, "alice");
                assert_eq!(
                    message.message_id.to_string(),
                    sent["message_id"].as_str().unwrap()
                );
                assert_eq!(message.chat_id.to_string(), chat_id);
            }
            other => panic!("expected message, got {other:?}"),
        }
    }
    // A retry stores nothing new and delivers the same message again (its first attempt may
    // have died before the fan-out; clients deduplicate by id); carol is not a member.
    let (status, again) = sys
        .post(
            &alice,
            &format!("/v1/chats/{chat_id}/messages"),
            json!({"client_msg_id": "c-1", "body": "hi bob"}),
        )
        .await;
    assert_eq!((status, &again), (201, &sent));
    match bob_json.next().await {
        ServerFrame::Message { message } => assert_eq!(
            message.message_id.to_string(),
            sent["message_id"].as_str().unwrap()
        ),
        other => panic!("expected the replayed message, got {other:?}"),
    }
    bob_json.assert_quiet(Duration::from_millis(300)).await;
    carol.assert_quiet(Duration::from_millis(100)).await;
    sys.stop().await;
}

#[tokio::test]
async fn push_event_reaches_the_user_in_both_encodings() {
    let sys = System::start().await;
    let mut json_sock = sys.connect("dana", Encoding::Json).await;
    let mut mp_sock = sys.connect("dana", Encoding::Msgpack).await;
    let service = sys
        .signer
        .token("billing", Duration::from_secs(60), Some("push"));
    let event = json!({"kind": "invoice.paid", "amount_cents": 1250});
    let (status, body) = sys
        .post(
            &service,
            "/v1/push",
            json!({"user_ids": ["dana", "nobody"], "event": event}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for sock in [&mut json_sock, &mut mp_sock] {
        assert_eq!(
            sock.next().await,
            ServerFrame::Event {
                event: event.clone()
            }
        );
    }
    // A user token cannot push.
    let (status, _) = sys
        .post(
            &sys.token("dana"),
            "/v1/push",
            json!({"user_ids": ["dana"], "event": {}}),
        )
        .await;
    assert_eq!(status, 403);
    sys.stop().await;
}

#[tokio::test]
async fn presence_follows_sockets() {
    let grace = Duration::from_millis(500);
    let sys = System::start_with(grace).await;
    // "x" shares a chat with erin, so x may read her presence and is told of its changes.
    let (status, _) = sys
        .post(&sys.token("x"), "/v1/chats", json!({"members": ["erin"]}))
        .await;
    assert_eq!(status, 201);
    let presence = |sys: &System, who: &str| {
        let req = sys
            .http
            .get(format!("{}/v1/presence?user_ids=erin", sys.api))
            .bearer_auth(sys.token(who))
            .send();
        async move { req.await.unwrap().json::<Value>().await.unwrap()["presence"][0]["status"].clone() }
    };
    assert_eq!(presence(&sys, "x").await, json!("offline"));
    assert_eq!(presence(&sys, "stranger").await, json!("unknown"));
    let mut watcher = sys.connect("x", Encoding::Msgpack).await;
    let sock = sys.connect("erin", Encoding::Json).await;
    assert_eq!(presence(&sys, "x").await, json!("online"));
    assert_eq!(presence(&sys, "stranger").await, json!("unknown"));
    match watcher.next_any().await {
        ServerFrame::Presence {
            user_id,
            status: PresenceStatus::Online,
            online: true,
            ..
        } => assert_eq!(user_id, "erin"),
        other => panic!("expected erin online, got {other:?}"),
    }
    let closed = tokio::time::Instant::now();
    drop(sock);
    match watcher.next_any().await {
        ServerFrame::Presence {
            user_id,
            status: PresenceStatus::Offline,
            last_seen: Some(_),
            last_seen_ms: Some(_),
            ..
        } => assert_eq!(user_id, "erin"),
        other => panic!("expected erin offline, got {other:?}"),
    }
    let took = closed.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(2),
        "offline pushed {took:?} after the close (grace {grace:?})"
    );
    assert_eq!(presence(&sys, "x").await, json!("offline"));
    // A reconnect within the grace period pushes nothing.
    let sock = sys.connect("erin", Encoding::Json).await;
    assert!(matches!(
        watcher.next_any().await,
        ServerFrame::Presence { online: true, .. }
    ));
    drop(sock);
    tokio::time::sleep(grace / 5).await;
    let _again = sys.connect("erin", Encoding::Json).await;
    watcher.assert_silent(grace * 2).await;
    sys.stop().await;
}

#[tokio::test]
async fn typing_reaches_the_other_members_and_is_rate_limited() {
    let sys = System::start().await;
    let mut alice = sys.connect("ty-alice", Encoding::Json).await;
    let mut bob = sys.connect("ty-bob", Encoding::Msgpack).await;
    let mut carol = sys.connect("ty-carol", Encoding::Json).await;
    let (status, chat) = sys
        .post(
            &sys.token("ty-alice"),
            "/v1/chats",
            json!({"members": ["ty-bob"]}),
        )
        .await;
    assert_eq!(status, 201, "{chat}");
    let chat_id: shared::Id = chat["chat_id"].as_str().unwrap().parse().unwrap();
    alice.send(&ClientFrame::Typing { chat_id }).await;
    assert_eq!(
        bob.next().await,
        ServerFrame::Typing {
            chat_id,
            user_id: "ty-alice".into()
        }
    );
    // Within the interval: an error frame, not a disconnect, and nothing reaches bob.
    alice.send(&ClientFrame::Typing { chat_id }).await;
    match alice.next().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::RateLimited),
        other => panic!("expected a rate_limited error, got {other:?}"),
    }
    // Carol is not a member: the API refuses and the gateway says so on her socket.
    carol.send(&ClientFrame::Typing { chat_id }).await;
    match carol.next().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("expected a forbidden error, got {other:?}"),
    }
    // The HTTP endpoint directly: bob types; alice sees it, the sender does not; a second call
    // within a second is 429 with Retry-After.
    let (status, body) = sys
        .post(
            &sys.token("ty-bob"),
            &format!("/v1/chats/{chat_id}/typing"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recipients_online"], json!(1));
    assert_eq!(
        alice.next().await,
        ServerFrame::Typing {
            chat_id,
            user_id: "ty-bob".into()
        }
    );
    let again = sys
        .http
        .post(format!("{}/v1/chats/{chat_id}/typing", sys.api))
        .bearer_auth(sys.token("ty-bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 429);
    assert!(again.headers().get("retry-after").is_some());
    bob.assert_quiet(Duration::from_millis(300)).await;
    carol.assert_quiet(Duration::from_millis(100)).await;
    sys.stop().await;
}

/// The next stdout line of a child, within 10 s.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("a line before the end")
}

/// `chat-api listen`, the walk-through's WebSocket client, run as the real binary: it prints
/// `hello` and then the message frame as JSON lines and exits once `--count` frames arrived; a bad
/// token or a `--timeout` that passes first make it fail with a message.
#[tokio::test]
async fn listen_subcommand_prints_frames_as_json_lines() {
    use tokio::io::AsyncBufReadExt;
    let sys = System::start().await;
    let listen = |token: String, count: &str, timeout: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-api"));
        cmd.args(["listen", "--url", &sys.ws, "--token", &token])
            .args(["--count", count, "--timeout", timeout])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let mut child = listen(sys.token("bob"), "2", "10s").spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let hello: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
    assert_eq!(
        (hello["type"].as_str(), hello["user_id"].as_str()),
        (Some("hello"), Some("bob"))
    );

    let alice = sys.token("alice");
    let (status, chat) = sys
        .post(&alice, "/v1/chats", json!({"members": ["bob"]}))
        .await;
    assert_eq!(status, 201, "{chat}");
    let path = format!("/v1/chats/{}/messages", chat["chat_id"].as_str().unwrap());
    let (status, sent) = sys
        .post(
            &alice,
            &path,
            json!({"client_msg_id": "m-1", "body": "12:30?"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let frame: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["message"], sent);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exits 0 after --count frames");

    // A refused token and a timeout are errors with words, not hangs.
    for (token, count, timeout, expected) in [
        ("not-a-token".to_string(), "1", "10s", "401"),
        (sys.token("bob"), "5", "300ms", "timed out"),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            listen(token, count, timeout).output(),
        )
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    sys.stop().await;
}

/// Embedded mode carries edits, deletes and removals like messages: both encodings get
/// `message_updated` and `message_deleted`; the changes endpoint pages them; a removed member
/// gets `chat_removed` and nothing after it.
#[tokio::test]
async fn edits_deletes_and_removal_reach_sockets_in_embedded_mode() {
    let sys = System::start().await;
    let mut bob_json = sys.connect("bob", Encoding::Json).await;
    let mut bob_mp = sys.connect("bob", Encoding::Msgpack).await;
    let mut carol = sys.connect("carol", Encoding::Json).await;
    let alice = sys.token("alice");
    let (status, chat) = sys
        .post(&alice, "/v1/chats", json!({"members": ["bob", "carol"]}))
        .await;
    assert_eq!(status, 201, "{chat}");
    let chat_id = chat["chat_id"].as_str().unwrap().to_string();
    let (status, sent) = sys
        .post(
            &alice,
            &format!("/v1/chats/{chat_id}/messages"),
            json!({"client_msg_id": "c-1", "body": "helo"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    for sock in [&mut bob_json, &mut bob_mp, &mut carol] {
        assert!(matches!(sock.next().await, ServerFrame::Message { .. }));
    }
    let message_path = format!(
        "{}/v1/chats/{chat_id}/messages/{}",
        sys.api,
        sent["message_id"].as_str().unwrap()
    );
    let r = sys
        .http
        .patch(&message_path)
        .bearer_auth(&alice)
        .json(&json!({"body": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let edited: Value = r.json().await.unwrap();
    assert_eq!(edited["body"], "hello");
    for sock in [&mut bob_json, &mut bob_mp, &mut carol] {
        match sock.next().await {
            ServerFrame::MessageUpdated { message } => {
                assert_eq!(message.body, "hello");
                assert!(message.edited_at.is_some());
            }
            other => panic!("expected message_updated, got {other:?}"),
        }
    }
    // alice removes carol: carol's socket is told, and gets nothing of the chat after it.
    let r = sys
        .http
        .delete(format!("{}/v1/chats/{chat_id}/members/carol", sys.api))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    match carol.next().await {
        ServerFrame::ChatRemoved { chat_id: removed } => {
            assert_eq!(removed.to_string(), chat_id)
        }
        other => panic!("expected chat_removed, got {other:?}"),
    }
    let r = sys
        .http
        .delete(&message_path)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    for sock in [&mut bob_json, &mut bob_mp] {
        match sock.next().await {
            ServerFrame::MessageDeleted { message_id, .. } => {
                assert_eq!(message_id.to_string(), sent["message_id"].as_str().unwrap())
            }
            other => panic!("expected message_deleted, got {other:?}"),
        }
    }
    carol.assert_quiet(Duration::from_millis(300)).await;
    // The changes page shows the tombstone, without its body.
    let page: Value = sys
        .http
        .get(format!("{}/v1/chats/{chat_id}/changes", sys.api))
        .bearer_auth(sys.token("bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["messages"][0]["deleted"], true);
    assert!(page["messages"][0].get("body").is_none(), "{page}");
    assert_eq!(page["has_more"], false);
    sys.stop().await;
}

/// The admin API in one process: the node listing counts the sockets, a disconnect closes the
/// user's sockets with 4104 and a revoke with 4205 (others untouched), and after the revoke the
/// old token is refused for connecting and HTTP while one issued after it works.
#[tokio::test]
async fn admin_disconnect_revoke_and_listing_in_one_process() {
    let sys = System::start().await;
    let admin = sys
        .signer
        .token("ops-console", Duration::from_secs(600), Some("admin"));
    let get = |token: String, path: &'static str| {
        let req = sys
            .http
            .get(format!("{}{path}", sys.api))
            .bearer_auth(token)
            .send();
        async move {
            let r = req.await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut victim = [
        sys.connect("victim", Encoding::Json).await,
        sys.connect("victim", Encoding::Msgpack).await,
    ];
    let mut bystander = sys.connect("bystander", Encoding::Json).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(admin.clone(), "/v1/admin/nodes").await;
        assert_eq!(status, 200, "{body}");
        if body["sockets"] == 3 {
            assert_eq!(body["nodes"][0]["node_id"], "embedded", "{body}");
            assert_eq!(body["nodes"][0]["users"], 2, "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = get(sys.token("victim"), "/v1/admin/nodes").await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = sys
        .post(&admin, "/v1/admin/users/victim/disconnect", Value::Null)
        .await;
    assert_eq!((status, &body["nodes"]), (202, &json!(1)), "{body}");
    for s in &mut victim {
        assert_eq!(s.close_code().await, Some(4104));
    }
    bystander.assert_quiet(Duration::from_millis(200)).await;

    let old_token = sys.token("victim");
    let mut socket = sys.connect("victim", Encoding::Json).await;
    let (status, body) = sys
        .post(&admin, "/v1/admin/users/victim/revoke", Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    let not_before = body["not_before"].as_u64().unwrap();
    assert_eq!(socket.close_code().await, Some(4205));
    bystander.assert_quiet(Duration::from_millis(200)).await;
    let url = format!("{}?access_token={old_token}", sys.ws);
    let refused = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    let (status, body) = get(old_token, "/v1/chats").await;
    assert_eq!(status, 401, "{body}");

    while shared::ids::now_unix_ms() / 1000 < not_before {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _socket = sys.connect("victim", Encoding::Msgpack).await;
    let (status, body) = get(sys.token("victim"), "/v1/chats").await;
    assert_eq!(status, 200, "{body}");
    drop(victim);
    drop(bystander);
    sys.stop().await;
}
