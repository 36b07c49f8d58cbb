//! `zone-server`: runs one zone at 60 ticks/s until drained (SIGINT, SIGTERM or `POST /drain`),
//! or for `--ticks N` as a headless benchmark. See `zone-server --help`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use zone_server::admin::{AdminServer, AdminShared};
use zone_server::config::{Cli, resolve};
use zone_server::runner::{Hooks, RunConfig, run};
use zone_server::zone_load::load_zone;
use zone_telemetry::logs::{self, LogFormat};

fn main() -> ExitCode {
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
    let format = if cfg.log_format == "json" { LogFormat::Json } else { LogFormat::Text };
    let log_guard = logs::init(format, &cfg.log_filter);
    let result = real_main(&cfg, &log_guard);
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

fn real_main(cfg: &zone_server::config::ServerConfig, log_guard: &logs::LogGuard) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal starts a drain; a second one while draining exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let loaded = load_zone(&cfg.zone)?;
    let (admin, shared) = if cfg.telemetry_on() {
        let handle = zone_telemetry::install_prometheus(&loaded.spec.id)?;
        let shared = AdminShared::new(Some(handle));
        let server = AdminServer::start(cfg.admin, shared.clone()).context("cannot start the admin listener")?;
        (Some(server), Some(shared))
    } else {
        (None, None)
    };
    let run_cfg = RunConfig {
        seed: cfg.seed,
        threads: cfg.threads,
        sim_players: cfg.sim_players,
        journal: cfg.journal.clone(),
        ticks: cfg.ticks,
        realtime: cfg.realtime,
        hash_interval: cfg.hash_interval,
        stats_interval: cfg.stats_interval(),
        drain_timeout: cfg.drain_timeout(),
    };
    let hooks = Hooks { stop_signal: stop, admin: shared, metrics: cfg.telemetry_on(), log_dropped: Some(log_guard.dropped_counter()) };
    let outcome = run(&run_cfg, &loaded, hooks)?;
    if let Some(a) = admin {
        a.stop();
    }
    println!("{}", outcome.final_line());
    Ok(ExitCode::SUCCESS)
}
