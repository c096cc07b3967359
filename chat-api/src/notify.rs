//! The offline hook: push notifications for members who had no live route when a message was
//! stored. The send path queues one entry per offline member ([`Notifier::enqueue`], from the
//! fan-out in `crate::fanout`); a dispatcher in every API replica ([`dispatch`]) drains the queue
//! and POSTs signed JSON batches per user and chat to `NOTIFY_WEBHOOK_URL`.
//!
//! The queue is durable and bounded: a Redis stream with a consumer group in distributed mode
//! ([`redis`]), a table of the embedded SQLite file in embedded mode ([`sqlite`]). A replica
//! claims entries, keeps its claims alive while it holds them, and deletes them only once the
//! webhook accepted their batch (or they were moved to the dead letters); entries of a replica
//! that died are claimed by another after `NOTIFY_CLAIM_IDLE`. Delivery is therefore
//! at-least-once: a batch retried or re-sent after a crash carries the same `Idempotency-Key`
//! when it holds the same messages, and receivers deduplicate by that key (and by message id).

pub mod conformance;
pub mod dispatch;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::config::{parse_duration, parse_nonzero_duration};
use shared::protocol::Message;
use shared::Id;

use crate::telemetry::{NOTIFY_DROPPED_TOTAL, NOTIFY_QUEUED_TOTAL};

/// The signature header: `sha256=<hex HMAC-SHA256 of the body with NOTIFY_WEBHOOK_SECRET>`.
pub const SIGNATURE_HEADER: &str = "x-chat-signature";
/// The idempotency key header: the same for every delivery of a batch of the same messages.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Shortest accepted `NOTIFY_WEBHOOK_SECRET`, in bytes.
pub const SECRET_BYTES_MIN: usize = 16;

/// Settings of the offline hook; all of them are flags and environment variables.
#[derive(clap::Args, Clone, Debug)]
pub struct NotifyArgs {
    /// Webhook that receives push-notification batches for members with no live socket
    /// (`http://HOST[:PORT]/PATH`; this build speaks plain HTTP to it, so put a TLS-originating
    /// proxy in front of an https receiver). Unset: the offline hook is off and nothing is queued.
    #[arg(long, env = "NOTIFY_WEBHOOK_URL")]
    pub notify_webhook_url: Option<String>,
    /// Key of the `X-Chat-Signature` HMAC-SHA256 of each webhook body (at least 16 bytes);
    /// required with NOTIFY_WEBHOOK_URL.
    #[arg(long, env = "NOTIFY_WEBHOOK_SECRET", hide_env_values = true)]
    pub notify_webhook_secret: Option<String>,
    /// How long a batch collects a user's messages of one chat, from the first message queued,
    /// before it is sent.
    #[arg(long, env = "NOTIFY_BATCH_WINDOW", default_value = "2s", value_parser = parse_duration)]
    pub notify_batch_window: Duration,
    /// Characters of the newest message's body sent as `preview` (0: no preview).
    #[arg(long, env = "NOTIFY_PREVIEW_CHARS", default_value_t = 100)]
    pub notify_preview_chars: usize,
    /// Most entries (one per offline member and message) waiting in the queue; past it, new
    /// entries are dropped and counted (api_notify_dropped_total{reason="queue_full"}). Also the
    /// cap of the dead letters kept (oldest dropped first).
    #[arg(long, env = "NOTIFY_QUEUE_MAX", default_value_t = 100_000)]
    pub notify_queue_max: usize,
    /// Most messages in one webhook batch; a fuller batch is sent before its window ends.
    #[arg(long, env = "NOTIFY_BATCH_MAX", default_value_t = 100)]
    pub notify_batch_max: usize,
    /// Webhook requests (batches being sent or waiting for a retry) in flight per replica.
    #[arg(long, env = "NOTIFY_IN_FLIGHT_MAX", default_value_t = 32)]
    pub notify_in_flight_max: usize,
    /// Deadline of one webhook request (connect, send, response head).
    #[arg(long, env = "NOTIFY_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_nonzero_duration)]
    pub notify_request_timeout: Duration,
    /// Attempts per batch (errors, timeouts and non-2xx answers count); after the last failed
    /// one the batch's entries move to the dead letters.
    #[arg(long, env = "NOTIFY_MAX_ATTEMPTS", default_value_t = 6)]
    pub notify_max_attempts: u32,
    /// Pause after the first failed attempt; it doubles (with jitter, half to all of it) after
    /// each further failure, up to 30 s.
    #[arg(long, env = "NOTIFY_RETRY_BACKOFF", default_value = "500ms", value_parser = parse_nonzero_duration)]
    pub notify_retry_backoff: Duration,
    /// How long a queue entry claimed by a replica that stopped renewing its claim (it died) waits
    /// before another replica claims it. Claims are renewed every third of it.
    #[arg(long, env = "NOTIFY_CLAIM_IDLE", default_value = "30s", value_parser = parse_nonzero_duration)]
    pub notify_claim_idle: Duration,
}

/// The checked settings of an enabled offline hook.
#[derive(Clone)]
pub struct NotifySettings {
    pub url: String,
    pub secret: Vec<u8>,
    pub batch_window: Duration,
    pub preview_chars: usize,
    pub queue_max: usize,
    pub batch_max: usize,
    pub in_flight_max: usize,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    pub claim_idle: Duration,
}

impl std::fmt::Debug for NotifySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("NotifySettings")
            .field("url", &self.url)
            .field("batch_window", &self.batch_window)
            .field("queue_max", &self.queue_max)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyConfigError {
    #[error("NOTIFY_WEBHOOK_SECRET is required with NOTIFY_WEBHOOK_URL (receivers check the X-Chat-Signature it keys)")]
    MissingSecret,
    #[error("NOTIFY_WEBHOOK_SECRET must be at least {SECRET_BYTES_MIN} bytes (got {0})")]
    ShortSecret(usize),
    #[error("NOTIFY_WEBHOOK_URL {0:?}: expected http://HOST[:PORT]/PATH (this build sends plain HTTP; reach an https receiver through a TLS-originating proxy)")]
    Url(String),
    #[error("{name} must be at least {min} (got {value})")]
    TooSmall {
        name: &'static str,
        min: u64,
        value: u64,
    },
    #[error("NOTIFY_CLAIM_IDLE ({claim_idle:?}) must exceed 2 × NOTIFY_REQUEST_TIMEOUT ({request:?}): claims are renewed every third of it, between requests")]
    ClaimIdle {
        claim_idle: Duration,
        request: Duration,
    },
}

impl NotifyArgs {
    /// The checked settings; `None` when the hook is off (no NOTIFY_WEBHOOK_URL).
    pub fn settings(&self) -> Result<Option<NotifySettings>, NotifyConfigError> {
        let Some(url) = self.notify_webhook_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let secret = self
            .notify_webhook_secret
            .as_deref()
            .ok_or(NotifyConfigError::MissingSecret)?;
        if secret.len() < SECRET_BYTES_MIN {
            return Err(NotifyConfigError::ShortSecret(secret.len()));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| NotifyConfigError::Url(url.into()))?;
        if parsed.scheme() != "http" || parsed.host_str().is_none() {
            return Err(NotifyConfigError::Url(url.into()));
        }
        let at_least = |name, min: u64, value: u64| {
            if value < min {
                Err(NotifyConfigError::TooSmall { name, min, value })
            } else {
                Ok(())
            }
        };
        at_least("NOTIFY_QUEUE_MAX", 1, self.notify_queue_max as u64)?;
        at_least("NOTIFY_BATCH_MAX", 1, self.notify_batch_max as u64)?;
        at_least("NOTIFY_IN_FLIGHT_MAX", 1, self.notify_in_flight_max as u64)?;
        at_least(
            "NOTIFY_MAX_ATTEMPTS",
            1,
            u64::from(self.notify_max_attempts),
        )?;
        if self.notify_claim_idle <= self.notify_request_timeout * 2 {
            return Err(NotifyConfigError::ClaimIdle {
                claim_idle: self.notify_claim_idle,
                request: self.notify_request_timeout,
            });
        }
        Ok(Some(NotifySettings {
            url: url.to_string(),
            secret: secret.as_bytes().to_vec(),
            batch_window: self.notify_batch_window,
            preview_chars: self.notify_preview_chars,
            queue_max: self.notify_queue_max,
            batch_max: self.notify_batch_max,
            in_flight_max: self.notify_in_flight_max,
            request_timeout: self.notify_request_timeout,
            max_attempts: self.notify_max_attempts,
            retry_backoff: self.notify_retry_backoff,
            claim_idle: self.notify_claim_idle,
        }))
    }
}

/// One queue entry: member `user_id` had no live route when `message_id` was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub user_id: String,
    pub chat_id: Id,
    pub message_id: Id,
    /// The start of the body; empty when previews are off.
    pub preview: String,
    /// When it was queued (Unix ms): a batch's window starts at its oldest entry.
    pub enqueued_ms: u64,
}

/// An entry claimed by this replica; `id` names it in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: String,
    pub entry: Entry,
}

/// What [`NotifyQueue::push`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Entries now in the queue (an entry already there counts once).
    pub queued: usize,
    /// Entries dropped because the queue held `NOTIFY_QUEUE_MAX`.
    pub full: usize,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QueueError {
    #[error("notification queue unavailable: {0}")]
    Unavailable(String),
    #[error("notification queue timed out")]
    Timeout,
}

/// The durable notification queue; one conformance suite ([`conformance`]) runs against both
/// implementations.
#[async_trait]
pub trait NotifyQueue: Send + Sync + 'static {
    /// Appends entries while the queue holds fewer than its cap; the rest are dropped.
    async fn push(&self, entries: Vec<Entry>) -> Result<Pushed, QueueError>;
    /// Claims up to `max` entries for this replica: first entries whose claim was not renewed
    /// for the claim idle time (their replica died), then new ones; oldest first.
    async fn claim(&self, max: usize) -> Result<Vec<Claimed>, QueueError>;
    /// Renews this replica's claim of `ids`, so that no other replica takes them.
    async fn renew(&self, ids: &[String]) -> Result<(), QueueError>;
    /// Gives up this replica's claim of `ids` (it is stopping): another replica, or the next
    /// start, may claim them at once instead of after the claim idle time.
    async fn release(&self, ids: &[String]) -> Result<(), QueueError>;
    /// Deletes delivered entries.
    async fn ack(&self, ids: &[String]) -> Result<(), QueueError>;
    /// Moves entries that could not be delivered to the dead letters (capped, oldest dropped).
    async fn dead_letter(&self, entries: &[Claimed], reason: &str) -> Result<(), QueueError>;
    /// Entries in the queue (waiting or claimed).
    async fn backlog(&self) -> Result<u64, QueueError>;
    /// Dead letters kept.
    async fn dead_letters(&self) -> Result<u64, QueueError>;
}

/// The send path's side of the hook: queues an entry per offline member of a stored message.
#[derive(Clone)]
pub struct Notifier {
    pub queue: Arc<dyn NotifyQueue>,
    pub preview_chars: usize,
}

impl Notifier {
    pub fn new(queue: Arc<dyn NotifyQueue>, settings: &NotifySettings) -> Notifier {
        Notifier {
            queue,
            preview_chars: settings.preview_chars,
        }
    }

    /// Queues `message` for each of `offline` (members with no live route, the sender left out).
    /// A full queue drops entries (counted, logged); only an unreachable queue is an error.
    pub async fn enqueue(&self, message: &Message, offline: &[String]) -> Result<(), QueueError> {
        if offline.is_empty() {
            return Ok(());
        }
        // Tests fail the queueing alone (`FAILPOINTS=notify::enqueue=1*return`) to check that a
        // retried fan-out queues without delivering twice.
        fail::fail_point!("notify::enqueue", |_| Err(QueueError::Unavailable(
            "injected failure at notify::enqueue".into()
        )));
        let preview = preview(&message.body, self.preview_chars);
        let now = shared::ids::now_unix_ms();
        let entries = offline
            .iter()
            .map(|user| Entry {
                user_id: user.clone(),
                chat_id: message.chat_id,
                message_id: message.message_id,
                preview: preview.clone(),
                enqueued_ms: now,
            })
            .collect();
        let pushed = self.queue.push(entries).await?;
        metrics::counter!(NOTIFY_QUEUED_TOTAL).increment(pushed.queued as u64);
        if pushed.full > 0 {
            metrics::counter!(NOTIFY_DROPPED_TOTAL, "reason" => crate::telemetry::notify_drop::QUEUE_FULL)
                .increment(pushed.full as u64);
            tracing::warn!(chat_id = %message.chat_id, message_id = %message.message_id,
                dropped = pushed.full,
                "notification queue full (NOTIFY_QUEUE_MAX); offline members not notified");
        }
        Ok(())
    }
}

/// The first `chars` characters of `body`.
pub fn preview(body: &str, chars: usize) -> String {
    match body.char_indices().nth(chars) {
        Some((end, _)) => body[..end].to_string(),
        None => body.to_string(),
    }
}

/// The JSON body of one webhook request: the messages of one chat a user missed. Part of the
/// public interface (docs/OPERATIONS.md, "Push notifications"); ids are decimal strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookBatch {
    pub user_id: String,
    pub chat_id: Id,
    /// Ascending, without duplicates.
    pub message_ids: Vec<Id>,
    pub count: usize,
    /// The start of the newest message's body; absent when previews are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

impl WebhookBatch {
    /// The batch for entries of one user and chat.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Option<WebhookBatch> {
        let mut entries: Vec<&Entry> = entries.into_iter().collect();
        entries.sort_by_key(|e| e.message_id);
        entries.dedup_by_key(|e| e.message_id);
        let newest = entries.last()?;
        Some(WebhookBatch {
            user_id: newest.user_id.clone(),
            chat_id: newest.chat_id,
            message_ids: entries.iter().map(|e| e.message_id).collect(),
            count: entries.len(),
            preview: (!newest.preview.is_empty()).then(|| newest.preview.clone()),
        })
    }

    /// The same for every delivery of these messages to this user: the first 32 hex digits of
    /// SHA-256 over the user, the chat and the message ids.
    pub fn idempotency_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.user_id.as_bytes());
        h.update([0]);
        h.update(self.chat_id.0.to_be_bytes());
        for id in &self.message_ids {
            h.update(id.0.to_be_bytes());
        }
        hex(&h.finalize()[..16])
    }
}

/// The `X-Chat-Signature` value of `body`: `sha256=` and the hex HMAC-SHA256 with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // Any key length is valid for HMAC.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        notify: NotifyArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<NotifySettings>, NotifyConfigError> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().notify.settings()
    }

    #[test]
    fn the_hook_is_off_without_a_url_and_checked_with_one() {
        assert!(parse(&[]).unwrap().is_none());
        let url = ["--notify-webhook-url", "http://127.0.0.1:9/hook"];
        assert_eq!(parse(&url).unwrap_err(), NotifyConfigError::MissingSecret);
        let ok = [&url[..], &["--notify-webhook-secret", "0123456789abcdef"]].concat();
        let s = parse(&ok).unwrap().unwrap();
        assert_eq!(s.max_attempts, 6);
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "secret kept out of logs"
        );
        let short = [&url[..], &["--notify-webhook-secret", "short"]].concat();
        assert_eq!(
            parse(&short).unwrap_err(),
            NotifyConfigError::ShortSecret(5)
        );
        for bad in ["https://example.com/hook", "ftp://x/y", "not a url"] {
            let args = [
                "--notify-webhook-url",
                bad,
                "--notify-webhook-secret",
                "0123456789abcdef",
            ];
            assert!(
                matches!(parse(&args), Err(NotifyConfigError::Url(_))),
                "{bad}"
            );
        }
        let zero = [&ok[..], &["--notify-queue-max", "0"]].concat();
        assert!(parse(&zero)
            .unwrap_err()
            .to_string()
            .contains("NOTIFY_QUEUE_MAX"));
        let idle = [&ok[..], &["--notify-claim-idle", "10s"]].concat();
        assert!(matches!(
            parse(&idle),
            Err(NotifyConfigError::ClaimIdle { .. })
        ));
    }

    fn entry(user: &str, message: u64, preview: &str) -> Entry {
        Entry {
            user_id: user.into(),
            chat_id: Id(7),
            message_id: Id(message),
            preview: preview.into(),
            enqueued_ms: 1,
        }
    }

    #[test]
    fn a_batch_lists_each_message_once_in_order_with_the_newest_preview() {
        let entries = [
            entry("bob", 30, "c"),
            entry("bob", 10, "a"),
            entry("bob", 30, "c"),
        ];
        let b = WebhookBatch::from_entries(&entries).unwrap();
        assert_eq!(b.message_ids, vec![Id(10), Id(30)]);
        assert_eq!(b.count, 2);
        assert_eq!(b.preview.as_deref(), Some("c"));
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"user_id": "bob", "chat_id": "7", "message_ids": ["10", "30"],
                "count": 2, "preview": "c"})
        );
        let no_preview = WebhookBatch::from_entries(&[entry("bob", 1, "")]).unwrap();
        assert!(serde_json::to_value(&no_preview)
            .unwrap()
            .get("preview")
            .is_none());
        assert!(WebhookBatch::from_entries(&[]).is_none());
    }

    #[test]
    fn the_idempotency_key_follows_user_and_messages_only() {
        let a = WebhookBatch::from_entries(&[entry("bob", 1, "x"), entry("bob", 2, "y")]).unwrap();
        let same =
            WebhookBatch::from_entries(&[entry("bob", 2, "z"), entry("bob", 1, "")]).unwrap();
        assert_eq!(a.idempotency_key(), same.idempotency_key());
        assert_eq!(a.idempotency_key().len(), 32);
        let other_user = WebhookBatch::from_entries(&[entry("bo", 1, ""), entry("bo", 2, "")]);
        assert_ne!(a.idempotency_key(), other_user.unwrap().idempotency_key());
        let fewer = WebhookBatch::from_entries(&[entry("bob", 1, "")]).unwrap();
        assert_ne!(a.idempotency_key(), fewer.idempotency_key());
    }

    #[test]
    fn signature_is_the_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn preview_cuts_at_characters_not_bytes() {
        assert_eq!(preview("héllo wörld", 4), "héll");
        assert_eq!(preview("hi", 10), "hi");
        assert_eq!(preview("hi", 0), "");
    }
}
