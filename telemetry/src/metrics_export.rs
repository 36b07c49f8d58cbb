//! Metric names, help texts, buckets, the Prometheus recorder, and [`ZoneMetrics`], the
//! pre-registered handles the tick loop records into.
//!
//! Names follow Prometheus conventions: the prefix `zone_`, base units (seconds, bytes), `_total`
//! on counters. Every metric is described (`promtool check metrics` wants help text). Recording is
//! atomic operations on handles created once; nothing here formats strings per tick.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use zone_sim::{InputRefusal, RefusalCounts, ShardStats};

/// Tick-duration bucket edges in seconds: the alert thresholds (70 ms, 100 ms) and the 60 Hz
/// budget (16.7 ms) are edges, so the alert rules are exact.
pub const TICK_BUCKETS_S: [f64; 9] = [0.005, 0.010, 0.015, 0.0167, 0.025, 0.050, 0.070, 0.100, 0.250];

/// Stage-duration buckets: stages are fractions of a tick.
pub const STAGE_BUCKETS_S: [f64; 10] = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.010, 0.0167, 0.050];

/// The stages of a tick, as `stage` label values, in order.
pub const STAGES: [&str; 5] = ["input", "simulate", "replicate", "persist", "telemetry"];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(#[from] metrics_exporter_prometheus::BuildError),
}

/// Installs the global Prometheus recorder with our buckets and a constant `zone` label.
pub fn install_prometheus(zone_id: &str) -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .add_global_label("zone", zone_id)
        .set_buckets_for_metric(Matcher::Full("zone_tick_duration_seconds".into()), &TICK_BUCKETS_S)?
        .set_buckets_for_metric(Matcher::Full("zone_shard_tick_duration_seconds".into()), &TICK_BUCKETS_S)?
        .set_buckets_for_metric(Matcher::Full("zone_stage_duration_seconds".into()), &STAGE_BUCKETS_S)?
        .set_buckets_for_metric(Matcher::Full("zone_snapshot_capture_duration_seconds".into()), &STAGE_BUCKETS_S)?
        .set_buckets_for_metric(Matcher::Full("zone_net_frame_encode_seconds".into()), &TICK_BUCKETS_S)?
        .set_buckets_for_metric(
            Matcher::Full("zone_packet_size_bytes".into()),
            &[32.0, 64.0, 128.0, 256.0, 512.0, 768.0, 1024.0, 1200.0, 1500.0, 4096.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("zone_rtt_seconds".into()),
            &[0.001, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.500, 1.0],
        )?
        .install_recorder()?;
    describe_all();
    Ok(handle)
}

fn describe_all() {
    describe_histogram!(
        "zone_tick_duration_seconds",
        Unit::Seconds,
        "Wall time of one whole tick (all shards, the boundary and hashing)."
    );
    describe_histogram!("zone_shard_tick_duration_seconds", Unit::Seconds, "Wall time of one shard's step.");
    describe_histogram!(
        "zone_stage_duration_seconds",
        Unit::Seconds,
        "Wall time of one stage of one shard's step."
    );
    describe_counter!("zone_ticks_total", "Ticks run since start.");
    describe_counter!(
        "zone_tick_overruns_total",
        "Ticks dropped because the loop fell behind (after bounded catch-up)."
    );
    describe_gauge!("zone_tick_rate_hz", "Achieved ticks per second over the last report window.");
    describe_gauge!("zone_players", "Players in the zone (CCU).");
    describe_counter!("zone_inputs_total", "Player inputs applied by the simulation.");
    describe_counter!(
        "zone_inputs_speed_capped_total",
        "Inputs whose requested speed was capped to the player's maximum."
    );
    describe_counter!("zone_input_refusals_total", "Inputs, joins and leaves refused, by reason.");
    describe_gauge!("zone_shard_objects", "Objects in a shard, by kind.");
    describe_gauge!("zone_shard_players", "Players in a shard.");
    describe_counter!(
        "zone_shard_spawns_total",
        "Objects created in a shard (NPC spawns and player joins)."
    );
    describe_counter!("zone_shard_despawns_total", "Objects removed from a shard (deaths and leaves).");
    describe_counter!("zone_shard_migrations_in_total", "Objects that crossed into a shard.");
    describe_counter!("zone_shard_migrations_out_total", "Objects that crossed out of a shard.");
    describe_counter!("zone_shard_npc_deaths_total", "NPCs killed in a shard.");
    describe_counter!("zone_shard_player_deaths_total", "Players killed in a shard.");
    describe_gauge!(
        "zone_shard_tick_rate_hz",
        "Achieved ticks per second of a shard over the last report window."
    );
    describe_gauge!("zone_queue_depth", "Items waiting in a bounded queue.");
    describe_gauge!("zone_queue_capacity", "Capacity of a bounded queue.");
    describe_counter!("zone_queue_dropped_total", "Items dropped because a bounded queue was full.");
    describe_counter!(
        "zone_reliable_retries_total",
        "Reliable events resent because the client had not acknowledged them (our event layer over UDP)."
    );
    describe_counter!(
        "zone_reliable_timeouts_total",
        "Reliable events given up on: the client stopped acknowledging and its session was ended."
    );
    describe_counter!(
        "zone_dropped_duplicates_total",
        "Datagrams dropped because their sequence number was already seen."
    );
    describe_histogram!(
        "zone_packet_size_bytes",
        Unit::Bytes,
        "Size of game datagrams sent, laminar header included."
    );
    describe_counter!(
        "zone_net_datagrams_total",
        "Game datagrams by direction (in, out), counted at the socket."
    );
    describe_counter!(
        "zone_net_bytes_total",
        Unit::Bytes,
        "Game bytes by direction (in, out), counted at the socket."
    );
    describe_counter!(
        "zone_net_rejected_total",
        "Datagrams, joins and inputs refused by the game socket, by reason."
    );
    describe_counter!("zone_net_sessions_total", "Client sessions by event (joined, left, replaced).");
    describe_counter!(
        "zone_net_snapshot_bytes_total",
        Unit::Bytes,
        "Snapshot bytes sent to clients (envelopes, no laminar header)."
    );
    describe_counter!(
        "zone_net_send_failures_total",
        "Datagrams the kernel refused to send (a full socket buffer, an unreachable address); each is dropped."
    );
    describe_counter!(
        "zone_net_frames_dropped_total",
        "Replicate-stage frames (or join results) dropped because the network thread's queue was full."
    );
    describe_histogram!(
        "zone_rtt_seconds",
        Unit::Seconds,
        "Round-trip time to clients, from the server's Ping/Pong once a second per client."
    );
    describe_counter!(
        "zone_net_snapshots_total",
        "Client snapshots sent, by kind (full: no acknowledged baseline; delta)."
    );
    describe_histogram!(
        "zone_net_frame_encode_seconds",
        Unit::Seconds,
        "Time the network thread spends turning one frame into every client's snapshot."
    );
    describe_counter!(
        "zone_net_events_dropped_total",
        "Other players' joins, leaves and deaths not sent to a client (at most 16 per snapshot and 64 queued)."
    );
    describe_counter!(
        "zone_net_challenges_total",
        "Hellos with a valid token answered with a cookie challenge (the client proves its address)."
    );
    describe_gauge!("zone_net_clients", "Clients connected to the game socket (joined or joining).");
    describe_gauge!("zone_draining", "1 while the server drains for shutdown.");
    describe_gauge!("zone_ready", "1 while /readyz answers 200.");
    describe_gauge!(
        "zone_allocatable",
        "0 while the server is overloaded (tick p99 over --overload-budget-ms for --overload-after s): alive, keeps its players, takes no new ones."
    );
    describe_counter!(
        "zone_agones_sdk_errors_total",
        "Agones SDK gateway calls that failed (unreachable, timeout, an error status); retried with backoff."
    );
    describe_counter!(
        "zone_agones_events_dropped_total",
        "Player connect/disconnect events for the Agones SDK dropped because its queue was full."
    );
    describe_gauge!("zone_uptime_seconds", Unit::Seconds, "Seconds since the process started.");
    describe_gauge!("zone_build_info", "Always 1; the version label says which build runs.");
    describe_counter!(
        "zone_process_cpu_seconds_total",
        Unit::Seconds,
        "CPU time used by the process (user + system)."
    );
    describe_gauge!("zone_process_resident_memory_bytes", Unit::Bytes, "Resident memory of the process.");
    describe_gauge!("zone_process_open_fds", "Open file descriptors of the process.");
    describe_counter!("zone_journal_records_total", "Records written to the input journal.");
    describe_histogram!(
        "zone_snapshot_capture_duration_seconds",
        Unit::Seconds,
        "Time the tick thread spends copying the zone's state for a snapshot, by kind: changes (only what changed since the last capture) or whole (the first, and the first after a dropped snapshot or a resync)."
    );
    describe_counter!("zone_snapshots_total", "Snapshots written, by store and kind.");
    describe_counter!("zone_snapshot_failures_total", "Snapshot writes that failed, by store.");
    describe_gauge!(
        "zone_snapshot_consecutive_failures",
        "Snapshot writes that failed in a row, by store (0 after a success)."
    );
    describe_counter!(
        "zone_snapshot_fallbacks_total",
        "Snapshots written to a fallback store because the preferred one was down."
    );
    describe_gauge!("zone_snapshot_bytes", Unit::Bytes, "Size of the last encoded snapshot, by kind.");
    describe_gauge!(
        "zone_backend_breaker_state",
        "Circuit breaker of a backend: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "zone_backend_breaker_transitions_total",
        "Circuit breaker state changes, by backend and new state."
    );
    describe_counter!("zone_events_written_total", "Player events written to PostgreSQL.");
    describe_counter!(
        "zone_events_dropped_total",
        "Player events dropped because the in-memory event queue was full."
    );
    describe_counter!(
        "zone_event_write_failures_total",
        "Failed attempts to write player events to PostgreSQL."
    );
    // The world visualizer (server/src/viz/).
    describe_gauge!("zone_viz_viewers", "World visualizer pages connected now.");
    describe_counter!(
        "zone_viz_viewers_refused_total",
        "Visualizer pages refused because --viz-max-viewers were connected."
    );
    describe_counter!(
        "zone_viz_viewers_dropped_total",
        "Visualizer pages dropped by the server, by reason (slow: not reading; idle: stopped pinging; shutdown)."
    );
    describe_counter!(
        "zone_viz_frames_sent_total",
        "Visualizer frames encoded for pages, by type (key, diff)."
    );
    describe_counter!(
        "zone_viz_frame_bytes_total",
        Unit::Bytes,
        "Bytes of visualizer frames encoded for pages (before base64), by type (key, diff)."
    );
    describe_counter!(
        "zone_viz_frames_dropped_total",
        "Replicate-stage copies for the visualizer dropped because its thread was behind."
    );
    describe_gauge!("zone_viz_ring_bytes", Unit::Bytes, "Bytes held by the visualizer's history ring.");
    describe_gauge!(
        "zone_viz_ring_seconds",
        Unit::Seconds,
        "Zone time the visualizer's history ring covers."
    );
}

/// Per-shard handles.
struct ShardMetrics {
    objects_by_kind: Vec<Gauge>,
    players: Gauge,
    spawns: Counter,
    despawns: Counter,
    migrations_in: Counter,
    migrations_out: Counter,
    npc_deaths: Counter,
    player_deaths: Counter,
    tick: Histogram,
    tick_rate: Gauge,
}

/// Per-stage duration handles, cheap to clone into each shard's timing probe.
#[derive(Clone)]
pub struct StageHistograms(pub [Histogram; 5]);

impl StageHistograms {
    pub fn new() -> Self {
        StageHistograms(STAGES.map(|s| histogram!("zone_stage_duration_seconds", "stage" => s)))
    }

    pub fn record(&self, stage: usize, d: Duration) {
        self.0[stage].record(d.as_secs_f64());
    }
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms::new()
    }
}

/// A bounded queue's gauges and drop counter.
pub struct QueueMetrics {
    depth: Gauge,
    dropped: Counter,
    dropped_seen: u64,
}

impl QueueMetrics {
    pub fn new(queue: &'static str, capacity: usize) -> Self {
        gauge!("zone_queue_capacity", "queue" => queue).set(capacity as f64);
        QueueMetrics {
            depth: gauge!("zone_queue_depth", "queue" => queue),
            dropped: counter!("zone_queue_dropped_total", "queue" => queue),
            dropped_seen: 0,
        }
    }

    /// Sets the depth and brings the drop counter up to a cumulative `dropped_total`.
    pub fn observe(&mut self, depth: usize, dropped_total: u64) {
        self.depth.set(depth as f64);
        if dropped_total > self.dropped_seen {
            self.dropped.increment(dropped_total - self.dropped_seen);
            self.dropped_seen = dropped_total;
        }
    }
}

/// Everything the tick loop records, registered once.
pub struct ZoneMetrics {
    tick: Histogram,
    ticks: Counter,
    overruns: Counter,
    tick_rate: Gauge,
    players: Gauge,
    inputs: Counter,
    speed_capped: Counter,
    refusals: Vec<Counter>,
    refusals_seen: RefusalCounts,
    shards: Vec<ShardMetrics>,
    pub draining: Gauge,
    pub ready: Gauge,
}

impl ZoneMetrics {
    /// Registers every handle. `kinds` are the kind names (index 0 is "player").
    pub fn new(kinds: &[String], shards: usize) -> Self {
        let shards = (0..shards)
            .map(|i| {
                let s = i.to_string();
                ShardMetrics {
                    objects_by_kind: kinds
                        .iter()
                        .map(|k| gauge!("zone_shard_objects", "shard" => s.clone(), "kind" => k.clone()))
                        .collect(),
                    players: gauge!("zone_shard_players", "shard" => s.clone()),
                    spawns: counter!("zone_shard_spawns_total", "shard" => s.clone()),
                    despawns: counter!("zone_shard_despawns_total", "shard" => s.clone()),
                    migrations_in: counter!("zone_shard_migrations_in_total", "shard" => s.clone()),
                    migrations_out: counter!("zone_shard_migrations_out_total", "shard" => s.clone()),
                    npc_deaths: counter!("zone_shard_npc_deaths_total", "shard" => s.clone()),
                    player_deaths: counter!("zone_shard_player_deaths_total", "shard" => s.clone()),
                    tick: histogram!("zone_shard_tick_duration_seconds", "shard" => s.clone()),
                    tick_rate: gauge!("zone_shard_tick_rate_hz", "shard" => s),
                }
            })
            .collect();
        // Transport metrics exist from the start so dashboards and alerts see zeros, not gaps.
        counter!("zone_reliable_retries_total").absolute(0);
        counter!("zone_reliable_timeouts_total").absolute(0);
        counter!("zone_dropped_duplicates_total").absolute(0);
        gauge!("zone_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        ZoneMetrics {
            tick: histogram!("zone_tick_duration_seconds"),
            ticks: counter!("zone_ticks_total"),
            overruns: counter!("zone_tick_overruns_total"),
            tick_rate: gauge!("zone_tick_rate_hz"),
            players: gauge!("zone_players"),
            inputs: counter!("zone_inputs_total"),
            speed_capped: counter!("zone_inputs_speed_capped_total"),
            refusals: InputRefusal::ALL
                .iter()
                .map(|r| counter!("zone_input_refusals_total", "reason" => r.as_str()))
                .collect(),
            refusals_seen: RefusalCounts::default(),
            shards,
            draining: gauge!("zone_draining"),
            ready: gauge!("zone_ready"),
        }
    }

    /// Records one tick: its duration, each shard's stats and step duration.
    pub fn record_tick<'a>(&mut self, tick: Duration, stats: impl Iterator<Item = &'a ShardStats>, shard_step: impl Fn(usize) -> Duration) {
        self.tick.record(tick.as_secs_f64());
        self.ticks.increment(1);
        let mut players = 0u64;
        for (i, s) in stats.enumerate() {
            let Some(m) = self.shards.get(i) else { continue };
            for (g, &n) in m.objects_by_kind.iter().zip(&s.objects_by_kind) {
                g.set(f64::from(n));
            }
            m.players.set(f64::from(s.players));
            players += u64::from(s.players);
            m.spawns.increment(u64::from(s.spawns));
            m.despawns.increment(u64::from(s.despawns));
            m.migrations_in.increment(u64::from(s.migrations_in));
            m.migrations_out.increment(u64::from(s.migrations_out));
            m.npc_deaths.increment(u64::from(s.npc_deaths));
            m.player_deaths.increment(u64::from(s.player_deaths));
            m.tick.record(shard_step(i).as_secs_f64());
            self.inputs.increment(u64::from(s.inputs_applied));
            self.speed_capped.increment(u64::from(s.inputs_speed_capped));
        }
        self.players.set(players as f64);
    }

    /// Brings the refusal counters up to the zone's cumulative counts.
    pub fn record_refusals(&mut self, now: RefusalCounts) {
        for (i, c) in self.refusals.iter().enumerate() {
            let d = now.0[i].saturating_sub(self.refusals_seen.0[i]);
            if d > 0 {
                c.increment(d);
            }
        }
        self.refusals_seen = now;
    }

    pub fn record_overruns(&mut self, dropped_ticks: u64) {
        self.overruns.increment(dropped_ticks);
    }

    /// Sets the achieved tick rate (every shard ticks every tick, so they share it).
    pub fn set_tick_rate(&mut self, hz: f64) {
        self.tick_rate.set(hz);
        for s in &self.shards {
            s.tick_rate.set(hz);
        }
    }
}

/// Updates the process gauges; call from a non-tick thread about once a second.
pub fn record_process(sample: &crate::process::ProcessSample, uptime: Duration) {
    if let Some(cpu) = sample.cpu_seconds {
        // `metrics` counters are integers: whole CPU seconds, plenty for rate() over a minute.
        counter!("zone_process_cpu_seconds_total").absolute(cpu as u64);
    }
    if let Some(rss) = sample.resident_bytes {
        gauge!("zone_process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(fds) = sample.open_fds {
        gauge!("zone_process_open_fds").set(fds as f64);
    }
    gauge!("zone_uptime_seconds").set(uptime.as_secs_f64());
}
