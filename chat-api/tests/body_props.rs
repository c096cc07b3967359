//! Property tests for HTTP request bodies, queries and paths through the real router (`oneshot`),
//! the CI counterpart of the `http_bodies` cargo-fuzz target: whatever a client sends, the answer
//! is a success or a 4xx problem+json with a listed type, never a 5xx, and nothing is stored for
//! a refused request.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chat_api::error::PROBLEM_TYPES;
use chat_api::store::sqlite::SqliteStore;
use chat_api::{app, AppState, Limits};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use shared::auth::{Signer, DEV_SECRET};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::IdGenerator;
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: Router,
    user: String,
    service: String,
    chat: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    let verifier = shared::testkit::dev_key_verifier(Duration::from_secs(2));
    // Rate limits off: these tests send thousands of requests as one user on purpose.
    let limits = Limits {
        rate_requests: None,
        rate_messages: None,
        ..Limits::default()
    };
    let state = AppState::new(
        store,
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::new(1024)),
        verifier,
        Arc::new(IdGenerator::new(5)),
    )
    .with_limits(limits);
    let router = app(state);
    let signer = Signer::hmac(jsonwebtoken::Algorithm::HS256, DEV_SECRET.as_bytes());
    let user = signer.token("prop-user", Duration::from_secs(3600), None);
    let service = signer.token("prop-svc", Duration::from_secs(3600), Some("push"));
    let chat = rt.block_on(async {
        let r = send(
            &router,
            &user,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": ["other"]}).to_string().into_bytes()),
            "application/json",
        )
        .await;
        assert_eq!(r.0, StatusCode::CREATED);
        serde_json::from_str::<Value>(&r.2).unwrap()["chat_id"]
            .as_str()
            .unwrap()
            .to_string()
    });
    Fixture {
        rt,
        router,
        user,
        service,
        chat,
        _dir: dir,
    }
}

async fn send(
    router: &Router,
    token: &str,
    method: Method,
    uri: &str,
    body: Option<Vec<u8>>,
    content_type: &str,
) -> (StatusCode, String, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let r = router.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let ct = r
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8_lossy(&bytes).into_owned())
}

/// Success, or a 4xx problem+json whose type is one of the listed ones.
fn assert_clear(what: &str, (status, ct, text): &(StatusCode, String, String)) {
    assert!(
        !status.is_server_error(),
        "{what}: server error {status}: {text}"
    );
    if status.is_client_error() {
        assert_eq!(ct, "application/problem+json", "{what}: {status} {text}");
        let v: Value = serde_json::from_str(text).expect("problem body is JSON");
        let kind = v["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("https://chat.example/problems/");
        assert!(
            PROBLEM_TYPES
                .iter()
                .any(|(slug, code, _)| *slug == kind && *code == status.as_u16()),
            "{what}: unlisted problem {kind:?} with {status}"
        );
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,64}".prop_map(Value::from),
        "[A-Za-z0-9_.:@-]{1,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("members".to_string()),
                    Just("title".to_string()),
                    Just("user_ids".to_string()),
                    Just("client_msg_id".to_string()),
                    Just("body".to_string()),
                    Just("event".to_string()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body: random bytes, random JSON, or a plausible object with random field values.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (
            prop::collection::vec("[A-Za-z0-9_.:@ -]{0,20}", 0..5),
            ".{0,80}",
            json_value()
        )
            .prop_map(|(ids, text, event)| {
                json!({
                    "members": ids.clone(), "user_ids": ids, "title": text.clone(),
                    "client_msg_id": text.clone(), "body": text, "event": event
                })
                .to_string()
                .into_bytes()
            }),
    ]
}

const POSTS: &[&str] = &[
    "/v1/chats",
    "/v1/chats/{chat}/members",
    "/v1/chats/{chat}/messages",
    "/v1/push",
];

/// `PROPTEST_CASES` overrides the per-test default (for longer runs).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(400)))]

    #[test]
    fn post_bodies_get_clear_answers(
        target in 0..POSTS.len(),
        body in body(),
        ct in prop_oneof![Just("application/json"), Just("text/plain"), Just("application/json; charset=utf-8")],
    ) {
        let f = fixture_once();
        let path = POSTS[target].replace("{chat}", &f.chat);
        let token = if path == "/v1/push" { &f.service } else { &f.user };
        let r = f.rt.block_on(send(&f.router, token, Method::POST, &path, Some(body), ct));
        assert_clear(&path, &r);
    }

    #[test]
    fn queries_and_paths_get_clear_answers(
        query in "[ -~]{0,60}",
        segment in "[ -~&&[^/?#]]{0,30}",
    ) {
        let f = fixture_once();
        let q = query.replace(' ', "%20").replace('#', "%23");
        let s = segment.replace('%', "%25").replace(' ', "%20");
        for uri in [
            format!("/v1/chats/{}/messages?{q}", f.chat),
            format!("/v1/presence?{q}"),
            format!("/v1/chats/{s}"),
            format!("/v1/chats/{s}/messages"),
        ] {
            let Ok(uri) = uri.parse::<axum::http::Uri>() else { continue };
            let r = f.rt.block_on(send(&f.router, &f.user, Method::GET, &uri.to_string(), None, "application/json"));
            assert_clear(&uri.to_string(), &r);
        }
    }
}

/// One fixture for all cases of a test run (a store per case would only slow it down).
fn fixture_once() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(fixture)
}

/// Bodies over the limit are refused with 413 before they are parsed.
#[test]
fn oversized_bodies_are_refused() {
    let f = fixture_once();
    let big = vec![b'a'; Limits::default().request_body_bytes_max + 1];
    let r = f.rt.block_on(send(
        &f.router,
        &f.user,
        Method::POST,
        "/v1/chats",
        Some(big),
        "application/json",
    ));
    assert_eq!(r.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.2);
    assert_clear("big body", &r);
}
