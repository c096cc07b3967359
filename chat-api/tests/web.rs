//! Router tests of the embedded web files and the demo's endpoints: the library is served in every
//! mode with its content type and caching headers, the demo page, `/config.json` and
//! `POST /dev/token` only in embedded mode (development tokens only with the development key),
//! and CORS only for configured origins. The browser itself is tested by `scripts/test-web.sh`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use chat_api::store::sqlite::SqliteStore;
use chat_api::web::{Demo, DevTokens};
use chat_api::{app, AppState};
use http_body_util::BodyExt;
use serde_json::Value;
use shared::auth::{parse_algorithm, JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::IdGenerator;
use tower::ServiceExt;

fn verifier() -> Verifier {
    Verifier::new(&JwtSettings {
        algorithm: parse_algorithm("HS256").unwrap(),
        key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(2),
    })
    .unwrap()
}

fn state(dir: &tempfile::TempDir) -> AppState {
    let store = SqliteStore::open_with(dir.path().join("chat.db"), Default::default()).unwrap();
    AppState::new(
        Arc::new(store),
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::new(64)),
        verifier(),
        Arc::new(IdGenerator::new(1)),
    )
}

fn demo(dev_tokens: bool) -> Demo {
    Demo {
        gateway_port: 18080,
        dev_tokens: dev_tokens.then(|| DevTokens {
            signer: Signer::hmac(parse_algorithm("HS256").unwrap(), DEV_SECRET.as_bytes()),
            ttl: Duration::from_secs(600),
        }),
    }
}

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post_json(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn library_is_served_in_every_mode_with_types_and_revalidation() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(state(&dir));
    let (status, headers, body) = call(&router, get("/client.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("export class ChatClient"));
    let etag = headers[header::ETAG].clone();

    // A revalidation with the same ETag costs no body.
    let req = Request::get("/client.js")
        .header(header::IF_NONE_MATCH, etag.clone())
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = call(&router, req).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers[header::ETAG], etag);

    for path in ["/msgpack.js", "/client.d.ts", "/msgpack.d.ts"] {
        let (status, _, body) = call(&router, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    // The operators' page is served in every mode, under the pages' CSP.
    let (status, headers, body) = call(&router, get("/admin")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(String::from_utf8(body).unwrap().contains("/admin.js"));
    for path in ["/admin.js", "/style.css"] {
        let (status, _, body) = call(&router, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    // Without the demo (chat-api serve): no page, no configuration, no development tokens.
    for path in ["/", "/app.js", "/config.json"] {
        let (status, headers, _) = call(&router, get(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    }
    let (status, _, _) = call(&router, post_json("/dev/token", r#"{"user":"alice"}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn demo_page_config_and_development_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(state(&dir).with_demo(demo(true)));
    let (status, headers, body) = call(&router, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("connect-src 'self' ws: wss:"));
    assert!(String::from_utf8(body).unwrap().contains("/app.js"));
    let (status, headers, _) = call(&router, get("/style.css")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");

    let (status, _, body) = call(&router, get("/config.json")).await;
    assert_eq!(status, StatusCode::OK);
    let config: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(config["gateway_port"], 18080);
    assert_eq!(config["gateway_path"], "/ws");
    assert_eq!(config["dev_tokens"], true);

    let (status, headers, body) =
        call(&router, post_json("/dev/token", r#"{"user":"alice"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let token = answer["token"].as_str().unwrap();
    assert_eq!(verifier().verify(token).unwrap().subject, "alice");
    assert!(answer["expires_at"].as_u64().unwrap() > shared::ids::now_unix_ms() / 1000 + 500);

    // The token works against the API it came from.
    let req = Request::get("/v1/chats")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&router, req).await.0, StatusCode::OK);

    let (status, _, body) = call(&router, post_json("/dev/token", r#"{"user":""}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("\"field\":\"user\""));
    let (status, _, _) = call(&router, post_json("/dev/token", "not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn no_development_tokens_with_a_configured_key() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(state(&dir).with_demo(demo(false)));
    assert_eq!(call(&router, get("/")).await.0, StatusCode::OK);
    let (_, _, body) = call(&router, get("/config.json")).await;
    let config: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(config["dev_tokens"], false);
    let (status, _, _) = call(&router, post_json("/dev/token", r#"{"user":"alice"}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cors_only_for_configured_origins() {
    let dir = tempfile::tempdir().unwrap();
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/chats")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let open =
        app(state(&dir).with_cors(vec![HeaderValue::from_static("http://app.example:3000")]));
    let (status, headers, _) = call(&open, preflight("http://app.example:3000")).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://app.example:3000"
    );
    let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    let (_, headers, _) = call(&open, preflight("http://evil.example")).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    let closed = app(state(&dir));
    let (_, headers, _) = call(&closed, preflight("http://app.example:3000")).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}
