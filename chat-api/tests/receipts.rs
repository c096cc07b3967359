//! Router tests (`oneshot`) of read state against a real SQLite store and the in-process route
//! registry and node bus: read and delivered markers (forward only, clamped to the chat's last
//! message), their receipt frames (to whom, and none above the broadcast size), the receipts list,
//! unread counts in `GET /v1/chats` (capped, own messages excluded), bad input and non-members.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chat_api::api::receipts::{RECEIPTS_BROADCAST_MEMBERS_MAX, UNREAD_COUNT_MAX};
use chat_api::store::sqlite::SqliteStore;
use chat_api::store::MessageStore;
use chat_api::{app, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shared::auth::{Signer, DEV_SECRET};
use shared::protocol::{decode_server, Encoding, Message, ServerFrame};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::routing::{NodeBus, NodeInfo, RouteRegistry, Subscription};
use shared::{Id, IdGenerator};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    signer: Signer,
    store: Arc<SqliteStore>,
    registry: Arc<MemoryRegistry>,
    bus: Arc<MemoryBus>,
    ids: IdGenerator,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    fn problem(&self) -> (u16, String) {
        (
            self.status.as_u16(),
            self.body["type"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("https://chat.example/problems/")
                .to_string(),
        )
    }
}

fn setup() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    let registry = Arc::new(MemoryRegistry::new());
    let bus = Arc::new(MemoryBus::new(1024));
    // The tests send many requests as one user: no per-user rate limits here.
    let limits = Limits {
        rate_requests: None,
        rate_messages: None,
        ..Limits::default()
    };
    let state = AppState::new(
        store.clone(),
        registry.clone(),
        bus.clone(),
        shared::testkit::dev_key_verifier(Duration::from_secs(2)),
        Arc::new(IdGenerator::new(5)),
    )
    .with_limits(limits);
    TestApp {
        router: app(state),
        signer: Signer::hmac(jsonwebtoken::Algorithm::HS256, DEV_SECRET.as_bytes()),
        store,
        registry,
        bus,
        ids: IdGenerator::new(6),
        _dir: dir,
    }
}

impl TestApp {
    async fn call(&self, user: &str, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let token = self.signer.token(user, Duration::from_secs(600), None);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body }
    }

    async fn create_chat(&self, owner: &str, members: &[String]) -> Id {
        let r = self
            .call(
                owner,
                Method::POST,
                "/v1/chats",
                Some(json!({ "members": members })),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["chat_id"].as_str().unwrap().parse().unwrap()
    }

    /// Stores a message straight into the store (fast, no fan-out).
    async fn put(&self, chat: Id, sender: &str) -> Id {
        let id = self.ids.next_id();
        self.store
            .insert_message(&Message::new(
                chat,
                id,
                sender.into(),
                format!("c{id}"),
                "x".into(),
            ))
            .await
            .unwrap();
        id
    }

    async fn mark(&self, user: &str, kind: &str, chat: Id, id: &str) -> Reply {
        self.call(
            user,
            Method::POST,
            &format!("/v1/chats/{chat}/{kind}"),
            Some(json!({ "message_id": id })),
        )
        .await
    }

    async fn receipts(&self, user: &str, chat: Id) -> Value {
        let r = self
            .call(
                user,
                Method::GET,
                &format!("/v1/chats/{chat}/receipts"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    /// The caller's `GET /v1/chats` item for `chat`.
    async fn listed(&self, user: &str, chat: Id) -> Value {
        let r = self.call(user, Method::GET, "/v1/chats", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["chats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["chat_id"] == chat.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{chat} not listed: {}", r.body))
    }

    /// Registers `users` on a node of their own and subscribes to its stream.
    async fn node(&self, name: &str, users: &[&str]) -> Box<dyn Subscription> {
        let node = NodeInfo {
            node_id: name.into(),
            incarnation: 1,
        };
        self.registry.heartbeat(&node).await.unwrap();
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        self.registry.add_routes(&node, &users).await.unwrap();
        self.bus.subscribe(&node).await.unwrap()
    }
}

fn receipt_of<'a>(list: &'a Value, user: &str) -> &'a Value {
    list["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["user_id"] == user)
        .unwrap_or_else(|| panic!("{user} not in {list}"))
}

/// The frames that reach a node's stream within `wait` (empty when none).
async fn frames(
    sub: &mut Box<dyn Subscription>,
    wait: Duration,
) -> Vec<(Vec<String>, ServerFrame)> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    while let Ok(batch) = tokio::time::timeout_at(deadline, sub.next_batch(16)).await {
        for e in batch.unwrap() {
            out.push((
                e.recipients,
                decode_server(Encoding::Msgpack, &e.frame).unwrap(),
            ));
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

#[tokio::test]
async fn a_read_marker_moves_forward_only_and_never_past_the_last_message() {
    let t = setup();
    let chat = t.create_chat("alice", &["bob".into()]).await;
    // A chat without messages keeps no marker.
    assert_eq!(
        t.mark("alice", "read", chat, "5").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        receipt_of(&t.receipts("alice", chat).await, "alice")["read_up_to"],
        Value::Null
    );

    let m1 = t.put(chat, "bob").await;
    let m2 = t.put(chat, "bob").await;
    let m3 = t.put(chat, "bob").await;
    let item = t.listed("alice", chat).await;
    assert_eq!(item["read_up_to"], Value::Null);
    assert_eq!(
        (
            item["unread_count"].as_u64(),
            item["unread_capped"].as_bool()
        ),
        (Some(3), Some(false))
    );

    assert_eq!(
        t.mark("alice", "read", chat, &m2.to_string()).await.status,
        StatusCode::NO_CONTENT
    );
    let item = t.listed("alice", chat).await;
    assert_eq!(item["read_up_to"], m2.to_string());
    assert_eq!(item["unread_count"], 1);
    assert_eq!(
        item["last_message_id"],
        m3.to_string(),
        "the chat's own fields stay"
    );

    // A lower id is accepted and changes nothing.
    assert_eq!(
        t.mark("alice", "read", chat, &m1.to_string()).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.listed("alice", chat).await["read_up_to"], m2.to_string());

    // Beyond the last message: clamped to it ("mark everything read").
    let r = t.mark("alice", "read", chat, &u64::MAX.to_string()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let item = t.listed("alice", chat).await;
    assert_eq!(item["read_up_to"], m3.to_string());
    assert_eq!(
        (
            item["unread_count"].as_u64(),
            item["unread_capped"].as_bool()
        ),
        (Some(0), Some(false))
    );

    // Bob's view: his own messages are never unread to him; alice's marker is listed.
    let bob = t.listed("bob", chat).await;
    assert_eq!(
        (bob["read_up_to"].clone(), bob["unread_count"].as_u64()),
        (Value::Null, Some(0))
    );
    let list = t.receipts("bob", chat).await;
    assert_eq!(list["chat_id"], chat.to_string());
    assert_eq!(receipt_of(&list, "alice")["read_up_to"], m3.to_string());
    assert_eq!(
        receipt_of(&list, "alice")["delivered_up_to"],
        m3.to_string(),
        "what was read was delivered"
    );
    assert_eq!(receipt_of(&list, "bob")["read_up_to"], Value::Null);

    // The delivered marker is separate, and shown when ahead of the read marker.
    let m4 = t.put(chat, "bob").await;
    assert_eq!(
        t.mark("alice", "delivered", chat, &m4.to_string())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let list = t.receipts("alice", chat).await;
    assert_eq!(
        receipt_of(&list, "alice")["delivered_up_to"],
        m4.to_string()
    );
    assert_eq!(receipt_of(&list, "alice")["read_up_to"], m3.to_string());
}

#[tokio::test]
async fn unread_counts_are_capped_and_skip_own_messages() {
    let t = setup();
    let busy = t.create_chat("alice", &["bob".into()]).await;
    let quiet = t.create_chat("alice", &["bob".into()]).await;
    let mine = t.create_chat("alice", &["bob".into()]).await;
    for _ in 0..(UNREAD_COUNT_MAX + 20) {
        t.put(busy, "bob").await;
    }
    let a = t.put(quiet, "alice").await;
    t.put(quiet, "bob").await;
    t.put(quiet, "alice").await;
    t.put(mine, "alice").await;

    let item = t.listed("alice", busy).await;
    assert_eq!(item["unread_count"], UNREAD_COUNT_MAX);
    assert_eq!(item["unread_capped"], true);
    let item = t.listed("alice", quiet).await;
    assert_eq!(
        (
            item["unread_count"].as_u64(),
            item["unread_capped"].as_bool()
        ),
        (Some(1), Some(false))
    );
    let item = t.listed("alice", mine).await;
    assert_eq!(item["unread_count"], 0, "only others' messages are unread");

    t.mark("alice", "read", quiet, &a.to_string()).await;
    assert_eq!(t.listed("alice", quiet).await["unread_count"], 1);
    // Reading up to the last message leaves nothing unread (and costs no count).
    t.mark("alice", "read", busy, &u64::MAX.to_string()).await;
    let item = t.listed("alice", busy).await;
    assert_eq!(
        (
            item["unread_count"].as_u64(),
            item["unread_capped"].as_bool()
        ),
        (Some(0), Some(false))
    );
}

#[tokio::test]
async fn non_members_and_bad_ids_are_refused() {
    let t = setup();
    let chat = t.create_chat("alice", &["bob".into()]).await;
    let m = t.put(chat, "bob").await;
    for kind in ["read", "delivered"] {
        let r = t.mark("mallory", kind, chat, &m.to_string()).await;
        assert_eq!(
            r.problem(),
            (403, "not-a-member".into()),
            "{kind}: {}",
            r.body
        );
        // An unknown chat answers like one the caller is not in.
        let r = t.mark("alice", kind, Id(999_999), &m.to_string()).await;
        assert_eq!(r.problem(), (403, "not-a-member".into()), "{kind}");
        for bad in [
            json!({"message_id": "abc"}),
            json!({"message_id": "-1"}),
            json!({}),
            json!({"message_id": "18446744073709551616"}),
        ] {
            let r = t
                .call(
                    "alice",
                    Method::POST,
                    &format!("/v1/chats/{chat}/{kind}"),
                    Some(bad.clone()),
                )
                .await;
            assert_eq!(
                r.problem(),
                (400, "invalid-body".into()),
                "{kind} {bad}: {}",
                r.body
            );
        }
        let r = t
            .call(
                "alice",
                Method::POST,
                &format!("/v1/chats/not-an-id/{kind}"),
                Some(json!({"message_id": "1"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{kind}");
    }
    let r = t
        .call(
            "mallory",
            Method::GET,
            &format!("/v1/chats/{chat}/receipts"),
            None,
        )
        .await;
    assert_eq!(r.problem(), (403, "not-a-member".into()));
    // A removed member loses access, and is no longer listed.
    t.mark("bob", "read", chat, &m.to_string()).await;
    let r = t
        .call(
            "bob",
            Method::DELETE,
            &format!("/v1/chats/{chat}/members/bob"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        t.mark("bob", "read", chat, &m.to_string()).await.problem(),
        (403, "not-a-member".into())
    );
    let list = t.receipts("alice", chat).await;
    assert_eq!(list["receipts"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn receipts_reach_the_members_and_the_readers_other_devices() {
    let t = setup();
    let chat = t
        .create_chat("alice", &["bob".into(), "carol".into()])
        .await;
    let m = t.put(chat, "bob").await;
    let mut n1 = t.node("n1", &["alice"]).await;
    let mut n2 = t.node("n2", &["bob", "carol"]).await;

    assert_eq!(
        t.mark("alice", "read", chat, &m.to_string()).await.status,
        StatusCode::NO_CONTENT
    );
    let read = ServerFrame::Read {
        chat_id: chat,
        user_id: "alice".into(),
        message_id: m,
    };
    assert_eq!(
        frames(&mut n1, Duration::from_secs(2)).await,
        vec![(vec!["alice".to_string()], read.clone())]
    );
    assert_eq!(
        frames(&mut n2, Duration::from_secs(2)).await,
        vec![(vec!["bob".to_string(), "carol".into()], read)]
    );
    // Unchanged: no frame.
    t.mark("alice", "read", chat, &m.to_string()).await;
    assert!(frames(&mut n1, Duration::from_millis(300)).await.is_empty());
    assert!(frames(&mut n2, Duration::from_millis(300)).await.is_empty());

    // Delivered: the other members only.
    assert_eq!(
        t.mark("carol", "delivered", chat, &m.to_string())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let delivered = ServerFrame::Delivered {
        chat_id: chat,
        user_id: "carol".into(),
        message_id: m,
    };
    assert_eq!(
        frames(&mut n1, Duration::from_secs(2)).await,
        vec![(vec!["alice".to_string()], delivered.clone())]
    );
    assert_eq!(
        frames(&mut n2, Duration::from_secs(2)).await,
        vec![(vec!["bob".to_string()], delivered)]
    );
}

#[tokio::test]
async fn chats_above_the_broadcast_size_send_no_receipts_to_others() {
    let t = setup();
    let members: Vec<String> = (0..RECEIPTS_BROADCAST_MEMBERS_MAX)
        .map(|i| format!("m{i:03}"))
        .collect();
    assert_eq!(members.len() + 1, RECEIPTS_BROADCAST_MEMBERS_MAX + 1);
    let chat = t.create_chat("owner", &members).await;
    let m = t.put(chat, "m001").await;
    let mut own = t.node("n1", &["owner"]).await;
    let mut others = t.node("n2", &["m001", "m002"]).await;

    t.mark("owner", "read", chat, &m.to_string()).await;
    assert_eq!(
        frames(&mut own, Duration::from_secs(2)).await,
        vec![(
            vec!["owner".to_string()],
            ServerFrame::Read {
                chat_id: chat,
                user_id: "owner".into(),
                message_id: m
            }
        )],
        "the reader's own devices still sync"
    );
    t.mark("m002", "delivered", chat, &m.to_string()).await;
    assert!(
        frames(&mut others, Duration::from_millis(500))
            .await
            .is_empty(),
        "no receipts to others"
    );
    assert!(frames(&mut own, Duration::from_millis(300))
        .await
        .is_empty());
    // Still readable.
    let list = t.receipts("m001", chat).await;
    assert_eq!(receipt_of(&list, "owner")["read_up_to"], m.to_string());
    assert_eq!(receipt_of(&list, "m002")["delivered_up_to"], m.to_string());
}

#[tokio::test]
async fn a_database_from_before_read_state_opens_and_gains_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        drop(store);
        // The schema of the previous release: no read_state table.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE read_state").unwrap();
    }
    let store: Arc<dyn MessageStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let user = chat_api::store::conformance::unique_user("u");
    let chat = chat_api::store::conformance::new_chat(&store, std::slice::from_ref(&user)).await;
    assert!(store
        .advance_marker(chat.chat_id, &user, chat_api::store::Marker::Read, Id(7))
        .await
        .unwrap());
    assert_eq!(store.markers(chat.chat_id).await.unwrap().len(), 1);
}
