//! Per-user request and message rate limits through the real router: 429 problem+json with
//! `Retry-After`, other users unaffected, nothing stored for a refused send, one budget shared by
//! two API replicas through a private Redis, fail-open when Redis is gone, and over-limit requests
//! held before their 429 (bounded in time and in number).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chat_api::store::sqlite::SqliteStore;
use chat_api::store::MessageStore;
use chat_api::{app, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shared::auth::{JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::ratelimit::{Quota, RateLimiter, RedisLimiter};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::routing::redis::{connect, RedisOptions};
use shared::testkit::RedisServer;
use shared::IdGenerator;
use tower::ServiceExt;

fn verifier() -> Verifier {
    Verifier::new(&JwtSettings {
        algorithm: jsonwebtoken::Algorithm::HS256,
        key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(2),
    })
    .unwrap()
}

fn token(sub: &str) -> String {
    Signer::hmac(jsonwebtoken::Algorithm::HS256, DEV_SECRET.as_bytes()).token(
        sub,
        Duration::from_secs(600),
        None,
    )
}

fn router(
    store: Arc<SqliteStore>,
    limits: Limits,
    limiter: Option<Arc<dyn RateLimiter>>,
) -> Router {
    let mut state = AppState::new(
        store,
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::new(1024)),
        verifier(),
        Arc::new(IdGenerator::new(9)),
    )
    .with_limits(limits);
    if let Some(l) = limiter {
        state = state.with_limiter(l);
    }
    app(state)
}

struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    content_type: String,
    body: Value,
}

async fn call(r: &Router, sub: &str, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", token(sub)))
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let h = |n: header::HeaderName| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (retry_after, content_type) = (h(header::RETRY_AFTER), h(header::CONTENT_TYPE));
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        retry_after,
        content_type: content_type.unwrap_or_default(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn assert_rate_limited(r: &Reply) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(
        r.body["type"], "https://chat.example/problems/rate-limited",
        "{}",
        r.body
    );
    let secs: u64 = r
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    let ms = r.body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(ms > 0 && ms <= 60_000, "{ms}");
}

async fn new_chat(r: &Router, owner: &str, member: &str) -> String {
    let reply = call(
        r,
        owner,
        Method::POST,
        "/v1/chats",
        Some(json!({"members": [member]})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["chat_id"].as_str().unwrap().to_string()
}

fn store(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap())
}

#[tokio::test]
async fn requests_per_user_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let r = router(
        store(&dir),
        Limits {
            rate_requests: Some(Quota::per_minute(1, 3)),
            ..Limits::default()
        },
        None,
    );
    for i in 0..3 {
        let reply = call(&r, "alice", Method::GET, "/v1/chats", None).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
    }
    assert_rate_limited(&call(&r, "alice", Method::GET, "/v1/chats", None).await);
    // Any endpoint that needs a token spends the same budget.
    assert_rate_limited(&call(&r, "alice", Method::GET, "/v1/presence?user_ids=x", None).await);
    // Another user is not affected, and neither are unauthenticated health checks.
    assert_eq!(
        call(&r, "bob", Method::GET, "/v1/chats", None).await.status,
        StatusCode::OK
    );
    let health = r
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn messages_per_user_are_limited_and_refused_sends_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(&dir);
    let r = router(
        st.clone(),
        Limits {
            rate_messages: Some(Quota::per_minute(1, 2)),
            ..Limits::default()
        },
        None,
    );
    let chat = new_chat(&r, "alice", "bob").await;
    let uri = format!("/v1/chats/{chat}/messages");
    for i in 0..2 {
        let reply = call(
            &r,
            "alice",
            Method::POST,
            &uri,
            Some(json!({"client_msg_id": format!("m{i}"), "body": "hi"})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let refused = call(
        &r,
        "alice",
        Method::POST,
        &uri,
        Some(json!({"client_msg_id": "m2", "body": "hi"})),
    )
    .await;
    assert_rate_limited(&refused);
    // Reading is not a message; bob may still send.
    assert_eq!(
        call(&r, "alice", Method::GET, &uri, None).await.status,
        StatusCode::OK
    );
    let bob = call(
        &r,
        "bob",
        Method::POST,
        &uri,
        Some(json!({"client_msg_id": "b0", "body": "yo"})),
    )
    .await;
    assert_eq!(bob.status, StatusCode::CREATED);
    let page = st
        .history(
            shared::Id(chat.parse().unwrap()),
            chat_api::store::Cursor::Latest,
            50,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(!ids.contains(&"m2"));
}

#[tokio::test]
async fn over_limit_requests_are_held_within_bounds_before_their_429() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Duration::from_secs(2);
    let limits = Limits {
        rate_requests: Some(Quota::per_minute(1, 1)),
        rate_limited_hold: hold,
        ..Limits::default()
    };
    let held = router(store(&dir), limits.clone(), None);
    assert_eq!(
        call(&held, "dave", Method::GET, "/v1/chats", None)
            .await
            .status,
        StatusCode::OK
    );
    let started = std::time::Instant::now();
    let reply = call(&held, "dave", Method::GET, "/v1/chats", None).await;
    assert!(
        started.elapsed() >= hold,
        "answered after {:?}",
        started.elapsed()
    );
    assert_rate_limited(&reply);
    // The hold counts towards the wait: what is left of the minute is reported.
    let ms = reply.body["retry_after_ms"].as_u64().unwrap();
    assert!(ms <= 58_000, "retry_after_ms {ms} after a 2 s hold");

    // No place to hold it (at most 0 held): the same refusal comes without the hold.
    let unheld = router(
        store(&dir),
        Limits {
            rate_limited_held_max: 0,
            ..limits
        },
        None,
    );
    assert_eq!(
        call(&unheld, "erin", Method::GET, "/v1/chats", None)
            .await
            .status,
        StatusCode::OK
    );
    let reply = call(&unheld, "erin", Method::GET, "/v1/chats", None).await;
    assert_rate_limited(&reply);
    let ms = reply.body["retry_after_ms"].as_u64().unwrap();
    assert!(ms > 59_000, "retry_after_ms {ms} without a hold");
}

#[tokio::test]
async fn replicas_share_one_budget_through_redis_and_fail_open_without_it() {
    let mut redis = RedisServer::start().expect("redis-server");
    let routing = connect(&redis.url(), RedisOptions::default())
        .await
        .unwrap();
    let limiter: Arc<dyn RateLimiter> = Arc::new(RedisLimiter::new(
        routing.client().clone(),
        "api-test:",
        Duration::from_millis(500),
    ));
    let dir = tempfile::tempdir().unwrap();
    let st = store(&dir);
    let limits = Limits {
        rate_requests: Some(Quota::per_minute(1, 4)),
        ..Limits::default()
    };
    let a = router(st.clone(), limits.clone(), Some(limiter.clone()));
    let b = router(st, limits, Some(limiter));
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..10 {
        let r = if i % 2 == 0 { &a } else { &b };
        let reply = call(r, "carol", Method::GET, "/v1/chats", None).await;
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_rate_limited(&reply);
                limited += 1
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        (ok, limited),
        (4, 6),
        "one budget of 4 across both replicas"
    );
    // Redis gone: requests pass (fail open) instead of failing.
    redis.stop();
    for r in [&a, &b] {
        let reply = call(r, "carol", Method::GET, "/v1/chats", None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
}
