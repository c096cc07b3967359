//! Chats and their members: create, list the caller's chats, read one, add and remove members.
//!
//! Membership rules: only members see a chat or its members, and only members add members. A
//! member may always remove itself (leave). Roles: the creator is the `owner`; owners grant and
//! revoke `admin`. Owners remove anyone; admins remove plain members (not the owner, not other
//! admins). Removing a non-member succeeds (204) so that retries are harmless. A removed member's
//! sockets get `chat_removed`, and nothing of the chat after it.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use shared::ids::now_unix_ms;
use shared::Id;

use super::{clean_user_ids, require_member, ChatView};
use crate::app::AppState;
use crate::auth::User;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::store::{Chat, Role};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateChat {
    pub members: Vec<String>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AddMembers {
    pub user_ids: Vec<String>,
}

/// The most chats one `GET /v1/chats` page holds, and its default size: a user with fewer chats
/// gets them all in one answer.
pub const CHATS_PAGE_MAX: usize = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChatListQuery {
    /// Chats with ids above this one (the previous page's `next_after`).
    pub after: Option<Id>,
    /// Page size.
    pub limit: Option<usize>,
}

/// One chat of a `GET /v1/chats` page: the chat and the caller's read state of it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatListItem {
    #[serde(flatten)]
    pub chat: ChatView,
    #[serde(flatten)]
    pub unread: super::receipts::UnreadState,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatList {
    /// This page's chats, newest activity first.
    pub chats: Vec<ChatListItem>,
    /// More chats exist: ask again with `after=next_after`.
    pub has_more: bool,
    /// The highest chat id of this page: the cursor of the next one (absent when no more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<Id>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SetRole {
    pub role: Role,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberRole {
    pub chat_id: Id,
    pub user_id: String,
    pub role: Role,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberList {
    pub chat_id: Id,
    pub members: Vec<String>,
}

/// `POST /v1/chats`: the caller creates a chat and becomes a member.
#[utoipa::path(post, path = "/v1/chats", tag = "chats", summary = "Create a chat; the caller becomes a member",
    request_body = CreateChat,
    responses((status = 201, description = "created", body = ChatView),
        (status = 400, description = "invalid body", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "service token", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = crate::error::Problem, content_type = "application/problem+json"), (status = 422, description = "bad user id, title or too many members", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiJson(req): ApiJson<CreateChat>,
) -> Result<Response, ApiError> {
    let limits = &state.limits;
    if let Some(t) = &req.title {
        let chars = t.chars().count();
        if chars == 0 || chars > limits.title_chars_max {
            return Err(ApiError::validation(
                "title",
                format!("title must be 1 to {} characters", limits.title_chars_max),
            ));
        }
    }
    if req.members.len() > limits.members_per_chat_max {
        return Err(too_many_members("members", limits.members_per_chat_max));
    }
    let mut members = clean_user_ids("members", req.members)?;
    if !members.iter().any(|m| m == user.id()) {
        members.insert(0, user.id().to_string());
    }
    if members.len() > limits.members_per_chat_max {
        return Err(too_many_members("members", limits.members_per_chat_max));
    }
    let chat = Chat {
        chat_id: state.ids.next_id(),
        title: req.title,
        created_by: user.id().to_string(),
        created_at_ms: now_unix_ms(),
        last_message_id: None,
        last_change_id: None,
    };
    state
        .store
        .create_chat(&chat, &members)
        .await
        .map_err(|e| ApiError::store(e, limits.retry_after))?;
    members.sort();
    let location = format!("/v1/chats/{}", chat.chat_id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(ChatView::new(chat, Some(members)).with_admins(Vec::new())),
    )
        .into_response())
}

fn too_many_members(field: &'static str, max: usize) -> ApiError {
    ApiError::validation(
        field,
        format!("a chat may have at most {max} members (the creator included)"),
    )
}

/// `GET /v1/chats?after=&limit=`: one page of the caller's chats, each with `last_message_id` and
/// the caller's read state (`read_up_to`, `unread_count`, `unread_capped`).
/// Pages cover ascending ranges of chat ids (so new activity never moves a chat between pages);
/// inside a page, newest activity first. Each page reads at most `limit + 1` chats, and an
/// unread count only for chats with messages above the caller's marker (bounded reads).
#[utoipa::path(get, path = "/v1/chats", tag = "chats", summary = "One page of the caller's chats",
    description = "Pages cover ascending ranges of chat ids (new activity never moves a chat to another page); inside a page, newest activity first. While `has_more`, ask again with `after=next_after`. Each chat carries your read state: `read_up_to`, `unread_count` (capped) and `unread_capped`.",
    params(ChatListQuery),
    responses((status = 200, description = "chats", body = ChatList),
        (status = 400, description = "a bad cursor or limit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "service token", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiQuery(q): ApiQuery<ChatListQuery>,
) -> Result<Json<ChatList>, ApiError> {
    let limit = match q.limit {
        None => CHATS_PAGE_MAX,
        Some(0) => return Err(ApiError::InvalidQuery("`limit` must be at least 1".into())),
        Some(n) => n.min(CHATS_PAGE_MAX),
    };
    // One extra chat tells whether another page exists.
    let mut chats = state
        .store
        .user_chats(user.id(), q.after, limit + 1)
        .await
        .map_err(|e| ApiError::store(e, state.limits.retry_after))?;
    let has_more = chats.len() > limit;
    if has_more {
        // The extra one is the highest chat id, wherever activity placed it.
        if let Some(i) = (0..chats.len()).max_by_key(|&i| chats[i].chat_id) {
            chats.remove(i);
        }
    }
    let next_after = has_more
        .then(|| chats.iter().map(|c| c.chat_id).max())
        .flatten();
    let unread = super::receipts::unread_states(&state, user.id(), &chats).await?;
    Ok(Json(ChatList {
        chats: chats
            .into_iter()
            .zip(unread)
            .map(|(c, unread)| ChatListItem {
                chat: ChatView::new(c, None),
                unread,
            })
            .collect(),
        has_more,
        next_after,
    }))
}

/// `GET /v1/chats/{chat_id}`: the chat with its members.
#[utoipa::path(get, path = "/v1/chats/{chat_id}", tag = "chats", summary = "A chat with its members",
    description = "403: `not-a-member` for non-members and unknown chats alike, whatever the id (up to 2^64-1) and the store.", params(("chat_id" = Id, Path, description = "the chat")),
    responses((status = 200, description = "chat", body = ChatView),
        (status = 400, description = "chat_id is not an id", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
) -> Result<Json<ChatView>, ApiError> {
    let retry = state.limits.retry_after;
    require_member(&state, chat_id, user.id()).await?;
    let chat = state
        .store
        .get_chat(chat_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::NotAMember)?;
    let members = state
        .store
        .members(chat_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?;
    let admins = state
        .store
        .admins(chat_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?;
    Ok(Json(ChatView::new(chat, Some(members)).with_admins(admins)))
}

/// `POST /v1/chats/{chat_id}/members`: a member adds users; answers the new member list.
#[utoipa::path(post, path = "/v1/chats/{chat_id}/members", tag = "chats", summary = "Add members (members only)",
    description = "403: `not-a-member` for non-members and unknown chats alike, whatever the id (up to 2^64-1) and the store.", params(("chat_id" = Id, Path, description = "the chat")), request_body = AddMembers,
    responses((status = 200, description = "the new member list", body = MemberList),
        (status = 400, description = "invalid body", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "bad user id or too many members", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn add_members(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
    ApiJson(req): ApiJson<AddMembers>,
) -> Result<Json<MemberList>, ApiError> {
    let limits = &state.limits;
    if req.user_ids.is_empty() {
        return Err(ApiError::validation(
            "user_ids",
            "give at least one user id",
        ));
    }
    if req.user_ids.len() > limits.members_per_chat_max {
        return Err(too_many_members("user_ids", limits.members_per_chat_max));
    }
    let new = clean_user_ids("user_ids", req.user_ids)?;
    require_member(&state, chat_id, user.id()).await?;
    let current = state
        .store
        .members(chat_id)
        .await
        .map_err(|e| ApiError::store(e, limits.retry_after))?;
    let mut all: HashSet<&str> = current.iter().map(String::as_str).collect();
    all.extend(new.iter().map(String::as_str));
    // Concurrent additions through other replicas can overshoot by what they add at once.
    if all.len() > limits.members_per_chat_max {
        return Err(too_many_members("user_ids", limits.members_per_chat_max));
    }
    state
        .store
        .add_members(chat_id, &new)
        .await
        .map_err(|e| ApiError::store(e, limits.retry_after))?;
    let members = state
        .store
        .members(chat_id)
        .await
        .map_err(|e| ApiError::store(e, limits.retry_after))?;
    Ok(Json(MemberList { chat_id, members }))
}

/// `DELETE /v1/chats/{chat_id}/members/{user_id}`: leave, or (an owner or admin) remove a
/// member. The removed member's sockets get `chat_removed`.
#[utoipa::path(delete, path = "/v1/chats/{chat_id}/members/{user_id}", tag = "chats",
    summary = "Leave the chat, or (an owner or admin) remove a member",
    description = "Idempotent: removing a non-member answers 204 too. Admins remove plain members only; the owner removes anyone. The removed member's sockets get `chat_removed`.",
    params(("chat_id" = Id, Path, description = "the chat"), ("user_id" = String, Path, description = "the member")),
    responses((status = 204, description = "removed"),
        (status = 403, description = "not a member (`not-a-member`), or not allowed to remove this member (`forbidden`)", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath((chat_id, target)): ApiPath<(Id, String)>,
) -> Result<StatusCode, ApiError> {
    let retry = state.limits.retry_after;
    let role = state
        .store
        .role(chat_id, user.id())
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::NotAMember)?;
    let leaving = target == user.id();
    if !leaving {
        if !role.moderates() {
            return Err(ApiError::Forbidden(
                "only an owner or admin may remove other members; anyone may remove themself"
                    .into(),
            ));
        }
        let target_role = state
            .store
            .role(chat_id, &target)
            .await
            .map_err(|e| ApiError::store(e, retry))?;
        if role == Role::Admin && matches!(target_role, Some(Role::Owner | Role::Admin)) {
            return Err(ApiError::Forbidden(
                "an admin may remove plain members only; the owner removes admins".into(),
            ));
        }
    }
    let removed = state
        .store
        .remove_member(chat_id, &target)
        .await
        .map_err(|e| ApiError::store(e, retry))?;
    if removed {
        if !leaving {
            metrics::counter!(crate::telemetry::MEMBERS_REMOVED_TOTAL).increment(1);
        }
        // Fan-outs read the members when they start, so nothing of the chat that starts after
        // the removal reaches the removed member; its sockets (on every device) learn why.
        let frame = shared::protocol::ServerFrame::ChatRemoved { chat_id };
        let state = state.clone();
        let task = tokio::spawn(async move {
            state
                .fanout()
                .deliver_frame(chat_id, chat_id, frame, Some(vec![target]))
                .await
        });
        let _ = task.await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/chats/{chat_id}/members/{user_id}` with `{"role": "admin" | "member"}`: an owner
/// grants or revokes `admin`; 200 with the member's role. The owner's own role cannot change
/// (409), and `owner` cannot be granted (422).
#[utoipa::path(patch, path = "/v1/chats/{chat_id}/members/{user_id}", tag = "chats",
    summary = "Grant or revoke admin (the owner only)", params(("chat_id" = Id, Path, description = "the chat"), ("user_id" = String, Path, description = "the member")), request_body = SetRole,
    responses((status = 200, description = "the member's role", body = MemberRole),
        (status = 400, description = "invalid body", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member (`not-a-member`) or not the owner (`forbidden`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "the user is not a member (`member-not-found`)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the owner's role cannot change (`conflict`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "role other than admin or member", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn set_role(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath((chat_id, target)): ApiPath<(Id, String)>,
    ApiJson(req): ApiJson<SetRole>,
) -> Result<Json<MemberRole>, ApiError> {
    let retry = state.limits.retry_after;
    if req.role == Role::Owner {
        return Err(ApiError::validation(
            "role",
            "role must be \"admin\" or \"member\"; a chat's owner is its creator",
        ));
    }
    let role = state
        .store
        .role(chat_id, user.id())
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::NotAMember)?;
    if role != Role::Owner {
        return Err(ApiError::Forbidden(
            "only the chat's owner may grant or revoke admin".into(),
        ));
    }
    let current = state
        .store
        .role(chat_id, &target)
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::MemberNotFound)?;
    if current == Role::Owner {
        return Err(ApiError::Conflict("the owner's role cannot change".into()));
    }
    if current != req.role {
        let found = state
            .store
            .set_role(chat_id, &target, req.role)
            .await
            .map_err(|e| ApiError::store(e, retry))?;
        if !found {
            return Err(ApiError::MemberNotFound);
        }
    }
    Ok(Json(MemberRole {
        chat_id,
        user_id: target,
        role: req.role,
    }))
}
