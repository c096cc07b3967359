//! A send answered 503 at its request deadline is never committed afterwards: the SQLite store
//! abandons a write whose deadline passed before its commit, so a retry with the same
//! `client_msg_id` stores the message anew, with a fresh id, instead of acknowledging one with
//! an id from before the 503 (which a catch-up overlap would not reach). The commit is delayed
//! with the `store::sqlite_before_commit` failpoint. A test binary of its own: failpoints are
//! global to the process.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use chat_api::store::sqlite::SqliteStore;
use chat_api::{app, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shared::auth::{JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::ids::now_unix_ms;
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::{Id, IdGenerator};
use tower::ServiceExt;

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, bool, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let replayed = res.headers().contains_key("idempotent-replayed");
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        replayed,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_past_its_deadline_is_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    let algorithm = shared::auth::parse_algorithm("HS256").unwrap();
    let verifier = Verifier::new(&JwtSettings {
        algorithm,
        key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(2),
    })
    .unwrap();
    let state = AppState::new(
        store,
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::new(64)),
        verifier,
        Arc::new(IdGenerator::new(3)),
    )
    .with_limits(Limits {
        request_timeout: Duration::from_millis(800),
        ..Limits::default()
    });
    let router = app(state);
    let signer = Signer::hmac(algorithm, DEV_SECRET.as_bytes());
    let alice = signer.token("dl-alice", Duration::from_secs(600), None);
    let (status, _, chat) = call(
        &router,
        Method::POST,
        "/v1/chats",
        &alice,
        Some(json!({"members": ["dl-bob"]})),
    )
    .await;
    assert_eq!(status, 201, "{chat}");
    let chat: Id = chat["chat_id"].as_str().unwrap().parse().unwrap();
    let path = format!("/v1/chats/{chat}/messages");
    let send = json!({"client_msg_id": "dl-1", "body": "late"});

    // The commit waits 1.5 s: past the 800 ms deadline.
    fail::cfg("store::sqlite_before_commit", "1*sleep(1500)").unwrap();
    let drawn_before = now_unix_ms();
    let (status, _, body) = call(&router, Method::POST, &path, &alice, Some(send.clone())).await;
    assert_eq!(status, 503, "{body}");
    // Well after the delayed commit would have landed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fail::remove("store::sqlite_before_commit");
    let (status, _, page) = call(&router, Method::GET, &path, &alice, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], json!([]), "committed after its 503");

    // The retry stores it now, with an id drawn now.
    let retried_at = now_unix_ms();
    let (status, replayed, stored) = call(&router, Method::POST, &path, &alice, Some(send)).await;
    assert_eq!(status, 201, "{stored}");
    assert!(!replayed, "the retry acknowledged the late write: {stored}");
    let id: Id = stored["message_id"].as_str().unwrap().parse().unwrap();
    assert!(
        id.unix_ms() >= retried_at && retried_at >= drawn_before + 2000,
        "id from {} ms, retry at {retried_at}",
        id.unix_ms()
    );
}
