//! # zone-telemetry: what operators see
//!
//! Metrics through the `metrics` facade, exported in the Prometheus text format
//! ([`metrics_export`]); process CPU, memory and file descriptors ([`process`]); and structured
//! logs through a non-blocking writer ([`logs`]).
//!
//! **Architecture invariant:** telemetry watches the simulation; the simulation never calls
//! telemetry. Recording on the tick thread is a handful of atomic operations on pre-registered
//! handles; rendering, process sampling and log writing happen on other threads. No metric label
//! ever carries a player id: labels are bounded sets (shard index, kind name, stage, reason, queue).

pub mod logs;
pub mod metrics_export;
pub mod process;

pub use metrics_export::{
    QueueMetrics, STAGES, StageHistograms, TICK_BUCKETS_S, TelemetryError, ZoneMetrics, install_prometheus, record_process,
};
