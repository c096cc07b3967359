//! Operations endpoints: liveness, readiness (store reachable, clock trusted, not draining) and
//! Prometheus metrics. Unauthenticated, as probes and scrapers expect.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;

/// `GET /healthz`: the process is serving.
#[utoipa::path(get, path = "/healthz", tag = "health", summary = "Liveness", security(()),
    responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store answers, the server is not draining and (distributed mode)
/// its clock can be trusted, else 503.
#[utoipa::path(get, path = "/readyz", tag = "health",
    summary = "Readiness: store reachable, clock trusted (distributed mode) and not draining", security(()),
    responses((status = 200, description = "ready"), (status = 503, description = "not ready", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn readyz(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let retry_after = state.limits.retry_after;
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable {
            what: "server",
            reason: "draining for shutdown".into(),
            retry_after,
        });
    }
    state.clock_ok()?;
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::store(e, retry_after))?;
    Ok(Json(json!({"status": "ready"})))
}

/// `GET /metrics`: Prometheus text format, when a recorder is installed.
#[utoipa::path(get, path = "/metrics", tag = "health", summary = "Prometheus metrics", security(()),
    responses((status = 200, description = "text exposition format", body = String, content_type = "text/plain"),
        (status = 404, description = "no metrics recorder in this process", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let handle = state.metrics.as_ref().ok_or(ApiError::NotFound)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
