//! `GET /v1/presence?user_ids=a,b`: whether users are online, and when they were last seen. A user
//! reads only themselves and their co-members (`crate::presence`: users sharing a chat of at
//! most `API_PRESENCE_MAX_CHAT_MEMBERS` members); anyone else reads as `unknown`, exactly like a
//! user who does not exist, so the answer tells nothing about strangers. Services (tokens with a
//! scope) read everyone: they act for the backend, which knows every chat.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::clean_user_ids;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::presence::co_members;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// Comma-separated user ids.
    pub user_ids: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserPresence {
    pub user_id: String,
    /// `online`, `offline`, or `unknown` (not shared with the caller).
    pub status: &'static str,
    /// `false` when unknown.
    pub online: bool,
    /// `None` when online or unknown.
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceList {
    /// In the order asked, duplicates removed.
    pub presence: Vec<UserPresence>,
}

#[utoipa::path(get, path = "/v1/presence", tag = "presence", summary = "Online state of users",
    description = "A user reads only themselves and users sharing a chat of at most API_PRESENCE_MAX_CHAT_MEMBERS members with them (among their first API_PRESENCE_MAX_CHATS chats); anyone else reads as `unknown`, like a user who does not exist. Service tokens read everyone. Changes are also pushed to co-members' sockets as `presence` frames (docs/PROTOCOL.md).",
    params(PresenceQuery),
    responses((status = 200, description = "presence", body = PresenceList),
        (status = 400, description = "missing or too many ids", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn presence(
    State(state): State<Arc<AppState>>,
    caller: Caller,
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
    let caller = &caller.0;
    // Services see everyone; a user only those sharing presence with them.
    let visible = if caller.is_service() {
        None
    } else {
        Some(
            co_members(&*state.store, &caller.subject, state.limits.presence)
                .await
                .map_err(|e| ApiError::store(e, state.limits.retry_after))?,
        )
    };
    let shown = |u: &String| {
        visible
            .as_ref()
            .is_none_or(|v| *u == caller.subject || v.contains(u))
    };
    let asked: Vec<String> = users.iter().filter(|u| shown(u)).cloned().collect();
    let mut known = state
        .registry
        .presence(&asked)
        .await
        .map_err(|e| ApiError::routing(e, state.limits.retry_after))?
        .into_iter();
    Ok(Json(PresenceList {
        presence: users
            .into_iter()
            .map(
                |user_id| match shown(&user_id).then(|| known.next()).flatten() {
                    Some(p) => UserPresence {
                        user_id: p.user_id,
                        status: if p.online { "online" } else { "offline" },
                        online: p.online,
                        last_seen_ms: p.last_seen_ms,
                    },
                    None => UserPresence {
                        user_id,
                        status: "unknown",
                        online: false,
                        last_seen_ms: None,
                    },
                },
            )
            .collect(),
    }))
}
