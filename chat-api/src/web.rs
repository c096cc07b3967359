//! The browser client library (`/client.js`, `/msgpack.js` and their `.d.ts`) and the operators'
//! page (`/admin`), served in every mode, and the demo chat page (`/`, embedded mode only),
//! compiled into the binary from `web/`, plus the embedded mode's `/config.json` and
//! development-token endpoint `POST /dev/token`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::auth::Signer;
use shared::ids::{now_unix_ms, validate_user_id};

use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// One embedded file.
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const CLIENT_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../web/client.js"),
};
const MSGPACK_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../web/msgpack.js"),
};
const CLIENT_DTS: Asset = Asset {
    content_type: "text/plain; charset=utf-8",
    body: include_str!("../web/client.d.ts"),
};
const MSGPACK_DTS: Asset = Asset {
    content_type: "text/plain; charset=utf-8",
    body: include_str!("../web/msgpack.d.ts"),
};
const INDEX_HTML: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../web/index.html"),
};
const APP_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../web/app.js"),
};
const ADMIN_HTML: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../web/admin.html"),
};
const ADMIN_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../web/admin.js"),
};
const STYLE_CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("../web/style.css"),
};

/// The demo page may talk to its own origin and to any WebSocket (the gateway listens on another
/// port); nothing else.
const DEMO_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                        frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the demo needs to know; present only in embedded mode.
pub struct Demo {
    /// Port of the gateway; the page connects to `ws://<its own host>:<port>/ws`.
    pub gateway_port: u16,
    /// Signs development tokens; `None` when a real key is configured (the page then asks for a
    /// token instead).
    pub dev_tokens: Option<DevTokens>,
}

/// Development tokens for the demo: only with the built-in development key.
pub struct DevTokens {
    pub signer: Signer,
    pub ttl: Duration,
}

type S = Arc<AppState>;

/// The web routes; the demo's only when `demo` is set.
pub fn router(demo: bool) -> Router<S> {
    let library = Router::new()
        .route(
            "/client.js",
            get(|h: HeaderMap| async move { serve(&h, &CLIENT_JS) }),
        )
        .route(
            "/msgpack.js",
            get(|h: HeaderMap| async move { serve(&h, &MSGPACK_JS) }),
        )
        .route(
            "/client.d.ts",
            get(|h: HeaderMap| async move { serve(&h, &CLIENT_DTS) }),
        )
        .route(
            "/msgpack.d.ts",
            get(|h: HeaderMap| async move { serve(&h, &MSGPACK_DTS) }),
        )
        // The operators' page holds nothing without an admin token pasted in.
        .route(
            "/admin",
            get(|h: HeaderMap| async move { serve(&h, &ADMIN_HTML) }),
        )
        .route(
            "/admin.js",
            get(|h: HeaderMap| async move { serve(&h, &ADMIN_JS) }),
        )
        .route(
            "/style.css",
            get(|h: HeaderMap| async move { serve(&h, &STYLE_CSS) }),
        );
    if !demo {
        return library;
    }
    library
        .route(
            "/",
            get(|h: HeaderMap| async move { serve(&h, &INDEX_HTML) }),
        )
        .route(
            "/index.html",
            get(|h: HeaderMap| async move { serve(&h, &INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|h: HeaderMap| async move { serve(&h, &APP_JS) }),
        )
        .route("/config.json", get(config))
        .route("/dev/token", post(dev_token))
}

/// FNV-1a: a stable validator for `ETag`, so that browsers revalidate cheaply and always see the
/// files of the running binary after an upgrade.
fn etag(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{}-{h:016x}\"", env!("CARGO_PKG_VERSION"))
}

fn serve(headers: &HeaderMap, asset: &Asset) -> Response {
    let tag = etag(asset.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    // Revalidate every time: the files change with the binary, and an ETag check is cheap.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    if asset.content_type.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DEMO_CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[derive(Debug, Serialize)]
struct DemoConfig {
    gateway_port: u16,
    gateway_path: &'static str,
    dev_tokens: bool,
    version: &'static str,
}

/// `GET /config.json`: where the page finds the gateway, and whether it may ask for tokens.
async fn config(State(state): State<S>) -> Result<Response, ApiError> {
    let demo = state.demo.as_ref().ok_or(ApiError::NotFound)?;
    let mut response = Json(DemoConfig {
        gateway_port: demo.gateway_port,
        gateway_path: "/ws",
        dev_tokens: demo.dev_tokens.is_some(),
        version: env!("CARGO_PKG_VERSION"),
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct DevTokenRequest {
    user: String,
}

#[derive(Debug, Serialize)]
struct DevTokenResponse {
    token: String,
    /// Unix seconds.
    expires_at: u64,
}

/// `POST /dev/token {"user": "alice"}`: a user token signed with the development key. Answers 404
/// unless the embedded mode runs with the development key (never with a configured one).
async fn dev_token(
    State(state): State<S>,
    ApiJson(req): ApiJson<DevTokenRequest>,
) -> Result<Response, ApiError> {
    let dev = state
        .demo
        .as_ref()
        .and_then(|d| d.dev_tokens.as_ref())
        .ok_or(ApiError::NotFound)?;
    validate_user_id(&req.user)
        .map_err(|e| ApiError::validation("user", format!("user id {:?}: {e}", req.user)))?;
    let token = dev.signer.token(&req.user, dev.ttl, None);
    let expires_at = now_unix_ms() / 1000 + dev.ttl.as_secs();
    let mut response = Json(DevTokenResponse { token, expires_at }).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
