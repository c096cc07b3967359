//! HTTP handlers, one module per domain, and the checks they share.

pub mod admin;
pub mod chats;
pub mod health;
pub mod messages;
pub mod openapi;
pub mod presence;
pub mod push;
pub mod receipts;
pub mod typing;

use serde::Serialize;
use shared::ids::validate_user_id;
use shared::Id;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::Chat;

/// A chat as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatView {
    pub chat_id: Id,
    pub title: Option<String>,
    pub created_by: String,
    pub created_at_ms: u64,
    pub last_message_id: Option<Id>,
    /// The newest change (edit or delete) of the chat's messages: the change cursor of
    /// catch-up (`GET /v1/chats/{chat_id}/changes`). Null before the first change.
    pub last_change_id: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// The members holding `admin` (the owner is `created_by`); only where members are shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admins: Option<Vec<String>>,
}

impl ChatView {
    pub fn new(chat: Chat, members: Option<Vec<String>>) -> ChatView {
        ChatView {
            chat_id: chat.chat_id,
            title: chat.title,
            created_by: chat.created_by,
            created_at_ms: chat.created_at_ms,
            last_message_id: chat.last_message_id,
            last_change_id: chat.last_change_id,
            members,
            admins: None,
        }
    }

    pub fn with_admins(mut self, admins: Vec<String>) -> ChatView {
        self.admins = Some(admins);
        self
    }
}

/// Fails with `not-a-member` unless `user` is a member of `chat_id`. An unknown chat gets the
/// same answer, so that chat ids cannot be probed.
pub async fn require_member(state: &AppState, chat_id: Id, user: &str) -> Result<(), ApiError> {
    let member = state
        .store
        .is_member(chat_id, user)
        .await
        .map_err(|e| ApiError::store(e, state.limits.retry_after))?;
    if member {
        Ok(())
    } else {
        Err(ApiError::NotAMember)
    }
}

/// The members of `chat_id`, after checking that `user` is one of them (`not-a-member`
/// otherwise, an unknown chat included): one store read answers both the check and the
/// recipients of a fan-out.
pub async fn members_of(
    state: &AppState,
    chat_id: Id,
    user: &str,
) -> Result<Vec<String>, ApiError> {
    let members = state
        .store
        .members(chat_id)
        .await
        .map_err(|e| ApiError::store(e, state.limits.retry_after))?;
    if members.iter().any(|m| m == user) {
        Ok(members)
    } else {
        Err(ApiError::NotAMember)
    }
}

/// Validates user ids and removes duplicates, keeping the first occurrence's order.
pub fn clean_user_ids(field: &'static str, ids: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        validate_user_id(&id)
            .map_err(|e| ApiError::validation(field, format!("user id {id:?}: {e}")))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}
