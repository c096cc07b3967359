//! Gateway configuration: every setting a flag and an environment variable, with its default.

use std::net::SocketAddr;
use std::time::Duration;

use shared::client_ip::TrustedProxies;
use shared::config::{parse_duration, parse_nonzero_duration};
use shared::ratelimit::{parse_quota_arg, Quota, QuotaArg};

/// Gateway settings as flags / environment variables.
#[derive(clap::Args, Clone, Debug)]
pub struct GatewayArgs {
    /// Address for WebSocket clients (and /healthz, /readyz, /metrics).
    #[arg(long, env = "GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    pub gateway_addr: SocketAddr,
    /// This node's id in the route registry (default: the host name).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Interval of server pings; also sent to clients in `hello`.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "25s", value_parser = parse_nonzero_duration)]
    pub heartbeat_interval: Duration,
    /// A socket from which nothing arrives for this long is closed (4001).
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = parse_nonzero_duration)]
    pub idle_timeout: Duration,
    /// Time allowed for the HTTP upgrade request to arrive and be answered.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub handshake_timeout: Duration,
    /// Frames queued per socket before it is closed as a slow consumer (4101).
    #[arg(long, env = "SEND_QUEUE_FRAMES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_queue_frames: u32,
    /// Bytes queued per socket before it is closed as a slow consumer (4101).
    #[arg(long, env = "SEND_QUEUE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_queue_bytes: u32,
    /// Kernel send buffer per socket (SO_SNDBUF; Linux doubles it), or 0 for the kernel's
    /// autotuning. A cap bounds kernel memory per socket and makes a client that stops reading hit
    /// the send queue (4101) sooner, instead of the kernel absorbing megabytes first.
    #[arg(long, env = "SOCKET_SEND_BUFFER_BYTES", default_value_t = 0)]
    pub socket_send_buffer_bytes: u32,
    /// Largest client message accepted (a fragmented one reassembled, a compressed one inflated);
    /// larger closes with 4203.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 16 << 10, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_frame_bytes: u32,
    /// permessage-deflate (RFC 7692): `on` accepts the offers of browsers and other clients,
    /// `off` declines them all.
    #[arg(long, env = "WS_COMPRESSION", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub ws_compression: bool,
    /// Server frames with a shorter payload go uncompressed even to sockets that negotiated
    /// permessage-deflate: below this, compressing saves too few bytes for its CPU.
    #[arg(long, env = "WS_COMPRESSION_MIN_BYTES", default_value_t = 128)]
    pub ws_compression_min_bytes: u32,
    /// Client frames allowed per second per socket (burst of the same size); more closes with 4103.
    #[arg(long, env = "MAX_FRAMES_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_frames_per_second: u32,
    /// Sockets open at once on this node; further upgrades get 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Sockets per user on this node; more closes the new one with 4204.
    #[arg(long, env = "MAX_SOCKETS_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets_per_user: u32,
    /// On SIGTERM, reconnect closes are spread over this window.
    #[arg(long, env = "DRAIN_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub drain_window: Duration,
    /// Hard deadline for the whole drain; keep it below the orchestrator's grace period.
    #[arg(long, env = "DRAIN_DEADLINE", default_value = "25s", value_parser = parse_nonzero_duration)]
    pub drain_deadline: Duration,
    /// Liveness key TTL in the route registry; the key is refreshed every third of it.
    #[arg(long, env = "NODE_TTL", default_value = "10s", value_parser = parse_nonzero_duration)]
    pub node_ttl: Duration,
    /// Envelopes read from the node stream per batch; at most 1000, the smallest cap a node
    /// stream may have (a larger read could not notice entries trimmed before it).
    #[arg(long, env = "STREAM_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=shared::routing::redis::STREAM_READ_MAX as i64))]
    pub stream_batch: u32,
    /// After a stream read that returned fewer than `STREAM_BATCH` envelopes, wait this long
    /// before the next read, so that under load more envelopes share one read (and one wake-up of
    /// each socket they reach). It delays only envelopes that arrive within it of the previous
    /// read: the first after a quiet spell is read at once. At most 50ms; `0ms` turns it off.
    #[arg(long, env = "STREAM_READ_LINGER", default_value = "1ms", value_parser = parse_duration)]
    pub stream_read_linger: Duration,
    /// WebSocket upgrade attempts per client IP, as `COUNT/PERIOD[:BURST]` or `off`; shared by all
    /// gateway nodes through Redis in distributed mode. Over it: HTTP 429 with Retry-After.
    #[arg(long, env = "CONNECT_RATE_PER_IP", default_value = "100/1s:200", value_parser = parse_quota_arg)]
    pub connect_rate_per_ip: QuotaArg,
    /// How long an upgrade attempt over CONNECT_RATE_PER_IP is held before its 429: its own
    /// retry-after, at most this (`0s`: answer at once). Paces a client that retries at once.
    #[arg(long, env = "CONNECT_RATE_LIMITED_HOLD", default_value = "1s", value_parser = parse_duration)]
    pub connect_rate_limited_hold: Duration,
    /// Refused upgrade attempts held at once (each keeps its connection and handshake place);
    /// past it, 429s are answered without a hold.
    #[arg(long, env = "CONNECT_RATE_LIMITED_HELD_MAX", default_value_t = 1_000)]
    pub connect_rate_limited_held_max: u32,
    /// TCP connections that may be in their HTTP handshake at once; more are answered 503 at once.
    #[arg(long, env = "MAX_CONCURRENT_HANDSHAKES", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_handshakes: u32,
    /// TCP connections from one client address (IPv6: one /64) that may be in their HTTP
    /// handshake at once; more are answered 429 at once, so one address cannot take every
    /// MAX_CONCURRENT_HANDSHAKES place. Behind TRUSTED_PROXIES, counted per forwarded client.
    #[arg(long, env = "MAX_HANDSHAKES_PER_IP", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes_per_ip: u32,
    /// Comma-separated CIDRs (or addresses) of reverse proxies in front of this node, such as
    /// an ingress controller's pod network. Only for connections from them is the client's
    /// address taken from `X-Forwarded-For` (the right-most entry that is not a trusted proxy);
    /// per-address limits (CONNECT_RATE_PER_IP, MAX_HANDSHAKES_PER_IP) then apply per client.
    /// Unset: no proxy is trusted and the header is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: Option<TrustedProxies>,
    /// Largest HTTP request head (request line and headers) accepted before the upgrade.
    #[arg(long, env = "MAX_REQUEST_HEAD_BYTES", default_value_t = 16 << 10, value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_request_head_bytes: u32,
    /// Base URL of chat-api (`http://HOST:PORT`), to which sockets' `typing` frames are forwarded
    /// with the socket's own token. Unset: typing frames are answered with an `unavailable` error
    /// (embedded mode sets it to its own API).
    #[arg(long, env = "API_URL")]
    pub api_url: Option<String>,
    /// A socket may send one `typing` frame per chat per this interval; more are answered with a
    /// `rate_limited` error frame (not a disconnect).
    #[arg(long, env = "TYPING_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub typing_interval: Duration,
    /// How long after a user's last socket on this node closed the gateway waits before it
    /// reports the user to chat-api as possibly offline; a reconnect within it pushes no
    /// `presence` frames. `0s`: report at once.
    #[arg(long, env = "PRESENCE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub presence_grace: Duration,
    /// Distinct users whose `presence` frames one socket receives (the first ones it hears
    /// of); frames about further users are not sent to it (read them with `GET /v1/presence`).
    #[arg(long, env = "PRESENCE_WATCH_MAX", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub presence_watch_max: u32,
}

/// Validated gateway settings. [`Settings::default`] matches the flag defaults (with
/// `NODE_ID=local`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub node_id: String,
    pub heartbeat_interval: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub send_queue_frames: usize,
    pub send_queue_bytes: usize,
    /// SO_SNDBUF for each accepted socket; `None` leaves the kernel's autotuning.
    pub socket_send_buffer_bytes: Option<usize>,
    pub max_frame_bytes: usize,
    pub max_frames_per_second: u32,
    pub ws_compression: bool,
    pub ws_compression_min_bytes: usize,
    pub max_connections: usize,
    pub max_sockets_per_user: usize,
    pub drain_window: Duration,
    pub drain_deadline: Duration,
    pub node_ttl: Duration,
    pub stream_batch: usize,
    /// Pause after a read that was not full (`STREAM_READ_LINGER`; zero: none).
    pub stream_read_linger: Duration,
    /// Upgrade attempts per client IP; `None` is unlimited.
    pub connect_rate_per_ip: Option<Quota>,
    /// Longest hold of a refused upgrade attempt before its 429 (zero: none).
    pub connect_rate_limited_hold: Duration,
    /// Refused upgrade attempts held at once.
    pub connect_rate_limited_held_max: usize,
    pub max_concurrent_handshakes: usize,
    /// Handshakes in progress per client address (IPv6: per /64).
    pub max_handshakes_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` names the client (empty: none).
    pub trusted_proxies: TrustedProxies,
    pub max_request_head_bytes: usize,
    /// chat-api base URL for forwarding typing frames, without a trailing slash.
    pub api_url: Option<String>,
    pub typing_interval: Duration,
    /// Wait after a user's last socket here closed before reporting it (`PRESENCE_GRACE`).
    pub presence_grace: Duration,
    /// Users one socket receives presence of (`PRESENCE_WATCH_MAX`).
    pub presence_watch_max: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_id: "local".into(),
            heartbeat_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            send_queue_frames: 256,
            send_queue_bytes: 1 << 20,
            socket_send_buffer_bytes: None,
            max_frame_bytes: 16 << 10,
            max_frames_per_second: 20,
            ws_compression: true,
            ws_compression_min_bytes: 128,
            max_connections: 1_000_000,
            max_sockets_per_user: 16,
            drain_window: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(25),
            node_ttl: Duration::from_secs(10),
            stream_batch: 256,
            stream_read_linger: Duration::from_millis(1),
            connect_rate_per_ip: Some(Quota::per_second(100, 200)),
            connect_rate_limited_hold: Duration::from_secs(1),
            connect_rate_limited_held_max: 1_000,
            max_concurrent_handshakes: 10_000,
            max_handshakes_per_ip: 32,
            trusted_proxies: TrustedProxies::default(),
            max_request_head_bytes: 16 << 10,
            api_url: None,
            typing_interval: Duration::from_secs(2),
            presence_grace: Duration::from_secs(5),
            presence_watch_max: 1000,
        }
    }
}

/// The longest `STREAM_READ_LINGER`: a fraction of the cross-node delivery budget (SPEC §7, p99
/// under 10 ms) is all a read may wait for company.
pub const STREAM_READ_LINGER_MAX: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("IDLE_TIMEOUT ({idle:?}) must be longer than HEARTBEAT_INTERVAL ({heartbeat:?})")]
    IdleTimeout { idle: Duration, heartbeat: Duration },
    #[error("DRAIN_WINDOW ({window:?}) must be shorter than DRAIN_DEADLINE ({deadline:?})")]
    Drain {
        window: Duration,
        deadline: Duration,
    },
    #[error(
        "CONNECT_RATE_LIMITED_HOLD ({hold:?}) must be shorter than HANDSHAKE_TIMEOUT ({timeout:?})"
    )]
    Hold { hold: Duration, timeout: Duration },
    #[error("STREAM_READ_LINGER ({0:?}) must be at most {STREAM_READ_LINGER_MAX:?}: it adds to every delivery's latency under load")]
    Linger(Duration),
    #[error("NODE_ID {0:?} is not valid: use 1-64 characters from A-Z a-z 0-9 _ . -")]
    NodeId(String),
    #[error("API_URL {0:?} is not valid: expected http://HOST:PORT")]
    ApiUrl(String),
}

impl GatewayArgs {
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let node_id = match &self.node_id {
            Some(n) => n.clone(),
            None => hostname(),
        };
        if node_id.is_empty()
            || node_id.len() > 64
            || !node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(ConfigError::NodeId(node_id));
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return Err(ConfigError::IdleTimeout {
                idle: self.idle_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        if self.drain_window >= self.drain_deadline {
            return Err(ConfigError::Drain {
                window: self.drain_window,
                deadline: self.drain_deadline,
            });
        }
        if self.stream_read_linger > STREAM_READ_LINGER_MAX {
            return Err(ConfigError::Linger(self.stream_read_linger));
        }
        if self.connect_rate_limited_hold >= self.handshake_timeout {
            return Err(ConfigError::Hold {
                hold: self.connect_rate_limited_hold,
                timeout: self.handshake_timeout,
            });
        }
        let api_url = match &self.api_url {
            None => None,
            Some(u) => {
                let trimmed = u.trim_end_matches('/');
                let host = trimmed.strip_prefix("http://").unwrap_or_default();
                if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
                    return Err(ConfigError::ApiUrl(u.clone()));
                }
                Some(trimmed.to_string())
            }
        };
        Ok(Settings {
            node_id,
            heartbeat_interval: self.heartbeat_interval,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
            send_queue_frames: self.send_queue_frames as usize,
            send_queue_bytes: self.send_queue_bytes as usize,
            socket_send_buffer_bytes: (self.socket_send_buffer_bytes > 0)
                .then_some(self.socket_send_buffer_bytes as usize),
            max_frame_bytes: self.max_frame_bytes as usize,
            max_frames_per_second: self.max_frames_per_second,
            ws_compression: self.ws_compression,
            ws_compression_min_bytes: self.ws_compression_min_bytes as usize,
            max_connections: self.max_connections as usize,
            max_sockets_per_user: self.max_sockets_per_user as usize,
            drain_window: self.drain_window,
            drain_deadline: self.drain_deadline,
            node_ttl: self.node_ttl,
            stream_batch: self.stream_batch as usize,
            stream_read_linger: self.stream_read_linger,
            connect_rate_per_ip: self.connect_rate_per_ip.0,
            connect_rate_limited_hold: self.connect_rate_limited_hold,
            connect_rate_limited_held_max: self.connect_rate_limited_held_max as usize,
            max_concurrent_handshakes: self.max_concurrent_handshakes as usize,
            max_handshakes_per_ip: self.max_handshakes_per_ip as usize,
            trusted_proxies: self.trusted_proxies.clone().unwrap_or_default(),
            max_request_head_bytes: self.max_request_head_bytes as usize,
            api_url,
            typing_interval: self.typing_interval,
            presence_grace: self.presence_grace,
            presence_watch_max: self.presence_watch_max as usize,
        })
    }
}

/// `on` or `off`, as the switches of this file are spelled.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "gateway".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gateway: GatewayArgs,
    }

    fn parse(args: &[&str]) -> GatewayArgs {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().gateway
    }

    #[test]
    fn defaults_match_settings_default() {
        let args = parse(&["--node-id", "local"]);
        assert_eq!(args.gateway_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.settings().unwrap(), Settings::default());
    }
}
