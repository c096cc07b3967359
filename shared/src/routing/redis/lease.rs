//! Worker-id lease: a message-id worker id (0..=1023) held exclusively by one live process
//! through `SET worker:{ID} OWNER NX PX ttl`, renewed in the background.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{KeysInterface, LuaInterface};
use fred::types::{Expiration, SetOptions, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{as_string, RedisRouting, Shared, DEL_IF_EQ};
use crate::routing::RoutingError;

/// Extends KEYS[1]'s TTL to ARGV[2] ms only if it still holds ARGV[1].
const RENEW_IF_EQ: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

/// The largest worker id (10 bits in [`crate::ids`]).
pub const WORKER_ID_MAX: u16 = 1023;

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// Lease TTL; renewed every third of it. Default 10 s.
    pub ttl: Duration,
    /// Wait after acquiring before the id may be used. A holder that lost its key (Redis
    /// restarted without persistence) notices at its next renewal, within a third of the TTL,
    /// and stops; waiting a full TTL therefore keeps two processes from ever issuing ids with
    /// the same worker id at the same time. Default: `ttl`.
    pub settle: Option<Duration>,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: Duration::from_secs(10),
            settle: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("all {} worker ids are leased; too many API replicas, or stale leases (they expire after the lease TTL)", WORKER_ID_MAX as u32 + 1)]
    Exhausted,
    #[error("worker id {0} was lost while settling; retry")]
    LostWhileSettling(u16),
    #[error(transparent)]
    Routing(#[from] RoutingError),
}

/// A leased worker id. Check [`WorkerLease::lost`] (or watch [`WorkerLease::watch_lost`])
/// before issuing ids: once lost, the id may belong to another process and must not be used.
/// Dropping the lease stops renewal and releases the id.
pub struct WorkerLease {
    id: u16,
    owner: String,
    key: String,
    shared: Arc<Shared>,
    lost: watch::Receiver<bool>,
    renewer: JoinHandle<()>,
}

impl WorkerLease {
    /// Leases a free worker id, trying ids from a random start so that replicas starting
    /// together rarely contend.
    pub async fn acquire(
        routing: &RedisRouting,
        opts: LeaseOptions,
    ) -> Result<WorkerLease, LeaseError> {
        let shared = routing.shared.clone();
        let owner = format!(
            "{}-{}-{:016x}",
            std::env::var("HOSTNAME").unwrap_or_default(),
            std::process::id(),
            rand::random::<u64>()
        );
        let ttl_ms = super::ms_i64(opts.ttl);
        let start = rand::random::<u16>() % (WORKER_ID_MAX + 1);
        let mut acquired = None;
        let mut acquired_at = Instant::now();
        for i in 0..=WORKER_ID_MAX {
            let id = (start + i) % (WORKER_ID_MAX + 1);
            acquired_at = Instant::now();
            let reply: Value = shared
                .timed(shared.cmd().set(
                    shared.keys.worker(id),
                    owner.clone(),
                    Some(Expiration::PX(ttl_ms)),
                    Some(SetOptions::NX),
                    false,
                ))
                .await?;
            if !matches!(reply, Value::Null) {
                acquired = Some(id);
                break;
            }
        }
        let id = acquired.ok_or(LeaseError::Exhausted)?;
        let key = shared.keys.worker(id);
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew(
            shared.clone(),
            key.clone(),
            owner.clone(),
            opts.ttl,
            acquired_at,
            lost_tx,
        ));
        let lease = WorkerLease {
            id,
            owner,
            key,
            shared,
            lost,
            renewer,
        };
        let settle = opts.settle.unwrap_or(opts.ttl);
        // The port opens only after this wait: say so, or a start looks hung.
        tracing::info!(
            worker_id = id,
            settle_ms = settle.as_millis() as u64,
            "worker id reserved; waiting one lease TTL before using it, so that an earlier holder \
             that lost this id stops first (set WORKER_ID to skip the lease)"
        );
        tokio::time::sleep(settle).await;
        if lease.lost() {
            return Err(LeaseError::LostWhileSettling(id));
        }
        tracing::info!(worker_id = id, "worker id leased");
        Ok(lease)
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// Whether the lease is lost (not renewed in time, or taken over): stop issuing ids.
    pub fn lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Becomes `true` once, when the lease is lost.
    pub fn watch_lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops renewing and frees the id now (otherwise it frees itself when the TTL runs out).
    pub async fn release(self) {
        self.renewer.abort();
        let _ = self
            .shared
            .timed(self.shared.cmd().eval::<i64, _, _, _>(
                DEL_IF_EQ,
                self.key.clone(),
                self.owner.clone(),
            ))
            .await;
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        self.renewer.abort();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner.clone());
            handle.spawn(async move {
                let _ = shared
                    .timed(shared.cmd().eval::<i64, _, _, _>(DEL_IF_EQ, key, owner))
                    .await;
            });
        }
    }
}

/// Renews every third of the TTL. Reports loss when the key holds someone else (or nothing),
/// or when renewals kept failing so long that the key may expire before the next attempt.
async fn renew(
    shared: Arc<Shared>,
    key: String,
    owner: String,
    ttl: Duration,
    acquired_at: Instant,
    lost: watch::Sender<bool>,
) {
    let period = ttl / 3;
    let ttl_ms = super::ms_i64(ttl).to_string();
    let mut valid_until = acquired_at + ttl;
    loop {
        tokio::time::sleep(period).await;
        let sent = Instant::now();
        let reply = tokio::time::timeout(
            period,
            shared.cmd().eval::<Value, _, _, _>(
                RENEW_IF_EQ,
                key.clone(),
                vec![owner.clone(), ttl_ms.clone()],
            ),
        )
        .await;
        match reply {
            Ok(Ok(v))
                if matches!(v, Value::Integer(1)) || as_string(&v).as_deref() == Some("1") =>
            {
                valid_until = sent + ttl;
            }
            Ok(Ok(_)) => {
                tracing::error!(key = %key, "worker id lease taken over or expired; stop issuing ids");
                let _ = lost.send(true);
                return;
            }
            Ok(Err(e)) => tracing::warn!(key = %key, error = %e, "worker id lease renewal failed"),
            Err(_) => tracing::warn!(key = %key, "worker id lease renewal timed out"),
        }
        // Give up one period early: the next renewal could not land before expiry.
        if Instant::now() + period >= valid_until {
            tracing::error!(key = %key, "worker id lease could not be renewed in time; stop issuing ids");
            let _ = lost.send(true);
            return;
        }
    }
}
