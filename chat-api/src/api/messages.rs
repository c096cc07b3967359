//! Sending messages (durable and idempotent, then fanned out in real time, best effort) and
//! reading history with a cursor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shared::protocol::Message;
use shared::ratelimit::{check_fail_open, Decision};
use shared::telemetry::bucket;
use shared::Id;

use super::require_member;
use crate::app::{AppState, RequestDeadline};
use crate::auth::User;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::store::{Cursor, Insert};
use crate::telemetry::{limit, IDEMPOTENT_REPLAYS_TOTAL, MESSAGES_CREATED_TOTAL};

/// Set on the answer to a retried send that returned the stored original.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

#[derive(Debug, Deserialize)]
pub struct SendMessage {
    pub client_msg_id: String,
    pub body: String,
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub before: Option<Id>,
    pub after: Option<Id>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct HistoryPage {
    /// Ascending by message id.
    pub messages: Vec<Message>,
    /// More messages exist past this page in the direction of paging (older for
    /// `before`/latest, newer for `after`).
    pub has_more: bool,
    /// The `before` value for the next, older page: the oldest id of this page when `has_more`
    /// and the page went backwards (latest or `before`); otherwise null.
    pub next_before: Option<Id>,
    /// The `after` value for the next, newer page: the newest id of this page when `has_more`
    /// and the page went forwards (`after`); otherwise null.
    pub next_after: Option<Id>,
}

/// `POST /v1/chats/{chat_id}/messages`: 201 with the stored message once it is durable. A retry
/// with the same `client_msg_id` gets the same status and body, plus `Idempotent-Replayed: true`.
pub async fn send(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
    deadline: Option<Extension<RequestDeadline>>,
    ApiJson(req): ApiJson<SendMessage>,
) -> Result<Response, ApiError> {
    let limits = &state.limits;
    let id_chars = req.client_msg_id.chars().count();
    if id_chars == 0 || id_chars > limits.client_msg_id_chars_max {
        return Err(ApiError::validation(
            "client_msg_id",
            format!(
                "client_msg_id must be 1 to {} characters",
                limits.client_msg_id_chars_max
            ),
        ));
    }
    if req.client_msg_id.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "client_msg_id",
            "client_msg_id must not contain control characters",
        ));
    }
    if req.body.is_empty() || req.body.len() > limits.message_body_bytes_max {
        return Err(ApiError::validation(
            "body",
            format!(
                "body must be 1 to {} bytes of UTF-8 (got {})",
                limits.message_body_bytes_max,
                req.body.len()
            ),
        ));
    }
    if let Some(quota) = &limits.rate_messages {
        if let Decision::Limited { retry_after } =
            check_fail_open(&*state.limiter, bucket::MESSAGES, user.id(), quota).await
        {
            return Err(state
                .rate_limited(limit::USER_MESSAGES, "messages", retry_after)
                .await);
        }
    }
    require_member(&state, chat_id, user.id()).await?;
    state.clock_ok()?;

    let message_id = state.ids.next_id();
    // Tests hold a send here, between its id and its store write, to make concurrent sends
    // commit out of id order (`FAILPOINTS=send::after_id=1*return(MS)`).
    let held_ms = (|| {
        fail::fail_point!("send::after_id", |ms| ms
            .and_then(|ms| ms.parse::<u64>().ok()));
        None
    })();
    if let Some(ms) = held_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let message = Message {
        chat_id,
        message_id,
        sender_id: user.id().to_string(),
        client_msg_id: req.client_msg_id,
        body: req.body,
        sent_at_ms: message_id.unix_ms(),
    };
    // The write never commits after the request's deadline (where the store can tell): the
    // catch-up overlap covers a send only from its id to its deadline plus its fan-out.
    let deadline = match deadline {
        Some(Extension(RequestDeadline(at))) => at,
        None => Instant::now() + limits.request_timeout,
    };
    let inserted = state
        .store
        .insert_message_before(&message, deadline)
        .await
        .map_err(|e| ApiError::store(e, limits.retry_after))?;
    let (stored, replayed) = match inserted {
        Insert::Created(stored) => {
            metrics::counter!(MESSAGES_CREATED_TOTAL).increment(1);
            (stored, false)
        }
        Insert::Duplicate(original) => {
            metrics::counter!(IDEMPOTENT_REPLAYS_TOTAL).increment(1);
            // The first attempt may have stored the message and died before its fan-out (a
            // replica killed mid-request): deliver again. Clients deduplicate by message id.
            (original, true)
        }
    };
    // Stored: the fan-out runs to its own deadline even if the request's deadline cuts the
    // request meanwhile, so that every stored message gets its fan-out attempt.
    let fan_out = {
        let (state, stored) = (state.clone(), stored.clone());
        tokio::spawn(async move { deliver(&state, &stored).await })
    };
    let _ = fan_out.await;
    let mut response = (StatusCode::CREATED, Json(stored)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Real-time delivery to every member's sockets (the sender's other devices included). The
/// message is already durable, so a routing failure is never returned: it is retried in the
/// background and, failing that, the members are told to catch up (`crate::fanout`).
async fn deliver(state: &AppState, message: &Message) {
    state.fanout().deliver(message).await;
}

/// `GET /v1/chats/{chat_id}/messages?before=|after=&limit=`: one page, ascending.
pub async fn history(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limits = &state.limits;
    let cursor = match (q.before, q.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidQuery(
                "give `before` or `after`, not both".into(),
            ))
        }
        (Some(b), None) => Cursor::Before(b),
        (None, Some(a)) => Cursor::After(a),
        (None, None) => Cursor::Latest,
    };
    let limit = match q.limit {
        None => limits.page_size_default,
        Some(0) => return Err(ApiError::InvalidQuery("`limit` must be at least 1".into())),
        Some(n) => n.min(limits.page_size_max),
    };
    require_member(&state, chat_id, user.id()).await?;
    // One extra row tells whether another page exists.
    let mut messages = state
        .store
        .history(chat_id, cursor, limit + 1)
        .await
        .map_err(|e| ApiError::store(e, limits.retry_after))?;
    let has_more = messages.len() > limit;
    let (mut next_before, mut next_after) = (None, None);
    if has_more {
        match cursor {
            Cursor::After(_) => {
                messages.pop();
                next_after = messages.last().map(|m| m.message_id);
            }
            Cursor::Before(_) | Cursor::Latest => {
                messages.remove(0);
                next_before = messages.first().map(|m| m.message_id);
            }
        }
    }
    Ok(Json(HistoryPage {
        messages,
        has_more,
        next_before,
        next_after,
    }))
}
