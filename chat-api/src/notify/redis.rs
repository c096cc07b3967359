//! The notification queue of distributed mode: a Redis stream (`notify:{q}`) read by the consumer
//! group `dispatch`, one consumer per API replica, and a dead-letter stream (`notify:{q}:dead`).
//! Both keys share the hash tag, so the scripts below are valid on Redis Cluster (the queue lives
//! on one shard).
//!
//! An entry stays in the stream until its batch was accepted (`XACK` + `XDEL` in one script), so
//! `XLEN` is what is waiting or in flight and the cap is checked against it when pushing. A
//! replica's claims are its pending entries; it renews them (`XCLAIM … JUSTID`) while it holds
//! them, and `XAUTOCLAIM` hands the entries of a replica that stopped renewing (it died) to
//! another once they were idle for `NOTIFY_CLAIM_IDLE`.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use parking_lot::Mutex;
use shared::Id;

use super::{Claimed, Entry, NotifyQueue, Pushed, QueueError};

/// The consumer group every replica reads through.
pub const GROUP: &str = "dispatch";
/// Ids per command when renewing or acknowledging many entries.
const IDS_PER_COMMAND: usize = 500;
/// Consumers of earlier boots idle this long, holding nothing, are deleted at start.
const CONSUMER_IDLE_PRUNE: Duration = Duration::from_secs(3600);
/// Most consumers looked at per start.
const PRUNE_MAX: usize = 1000;

/// Appends entries while `XLEN` is below the cap. ARGV: cap, then user, chat, message, preview,
/// time for each entry. Returns how many were added.
const PUSH_SCRIPT: &str = r#"
local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
local added = 0
local i = 2
while i + 4 <= #ARGV and added < room do
  redis.call('XADD', KEYS[1], '*', 'u', ARGV[i], 'c', ARGV[i+1], 'm', ARGV[i+2], 'p', ARGV[i+3], 't', ARGV[i+4])
  added = added + 1
  i = i + 5
end
return added
"#;

/// Acknowledges and deletes entries. ARGV: group, then ids.
const ACK_SCRIPT: &str = r#"
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"#;

/// Moves entries to the dead letters (KEYS[2], capped) if they are still queued. ARGV: group,
/// cap, reason, failure time, then id, user, chat, message, preview, time for each entry.
const DEAD_SCRIPT: &str = r#"
local moved = 0
local i = 5
while i + 5 <= #ARGV do
  local id = ARGV[i]
  if redis.call('XDEL', KEYS[1], id) == 1 then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'id', id, 'u', ARGV[i+1], 'c', ARGV[i+2],
      'm', ARGV[i+3], 'p', ARGV[i+4], 't', ARGV[i+5], 'reason', ARGV[3], 'failed', ARGV[4])
    moved = moved + 1
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
  end
  i = i + 6
end
return moved
"#;

pub struct RedisQueue {
    client: Client,
    key: String,
    dead_key: String,
    consumer: String,
    cap: usize,
    claim_idle: Duration,
    timeout: Duration,
    /// Where the next `XAUTOCLAIM` scan of the pending entries starts.
    cursor: Mutex<String>,
}

fn err(e: fred::error::Error) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

impl RedisQueue {
    /// The queue under the hash tag `{tag}` (`q` in production; tests use their own), read as
    /// `consumer` (unique per replica). Creates the consumer group if it is missing.
    pub async fn new(
        client: Client,
        tag: &str,
        consumer: String,
        cap: usize,
        claim_idle: Duration,
        timeout: Duration,
    ) -> Result<RedisQueue, QueueError> {
        let q = RedisQueue {
            client,
            key: format!("notify:{{{tag}}}"),
            dead_key: format!("notify:{{{tag}}}:dead"),
            consumer,
            cap,
            claim_idle,
            timeout,
            cursor: Mutex::new("0-0".into()),
        };
        q.create_group().await?;
        q.prune_consumers().await;
        Ok(q)
    }

    /// Deletes consumers of earlier boots that hold nothing and were idle for
    /// [`CONSUMER_IDLE_PRUNE`], so that restarts do not grow the group without bound. Best
    /// effort: a failure only leaves them for the next boot.
    async fn prune_consumers(&self) {
        let reply = self
            .command(
                "XINFO",
                1,
                vec!["CONSUMERS".into(), self.key.clone(), GROUP.into()],
            )
            .await;
        let Ok(Value::Array(consumers)) = reply else {
            return;
        };
        for c in consumers.into_iter().take(PRUNE_MAX) {
            let Value::Array(kv) = c else { continue };
            let (mut name, mut pending, mut idle) = (None, None, None);
            for pair in kv.chunks(2) {
                if let [k, v] = pair {
                    match k.as_string().as_deref() {
                        Some("name") => name = v.as_string(),
                        Some("pending") => pending = v.as_u64(),
                        Some("idle") => idle = v.as_u64(),
                        _ => {}
                    }
                }
            }
            if let (Some(name), Some(0), Some(idle)) = (name, pending, idle) {
                if name != self.consumer && idle >= CONSUMER_IDLE_PRUNE.as_millis() as u64 {
                    let args = vec!["DELCONSUMER".into(), self.key.clone(), GROUP.into(), name];
                    let _ = self.command("XGROUP", 1, args).await;
                }
            }
        }
    }

    /// The stream key (for operators and tests).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Creates the group reading from the start of the stream (entries queued before any
    /// dispatcher ran are delivered too); an existing group is left as it is.
    async fn create_group(&self) -> Result<(), QueueError> {
        let r = self
            .command(
                "XGROUP",
                1,
                vec![
                    "CREATE".into(),
                    self.key.clone(),
                    GROUP.into(),
                    "0".into(),
                    "MKSTREAM".into(),
                ],
            )
            .await;
        match r {
            Err(QueueError::Unavailable(e)) if e.contains("BUSYGROUP") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// One command, routed by the argument at `key_at`, under the timeout.
    async fn command(
        &self,
        name: &'static str,
        key_at: usize,
        args: Vec<String>,
    ) -> Result<Value, QueueError> {
        let cmd = CustomCommand::new_static(name, ClusterHash::Offset(key_at), false);
        self.timed(self.client.custom::<Value, String>(cmd, args))
            .await
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, QueueError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(QueueError::Timeout),
            Ok(r) => r.map_err(err),
        }
    }

    async fn eval(
        &self,
        script: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<i64, QueueError> {
        self.timed(self.client.eval::<i64, _, _, _>(script, keys, args))
            .await
    }

    /// A command that needs the group: recreated once if the stream was lost (a Redis restart
    /// without persistence).
    async fn grouped(
        &self,
        name: &'static str,
        key_at: usize,
        args: Vec<String>,
    ) -> Result<Value, QueueError> {
        match self.command(name, key_at, args.clone()).await {
            Err(QueueError::Unavailable(e)) if e.contains("NOGROUP") => {
                tracing::warn!(key = %self.key, "notification consumer group missing; creating it again");
                self.create_group().await?;
                self.command(name, key_at, args).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl NotifyQueue for RedisQueue {
    async fn push(&self, entries: Vec<Entry>) -> Result<Pushed, QueueError> {
        let n = entries.len();
        let mut args = Vec::with_capacity(1 + 5 * n);
        args.push(self.cap.to_string());
        for e in entries {
            args.extend([
                e.user_id,
                e.chat_id.to_string(),
                e.message_id.to_string(),
                e.preview,
                e.enqueued_ms.to_string(),
            ]);
        }
        let added = self.eval(PUSH_SCRIPT, vec![self.key.clone()], args).await? as usize;
        Ok(Pushed {
            queued: added,
            full: n.saturating_sub(added),
        })
    }

    async fn claim(&self, max: usize) -> Result<Vec<Claimed>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let start = self.cursor.lock().clone();
        let reply = self
            .grouped(
                "XAUTOCLAIM",
                0,
                vec![
                    self.key.clone(),
                    GROUP.into(),
                    self.consumer.clone(),
                    (self.claim_idle.as_millis() as u64).to_string(),
                    start,
                    "COUNT".into(),
                    max.to_string(),
                ],
            )
            .await?;
        let mut claimed = Vec::new();
        if let Value::Array(mut parts) = reply {
            if parts.len() >= 2 {
                let entries = parts.swap_remove(1);
                if let Some(next) = parts.first().and_then(Value::as_string) {
                    *self.cursor.lock() = next;
                }
                claimed.extend(parse_entries(entries));
            }
        }
        if claimed.len() < max {
            let reply = self
                .grouped(
                    "XREADGROUP",
                    6,
                    vec![
                        "GROUP".into(),
                        GROUP.into(),
                        self.consumer.clone(),
                        "COUNT".into(),
                        (max - claimed.len()).to_string(),
                        "STREAMS".into(),
                        self.key.clone(),
                        ">".into(),
                    ],
                )
                .await?;
            // [[key, [entries]]] (nil when nothing is new).
            if let Value::Array(streams) = reply {
                for stream in streams {
                    if let Value::Array(mut kv) = stream {
                        if kv.len() == 2 {
                            claimed.extend(parse_entries(kv.swap_remove(1)));
                        }
                    }
                }
            }
        }
        Ok(claimed)
    }

    async fn renew(&self, ids: &[String]) -> Result<(), QueueError> {
        for chunk in ids.chunks(IDS_PER_COMMAND) {
            let mut args = vec![
                self.key.clone(),
                GROUP.into(),
                self.consumer.clone(),
                "0".into(),
            ];
            args.extend(chunk.iter().cloned());
            args.push("JUSTID".into());
            self.grouped("XCLAIM", 0, args).await?;
        }
        Ok(())
    }

    /// Sets the entries' idle time to the claim idle time, so that the next `XAUTOCLAIM` of any
    /// replica takes them.
    async fn release(&self, ids: &[String]) -> Result<(), QueueError> {
        for chunk in ids.chunks(IDS_PER_COMMAND) {
            let mut args = vec![
                self.key.clone(),
                GROUP.into(),
                self.consumer.clone(),
                "0".into(),
            ];
            args.extend(chunk.iter().cloned());
            args.extend([
                "IDLE".into(),
                (self.claim_idle.as_millis() as u64).to_string(),
                "JUSTID".into(),
            ]);
            self.grouped("XCLAIM", 0, args).await?;
        }
        Ok(())
    }

    async fn ack(&self, ids: &[String]) -> Result<(), QueueError> {
        for chunk in ids.chunks(IDS_PER_COMMAND) {
            let mut args = vec![GROUP.to_string()];
            args.extend(chunk.iter().cloned());
            self.eval(ACK_SCRIPT, vec![self.key.clone()], args).await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, entries: &[Claimed], reason: &str) -> Result<(), QueueError> {
        for chunk in entries.chunks(IDS_PER_COMMAND) {
            let mut args = vec![
                GROUP.to_string(),
                self.cap.to_string(),
                reason.to_string(),
                shared::ids::now_unix_ms().to_string(),
            ];
            for c in chunk {
                let e = &c.entry;
                args.extend([
                    c.id.clone(),
                    e.user_id.clone(),
                    e.chat_id.to_string(),
                    e.message_id.to_string(),
                    e.preview.clone(),
                    e.enqueued_ms.to_string(),
                ]);
            }
            self.eval(
                DEAD_SCRIPT,
                vec![self.key.clone(), self.dead_key.clone()],
                args,
            )
            .await?;
        }
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        let v = self.command("XLEN", 0, vec![self.key.clone()]).await?;
        Ok(v.as_u64().unwrap_or(0))
    }

    async fn dead_letters(&self) -> Result<u64, QueueError> {
        let v = self.command("XLEN", 0, vec![self.dead_key.clone()]).await?;
        Ok(v.as_u64().unwrap_or(0))
    }
}

/// Stream entries `[[id, [field, value, …]], …]`; deleted or malformed entries are skipped
/// (a malformed one is logged: only this module writes the stream).
fn parse_entries(v: Value) -> Vec<Claimed> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut pair) = item else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id = pair.pop()?.as_string()?;
            let parsed = parse_fields(fields);
            if parsed.is_none() {
                tracing::warn!(%id, "malformed notification queue entry skipped");
            }
            parsed.map(|entry| Claimed { id, entry })
        })
        .collect()
}

fn parse_fields(v: Value) -> Option<Entry> {
    let Value::Array(kv) = v else { return None };
    let (mut u, mut c, mut m, mut p, mut t) = (None, None, None, None, None);
    for pair in kv.chunks(2) {
        let [k, v] = pair else { return None };
        let v = v.as_string();
        match k.as_string()?.as_str() {
            "u" => u = v,
            "c" => c = v,
            "m" => m = v,
            "p" => p = v,
            "t" => t = v,
            _ => {}
        }
    }
    Some(Entry {
        user_id: u?,
        chat_id: c?.parse::<Id>().ok()?,
        message_id: m?.parse::<Id>().ok()?,
        preview: p.unwrap_or_default(),
        enqueued_ms: t?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn conformance() {
        let redis = tokio::task::spawn_blocking(shared::testkit::RedisServer::start)
            .await
            .unwrap()
            .expect("starting a private redis-server");
        run_conformance(&redis.url()).await;
    }

    /// The scripts and commands name their keys so that a cluster routes them to the queue's
    /// shard.
    #[tokio::test]
    async fn conformance_on_a_redis_cluster() {
        let cluster = tokio::task::spawn_blocking(shared::testkit::RedisCluster::start)
            .await
            .unwrap()
            .expect("starting a private Redis Cluster");
        run_conformance(&cluster.url()).await;
    }

    async fn run_conformance(url: &str) {
        let routing =
            shared::routing::redis::connect(url, shared::routing::redis::RedisOptions::default())
                .await
                .unwrap();
        let client = routing.client().clone();
        let replicas = std::sync::atomic::AtomicUsize::new(0);
        super::super::conformance::run_all(|name, cap, idle| {
            let n = replicas.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let client = client.clone();
            async move {
                Arc::new(
                    RedisQueue::new(
                        client,
                        name,
                        format!("replica-{n}"),
                        cap,
                        idle,
                        Duration::from_secs(2),
                    )
                    .await
                    .unwrap(),
                ) as Arc<dyn NotifyQueue>
            }
        })
        .await;
        routing.quit().await;
    }
}
