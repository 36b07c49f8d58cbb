//! The tick loop: pacing, inputs, the step, hashing, the journal, metrics, statistics and drain.
//!
//! One loop iteration, in order (keep this list in step with the code below and ARCHITECTURE.md):
//! 1. pacing: in real time, sleep until the next tick is due and decide how many ticks to run
//!    (bounded catch-up; overruns counted and logged);
//! 2. drain: a signal or `POST /drain` stops new joins; the loop ends when the zone is empty or
//!    the drain timeout passes;
//! 3. input: scripted players submit their inputs through the zone's input API;
//! 4. the step: `Zone::step` runs every shard's schedule (Input → Simulate → Replicate → Persist
//!    → Telemetry), on the pool or, while small, on this thread (`crate::executor`), and the
//!    boundary exchange; each shard and stage is timed;
//!    the Replicate stage copies the objects only when the game socket or the visualizer asked
//!    for this tick, and its copies go to both (`replica.rs`, `net/`, `viz/`);
//! 5. hashing, every `hash_interval` ticks;
//! 6. journal: the applied batch and any hash go to the journal thread (never waits in real time);
//!    at every full snapshot tick (and every `--journal-segment`) a new segment starts there;
//! 7. telemetry: metrics are recorded (atomics only), the liveness stamp and `/status` updated,
//!    and statistics logged every `stats_interval`;
//! 8. lifecycle: joins, leaves, players and the heartbeat go to the lifecycle backend (`lifecycle/`,
//!    atomics and bounded queues only); once a second the tick p99 of the last ten seconds goes to
//!    it, and that second's p99 to the overload guard, which makes the server unallocatable after
//!    a sustained overload (and allocatable again after a sustained recovery).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use zone_persistence::{JournalHeader, Origin, Record};
use zone_sim::{ScriptedPlayers, Zone, ZoneHash};
use zone_telemetry::{QueueMetrics, StageHistograms, ZoneMetrics};

use crate::admin::AdminShared;
use crate::executor::PoolExecutor;
use crate::journal_sink::{JournalSink, QUEUE_RECORDS_MAX};
use crate::pacing::FixedStep;
use crate::persist::{PersistConfig, Persister};
use crate::recovery::Restored;
use crate::report::{RecentQuantile, Samples, ShardWindow};
use crate::zone_load::LoadedZone;
use zone_persistence::events::GameEvent;

/// One-second windows behind the tick p99 the lifecycle reports: the lobby offers a server only
/// while it is within budget, and one slow tick is 1% of one second's ticks ([`RecentQuantile`]).
const LIFECYCLE_P99_WINDOWS: usize = 10;

/// Ticks run back to back at most after a stall, before the rest of the backlog is dropped.
pub const CATCH_UP_TICKS_MAX: u32 = 5;
/// Tick durations kept for the end-of-run summary (about 9 hours at 60 Hz; 8 MB).
const TICK_SAMPLES_MAX: usize = 2_000_000;
/// How often `/status` is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub threads: usize,
    pub sim_players: u32,
    pub journal: Option<PathBuf>,
    /// Stop after this many ticks (headless mode); run until stopped when `None`.
    pub ticks: Option<u64>,
    /// Pace at 60 ticks/s even with `ticks` set.
    pub realtime: bool,
    /// Compute (and journal) the zone hash every this many ticks.
    pub hash_interval: u32,
    pub stats_interval: Duration,
    pub drain_timeout: Duration,
    /// Snapshots and events (None: off).
    pub persist: Option<PersistConfig>,
    /// Ticks between full snapshots to the hot store.
    pub snapshot_full_every: u64,
    /// Ticks between diff snapshots.
    pub snapshot_diff_every: u64,
    /// Ticks between cold (PostgreSQL) full snapshots.
    pub cold_snapshot_every: u64,
    /// Start a new journal segment at least every this many ticks (besides every full snapshot).
    pub journal_segment_every: Option<u64>,
    /// How much journal to keep beyond what the newest snapshot needs.
    pub journal_retention: zone_persistence::Retention,
    /// Moved-aside runs older than this are deleted.
    pub keep_aside_for: Option<Duration>,
    /// The game socket (None: no socket).
    pub net: Option<crate::net::NetConfig>,
    /// When a sustained tick p99 over budget makes the server unallocatable.
    pub overload: crate::lifecycle::overload::OverloadConfig,
}

impl RunConfig {
    /// Headless defaults for tests and tools: `ticks` ticks, flat out, no journal.
    pub fn headless(ticks: u64) -> Self {
        RunConfig {
            seed: 1,
            threads: 1,
            sim_players: 0,
            journal: None,
            ticks: Some(ticks),
            realtime: false,
            hash_interval: 60,
            stats_interval: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            persist: None,
            net: None,
            snapshot_full_every: 600,
            snapshot_diff_every: 60,
            cold_snapshot_every: 3600,
            journal_segment_every: None,
            journal_retention: zone_persistence::Retention::default(),
            keep_aside_for: None,
            overload: crate::lifecycle::overload::OverloadConfig::default(),
        }
    }
}

/// What the loop is connected to besides the zone.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Set by SIGINT/SIGTERM: start draining.
    pub stop_signal: Arc<AtomicBool>,
    /// The admin listener's shared state (liveness, readiness, status, HTTP drain requests).
    pub admin: Option<Arc<AdminShared>>,
    /// Record metrics (the Prometheus recorder must be installed).
    pub metrics: bool,
    /// Lines the log writer dropped.
    pub log_dropped: Option<zone_telemetry::logs::ErrorCounter>,
    /// The world visualizer's tap (copies of the objects for viewers, only while someone watches).
    pub viz: Option<crate::viz::VizTap>,
    /// The lobby announcer's shared state (players, tick p99, state, joins and leaves, kicks):
    /// the `local` lifecycle for callers that start an `Announcer` themselves. Used when
    /// `lifecycle` is None.
    pub announce: Option<Arc<crate::announce::AnnounceShared>>,
    /// The lifecycle backend (`local`, `agones`, or both): ready, heartbeat, players, tick p99,
    /// allocatable, draining.
    pub lifecycle: Option<Arc<dyn crate::lifecycle::Lifecycle>>,
    /// Test hook: while true the tick loop does not tick (a stalled tick, as a deadlock or a
    /// runaway system would cause). Never set outside tests.
    pub stall: Option<Arc<AtomicBool>>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub final_hash: ZoneHash,
    pub ticks_run: u64,
    pub wall: Duration,
    pub tick_p50_us: u32,
    pub tick_p99_us: u32,
    pub tick_max_us: u32,
    pub overrun_ticks: u64,
}

impl RunOutcome {
    /// The machine-readable last line: `final_tick=<N> zone_hash=<16 hex>`.
    pub fn final_line(&self) -> String {
        format!("final_tick={} zone_hash={}", self.final_hash.tick, self.final_hash.hex())
    }
}

/// Runs a fresh zone, or continues a restored one (`restored`).
pub fn run(cfg: &RunConfig, loaded: &LoadedZone, hooks: Hooks, restored: Option<Restored>) -> anyhow::Result<RunOutcome> {
    let spec = loaded.spec.clone();
    // Every log line of the run carries the zone (a span field; JSON logs show it on each line).
    let _zone_span = tracing::info_span!("zone", zone = %spec.id).entered();
    let t_load = Instant::now();
    let (mut zone, restored_run, restored_sha) = match restored {
        Some(r) => (r.zone, Some(r.run_id), r.snapshot_sha256),
        None => (Zone::new(spec.clone(), cfg.seed).context("cannot build the zone")?, None, None),
    };
    // The run (timeline) this process continues, or a new one: it names the journal's segments
    // and keys the game events.
    let run_id = restored_run.flatten().unwrap_or_else(new_run_id);
    let paced = cfg.realtime || cfg.ticks.is_none();
    // In real time a small step stays on this thread (see `crate::executor`); headless, the
    // ticks run back to back and always fan out.
    let exec = if paced {
        PoolExecutor::adaptive(cfg.threads, spec.shard_count())
    } else {
        PoolExecutor::new(cfg.threads, spec.shard_count())
    }
    .context("cannot start the shard thread pool")?;
    let kind_names: Vec<String> = spec.kinds.iter().map(|k| k.name.clone()).collect();
    let mut metrics = hooks.metrics.then(|| ZoneMetrics::new(&kind_names, spec.shard_count()));
    let mut queue_metrics = hooks.metrics.then(|| {
        (
            QueueMetrics::new("journal", QUEUE_RECORDS_MAX),
            QueueMetrics::new("input", zone_sim::input::QUEUED_INPUTS_MAX),
            QueueMetrics::new("log", zone_telemetry::logs::LOG_BUFFER_LINES),
        )
    });
    if hooks.metrics {
        for shard in zone.shards_mut() {
            crate::stage_probe::install(shard, StageHistograms::new());
        }
    }
    tracing::info!(
        zone = %spec.id,
        file = %loaded.name,
        digest = %spec.digest_hex(),
        seed = cfg.seed,
        shards = spec.shard_count(),
        npcs = spec.npc_count(),
        threads = exec.threads(),
        sim_players = cfg.sim_players,
        build_ms = t_load.elapsed().as_millis() as u64,
        "zone loaded"
    );

    let hash_interval = u64::from(cfg.hash_interval.max(1));
    let mut journal = match &cfg.journal {
        None => None,
        Some(dir) => {
            let genesis = JournalHeader::genesis(
                cfg.seed,
                hash_interval as u32,
                spec.digest,
                loaded.name.clone(),
                loaded.text.clone(),
                run_id,
            );
            // A restored zone (with or without a journal before) continues in a new segment that
            // starts at its tick and names the snapshot; journaling is never off after a restore.
            let header = if zone.tick() > 0 {
                genesis.continued(Origin::Restore, zone.hash(&exec), restored_sha)
            } else {
                genesis
            };
            let headless = cfg.ticks.is_some() && !cfg.realtime;
            let housekeeping = crate::housekeeping::Housekeeping::new(
                dir.clone(),
                cfg.persist.as_ref().map(|p| p.data_dir.clone()),
                cfg.journal_retention,
                cfg.keep_aside_for,
                spec.digest,
            );
            let sink = JournalSink::start(dir, &header, headless, Some(housekeeping))?;
            tracing::info!(
                journal = %dir.display(),
                hash_interval,
                start_tick = header.start_tick,
                origin = header.origin.as_str(),
                run_id = format!("{run_id:016x}"),
                segment_every_ticks = cfg.journal_segment_every,
                "recording journal"
            );
            Some(sink)
        }
    };
    if cfg.journal.is_none() && cfg.persist.is_some() {
        tracing::error!("snapshots are on but the journal is OFF: a crash loses everything since the last snapshot");
    }
    let mut segment_start = zone.tick();

    let mut net = match &cfg.net {
        Some(n) => {
            if n.token_secret.is_none() {
                tracing::warn!("no token secret (--token-secret or ZONE_TOKEN_SECRET): every join will be refused");
            }
            Some(crate::net::NetLink::start(n.clone(), spec.clone())?)
        }
        None => None,
    };
    let lifecycle: Option<Arc<dyn crate::lifecycle::Lifecycle>> = hooks
        .lifecycle
        .clone()
        .or_else(|| hooks.announce.clone().map(|a| a as Arc<dyn crate::lifecycle::Lifecycle>));
    if let Some(l) = &lifecycle {
        if let Some(n) = &net {
            l.set_kick_sink(n.command_sender());
        }
        // Loaded (or restored), and the game socket bound.
        l.ready();
    }
    // Tick durations of the last second: its p99 feeds the overload guard, and the p99 of the
    // last ten such windows the lifecycle (see `RecentQuantile`).
    let mut announce_window = Samples::default();
    let mut announce_recent = RecentQuantile::new(LIFECYCLE_P99_WINDOWS);
    let mut announce_window_started = Instant::now();
    let mut overload = crate::lifecycle::overload::OverloadGuard::new(cfg.overload);
    if hooks.metrics {
        metrics::gauge!("zone_allocatable").set(1.0);
    }
    if let Some(a) = &hooks.admin {
        a.zone_loaded.store(true, Ordering::Relaxed);
        // Ready needs the game socket bound (or no socket configured).
        a.socket_bound.store(true, Ordering::Relaxed);
    }
    if let Some(m) = &mut metrics {
        m.ready.set(1.0);
        m.draining.set(0.0);
    }

    let persister = match &cfg.persist {
        Some(p) => {
            tracing::info!(
                data_dir = %p.data_dir.display(),
                redis = p.redis.is_some(),
                postgres = p.postgres.is_some(),
                instance = %p.instance,
                full_every_ticks = cfg.snapshot_full_every,
                diff_every_ticks = cfg.snapshot_diff_every,
                cold_every_ticks = cfg.cold_snapshot_every,
                "snapshots on"
            );
            let mut p = p.clone();
            p.journal_notes = journal.as_ref().and_then(JournalSink::notes);
            Some(Persister::start(p, spec.digest, cfg.seed)?)
        }
        None => None,
    };
    // Whole captures (the first, and the first after a dropped snapshot or a resync) copy every
    // object; captures of changes only what changed. Each kind has its own series.
    let capture_hist_changes = metrics::histogram!("zone_snapshot_capture_duration_seconds", "kind" => "changes");
    let capture_hist_whole = metrics::histogram!("zone_snapshot_capture_duration_seconds", "kind" => "whole");
    // Events are filed under the instance name, like the snapshots.
    let events_zone_id = cfg.persist.as_ref().map_or_else(|| spec.id.clone(), |p| p.instance.clone());
    let mut capture_samples = Samples::default();
    let mut capture_samples_whole = Samples::default();

    // The Replicate stage's copies, shared by the game socket and the visualizer.
    let mut replicas = crate::replica::Replicas::default();
    let mut scripted = ScriptedPlayers::new(cfg.seed, cfg.sim_players);
    scripted.adopt(&zone);
    if let (Some(n), Some(_)) = (&mut net, restored_run) {
        // Restored players whose clients are gone must not stay for ever (see `expect_back`).
        n.expect_back(
            zone.players().iter().map(|p| p.player).filter(|&p| !scripted.contains(p)),
            zone.tick(),
        );
    }
    let mut pacer = FixedStep::new(zone_sim::units::TICK_RATE_HZ, CATCH_UP_TICKS_MAX);
    let mut windows: Vec<ShardWindow> = vec![ShardWindow::default(); spec.shard_count()];
    let mut tick_all = Samples::default();
    let mut tick_window = Samples::default();
    let mut overrun_ticks: u64 = 0;
    let mut overruns_logged_at: Option<Instant> = None;
    let mut drain_started: Option<Instant> = None;
    let mut drain_logged_at = Instant::now();
    let mut last_rate = (Instant::now(), 0u64);
    let mut tick_rate_hz = 0.0;

    let started = Instant::now();
    let mut last_wake = Instant::now();
    let mut last_report = Instant::now();
    let mut last_status = Instant::now() - STATUS_INTERVAL;
    let mut ticks_run: u64 = 0;
    'run: loop {
        // Drain: stop taking players, wait for them to leave (or the timeout), then stop.
        let drain_asked =
            hooks.stop_signal.load(Ordering::Relaxed) || hooks.admin.as_ref().is_some_and(|a| a.drain_requested.load(Ordering::Relaxed));
        if drain_asked && drain_started.is_none() {
            drain_started = Some(Instant::now());
            zone.set_draining(true);
            if let Some(a) = &hooks.admin {
                a.draining.store(true, Ordering::Relaxed);
            }
            if let Some(m) = &mut metrics {
                m.draining.set(1.0);
                m.ready.set(0.0);
            }
            if let Some(n) = &net {
                n.set_draining();
            }
            if let Some(l) = &lifecycle {
                l.set_draining();
            }
            tracing::info!(
                players = zone.players().len(),
                timeout_s = cfg.drain_timeout.as_secs_f64(),
                "draining: new joins refused; waiting for players to leave"
            );
        }
        if let Some(t) = drain_started {
            let players = zone.players().len();
            if players == 0 || t.elapsed() >= cfg.drain_timeout {
                tracing::info!(players, waited_ms = t.elapsed().as_millis() as u64, "drain complete");
                break 'run;
            }
            if drain_logged_at.elapsed() >= Duration::from_secs(1) {
                tracing::info!(
                    players,
                    remaining_s = (cfg.drain_timeout.saturating_sub(t.elapsed())).as_secs_f64(),
                    "draining"
                );
                drain_logged_at = Instant::now();
            }
        }

        if let Some(stall) = &hooks.stall {
            while stall.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let due = if paced {
            let wait = pacer.until_next();
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let now = Instant::now();
            let plan = pacer.advance(now - last_wake);
            last_wake = now;
            if plan.dropped > 0 {
                overrun_ticks += plan.dropped;
                if let Some(m) = &mut metrics {
                    m.record_overruns(plan.dropped);
                }
                if overruns_logged_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!(
                        dropped_ticks = plan.dropped,
                        overrun_ticks_total = overrun_ticks,
                        "tick loop fell behind; backlog dropped"
                    );
                    overruns_logged_at = Some(Instant::now());
                }
            }
            plan.ticks
        } else {
            1
        };
        for _ in 0..due {
            if cfg.ticks.is_some_and(|n| ticks_run >= n) {
                break 'run;
            }
            let net_wants = net.as_mut().is_some_and(|n| n.before_step(&mut zone));
            let viz_wants = hooks.viz.as_ref().is_some_and(|v| v.wants_copy(zone.tick() + 1, net_wants));
            replicas.request(&mut zone, net_wants || viz_wants);
            scripted.drive(&mut zone);
            let t0 = Instant::now();
            let batch = zone.step(&exec);
            let t = zone.tick();
            let snapshot_due = persister.is_some()
                && (t % cfg.snapshot_full_every.max(1) == 0
                    || t % cfg.cold_snapshot_every.max(1) == 0
                    || t % cfg.snapshot_diff_every.max(1) == 0);
            // A new journal segment at every full snapshot and every `journal_segment_every`.
            let full_due = persister.is_some() && t % cfg.snapshot_full_every.max(1) == 0;
            let rotate = journal.is_some() && (full_due || cfg.journal_segment_every.is_some_and(|e| t - segment_start >= e.max(1)));
            // Every snapshot tick and segment switch also gets a journaled hash: recovery uses it
            // to check that a snapshot belongs to this journal's timeline, a segment ends with it
            // and the next one starts with it.
            let hash = (t % hash_interval == 0 || rotate || (snapshot_due && journal.is_some())).then(|| zone.hash(&exec));
            let took = t0.elapsed();
            let copies = replicas.take(&mut zone);
            if let Some(n) = &mut net {
                n.after_step(&zone, &batch, copies.clone());
            }
            if let (true, Some(v), Some(c)) = (viz_wants, &hooks.viz, copies) {
                v.offer(t, c);
            }
            if tick_all.len() < TICK_SAMPLES_MAX {
                tick_all.push(took);
            }
            tick_window.push(took);
            ticks_run += 1;
            if let Some(p) = &persister {
                let full = t % cfg.snapshot_full_every.max(1) == 0;
                let cold = t % cfg.cold_snapshot_every.max(1) == 0;
                if snapshot_due && !p.has_room() {
                    // It would be dropped: do not pay for it. The next one must be whole.
                    p.drop_snapshot();
                    zone.reset_capture();
                } else if snapshot_due {
                    if p.resync_wanted() {
                        zone.reset_capture();
                    }
                    if let Some(lists) = p.take_spare_lists() {
                        zone.recycle_lists(lists);
                    }
                    let c0 = Instant::now();
                    let capture = zone.capture_changes(&exec);
                    let took = c0.elapsed();
                    if capture.has_whole_shards() {
                        capture_hist_whole.record(took.as_secs_f64());
                        capture_samples_whole.push(took);
                    } else {
                        capture_hist_changes.record(took.as_secs_f64());
                        capture_samples.push(took);
                    }
                    if !p.offer_snapshot(capture, full, cold) {
                        // Lost on the way: the mirror can only continue from a whole capture.
                        zone.reset_capture();
                    }
                }
                p.offer_events(player_events(&events_zone_id, run_id, &batch, &zone));
            }
            if let Some(l) = &lifecycle {
                // Atomics and a bounded try_send only: the lifecycle never holds up the tick.
                for &p in &batch.joins {
                    l.player_joined(p);
                }
                for &p in &batch.leaves {
                    l.player_left(p);
                }
                l.set_players(zone.players().len());
                l.tick_advanced();
            }
            announce_window.push(took);
            let window = announce_window_started.elapsed();
            if window >= Duration::from_secs(1) {
                let p99 = announce_window.quantile_us(0.99);
                let recent_p99 = announce_recent.close_window(&announce_window, 0.99);
                announce_window.clear();
                announce_window_started = Instant::now();
                if let Some(l) = &lifecycle {
                    l.set_tick_p99_us(recent_p99);
                }
                if let Some(allocatable) = overload.observe(p99, window) {
                    if allocatable {
                        tracing::info!(
                            tick_p99_us = p99,
                            budget_us = cfg.overload.budget_us,
                            "tick back within budget: allocatable again"
                        );
                    } else {
                        tracing::warn!(
                            tick_p99_us = p99,
                            budget_us = cfg.overload.budget_us,
                            for_s = cfg.overload.after.as_secs_f64(),
                            "overloaded: tick p99 over budget; unallocatable (players stay, no new ones are sent here)"
                        );
                    }
                    if let Some(l) = &lifecycle {
                        l.set_allocatable(allocatable);
                    }
                    if let Some(a) = &hooks.admin {
                        a.allocatable.store(allocatable, Ordering::Relaxed);
                    }
                    if hooks.metrics {
                        metrics::gauge!("zone_allocatable").set(if allocatable { 1.0 } else { 0.0 });
                    }
                    if let Some(m) = &mut metrics {
                        // zone_ready follows /readyz.
                        m.ready.set(if allocatable && drain_started.is_none() { 1.0 } else { 0.0 });
                    }
                }
            }
            for &p in &batch.joins {
                tracing::debug!(tick = batch.tick, player = p, "player joined");
            }
            for &p in &batch.leaves {
                tracing::debug!(tick = batch.tick, player = p, "player left");
            }
            if let Some(j) = journal.as_mut() {
                if !batch.is_empty() {
                    j.send(Record::Tick(batch));
                }
                if let Some(h) = &hash {
                    j.send(Record::Hash(h.clone()));
                }
                if rotate {
                    let origin = if full_due { Origin::Snapshot } else { Origin::Interval };
                    j.rotate(origin, hash.clone().expect("a switch tick is hashed"));
                    segment_start = t;
                }
            }
            for (i, s) in zone.shard_stats().enumerate() {
                windows[i].add(s, exec.step_duration(i));
            }
            if let Some(m) = &mut metrics {
                m.record_tick(took, zone.shard_stats(), |i| exec.step_duration(i));
                m.record_refusals(zone.refusals());
            }
            if let Some(a) = &hooks.admin {
                a.tick_advanced();
            }
        }

        if last_rate.0.elapsed() >= Duration::from_secs(1) {
            tick_rate_hz = (ticks_run - last_rate.1) as f64 / last_rate.0.elapsed().as_secs_f64();
            last_rate = (Instant::now(), ticks_run);
            if let Some(m) = &mut metrics {
                m.set_tick_rate(tick_rate_hz);
            }
            if let Some((jq, iq, lq)) = &mut queue_metrics {
                if let Some(j) = &journal {
                    jq.observe(j.depth(), j.counters().dropped.load(Ordering::Relaxed));
                    metrics::counter!("zone_journal_records_total").absolute(j.counters().records.load(Ordering::Relaxed));
                }
                iq.observe(zone.queued_inputs(), zone.refusals().get(zone_sim::InputRefusal::QueueFull));
                if let Some(c) = &hooks.log_dropped {
                    lq.observe(0, c.dropped_lines() as u64);
                }
            }
        }
        if let Some(a) = &hooks.admin
            && last_status.elapsed() >= STATUS_INTERVAL
        {
            let mut doc = status_doc(
                &zone,
                &kind_names,
                &windows,
                &tick_window,
                tick_rate_hz,
                overrun_ticks,
                drain_started.is_some(),
                journal.as_ref(),
            );
            if let (Some(p), Some(obj)) = (&persister, doc.as_object_mut()) {
                let st = p.counters.status.lock().map(|s| s.clone()).unwrap_or_default();
                obj.insert("snapshot".into(), serde_json::to_value(st).unwrap_or_default());
            }
            a.publish_status(doc);
            last_status = Instant::now();
        }
        if last_report.elapsed() >= cfg.stats_interval {
            let secs = last_report.elapsed().as_secs_f64();
            let r = zone.refusals();
            tracing::info!(
                tick = zone.tick(),
                tick_rate_hz = format!("{:.1}", tick_window.len() as f64 / secs),
                tick_p50_us = tick_window.quantile_us(0.5),
                tick_p99_us = tick_window.quantile_us(0.99),
                players = zone.players().len(),
                objects = zone.object_count(),
                step_on_tick_thread = exec.step_inline(),
                overrun_ticks,
                input_refusals = r.total(),
                journal_dropped = journal.as_ref().map_or(0, |j| j.counters().dropped.load(Ordering::Relaxed)),
                "zone stats"
            );
            for w in &mut windows {
                w.log_and_reset(&kind_names, secs);
            }
            tick_window.clear();
            last_report = Instant::now();
        }
    }

    let wall = started.elapsed();
    if let Some(a) = &hooks.admin {
        a.stopping.store(true, Ordering::Relaxed);
    }
    if let Some(l) = &lifecycle {
        l.set_stopping();
    }
    if let Some(n) = net.take() {
        n.shutdown();
    }
    // The final state: hashed, closed in the journal, and snapshotted.
    let final_hash = zone.hash(&exec);
    if let Some(p) = persister {
        let state = zone.capture(&exec);
        p.final_snapshot(state, Duration::from_secs(10));
        p.finish();
    }
    if !capture_samples.is_empty() || !capture_samples_whole.is_empty() {
        tracing::info!(
            captures = capture_samples.len(),
            capture_p50_us = capture_samples.quantile_us(0.5),
            capture_p99_us = capture_samples.quantile_us(0.99),
            capture_max_us = capture_samples.quantile_us(1.0),
            captures_whole = capture_samples_whole.len(),
            capture_whole_max_us = capture_samples_whole.quantile_us(1.0),
            "snapshot capture cost on the tick thread (captures of changes; whole ones apart)"
        );
    }
    if let Some(mut j) = journal.take() {
        j.send(Record::End(final_hash.clone()));
        let broken = j.is_broken();
        j.finish().context("journal writer failed")?;
        if broken {
            tracing::error!("the journal is incomplete: records were dropped; it replays only up to the first gap");
        }
    }
    let outcome = RunOutcome {
        tick_p50_us: tick_all.quantile_us(0.5),
        tick_p99_us: tick_all.quantile_us(0.99),
        tick_max_us: tick_all.quantile_us(1.0),
        final_hash,
        ticks_run,
        wall,
        overrun_ticks,
    };
    let r = zone.refusals();
    let refusals: String = r
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let totals = zone.totals();
    tracing::info!(
        tick = zone.tick(),
        ticks = ticks_run,
        wall_s = format!("{:.3}", wall.as_secs_f64()),
        ticks_per_s = format!("{:.1}", ticks_run as f64 / wall.as_secs_f64().max(1e-9)),
        tick_p50_us = outcome.tick_p50_us,
        tick_p99_us = outcome.tick_p99_us,
        tick_max_us = outcome.tick_max_us,
        overrun_ticks,
        objects = zone.object_count(),
        spawns = totals.spawns,
        despawns = totals.despawns,
        migrations = totals.migrations,
        npc_deaths = totals.npc_deaths,
        player_deaths = totals.player_deaths,
        refusals = %refusals,
        "run finished"
    );
    Ok(outcome)
}

/// A new run id: the wall clock in nanoseconds, mixed with the process id.
fn new_run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 48)
}

/// Joins, leaves and deaths of this tick as game events, each keyed by run, tick, kind and player
/// (a player joins, leaves or dies at most once a tick), so a retried insert adds nothing.
fn player_events(zone_id: &str, run_id: u64, batch: &zone_sim::TickBatch, zone: &Zone) -> Vec<GameEvent> {
    let ev = |kind: &str, player: u64| GameEvent {
        zone_id: zone_id.to_string(),
        key: format!("{run_id:016x}:{}:{kind}:{player}", batch.tick),
        tick: batch.tick,
        kind: kind.to_string(),
        player_id: Some(player),
        detail: serde_json::json!({}),
    };
    let mut out: Vec<GameEvent> = Vec::new();
    out.extend(batch.joins.iter().map(|&p| ev("join", p)));
    out.extend(batch.leaves.iter().map(|&p| ev("leave", p)));
    let mut dead: Vec<u64> = zone.shard_stats().flat_map(|s| s.dead_players.iter().copied()).collect();
    dead.sort_unstable();
    out.extend(dead.into_iter().map(|p| ev("death", p)));
    out
}

#[allow(clippy::too_many_arguments)]
fn status_doc(
    zone: &Zone,
    kinds: &[String],
    windows: &[ShardWindow],
    tick_window: &Samples,
    tick_rate_hz: f64,
    overrun_ticks: u64,
    draining: bool,
    journal: Option<&JournalSink>,
) -> serde_json::Value {
    let mut tw = tick_window.clone();
    let shards: Vec<serde_json::Value> = zone
        .shard_stats()
        .zip(windows)
        .map(|(s, w)| {
            let mut step = w.step.clone();
            let by_kind: serde_json::Map<String, serde_json::Value> = kinds
                .iter()
                .zip(&s.objects_by_kind)
                .map(|(k, n)| (k.clone(), serde_json::json!(n)))
                .collect();
            serde_json::json!({
                "shard": s.shard,
                "objects": s.objects,
                "players": s.players,
                "objects_by_kind": by_kind,
                "tick_p50_ms": f64::from(step.quantile_us(0.5)) / 1000.0,
                "tick_p99_ms": f64::from(step.quantile_us(0.99)) / 1000.0,
            })
        })
        .collect();
    let refusals: serde_json::Map<String, serde_json::Value> = zone
        .refusals()
        .iter()
        .map(|(r, n)| (r.as_str().to_string(), serde_json::json!(n)))
        .collect();
    let mut queues =
        vec![serde_json::json!({"queue": "input", "depth": zone.queued_inputs(), "capacity": zone_sim::input::QUEUED_INPUTS_MAX})];
    if let Some(j) = journal {
        queues.push(serde_json::json!({"queue": "journal", "depth": j.depth(), "capacity": QUEUE_RECORDS_MAX, "dropped": j.counters().dropped.load(Ordering::Relaxed)}));
    }
    serde_json::json!({
        "zone": zone.spec().id,
        "tick": zone.tick(),
        "players": zone.players().len(),
        "objects": zone.object_count(),
        "draining": draining,
        "tick_rate_hz": tick_rate_hz,
        "tick_p50_ms": f64::from(tw.quantile_us(0.5)) / 1000.0,
        "tick_p99_ms": f64::from(tw.quantile_us(0.99)) / 1000.0,
        "overrun_ticks": overrun_ticks,
        "shards": shards,
        "refusals": refusals,
        "queues": queues,
    })
}
