//! Fuzzes the HTTP API's request bodies through the real router: the first byte picks the
//! endpoint, the rest is the body. Any answer but a 5xx is fine; a 5xx or a panic is a finding.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use chat_api::store::sqlite::SqliteStore;
use chat_api::{app, AppState, Limits};
use libfuzzer_sys::fuzz_target;
use shared::auth::{JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::IdGenerator;
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    user: String,
    service: String,
    chat: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
        let verifier = Verifier::new(&JwtSettings {
            algorithm: jsonwebtoken::Algorithm::HS256,
            key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(2),
        })
        .unwrap();
        let limits = Limits {
            rate_requests: None,
            rate_messages: None,
            ..Limits::default()
        };
        let state = AppState::new(
            store.clone(),
            Arc::new(MemoryRegistry::new()),
            Arc::new(MemoryBus::new(1024)),
            verifier,
            Arc::new(IdGenerator::new(1)),
        )
        .with_limits(limits);
        let signer = Signer::hmac(jsonwebtoken::Algorithm::HS256, DEV_SECRET.as_bytes());
        let user = signer.token("fuzz-user", Duration::from_secs(86_400), None);
        let service = signer.token("fuzz-svc", Duration::from_secs(86_400), Some("push"));
        let router = app(state);
        let chat = rt.block_on(async {
            let req = Request::post("/v1/chats")
                .header(header::AUTHORIZATION, format!("Bearer {user}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"members":["other"]}"#))
                .unwrap();
            let r = router.clone().oneshot(req).await.unwrap();
            let bytes = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v["chat_id"].as_str().unwrap().to_string()
        });
        Fixture {
            rt,
            router,
            user,
            service,
            chat,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let (path, token) = match pick % 4 {
        0 => ("/v1/chats".to_string(), &f.user),
        1 => (format!("/v1/chats/{}/members", f.chat), &f.user),
        2 => (format!("/v1/chats/{}/messages", f.chat), &f.user),
        _ => ("/v1/push".to_string(), &f.service),
    };
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let status = f
        .rt
        .block_on(f.router.clone().oneshot(req))
        .unwrap()
        .status();
    assert!(!status.is_server_error(), "{status}");
});
