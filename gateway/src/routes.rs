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
    /// Batches written to the registry (each one pipelined request per kind of change).
    batches: AtomicU64,
}

impl RouteSync {
    pub(crate) fn new() -> Self {
        RouteSync {
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            requested: AtomicU64::new(0),
            done: watch::Sender::new(0),
            batches: AtomicU64::new(0),
        }
    }

    /// Batches written to the registry so far: far fewer than marks under a connect storm.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
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
            // Every mark up to `generation` has its user in `dirty` by now (it inserts before it
            // counts), or in a batch already reconciled: a batch that takes the whole set covers
            // them all.
            let generation = self.requested.load(Ordering::Acquire);
            let (batch, whole): (Vec<Arc<str>>, bool) = {
                let mut dirty = self.dirty.lock();
                if dirty.len() <= BATCH {
                    (std::mem::take(&mut *dirty).into_iter().collect(), true)
                } else {
                    let take: Vec<Arc<str>> = dirty.iter().take(BATCH).cloned().collect();
                    take.iter().for_each(|u| {
                        dirty.remove(u);
                    });
                    (take, false)
                }
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
                    self.batches.fetch_add(1, Ordering::Relaxed);
                    // Sockets waiting for this batch send `hello` now, whatever was marked
                    // meanwhile: under a connect storm new marks never stop, and waiting for an
                    // empty set would hold every `hello` until the storm ends.
                    if whole {
                        self.done.send_replace(generation);
                    }
                    // Presence follows the registry: first routes added, last ones removed.
                    synced(add, remove).await;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use shared::protocol::Encoding;
    use shared::routing::memory::MemoryRegistry;
    use tokio::time::Instant;

    use super::*;
    use crate::hub::SocketHandle;

    /// Each batch takes this long (the registry round trip and the presence report of a real
    /// node, stood in for by the `synced` callback).
    const BATCH_TIME: Duration = Duration::from_millis(20);

    fn connect(hub: &Hub, user: &str, id: u64) -> Arc<str> {
        let user: Arc<str> = Arc::from(user);
        let handle = Arc::new(SocketHandle::new(id, user.clone(), Encoding::Json, 0));
        hub.add(handle, 4).unwrap();
        user
    }

    /// Under a connect storm new users are marked without pause. A socket waiting for its route
    /// must be released by the batch that registered it, not when the storm ends (before, the
    /// wait ran into its 2 s cap), and the registrations must go out in a few batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connect_storm_is_registered_in_batches_and_nobody_waits_for_the_storm_to_end() {
        let hub = Arc::new(Hub::new());
        let routes = Arc::new(RouteSync::new());
        let registry = Arc::new(MemoryRegistry::new());
        let info = NodeInfo {
            node_id: "n".into(),
            incarnation: 1,
        };
        registry.heartbeat(&info).await.unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let sync = tokio::spawn({
            let (hub, routes, registry, info) =
                (hub.clone(), routes.clone(), registry.clone(), info.clone());
            async move {
                let synced = |_, _| tokio::time::sleep(BATCH_TIME);
                routes.run(&hub, &*registry, &info, stop_rx, synced).await
            }
        });
        // The storm: a new user every millisecond, for longer than the waits below take.
        let storming = Arc::new(AtomicBool::new(true));
        let storm = tokio::spawn({
            let (hub, routes, storming) = (hub.clone(), routes.clone(), storming.clone());
            async move {
                let mut marks = 0u64;
                while storming.load(Ordering::Relaxed) {
                    let user = connect(&hub, &format!("storm-{marks}"), 1_000_000 + marks);
                    routes.mark(&user);
                    marks += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                marks
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut slowest = Duration::ZERO;
        for i in 0..20u64 {
            let user = connect(&hub, &format!("waiter-{i}"), i);
            let started = Instant::now();
            routes.mark_and_wait(&user, Duration::from_secs(2)).await;
            slowest = slowest.max(started.elapsed());
            // Route before hello: the registry has it when the wait ends.
            let found = registry.lookup(&[user.to_string()]).await.unwrap();
            assert_eq!(found.len(), 1, "{user} is routed when its wait ends");
        }
        storming.store(false, Ordering::Relaxed);
        let marks = storm.await.unwrap() + 20;
        let _ = stop_tx.send(true);
        sync.await.unwrap();
        // Two batches at most (the one running and the next), with room for a loaded machine.
        assert!(
            slowest < Duration::from_millis(600),
            "a wait took {slowest:?} while the storm went on"
        );
        let batches = routes.batches();
        assert!(
            batches * 4 < marks,
            "{marks} users were registered in {batches} batches"
        );
    }
}
