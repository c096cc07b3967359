//! Typing indicators. The gateway knows no chat members, so a socket's `typing` frame is
//! forwarded to chat-api (`POST /v1/chats/{chat_id}/typing`, with the socket's own token), which
//! checks membership and fans a `typing` frame out to the other members. Rate limited per socket
//! and chat here, per user in the API; failures come back to the socket as error frames.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use shared::protocol::ErrorCode;
use shared::Id;

use crate::forward::{self, ApiClient, Outcome};
use crate::hub::{QueueLimits, SocketHandle};
use crate::telemetry::{typing_result, TYPING_TOTAL};

/// Forwards in flight at once per node; past it, typing frames are answered `unavailable`.
const INFLIGHT_MAX: usize = 1024;
/// Chats a socket's typing limiter remembers at once.
const GATE_CHATS_MAX: usize = 16;

/// Forwards typing frames to chat-api.
pub struct TypingForwarder {
    api: ApiClient,
    inflight: Arc<Semaphore>,
}

impl TypingForwarder {
    pub fn new(base: &str) -> Option<TypingForwarder> {
        Some(TypingForwarder {
            api: ApiClient::new(base, "typing")?,
            inflight: Arc::new(Semaphore::new(INFLIGHT_MAX)),
        })
    }

    /// Forwards one typing notice in the background; an error answer becomes an error frame on
    /// the socket.
    pub fn forward(
        &self,
        handle: Arc<SocketHandle>,
        limits: QueueLimits,
        token: Arc<str>,
        chat_id: Id,
    ) {
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            metrics::counter!(TYPING_TOTAL, "result" => typing_result::SHED).increment(1);
            forward::reply(
                &handle,
                limits,
                ErrorCode::Unavailable,
                "too many typing notices in flight on this node; try again",
            );
            return;
        };
        let request = self
            .api
            .post(&format!("/v1/chats/{chat_id}/typing"), &token);
        tokio::spawn(async move {
            let _permit = permit;
            let (result, error) = match forward::send(request, 202, "typing").await {
                Outcome::Done => (typing_result::OK, None),
                Outcome::Forbidden => (
                    typing_result::FORBIDDEN,
                    Some((ErrorCode::Forbidden, "you are not a member of this chat")),
                ),
                Outcome::RateLimited => (
                    typing_result::RATE_LIMITED,
                    Some((ErrorCode::RateLimited, "too many typing notices; slow down")),
                ),
                Outcome::Unauthorized => (
                    typing_result::UNAUTHORIZED,
                    Some((ErrorCode::InvalidToken, forward::TOKEN_REFUSED)),
                ),
                Outcome::Failed => (
                    typing_result::FAILED,
                    Some((
                        ErrorCode::Unavailable,
                        "typing notice not delivered; try again",
                    )),
                ),
            };
            metrics::counter!(TYPING_TOTAL, "result" => result).increment(1);
            if let Some((code, message)) = error {
                forward::reply(&handle, limits, code, message);
            }
        });
    }
}

/// One socket's typing limiter: at most one notice per chat per interval. Holds no allocation
/// until the socket first types.
#[derive(Default)]
pub struct TypingGate {
    recent: Vec<(Id, Instant)>,
}

impl TypingGate {
    /// Records a notice for `chat` and says whether it may go out now.
    pub fn allow(&mut self, chat: Id, now: Instant, interval: Duration) -> bool {
        self.recent
            .retain(|(_, at)| now.saturating_duration_since(*at) < interval);
        if self.recent.iter().any(|(c, _)| *c == chat) {
            return false;
        }
        if self.recent.len() >= GATE_CHATS_MAX {
            return false;
        }
        self.recent.push((chat, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notice_per_chat_per_interval() {
        let mut gate = TypingGate::default();
        let t0 = Instant::now();
        let i = Duration::from_secs(2);
        assert!(gate.allow(Id(1), t0, i));
        assert!(!gate.allow(Id(1), t0 + Duration::from_millis(1999), i));
        assert!(gate.allow(Id(2), t0, i), "another chat");
        assert!(gate.allow(Id(1), t0 + i, i));
    }

    #[test]
    fn remembers_a_bounded_number_of_chats() {
        let mut gate = TypingGate::default();
        let t0 = Instant::now();
        let i = Duration::from_secs(2);
        for c in 0..GATE_CHATS_MAX as u64 {
            assert!(gate.allow(Id(c), t0, i));
        }
        assert!(!gate.allow(Id(999), t0, i));
        assert!(gate.allow(Id(999), t0 + i, i));
    }
}
