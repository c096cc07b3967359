//! `POST /v1/push`: backend services send an event to users' sockets (service tokens with the
//! `push` scope only). Delivery is real-time only; nothing is stored.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use shared::protocol::ServerFrame;
use shared::routing::fan_out;

use super::clean_user_ids;
use crate::app::AppState;
use crate::auth::Pusher;
use crate::error::ApiError;
use crate::extract::ApiJson;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PushRequest {
    pub user_ids: Vec<String>,
    /// Any JSON value; delivered as is in an `event` frame.
    pub event: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PushAccepted {
    /// Recipients that had a live route when the event was handed to their gateway nodes.
    pub recipients_online: usize,
}

#[utoipa::path(post, path = "/v1/push", tag = "push", summary = "Push an event to users' sockets (service scope `push`)",
    request_body = PushRequest,
    responses((status = 202, description = "handed to gateways", body = PushAccepted),
        (status = 403, description = "user token or missing scope", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "bad user ids", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn push(
    State(state): State<Arc<AppState>>,
    Pusher(service): Pusher,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<(StatusCode, Json<PushAccepted>), ApiError> {
    let limits = &state.limits;
    if req.user_ids.is_empty() || req.user_ids.len() > limits.push_users_max {
        return Err(ApiError::validation(
            "user_ids",
            format!("give 1 to {} user ids", limits.push_users_max),
        ));
    }
    let users = clean_user_ids("user_ids", req.user_ids)?;
    let frame = ServerFrame::Event { event: req.event };
    // Here delivery is the whole request, so a routing failure is the answer (503).
    let report = tokio::time::timeout(
        limits.fanout_timeout,
        fan_out(&state.registry, &state.bus, &users, &frame),
    )
    .await
    .map_err(|_| ApiError::routing(shared::routing::RoutingError::Timeout, limits.retry_after))?
    .map_err(|e| ApiError::routing(e, limits.retry_after))?;
    metrics::counter!(crate::telemetry::PUSH_EVENTS_TOTAL).increment(1);
    tracing::debug!(service = %service.subject, recipients = users.len(),
        online = report.recipients_online, "push delivered");
    Ok((
        StatusCode::ACCEPTED,
        Json(PushAccepted {
            recipients_online: report.recipients_online,
        }),
    ))
}
