//! The tick loop: pacing, inputs, the step, hashing, the journal and statistics.
//!
//! One loop iteration, in order (keep this list in step with the code below and ARCHITECTURE.md):
//! 1. pacing: in real time, sleep until the next tick is due and decide how many ticks to run
//!    (bounded catch-up; overruns counted and logged);
//! 2. input: scripted players submit their inputs through the zone's input API;
//! 3. the step: `Zone::step` runs every shard's schedule on the pool (Input → Simulate →
//!    Replicate → Persist → Telemetry) and the boundary exchange; each shard is timed;
//! 4. hashing, every `hash_interval` ticks;
//! 5. journal: the applied batch and any hash go to the journal thread (never waits in real time);
//! 6. statistics: per-shard numbers are accumulated and logged every `stats_interval`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use zone_persistence::{JournalHeader, Record};
use zone_sim::{ScriptedPlayers, Zone, ZoneHash};

use crate::executor::PoolExecutor;
use crate::journal_sink::JournalSink;
use crate::pacing::FixedStep;
use crate::report::{Samples, ShardWindow};
use crate::zone_load::load_zone;

/// Ticks run back to back at most after a stall, before the rest of the backlog is dropped.
pub const CATCH_UP_TICKS_MAX: u32 = 5;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub zone: PathBuf,
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

pub fn run(cfg: &RunConfig, stop: Arc<AtomicBool>) -> anyhow::Result<RunOutcome> {
    let loaded = load_zone(&cfg.zone)?;
    let spec = loaded.spec.clone();
    let t_load = Instant::now();
    let mut zone = Zone::new(spec.clone(), cfg.seed).context("cannot build the zone")?;
    let exec = PoolExecutor::new(cfg.threads, spec.shard_count()).context("cannot start the shard thread pool")?;
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
        Some(path) => {
            let header = JournalHeader {
                seed: cfg.seed,
                hash_interval: hash_interval as u32,
                zone_digest: spec.digest,
                zone_name: loaded.name.clone(),
                zone_toml: loaded.text.clone(),
            };
            let headless = cfg.ticks.is_some() && !cfg.realtime;
            let sink = JournalSink::start(path, &header, headless)?;
            tracing::info!(journal = %path.display(), hash_interval, "recording journal");
            Some(sink)
        }
    };

    let mut scripted = ScriptedPlayers::new(cfg.seed, cfg.sim_players);
    let paced = cfg.realtime || cfg.ticks.is_none();
    let mut pacer = FixedStep::new(zone_sim::units::TICK_RATE_HZ, CATCH_UP_TICKS_MAX);
    let kind_names: Vec<String> = spec.kinds.iter().map(|k| k.name.clone()).collect();
    let mut windows: Vec<ShardWindow> = vec![ShardWindow::default(); spec.shard_count()];
    let mut tick_all = Samples::default();
    let mut tick_window = Samples::default();
    let mut overrun_ticks: u64 = 0;
    let mut overruns_logged_at: Option<Instant> = None;

    let started = Instant::now();
    let mut last_wake = Instant::now();
    let mut last_report = Instant::now();
    let mut ticks_run: u64 = 0;
    'run: loop {
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
                if overruns_logged_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!(dropped_ticks = plan.dropped, overrun_ticks_total = overrun_ticks, "tick loop fell behind; backlog dropped");
                    overruns_logged_at = Some(Instant::now());
                }
            }
            plan.ticks
        } else {
            1
        };
        for _ in 0..due {
            if stop.load(Ordering::Relaxed) || cfg.ticks.is_some_and(|n| ticks_run >= n) {
                break 'run;
            }
            scripted.drive(&mut zone);
            let t0 = Instant::now();
            let batch = zone.step(&exec);
            let hash = (zone.tick() % hash_interval == 0).then(|| zone.hash(&exec));
            let took = t0.elapsed();
            tick_all.push(took);
            tick_window.push(took);
            ticks_run += 1;
            if let Some(j) = journal.as_mut() {
                if !batch.is_empty() {
                    j.send(Record::Tick(batch));
                }
                if let Some(h) = &hash {
                    j.send(Record::Hash(h.clone()));
                }
            }
            for (i, s) in zone.shard_stats().enumerate() {
                windows[i].add(s, exec.step_duration(i));
            }
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
    let final_hash = zone.hash(&exec);
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
    let refusals: String = r.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ");
    let totals = zone.totals();
    tracing::info!(
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
