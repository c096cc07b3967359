//! Route reconciliation: the users whose route may need adding or removing, and the one task per
//! node that brings the route registry in line with the hub, re-registering every local user after
//! the registry lost state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use shared::backoff::Backoff;
use shared::routing::{NodeInfo, RouteRegistry};

use crate::hub::Hub;

/// Pauses after a failed registration (the registry returns errors at once).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Users whose route may need adding or removing, reconciled in batches by one task: the task
/// looks at the hub when it runs, so a connect racing a disconnect always ends in the right state.
pub struct RouteSync {
    dirty: Mutex<HashSet<Arc<str>>>,
    wake: Notify,
    /// Generation of the last `mark`.
    requested: AtomicU64,
    /// Generation reconciled so far.
    done: watch::Sender<u64>,
}

impl RouteSync {
    pub(crate) fn new() -> Self {
        RouteSync {
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            requested: AtomicU64::new(0),
            done: watch::Sender::new(0),
        }
    }

    pub fn mark(&self, user: &Arc<str>) -> u64 {
        self.dirty.lock().insert(user.clone());
        let generation = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        generation
    }

    /// Marks `user` and waits (at most `limit`) until the registry reflects it.
    pub async fn mark_and_wait(&self, user: &Arc<str>, limit: Duration) {
        let generation = self.mark(user);
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done >= generation)).await;
    }

    /// Waits (at most `limit`) until everything marked so far is reconciled.
    pub async fn wait_synced(&self, limit: Duration) {
        let generation = self.requested.load(Ordering::Acquire);
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done >= generation)).await;
    }

    pub(crate) fn mark_all(&self, users: Vec<String>) {
        let mut dirty = self.dirty.lock();
        dirty.extend(users.into_iter().map(Arc::from));
        drop(dirty);
        self.requested.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Reconciles dirty users with `registry` (looking at `hub` for who is here) until `stop`
    /// is set.
    pub async fn run<F, Fut>(
        &self,
        hub: &Hub,
        registry: &dyn RouteRegistry,
        info: &NodeInfo,
        stop: watch::Receiver<bool>,
        synced: F,
    ) where
        F: Fn(Vec<String>, Vec<String>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        const BATCH: usize = 4096;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            if *stop.borrow() {
                return;
            }
            let generation = self.requested.load(Ordering::Acquire);
            let batch: Vec<Arc<str>> = {
                let mut dirty = self.dirty.lock();
                let take: Vec<Arc<str>> = dirty.iter().take(BATCH).cloned().collect();
                take.iter().for_each(|u| {
                    dirty.remove(u);
                });
                take
            };
            if batch.is_empty() {
                self.done.send_replace(generation);
                let mut stop = stop.clone();
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let (add, remove): (Vec<String>, Vec<String>) = {
                let mut add = Vec::new();
                let mut remove = Vec::new();
                for u in &batch {
                    if hub.has_user(u) {
                        add.push(u.to_string());
                    } else {
                        remove.push(u.to_string());
                    }
                }
                (add, remove)
            };
            let result = async {
                if !add.is_empty() {
                    registry.add_routes(info, &add).await?;
                }
                if !remove.is_empty() {
                    registry.remove_routes(info, &remove).await?;
                }
                Ok::<_, shared::routing::RoutingError>(())
            }
            .await;
            match result {
                Ok(()) => {
                    backoff.reset();
                    // Presence follows the registry: first routes added, last ones removed.
                    synced(add, remove).await;
                    // Publish progress only once nothing older is pending.
                    if self.dirty.lock().is_empty() {
                        self.done.send_replace(generation);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, users = batch.len(), "route registration failed; retrying");
                    metrics::counter!(crate::telemetry::ROUTE_SYNC_ERRORS_TOTAL).increment(1);
                    self.dirty.lock().extend(batch);
                    backoff.wait().await;
                }
            }
        }
    }
}
