//! `zone-server`: runs one zone at 60 ticks/s until drained (SIGINT, SIGTERM or `POST /drain`),
//! or for `--ticks N` as a headless benchmark. See `zone-server --help`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use std::time::{Duration, Instant};
use zone_persistence::breaker::BreakerConfig;
use zone_server::admin::{AdminServer, AdminShared};
use zone_server::config::{Cli, resolve};
use zone_server::lifecycle::agones::{AgonesConfig, AgonesLifecycle};
use zone_server::lifecycle::{Fanout, Lifecycle, LocalLifecycle};
use zone_server::persist::PersistConfig;
use zone_server::recovery::{restore, restored_line};
use zone_server::runner::{Hooks, RunConfig, run};
use zone_server::viz::{Mode, Viz};
use zone_server::zone_load::load_zone;
use zone_telemetry::logs::{self, LogFormat};

/// mimalloc instead of the system allocator: the snapshot encoders and the network thread
/// allocate and free small buffers on different threads at a high rate (benchmarks/2026-11-29-net.md).
/// It keeps the memory it frees for 10 s before handing it back to the OS (see `zone_alloc`).
#[global_allocator]
static ALLOCATOR: zone_alloc::Allocator = zone_alloc::Allocator;

fn main() -> ExitCode {
    // First, while this is the only thread (see zone_alloc).
    let freed_memory = zone_alloc::keep_freed_memory();
    let process_start = Instant::now();
    let cli = Cli::parse();
    let cfg = match resolve(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zone-server: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", cfg.to_masked_toml());
        return ExitCode::SUCCESS;
    }
    let format = if cfg.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let log_guard = logs::init(format, &cfg.log_filter);
    let result = real_main(&cfg, &log_guard, process_start, &freed_memory);
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "zone-server failed");
            eprintln!("zone-server: error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Flushes buffered log lines.
    drop(log_guard);
    code
}

fn real_main(
    cfg: &zone_server::config::ServerConfig,
    log_guard: &logs::LogGuard,
    process_start: Instant,
    freed_memory: &zone_alloc::FreedMemory,
) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal starts a drain; a second one while draining exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let loaded = load_zone(&cfg.zone)?;
    tracing::info!(
        zone = %loaded.spec.id,
        purge_delay_ms = zone_alloc::purge_delay_ms(),
        "allocator: {freed_memory}"
    );
    let (admin, shared, viz) = if cfg.telemetry_on() {
        let handle = zone_telemetry::install_prometheus(&loaded.spec.id)?;
        let shared = AdminShared::new(Some(handle));
        let viz = if cfg.viz_on() {
            Some(Viz::start(Mode::Live, cfg.viz_config(), loaded.spec.clone(), Some(shared.clone()))?)
        } else {
            None
        };
        let routes = viz.as_ref().map(|v| zone_server::viz::http::router(v.shared.clone()));
        let server = AdminServer::start_with(cfg.admin, shared.clone(), routes).context("cannot start the admin listener")?;
        (Some(server), Some(shared), viz)
    } else {
        (None, None, None)
    };
    let ticks = |secs: f64| ((secs * f64::from(zone_sim::units::TICK_RATE_HZ)).round() as u64).max(1);
    let persist = cfg.persistence_on().then(|| PersistConfig {
        data_dir: cfg.data_dir.clone(),
        keep_full: cfg.keep_snapshots,
        redis: cfg.redis.clone(),
        postgres: cfg.postgres.clone(),
        instance: cfg.instance.clone().unwrap_or_else(|| loaded.spec.id.clone()),
        redis_ttl: Duration::from_secs_f64(cfg.redis_ttl),
        op_timeout: Duration::from_millis(cfg.backend_timeout_ms),
        breaker: BreakerConfig {
            failure_threshold: cfg.breaker_failures,
            open_for: Duration::from_secs_f64(cfg.breaker_open),
        },
        event_queue: cfg.event_queue,
        // The visualizer's history fills from the snapshots persistence takes anyway.
        observer: viz.as_ref().map(Viz::capture_observer),
        journal_notes: None,
    });
    let journal = cfg.journal_path();
    if cfg.persistence_on() {
        adopt_single_file_journal(&cfg.data_dir)?;
    }

    // Recovery, before the zone is ready.
    let restored = if cfg.restore == "off" {
        None
    } else {
        let Some(p) = &persist else {
            anyhow::bail!(
                "restore: {} needs persistence (it reads snapshots from the stores and the journal): drop --persistence off",
                cfg.restore
            );
        };
        let exec = zone_server::executor::PoolExecutor::new(cfg.threads, loaded.spec.shard_count())?;
        match restore(&loaded, cfg.seed, journal.as_deref(), p, &exec)? {
            Some(mut r) => {
                let hash = r.zone.hash(&exec).hex();
                let line = restored_line(r.zone.tick(), &hash, r.source, process_start.elapsed());
                tracing::info!(
                    source = r.source,
                    tick = r.zone.tick(),
                    snapshot_tick = r.snapshot_tick,
                    replayed_ticks = r.replayed_ticks,
                    "{line}"
                );
                println!("{line}");
                use std::io::Write;
                let _ = std::io::stdout().flush();
                Some(r)
            }
            None if cfg.restore == "required" => {
                anyhow::bail!(
                    "restore required, but there is no snapshot in any store and no journal at {}: nothing to restore",
                    journal.as_deref().map_or("(none)".into(), |p| p.display().to_string())
                );
            }
            None => {
                tracing::info!("restore auto: no snapshot and no journal; starting fresh");
                None
            }
        }
    };
    if restored.is_none() {
        // A fresh timeline: an earlier run's files belong to another journal (and its snapshots
        // would crowd out this run's under the keep-newest-N rule). Keep them, out of the way.
        let snaps = cfg.data_dir.join("snapshots");
        if cfg.persistence_on() && snaps.read_dir().is_ok_and(|mut d| d.next().is_some()) {
            move_aside(&snaps, "the previous run's file snapshots")?;
        }
        if let Some(j) = journal.as_deref().filter(|j| j.is_dir())
            && j.read_dir().is_ok_and(|mut d| d.next().is_some())
        {
            move_aside(j, "the previous journal")?;
        }
    }

    let run_cfg = RunConfig {
        seed: cfg.seed,
        threads: cfg.threads,
        sim_players: cfg.sim_players,
        journal,
        ticks: cfg.ticks,
        realtime: cfg.realtime,
        hash_interval: cfg.hash_interval,
        stats_interval: cfg.stats_interval(),
        drain_timeout: cfg.drain_timeout(),
        persist,
        snapshot_full_every: ticks(cfg.snapshot_full_interval),
        snapshot_diff_every: ticks(cfg.snapshot_diff_interval),
        cold_snapshot_every: ticks(cfg.cold_snapshot_interval),
        journal_segment_every: Some(ticks(cfg.journal_segment)),
        journal_retention: cfg.retention(),
        keep_aside_for: cfg.keep_aside_for(),
        net: cfg.bind_addr().map(|bind| {
            let mut n = zone_server::net::NetConfig::new(
                bind,
                cfg.token_secret.as_ref().map(|s| s.as_bytes().to_vec()),
                cfg.max_clients.unwrap_or(loaded.spec.max_players as usize),
            );
            n.snapshot_rate_hz = cfg.snapshot_rate;
            n.interest_radius_mm = (cfg.interest_radius_m * 1000.0).round() as u32;
            n.interest_max = cfg.interest_max;
            n.interest_refresh_frames = cfg.interest_refresh;
            n.handshake_rate_per_ip = cfg.handshake_rate_per_ip;
            n.peer_packet_rate = cfg.peer_packet_rate;
            n.restored_player_grace = Duration::from_secs_f64(cfg.restored_player_grace);
            n.input_batch_ticks = cfg.input_batch_ticks;
            n
        }),
        overload: cfg.overload(),
    };
    let capacity = u32::try_from(cfg.max_clients.unwrap_or(loaded.spec.max_players as usize)).unwrap_or(u32::MAX);
    let announcer = match (&cfg.lobby_redis, &cfg.public_addr) {
        (Some(url), Some(addr)) => Some(zone_server::announce::Announcer::start(zone_server::announce::AnnounceConfig {
            redis_url: url.clone(),
            prefix: cfg.lobby_prefix.clone(),
            zone_id: loaded.spec.id.clone(),
            instance_id: cfg.instance.clone().unwrap_or_else(|| format!("{}@{addr}", loaded.spec.id)),
            public_addr: addr.clone(),
            capacity,
            ttl: Duration::from_secs(5),
            op_timeout: Duration::from_millis(cfg.backend_timeout_ms.min(1_000)),
        })?),
        _ => None,
    };
    // The lifecycle backends: the lobby's directory (local), the Agones SDK, or both.
    let mut backends: Vec<Arc<dyn Lifecycle>> = Vec::new();
    if let Some(a) = announcer {
        backends.push(Arc::new(LocalLifecycle::new(a)));
    }
    if cfg.lifecycle == "agones" {
        let a = AgonesLifecycle::start(AgonesConfig::local(cfg.agones_sdk_port, capacity))?;
        backends.push(Arc::new(a));
    }
    let lifecycle: Option<Arc<dyn Lifecycle>> = match backends.len() {
        0 => None,
        1 => backends.pop(),
        _ => Some(Arc::new(Fanout(backends))),
    };
    let hooks = Hooks {
        stop_signal: stop,
        admin: shared,
        metrics: cfg.telemetry_on(),
        log_dropped: Some(log_guard.dropped_counter()),
        viz: viz.as_ref().map(Viz::tap),
        announce: None,
        lifecycle: lifecycle.clone(),
        stall: None,
    };
    let outcome = run(&run_cfg, &loaded, hooks, restored);
    // After the final snapshot: withdraw from the directory, then Agones' Shutdown (bounded).
    if let Some(l) = lifecycle {
        if outcome.is_ok() {
            l.shutdown(Duration::from_secs(5));
        } else {
            // A failed run still leaves the directory; Agones restarts or replaces an Unhealthy server.
            l.shutdown(Duration::ZERO);
        }
    }
    // Viewers are told the server is going away, so their streams end and the listener can stop.
    if let Some(v) = viz {
        v.shutdown();
    }
    let outcome = outcome?;
    if let Some(a) = admin {
        a.stop();
    }
    println!("{}", outcome.final_line());
    Ok(ExitCode::SUCCESS)
}

/// Renames `path` aside (`path.<unix seconds>`); see [`zone_server::housekeeping::move_aside`].
fn move_aside(path: &std::path::Path, what: &str) -> anyhow::Result<()> {
    zone_server::housekeeping::move_aside(path, what).map(drop)
}

/// A single-file journal of an earlier build (DATA_DIR/journal.zjnl) becomes the first segment of
/// DATA_DIR/journal, which it is (a genesis segment in format 1), so a restore continues it.
fn adopt_single_file_journal(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let old = data_dir.join("journal.zjnl");
    let dir = data_dir.join("journal");
    if !old.is_file() || dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let to = dir.join(zone_persistence::segments::segment_name(0));
    std::fs::rename(&old, &to).with_context(|| format!("cannot move {} to {}", old.display(), to.display()))?;
    tracing::warn!(from = %old.display(), to = %to.display(), "a single-file journal of an earlier build became the first segment of the journal directory");
    Ok(())
}
