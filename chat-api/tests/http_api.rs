//! Router tests (`tower::ServiceExt::oneshot`) against a real SQLite store in a temp dir and the
//! in-process route registry and node bus: auth, membership, idempotency, pagination, bad input,
//! store outage, push and fan-out delivery. One test serves the app on a real socket with `run`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chat_api::store::sqlite::{SqliteOptions, SqliteStore};
use chat_api::store::{Cursor, MessageStore};
use chat_api::{app, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shared::auth::{Claims, JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::ids::now_unix_ms;
use shared::protocol::{decode_server, Encoding, ServerFrame};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::routing::{
    NodeBus, NodeGroups, NodeInfo, PresenceInfo, RouteRegistry, RoutingError, Subscription,
};
use shared::{Id, IdGenerator};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    signer: Signer,
    store: Arc<SqliteStore>,
    registry: Arc<MemoryRegistry>,
    bus: Arc<MemoryBus>,
    db_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn verifier() -> Verifier {
    Verifier::new(&JwtSettings {
        algorithm: shared::auth::parse_algorithm("HS256").unwrap(),
        key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(2),
    })
    .unwrap()
}

fn setup_with(limits: Limits, options: SqliteOptions) -> TestApp {
    setup_full(limits, options, None)
}

fn setup_full(
    limits: Limits,
    options: SqliteOptions,
    registry_override: Option<Arc<dyn RouteRegistry>>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("chat.db");
    let store = Arc::new(SqliteStore::open_with(&db_path, options).unwrap());
    let registry = Arc::new(MemoryRegistry::new());
    let bus = Arc::new(MemoryBus::new(1024));
    let state = AppState::new(
        store.clone(),
        registry_override.unwrap_or_else(|| registry.clone()),
        bus.clone(),
        verifier(),
        Arc::new(IdGenerator::new(7)),
    )
    .with_limits(limits);
    TestApp {
        router: app(state),
        signer: Signer::hmac(
            shared::auth::parse_algorithm("HS256").unwrap(),
            DEV_SECRET.as_bytes(),
        ),
        store,
        registry,
        bus,
        db_path,
        _dir: dir,
    }
}

fn setup() -> TestApp {
    setup_with(Limits::default(), SqliteOptions::default())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn problem_type(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{:?}",
            self.body
        );
        assert_eq!(self.body["status"], self.status.as_u16());
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        self.body["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("https://chat.example/problems/")
            .to_string()
    }
}

impl TestApp {
    fn user(&self, sub: &str) -> String {
        self.signer.token(sub, Duration::from_secs(600), None)
    }

    fn service(&self, sub: &str, scope: &str) -> String {
        self.signer
            .token(sub, Duration::from_secs(600), Some(scope))
    }

    async fn raw(&self, req: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&b).unwrap())),
            None => req.body(Body::empty()),
        };
        self.raw(req.unwrap()).await
    }

    async fn create_chat(&self, owner: &str, members: &[&str]) -> Id {
        let r = self
            .call(
                Method::POST,
                "/v1/chats",
                Some(&self.user(owner)),
                Some(json!({"members": members, "title": "t"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["chat_id"].as_str().unwrap().parse().unwrap()
    }

    async fn send(&self, user: &str, chat: Id, cmid: &str, body: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/chats/{chat}/messages"),
            Some(&self.user(user)),
            Some(json!({"client_msg_id": cmid, "body": body})),
        )
        .await
    }

    async fn stored(&self, chat: Id) -> usize {
        self.store
            .history(chat, Cursor::Latest, 10_000)
            .await
            .unwrap()
            .len()
    }
}

#[tokio::test]
async fn bad_tokens_get_401_problems() {
    let t = setup();
    let now = now_unix_ms() / 1000;
    let expired = t.signer.sign(&Claims {
        sub: "alice".into(),
        exp: now - 600,
        iat: None,
        nbf: None,
        iss: None,
        aud: None,
        scope: None,
    });
    let forged = Signer::hmac(
        shared::auth::parse_algorithm("HS256").unwrap(),
        b"some-other-secret-of-at-least-32-bytes!!",
    )
    .token("alice", Duration::from_secs(600), None);
    let alg_none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now + 600).as_bytes())
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not bearer", Some("Basic YWxpY2U6eA==".into())),
        ("garbage", Some("Bearer not.a.jwt".into())),
        ("expired", Some(format!("Bearer {expired}"))),
        ("wrong signature", Some(format!("Bearer {forged}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
    ];
    for (name, auth) in cases {
        for (method, uri) in [(Method::GET, "/v1/chats"), (Method::POST, "/v1/push")] {
            let mut req = Request::builder().method(method.clone()).uri(uri);
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let r = t.raw(req.body(Body::empty()).unwrap()).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name} {method} {uri}");
            assert_eq!(r.problem_type(), "unauthorized", "{name}");
            assert!(r.headers[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
    }
    let r = t
        .call(Method::GET, "/v1/chats", Some(&t.user("alice")), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn non_members_and_unknown_chats_get_the_same_403() {
    let t = setup();
    let chat = t.create_chat("alice", &["bob"]).await;
    let carol = t.user("carol");
    let unknown = Id(chat.0 + 12345);
    for id in [chat, unknown] {
        let reqs = [
            (Method::GET, format!("/v1/chats/{id}"), None),
            (Method::GET, format!("/v1/chats/{id}/messages"), None),
            (
                Method::POST,
                format!("/v1/chats/{id}/messages"),
                Some(json!({"client_msg_id": "x", "body": "hi"})),
            ),
            (
                Method::POST,
                format!("/v1/chats/{id}/members"),
                Some(json!({"user_ids": ["carol"]})),
            ),
            (Method::DELETE, format!("/v1/chats/{id}/members/bob"), None),
        ];
        for (method, uri, body) in reqs {
            let r = t.call(method.clone(), &uri, Some(&carol), body).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {uri}");
            assert_eq!(r.problem_type(), "not-a-member");
        }
    }
    assert_eq!(t.stored(chat).await, 0);
    assert!(!t.store.is_member(chat, "carol").await.unwrap());
    assert!(t.store.is_member(chat, "bob").await.unwrap());
    // A malformed id is a client bug, not a membership question.
    let r = t
        .call(Method::GET, "/v1/chats/abc", Some(&carol), None)
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::BAD_REQUEST, "invalid-path")
    );
}

#[tokio::test]
async fn token_kinds_are_kept_to_their_endpoints() {
    let t = setup();
    let push = json!({"user_ids": ["alice"], "event": {"k": 1}});
    let r = t
        .call(
            Method::POST,
            "/v1/push",
            Some(&t.user("alice")),
            Some(push.clone()),
        )
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = t
        .call(
            Method::POST,
            "/v1/push",
            Some(&t.service("billing", "metrics")),
            Some(push.clone()),
        )
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let svc = t.service("billing", "push");
    let r = t
        .call(Method::POST, "/v1/push", Some(&svc), Some(push))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for (method, uri) in [(Method::GET, "/v1/chats"), (Method::POST, "/v1/chats")] {
        let r = t
            .call(method, uri, Some(&svc), Some(json!({"members": []})))
            .await;
        assert_eq!(
            (r.status, r.problem_type().as_str()),
            (StatusCode::FORBIDDEN, "forbidden")
        );
    }
    let r = t
        .call(Method::GET, "/v1/presence?user_ids=alice", Some(&svc), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn chats_and_members() {
    let t = setup();
    let alice = t.user("alice");
    let chat = t.create_chat("alice", &["bob", "bob", "alice"]).await;
    let r = t
        .call(
            Method::GET,
            &format!("/v1/chats/{chat}"),
            Some(&t.user("bob")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["members"], json!(["alice", "bob"]));
    assert_eq!(r.body["chat_id"], json!(chat.to_string()));
    assert_eq!(r.body["last_message_id"], Value::Null);

    let m = t.send("bob", chat, "c1", "hello").await;
    let r = t.call(Method::GET, "/v1/chats", Some(&alice), None).await;
    assert_eq!(r.body["chats"][0]["last_message_id"], m.body["message_id"]);

    let r = t
        .call(
            Method::POST,
            &format!("/v1/chats/{chat}/members"),
            Some(&t.user("bob")),
            Some(json!({"user_ids": ["carol", "dave"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["members"], json!(["alice", "bob", "carol", "dave"]));
    // Only the owner (the creator) or an admin removes others; anyone may leave.
    let r = t
        .call(
            Method::DELETE,
            &format!("/v1/chats/{chat}/members/dave"),
            Some(&t.user("bob")),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = t
        .call(
            Method::DELETE,
            &format!("/v1/chats/{chat}/members/dave"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = t
        .call(
            Method::DELETE,
            &format!("/v1/chats/{chat}/members/carol"),
            Some(&t.user("carol")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(t.store.members(chat).await.unwrap(), vec!["alice", "bob"]);

    // Validation: bad user ids, too many members, empty title.
    for body in [
        json!({"members": ["bad id"]}),
        json!({"members": [], "title": ""}),
        json!({"members": (0..1000).map(|i| format!("u{i}")).collect::<Vec<_>>()}),
    ] {
        let r = t
            .call(Method::POST, "/v1/chats", Some(&alice), Some(body))
            .await;
        assert_eq!(
            (r.status, r.problem_type().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed")
        );
    }
    let limited = setup_with(
        Limits {
            members_per_chat_max: 3,
            ..Limits::default()
        },
        SqliteOptions::default(),
    );
    let small = limited.create_chat("alice", &["bob", "carol"]).await;
    let r = limited
        .call(
            Method::POST,
            &format!("/v1/chats/{small}/members"),
            Some(&limited.user("alice")),
            Some(json!({"user_ids": ["dave"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["field"], "user_ids");
    assert_eq!(limited.store.members(small).await.unwrap().len(), 3);
}

#[tokio::test]
async fn sequential_retry_replays_the_original() {
    let t = setup();
    let chat = t.create_chat("alice", &[]).await;
    let first = t.send("alice", chat, "m-1", "hello").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_eq!(first.body["sender_id"], "alice");
    assert_eq!(first.body["body"], "hello");
    let retry = t.send("alice", chat, "m-1", "hello").await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body, first.body);
    assert_eq!(t.stored(chat).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_store_one_message() {
    let t = Arc::new(setup());
    let chat = t.create_chat("alice", &[]).await;
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.send("alice", chat, "same", "once").await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    assert!(replies.iter().all(|r| r.status == StatusCode::CREATED));
    assert!(replies.iter().all(|r| r.body == replies[0].body));
    let fresh = replies
        .iter()
        .filter(|r| r.headers.get("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1, "exactly one answer is the original insert");
    assert_eq!(t.stored(chat).await, 1);
}

#[tokio::test]
async fn history_pages_over_http() {
    let t = setup_with(
        Limits {
            page_size_max: 40,
            // 95 sends by two users, faster than the default per-user message rate.
            rate_messages: None,
            ..Limits::default()
        },
        SqliteOptions::default(),
    );
    let chat = t.create_chat("alice", &["bob"]).await;
    let mut sent = Vec::new();
    for i in 0..95 {
        let r = t
            .send(
                if i % 2 == 0 { "alice" } else { "bob" },
                chat,
                &format!("c{i}"),
                &format!("{i}"),
            )
            .await;
        sent.push(r.body["message_id"].as_str().unwrap().to_string());
    }
    let bob = t.user("bob");
    let ids = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap().to_string())
            .collect()
    };

    // Default page: the newest 50, capped to the configured max of 40 when asked for more.
    let r = t
        .call(
            Method::GET,
            &format!("/v1/chats/{chat}/messages"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(ids(&r.body), sent[45..].to_vec());
    assert_eq!(r.body["has_more"], true);
    let r = t
        .call(
            Method::GET,
            &format!("/v1/chats/{chat}/messages?limit=1000"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(ids(&r.body).len(), 40);

    // Backwards with `before`.
    let mut back: Vec<String> = Vec::new();
    let mut uri = format!("/v1/chats/{chat}/messages?limit=30");
    let mut flags = Vec::new();
    loop {
        let r = t.call(Method::GET, &uri, Some(&bob), None).await;
        assert_eq!(r.status, StatusCode::OK);
        let page = ids(&r.body);
        flags.push(r.body["has_more"].as_bool().unwrap());
        assert_eq!(r.body["next_after"], Value::Null);
        if r.body["has_more"] == true {
            // The next cursor is named: the oldest id of this page, to pass as `before`.
            assert_eq!(r.body["next_before"], page[0].as_str());
        } else {
            assert_eq!(r.body["next_before"], Value::Null);
        }
        if page.is_empty() {
            break;
        }
        uri = format!("/v1/chats/{chat}/messages?limit=30&before={}", page[0]);
        let mut page = page;
        page.extend(back);
        back = page;
    }
    assert_eq!(back, sent);
    assert_eq!(flags, vec![true, true, true, false, false]);

    // Forwards with `after`.
    let mut fwd: Vec<String> = Vec::new();
    let mut uri = format!("/v1/chats/{chat}/messages?limit=30&after=0");
    loop {
        let r = t.call(Method::GET, &uri, Some(&bob), None).await;
        let page = ids(&r.body);
        let Some(last) = page.last().cloned() else {
            break;
        };
        assert_eq!(r.body["has_more"], fwd.len() + page.len() < sent.len());
        assert_eq!(r.body["next_before"], Value::Null);
        if r.body["has_more"] == true {
            assert_eq!(r.body["next_after"], last.as_str());
        } else {
            assert_eq!(r.body["next_after"], Value::Null);
        }
        fwd.extend(page);
        uri = format!("/v1/chats/{chat}/messages?limit=30&after={last}");
    }
    assert_eq!(fwd, sent);

    // Following only the returned cursors reaches every message, both ways.
    let mut walked: Vec<String> = Vec::new();
    let mut uri = format!("/v1/chats/{chat}/messages?limit=30");
    for _ in 0..10 {
        let r = t.call(Method::GET, &uri, Some(&bob), None).await;
        let mut page = ids(&r.body);
        page.extend(walked);
        walked = page;
        let Some(next) = r.body["next_before"].as_str() else {
            break;
        };
        uri = format!("/v1/chats/{chat}/messages?limit=30&before={next}");
    }
    assert_eq!(walked, sent);
    let mut walked: Vec<String> = Vec::new();
    let mut uri = format!("/v1/chats/{chat}/messages?limit=30&after=0");
    for _ in 0..10 {
        let r = t.call(Method::GET, &uri, Some(&bob), None).await;
        walked.extend(ids(&r.body));
        let Some(next) = r.body["next_after"].as_str() else {
            break;
        };
        uri = format!("/v1/chats/{chat}/messages?limit=30&after={next}");
    }
    assert_eq!(walked, sent);

    for bad in ["before=1&after=2", "limit=0", "before=abc", "limit=-1"] {
        let r = t
            .call(
                Method::GET,
                &format!("/v1/chats/{chat}/messages?{bad}"),
                Some(&bob),
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.problem_type().as_str()),
            (StatusCode::BAD_REQUEST, "invalid-query"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_problems_and_stores_nothing() {
    let t = setup();
    let chat = t.create_chat("alice", &[]).await;
    let alice = t.user("alice");
    let uri = format!("/v1/chats/{chat}/messages");
    let post = |content_type: &str, body: Vec<u8>| {
        Request::builder()
            .method(Method::POST)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {alice}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let big = format!(
        r#"{{"client_msg_id":"x","body":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    let cases = [
        (
            post("application/json", b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            post("application/json", br#"{"client_msg_id":"x"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            post(
                "application/json",
                br#"{"client_msg_id":1,"body":"x"}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            post(
                "text/plain",
                br#"{"client_msg_id":"x","body":"x"}"#.to_vec(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            post("application/json", big.into_bytes()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        ),
    ];
    for (req, status, kind) in cases {
        let r = t.raw(req).await;
        assert_eq!(
            (r.status, r.problem_type().as_str()),
            (status, kind),
            "{:?}",
            r.body
        );
    }
    let fields = [
        (
            json!({"client_msg_id": "x", "body": "é".repeat(2049)}),
            "body",
        ),
        (json!({"client_msg_id": "x", "body": ""}), "body"),
        (json!({"client_msg_id": "", "body": "x"}), "client_msg_id"),
        (
            json!({"client_msg_id": "x".repeat(65), "body": "x"}),
            "client_msg_id",
        ),
        (
            json!({"client_msg_id": "a\nb", "body": "x"}),
            "client_msg_id",
        ),
    ];
    for (body, field) in fields {
        let r = t.call(Method::POST, &uri, Some(&alice), Some(body)).await;
        assert_eq!(
            (r.status, r.problem_type().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed")
        );
        assert_eq!(r.body["field"], field);
    }
    assert_eq!(t.stored(chat).await, 0);
    // The limits are exact: 4096 bytes and 64 characters pass.
    let r = t
        .call(
            Method::POST,
            &uri,
            Some(&alice),
            Some(json!({"client_msg_id": "é".repeat(64), "body": "é".repeat(2048)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let r = t
        .call(Method::GET, "/v1/nothing-here", Some(&alice), None)
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::NOT_FOUND, "not-found")
    );
    let r = t.call(Method::PUT, "/v1/chats", Some(&alice), None).await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_is_503_with_retry_after_and_nothing_stored() {
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
        ..SqliteOptions::default()
    };
    let limits = Limits {
        retry_after: Duration::from_secs(3),
        ..Limits::default()
    };
    let t = setup_with(limits, options);
    let chat = t.create_chat("alice", &[]).await;

    // Another process holding the write lock past the busy timeout.
    let blocker = rusqlite::Connection::open(&t.db_path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = t.send("alice", chat, "m1", "hello").await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable")
    );
    assert_eq!(r.headers[header::RETRY_AFTER], "3");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        !detail.contains("lock") && !detail.contains("SQL"),
        "cause leaked: {detail}"
    );
    let r = t
        .call(
            Method::POST,
            "/v1/chats",
            Some(&t.user("alice")),
            Some(json!({"members": []})),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    blocker.execute_batch("ROLLBACK").unwrap();

    assert_eq!(
        t.stored(chat).await,
        0,
        "nothing acknowledged, nothing stored"
    );
    let r = t.send("alice", chat, "m1", "hello").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.headers.get("idempotent-replayed").is_none());
}

async fn next_frames(sub: &mut Box<dyn Subscription>) -> Vec<(Vec<String>, ServerFrame)> {
    let batch = tokio::time::timeout(Duration::from_secs(2), sub.next_batch(16))
        .await
        .expect("no delivery")
        .unwrap();
    batch
        .into_iter()
        .map(|e| {
            (
                e.recipients,
                decode_server(Encoding::Msgpack, &e.frame).unwrap(),
            )
        })
        .collect()
}

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        incarnation: 1,
    }
}

#[tokio::test]
async fn push_reaches_the_nodes_of_online_recipients() {
    let t = setup();
    let (n1, n2) = (node("n1"), node("n2"));
    for (n, users) in [
        (&n1, vec!["alice".to_string(), "bob".into()]),
        (&n2, vec!["carol".into()]),
    ] {
        t.registry.heartbeat(n).await.unwrap();
        t.registry.add_routes(n, &users).await.unwrap();
    }
    let mut s1 = t.bus.subscribe(&n1).await.unwrap();
    let mut s2 = t.bus.subscribe(&n2).await.unwrap();
    let event = json!({"kind": "invoice", "amount": 12});
    let r = t
        .call(
            Method::POST,
            "/v1/push",
            Some(&t.service("billing", "push")),
            Some(json!({"user_ids": ["alice", "bob", "carol", "dave", "alice"], "event": event})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["recipients_online"], 3);
    let expected = ServerFrame::Event { event };
    assert_eq!(
        next_frames(&mut s1).await,
        vec![(vec!["alice".to_string(), "bob".into()], expected.clone())]
    );
    assert_eq!(
        next_frames(&mut s2).await,
        vec![(vec!["carol".to_string()], expected)]
    );

    let r = t
        .call(
            Method::POST,
            "/v1/push",
            Some(&t.service("billing", "push")),
            Some(json!({"user_ids": [], "event": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // A service reads everyone.
    let r = t
        .call(
            Method::GET,
            "/v1/presence?user_ids=alice,dave",
            Some(&t.service("status-page", "presence")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["presence"][0],
        json!({"user_id": "alice", "status": "online", "online": true, "last_seen_ms": null})
    );
    assert_eq!(r.body["presence"][1]["status"], "offline");
    let many = (0..101)
        .map(|i| format!("u{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let r = t
        .call(
            Method::GET,
            &format!("/v1/presence?user_ids={many}"),
            Some(&t.user("zed")),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::BAD_REQUEST, "invalid-query")
    );
}

/// Presence is shared only between co-members: a user reads themselves and users sharing a chat
/// (of at most `API_PRESENCE_MAX_CHAT_MEMBERS` members) with them; anyone else reads as
/// `unknown`, exactly like a user who does not exist.
#[tokio::test]
async fn presence_is_readable_only_by_co_members() {
    let t = setup_with(
        Limits {
            presence: chat_api::presence::PresenceLimits {
                max_chat_members: 3,
                ..Default::default()
            },
            ..Limits::default()
        },
        SqliteOptions::default(),
    );
    let n = node("n1");
    t.registry.heartbeat(&n).await.unwrap();
    t.registry
        .add_routes(&n, &["alice".to_string(), "bob".into(), "zed".into()])
        .await
        .unwrap();
    t.registry
        .remove_routes(&n, &["zed".to_string()])
        .await
        .unwrap();
    let created = t
        .call(
            Method::POST,
            "/v1/chats",
            Some(&t.user("alice")),
            Some(json!({"members": ["bob"]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    // A big chat (4 members > 3) shares no presence.
    let big = t
        .call(
            Method::POST,
            "/v1/chats",
            Some(&t.user("alice")),
            Some(json!({"members": ["carol", "dan", "zed"]})),
        )
        .await;
    assert_eq!(big.status, StatusCode::CREATED, "{:?}", big.body);
    let read = |who: &'static str| {
        let t = &t;
        async move {
            let r = t
                .call(
                    Method::GET,
                    "/v1/presence?user_ids=alice,bob,zed,ghost",
                    Some(&t.user(who)),
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            r.body["presence"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["status"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // Bob shares the small chat with Alice, and reads himself.
    assert_eq!(
        read("bob").await,
        ["online", "online", "unknown", "unknown"]
    );
    // Alice shares only the big chat with Zed: his state (offline) stays unknown to her.
    assert_eq!(
        read("alice").await,
        ["online", "online", "unknown", "unknown"]
    );
    // A stranger reads nobody; an unknown user reads the same as a real one.
    let r = t
        .call(
            Method::GET,
            "/v1/presence?user_ids=alice,ghost",
            Some(&t.user("mallory")),
            None,
        )
        .await;
    assert_eq!(
        r.body["presence"],
        json!([
            {"user_id": "alice", "status": "unknown", "online": false, "last_seen_ms": null},
            {"user_id": "ghost", "status": "unknown", "online": false, "last_seen_ms": null},
        ])
    );
    // Zed reads himself as offline with a last-seen time, and Alice's state stays hidden.
    let r = t
        .call(
            Method::GET,
            "/v1/presence?user_ids=zed,alice",
            Some(&t.user("zed")),
            None,
        )
        .await;
    assert_eq!(r.body["presence"][0]["status"], "offline");
    assert!(r.body["presence"][0]["last_seen_ms"].is_u64());
    assert_eq!(r.body["presence"][1]["status"], "unknown");
    // A small chat with Zed makes them co-members.
    let r = t
        .call(
            Method::POST,
            "/v1/chats",
            Some(&t.user("zed")),
            Some(json!({"members": ["alice"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        read("alice").await,
        ["online", "online", "offline", "unknown"]
    );
}

#[tokio::test]
async fn a_sent_message_is_fanned_out_to_online_members() {
    let t = setup();
    let n1 = node("n1");
    t.registry.heartbeat(&n1).await.unwrap();
    t.registry
        .add_routes(&n1, &["alice".to_string(), "bob".into(), "eve".into()])
        .await
        .unwrap();
    let mut s1 = t.bus.subscribe(&n1).await.unwrap();
    let chat = t.create_chat("alice", &["bob", "carol"]).await;
    let r = t.send("bob", chat, "c1", "hi all").await;
    let frames = next_frames(&mut s1).await;
    assert_eq!(frames.len(), 1);
    let (recipients, frame) = &frames[0];
    assert_eq!(
        recipients,
        &vec!["alice".to_string(), "bob".into()],
        "eve is not a member"
    );
    let ServerFrame::Message { message } = frame else {
        panic!("{frame:?}")
    };
    assert_eq!(serde_json::to_value(message).unwrap(), r.body);
    // A replay is delivered again: the first attempt may have died before its fan-out.
    let replay = t.send("bob", chat, "c1", "hi all").await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let again = next_frames(&mut s1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, vec!["alice".to_string(), "bob".into()]);
    let ServerFrame::Message { message } = &again[0].1 else {
        panic!("{:?}", again[0].1)
    };
    assert_eq!(serde_json::to_value(message).unwrap(), r.body);
}

/// A fault injector: a route registry whose backend is always down.
struct DownRegistry;

#[async_trait]
impl RouteRegistry for DownRegistry {
    async fn heartbeat(&self, _: &NodeInfo) -> Result<bool, RoutingError> {
        Err(RoutingError::Unavailable("injected".into()))
    }
    async fn leave(&self, _: &NodeInfo) -> Result<(), RoutingError> {
        Err(RoutingError::Unavailable("injected".into()))
    }
    async fn add_routes(&self, _: &NodeInfo, _: &[String]) -> Result<(), RoutingError> {
        Err(RoutingError::Unavailable("injected".into()))
    }
    async fn remove_routes(&self, _: &NodeInfo, _: &[String]) -> Result<(), RoutingError> {
        Err(RoutingError::Unavailable("injected".into()))
    }
    async fn lookup(&self, _: &[String]) -> Result<NodeGroups, RoutingError> {
        Err(RoutingError::Unavailable("injected".into()))
    }
    async fn presence(&self, _: &[String]) -> Result<Vec<PresenceInfo>, RoutingError> {
        Err(RoutingError::Unavailable("injected".into()))
    }
    async fn live_nodes(&self) -> Result<Vec<String>, RoutingError> {
        Err(RoutingError::Unavailable("injected".into()))
    }
    async fn swap_announced(
        &self,
        _: &[(String, bool)],
    ) -> Result<Vec<Option<bool>>, RoutingError> {
        Err(RoutingError::Timeout)
    }
}

#[tokio::test]
async fn routing_outage_fails_push_but_not_a_stored_send() {
    let t = setup_full(
        Limits::default(),
        SqliteOptions::default(),
        Some(Arc::new(DownRegistry)),
    );
    let chat = t.create_chat("alice", &["bob"]).await;
    let r = t.send("alice", chat, "c1", "durable").await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "the message is stored; real time is best effort"
    );
    assert_eq!(t.stored(chat).await, 1);
    let r = t
        .call(
            Method::POST,
            "/v1/push",
            Some(&t.service("s", "push")),
            Some(json!({"user_ids": ["bob"], "event": 1})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable")
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    let r = t
        .call(
            Method::GET,
            "/v1/presence?user_ids=bob",
            Some(&t.user("alice")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn every_route_answers_and_operations_endpoints_work() {
    let t = setup();
    let alice = t.user("alice");
    for (method, path) in chat_api::routes() {
        let uri = path.replace("{chat_id}", "1").replace("{user_id}", "bob");
        let r = t.call(method.clone(), &uri, Some(&alice), None).await;
        let kind = r.body["type"].as_str().unwrap_or_default();
        assert!(
            !kind.ends_with("/not-found") || path == "/metrics",
            "{method} {path} is not routed"
        );
        assert!(
            !kind.ends_with("/method-not-allowed"),
            "{method} {path} is not routed"
        );
    }
    let r = t.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::NOT_FOUND, "not-found")
    );
    let r = t.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"], "3.1.0");
    assert!(r.body["paths"]["/v1/chats/{chat_id}/messages"]["post"].is_object());
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// A concrete request path for a path template.
fn concrete(template: &str) -> String {
    template
        .replace("{chat_id}", "1")
        .replace("{message_id}", "2")
        .replace("{user_id}", "bob")
}

/// The served OpenAPI document.
async fn document_of(t: &TestApp) -> Value {
    let r = t.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    r.body
}

/// The served document and the router agree both ways: every documented (method, path) is
/// routed (the test above), every other method on a documented path is not (405), and every path
/// the route list gives the router is documented.
#[tokio::test]
async fn the_document_lists_exactly_the_routes_served() {
    let t = setup();
    let alice = t.user("alice");
    let doc = document_of(&t).await;
    let documented: Vec<(Method, String)> = chat_api::routes();
    assert!(documented.len() >= 20, "{documented:?}");
    let paths: std::collections::BTreeSet<&str> =
        documented.iter().map(|(_, p)| p.as_str()).collect();
    for path in &paths {
        let item = &doc["paths"][*path];
        assert!(item.is_object(), "{path} missing from the served document");
        for method in METHODS {
            let listed = documented.iter().any(|(m, p)| *m == method && p == path);
            assert_eq!(
                item.get(method.as_str().to_lowercase()).is_some(),
                listed,
                "{method} {path}: the served document and the route list differ"
            );
            let r = t
                .call(method.clone(), &concrete(path), Some(&alice), None)
                .await;
            let kind = r.body["type"].as_str().unwrap_or_default();
            let unrouted = kind.ends_with("/method-not-allowed");
            assert_eq!(unrouted, !listed, "{method} {path}: answered {}", r.status);
        }
    }
    // The router's own table (its debug form names each path it routes): nothing beyond the
    // document but the pages of `web`, which are not part of the API.
    let (router, _) = chat_api::app::route_list().split_for_parts();
    let table = format!("{router:?}");
    let routed: std::collections::BTreeSet<String> = table
        .split('"')
        // axum's own entries for the fallback ("/" and a private catch-all) are not routes.
        .filter(|s| s.starts_with('/') && *s != "/" && !s.contains("__private__axum"))
        .map(str::to_string)
        .collect();
    assert!(!routed.is_empty(), "no path found in {table}");
    let routed: std::collections::BTreeSet<&str> = routed.iter().map(String::as_str).collect();
    assert_eq!(
        routed, paths,
        "paths routed but not documented, or the reverse"
    );
}

/// Every request body and every success answer with a body has a schema in the components;
/// every error answer is problem+json; the cursors are described.
#[tokio::test]
async fn the_document_has_schemas_for_bodies_and_errors() {
    let t = setup();
    let doc = document_of(&t).await;
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let resolves = |schema: &Value, what: &str| {
        let reference = schema["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no $ref in {schema}"));
        let name = reference.trim_start_matches("#/components/schemas/");
        assert!(
            schemas.contains_key(name),
            "{what}: {reference} is not a component"
        );
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            if let Some(body) = op.get("requestBody") {
                resolves(&body["content"]["application/json"]["schema"], &what);
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{what}: no responses");
            let public = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            for status in ["401", "500", "503"] {
                assert!(
                    public || responses.contains_key(status),
                    "{what}: no {status}"
                );
            }
            for (status, response) in responses {
                let what = format!("{what} {status}");
                if status.starts_with('4') || status.starts_with('5') {
                    resolves(
                        &response["content"]["application/problem+json"]["schema"],
                        &what,
                    );
                } else if let Some(json) = response["content"].get("application/json") {
                    if path != "/v1/openapi.json" {
                        resolves(&json["schema"], &what);
                    }
                }
            }
        }
    }
    for name in [
        "Problem",
        "Message",
        "Id",
        "SendMessage",
        "HistoryPage",
        "ChangesPageView",
        "ChatList",
        "ChatView",
        "CreateChat",
        "NodeList",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    let problem = &schemas["Problem"]["properties"];
    assert!(
        problem["type"].is_object() && problem["detail"].is_object(),
        "{problem}"
    );
    let history = &doc["paths"]["/v1/chats/{chat_id}/messages"]["get"]["parameters"];
    for cursor in ["before", "after", "limit"] {
        let p = history
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == cursor)
            .unwrap_or_else(|| panic!("no {cursor} in {history}"));
        assert_eq!(p["in"], "query");
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{p}"
        );
    }
}

/// The limits in the served document are the configured ones, not the defaults.
#[tokio::test]
async fn the_document_states_the_configured_limits() {
    let defaults = setup();
    let doc = document_of(&defaults).await;
    let body = &doc["components"]["schemas"]["SendMessage"]["properties"]["body"];
    assert_eq!(
        body["x-max-bytes"],
        Limits::default().message_body_bytes_max,
        "{body}"
    );

    let limits = Limits {
        message_body_bytes_max: 8192,
        client_msg_id_chars_max: 100,
        members_per_chat_max: 7,
        page_size_default: 20,
        page_size_max: 300,
        push_users_max: 9,
        title_chars_max: 33,
        ..Limits::default()
    };
    let t = setup_with(limits, SqliteOptions::default());
    let doc = document_of(&t).await;
    let schemas = &doc["components"]["schemas"];
    for schema in ["SendMessage", "EditMessage"] {
        let body = &schemas[schema]["properties"]["body"];
        assert_eq!(body["x-max-bytes"], 8192, "{schema}: {body}");
        assert!(
            body["description"].as_str().unwrap().contains("8192"),
            "{body}"
        );
    }
    assert_eq!(
        schemas["SendMessage"]["properties"]["client_msg_id"]["maxLength"],
        100
    );
    assert_eq!(
        schemas["CreateChat"]["properties"]["members"]["maxItems"],
        7
    );
    assert_eq!(
        schemas["CreateChat"]["properties"]["title"]["maxLength"],
        33
    );
    assert_eq!(
        schemas["AddMembers"]["properties"]["user_ids"]["maxItems"],
        7
    );
    assert_eq!(
        schemas["PushRequest"]["properties"]["user_ids"]["maxItems"],
        9
    );
    for path in [
        "/v1/chats/{chat_id}/messages",
        "/v1/chats/{chat_id}/changes",
    ] {
        let limit = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["default"], 20, "{path}: {limit}");
        assert!(
            limit["description"].as_str().unwrap().contains("300"),
            "{path}: {limit}"
        );
    }
    let text = serde_json::to_string(&doc).unwrap();
    assert!(!text.contains("4096"), "a default limit is still stated");
}

/// `run` on a real socket: serves, turns `/readyz` away and stops once shutdown is signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_on_a_socket_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    let state = AppState::new(
        store,
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::default()),
        verifier(),
        Arc::new(IdGenerator::new(1)),
    )
    .with_limits(Limits {
        shutdown_grace: Duration::from_secs(2),
        ..Limits::default()
    });
    let draining = state.draining.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chat_api::run(listener, state, async move {
        let _ = stop_rx.await;
    }));

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("run did not stop")
        .unwrap()
        .unwrap();
    assert!(draining.load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn chat_list_pages_by_chat_id_with_a_cursor() {
    let t = setup();
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(t.create_chat("pager", &["bob"]).await);
    }
    // Activity in the oldest chat puts it first inside its page, never on another page.
    assert_eq!(
        t.send("bob", created[0], "m1", "hi").await.status,
        StatusCode::CREATED
    );
    let pager = t.user("pager");
    let mut seen = Vec::new();
    let mut uri = "/v1/chats?limit=2".to_string();
    for _ in 0..5 {
        let r = t.call(Method::GET, &uri, Some(&pager), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let page: Vec<Id> = r.body["chats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["chat_id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(page.len() <= 2);
        seen.extend(page.iter().copied());
        if !r.body["has_more"].as_bool().unwrap() {
            assert!(r.body.get("next_after").is_none(), "{:?}", r.body);
            break;
        }
        let next = r.body["next_after"].as_str().unwrap();
        assert_eq!(next.parse::<Id>().unwrap(), *page.iter().max().unwrap());
        uri = format!("/v1/chats?limit=2&after={next}");
    }
    assert_eq!(
        seen[0], created[0],
        "newest activity first inside the first page"
    );
    seen.sort();
    assert_eq!(seen, created, "every chat once across pages");
    // Without a limit, one page holds them all.
    let all = t.call(Method::GET, "/v1/chats", Some(&pager), None).await;
    assert_eq!(all.body["chats"].as_array().unwrap().len(), 5);
    assert_eq!(all.body["has_more"], false);
    for bad in ["/v1/chats?limit=0", "/v1/chats?after=soon"] {
        let r = t.call(Method::GET, bad, Some(&pager), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", r.body);
    }
}

/// Edits and deletes: hostile and odd input gets problems and changes nothing; the frames go
/// to the members online; idempotent repeats fan out nothing new; a removed member is told.
#[tokio::test]
async fn edits_deletes_and_removals_over_http() {
    let t = setup_with(
        Limits {
            message_body_bytes_max: 16,
            ..Limits::default()
        },
        SqliteOptions::default(),
    );
    let n1 = node("n1");
    t.registry.heartbeat(&n1).await.unwrap();
    t.registry
        .add_routes(&n1, &["alice".to_string(), "bob".into(), "carol".into()])
        .await
        .unwrap();
    let mut s1 = t.bus.subscribe(&n1).await.unwrap();
    let chat = t.create_chat("alice", &["bob", "carol"]).await;
    let sent = t.send("bob", chat, "c1", "helo").await;
    next_frames(&mut s1).await;
    let id = sent.body["message_id"].as_str().unwrap().to_string();
    let path = format!("/v1/chats/{chat}/messages/{id}");
    let bob = t.user("bob");
    for (body, status, kind) in [
        (
            json!({"body": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            json!({"body": "x".repeat(17)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            json!({"text": "hi"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
        (
            json!({"body": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
        ),
    ] {
        let r = t
            .call(Method::PATCH, &path, Some(&bob), Some(body.clone()))
            .await;
        assert_eq!(
            (r.status.as_u16() / 100, r.problem_type().as_str()),
            (status.as_u16() / 100, kind),
            "{body}: {:?}",
            r.body
        );
    }
    for bad in [
        format!("/v1/chats/{chat}/messages/not-an-id"),
        format!("/v1/chats/{chat}/messages/99999999999999999999999"),
    ] {
        let r = t
            .call(Method::PATCH, &bad, Some(&bob), Some(json!({"body": "x"})))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", r.body);
    }
    let r = t
        .call(
            Method::GET,
            &format!("/v1/chats/{chat}/changes?limit=0"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Nothing changed so far.
    let r = t
        .call(
            Method::GET,
            &format!("/v1/chats/{chat}/changes"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(r.body["messages"], json!([]), "{:?}", r.body);

    // The edit is fanned out once; the same edit again answers the same and fans out nothing.
    let r = t
        .call(
            Method::PATCH,
            &path,
            Some(&bob),
            Some(json!({"body": "hello"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let frames = next_frames(&mut s1).await;
    assert_eq!(frames.len(), 1);
    let ServerFrame::MessageUpdated { message } = &frames[0].1 else {
        panic!("{:?}", frames[0].1)
    };
    assert_eq!(serde_json::to_value(message).unwrap(), r.body);
    let again = t
        .call(
            Method::PATCH,
            &path,
            Some(&bob),
            Some(json!({"body": "hello"})),
        )
        .await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &r.body));
    let r = t.call(Method::GET, "/v1/chats", Some(&bob), None).await;
    assert_eq!(
        r.body["chats"][0]["last_change_id"],
        again.body["change_id"]
    );

    // alice (the owner) deletes bob's message: a tombstone stays, the body is gone.
    let r = t
        .call(Method::DELETE, &path, Some(&t.user("alice")), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The next frame is the delete: the repeated edit fanned out nothing.
    let frames = next_frames(&mut s1).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(
        matches!(&frames[0].1, ServerFrame::MessageDeleted { message_id, .. } if message_id.to_string() == id),
        "{frames:?}"
    );
    let r = t.call(Method::DELETE, &path, Some(&bob), None).await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "deleting again is harmless"
    );
    let page = t
        .call(
            Method::GET,
            &format!("/v1/chats/{chat}/messages"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(page.body["messages"][0]["deleted"], true);
    assert!(!page.body.to_string().contains("hello"), "{:?}", page.body);
    let r = t
        .call(
            Method::PATCH,
            &path,
            Some(&bob),
            Some(json!({"body": "back"})),
        )
        .await;
    assert_eq!(
        (r.status, r.problem_type().as_str()),
        (StatusCode::CONFLICT, "conflict")
    );

    // Removing carol tells her sockets; roles: bob made admin, then revoked.
    let alice = t.user("alice");
    let r = t
        .call(
            Method::PATCH,
            &format!("/v1/chats/{chat}/members/bob"),
            Some(&alice),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let r = t
        .call(
            Method::PATCH,
            &format!("/v1/chats/{chat}/members/bob"),
            Some(&alice),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = t
        .call(
            Method::GET,
            &format!("/v1/chats/{chat}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r.body["admins"], json!(["bob"]));
    let r = t
        .call(
            Method::DELETE,
            &format!("/v1/chats/{chat}/members/carol"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let frames = next_frames(&mut s1).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, vec!["carol".to_string()]);
    assert!(matches!(frames[0].1, ServerFrame::ChatRemoved { chat_id } if chat_id == chat));
    // Later messages skip carol.
    t.send("alice", chat, "c2", "after").await;
    let frames = next_frames(&mut s1).await;
    assert_eq!(frames[0].0, vec!["alice".to_string(), "bob".into()]);
}
