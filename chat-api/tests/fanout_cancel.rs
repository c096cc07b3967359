//! A stored message's fan-out runs on the send request's own task, yet outlives the request: a
//! send whose request future is dropped during its fan-out (its client went away, or the
//! request deadline cut it) still reaches the members' nodes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use chat_api::store::sqlite::SqliteStore;
use chat_api::{app, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shared::auth::{JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::protocol::{decode_server, Encoding, ServerFrame};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::routing::{
    Envelope, NodeBus, NodeInfo, PresenceReports, RouteRegistry, RoutingError, Subscription,
};
use shared::IdGenerator;
use tower::ServiceExt;

/// A bus whose appends take `delay`: the fan-out is still running when the request is dropped.
struct SlowBus {
    inner: Arc<MemoryBus>,
    delay: Duration,
}

#[async_trait]
impl NodeBus for SlowBus {
    async fn publish(&self, entries: Vec<(String, Envelope)>) -> Result<(), RoutingError> {
        tokio::time::sleep(self.delay).await;
        self.inner.publish(entries).await
    }
    async fn subscribe(&self, node: &NodeInfo) -> Result<Box<dyn Subscription>, RoutingError> {
        self.inner.subscribe(node).await
    }
    async fn report_presence(&self, users: Vec<String>) -> Result<(), RoutingError> {
        self.inner.report_presence(users).await
    }
    async fn presence_reports(&self) -> Result<Box<dyn PresenceReports>, RoutingError> {
        self.inner.presence_reports().await
    }
}

async fn call(router: &Router, path: &str, token: &str, body: Value) -> (u16, Value) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_dropped_during_its_fan_out_is_still_delivered() {
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
    let registry = Arc::new(MemoryRegistry::new());
    let inner = Arc::new(MemoryBus::new(64));
    let node = NodeInfo {
        node_id: "gw-1".into(),
        incarnation: 1,
    };
    registry.heartbeat(&node).await.unwrap();
    registry
        .add_routes(&node, &["fc-bob".to_string()])
        .await
        .unwrap();
    let mut stream = inner.subscribe(&node).await.unwrap();
    let bus = Arc::new(SlowBus {
        inner: inner.clone(),
        delay: Duration::from_millis(400),
    });
    let state = AppState::new(
        store,
        registry,
        bus,
        verifier,
        Arc::new(IdGenerator::new(5)),
    );
    let router = app(state);
    let alice = Signer::hmac(algorithm, DEV_SECRET.as_bytes()).token(
        "fc-alice",
        Duration::from_secs(600),
        None,
    );
    let (status, chat) = call(&router, "/v1/chats", &alice, json!({"members": ["fc-bob"]})).await;
    assert_eq!(status, 201, "{chat}");
    let path = format!("/v1/chats/{}/messages", chat["chat_id"].as_str().unwrap());

    // The request is dropped 100 ms in: stored by then, its fan-out waiting on the slow bus.
    let send = call(
        &router,
        &path,
        &alice,
        json!({"client_msg_id": "fc-1", "body": "hi"}),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), send)
            .await
            .is_err(),
        "the send answered before its fan-out"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Other frames (the chat's creation) may come first.
    let message = loop {
        let batch = stream.next_batch(64).await.unwrap();
        let message = batch
            .iter()
            .filter(|e| e.recipients == ["fc-bob"])
            .find_map(|e| match decode_server(Encoding::Msgpack, &e.frame) {
                Ok(ServerFrame::Message { message }) => Some(message),
                _ => None,
            });
        if let Some(message) = message {
            break message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped send's message never reached bob's node"
        );
    };
    assert_eq!(message.body, "hi");
}
