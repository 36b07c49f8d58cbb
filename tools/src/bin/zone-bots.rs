//! `zone-bots --server HOST:PORT --count N --duration 30s --token-secret S --behavior wander`
//! (or `--lobby URL`, or `--lobby URL --match MODE` to go through matchmaking):
//! a swarm of bot clients in one process, each with its own UDP socket, join token and client
//! session (`zone_net::client`), for load tests and protocol checks. Prints a progress line on
//! stderr every second and writes a JSON report at the end; `--help` explains every flag.
//!
//! Exit status: 0 when every bot joined, every move after a drain (with `--lobby`) completed and no
//! snapshot failed to decode; 1 otherwise (the reason is printed on stderr); 2 for a bad command
//! line.
//!
//! A client, not a server: it never holds game rules (the server decides what inputs do), and
//! never sends more than a real client would (one input batch every `Welcome.input_batch_ticks`
//! ticks unless `--input-batch-ticks` says otherwise, a ping every 250 ms).
//!
//! Layout: `bots/cli.rs` (flags and parsers), `bots/behavior.rs` (what a bot wants to do),
//! `bots/bot.rs` (one bot's socket and session), `bots/report.rs` (live counters, RTT histogram,
//! aggregation and the JSON report); this file starts the runtime, the bots and the progress line.

#[path = "../bots/behavior.rs"]
mod behavior;
#[path = "../bots/bot.rs"]
mod bot;
#[path = "../bots/cli.rs"]
mod cli;
#[path = "../bots/report.rs"]
mod report;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bot::{SwarmConfig, run_bot};
use crate::cli::Cli;
use crate::report::{BotOutcome, Histogram, Live, ProcessUsage, Report, RunFacts, build_report, progress_line};

/// mimalloc instead of the system allocator: the snapshot encoders and the network thread
/// allocate and free small buffers on different threads at a high rate (benchmarks/2026-11-29-net.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runtime worker threads: the bots are cheap; two workers keep the swarm off the server's cores
/// as much as a 2-core test machine allows.
const WORKER_THREADS: usize = 2;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zone-bots: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if cli.lobby.is_none() && cli.token_secret.as_deref().is_none_or(str::is_empty) {
        bail!("the token secret is empty: pass --token-secret or set ZONE_TOKEN_SECRET (or use --lobby)");
    }
    if let Some(url) = &cli.lobby {
        zone_lobby::client::LobbyClient::new(url).map_err(|e| anyhow::anyhow!("--lobby: {e}"))?;
    }
    if cli.first_player_id.checked_add(u64::from(cli.count)).is_none() {
        bail!(
            "--first-player-id {} plus --count {} overflows a player id",
            cli.first_player_id,
            cli.count
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(swarm(cli));
    write_report(cli, &report)?;
    Ok(verdict(&report))
}

/// Runs every bot to the end and aggregates what they measured.
async fn swarm(cli: &Cli) -> Report {
    let epoch = Instant::now();
    let cfg = Arc::new(SwarmConfig {
        server: cli.server,
        lobby: cli.lobby.clone(),
        device_prefix: cli.device_prefix.clone(),
        zone_id: cli.zone_id.clone(),
        match_mode: cli.match_mode.clone(),
        region: cli.region.clone(),
        match_wait: cli.match_wait,
        service_key: cli.service_key.clone(),
        token_secret: cli.token_secret.clone().unwrap_or_default().into_bytes(),
        token_ttl: cli.token_ttl,
        behavior: cli.behavior,
        input_batch_ticks: cli.input_batch_ticks,
        seed: cli.seed,
        epoch,
        deadline: epoch + cli.duration,
        rejoin_within: cli.lobby.is_some().then_some(cli.rejoin_within).filter(|d| !d.is_zero()),
        join_wait: cli.join_wait.unwrap_or_default(),
    });
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut bots = JoinSet::new();
    for k in 0..cli.count {
        let start_at = epoch + Duration::from_secs_f64(f64::from(k) / cli.ramp_per_s);
        bots.spawn(run_bot(
            cfg.clone(),
            live.clone(),
            cli.first_player_id + u64::from(k),
            start_at,
            stop_rx.clone(),
        ));
    }
    match &cli.match_mode {
        Some(mode) => eprintln!(
            "zone-bots: {} {} bots queue for {mode:?} matches at {} for {:.1}s, {:.0} requests/s",
            cli.count,
            cli.behavior.name(),
            target(cli),
            cli.duration.as_secs_f64(),
            cli.ramp_per_s
        ),
        None => eprintln!(
            "zone-bots: {} {} bots against {} (zone {:?}) for {:.1}s, {:.0} joins/s",
            cli.count,
            cli.behavior.name(),
            target(cli),
            cli.zone_id,
            cli.duration.as_secs_f64(),
            cli.ramp_per_s
        ),
    }
    let (outcomes, rtt) = supervise(cli, &mut bots, &live, &stop_tx).await;
    let facts = RunFacts {
        server: target(cli),
        last_join_us: live.last_join_us.load(std::sync::atomic::Ordering::Relaxed),
        lobby_login_us: std::mem::take(&mut *live.lobby_login_us.lock().unwrap_or_else(|e| e.into_inner())),
        lobby_join_us: std::mem::take(&mut *live.lobby_join_us.lock().unwrap_or_else(|e| e.into_inner())),
        lobby_join_retries: live.lobby_join_retries.load(std::sync::atomic::Ordering::Relaxed),
        lobby_join_retried_bots: live.lobby_join_retried_bots.load(std::sync::atomic::Ordering::Relaxed),
        matching: cli.match_mode.clone().map(|mode| {
            let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            (
                mode,
                std::mem::take(&mut *live.match_wait_us.lock().unwrap_or_else(|e| e.into_inner())),
                get(&live.matched),
                get(&live.results_reported),
                get(&live.result_errors),
            )
        }),
        move_us: std::mem::take(&mut *live.move_us.lock().unwrap_or_else(|e| e.into_inner())),
        zone_id: cli.zone_id.clone(),
        behavior: cli.behavior,
        count: cli.count,
        duration_s: cli.duration.as_secs_f64(),
        wall_s: epoch.elapsed().as_secs_f64(),
    };
    build_report(facts, &outcomes, &rtt, ProcessUsage::read())
}

/// Collects the bots' outcomes while printing the progress line every second and turning the
/// first Ctrl-C into a stop for every bot. Returns the outcomes and every RTT sample of the run.
async fn supervise(cli: &Cli, bots: &mut JoinSet<BotOutcome>, live: &Live, stop_tx: &watch::Sender<bool>) -> (Vec<BotOutcome>, Histogram) {
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(cli.count as usize);
    let mut rtt = Histogram::default();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut prev, mut prev_at) = (live.totals(), Instant::now());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    loop {
        tokio::select! {
            done = bots.join_next() => match done {
                Some(Ok(o)) => outcomes.push(o),
                Some(Err(e)) => {
                    eprintln!("zone-bots: a bot task failed: {e}");
                    outcomes.push(BotOutcome { join_failure: Some("bot_task_failed".into()), ..BotOutcome::default() });
                }
                None => break,
            },
            _ = ticker.tick() => {
                let window = live.take_rtts();
                rtt.merge(&window);
                let now = live.totals();
                let interval_s = prev_at.elapsed().as_secs_f64();
                eprintln!("{}", progress_line(started.elapsed().as_secs_f64(), cli.count, &prev, &now, interval_s, &window));
                (prev, prev_at) = (now, Instant::now());
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                eprintln!("zone-bots: interrupted: every bot sends Goodbye and stops");
                let _ = stop_tx.send(true);
            }
        }
    }
    rtt.merge(&live.take_rtts());
    (outcomes, rtt)
}

/// What the bots talk to, for the report and the first line.
fn target(cli: &Cli) -> String {
    match (&cli.lobby, cli.server) {
        (Some(l), _) => format!("lobby {l}"),
        (None, Some(s)) => s.to_string(),
        (None, None) => "-".into(),
    }
}

/// Writes the pretty JSON report to `--report`, or to stdout without it.
fn write_report(cli: &Cli, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("serializing the report")?;
    match &cli.report {
        Some(path) => {
            std::fs::write(path, json + "\n").with_context(|| format!("writing the report to {}", path.display()))?;
            eprintln!("zone-bots: report written to {}", path.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}

/// 0 when every bot joined and nothing failed to decode; otherwise 1, saying why.
fn verdict(r: &Report) -> ExitCode {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    if let Some(m) = &r.matching {
        eprintln!(
            "zone-bots: mode {:?}: matched {}/{}, waiting p50 {} p99 {} max {} ms, {} results reported, {} result errors",
            m.mode,
            m.matched,
            r.count,
            ms(m.match_wait_ms_p50),
            ms(m.match_wait_ms_p99),
            ms(m.match_wait_ms_max),
            m.results_reported,
            m.result_errors
        );
    } else if r.lobby_login_ms_p50.is_some() {
        eprintln!(
            "zone-bots: lobby login p50 {} p99 {} ms, join request p50 {} p99 {} ms{}; all joined after {} s",
            ms(r.lobby_login_ms_p50),
            ms(r.lobby_login_ms_p99),
            ms(r.lobby_join_ms_p50),
            ms(r.lobby_join_ms_p99),
            if r.lobby_join_retries > 0 {
                format!(
                    " ({} asked again by {} bots, --join-wait)",
                    r.lobby_join_retries, r.lobby_join_retried_bots
                )
            } else {
                String::new()
            },
            ms(r.all_joined_s)
        );
    }
    eprintln!(
        "zone-bots: joined {}/{}, {:.1} snapshots/s/bot, {:.1} kbit/s/bot down, {:.1} up, rtt p50 {} p99 {} ms, {} decode errors, {} missing baselines",
        r.joined,
        r.count,
        r.snapshots_per_bot_per_s,
        r.kbit_per_bot_per_s,
        r.kbit_up_per_bot_per_s,
        ms(r.rtt_ms_p50),
        ms(r.rtt_ms_p99),
        r.decode_errors,
        r.missing_baselines
    );
    let mut failures = Vec::new();
    if r.joined < u64::from(r.count) {
        failures.push(format!(
            "{} of {} bots did not join {:?}",
            r.failed_joins, r.count, r.failed_reasons
        ));
    }
    if r.moves > 0 || r.move_failures > 0 {
        eprintln!(
            "zone-bots: moved {} bots to another server after a drain, move p50 {} p99 {} max {} ms, {} moves failed {:?}",
            r.moves,
            ms(r.move_ms_p50),
            ms(r.move_ms_p99),
            ms(r.move_ms_max),
            r.move_failures,
            r.move_failed_reasons
        );
    }
    if r.move_failures > 0 {
        failures.push(format!(
            "{} bots did not get onto another server after a drain {:?}",
            r.move_failures, r.move_failed_reasons
        ));
    }
    if r.decode_errors > 0 {
        failures.push(format!("{} snapshot datagrams failed to decode", r.decode_errors));
    }
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("zone-bots: FAILED: {}", failures.join("; "));
    ExitCode::from(1)
}
