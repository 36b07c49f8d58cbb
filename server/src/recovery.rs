//! Recovery at start (`--restore auto|required`): rebuild the zone from the newest snapshot that
//! verifies, then replay the journal's segments from that snapshot's tick to the journal's end.
//!
//! The journal's segments are read first (a newest segment with a torn header, left by a crash
//! while switching segments, is removed; a torn last record is cut off; after a gap only the
//! segments after it count). Snapshot candidates are read from every configured store (hot Redis,
//! cold PostgreSQL, files); each must decode, match the zone file's digest and the seed, lie
//! within the journal (not before its first kept segment, not after its end) and hash as the
//! journal recorded at its tick. The newest wins; on a tie the hot store is preferred, then cold,
//! then files. With no journal, the newest snapshot that verifies is restored and the server
//! starts a new segment from it; with a journal that no snapshot fits, that journal is moved
//! aside, loudly, and the same happens. It never deletes a segment that holds records. Because the core is deterministic, the restored state is
//! exactly what `zone-replay` computes for the same journal, and what is lost in a crash is
//! bounded by the journal's flush interval, not by the snapshot interval. Every step logs what it
//! chose and why.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::Digest;
use zone_persistence::segments::{list_segments, remove_temp_files};
use zone_persistence::snapshot::{SnapshotKind, decode_meta, recover};
use zone_persistence::store::{Chain, FileStore, PostgresStore, RedisStore, SnapshotStore, StoreError};
use zone_persistence::{JournalError, JournalReader, SegmentInfo, scan_segment};
use zone_sim::{ShardExecutor, Zone, ZoneState};

use crate::persist::PersistConfig;
use crate::zone_load::LoadedZone;

/// Where the restored state came from.
pub struct Restored {
    pub zone: Zone,
    /// `redis`, `postgres`, `file`, `journal` (replayed from tick 0) .
    pub source: &'static str,
    pub snapshot_tick: Option<u64>,
    /// Ticks replayed from the journal on top of the snapshot.
    pub replayed_ticks: u64,
    /// The run the journal belongs to (None: no journal was continued; a new run starts).
    pub run_id: Option<u64>,
    /// SHA-256 of the full snapshot restored from (the new segment's header names it).
    pub snapshot_sha256: Option<[u8; 32]>,
}

struct Candidate {
    source: &'static str,
    state: ZoneState,
    /// SHA-256 of the chain's full snapshot bytes.
    sha256: [u8; 32],
}

/// The newest state a store can give that is not after `max_tick` (the journal's end, when there
/// is a journal): its latest chain with the diffs past `max_tick` left out, or, when even its
/// newest full is past it, the newest full that is not (a crash right after a snapshot leaves the
/// journal up to 100 ms behind the snapshot stores).
async fn chain_up_to(store: &dyn SnapshotStore, max_tick: Option<u64>) -> Result<Option<Chain>, StoreError> {
    let Some(mut chain) = store.latest_chain().await? else {
        return Ok(None);
    };
    let Some(max) = max_tick else { return Ok(Some(chain)) };
    chain.diffs.retain(|d| decode_meta(d).map_or(true, |m| m.tick <= max));
    match decode_meta(&chain.full) {
        Ok(m) if m.tick <= max => return Ok(Some(chain)),
        Err(_) => return Ok(Some(chain)), // let `recover` report the damage
        Ok(m) => tracing::info!(
            source = store.name(),
            full_tick = m.tick,
            journal_end = max,
            "recovery: newest full is ahead of the journal; looking for an older one"
        ),
    }
    for entry in store.list().await? {
        if entry.meta.kind == SnapshotKind::Full && entry.meta.tick <= max {
            return Ok(Some(Chain {
                full: store.get(&entry.key).await?,
                diffs: Vec::new(),
            }));
        }
    }
    Ok(None)
}

/// Reads every store's newest usable chain; returns the candidates (in preference order).
fn candidates(loaded: &LoadedZone, seed: u64, pcfg: &PersistConfig, max_tick: Option<u64>) -> Vec<Candidate> {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "recovery: cannot start a runtime to read stores");
            return Vec::new();
        }
    };
    let digest = loaded.spec.digest;
    rt.block_on(async {
        let mut out = Vec::new();
        let mut consider = |source: &'static str, chain: Result<Option<Chain>, StoreError>| match chain {
            Err(e) => tracing::warn!(source, error = %e, "recovery: store unreadable; skipping it"),
            Ok(None) => tracing::info!(source, "recovery: no snapshot in this store"),
            Ok(Some(c)) => match recover(&c.full, &c.diffs, &digest) {
                Err(e) => tracing::warn!(source, error = %e, "recovery: newest snapshot does not verify; skipping this store"),
                Ok(r) if r.state.seed != seed => {
                    tracing::warn!(
                        source,
                        snapshot_seed = r.state.seed,
                        seed,
                        "recovery: snapshot is for another seed; skipping"
                    )
                }
                Ok(r) => {
                    for (i, e) in &r.skipped {
                        tracing::warn!(source, diff = i, error = %e, "recovery: a newer diff is damaged; using an older one");
                    }
                    tracing::info!(
                        source,
                        full_tick = r.full.tick,
                        diff_tick = r.diff.map(|d| d.tick),
                        tick = r.state.tick,
                        "recovery: snapshot verifies"
                    );
                    let sha256 = sha2::Sha256::digest(&c.full).into();
                    out.push(Candidate {
                        source,
                        state: r.state,
                        sha256,
                    });
                }
            },
        };
        if let Some(url) = &pcfg.redis {
            let chain = match RedisStore::connect(url, &pcfg.instance, pcfg.redis_ttl, pcfg.op_timeout).await {
                Ok(s) => chain_up_to(&s, max_tick).await,
                Err(e) => Err(e),
            };
            consider("redis", chain);
        }
        if let Some(url) = &pcfg.postgres {
            let chain = match PostgresStore::connect(url, &pcfg.instance, pcfg.keep_full, pcfg.op_timeout).await {
                Ok(s) => chain_up_to(&s, max_tick).await,
                Err(e) => Err(e),
            };
            consider("postgres", chain);
        }
        match FileStore::new(pcfg.data_dir.join("snapshots"), pcfg.keep_full) {
            Ok(s) => consider("file", chain_up_to(&s, max_tick).await),
            Err(e) => consider("file", Err(e)),
        }
        out
    })
}

/// The journal's usable segments: the newest contiguous run of them, with every hash they hold.
struct JournalScan {
    segs: Vec<SegmentInfo>,
    /// The last tick the journal reaches.
    end: u64,
    hashes: std::collections::BTreeMap<u64, zone_sim::ZoneHash>,
}

impl JournalScan {
    fn start(&self) -> u64 {
        self.segs.first().map_or(0, |s| s.header.start_tick)
    }
}

/// The error for a journal path that is a file: journals are directories of segments now.
pub fn single_file_journal_error(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{p} is a file, but a journal is now a directory of segments (seg-<tick>.zjnl). If it is a \
         single-file journal from an earlier build, it still replays with `zone-replay {p}`; move it \
         away (mv {p} {p}.v1) or choose another --journal",
        p = path.display()
    )
}

/// Reads every segment of the journal directory through, after checking they belong here. A
/// newest segment with a torn header (a crash while switching segments) and temporary files of a
/// switch are removed; a torn last record is cut off.
fn scan_journal(dir: &Path, loaded: &LoadedZone, seed: u64) -> anyhow::Result<Option<JournalScan>> {
    if !dir.exists() {
        return Ok(None);
    }
    if !dir.is_dir() {
        return Err(single_file_journal_error(dir));
    }
    for t in remove_temp_files(dir).with_context(|| format!("cannot clean up {}", dir.display()))? {
        tracing::warn!(file = %t.display(), "recovery: removed what an interrupted segment switch left");
    }
    let list = list_segments(dir).with_context(|| format!("cannot list journal segments in {}", dir.display()))?;
    let mut segs: Vec<SegmentInfo> = Vec::with_capacity(list.len());
    for (i, (_, path)) in list.iter().enumerate() {
        match scan_segment(path) {
            Ok(info) => {
                if info.header.zone_digest != loaded.spec.digest || info.header.seed != seed {
                    bail!(
                        "journal segment {} was recorded with another zone file or seed (seed {}); move the journal {} away, or run with the zone and seed it was made with",
                        path.display(),
                        info.header.seed,
                        dir.display()
                    );
                }
                segs.push(info);
            }
            Err(e) if i + 1 == list.len() && matches!(e.root(), JournalError::TruncatedHeader { .. }) => {
                tracing::warn!(segment = %path.display(), error = %e, "recovery: the newest segment's header is torn (a crash while switching segments); removing it");
                std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("the journal {} is damaged", dir.display()))),
        }
    }
    if segs.is_empty() {
        return Ok(None);
    }
    // The newest contiguous run: each segment starts where the one before it ends.
    let mut first = segs.len() - 1;
    while first > 0 && segs[first - 1].end_tick == segs[first].header.start_tick {
        first -= 1;
    }
    if first > 0 {
        tracing::warn!(
            before = %segs[first - 1].path.display(),
            ends_at = segs[first - 1].end_tick,
            next = %segs[first].path.display(),
            starts_at = segs[first].header.start_tick,
            "recovery: the journal has a gap; only the segments after it are used"
        );
        segs.drain(..first);
    }
    let last = segs.last().expect("not empty");
    if let Some(at) = last.torn_tail_at {
        tracing::warn!(segment = %last.path.display(), offset = at, "recovery: the journal ends in a torn record (a crash mid-write); it is cut there");
        let f = std::fs::OpenOptions::new().write(true).open(&last.path)?;
        f.set_len(last.valid_len)
            .with_context(|| format!("cannot cut the torn tail of {}", last.path.display()))?;
    }
    let end = segs.iter().map(|s| s.end_tick).max().unwrap_or(0);
    let hashes = segs.iter().flat_map(|s| s.hashes.iter().map(|(t, h)| (*t, h.clone()))).collect();
    Ok(Some(JournalScan { segs, end, hashes }))
}

/// Restores the zone, or returns `None` when there is nothing to restore from. `journal` is the
/// journal directory.
pub fn restore(
    loaded: &LoadedZone,
    seed: u64,
    journal: Option<&Path>,
    pcfg: &PersistConfig,
    exec: &dyn ShardExecutor,
) -> anyhow::Result<Option<Restored>> {
    let scan = match journal {
        Some(p) => scan_journal(p, loaded, seed)?,
        None => None,
    };
    if let Some(s) = &scan {
        tracing::info!(
            segments = s.segs.len(),
            from_tick = s.start(),
            to_tick = s.end,
            "recovery: journal segments read"
        );
    }
    let cands = candidates(loaded, seed, pcfg, scan.as_ref().map(|e| e.end));
    // Newest first; the order of `cands` (hot, cold, file) breaks ties.
    let mut order: Vec<(usize, Candidate)> = cands.into_iter().enumerate().collect();
    order.sort_by_key(|(i, c)| (std::cmp::Reverse(c.state.tick), *i));
    let spec = loaded.spec.clone();
    let mut best: Option<(Zone, &'static str, u64, [u8; 32])> = None;
    // The newest snapshot that verifies on its own, should none fit the journal.
    let mut off_journal: Option<(Zone, &'static str, u64, [u8; 32])> = None;
    for (_, c) in order {
        let tick = c.state.tick;
        let source = c.source;
        let mut z = match Zone::restore(spec.clone(), c.state) {
            Ok(z) => z,
            Err(e) => {
                tracing::warn!(source, tick, error = %e, "recovery: snapshot does not fit this zone; skipping it");
                continue;
            }
        };
        // A snapshot must be on this journal's timeline: the journal recorded the zone's hash at
        // every snapshot tick (and at every segment start), and the restored zone must hash the same.
        if let Some(e) = &scan {
            let why = if tick > e.end {
                Some("snapshot is ahead of the journal (replay could not continue from it)")
            } else if tick < e.start() {
                Some("snapshot is older than the journal's first kept segment")
            } else {
                match e.hashes.get(&tick) {
                    Some(h) if *h == z.hash(exec) => None,
                    Some(_) => Some("snapshot differs from the journal's hash at its tick (another run's snapshot?)"),
                    None => Some("the journal has no hash at this snapshot's tick, so it cannot be tied to this journal"),
                }
            };
            if let Some(why) = why {
                tracing::warn!(source, tick, "recovery: {why}; not used with the journal");
                if off_journal.is_none() {
                    off_journal = Some((z, source, tick, c.sha256));
                }
                continue;
            }
        }
        tracing::info!(source, tick, "recovery: restoring from the newest snapshot that verifies");
        best = Some((z, source, tick, c.sha256));
        break;
    }
    let (mut zone, source, snapshot_tick, sha) = match (best, &scan) {
        (Some((z, source, tick, sha)), _) => (z, source, Some(tick), Some(sha)),
        (None, Some(s)) if s.start() == 0 => {
            tracing::info!("recovery: no usable snapshot; replaying the journal from tick 0");
            (Zone::new(spec, seed)?, "journal", None, None)
        }
        (None, Some(s)) => {
            let Some((z, source, tick, sha)) = off_journal else {
                bail!(
                    "the journal {} starts at tick {} (older segments were deleted by retention) and no snapshot at or after that tick verifies: \
                     nothing to restore from. Import a snapshot (zone-snapshot import), or move the journal and DATA_DIR/snapshots away to start fresh",
                    journal.map_or(String::new(), |p| p.display().to_string()),
                    s.start()
                );
            };
            // Journaling goes on from the snapshot in a new run; the old segments are kept aside.
            let dir = journal.expect("a scan has a journal");
            let aside = crate::housekeeping::move_aside(dir, "the journal that no snapshot fits")?;
            tracing::error!(
                source,
                tick,
                journal_from = s.start(),
                journal_to = s.end,
                aside = %aside.display(),
                "recovery: no snapshot fits the journal; restoring the newest snapshot without it (inputs after it are lost) and starting a new journal"
            );
            return Ok(Some(Restored {
                zone: z,
                source,
                snapshot_tick: Some(tick),
                replayed_ticks: 0,
                run_id: None,
                snapshot_sha256: Some(sha),
            }));
        }
        (None, None) => match off_journal {
            Some((z, source, tick, sha)) => (z, source, Some(tick), Some(sha)),
            None => return Ok(None),
        },
    };
    let from = zone.tick();
    let mut run_id = None;
    if let (Some(path), Some(_)) = (journal, &scan) {
        let mut r = JournalReader::open_at(path, from)?;
        run_id = Some(r.segment_header().run_id);
        // A mismatch here means the snapshot and the journal disagree: moving one of them away
        // lets the server start from the other.
        crate::replay::continue_from_journal(&mut zone, &mut r, exec, &mut |_| {})
            .with_context(|| format!("recovery: the journal {} does not continue the restored zone", path.display()))?;
        tracing::info!(journal = %path.display(), from_tick = from, to_tick = zone.tick(), "recovery: journal replayed");
    }
    let replayed = zone.tick() - from;
    Ok(Some(Restored {
        zone,
        source,
        snapshot_tick,
        replayed_ticks: replayed,
        run_id,
        snapshot_sha256: sha,
    }))
}

/// The one line recovery prints on stdout.
pub fn restored_line(tick: u64, hash: &str, source: &str, rto: Duration) -> String {
    format!("restored_tick={tick} zone_hash={hash} source={source} rto_ms={}", rto.as_millis())
}
