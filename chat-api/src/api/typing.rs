//! `POST /v1/chats/{chat_id}/typing`: tells the chat's other members that the caller is typing.
//! Ephemeral: fanned out in real time as a `typing` frame, never stored. Gateways forward their
//! sockets' `typing` frames here with the socket's own token; clients may call it directly too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use parking_lot::Mutex;
use serde::Serialize;
use shared::protocol::ServerFrame;
use shared::routing::{fan_out, RoutingError};
use shared::Id;

use super::members_of;
use crate::app::AppState;
use crate::auth::User;
use crate::error::ApiError;
use crate::extract::ApiPath;

/// One typing notice per user and chat per this interval, per replica; more get 429. Gateways
/// already allow one per socket and chat every 2 s, so this only bites clients that call the
/// endpoint directly in a loop, or users typing on many devices at once.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(1);
/// Entries the limiter keeps before it forgets expired ones; when every entry is recent and the
/// table is full, further notices are shed (answered 429) rather than the table growing.
const LIMITER_ENTRIES_MAX: usize = 100_000;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TypingAccepted {
    /// Other members that had a live route when the notice was handed to their gateway nodes.
    pub recipients_online: usize,
}

/// Last accepted notice per (user, chat). Local to the replica: typing is a hint, so a client
/// that spreads notices over replicas gets at most one per replica per interval, which is fine.
pub struct TypingLimiter {
    last: Mutex<HashMap<(Box<str>, Id), Instant>>,
    interval: Duration,
}

impl Default for TypingLimiter {
    fn default() -> Self {
        TypingLimiter {
            last: Mutex::new(HashMap::new()),
            interval: TYPING_INTERVAL,
        }
    }
}

impl TypingLimiter {
    /// Records a notice and says whether it is allowed now.
    pub fn allow(&self, user: &str, chat: Id, now: Instant) -> bool {
        let mut last = self.last.lock();
        if let Some(at) = last.get(&(Box::from(user), chat)) {
            if now.duration_since(*at) < self.interval {
                return false;
            }
        }
        if last.len() >= LIMITER_ENTRIES_MAX {
            let interval = self.interval;
            last.retain(|_, at| now.duration_since(*at) < interval);
            if last.len() >= LIMITER_ENTRIES_MAX {
                return false;
            }
        }
        last.insert((Box::from(user), chat), now);
        true
    }
}

#[utoipa::path(post, path = "/v1/chats/{chat_id}/typing", tag = "messages", summary = "Tell the chat's other members that you are typing",
    description = "Ephemeral: delivered as a `typing` frame to the other members' sockets, never stored. At most one per user and chat per second (429 with Retry-After).",
    params(("chat_id" = Id, Path, description = "the chat")),
    responses((status = 202, description = "handed to gateways", body = TypingAccepted),
        (status = 403, description = "not a member", body = crate::error::Problem, content_type = "application/problem+json"), (status = 429, description = "too many typing notices (`rate-limited`)", body = crate::error::Problem, content_type = "application/problem+json"), crate::error::AuthErrors))]
pub async fn typing(
    State(state): State<Arc<AppState>>,
    user: User,
    ApiPath(chat_id): ApiPath<Id>,
) -> Result<(StatusCode, Json<TypingAccepted>), ApiError> {
    let limits = &state.limits;
    // One read answers both the membership check and the recipients.
    let mut members = members_of(&state, chat_id, user.id()).await?;
    if !state.typing.allow(user.id(), chat_id, Instant::now()) {
        metrics::counter!(crate::telemetry::TYPING_RATE_LIMITED_TOTAL).increment(1);
        return Err(ApiError::RateLimited {
            what: "typing notices (one per chat per second)",
            retry_after: TYPING_INTERVAL,
        });
    }
    members.retain(|m| m != user.id());
    let frame = ServerFrame::Typing {
        chat_id,
        user_id: user.id().to_string(),
    };
    let report = tokio::time::timeout(
        limits.fanout_timeout,
        fan_out(&state.registry, &state.bus, &members, &frame),
    )
    .await
    .map_err(|_| ApiError::routing(RoutingError::Timeout, limits.retry_after))?
    .map_err(|e| ApiError::routing(e, limits.retry_after))?;
    metrics::counter!(crate::telemetry::TYPING_NOTICES_TOTAL).increment(1);
    Ok((
        StatusCode::ACCEPTED,
        Json(TypingAccepted {
            recipients_online: report.recipients_online,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notice_per_user_and_chat_per_interval() {
        let limiter = TypingLimiter::default();
        let t0 = Instant::now();
        assert!(limiter.allow("a", Id(1), t0));
        assert!(!limiter.allow("a", Id(1), t0 + Duration::from_millis(500)));
        assert!(limiter.allow("a", Id(2), t0), "another chat");
        assert!(limiter.allow("b", Id(1), t0), "another user");
        assert!(limiter.allow("a", Id(1), t0 + TYPING_INTERVAL));
    }
}
