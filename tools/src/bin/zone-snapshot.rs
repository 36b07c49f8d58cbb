//! `zone-snapshot`: list, inspect, verify, export and import zone snapshots, across the file,
//! Redis and PostgreSQL stores: backup and restore for operators.
//!
//! A store is named by a location: a directory (the file store, e.g. `./data/snapshots`), a
//! `redis://` URL or a `postgres://` URL; Redis and PostgreSQL also need `--instance` (the
//! server's instance name, by default its zone id). Every command that reads a snapshot verifies
//! its checksum first; a damaged one is reported with what is wrong and exits 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use zone_persistence::snapshot::{SnapshotBody, SnapshotKind, decode, decode_meta};
use zone_persistence::store::{FileStore, PostgresStore, RedisStore, SnapshotStore};

/// Lists, inspects, verifies, exports and imports zone snapshots.
///
/// Examples:
///   zone-snapshot list ./data/snapshots --journal ./data/journal
///   zone-snapshot export redis://127.0.0.1:6379/ --instance demo --key latest --out backup.zsnap
///   zone-snapshot verify backup.zsnap
///   zone-snapshot import backup.zsnap postgres://postgres@127.0.0.1:5432/test --instance demo
#[derive(Parser, Debug)]
#[command(name = "zone-snapshot", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Milliseconds a Redis or PostgreSQL operation may take.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the snapshots in a store, newest first. With --journal, also the journal's segments,
    /// and for each snapshot the segment a replay from it starts in (or why none can).
    List {
        /// A directory, redis:// URL or postgres:// URL.
        store: String,
        #[arg(long)]
        instance: Option<String>,
        /// The journal directory (e.g. ./data/journal).
        #[arg(long, value_name = "DIR")]
        journal: Option<PathBuf>,
    },
    /// Show a snapshot file's header and contents (objects per shard and kind).
    Inspect { file: PathBuf },
    /// Check snapshot files: header, checksum and a full decode. Exits 1 if any is damaged.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Copy a snapshot out of a store into a file (verified first).
    Export {
        store: String,
        #[arg(long)]
        instance: Option<String>,
        /// The key shown by `list`, or `latest` for the newest full snapshot.
        #[arg(long, default_value = "latest")]
        key: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a snapshot file into a store (verified first).
    Import {
        file: PathBuf,
        store: String,
        #[arg(long)]
        instance: Option<String>,
    },
}

/// Prints a line; a closed stdout (`zone-snapshot list … | head`) ends the program quietly
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zone-snapshot: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zone-snapshot: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn open(store: &str, instance: Option<&str>, timeout: Duration) -> anyhow::Result<Box<dyn SnapshotStore>> {
    let need =
        || instance.context("--instance is required for Redis and PostgreSQL stores (the server's --instance, by default its zone id)");
    if store.starts_with("redis://") || store.starts_with("rediss://") {
        Ok(Box::new(
            RedisStore::connect(store, need()?, Duration::from_secs(7 * 24 * 3600), timeout).await?,
        ))
    } else if store.starts_with("postgres://") || store.starts_with("postgresql://") {
        Ok(Box::new(PostgresStore::connect(store, need()?, usize::MAX, timeout).await?))
    } else {
        if !Path::new(store).is_dir() {
            bail!("{store} is not a directory, a redis:// URL or a postgres:// URL");
        }
        Ok(Box::new(FileStore::new(store, usize::MAX)?))
    }
}

/// Reads and fully verifies a snapshot; returns its bytes.
fn verify_bytes(name: &str, bytes: &[u8]) -> anyhow::Result<zone_persistence::snapshot::Snapshot> {
    decode(bytes).with_context(|| format!("{name} is damaged"))
}

fn describe(name: &str, s: &zone_persistence::snapshot::Snapshot, bytes: usize) {
    let m = &s.meta;
    let digest: String = m.zone_digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    say!(
        "{name}: {} snapshot, format {}, tick {}, base tick {}, seed {}, zone digest {digest}…, {bytes} bytes",
        m.kind.as_str(),
        m.format_version,
        m.tick,
        m.base_tick,
        m.seed
    );
    match &s.body {
        SnapshotBody::Full(state) => {
            say!("  {} objects in {} shards", state.object_count(), state.shards.len());
            for sh in &state.shards {
                let mut kinds = std::collections::BTreeMap::new();
                for o in &sh.objects {
                    *kinds.entry(o.obj.kind).or_insert(0u64) += 1;
                }
                let k: Vec<String> = kinds.iter().map(|(k, n)| format!("kind{k}={n}")).collect();
                say!(
                    "  shard {:>2}: {:>6} objects ({}), {} pending respawns, {} mail",
                    sh.index,
                    sh.objects.len(),
                    k.join(" "),
                    sh.spawners.iter().map(|p| p.due.len()).sum::<usize>(),
                    sh.mail.len()
                );
            }
        }
        SnapshotBody::Diff(d) => {
            let up: usize = d.shards.iter().map(|s| s.upserted.len()).sum();
            let ch: usize = d.shards.iter().map(|s| s.changed.len()).sum();
            let rm: usize = d.shards.iter().map(|s| s.removed.len()).sum();
            say!(
                "  diff from tick {} to {}: {up} objects written whole (new), {ch} changed field by field, {rm} removed",
                d.base_tick,
                d.tick
            );
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    match cli.command {
        Command::List { store, instance, journal } => {
            let s = open(&store, instance.as_deref(), timeout).await?;
            let list = s.list().await?;
            if list.is_empty() {
                say!("no snapshots in {store}");
            }
            // Segments: start tick, end tick, file name.
            let segs: Vec<(u64, u64, String)> = match &journal {
                None => Vec::new(),
                Some(dir) => {
                    let files = zone_persistence::segments::journal_files(dir)?;
                    let mut v = Vec::new();
                    for f in files {
                        let info = zone_persistence::scan_segment(&f)?;
                        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        v.push((info.header.start_tick, info.end_tick, name));
                    }
                    v
                }
            };
            say!(
                "{:<48} {:>5} {:>10} {:>10} {:>10}{}",
                "key",
                "kind",
                "tick",
                "base",
                "bytes",
                if journal.is_some() { "  replay from segment" } else { "" }
            );
            for e in list {
                let seg = if journal.is_none() {
                    String::new()
                } else {
                    match segs.iter().rev().find(|s| s.0 <= e.meta.tick) {
                        Some(s) if e.meta.tick <= segs.last().map_or(0, |l| l.1) => format!("  {}", s.2),
                        Some(_) => "  (after the journal's end)".into(),
                        None => "  (before the journal's first segment)".into(),
                    }
                };
                say!(
                    "{:<48} {:>5} {:>10} {:>10} {:>10}{seg}",
                    e.key,
                    e.meta.kind.as_str(),
                    e.meta.tick,
                    e.meta.base_tick,
                    e.bytes_len
                );
            }
            if let Some(dir) = &journal {
                say!("journal {}: {} segments", dir.display(), segs.len());
                say!("{:<32} {:>10} {:>10}", "segment", "start", "end");
                for (start, end, name) in &segs {
                    say!("{name:<32} {start:>10} {end:>10}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let s = verify_bytes(&file.display().to_string(), &bytes)?;
            describe(&file.display().to_string(), &s, bytes.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { files } => {
            let mut bad = 0;
            for f in &files {
                let name = f.display().to_string();
                match std::fs::read(f)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| verify_bytes(&name, &b).map(|s| (s, b.len())))
                {
                    Ok((s, n)) => say!("ok: {name}: {} snapshot at tick {}, {n} bytes", s.meta.kind.as_str(), s.meta.tick),
                    Err(e) => {
                        bad += 1;
                        say!("DAMAGED: {e:#}");
                    }
                }
            }
            Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Export { store, instance, key, out } => {
            let s = open(&store, instance.as_deref(), timeout).await?;
            let bytes = if key == "latest" {
                let list = s.list().await?;
                let newest = list
                    .iter()
                    .find(|e| e.meta.kind == SnapshotKind::Full)
                    .context("the store holds no full snapshot")?;
                s.get(&newest.key).await?
            } else {
                s.get(&key).await?
            };
            let snap = verify_bytes(&format!("{store} key {key}"), &bytes)?;
            let tmp = out.with_extension("tmp");
            std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &out)?;
            say!(
                "exported {} snapshot at tick {} ({} bytes) to {}",
                snap.meta.kind.as_str(),
                snap.meta.tick,
                bytes.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { file, store, instance } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            verify_bytes(&file.display().to_string(), &bytes)?;
            let meta = decode_meta(&bytes)?;
            let s = open(&store, instance.as_deref(), timeout).await?;
            s.put(&meta, &bytes).await?;
            say!(
                "imported {} snapshot at tick {} into {} ({})",
                meta.kind.as_str(),
                meta.tick,
                s.name(),
                zone_server::config::mask_url_passwords(&store)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
