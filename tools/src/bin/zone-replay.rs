//! `zone-replay PATH`: replays an input journal (a directory of segments, or one segment file)
//! headless, as fast as it can, checking every recorded hash: from tick 0, or with `--snapshot`
//! from a snapshot and the segments after it. Prints `final_tick=<N> zone_hash=<16 hex>` as the
//! last line of stdout and exits 0; on a divergence it names the first tick and shard that differ
//! and exits 1; on a journal it cannot read it names the segment and byte offset and exits 2.
//! `--list` lists the segments instead.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use zone_server::executor::PoolExecutor;
use zone_server::replay::{ReplayError, replay, replay_from_snapshot};

/// Replays a zone-server input journal and checks that it reproduces the recorded hashes.
#[derive(Parser, Debug)]
#[command(name = "zone-replay", version, about, long_about)]
struct Cli {
    /// The journal to replay: the directory written by `zone-server --journal PATH` (by default
    /// DATA_DIR/journal), or one segment file (or a single-file journal of an earlier build).
    journal: PathBuf,

    /// Replay from this full snapshot (a .zsnap file, or a directory of them such as
    /// DATA_DIR/snapshots: the newest the journal covers) instead of from tick 0. Needed once
    /// retention has deleted the journal's first segments.
    #[arg(long, value_name = "PATH")]
    snapshot: Option<PathBuf>,

    /// List the journal's segments (start and end tick, why each starts there, size, records,
    /// snapshots noted) and exit.
    #[arg(long)]
    list: bool,

    /// Print the journal's size per player-second (players counted from its joins and leaves),
    /// and what the same records took in format 1 (fixed-size inputs), and exit.
    #[arg(long)]
    stats: bool,

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
    if cli.list {
        return list(&cli.journal);
    }
    if cli.stats {
        return match stats(&cli.journal) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zone-replay: {}: {e}", cli.journal.display());
                ExitCode::from(2)
            }
        };
    }
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
    let progress = |tick: u64| {
        if !quiet && tick.is_multiple_of(10_000) {
            eprintln!("zone-replay: tick {tick}");
        }
    };
    let result = match &cli.snapshot {
        Some(s) => replay_from_snapshot(&cli.journal, s, &exec, progress),
        None => replay(&cli.journal, &exec, progress),
    };
    match result {
        Ok(out) => {
            if !quiet {
                eprintln!(
                    "zone-replay: {} (seed {}): ticks {}..={}, {} input batches, {} hashes checked, {:.3} s, {:.0} ticks/s{}{}",
                    out.zone_name,
                    out.seed,
                    out.from_tick,
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

/// `--list`: one line per segment.
fn list(journal: &std::path::Path) -> ExitCode {
    let files = match zone_persistence::segments::journal_files(journal) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("zone-replay: {}: {e}", journal.display());
            return ExitCode::from(2);
        }
    };
    println!(
        "{:<32} {:>10} {:>10} {:>9} {:>12} {:>8} {:>7} {:>5}  notes",
        "segment", "start", "end", "origin", "bytes", "batches", "hashes", "snaps"
    );
    let mut bad = false;
    let mut prev_end: Option<u64> = None;
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match zone_persistence::scan_segment(&f) {
            Ok(s) => {
                let mut notes = Vec::new();
                if s.header.version < zone_persistence::journal::VERSION {
                    notes.push(format!("format {}", s.header.version));
                }
                if let Some(p) = prev_end.filter(|&p| p != s.header.start_tick) {
                    notes.push(format!("GAP: the previous segment ends at tick {p}"));
                }
                if let Some(t) = s.torn_tail_at {
                    notes.push(format!("torn at byte {t}"));
                }
                if s.clean_end {
                    notes.push("clean end".into());
                }
                println!(
                    "{:<32} {:>10} {:>10} {:>9} {:>12} {:>8} {:>7} {:>5}  {}",
                    name,
                    s.header.start_tick,
                    s.end_tick,
                    s.header.origin.as_str(),
                    s.bytes,
                    s.batches,
                    s.hashes_recorded,
                    s.snapshots.len(),
                    notes.join("; ")
                );
                prev_end = Some(s.end_tick);
            }
            Err(e) => {
                bad = true;
                println!("{name:<32} DAMAGED: {e}");
            }
        }
    }
    if bad { ExitCode::from(2) } else { ExitCode::SUCCESS }
}

/// `--stats`: bytes per player-second now and in format 1.
fn stats(journal: &std::path::Path) -> Result<(), zone_persistence::JournalError> {
    use zone_persistence::Record;
    let files = zone_persistence::segments::journal_files(journal)?;
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).sum();
    let mut r = zone_persistence::JournalReader::open(journal)?;
    let header = r.header().clone();
    // Format 1: one header, then raw records (framing 9 bytes: length, tag, checksum).
    let v1_header = 14 + 8 + 4 + 32 + 4 + header.zone_name.len() as u64 + 4 + header.zone_toml.len() as u64 + 4;
    let (mut v1, mut inputs, mut batches) = (v1_header, 0u64, 0u64);
    let mut online: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    let (mut player_ticks, mut last_tick) = (0u64, header.start_tick);
    let start = header.start_tick;
    while let Some(rec) = r.next_record()? {
        let tick = rec.tick();
        if tick > last_tick && !matches!(rec, Record::Snapshot { .. }) {
            player_ticks += online.len() as u64 * (tick - last_tick);
            last_tick = tick;
        }
        match &rec {
            Record::Tick(b) => {
                batches += 1;
                inputs += b.inputs.len() as u64;
                v1 += 9 + 8 + 12 + 8 * (b.joins.len() + b.leaves.len()) as u64 + 17 * b.inputs.len() as u64;
                online.extend(b.joins.iter().copied());
                for p in &b.leaves {
                    online.remove(p);
                }
                // Players present before the journal started (a segment after a restore) show up
                // by their inputs.
                online.extend(b.inputs.iter().map(|i| i.player));
            }
            Record::Hash(h) | Record::End(h) => v1 += 9 + 18 + 8 * h.shards.len() as u64,
            Record::Snapshot { .. } => {}
        }
    }
    let player_s = player_ticks as f64 / f64::from(zone_sim::units::TICK_RATE_HZ);
    let secs = (last_tick - start) as f64 / f64::from(zone_sim::units::TICK_RATE_HZ);
    println!(
        "journal {}: {} segments, ticks {start}..={last_tick} ({secs:.1} s of zone time), {batches} input batches, {inputs} inputs, {player_s:.0} player-seconds",
        journal.display(),
        files.len()
    );
    let per = |b: u64| if player_s > 0.0 { b as f64 / player_s } else { 0.0 };
    println!("bytes={bytes} bytes_per_player_second={:.1}", per(bytes));
    println!("format1_bytes={v1} format1_bytes_per_player_second={:.1}", per(v1));
    println!("ratio={:.1}", v1 as f64 / bytes.max(1) as f64);
    Ok(())
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
