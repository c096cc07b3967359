//! The HTTP application: shared state, the router (`app`) and the server loop (`run`) with
//! graceful shutdown bounded by a deadline.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use shared::auth::Verifier;
use shared::ratelimit::RateLimiter;
use shared::revocation::RevocationCheck;
use shared::routing::{NodeBus, RouteRegistry};
use shared::IdGenerator;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api;
use crate::config::Limits;
use crate::error::ApiError;
use crate::store::MessageStore;
use crate::telemetry::{HTTP_REQUESTS_TOTAL, HTTP_REQUEST_SECONDS};

/// Everything a request handler needs. Built once; handlers share it through an `Arc`.
pub struct AppState {
    pub store: Arc<dyn MessageStore>,
    pub registry: Arc<dyn RouteRegistry>,
    pub bus: Arc<dyn NodeBus>,
    pub verifier: Verifier,
    pub ids: Arc<IdGenerator>,
    pub limits: Limits,
    /// Renders `/metrics`; `None` answers 404 there.
    pub metrics: Option<PrometheusHandle>,
    /// Set when shutdown starts, so that `/readyz` turns away new traffic.
    pub draining: Arc<AtomicBool>,
    /// The demo page and development tokens (embedded mode only).
    pub demo: Option<Arc<crate::web::Demo>>,
    /// Origins allowed to call the API from a browser (CORS); empty: none, `*`: any.
    pub cors_origins: Vec<HeaderValue>,
    /// Per-caller rate limits (in-process by default; Redis in distributed mode).
    pub limiter: Arc<dyn RateLimiter>,
    /// Per-user typing notice limit (local to this replica).
    pub typing: api::typing::TypingLimiter,
    /// Places for over-limit requests held before their 429 (see [`AppState::rate_limited`]).
    pub held: Arc<tokio::sync::Semaphore>,
    /// Distributed mode: the clock measured against Redis that message ids follow; sends and
    /// `/readyz` are refused while it cannot be trusted. `None`: the local clock (one process).
    pub clock: Option<Arc<crate::clock::ClockGuard>>,
    /// The offline hook's queue side (`NOTIFY_WEBHOOK_URL` set); `None`: off, nothing queued.
    pub notify: Option<crate::notify::Notifier>,
    /// Per-user token revocations, checked on every authenticated request; in-process by default
    /// (shared with the gateway in embedded mode), Redis in distributed mode.
    pub revocations: Arc<RevocationCheck>,
    /// How long a revoke is kept (`REVOCATION_TTL`).
    pub revocation_ttl: Duration,
    /// Real-time fan-out with its background retry; built at first use from the fields above.
    fanout: std::sync::OnceLock<crate::fanout::Fanout>,
}

/// When the request must be answered by (set by the deadline middleware), for work that must
/// not complete after the answer: a send's store write.
#[derive(Clone, Copy, Debug)]
pub struct RequestDeadline(pub Instant);

impl AppState {
    /// State with default limits, no metrics handle and not draining.
    pub fn new(
        store: Arc<dyn MessageStore>,
        registry: Arc<dyn RouteRegistry>,
        bus: Arc<dyn NodeBus>,
        verifier: Verifier,
        ids: Arc<IdGenerator>,
    ) -> AppState {
        AppState {
            // Every store call is timed and its failures counted, whatever the backend.
            store: Arc::new(crate::store::metered::MeteredStore::new(store)),
            registry,
            bus,
            verifier,
            ids,
            limits: Limits::default(),
            metrics: None,
            draining: Arc::new(AtomicBool::new(false)),
            demo: None,
            cors_origins: Vec::new(),
            limiter: shared::ratelimit::memory(),
            typing: Default::default(),
            held: Arc::new(tokio::sync::Semaphore::new(
                Limits::default().rate_limited_held_max,
            )),
            fanout: std::sync::OnceLock::new(),
            clock: None,
            notify: None,
            revocations: Arc::new(RevocationCheck::memory()),
            revocation_ttl: api::admin::AdminArgs::default().revocation_ttl,
        }
    }

    /// Replaces the in-process revocation list (embedded mode shares one with its gateway;
    /// distributed mode passes the Redis one) and sets how long a revoke is kept.
    pub fn with_revocations(mut self, check: Arc<RevocationCheck>, ttl: Duration) -> AppState {
        self.revocations = check;
        self.revocation_ttl = ttl;
        self
    }

    /// Serves membership, chats and recent messages from the caches of
    /// [`crate::store::cached`], current through the version tokens in `versions` (Redis in
    /// distributed mode, in process in embedded mode); nothing when they are off. Call before
    /// the first request.
    pub fn with_cache(
        mut self,
        versions: Arc<dyn crate::store::cached::versions::Versions>,
        args: &crate::store::cached::CacheArgs,
    ) -> AppState {
        if args.enabled() {
            self.store = Arc::new(crate::store::cached::CachedStore::new(
                self.store.clone(),
                versions,
                args,
            ));
        }
        self
    }

    /// Checks the clock before every send and in `/readyz` (distributed mode).
    pub fn with_clock(mut self, clock: Arc<crate::clock::ClockGuard>) -> AppState {
        self.clock = Some(clock);
        self
    }

    /// `Ok` while message ids may be drawn; else the 503 to answer.
    pub fn clock_ok(&self) -> Result<(), ApiError> {
        match &self.clock {
            Some(clock) => clock.check().map_err(|problem| ApiError::Unavailable {
                what: "message id clock",
                reason: problem.to_string(),
                retry_after: self.limits.retry_after,
            }),
            None => Ok(()),
        }
    }

    /// The fan-out of stored messages (its retry queue and notices live as long as the state).
    pub fn fanout(&self) -> &crate::fanout::Fanout {
        self.fanout.get_or_init(|| {
            crate::fanout::Fanout::new(
                crate::fanout::Backends {
                    store: self.store.clone(),
                    registry: self.registry.clone(),
                    bus: self.bus.clone(),
                    attempt_timeout: self.limits.fanout_timeout,
                    notify: self.notify.clone(),
                },
                self.limits.fanout_retry,
            )
        })
    }

    /// Queues push notifications for offline members of each stored message.
    pub fn with_notify(mut self, notifier: crate::notify::Notifier) -> AppState {
        self.notify = Some(notifier);
        self
    }

    /// Serves the demo page, `/config.json` and (with a signer) `POST /dev/token`.
    pub fn with_demo(mut self, demo: crate::web::Demo) -> AppState {
        self.demo = Some(Arc::new(demo));
        self
    }

    pub fn with_cors(mut self, origins: Vec<HeaderValue>) -> AppState {
        self.cors_origins = origins;
        self
    }

    /// Replaces the in-process rate limiter (distributed mode passes the Redis one).
    pub fn with_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> AppState {
        self.limiter = limiter;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> AppState {
        self.held = Arc::new(tokio::sync::Semaphore::new(limits.rate_limited_held_max));
        self.limits = limits;
        self
    }

    /// The 429 for a request over the rate limit `limit` (a [`crate::telemetry::RATE_LIMITS`]
    /// label), answered after [`shared::ratelimit::retry_after_held`]: held for up to its own
    /// retry-after, at most `limits.rate_limited_hold`, while fewer than
    /// `limits.rate_limited_held_max` are held (past that, at once).
    pub async fn rate_limited(
        &self,
        limit: &'static str,
        what: &'static str,
        retry_after: Duration,
    ) -> ApiError {
        crate::telemetry::rate_limited(limit);
        let retry_after = shared::ratelimit::retry_after_held(
            &self.held,
            retry_after,
            self.limits.rate_limited_hold,
            crate::telemetry::RATE_LIMITED_UNHELD_TOTAL,
        )
        .await;
        ApiError::RateLimited { what, retry_after }
    }

    pub fn with_metrics(mut self, handle: PrometheusHandle) -> AppState {
        self.metrics = Some(handle);
        self
    }
}

type S = Arc<AppState>;

/// The one route list: each handler's `#[utoipa::path]` gives both its axum route and its
/// operation in the OpenAPI document (`api::openapi`), so the two cannot drift apart.
pub fn route_list() -> OpenApiRouter<S> {
    OpenApiRouter::default()
        .routes(routes!(api::health::healthz))
        .routes(routes!(api::health::readyz))
        .routes(routes!(api::health::metrics))
        .routes(routes!(api::openapi::document))
        .routes(routes!(api::chats::create, api::chats::list))
        .routes(routes!(api::chats::get))
        .routes(routes!(api::chats::add_members))
        .routes(routes!(api::chats::remove_member, api::chats::set_role))
        .routes(routes!(api::messages::send, api::messages::history))
        .routes(routes!(api::messages::edit, api::messages::delete))
        .routes(routes!(api::messages::changes))
        .routes(routes!(api::typing::typing))
        .routes(routes!(api::receipts::read))
        .routes(routes!(api::receipts::delivered))
        .routes(routes!(api::receipts::receipts))
        .routes(routes!(api::push::push))
        .routes(routes!(api::presence::presence))
        .routes(routes!(api::admin::disconnect))
        .routes(routes!(api::admin::revoke))
        .routes(routes!(api::admin::nodes))
}

/// Every (method, path template) of the route list, from the document it builds.
pub fn routes() -> Vec<(Method, String)> {
    let (_, api) = route_list().split_for_parts();
    let doc = serde_json::to_value(&api).unwrap_or_default();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
            if let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) {
                out.push((method, path.clone()));
            }
        }
    }
    out
}

/// The router with all routes, limits and fallbacks.
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.request_body_bytes_max;
    let cors = cors_layer(&state.cors_origins);
    let (router, api) = route_list().split_for_parts();
    let document = api::openapi::finish(api, &state.limits);
    let document = api::openapi::Document(serde_json::to_vec(&document).unwrap_or_default().into());
    let state = Arc::new(state);
    let router = router
        .merge(crate::web::router(state.demo.is_some()))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(document))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(middleware::from_fn(observe));
    match cors {
        Some(cors) => router.layer(cors).with_state(state),
        None => router.with_state(state),
    }
}

/// CORS for pages on other origins that use the browser client. Tokens travel in the
/// `Authorization` header, never in cookies, so credentials are not allowed.
fn cors_layer(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
            .expose_headers([header::RETRY_AFTER, header::LOCATION])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Bounds every request by the configured deadline; a late request is answered 503.
async fn deadline(State(state): State<S>, mut req: Request, next: Next) -> Response {
    let limit = state.limits.request_timeout;
    req.extensions_mut()
        .insert(RequestDeadline(Instant::now() + limit));
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

/// Counts requests and their latency by route template (never by id) and status.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| crate::telemetry::UNMATCHED_ROUTE.to_owned());
    // Labels from a closed set only: a made-up method must not create a series.
    let method = crate::telemetry::method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_REQUEST_SECONDS, "method" => method, "route" => route.clone(), "status" => status.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting, lets in-flight
/// requests finish and returns, at the latest after `limits.shutdown_grace`. Each connection is
/// bounded by the header-read and keep-alive timeouts ([`crate::conn`]).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = state.limits.shutdown_grace;
    let timeouts = crate::conn::ConnTimeouts {
        header_read: state.limits.header_read_timeout,
        keep_alive: state.limits.keep_alive_timeout,
    };
    let draining = state.draining.clone();
    let addr = listener.local_addr()?;
    let router = app(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tracing::info!(%addr, "chat-api listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(crate::conn::serve(
                        stream,
                        router.clone(),
                        timeouts,
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(listener);
    tracing::info!(grace_ms = grace.as_millis() as u64, "chat-api draining");
    draining.store(true, Ordering::Relaxed);
    metrics::gauge!(crate::telemetry::DRAINING).set(1.0);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "requests still running at the shutdown deadline were cut off"
        );
    }
    Ok(())
}
