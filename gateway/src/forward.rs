//! Forwarding socket frames to chat-api over HTTP (`typing` notices, coalesced `ack`s): the one
//! HTTP client set-up, the mapping of chat-api's answer to an outcome, and the `error` frame an
//! outcome sends back to the socket. The gateway knows no chat members, so these frames go
//! through chat-api with the socket's own token, which checks membership.

use std::time::Duration;

use shared::protocol::{ErrorCode, ServerFrame};

use crate::hub::{QueueLimits, SocketHandle};
use crate::wsio;

/// Deadline of one forward.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections to chat-api are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for chat-api at `API_URL`.
pub struct ApiClient {
    client: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// `None` (logged as an error naming `feature`, which is then off) when the client cannot
    /// be built, e.g. no TLS roots.
    pub fn new(base: &str, feature: &'static str) -> Option<ApiClient> {
        let client = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build();
        match client {
            Ok(client) => Some(ApiClient {
                client,
                base: base.to_string(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "could not build the HTTP client for API_URL; {feature} disabled");
                None
            }
        }
    }

    /// A `POST` of `path` (below the base URL) authenticated with the socket's token.
    pub fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
    }
}

/// What chat-api's answer to a forward means for the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The expected success status.
    Done,
    /// 403: not a member of the chat.
    Forbidden,
    /// 429: the API's rate limit.
    RateLimited,
    /// 401: the API refused the socket's token.
    Unauthorized,
    /// Any other status, or no answer.
    Failed,
}

impl Outcome {
    /// The outcome of an answer with `status` (`None`: no answer) to a forward that succeeds
    /// with `success`.
    pub fn of(status: Option<u16>, success: u16) -> Outcome {
        match status {
            Some(s) if s == success => Outcome::Done,
            Some(403) => Outcome::Forbidden,
            Some(429) => Outcome::RateLimited,
            Some(401) => Outcome::Unauthorized,
            _ => Outcome::Failed,
        }
    }
}

/// Sends `request` and says what its answer means; `what` names the forward in debug logs of
/// failures.
pub async fn send(request: reqwest::RequestBuilder, success: u16, what: &'static str) -> Outcome {
    match request.send().await {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let outcome = Outcome::of(Some(status), success);
            if outcome != Outcome::Done {
                tracing::debug!(status, what, "forward answered");
            }
            outcome
        }
        Err(e) => {
            tracing::debug!(error = %e, what, "forward failed");
            Outcome::Failed
        }
    }
}

/// The error frame an unwanted outcome sends back to the socket.
pub fn reply(handle: &SocketHandle, limits: QueueLimits, code: ErrorCode, message: &str) {
    let frame = ServerFrame::Error {
        code,
        message: message.to_string(),
    };
    handle.enqueue(wsio::server_frame(handle.encoding, &frame), limits);
}

/// The message of [`Outcome::Unauthorized`], the same for every forward.
pub const TOKEN_REFUSED: &str = "the API refused this socket's token";

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(Outcome::of(Some(202), 202), Outcome::Done);
        assert_eq!(Outcome::of(Some(204), 202), Outcome::Failed, "another 2xx");
        assert_eq!(Outcome::of(Some(204), 204), Outcome::Done);
        assert_eq!(Outcome::of(Some(403), 204), Outcome::Forbidden);
        assert_eq!(Outcome::of(Some(429), 202), Outcome::RateLimited);
        assert_eq!(Outcome::of(Some(401), 202), Outcome::Unauthorized);
        assert_eq!(Outcome::of(Some(500), 202), Outcome::Failed);
        assert_eq!(Outcome::of(None, 202), Outcome::Failed, "no answer");
    }
}
