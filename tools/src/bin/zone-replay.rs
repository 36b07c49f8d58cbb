//! `zone-replay PATH`: replays an input journal headless, as fast as it can, checking every
//! recorded hash. Prints `final_tick=<N> zone_hash=<16 hex>` as the last line of stdout and
//! exits 0; on a divergence it names the first tick and shard that differ and exits 1; on a
//! journal it cannot read it names the byte offset and exits 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use zone_server::executor::PoolExecutor;
use zone_server::replay::{ReplayError, replay};

/// Replays a zone-server input journal and checks that it reproduces the recorded hashes.
#[derive(Parser, Debug)]
#[command(name = "zone-replay", version, about, long_about)]
struct Cli {
    /// The journal to replay (written by `zone-server --journal PATH`).
    journal: PathBuf,

    /// Threads that tick shards in parallel (default: one per CPU). Results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,

    /// Print nothing but the final line (and errors).
    #[arg(long, short)]
    quiet: bool,

    /// Instead of replaying to the end, serve the world visualizer over the journal at ADDR
    /// (e.g. 127.0.0.1:9200; port 0 picks a free one): open http://ADDR/ to view any tick, step
    /// tick by tick, or play at 1× to 50×. Every recorded hash is checked on the way. Runs until
    /// Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    serve: Option<std::net::SocketAddr>,

    /// With --serve: seconds of zone time between the checkpoints that seeks start from (memory:
    /// one compressed snapshot each; a seek runs at most this much simulation).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    checkpoint_interval: f64,

    /// With --serve: most pages open at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    viz_max_viewers: usize,

    /// With --serve: frames per second sent to each page; must divide 60.
    #[arg(long, value_name = "HZ", default_value_t = 10)]
    viz_rate: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // The shard count is not known before the journal is read; timing slots are not needed here.
    let exec = match PoolExecutor::new(threads, 0) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("zone-replay: cannot start {threads} threads: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = cli.serve {
        return match serve(&cli, addr, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zone-replay: {}: {e:#}", cli.journal.display());
                ExitCode::from(2)
            }
        };
    }
    let quiet = cli.quiet;
    let result = replay(&cli.journal, &exec, |tick| {
        if !quiet && tick % 10_000 == 0 {
            eprintln!("zone-replay: tick {tick}");
        }
    });
    match result {
        Ok(out) => {
            if !quiet {
                eprintln!(
                    "zone-replay: {} (seed {}): {} ticks, {} input batches, {} hashes checked, {:.3} s, {:.0} ticks/s{}{}",
                    out.zone_name,
                    out.seed,
                    out.final_hash.tick,
                    out.batches,
                    out.hashes_checked,
                    out.wall.as_secs_f64(),
                    out.ticks_per_s(),
                    if out.clean_end {
                        ""
                    } else {
                        "; no end record (the recording did not shut down cleanly)"
                    },
                    out.torn_tail_at
                        .map(|o| format!("; torn last record at byte {o} ignored"))
                        .unwrap_or_default(),
                );
            }
            println!("{}", out.final_line());
            ExitCode::SUCCESS
        }
        Err(e @ ReplayError::Divergence { .. }) => {
            eprintln!("zone-replay: {}: {e}", cli.journal.display());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("zone-replay: {}: {e}", cli.journal.display());
            ExitCode::from(2)
        }
    }
}

/// `--serve`: the visualizer over the journal, until the process is stopped.
fn serve(cli: &Cli, addr: std::net::SocketAddr, threads: usize) -> anyhow::Result<()> {
    use anyhow::Context;
    use zone_server::viz::{Mode, Viz, VizConfig, replay::ReplayDriver, replay::ReplayOptions};
    if cli.viz_rate == 0 || cli.viz_rate > 60 || 60 % cli.viz_rate != 0 {
        anyhow::bail!(
            "--viz-rate {} does not divide 60: use 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60",
            cli.viz_rate
        );
    }
    if !(cli.checkpoint_interval.is_finite() && cli.checkpoint_interval > 0.0) {
        anyhow::bail!(
            "--checkpoint-interval {} must be a positive number of seconds",
            cli.checkpoint_interval
        );
    }
    if cli.viz_max_viewers == 0 {
        anyhow::bail!("--viz-max-viewers must be at least 1");
    }
    let _log = zone_telemetry::logs::init(zone_telemetry::logs::LogFormat::Text, if cli.quiet { "warn" } else { "info" });
    let t0 = std::time::Instant::now();
    let journal = std::sync::Arc::new(zone_server::replay::load_journal(&cli.journal)?);
    let cfg = VizConfig {
        rate_hz: cli.viz_rate,
        max_viewers: cli.viz_max_viewers,
        ..VizConfig::default()
    };
    let viz = Viz::start(Mode::Replay, cfg, journal.spec.clone(), None)?;
    let every = ((cli.checkpoint_interval * f64::from(zone_sim::units::TICK_RATE_HZ)).round() as u64).max(1);
    let driver = ReplayDriver::start(
        journal.clone(),
        &viz,
        ReplayOptions {
            threads,
            checkpoint_every: every,
        },
    )?;
    let admin = zone_server::admin::AdminShared::new(None);
    let server = zone_server::admin::AdminServer::start_with(addr, admin, Some(zone_server::viz::http::router(viz.shared.clone())))
        .with_context(|| format!("cannot serve on {addr}"))?;
    eprintln!(
        "zone-replay: {} (seed {}, ticks 0..={}) loaded in {} ms; serving the visualizer on http://{}/ (Ctrl-C stops)",
        journal.zone_name,
        journal.seed,
        journal.end_tick,
        t0.elapsed().as_millis(),
        server.addr
    );
    let mut reported = false;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if !reported && driver.index_done() {
            reported = true;
            let (n, bytes) = driver.checkpoints();
            match driver.index_error() {
                Some(e) => eprintln!("zone-replay: the journal does not replay past tick {}: {e}", driver.indexed_tick()),
                None => eprintln!(
                    "zone-replay: indexed {} ticks in {} ms ({n} checkpoints, {bytes} bytes): every tick can be shown; all recorded hashes match",
                    journal.end_tick,
                    t0.elapsed().as_millis()
                ),
            }
        }
    }
}
