//! chat-api configuration: flags and environment variables (`clap` with `env`), turned into typed
//! [`Limits`] and validated before any port is bound.

use std::net::SocketAddr;
use std::time::Duration;

use shared::config::{parse_duration, parse_nonzero_duration};
use shared::protocol::CATCHUP_OVERLAP;
use shared::ratelimit::{parse_quota_arg, Quota, QuotaArg};

/// Settings of the HTTP API. Every field is also an environment variable; defaults are shown in
/// `--help`.
#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// Address the HTTP API (and /healthz, /readyz, /metrics) listens on.
    #[arg(
        long,
        env = "API_ADDR",
        value_name = "API_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub api_addr: SocketAddr,
    /// Message store: `sqlite:PATH` or `scylla://HOST[:PORT][,HOST...]/KEYSPACE[?OPTIONS]`.
    /// Embedded mode defaults to `sqlite:$DATA_DIR/chat.db`. ScyllaDB options (`&`-separated):
    /// `consistency` (`LOCAL_QUORUM` default, or `QUORUM`; weaker levels are refused), `local_dc`
    /// (this replica's datacenter; required when the keyspace spans several), `server_timeout`
    /// (`USING TIMEOUT` of each statement, default `2s`), `request_timeout` (client side, default
    /// `3s`, must exceed `server_timeout`), `max_in_flight` (default `1024`).
    #[arg(long, env = "STORE_URL", value_name = "STORE_URL")]
    pub store_url: Option<String>,
    /// Snowflake worker id (0-1023) of this replica; must differ between live replicas.
    #[arg(long, env = "WORKER_ID", value_name = "WORKER_ID")]
    pub worker_id: Option<u16>,
    /// Largest accepted request body.
    #[arg(long, env = "API_MAX_REQUEST_BODY_BYTES", value_name = "API_MAX_REQUEST_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_request_body_bytes: usize,
    /// Largest message body, in UTF-8 bytes (messages must not be empty).
    #[arg(
        long,
        env = "API_MAX_MESSAGE_BYTES",
        value_name = "API_MAX_MESSAGE_BYTES",
        default_value_t = 4096
    )]
    pub max_message_bytes: usize,
    /// Longest `client_msg_id`, in characters (at least 1).
    #[arg(
        long,
        env = "API_MAX_CLIENT_MSG_ID_CHARS",
        value_name = "API_MAX_CLIENT_MSG_ID_CHARS",
        default_value_t = 64
    )]
    pub max_client_msg_id_chars: usize,
    /// Most members a chat may have (creator included).
    #[arg(
        long,
        env = "API_MAX_MEMBERS_PER_CHAT",
        value_name = "API_MAX_MEMBERS_PER_CHAT",
        default_value_t = 1000
    )]
    pub max_members_per_chat: usize,
    /// History page size when `limit` is not given.
    #[arg(
        long,
        env = "API_PAGE_SIZE_DEFAULT",
        value_name = "API_PAGE_SIZE_DEFAULT",
        default_value_t = 50
    )]
    pub page_size_default: usize,
    /// Largest history page; larger `limit`s are capped to it.
    #[arg(
        long,
        env = "API_PAGE_SIZE_MAX",
        value_name = "API_PAGE_SIZE_MAX",
        default_value_t = 200
    )]
    pub page_size_max: usize,
    /// Most user ids in one `/v1/presence` query.
    #[arg(
        long,
        env = "API_MAX_PRESENCE_USERS",
        value_name = "API_MAX_PRESENCE_USERS",
        default_value_t = 100
    )]
    pub max_presence_users: usize,
    /// Chats of a user examined for presence sharing (the first ones by chat id): whose
    /// presence the user may read, and who is told of the user's changes.
    #[arg(
        long,
        env = "API_PRESENCE_MAX_CHATS",
        value_name = "API_PRESENCE_MAX_CHATS",
        default_value_t = 200
    )]
    pub presence_max_chats: usize,
    /// Chats with more members than this share no presence: their members are neither told of
    /// each other's changes nor may read each other's presence (unless another chat is shared).
    #[arg(
        long,
        env = "API_PRESENCE_MAX_CHAT_MEMBERS",
        value_name = "API_PRESENCE_MAX_CHAT_MEMBERS",
        default_value_t = 100
    )]
    pub presence_max_chat_members: usize,
    /// Most co-members told of one presence change, and whose presence one user may read.
    #[arg(
        long,
        env = "API_PRESENCE_MAX_WATCHERS",
        value_name = "API_PRESENCE_MAX_WATCHERS",
        default_value_t = 2000
    )]
    pub presence_max_watchers: usize,
    /// Most recipients of one `/v1/push`.
    #[arg(
        long,
        env = "API_MAX_PUSH_USERS",
        value_name = "API_MAX_PUSH_USERS",
        default_value_t = 1000
    )]
    pub max_push_users: usize,
    /// Whole-request deadline; a request past it is answered 503.
    #[arg(long, env = "API_REQUEST_TIMEOUT", value_name = "API_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub request_timeout: Duration,
    /// Deadline of the real-time fan-out after a message is stored (best effort).
    #[arg(long, env = "API_FANOUT_TIMEOUT", value_name = "API_FANOUT_TIMEOUT", default_value = "2s", value_parser = parse_nonzero_duration)]
    pub fanout_timeout: Duration,
    /// A request head (request line and headers) must be complete within this time of its first
    /// byte; a slower one (a trickled head) is cut.
    #[arg(long, env = "API_HEADER_READ_TIMEOUT", value_name = "API_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress is closed after this long. Keep it above the
    /// upstream keep-alive timeout of a reverse proxy in front (ingress-nginx: 60s).
    #[arg(long, env = "API_KEEP_ALIVE_TIMEOUT", value_name = "API_KEEP_ALIVE_TIMEOUT", default_value = "75s", value_parser = parse_nonzero_duration)]
    pub keep_alive_timeout: Duration,
    /// How long a fan-out that failed after its message was stored is retried in the background
    /// before the members it may have missed are told to catch up (`resync`) instead; `0s`: no
    /// retry, the notice at once. At most 10s.
    #[arg(long, env = "API_FANOUT_RETRY_WINDOW", value_name = "API_FANOUT_RETRY_WINDOW", default_value = "5s", value_parser = parse_duration)]
    pub fanout_retry_window: Duration,
    /// Failed fan-outs waiting for a background retry (16 retry at once); when full, a failed
    /// fan-out's members are told to catch up instead. `0`: no retry.
    #[arg(
        long,
        env = "API_FANOUT_RETRY_QUEUE",
        value_name = "API_FANOUT_RETRY_QUEUE",
        default_value_t = 1000
    )]
    pub fanout_retry_queue: usize,
    /// `Retry-After` sent with 503 answers.
    #[arg(long, env = "API_RETRY_AFTER", value_name = "API_RETRY_AFTER", default_value = "1s", value_parser = parse_duration)]
    pub retry_after: Duration,
    /// How long in-flight requests may finish after SIGTERM before the server stops anyway.
    #[arg(long, env = "API_SHUTDOWN_GRACE", value_name = "API_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// SQLite: how long a write waits for another process's lock before answering 503.
    #[arg(long, env = "SQLITE_BUSY_TIMEOUT", value_name = "SQLITE_BUSY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub sqlite_busy_timeout: Duration,
    /// SQLite: connections per process (and so statements in flight).
    #[arg(
        long,
        env = "SQLITE_CONNECTIONS",
        value_name = "SQLITE_CONNECTIONS",
        default_value_t = 4
    )]
    pub sqlite_connections: usize,
    /// Comma-separated origins (`https://app.example`) whose pages may call the API from a
    /// browser (CORS), or `*` for any; empty: none. Pages served by the API itself need none.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Authenticated requests per caller (user or service), as `COUNT/PERIOD[:BURST]` or `off`;
    /// shared by all replicas through Redis in distributed mode. Over it: 429 with Retry-After.
    #[arg(long, env = "API_RATE_REQUESTS", default_value = "50/1s:100", value_parser = parse_quota_arg)]
    pub rate_requests: QuotaArg,
    /// Messages sent per user (all chats together), as `COUNT/PERIOD[:BURST]` or `off`.
    #[arg(long, env = "API_RATE_MESSAGES", default_value = "10/1s:20", value_parser = parse_quota_arg)]
    pub rate_messages: QuotaArg,
    /// How long a request over a rate limit is held before its 429 is sent: its own retry-after,
    /// at most this (`0s`: answer at once). A client that honours Retry-After loses nothing; one
    /// that retries at once is paced by the server rather than by how fast it can refuse.
    #[arg(long, env = "API_RATE_LIMITED_HOLD", value_name = "API_RATE_LIMITED_HOLD", default_value = "1s", value_parser = parse_duration)]
    pub rate_limited_hold: Duration,
    /// Over-limit requests held at once; past it, 429s are answered without a hold.
    #[arg(
        long,
        env = "API_RATE_LIMITED_HELD_MAX",
        value_name = "API_RATE_LIMITED_HELD_MAX",
        default_value_t = 10_000
    )]
    pub rate_limited_held_max: usize,
    /// The offline hook (push notifications through a webhook).
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,
    /// The membership and recent-messages caches.
    #[command(flatten)]
    pub cache: crate::store::cached::CacheArgs,
}

/// Bounds and deadlines the handlers apply. [`Limits::default`] matches the flag defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub request_body_bytes_max: usize,
    pub message_body_bytes_max: usize,
    pub client_msg_id_chars_max: usize,
    pub members_per_chat_max: usize,
    pub page_size_default: usize,
    pub page_size_max: usize,
    pub presence_users_max: usize,
    /// Who shares presence with whom (`API_PRESENCE_*`).
    pub presence: crate::presence::PresenceLimits,
    pub push_users_max: usize,
    pub title_chars_max: usize,
    pub request_timeout: Duration,
    pub fanout_timeout: Duration,
    /// From the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// Longest idle time of a connection between requests.
    pub keep_alive_timeout: Duration,
    /// Background retry of fan-outs that failed after the 201.
    pub fanout_retry: crate::fanout::RetrySettings,
    pub retry_after: Duration,
    pub shutdown_grace: Duration,
    /// Authenticated requests per caller; `None` is unlimited.
    pub rate_requests: Option<Quota>,
    /// Messages sent per user; `None` is unlimited.
    pub rate_messages: Option<Quota>,
    /// Longest hold of an over-limit request before its 429 (zero: none).
    pub rate_limited_hold: Duration,
    /// Over-limit requests held at once.
    pub rate_limited_held_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_body_bytes_max: 64 * 1024,
            message_body_bytes_max: 4096,
            client_msg_id_chars_max: 64,
            members_per_chat_max: 1000,
            page_size_default: 50,
            page_size_max: 200,
            presence_users_max: 100,
            presence: crate::presence::PresenceLimits::default(),
            push_users_max: 1000,
            title_chars_max: 200,
            request_timeout: Duration::from_secs(10),
            fanout_timeout: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            fanout_retry: crate::fanout::RetrySettings {
                window: Duration::from_secs(5),
                queue: 1000,
            },
            retry_after: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            rate_requests: Some(Quota::per_second(50, 100)),
            rate_messages: Some(Quota::per_second(10, 20)),
            rate_limited_hold: Duration::from_secs(1),
            rate_limited_held_max: 10_000,
        }
    }
}

/// Longest `API_FANOUT_RETRY_WINDOW`: a member with an open socket gets a message, or a `resync`,
/// within a few seconds of a failed fan-out.
pub const FANOUT_RETRY_WINDOW_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} must be at least {min} (got {value})")]
    TooSmall {
        name: &'static str,
        min: usize,
        value: usize,
    },
    #[error("API_PAGE_SIZE_DEFAULT ({default}) must not exceed API_PAGE_SIZE_MAX ({max})")]
    PageSizes { default: usize, max: usize },
    #[error("API_MAX_MESSAGE_BYTES ({message}) must leave room in API_MAX_REQUEST_BODY_BYTES ({body}): a message is sent as JSON")]
    MessageExceedsBody { message: usize, body: usize },
    #[error("API_RATE_LIMITED_HOLD ({hold:?}) must be shorter than API_REQUEST_TIMEOUT ({timeout:?}): a held 429 would turn into a 503")]
    HoldExceedsTimeout { hold: Duration, timeout: Duration },
    #[error("API_FANOUT_RETRY_WINDOW ({0:?}) must be at most {max:?}: a member whose message could not be delivered waits this long for it or for its resync", max = FANOUT_RETRY_WINDOW_MAX)]
    FanoutRetryWindow(Duration),
    #[error("WORKER_ID {0} exceeds 1023")]
    WorkerId(u16),
    #[error("CORS_ALLOWED_ORIGINS entry {0:?}: expected `*` or an origin such as https://app.example (scheme, host, optional port, no path)")]
    CorsOrigin(String),
    #[error(
        "API_REQUEST_TIMEOUT ({request:?}) + API_FANOUT_TIMEOUT ({fanout:?}) + \
         API_FANOUT_RETRY_WINDOW ({retry:?}) + 2 × API_MAX_CLOCK_SKEW ({skew:?}) must not exceed the catch-up overlap ({overlap:?}, \
         docs/PROTOCOL.md): a send could then become visible further below the ids clients \
         already hold than their catch-up reaches; lower these settings"
    )]
    SendHorizon {
        request: Duration,
        fanout: Duration,
        retry: Duration,
        skew: Duration,
        overlap: Duration,
    },
}

impl Limits {
    /// Checks the invariant the catch-up relies on (docs/PROTOCOL.md, "Delivery and catch-up"):
    /// the longest a send can take from drawing its message id to the end of its fan-out
    /// attempt — its whole request (`request_timeout`: the store write never commits after it),
    /// plus the fan-out begun before that deadline (`fanout_timeout`), plus the background retry
    /// of a failed fan-out before its members are told to `resync` (`fanout_retry.window`) —
    /// plus twice the largest difference between two replicas' clocks (`max_clock_skew` each
    /// way; zero for one process) fits in [`CATCHUP_OVERLAP`].
    pub fn check_send_horizon(&self, max_clock_skew: Duration) -> Result<(), ConfigError> {
        let total = self
            .request_timeout
            .saturating_add(self.fanout_timeout)
            .saturating_add(self.fanout_retry.window)
            .saturating_add(max_clock_skew.saturating_mul(2));
        if total > CATCHUP_OVERLAP {
            return Err(ConfigError::SendHorizon {
                request: self.request_timeout,
                fanout: self.fanout_timeout,
                retry: self.fanout_retry.window,
                skew: max_clock_skew,
                overlap: CATCHUP_OVERLAP,
            });
        }
        Ok(())
    }
}

impl ApiArgs {
    /// Checks the settings and returns the typed limits.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let at_least = |name, min, value| {
            if value < min {
                Err(ConfigError::TooSmall { name, min, value })
            } else {
                Ok(())
            }
        };
        at_least(
            "API_MAX_REQUEST_BODY_BYTES",
            1024,
            self.max_request_body_bytes,
        )?;
        at_least("API_MAX_MESSAGE_BYTES", 1, self.max_message_bytes)?;
        at_least(
            "API_MAX_CLIENT_MSG_ID_CHARS",
            1,
            self.max_client_msg_id_chars,
        )?;
        at_least("API_MAX_MEMBERS_PER_CHAT", 1, self.max_members_per_chat)?;
        at_least("API_PAGE_SIZE_DEFAULT", 1, self.page_size_default)?;
        at_least("API_MAX_PRESENCE_USERS", 1, self.max_presence_users)?;
        at_least("API_PRESENCE_MAX_CHATS", 1, self.presence_max_chats)?;
        at_least(
            "API_PRESENCE_MAX_CHAT_MEMBERS",
            2,
            self.presence_max_chat_members,
        )?;
        at_least("API_PRESENCE_MAX_WATCHERS", 1, self.presence_max_watchers)?;
        at_least("API_MAX_PUSH_USERS", 1, self.max_push_users)?;
        at_least("SQLITE_CONNECTIONS", 1, self.sqlite_connections)?;
        if self.page_size_default > self.page_size_max {
            return Err(ConfigError::PageSizes {
                default: self.page_size_default,
                max: self.page_size_max,
            });
        }
        if self.max_message_bytes >= self.max_request_body_bytes {
            return Err(ConfigError::MessageExceedsBody {
                message: self.max_message_bytes,
                body: self.max_request_body_bytes,
            });
        }
        if self.rate_limited_hold >= self.request_timeout {
            return Err(ConfigError::HoldExceedsTimeout {
                hold: self.rate_limited_hold,
                timeout: self.request_timeout,
            });
        }
        if self.fanout_retry_window > FANOUT_RETRY_WINDOW_MAX {
            return Err(ConfigError::FanoutRetryWindow(self.fanout_retry_window));
        }
        if let Some(w) = self.worker_id {
            if w > shared::ids::WORKER_ID_MAX {
                return Err(ConfigError::WorkerId(w));
            }
        }
        let limits = Limits {
            request_body_bytes_max: self.max_request_body_bytes,
            message_body_bytes_max: self.max_message_bytes,
            client_msg_id_chars_max: self.max_client_msg_id_chars,
            members_per_chat_max: self.max_members_per_chat,
            page_size_default: self.page_size_default,
            page_size_max: self.page_size_max,
            presence_users_max: self.max_presence_users,
            presence: crate::presence::PresenceLimits {
                max_chats: self.presence_max_chats,
                max_chat_members: self.presence_max_chat_members,
                max_watchers: self.presence_max_watchers,
            },
            push_users_max: self.max_push_users,
            title_chars_max: Limits::default().title_chars_max,
            request_timeout: self.request_timeout,
            fanout_timeout: self.fanout_timeout,
            header_read_timeout: self.header_read_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            fanout_retry: crate::fanout::RetrySettings {
                window: self.fanout_retry_window,
                queue: self.fanout_retry_queue,
            },
            retry_after: self.retry_after,
            shutdown_grace: self.shutdown_grace,
            rate_requests: self.rate_requests.0,
            rate_messages: self.rate_messages.0,
            rate_limited_hold: self.rate_limited_hold,
            rate_limited_held_max: self.rate_limited_held_max,
        };
        // One process has one clock; `chat-api serve` checks again with its clock bound.
        limits.check_send_horizon(Duration::ZERO)?;
        Ok(limits)
    }

    /// The CORS origins, checked.
    pub fn cors_origins(&self) -> Result<Vec<axum::http::HeaderValue>, ConfigError> {
        self.cors_allowed_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                let rest = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"));
                let valid = o == "*" || rest.is_some_and(|r| !r.is_empty() && !r.contains('/'));
                match axum::http::HeaderValue::from_str(o) {
                    Ok(v) if valid => Ok(v),
                    _ => Err(ConfigError::CorsOrigin(o.to_string())),
                }
            })
            .collect()
    }

    /// SQLite options from these settings.
    pub fn sqlite_options(&self) -> crate::store::sqlite::SqliteOptions {
        crate::store::sqlite::SqliteOptions {
            busy_timeout: self.sqlite_busy_timeout,
            connections: self.sqlite_connections,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiArgs,
    }

    fn parse(args: &[&str]) -> ApiArgs {
        let mut all = vec!["chat-api"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().api
    }

    #[test]
    fn defaults_match_limits_default() {
        let args = parse(&[]);
        assert_eq!(args.api_addr.to_string(), "0.0.0.0:8081");
        assert_eq!(args.limits().unwrap(), Limits::default());
    }

    #[test]
    fn bad_settings_say_which() {
        let e = parse(&["--page-size-default", "500"]).limits().unwrap_err();
        assert!(e.to_string().contains("API_PAGE_SIZE_MAX"), "{e}");
        let e = parse(&["--max-message-bytes", "0"]).limits().unwrap_err();
        assert!(e.to_string().contains("API_MAX_MESSAGE_BYTES"), "{e}");
        let e = parse(&["--max-message-bytes", "70000"])
            .limits()
            .unwrap_err();
        assert!(matches!(e, ConfigError::MessageExceedsBody { .. }));
        assert!(parse(&["--worker-id", "1024"]).limits().is_err());
        let e = parse(&["--rate-limited-hold", "10s"]).limits().unwrap_err();
        assert!(matches!(e, ConfigError::HoldExceedsTimeout { .. }), "{e}");
        let e = parse(&["--fanout-retry-window", "11s"])
            .limits()
            .unwrap_err();
        assert!(e.to_string().contains("API_FANOUT_RETRY_WINDOW"), "{e}");
        assert!(
            parse(&["--fanout-retry-window", "0s", "--fanout-retry-queue", "0"])
                .limits()
                .is_ok()
        );
        let cors = parse(&[
            "--cors-allowed-origins",
            "http://a.example:3000,https://b.example",
        ]);
        assert_eq!(cors.cors_origins().unwrap().len(), 2);
        assert!(parse(&["--cors-allowed-origins", "*"])
            .cors_origins()
            .is_ok());
        let e = parse(&["--cors-allowed-origins", "https://a.example/path"])
            .cors_origins()
            .unwrap_err();
        assert!(e.to_string().contains("CORS_ALLOWED_ORIGINS"), "{e}");
        assert!(parse(&["--cors-allowed-origins", "a.example"])
            .cors_origins()
            .is_err());
        assert!(Cli::try_parse_from(["x", "--request-timeout", "0s"]).is_err());
    }

    #[test]
    fn a_send_must_fit_in_the_catch_up_overlap() {
        let limits = parse(&[]).limits().unwrap();
        // Defaults: 10 s + 2 s + 5 s + 2 × 5 s = 27 s of the 30 s overlap.
        assert!(limits.check_send_horizon(Duration::from_secs(5)).is_ok());
        assert!(limits
            .check_send_horizon(Duration::from_millis(6_500))
            .is_ok());
        let e = limits
            .check_send_horizon(Duration::from_millis(6_501))
            .unwrap_err();
        for name in [
            "API_REQUEST_TIMEOUT",
            "API_FANOUT_TIMEOUT",
            "API_FANOUT_RETRY_WINDOW",
            "API_MAX_CLOCK_SKEW",
            "30s",
        ] {
            assert!(e.to_string().contains(name), "{name} in {e}");
        }
        let e = parse(&["--request-timeout", "24s"]).limits().unwrap_err();
        assert!(matches!(e, ConfigError::SendHorizon { .. }), "{e}");
        assert!(parse(&["--request-timeout", "23s"]).limits().is_ok());
    }
}
