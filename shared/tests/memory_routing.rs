//! Runs the routing conformance suite against the in-process implementations.

use std::sync::Arc;

use shared::routing::conformance as suite;
use shared::routing::memory::{MemoryBus, MemoryRegistry};

#[tokio::test]
async fn registry_routes_and_liveness() {
    suite::registry_routes_and_liveness(Arc::new(MemoryRegistry::new())).await;
}

#[tokio::test]
async fn registry_ignores_stale_incarnations() {
    suite::registry_ignores_stale_incarnations(Arc::new(MemoryRegistry::new())).await;
}

#[tokio::test]
async fn registry_presence() {
    suite::registry_presence(Arc::new(MemoryRegistry::new())).await;
}

#[tokio::test]
async fn bus_delivers_per_node() {
    suite::bus_delivers_per_node(Arc::new(MemoryBus::default())).await;
}

#[tokio::test]
async fn fan_out_groups_by_node() {
    suite::fan_out_groups_by_node(
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::default()),
    )
    .await;
}

#[tokio::test]
async fn registry_lists_live_nodes() {
    suite::registry_lists_live_nodes(Arc::new(MemoryRegistry::new())).await;
}

/// A full channel drops envelopes; the node is told with its next batch.
#[tokio::test]
async fn bus_reports_lost_envelopes() {
    suite::bus_reports_lost_envelopes(Arc::new(MemoryBus::new(16)), 16).await;
}

#[tokio::test]
async fn registry_announced_presence() {
    suite::registry_announced_presence(Arc::new(MemoryRegistry::new())).await;
}

#[tokio::test]
async fn bus_presence_reports() {
    suite::bus_presence_reports(Arc::new(MemoryBus::default())).await;
}
