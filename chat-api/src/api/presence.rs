//! `GET /v1/presence?user_ids=a,b`: whether users are online, and when they were last seen. Open
//! to any authenticated caller (users and services); presence is not scoped to shared chats.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::clean_user_ids;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiQuery;

#[derive(Debug, Deserialize)]
pub struct PresenceQuery {
    /// Comma-separated user ids.
    pub user_ids: String,
}

#[derive(Debug, Serialize)]
pub struct UserPresence {
    pub user_id: String,
    pub online: bool,
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PresenceList {
    /// In the order asked, duplicates removed.
    pub presence: Vec<UserPresence>,
}

pub async fn presence(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<PresenceQuery>,
) -> Result<Json<PresenceList>, ApiError> {
    let max = state.limits.presence_users_max;
    let ids: Vec<String> = q
        .user_ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() || ids.len() > max {
        return Err(ApiError::InvalidQuery(format!(
            "`user_ids` must list 1 to {max} comma-separated user ids"
        )));
    }
    let users = clean_user_ids("user_ids", ids)?;
    let presence = state
        .registry
        .presence(&users)
        .await
        .map_err(|e| ApiError::routing(e, state.limits.retry_after))?;
    Ok(Json(PresenceList {
        presence: presence
            .into_iter()
            .map(|p| UserPresence {
                user_id: p.user_id,
                online: p.online,
                last_seen_ms: p.last_seen_ms,
            })
            .collect(),
    }))
}
