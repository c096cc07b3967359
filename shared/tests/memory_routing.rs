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
