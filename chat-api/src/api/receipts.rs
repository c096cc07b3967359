//! Read state: each member's read marker (`POST /v1/chats/{chat_id}/read`) and delivered marker
//! (`POST /v1/chats/{chat_id}/delivered`, which gateways call with their sockets' batched `ack`
//! frames), the receipts that tell the other members when one moves, the list of every member's
//! markers (`GET /v1/chats/{chat_id}/receipts`) and the unread counts of `GET /v1/chats`.
//!
//! A marker only moves forward, and never past the chat's `last_message_id` (a higher id is
//! clamped to it, so "mark everything read" may send any id at or above the newest). A marker
//! that moved is stored before the answer (204), then fanned out as a `read` or `delivered` frame
//! through the same routes and node streams as messages; receipts are best effort and are not
//! retried (the markers stay readable).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use shared::protocol::ServerFrame;
use shared::routing::fan_out;
use shared::Id;

use super::require_member;
use crate::app::AppState;
use crate::auth::User;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::store::{Chat, Marker, MessageStore, StoreError};
use crate::telemetry::{MARKERS_TOTAL, RECEIPT_FANOUT_ERRORS_TOTAL};

/// Chats with more members than this get no receipt broadcast: a `read` frame goes only to the
/// reader's own sockets (multi-device sync), a `delivered` frame to nobody; the markers stay
/// readable with `GET /v1/chats/{chat_id}/receipts`. Every member reading a new message costs
/// `members` frames each, `members²` in all: 10,000 frames for 100 members, a million for 1,000
/// (the member cap), which would dwarf the message's own fan-out.
pub const RECEIPTS_BROADCAST_MEMBERS_MAX: usize = 100;
/// The highest `unread_count` reported; above it the count is this with `unread_capped: true`.
pub const UNREAD_COUNT_MAX: usize = 99;
/// Unread counts computed at once for one `GET /v1/chats` page (each a bounded read).
pub const UNREAD_CONCURRENCY: usize = 8;

/// `POST /v1/chats/{chat_id}/read` and `/delivered`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MarkBody {
    pub message_id: Id,
}

/// One member's markers as `GET /v1/chats/{chat_id}/receipts` shows them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    pub user_id: String,
    pub read_up_to: Option<Id>,
    /// The delivered marker, or the read marker when that is higher (what was read was
    /// received).
    pub delivered_up_to: Option<Id>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptList {
    pub chat_id: Id,
    /// Every current member, sorted by user id; `null` markers were never set.
    pub receipts: Vec<Receipt>,
}

/// The caller's read state of one chat, as each `GET /v1/chats` item carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UnreadState {
    pub read_up_to: Option<Id>,
    /// Messages from other members above `read_up_to`, at most [`UNREAD_COUNT_MAX`].
    pub unread_count: usize,
    /// `true` when there may be more than `unread_count` (show "99+").
    pub unread_capped: bool,
}

/// `POST /v1/chats/{chat_id}/read`: moves the caller's read marker; 204.
#[utoipa::path(post, path = "/v1/chats/{chat_id}/read", tag = "receipts", summary = "Move your read marker in the chat forward",
    description = "A marker only moves forward: an id at or below it is accepted and changes nothing. An id above the chat's `last_message_id` is clamped to it (so any id at or above the newest marks everything read); in a chat without messages nothing is stored. When the marker moves, the chat's members (your other devices included) get a `read` frame; in chats of more than RECEIPTS_BROADCAST_MEMBERS_MAX members only your own devices do. 403: `not-a-member` for non-members and unknown chats alike, whatever the id (up to 2^64-1) and the store.",
    params(("chat_id" = Id, Path, description = "the chat")), request_body = MarkBody,
    responses((status = 204, description = "stored (or already at or past it)"),
        (status = 400, description = "invalid body, or `message_id` is not an id", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn read(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
    ApiJson(body): ApiJson<MarkBody>,
) -> Result<StatusCode, ApiError> {
    mark(&state, user.id(), chat_id, Marker::Read, body.message_id).await
}

/// `POST /v1/chats/{chat_id}/delivered`: moves the caller's delivered marker; 204. Gateways call
/// it with their sockets' coalesced `ack` frames; clients may call it directly.
#[utoipa::path(post, path = "/v1/chats/{chat_id}/delivered", tag = "receipts", summary = "Move your delivered marker in the chat forward",
    description = "What gateways call with their sockets' coalesced `ack` frames; clients may call it directly. The same rules as `/read`; when the marker moves, the other members get a `delivered` frame (none in chats of more than RECEIPTS_BROADCAST_MEMBERS_MAX members). 403: `not-a-member` for non-members and unknown chats alike, whatever the id (up to 2^64-1) and the store.",
    params(("chat_id" = Id, Path, description = "the chat")), request_body = MarkBody,
    responses((status = 204, description = "stored (or already at or past it)"),
        (status = 400, description = "invalid body, or `message_id` is not an id", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn delivered(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
    ApiJson(body): ApiJson<MarkBody>,
) -> Result<StatusCode, ApiError> {
    mark(
        &state,
        user.id(),
        chat_id,
        Marker::Delivered,
        body.message_id,
    )
    .await
}

async fn mark(
    state: &AppState,
    user: &str,
    chat_id: Id,
    marker: Marker,
    message_id: Id,
) -> Result<StatusCode, ApiError> {
    let retry = state.limits.retry_after;
    require_member(state, chat_id, user).await?;
    let chat = state
        .store
        .get_chat(chat_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::NotAMember)?;
    // A marker never passes the newest message: a client cannot mark unsent messages read.
    let Some(at) = chat.last_message_id.map(|last| message_id.min(last)) else {
        metrics::counter!(MARKERS_TOTAL, "kind" => marker.as_str(), "outcome" => crate::telemetry::marker_outcome::UNCHANGED)
            .increment(1);
        return Ok(StatusCode::NO_CONTENT);
    };
    let moved = state
        .store
        .advance_marker(chat_id, user, marker, at)
        .await
        .map_err(|e| ApiError::store(e, retry))?;
    let outcome = if moved {
        crate::telemetry::marker_outcome::MOVED
    } else {
        crate::telemetry::marker_outcome::UNCHANGED
    };
    metrics::counter!(MARKERS_TOTAL, "kind" => marker.as_str(), "outcome" => outcome).increment(1);
    if moved {
        broadcast(state, chat_id, user, marker, at).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Who gets the receipt of `reader`'s `marker`, given the chat's members: a `read` goes to every
/// member, the reader included (their other devices); a `delivered` to the other members; in a
/// chat above [`RECEIPTS_BROADCAST_MEMBERS_MAX`] members, a `read` only to the reader and a
/// `delivered` to no one.
pub fn receipt_recipients(members: Vec<String>, reader: &str, marker: Marker) -> Vec<String> {
    let large = members.len() > RECEIPTS_BROADCAST_MEMBERS_MAX;
    match (marker, large) {
        (Marker::Read, false) => members,
        (Marker::Read, true) => vec![reader.to_string()],
        (Marker::Delivered, false) => members.into_iter().filter(|m| m != reader).collect(),
        (Marker::Delivered, true) => Vec::new(),
    }
}

/// Fans the receipt out; a failure is counted and logged, never returned (the marker is stored).
async fn broadcast(state: &AppState, chat_id: Id, reader: &str, marker: Marker, at: Id) {
    let failed = |error: String| {
        metrics::counter!(RECEIPT_FANOUT_ERRORS_TOTAL, "kind" => marker.as_str()).increment(1);
        tracing::warn!(%chat_id, kind = marker.as_str(), %error, "receipt not delivered");
    };
    let members = match state.store.members(chat_id).await {
        Ok(m) => m,
        Err(e) => return failed(e.to_string()),
    };
    let recipients = receipt_recipients(members, reader, marker);
    if recipients.is_empty() {
        return;
    }
    let frame = match marker {
        Marker::Read => ServerFrame::Read {
            chat_id,
            user_id: reader.to_string(),
            message_id: at,
        },
        Marker::Delivered => ServerFrame::Delivered {
            chat_id,
            user_id: reader.to_string(),
            message_id: at,
        },
    };
    let sent = tokio::time::timeout(
        state.limits.fanout_timeout,
        fan_out(&state.registry, &state.bus, &recipients, &frame),
    )
    .await;
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failed(e.to_string()),
        Err(_) => failed("timed out".into()),
    }
}

/// `GET /v1/chats/{chat_id}/receipts`: every member's markers (members only).
#[utoipa::path(get, path = "/v1/chats/{chat_id}/receipts", tag = "receipts", summary = "Every member's read and delivered markers",
    description = "403: `not-a-member` for non-members and unknown chats alike, whatever the id (up to 2^64-1) and the store.", params(("chat_id" = Id, Path, description = "the chat")),
    responses((status = 200, description = "markers", body = ReceiptList),
        (status = 400, description = "chat_id is not an id", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn receipts(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
) -> Result<Json<ReceiptList>, ApiError> {
    let retry = state.limits.retry_after;
    require_member(&state, chat_id, user.id()).await?;
    let members = state
        .store
        .members(chat_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?;
    let mut markers = state
        .store
        .markers(chat_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .into_iter()
        .map(|m| (m.user_id.clone(), m))
        .collect::<std::collections::HashMap<_, _>>();
    // Current members only: a former member's markers stay stored but are not shown.
    let receipts = members
        .into_iter()
        .map(|user_id| {
            let m = markers.remove(&user_id);
            let read_up_to = m.as_ref().and_then(|m| m.read_up_to);
            let delivered = m.as_ref().and_then(|m| m.delivered_up_to);
            Receipt {
                user_id,
                read_up_to,
                delivered_up_to: delivered.max(read_up_to),
            }
        })
        .collect();
    Ok(Json(ReceiptList { chat_id, receipts }))
}

/// The caller's read state of each chat of a `GET /v1/chats` page, in the page's order. A chat
/// whose `last_message_id` is not above the marker costs nothing beyond the markers' point
/// reads; the others one bounded read of [`UNREAD_COUNT_MAX`] + 1 messages each,
/// [`UNREAD_CONCURRENCY`] at a time.
pub async fn unread_states(
    state: &AppState,
    user: &str,
    chats: &[Chat],
) -> Result<Vec<UnreadState>, ApiError> {
    let retry = state.limits.retry_after;
    let ids: Vec<Id> = chats.iter().map(|c| c.chat_id).collect();
    let markers = state
        .store
        .read_markers(user, &ids)
        .await
        .map_err(|e| ApiError::store(e, retry))?;
    let counts: Vec<_> = chats
        .iter()
        .map(|chat| {
            unread_of(
                state.store.clone(),
                user.to_string(),
                chat.chat_id,
                chat.last_message_id,
                markers.get(&chat.chat_id).copied(),
            )
        })
        .collect();
    futures_util::stream::iter(counts)
        .buffered(UNREAD_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|e| ApiError::store(e, retry))
}

/// One chat's read state: a bounded count only when its last message is above the marker.
async fn unread_of(
    store: Arc<dyn MessageStore>,
    user: String,
    chat_id: Id,
    last_message_id: Option<Id>,
    read_up_to: Option<Id>,
) -> Result<UnreadState, StoreError> {
    let behind = match (last_message_id, read_up_to) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(last), Some(read)) => last > read,
    };
    if !behind {
        return Ok(UnreadState {
            read_up_to,
            unread_count: 0,
            unread_capped: false,
        });
    }
    let unread = store
        .count_unread(chat_id, &user, read_up_to, UNREAD_COUNT_MAX + 1)
        .await?;
    Ok(UnreadState {
        read_up_to,
        unread_count: unread.count.min(UNREAD_COUNT_MAX),
        unread_capped: unread.count > UNREAD_COUNT_MAX || !unread.complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("u{i}")).collect()
    }

    #[test]
    fn receipts_go_to_members_and_the_readers_devices_up_to_the_size_limit() {
        let small = members(RECEIPTS_BROADCAST_MEMBERS_MAX);
        assert_eq!(
            receipt_recipients(small.clone(), "u1", Marker::Read),
            small,
            "a read goes to everyone, the reader's other devices included"
        );
        let others = receipt_recipients(small.clone(), "u1", Marker::Delivered);
        assert_eq!(others.len(), small.len() - 1);
        assert!(!others.contains(&"u1".to_string()));

        let large = members(RECEIPTS_BROADCAST_MEMBERS_MAX + 1);
        assert_eq!(
            receipt_recipients(large.clone(), "u1", Marker::Read),
            ["u1"]
        );
        assert!(receipt_recipients(large, "u1", Marker::Delivered).is_empty());
    }
}
