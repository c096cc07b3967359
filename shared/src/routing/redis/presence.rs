//! Presence reports on a Redis stream read by a consumer group: gateways append the users whose
//! presence may have changed, and the chat-api replicas share the reading (each entry reaches one
//! of them).
//!
//! The group reads with `NOACK`: nothing is kept pending per entry, so a replica that dies with
//! entries read but not handled loses them. A report is only a hint to re-read the registry
//! (pushed presence is best effort; `GET /v1/presence` reads the truth), so no pending list is
//! worth its memory and its claiming logic. The stream is capped with `MAXLEN ~`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::config::Options;
use fred::types::Value;

use super::{as_string, init_client, map_err, Shared};
use crate::routing::{PresenceReports, RoutingError};

/// Stream entry field holding the reported users (MessagePack array of strings).
const FIELD_USERS: &str = "u";
/// The consumer group of the chat-api replicas.
const GROUP: &str = "api";
/// Approximate cap of the report stream (entries, each one batch of a gateway's reports).
pub const PRESENCE_STREAM_MAXLEN: i64 = 10_000;
/// Most entries one read asks for.
const READ_MAX: u64 = 100;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Appends one report entry (one round trip).
pub(super) async fn report(shared: &Shared, users: Vec<String>) -> Result<(), RoutingError> {
    if users.is_empty() {
        return Ok(());
    }
    let encoded = rmp_serde::to_vec(&users)
        .map_err(|e| RoutingError::Unavailable(format!("encode presence report: {e}")))?;
    shared
        .timed(shared.cmd().xadd::<Value, _, _, _, _>(
            shared.keys.presence_reports(),
            false,
            ("MAXLEN", "~", PRESENCE_STREAM_MAXLEN),
            "*",
            vec![(FIELD_USERS, Value::Bytes(Bytes::from(encoded)))],
        ))
        .await
        .map(|_| ())
}

/// Opens a reader on a dedicated connection (its reads block) as a new consumer of the group.
pub(super) async fn reader(shared: &Arc<Shared>) -> Result<RedisPresenceReports, RoutingError> {
    let client = shared.client.clone_new();
    init_client(&client, &shared.opts).await?;
    let mut reader = RedisPresenceReports {
        client,
        key: shared.keys.presence_reports(),
        consumer: format!("c{:016x}", rand::random::<u64>()),
        command_timeout: shared.opts.command_timeout,
        block_timeout: shared.opts.block_timeout,
        backoff: BACKOFF_MIN,
        group_ready: false,
    };
    if let Err(e) = reader.ensure_group().await {
        let _ = reader.client.quit().await;
        return Err(e);
    }
    Ok(reader)
}

/// One chat-api replica's reader of the presence report stream.
pub struct RedisPresenceReports {
    client: Client,
    key: String,
    consumer: String,
    command_timeout: Duration,
    block_timeout: Duration,
    backoff: Duration,
    /// The group is known to exist; cleared after a failure (Redis may have restarted empty).
    group_ready: bool,
}

impl RedisPresenceReports {
    /// Creates the group (and the stream) unless it exists; a new group starts at the end.
    async fn ensure_group(&mut self) -> Result<(), RoutingError> {
        if self.group_ready {
            return Ok(());
        }
        let created = tokio::time::timeout(
            self.command_timeout,
            self.client
                .xgroup_create::<Value, _, _, _>(&self.key, GROUP, "$", true),
        )
        .await
        .map_err(|_| RoutingError::Timeout)?;
        match created {
            Ok(_) => {}
            Err(e) if e.details().contains("BUSYGROUP") => {}
            Err(e) => return Err(map_err(e)),
        }
        self.group_ready = true;
        Ok(())
    }

    async fn read(&mut self, max: usize) -> Result<Vec<String>, RoutingError> {
        self.ensure_group().await?;
        let block_ms = self.block_timeout.as_millis().max(1) as u64;
        let deadline = self.block_timeout + self.command_timeout;
        let options = Options {
            timeout: Some(deadline),
            fail_fast: true,
            ..Options::default()
        };
        let reply = tokio::time::timeout(
            deadline,
            self.client
                .with_options(&options)
                .xreadgroup::<Value, _, _, _, _>(
                    GROUP,
                    self.consumer.as_str(),
                    Some((max as u64).clamp(1, READ_MAX)),
                    Some(block_ms),
                    true,
                    self.key.as_str(),
                    ">",
                ),
        )
        .await
        .map_err(|_| RoutingError::Timeout)?
        .map_err(map_err)?;
        let mut users = Vec::new();
        for (_, fields) in super::entries(reply) {
            for kv in fields.chunks_exact(2) {
                if as_string(&kv[0]).as_deref() != Some(FIELD_USERS) {
                    continue;
                }
                match kv[1]
                    .as_bytes()
                    .and_then(|b| rmp_serde::from_slice::<Vec<String>>(b).ok())
                {
                    Some(list) => users.extend(list),
                    None => {
                        tracing::warn!(stream = %self.key, "skipping malformed presence report")
                    }
                }
            }
        }
        Ok(users)
    }
}

#[async_trait]
impl PresenceReports for RedisPresenceReports {
    /// On a Redis failure this waits a backoff (50 ms doubling to 1 s) and returns the error;
    /// the next call creates the group again if Redis lost it.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<String>, RoutingError> {
        match self.read(max).await {
            Ok(users) => {
                self.backoff = BACKOFF_MIN;
                Ok(users)
            }
            Err(e) => {
                self.group_ready = false;
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Err(e)
            }
        }
    }
}

impl Drop for RedisPresenceReports {
    /// Leaves the group (a consumer holds no pending entries under `NOACK`, so nothing is lost)
    /// and closes the connection, so that restarts do not pile up consumers.
    fn drop(&mut self) {
        let (client, key, consumer) =
            (self.client.clone(), self.key.clone(), self.consumer.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.xgroup_delconsumer::<Value, _, _, _>(key, GROUP, consumer),
                )
                .await;
                let _ = client.quit().await;
            });
        }
    }
}
