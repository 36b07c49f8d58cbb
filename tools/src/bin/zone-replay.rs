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
