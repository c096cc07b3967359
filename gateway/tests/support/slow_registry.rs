//! An in-process route registry whose route writes take a fixed time and are counted, standing
//! in for Redis round trips under load in the connect-storm tests (a mock: it makes a round trip's
//! length exact, which a real Redis cannot).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use shared::routing::memory::MemoryRegistry;
use shared::routing::{NodeGroups, NodeInfo, PresenceInfo, RouteRegistry, RoutingError};

pub struct SlowRegistry {
    inner: MemoryRegistry,
    delay: Duration,
    /// The write lands at once and only its answer takes `delay` (a slow reply on the way back).
    answers_late: bool,
    writes: AtomicUsize,
}

impl SlowRegistry {
    pub fn new(delay: Duration) -> Self {
        SlowRegistry {
            inner: MemoryRegistry::new(),
            delay,
            answers_late: false,
            writes: AtomicUsize::new(0),
        }
    }

    /// Route writes that are visible to lookups at once but answered only after `delay`.
    pub fn answering_late(delay: Duration) -> Self {
        SlowRegistry {
            answers_late: true,
            ..SlowRegistry::new(delay)
        }
    }

    /// `add_routes` calls so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl RouteRegistry for SlowRegistry {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<bool, RoutingError> {
        self.inner.heartbeat(node).await
    }
    async fn leave(&self, node: &NodeInfo) -> Result<(), RoutingError> {
        self.inner.leave(node).await
    }
    async fn add_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.answers_late {
            let written = self.inner.add_routes(node, users).await;
            tokio::time::sleep(self.delay).await;
            return written;
        }
        tokio::time::sleep(self.delay).await;
        self.inner.add_routes(node, users).await
    }
    async fn remove_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        self.inner.remove_routes(node, users).await
    }
    async fn lookup(&self, users: &[String]) -> Result<NodeGroups, RoutingError> {
        self.inner.lookup(users).await
    }
    async fn presence(&self, users: &[String]) -> Result<Vec<PresenceInfo>, RoutingError> {
        self.inner.presence(users).await
    }
    async fn live_nodes(&self) -> Result<Vec<String>, RoutingError> {
        self.inner.live_nodes().await
    }
    async fn swap_announced(
        &self,
        users: &[(String, bool)],
    ) -> Result<Vec<Option<bool>>, RoutingError> {
        self.inner.swap_announced(users).await
    }
}
