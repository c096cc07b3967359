//! Sending messages (durable and idempotent, then fanned out in real time, best effort), reading
//! history with a cursor, editing and deleting messages, and paging a chat's changes (the
//! catch-up of edits and deletes, docs/PROTOCOL.md "Edit and delete").

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shared::protocol::{Message, ServerFrame};
use shared::routing::NodeGroups;
use shared::Id;

use super::{members_of, require_member};
use crate::app::{AppState, RequestDeadline};
use crate::auth::{User, Writer};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::store::{Change, Changed, Cursor, Insert};
use crate::telemetry::{IDEMPOTENT_REPLAYS_TOTAL, MESSAGES_CREATED_TOTAL};

/// Set on the answer to a retried send that returned the stored original.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SendMessage {
    pub client_msg_id: String,
    pub body: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only messages with a smaller id: the `limit` newest of them (paging back; the previous
    /// page's `next_before`).
    pub before: Option<Id>,
    /// Only messages with a greater id: the `limit` oldest of them (paging forward, catch-up;
    /// the previous page's `next_after`); not together with `before`.
    pub after: Option<Id>,
    /// Page size.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EditMessage {
    pub body: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Changes with a change id above this one; all when absent.
    pub after: Option<Id>,
    /// Page size.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangesPageView {
    /// The changed messages in their current state (deleted ones as tombstones), in change
    /// order, each message once.
    pub messages: Vec<Message>,
    /// More changes may exist: ask again with `after=next_after`.
    pub has_more: bool,
    /// The `after` of the next page when `has_more`; otherwise null.
    pub next_after: Option<Id>,
}

/// The body rule shared by sends and edits.
fn check_body(state: &AppState, body: &str) -> Result<(), ApiError> {
    let max = state.limits.message_body_bytes_max;
    if body.is_empty() || body.len() > max {
        return Err(ApiError::validation(
            "body",
            format!(
                "body must be 1 to {max} bytes of UTF-8 (got {})",
                body.len()
            ),
        ));
    }
    Ok(())
}

fn request_deadline(state: &AppState, deadline: Option<Extension<RequestDeadline>>) -> Instant {
    match deadline {
        Some(Extension(RequestDeadline(at))) => at,
        None => Instant::now() + state.limits.request_timeout,
    }
}

/// `POST /v1/chats/{chat_id}/messages`: 201 with the stored message once it is durable. A retry
/// with the same `client_msg_id` gets the same status and body, plus `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/v1/chats/{chat_id}/messages", tag = "messages", summary = "Send a message; durable before 201",
    description = "Idempotent per (chat, sender, client_msg_id): a retry returns the original with the same status and body and `Idempotent-Replayed: true`, and delivers it to the members' sockets again (clients deduplicate by `message_id`). A replica whose clock cannot be trusted (off Redis time by more than API_MAX_CLOCK_SKEW) answers 503.",
    params(("chat_id" = Id, Path, description = "the chat")), request_body = SendMessage,
    responses((status = 201, description = "stored (or replayed)", body = Message,
            headers(("Idempotent-Replayed" = String, description = "`true` on a retry that returned the stored original"))),
        (status = 400, description = "invalid body", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), (status = 413, description = "body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "empty or oversized body, bad client_msg_id", body = crate::error::Problem, content_type = "application/problem+json"), (status = 429, description = "message rate exceeded", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn send(
    State(state): State<Arc<AppState>>,
    Writer(user): Writer,
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
    check_body(&state, &req.body)?;
    // One read answers both the sender's membership and the fan-out's recipients.
    let members = members_of(&state, chat_id, user.id()).await?;
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
    let message = Message::new(
        chat_id,
        message_id,
        user.id().to_string(),
        req.client_msg_id,
        req.body,
    );
    // The write never commits after the request's deadline (where the store can tell): the
    // catch-up overlap covers a send only from its id to its deadline plus its fan-out.
    let deadline = request_deadline(&state, deadline);
    // The fan-out's route lookup, once the message is stored, rides in the same Redis round trip
    // as the cache's token write; failed or late, the fan-out looks the routes up itself.
    let mut routes = None;
    let lookup = async {
        let started = Instant::now();
        let lookup = state.registry.lookup(&members);
        if let Ok(Ok(groups)) = tokio::time::timeout(limits.fanout_timeout, lookup).await {
            routes = Some((groups, started));
        }
    };
    let inserted = state
        .store
        .insert_message_then(&message, deadline, Box::pin(lookup))
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
    let mut response = (StatusCode::CREATED, Json(&stored)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    let (chat_id, message_id) = (stored.chat_id, stored.message_id);
    let frame = ServerFrame::Message { message: stored };
    Delivery::new(&state, chat_id, message_id, frame, Some(members))
        .run_routed(routes)
        .await;
    Ok(response)
}

/// The fan-out of a stored change or message, run on the request's own task (no hand-off). It
/// runs to its own deadline (`API_FANOUT_TIMEOUT`) even if the request is cut meanwhile (its
/// deadline passed, its client went away): dropped before it finished, it starts over on a task
/// of its own, so every stored message gets its fan-out attempt. Members may then get the frame
/// twice; clients deduplicate by message id.
struct Delivery {
    state: Arc<AppState>,
    chat_id: Id,
    message_id: Id,
    /// The frame and its recipients (`None`: the chat's members, read by the fan-out); taken
    /// once the fan-out finished.
    work: Option<(ServerFrame, Option<Vec<String>>)>,
}

impl Delivery {
    fn new(
        state: &Arc<AppState>,
        chat_id: Id,
        message_id: Id,
        frame: ServerFrame,
        recipients: Option<Vec<String>>,
    ) -> Delivery {
        Delivery {
            state: state.clone(),
            chat_id,
            message_id,
            work: Some((frame, recipients)),
        }
    }

    async fn run(self) {
        self.run_routed(None).await;
    }

    /// [`Delivery::run`] with the recipients' routes and when their read started, when already
    /// read.
    async fn run_routed(mut self, routes: Option<(NodeGroups, Instant)>) {
        if let Some((frame, recipients)) = &self.work {
            self.state
                .fanout()
                .deliver_routed(
                    self.chat_id,
                    self.message_id,
                    frame,
                    recipients.as_deref(),
                    routes,
                )
                .await;
        }
        self.work = None;
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let Some((frame, recipients)) = self.work.take() else {
            return;
        };
        // Outside a runtime (shutdown) there is nothing left to deliver on.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (state, chat_id, message_id) = (self.state.clone(), self.chat_id, self.message_id);
        runtime.spawn(async move {
            state
                .fanout()
                .deliver_frame(chat_id, message_id, frame, recipients)
                .await;
        });
    }
}

/// `GET /v1/chats/{chat_id}/messages?before=|after=&limit=`: one page, ascending.
#[utoipa::path(get, path = "/v1/chats/{chat_id}/messages", tag = "messages", summary = "History page, ascending; cursor by message id",
    description = "Without a cursor: the newest `limit` messages. Every page lists its messages oldest first. To page back, pass the page's `next_before` as `before`; to page forward (catch-up), pass `next_after` as `after`; stop when `has_more` is false.",
    params(("chat_id" = Id, Path, description = "the chat"), HistoryQuery),
    responses((status = 200, description = "page", body = HistoryPage),
        (status = 400, description = "both cursors, or a bad value", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
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

/// `PATCH /v1/chats/{chat_id}/messages/{message_id}` with `{"body": …}`: the author replaces the
/// body; 200 with the message, now carrying `edited_at` and `change_id`. Editing to the current
/// body changes nothing (200, no new change): retries are harmless. A deleted message cannot be
/// edited (409).
#[utoipa::path(patch, path = "/v1/chats/{chat_id}/messages/{message_id}", tag = "messages", summary = "Edit a message (its author only)",
    description = "Replaces the body; the answer carries `edited_at` and `change_id`, and live members get `message_updated`. Editing to the current body changes nothing (200 with the message). Body limits and the per-user message rate apply as for sends.",
    params(("chat_id" = Id, Path, description = "the chat"), ("message_id" = Id, Path, description = "the message")), request_body = EditMessage,
    responses((status = 200, description = "the edited message", body = Message),
        (status = 400, description = "invalid body or id", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member (`not-a-member`) or not the author (`forbidden`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such message in this chat (`message-not-found`)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the message was deleted (`conflict`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "empty or oversized body", body = crate::error::Problem, content_type = "application/problem+json"), (status = 429, description = "message rate exceeded", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn edit(
    State(state): State<Arc<AppState>>,
    Writer(user): Writer,
    ApiPath((chat_id, message_id)): ApiPath<(Id, Id)>,
    deadline: Option<Extension<RequestDeadline>>,
    ApiJson(req): ApiJson<EditMessage>,
) -> Result<Json<Message>, ApiError> {
    let retry = state.limits.retry_after;
    check_body(&state, &req.body)?;
    require_member(&state, chat_id, user.id()).await?;
    let current = state
        .store
        .get_message(chat_id, message_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::MessageNotFound)?;
    if current.sender_id != user.id() {
        return Err(ApiError::Forbidden(
            "only the author may edit a message".into(),
        ));
    }
    if current.deleted {
        return Err(deleted_conflict());
    }
    if current.body == req.body {
        return Ok(Json(current));
    }
    state.clock_ok()?;
    let change = Change::Edit { body: req.body };
    let changed = apply(&state, chat_id, message_id, &change, deadline).await?;
    match changed {
        Changed::Applied(message) => {
            metrics::counter!(crate::telemetry::MESSAGE_CHANGES_TOTAL, "kind" => crate::telemetry::change_kind::EDIT)
                .increment(1);
            let frame = ServerFrame::MessageUpdated {
                message: message.clone(),
            };
            fan_out(&state, chat_id, message_id, frame).await;
            Ok(Json(message))
        }
        Changed::Unchanged(message) => Ok(Json(message)),
        Changed::Deleted(_) => Err(deleted_conflict()),
        Changed::NotFound => Err(ApiError::MessageNotFound),
    }
}

/// `DELETE /v1/chats/{chat_id}/messages/{message_id}`: the author, or an owner or admin of the
/// chat, deletes a message; 204. History keeps a tombstone without the body; the body is
/// removed from the store. Deleting a deleted message is 204 again.
#[utoipa::path(delete, path = "/v1/chats/{chat_id}/messages/{message_id}", tag = "messages", summary = "Delete a message (its author, or an owner or admin)",
    description = "The body is removed from the store; history keeps `{message_id, deleted: true}` without it, and live members get `message_deleted`. Deleting again answers 204.",
    params(("chat_id" = Id, Path, description = "the chat"), ("message_id" = Id, Path, description = "the message")),
    responses((status = 204, description = "deleted"),
        (status = 403, description = "not a member (`not-a-member`), or neither author nor owner/admin (`forbidden`)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such message in this chat (`message-not-found`)", body = crate::error::Problem, content_type = "application/problem+json"), (status = 429, description = "message rate exceeded", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Writer(user): Writer,
    ApiPath((chat_id, message_id)): ApiPath<(Id, Id)>,
    deadline: Option<Extension<RequestDeadline>>,
) -> Result<StatusCode, ApiError> {
    let retry = state.limits.retry_after;
    let role = state
        .store
        .role(chat_id, user.id())
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::NotAMember)?;
    let current = state
        .store
        .get_message(chat_id, message_id)
        .await
        .map_err(|e| ApiError::store(e, retry))?
        .ok_or(ApiError::MessageNotFound)?;
    if current.sender_id != user.id() && !role.moderates() {
        return Err(ApiError::Forbidden(
            "only the author, or an owner or admin of the chat, may delete a message".into(),
        ));
    }
    if current.deleted {
        return Ok(StatusCode::NO_CONTENT);
    }
    state.clock_ok()?;
    match apply(&state, chat_id, message_id, &Change::Delete, deadline).await? {
        Changed::Applied(message) => {
            metrics::counter!(crate::telemetry::MESSAGE_CHANGES_TOTAL, "kind" => crate::telemetry::change_kind::DELETE)
                .increment(1);
            let frame = ServerFrame::MessageDeleted {
                chat_id,
                message_id,
                change_id: message.change_id.unwrap_or(message_id),
            };
            fan_out(&state, chat_id, message_id, frame).await;
            Ok(StatusCode::NO_CONTENT)
        }
        Changed::Unchanged(_) | Changed::Deleted(_) => Ok(StatusCode::NO_CONTENT),
        Changed::NotFound => Err(ApiError::MessageNotFound),
    }
}

fn deleted_conflict() -> ApiError {
    ApiError::Conflict("the message was deleted; a deleted message cannot be edited".into())
}

/// Draws the change id and stores the change, never committing after the request's deadline
/// (where the store can tell): changes are caught up with the same overlap as messages.
async fn apply(
    state: &AppState,
    chat_id: Id,
    message_id: Id,
    change: &Change,
    deadline: Option<Extension<RequestDeadline>>,
) -> Result<Changed, ApiError> {
    let change_id = state.ids.next_id();
    let deadline = request_deadline(state, deadline);
    state
        .store
        .change_message(chat_id, message_id, change, change_id, deadline)
        .await
        .map_err(|e| ApiError::store(e, state.limits.retry_after))
}

/// The stored change reaches live members like a message (retried, then `resync`); it runs to
/// its own deadline even if the request's deadline cuts the request meanwhile ([`Delivery`]).
async fn fan_out(state: &Arc<AppState>, chat_id: Id, message_id: Id, frame: ServerFrame) {
    Delivery::new(state, chat_id, message_id, frame, None)
        .run()
        .await;
}

/// `GET /v1/chats/{chat_id}/changes?after=&limit=`: one page of the chat's edited and deleted
/// messages with a change id above `after`, in change order: the catch-up of changes.
#[utoipa::path(get, path = "/v1/chats/{chat_id}/changes", tag = "messages", summary = "Edited and deleted messages, by change id (catch-up of changes)",
    description = "The changed messages with a change id above `after`, in their current state, in change order. Catch up from your highest change id held minus the catch-up overlap (docs/PROTOCOL.md); while `has_more`, ask again with `after=next_after`.",
    params(("chat_id" = Id, Path, description = "the chat"), ChangesQuery),
    responses((status = 200, description = "page", body = ChangesPageView),
        (status = 400, description = "a bad cursor or limit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn changes(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Json<ChangesPageView>, ApiError> {
    let limits = &state.limits;
    let limit = match q.limit {
        None => limits.page_size_default,
        Some(0) => return Err(ApiError::InvalidQuery("`limit` must be at least 1".into())),
        Some(n) => n.min(limits.page_size_max),
    };
    require_member(&state, chat_id, user.id()).await?;
    let page = state
        .store
        .changes(chat_id, q.after.unwrap_or(Id(0)), limit)
        .await
        .map_err(|e| ApiError::store(e, limits.retry_after))?;
    Ok(Json(ChangesPageView {
        messages: page.messages,
        has_more: page.full,
        next_after: if page.full { page.last } else { None },
    }))
}
