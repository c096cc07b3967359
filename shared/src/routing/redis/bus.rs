//! Node bus on Redis streams: `XADD` one entry per target node, each node reads its own stream
//! with a blocking `XREAD` on a connection of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::config::Options;
use fred::types::Value;

use super::{as_string, entries, init_client, map_err, pairs, queue, Shared};
use crate::routing::{Envelope, NodeBus, NodeInfo, PresenceReports, RoutingError, Subscription};

/// Stream entry field holding the recipients (MessagePack array of strings).
const FIELD_RECIPIENTS: &str = "r";
/// Stream entry field holding the frame bytes as published.
const FIELD_PAYLOAD: &str = "p";
/// Most entries one read asks for (`XREAD COUNT`); larger requests are clamped to it. A node
/// stream's cap is never below it (checked by `connect`), which keeps the check for trimmed
/// entries down to full reads (see [`RedisSubscription`]).
pub const STREAM_READ_MAX: usize = 1000;

/// Node bus in Redis; see the parent module for the stream key and entry layout.
pub struct RedisBus {
    shared: Arc<Shared>,
}

impl RedisBus {
    pub(super) fn new(shared: Arc<Shared>) -> RedisBus {
        RedisBus { shared }
    }
}

#[async_trait]
impl NodeBus for RedisBus {
    async fn publish(&self, entries: Vec<(String, Envelope)>) -> Result<(), RoutingError> {
        if entries.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let p = s.pipeline();
        for (node, envelope) in entries {
            let recipients = rmp_serde::to_vec(&envelope.recipients)
                .map_err(|e| RoutingError::Unavailable(format!("encode recipients: {e}")))?;
            queue(
                p.xadd::<(), _, _, _, _>(
                    s.keys.stream(&node),
                    false,
                    ("MAXLEN", "~", s.opts.stream_maxlen as i64),
                    "*",
                    vec![
                        (FIELD_RECIPIENTS, Value::Bytes(Bytes::from(recipients))),
                        (FIELD_PAYLOAD, Value::Bytes(envelope.frame)),
                    ],
                )
                .await,
            )?;
        }
        s.run(p).await.map(|_| ())
    }

    /// Starts after the stream's newest entry at the time of the call, so nothing published
    /// after `subscribe` returns is missed. Opens a dedicated connection: a blocking `XREAD`
    /// would otherwise hold up every other command of the shared client.
    async fn subscribe(&self, node: &NodeInfo) -> Result<Box<dyn Subscription>, RoutingError> {
        let s = &self.shared;
        let client = s.client.clone_new();
        init_client(&client, &s.opts).await?;
        let mut sub = RedisSubscription {
            client,
            key: s.keys.stream(&node.node_id),
            last_id: StreamId::ZERO,
            command_timeout: s.opts.command_timeout,
            block_timeout: s.opts.block_timeout,
            resync: false,
            oldest_age: None,
            gap: false,
            position: None,
            counts_unsupported: false,
        };
        match sub.info().await {
            Ok(Some(info)) => {
                sub.last_id = info.last_generated;
                sub.position = info.entries_added;
                if info.entries_added.is_none() {
                    sub.warn_counts_unsupported();
                }
            }
            Ok(None) => sub.position = Some(0),
            Err(e) => {
                let _ = sub.client.quit().await;
                return Err(e);
            }
        }
        Ok(Box::new(sub))
    }

    async fn report_presence(&self, users: Vec<String>) -> Result<(), RoutingError> {
        super::presence::report(&self.shared, users).await
    }

    async fn presence_reports(&self) -> Result<Box<dyn PresenceReports>, RoutingError> {
        Ok(Box::new(super::presence::reader(&self.shared).await?))
    }
}

/// A stream entry id `ms-seq`, ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    const ZERO: StreamId = StreamId(0, 0);

    fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// Reads one node's stream from a remembered position.
///
/// After a failure (Redis restarted, connection lost) the next call checks the stream again: if
/// the stream's newest id is at or past the remembered one, reading simply continues, so entries
/// written after a restart (which get ids from the server clock, above the old ones) are all
/// delivered. If the newest id is below the remembered one, the stream went backwards (restored
/// from an older snapshot, or a server clock behind ours); reading then continues from its newest
/// entry, skipping the older ones rather than risking duplicates. Real-time delivery is best
/// effort and clients catch up from the store.
///
/// # Trimmed entries
///
/// Writers cap the stream with `MAXLEN ~`, so a reader that falls further behind than the cap
/// would skip the trimmed entries without noticing. The subscription counts: it knows the
/// position of its cursor in the stream (how many entries were ever added up to it; Redis 7
/// reports `entries-added` in `XINFO STREAM`), and since only trimming removes entries (nothing
/// here uses `XDEL`), `entries-added − length` is how many were trimmed. When more were trimmed
/// than the cursor's position, entries after the cursor were lost, and the subscription reports a
/// gap ([`Subscription::take_gap`]; conservatively: the trim may also have reached only entries
/// read just before). The check runs only after a read that returned a full batch, which is
/// enough: approximate trimming never leaves fewer entries than the cap, every entry it leaves is
/// newer than every entry it removed, and the cap is at least [`STREAM_READ_MAX`], so at least
/// the batch asked for. If any entry after the cursor was trimmed before a read, at least a full
/// batch of entries after the cursor remained, and the read returned a full batch.
///
/// The position is taken at `subscribe`, and again after a failure (or a gap) at the next read
/// that reaches the end of the stream with nothing appended meanwhile; until then no gap can be
/// seen, but a failure has already made the node resync.
pub struct RedisSubscription {
    client: Client,
    key: String,
    last_id: StreamId,
    command_timeout: Duration,
    block_timeout: Duration,
    resync: bool,
    /// Age of the oldest entry of the last non-empty read (from its id's millisecond part).
    oldest_age: Option<Duration>,
    /// Entries after the cursor were trimmed before they were read; taken by `take_gap`.
    gap: bool,
    /// Entries ever added to the stream up to and including the cursor; `None` until known.
    position: Option<u64>,
    /// The server does not report `entries-added` (before Redis 7); warned once.
    counts_unsupported: bool,
}

/// What `XINFO STREAM` says about a stream.
struct StreamInfo {
    last_generated: StreamId,
    length: u64,
    /// Entries ever added (Redis 7 and later).
    entries_added: Option<u64>,
}

impl RedisSubscription {
    async fn newest_id(&self) -> Result<Option<StreamId>, RoutingError> {
        let reply = tokio::time::timeout(
            self.command_timeout,
            self.client
                .xrevrange::<Value, _, _, _>(&self.key, "+", "-", Some(1)),
        )
        .await
        .map_err(|_| RoutingError::Timeout)?
        .map_err(map_err)?;
        Ok(match reply {
            Value::Array(entries) => entries.first().and_then(|e| match e {
                Value::Array(parts) => parts.first().and_then(as_string),
                _ => None,
            }),
            _ => None,
        }
        .and_then(|id| StreamId::parse(&id)))
    }

    /// The stream's counters; `None` when it does not exist.
    async fn info(&self) -> Result<Option<StreamInfo>, RoutingError> {
        let reply = tokio::time::timeout(
            self.command_timeout,
            self.client.xinfo_stream::<Value, _>(&self.key, false, None),
        )
        .await
        .map_err(|_| RoutingError::Timeout)?;
        let reply = match reply {
            Err(e) if e.details().contains("no such key") => return Ok(None),
            other => other.map_err(map_err)?,
        };
        let fields: HashMap<String, String> = pairs(reply).into_iter().collect();
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(StreamInfo {
            last_generated: fields
                .get("last-generated-id")
                .and_then(|v| StreamId::parse(v))
                .unwrap_or(StreamId::ZERO),
            length: number("length").unwrap_or(0),
            entries_added: number("entries-added"),
        }))
    }

    fn warn_counts_unsupported(&mut self) {
        if !std::mem::replace(&mut self.counts_unsupported, true) {
            tracing::warn!(
                stream = %self.key,
                "XINFO STREAM reports no entries-added (Redis before 7.0): entries trimmed \
                 before they were read cannot be noticed"
            );
        }
    }

    /// Accounts for a read of `read` entries that started at position `before` and moved the
    /// cursor to `self.last_id`; checks for trimmed entries after a full read (`full`), and takes
    /// the position again when it is unknown and the read reached the end of the stream.
    async fn account(
        &mut self,
        before: Option<u64>,
        read: u64,
        full: bool,
    ) -> Result<(), RoutingError> {
        if self.counts_unsupported {
            return Ok(());
        }
        match (before, full) {
            (Some(p), false) => self.position = Some(p + read),
            (Some(p), true) => {
                let Some(info) = self.info().await? else {
                    self.position = None;
                    return Ok(());
                };
                let Some(added) = info.entries_added else {
                    self.position = None;
                    self.warn_counts_unsupported();
                    return Ok(());
                };
                let trimmed = added.saturating_sub(info.length);
                if added < p {
                    // The stream was deleted and created again: count from the next quiet read.
                    self.position = None;
                } else if trimmed > p {
                    tracing::warn!(
                        stream = %self.key,
                        position = p,
                        trimmed,
                        "node stream was trimmed past this reader; deliveries were lost"
                    );
                    self.gap = true;
                    // At least this far: entries after it that are lost later are still seen.
                    self.position = Some(trimmed + read);
                } else {
                    self.position = Some(p + read);
                }
            }
            (None, true) => {}
            (None, false) => {
                if let Some(info) = self.info().await? {
                    if info.last_generated == self.last_id {
                        self.position = info.entries_added;
                        if info.entries_added.is_none() {
                            self.warn_counts_unsupported();
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<Vec<Envelope>, RoutingError> {
        if self.resync {
            if let Some(newest) = self.newest_id().await? {
                if newest < self.last_id {
                    tracing::warn!(
                        stream = %self.key,
                        newest = %newest,
                        last = %self.last_id,
                        "node stream went backwards; continuing from its newest entry"
                    );
                    self.last_id = newest;
                }
            }
            // Entries may have been added and lost meanwhile, or the stream started anew.
            self.position = None;
            self.resync = false;
        }
        let count = max.clamp(1, STREAM_READ_MAX);
        let before = self.position;
        let block_ms = self.block_timeout.as_millis().max(1) as u64;
        // The server answers within the block time; the command timeout is on top of it.
        let deadline = self.block_timeout + self.command_timeout;
        let options = Options {
            timeout: Some(deadline),
            fail_fast: true,
            ..Options::default()
        };
        let reply = tokio::time::timeout(
            deadline,
            self.client.with_options(&options).xread::<Value, _, _>(
                Some(count as u64),
                Some(block_ms),
                self.key.as_str(),
                self.last_id.to_string(),
            ),
        )
        .await
        .map_err(|_| RoutingError::Timeout)?
        .map_err(map_err)?;
        let entries = entries(reply);
        let read = entries.len();
        let mut out = Vec::new();
        let mut oldest_ms: Option<u64> = None;
        for (id, fields) in entries {
            if let Some(id) = StreamId::parse(&id) {
                self.last_id = self.last_id.max(id);
                oldest_ms = Some(oldest_ms.map_or(id.0, |o| o.min(id.0)));
            }
            match decode(fields) {
                Some(envelope) => out.push(envelope),
                None => tracing::warn!(stream = %self.key, id = %id, "skipping malformed entry"),
            }
        }
        if let Some(ms) = oldest_ms {
            // The id's time is the Redis server's clock: a skew against ours shows as lag (or
            // zero, never negative).
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.oldest_age = Some(Duration::from_millis(now_ms.saturating_sub(ms)));
        }
        // The entries are read: a failed check must not lose them. It only costs the position
        // (taken again at a quiet read); a Redis failure makes the node resync anyway.
        if let Err(e) = self.account(before, read as u64, read >= count).await {
            tracing::warn!(stream = %self.key, error = %e, "node stream check for trimmed entries failed");
            self.position = None;
        }
        Ok(out)
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    /// On a Redis failure this returns the error at once (the caller paces its retries); the
    /// subscription stays usable and the next call resumes as described on the type.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, RoutingError> {
        let result = self.read(max).await;
        if result.is_err() {
            self.resync = true;
        }
        result
    }

    fn oldest_age(&self) -> Option<Duration> {
        self.oldest_age
    }

    fn take_gap(&mut self) -> bool {
        std::mem::take(&mut self.gap)
    }
}

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        let client = self.client.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

fn decode(fields: Vec<Value>) -> Option<Envelope> {
    let (mut recipients, mut frame) = (None, None);
    for kv in fields.chunks_exact(2) {
        let bytes = kv[1].as_bytes()?;
        match as_string(&kv[0])?.as_str() {
            FIELD_RECIPIENTS => recipients = rmp_serde::from_slice::<Vec<String>>(bytes).ok(),
            FIELD_PAYLOAD => frame = Some(Bytes::copy_from_slice(bytes)),
            _ => {}
        }
    }
    Some(Envelope {
        recipients: recipients?,
        frame: frame?,
    })
}
