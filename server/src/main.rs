//! `zone-server`: runs one zone at 60 ticks/s until Ctrl-C, or for `--ticks N` as a headless
//! benchmark. See `zone-server --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use zone_server::runner::{RunConfig, run};

/// Runs one game zone: a deterministic, sharded simulation ticked at a fixed 60 ticks per second.
///
/// With no flags it runs assets/zones/demo.toml until Ctrl-C (or SIGTERM), logging per-shard
/// statistics every few seconds to stderr. With --ticks N it runs N ticks as fast as it can and
/// prints `final_tick=<N> zone_hash=<16 hex digits>` as the last line of stdout.
#[derive(Parser, Debug)]
#[command(name = "zone-server", version, about, long_about)]
struct Cli {
    /// Zone file to run (TOML; see assets/zones/demo.toml for the format).
    #[arg(long, default_value = "assets/zones/demo.toml", env = "ZONE_ZONE")]
    zone: PathBuf,

    /// World seed: with the same zone file and inputs, the same seed gives the same zone, bit for bit.
    #[arg(long, default_value_t = 1, env = "ZONE_SEED")]
    seed: u64,

    /// Threads that tick shards in parallel (default: one per CPU). Results do not depend on it.
    #[arg(long, env = "ZONE_THREADS")]
    threads: Option<usize>,

    /// In-process scripted players driven by a seeded generator (exercises the player path
    /// without a network).
    #[arg(long, default_value_t = 0, value_name = "K", env = "ZONE_SIM_PLAYERS")]
    sim_players: u32,

    /// Record an input journal to PATH; replay it with `zone-replay PATH`.
    #[arg(long, value_name = "PATH", env = "ZONE_JOURNAL")]
    journal: Option<PathBuf>,

    /// Run N ticks as fast as possible (headless benchmark/test mode), print the final line and exit.
    #[arg(long, value_name = "N")]
    ticks: Option<u64>,

    /// With --ticks: pace the run at 60 ticks/s instead of running flat out.
    #[arg(long, requires = "ticks")]
    realtime: bool,

    /// Compute the zone hash (and record it in the journal) every N ticks. 1 hashes every tick,
    /// which pinpoints divergences exactly but costs time on large zones.
    #[arg(long, default_value_t = 60, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), env = "ZONE_HASH_INTERVAL")]
    hash_interval: u32,

    /// Seconds between statistics log lines.
    #[arg(long, default_value_t = 5.0, value_name = "SECS", env = "ZONE_STATS_INTERVAL")]
    stats_interval: f64,

    /// Log format: text (for people) or json (for machines).
    #[arg(long, default_value = "text", value_parser = ["text", "json"], env = "ZONE_LOG_FORMAT")]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zone-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    if !(cli.stats_interval.is_finite() && cli.stats_interval > 0.0) {
        anyhow::bail!("--stats-interval must be a positive number of seconds, got {}", cli.stats_interval);
    }
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 || threads > 256 {
        anyhow::bail!("--threads must be between 1 and 256, got {threads}");
    }
    let cfg = RunConfig {
        zone: cli.zone,
        seed: cli.seed,
        threads,
        sim_players: cli.sim_players,
        journal: cli.journal,
        ticks: cli.ticks,
        realtime: cli.realtime,
        hash_interval: cli.hash_interval,
        stats_interval: Duration::from_secs_f64(cli.stats_interval),
    };
    let outcome = run(&cfg, stop)?;
    println!("{}", outcome.final_line());
    Ok(ExitCode::SUCCESS)
}

fn init_logs(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}
