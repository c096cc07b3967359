//! Latency and error metrics around a route registry and node bus (used for the Redis ones):
//! `redis_op_seconds{op}` and `redis_errors_total{op}`, where `op` is the trait method. Labels
//! never carry user, chat or node ids.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Envelope, NodeBus, NodeGroups, NodeInfo, NodeLoad, NodeStatus, PresenceInfo, PresenceReports,
    RouteRegistry, RoutingError, Subscription,
};

use crate::telemetry::{
    redis_op, REDIS_ERRORS_TOTAL as ERRORS_TOTAL, REDIS_OPS as OPS, REDIS_OP_SECONDS as OP_SECONDS,
};

/// Registers every series at zero, so that dashboards and alerts see them before traffic.
pub fn describe() {
    metrics::describe_histogram!(
        OP_SECONDS,
        metrics::Unit::Seconds,
        "Latency of route registry and node bus calls to Redis, by op (stream reads excluded: they block)"
    );
    metrics::describe_counter!(
        ERRORS_TOTAL,
        "Failed or timed-out route registry and node bus calls to Redis, by op"
    );
    for op in OPS {
        metrics::counter!(ERRORS_TOTAL, "op" => *op).increment(0);
    }
}

async fn observe<T>(
    op: &'static str,
    fut: impl Future<Output = Result<T, RoutingError>>,
) -> Result<T, RoutingError> {
    let started = Instant::now();
    let result = fut.await;
    metrics::histogram!(OP_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(ERRORS_TOTAL, "op" => op).increment(1);
    }
    result
}

/// A [`RouteRegistry`] and [`NodeBus`] that records the metrics above around the inner one.
pub struct Metered<T: ?Sized> {
    inner: Arc<T>,
}

impl<T: ?Sized> Metered<T> {
    pub fn new(inner: Arc<T>) -> Metered<T> {
        Metered { inner }
    }
}

#[async_trait]
impl<T: RouteRegistry + ?Sized> RouteRegistry for Metered<T> {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<bool, RoutingError> {
        observe(redis_op::HEARTBEAT, self.inner.heartbeat(node)).await
    }
    async fn leave(&self, node: &NodeInfo) -> Result<(), RoutingError> {
        observe(redis_op::LEAVE, self.inner.leave(node)).await
    }
    async fn add_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        observe(redis_op::ADD_ROUTES, self.inner.add_routes(node, users)).await
    }
    async fn remove_routes(&self, node: &NodeInfo, users: &[String]) -> Result<(), RoutingError> {
        observe(
            redis_op::REMOVE_ROUTES,
            self.inner.remove_routes(node, users),
        )
        .await
    }
    async fn lookup(&self, users: &[String]) -> Result<NodeGroups, RoutingError> {
        observe(redis_op::LOOKUP, self.inner.lookup(users)).await
    }
    async fn presence(&self, users: &[String]) -> Result<Vec<PresenceInfo>, RoutingError> {
        observe(redis_op::PRESENCE, self.inner.presence(users)).await
    }
    async fn live_nodes(&self) -> Result<Vec<String>, RoutingError> {
        observe(redis_op::LIVE_NODES, self.inner.live_nodes()).await
    }
    async fn report_load(&self, node: &NodeInfo, load: NodeLoad) -> Result<(), RoutingError> {
        observe(redis_op::REPORT_LOAD, self.inner.report_load(node, load)).await
    }
    async fn node_statuses(&self) -> Result<Vec<NodeStatus>, RoutingError> {
        observe(redis_op::NODE_STATUSES, self.inner.node_statuses()).await
    }
    async fn swap_announced(
        &self,
        users: &[(String, bool)],
    ) -> Result<Vec<Option<bool>>, RoutingError> {
        observe(redis_op::SWAP_ANNOUNCED, self.inner.swap_announced(users)).await
    }
}

#[async_trait]
impl<T: NodeBus + ?Sized> NodeBus for Metered<T> {
    async fn publish(&self, entries: Vec<(String, Envelope)>) -> Result<(), RoutingError> {
        observe(redis_op::PUBLISH, self.inner.publish(entries)).await
    }
    async fn subscribe(&self, node: &NodeInfo) -> Result<Box<dyn Subscription>, RoutingError> {
        let inner = observe(redis_op::SUBSCRIBE, self.inner.subscribe(node)).await?;
        Ok(Box::new(MeteredSubscription { inner }))
    }
    async fn report_presence(&self, users: Vec<String>) -> Result<(), RoutingError> {
        observe(redis_op::REPORT_PRESENCE, self.inner.report_presence(users)).await
    }
    async fn presence_reports(&self) -> Result<Box<dyn PresenceReports>, RoutingError> {
        let inner = observe(redis_op::PRESENCE_REPORTS, self.inner.presence_reports()).await?;
        Ok(Box::new(MeteredReports { inner }))
    }
}

/// Counts failed reads of presence reports (as `read`); their latency is not recorded.
struct MeteredReports {
    inner: Box<dyn PresenceReports>,
}

#[async_trait]
impl PresenceReports for MeteredReports {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<String>, RoutingError> {
        let result = self.inner.next_batch(max).await;
        if result.is_err() {
            metrics::counter!(ERRORS_TOTAL, "op" => redis_op::READ).increment(1);
        }
        result
    }
}

/// Counts failed stream reads; their latency is not recorded, as a read blocks until traffic.
struct MeteredSubscription {
    inner: Box<dyn Subscription>,
}

#[async_trait]
impl Subscription for MeteredSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Envelope>, RoutingError> {
        let result = self.inner.next_batch(max).await;
        if result.is_err() {
            metrics::counter!(ERRORS_TOTAL, "op" => redis_op::READ).increment(1);
        }
        result
    }
    fn oldest_age(&self) -> Option<Duration> {
        self.inner.oldest_age()
    }
    fn take_gap(&mut self) -> bool {
        self.inner.take_gap()
    }
}
