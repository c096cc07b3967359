//! Node bus on Redis streams: `XADD` one entry per target node, each node reads its own stream
//! with a blocking `XREAD` on a connection of its own.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::config::Options;
use fred::types::Value;

use super::{as_string, init_client, map_err, queue, Shared};
use crate::routing::{Envelope, NodeBus, NodeInfo, RoutingError, Subscription};

/// Stream entry field holding the recipients (MessagePack array of strings).
const FIELD_RECIPIENTS: &str = "r";
/// Stream entry field holding the frame bytes as published.
const FIELD_PAYLOAD: &str = "p";
/// First and longest pause after a failed read.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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
            backoff: BACKOFF_MIN,
            resync: false,
            oldest_age: None,
        };
        match sub.newest_id().await {
            Ok(newest) => sub.last_id = newest.unwrap_or(StreamId::ZERO),
            Err(e) => {
                let _ = sub.client.quit().await;
                return Err(e);
            }
        }
        Ok(Box::new(sub))
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
pub struct RedisSubscription {
    client: Client,
    key: String,
    last_id: StreamId,
    command_timeout: Duration,
    block_timeout: Duration,
    backoff: Duration,
    resync: bool,
    /// Age of the oldest entry of the last non-empty read (from its id's millisecond part).
    oldest_age: Option<Duration>,
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
            self.resync = false;
        }
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
                Some(max.max(1) as u64),
                Some(block_ms),
                self.key.as_str(),
                self.last_id.to_string(),
            ),
        )
        .await
        .map_err(|_| RoutingError::Timeout)?
        .map_err(map_err)?;
        let mut out = Vec::new();
        let mut oldest_ms: Option<u64> = None;
        for (id, fields) in entries(reply) {
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
        Ok(out)
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    /// On a Redis failure this waits a backoff (50 ms doubling to 1 s) and returns the error;
    /// the subscription stays usable and the next call resumes as described on the type.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, RoutingError> {
        match self.read(max).await {
            Ok(batch) => {
                self.backoff = BACKOFF_MIN;
                Ok(batch)
            }
            Err(e) => {
                self.resync = true;
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Err(e)
            }
        }
    }

    fn oldest_age(&self) -> Option<Duration> {
        self.oldest_age
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

/// The (id, fields) of each entry of an `XREAD` reply for one stream (RESP2 or RESP3 shape).
fn entries(reply: Value) -> Vec<(String, Vec<Value>)> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.inner().into_values().collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|list| match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .filter_map(|entry| match entry {
            Value::Array(mut parts) if parts.len() == 2 => {
                let fields = match parts.pop()? {
                    Value::Array(f) => f,
                    _ => return None,
                };
                Some((as_string(&parts[0])?, fields))
            }
            _ => None,
        })
        .collect()
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
