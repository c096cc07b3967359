//! Prometheus set-up shared by both services: histogram buckets chosen per metric family (so that
//! dashboards can aggregate quantiles across pods) and the periodic upkeep the exporter needs.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, 100 µs to 10 s: fine below 10 ms, where the budgets are.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Count buckets (batch sizes): powers of two up to the largest batch setting worth having.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("installing the Prometheus recorder: {0}")]
    Install(#[from] BuildError),
}

/// Installs the global Prometheus recorder: every `*_seconds` histogram gets latency buckets,
/// every `*_size` histogram count buckets. Spawns the exporter's upkeep (it trims histogram
/// storage), so call it inside a Tokio runtime.
pub fn install_prometheus() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_S)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), COUNT_BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
