//! `/v1/admin/…`: operators' tools, for service tokens with the `admin` scope. Close a user's
//! sockets on every gateway, revoke a user's tokens (a per-user not-before, see
//! `shared::revocation`), and list the live gateway nodes with their socket counts.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use shared::close::CloseCode;
use shared::config::parse_nonzero_duration;
use shared::ids::{now_unix_ms, validate_user_id};
use shared::routing::{close_user_sockets, RoutingError};

use crate::app::AppState;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::telemetry::ADMIN_ACTIONS_TOTAL;

/// Settings of the admin API.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// How long a revoke is kept (`POST /v1/admin/users/{user_id}/revoke`): at least the longest
    /// lifetime of the tokens your issuer mints, or a revoked token becomes usable again when its
    /// revoke expires before it does.
    #[arg(long, env = "REVOCATION_TTL", default_value = "30d", value_parser = parse_nonzero_duration)]
    pub revocation_ttl: Duration,
}

impl Default for AdminArgs {
    fn default() -> Self {
        AdminArgs {
            revocation_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Disconnected {
    pub user_id: String,
    /// Gateway nodes told to close the user's sockets (every live node).
    pub nodes: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Revoked {
    pub user_id: String,
    /// Unix seconds: the user's tokens with an `iat` below this (or none) are refused.
    pub not_before: u64,
    /// Gateway nodes told to close the user's sockets (every live node).
    pub nodes: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub node_id: String,
    /// 63-bit random number of this boot, as a decimal string (like ids).
    pub incarnation: String,
    /// `null` until the node's first report.
    pub sockets: Option<u64>,
    pub users: Option<u64>,
    pub reported_at_ms: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
    /// Sockets on all listed nodes.
    pub sockets: u64,
}

fn user_id(raw: String) -> Result<String, ApiError> {
    validate_user_id(&raw).map_err(|e| ApiError::validation("user_id", e.to_string()))?;
    Ok(raw)
}

/// Tells every live node to close `user`'s sockets, within the fan-out deadline.
async fn close_everywhere(
    state: &AppState,
    user: &str,
    code: CloseCode,
    not_before: Option<u64>,
) -> Result<usize, ApiError> {
    let limits = &state.limits;
    tokio::time::timeout(
        limits.fanout_timeout,
        close_user_sockets(&state.registry, &state.bus, user, code, not_before),
    )
    .await
    .map_err(|_| ApiError::routing(RoutingError::Timeout, limits.retry_after))?
    .map_err(|e| ApiError::routing(e, limits.retry_after))
}

/// `POST /v1/admin/users/{user_id}/disconnect`: every socket of the user closes with 4104 (the
/// client may reconnect after a backoff; the token stays good).
#[utoipa::path(post, path = "/v1/admin/users/{user_id}/disconnect", tag = "admin",
    summary = "Close every socket of a user on every gateway (service scope `admin`)",
    description = "Every live gateway node closes the user's sockets with close code 4104 (`disconnected by an operator`: the client may reconnect after a backoff; its token stays good), within about a second.",
    params(("user_id" = String, Path, description = "the user")),
    responses((status = 202, description = "handed to every live gateway node", body = Disconnected),
        (status = 403, description = "user token or missing scope", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "bad user id", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn disconnect(
    State(state): State<Arc<AppState>>,
    Admin(admin): Admin,
    ApiPath(user): ApiPath<String>,
) -> Result<(StatusCode, Json<Disconnected>), ApiError> {
    let user = user_id(user)?;
    let nodes = close_everywhere(&state, &user, CloseCode::Disconnected, None).await?;
    metrics::counter!(ADMIN_ACTIONS_TOTAL, "action" => crate::telemetry::admin_action::DISCONNECT)
        .increment(1);
    tracing::info!(admin = %admin.subject, %user, nodes, "admin disconnect");
    Ok((
        StatusCode::ACCEPTED,
        Json(Disconnected {
            user_id: user,
            nodes,
        }),
    ))
}

/// `POST /v1/admin/users/{user_id}/revoke`: the user's tokens issued up to now (their `iat` is at
/// most this second, or missing) are refused from now on for connecting, refreshing and HTTP, and
/// every socket of the user closes with 4205.
///
/// `iat` has whole seconds, so the not-before is the next second: a token issued in the same
/// second as the revoke, before or after it, is refused too (mint the new one a second later).
#[utoipa::path(post, path = "/v1/admin/users/{user_id}/revoke", tag = "admin",
    summary = "Revoke a user's tokens issued up to now and close their sockets (service scope `admin`)",
    description = "From now on, the user's tokens with an `iat` below `not_before` (the second after this one), or without `iat`, are refused for connecting (401), refreshing (`invalid_token`) and HTTP (401); every socket of the user closes with 4205 (`token revoked`: reconnect only with a new token). Applies at once on every gateway and on the replica that answers, and within REVOCATION_CACHE_TTL on other replicas; kept for REVOCATION_TTL. A retry revokes again from its own time.",
    params(("user_id" = String, Path, description = "the user")),
    responses((status = 200, description = "revoked; sockets closing", body = Revoked),
        (status = 403, description = "user token or missing scope", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "bad user id", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Admin(admin): Admin,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Revoked>, ApiError> {
    let user = user_id(user)?;
    let not_before = now_unix_ms() / 1000 + 1;
    state
        .revocations
        .revoke(&user, not_before, state.revocation_ttl)
        .await
        .map_err(|e| ApiError::Unavailable {
            what: "revocation store",
            reason: e.to_string(),
            retry_after: state.limits.retry_after,
        })?;
    metrics::counter!(ADMIN_ACTIONS_TOTAL, "action" => crate::telemetry::admin_action::REVOKE)
        .increment(1);
    tracing::info!(admin = %admin.subject, %user, not_before, "admin revoke");
    // Stored: from here on every process refuses the old tokens (within its cache TTL). The
    // sockets open now are closed through the nodes, which also apply the revoke at once.
    let nodes = close_everywhere(&state, &user, CloseCode::TokenRevoked, Some(not_before)).await?;
    Ok(Json(Revoked {
        user_id: user,
        not_before,
        nodes,
    }))
}

/// `GET /v1/admin/nodes`: the live gateway nodes, their incarnations and last reported counts.
#[utoipa::path(get, path = "/v1/admin/nodes", tag = "admin",
    summary = "Live gateway nodes with their incarnations and socket counts (service scope `admin`)",
    description = "Counts are each node's last report (every second); `null` before a node's first.",
    responses((status = 200, description = "live nodes", body = NodeList),
        (status = 403, description = "user token or missing scope", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn nodes(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
) -> Result<Json<NodeList>, ApiError> {
    let limits = &state.limits;
    let statuses = tokio::time::timeout(limits.fanout_timeout, state.registry.node_statuses())
        .await
        .map_err(|_| ApiError::routing(RoutingError::Timeout, limits.retry_after))?
        .map_err(|e| ApiError::routing(e, limits.retry_after))?;
    let nodes: Vec<NodeView> = statuses
        .into_iter()
        .map(|s| NodeView {
            node_id: s.node_id,
            incarnation: s.incarnation.to_string(),
            sockets: s.load.map(|(l, _)| l.sockets),
            users: s.load.map(|(l, _)| l.users),
            reported_at_ms: s.load.map(|(_, at)| at),
        })
        .collect();
    let sockets = nodes.iter().filter_map(|n| n.sockets).sum();
    Ok(Json(NodeList { nodes, sockets }))
}
