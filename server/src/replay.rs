//! Journal replay: rebuild the zone from a journal's embedded zone file and seed (from tick 0, or
//! from a snapshot), feed it every recorded tick across the journal's segments, and check every
//! recorded hash (and every segment's start hash).
//!
//! Used by `zone-replay`, by crash recovery and by tests. On the first hash that differs it stops
//! and names the tick and the first shard that differs. It only reads: it never writes or deletes
//! a journal file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zone_persistence::snapshot::decode_full;
use zone_persistence::{JournalError, JournalHeader, JournalReader, Record};
use zone_sim::{ShardExecutor, TickBatch, Zone, ZoneHash, ZoneSpec};

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("the zone file embedded in the journal ({name}) does not load: {source}")]
    Zone { name: String, source: zone_sim::ZoneFileError },
    #[error("the zone file embedded in the journal does not match the journal's zone digest")]
    DigestMismatch,
    #[error("cannot build the zone: {0}")]
    Build(#[from] zone_sim::ZoneError),
    #[error("journal records go back in time at byte {offset}: tick {tick} after tick {after}")]
    OutOfOrder { offset: u64, tick: u64, after: u64 },
    #[error(
        "the journal's first kept segment starts at tick {start} (the older ones were deleted by retention), so it does not \
         replay from tick 0: replay it from a snapshot (zone-replay --snapshot DATA_DIR/snapshots JOURNAL)"
    )]
    NeedsSnapshot { start: u64 },
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: String, reason: String },
    #[error(
        "divergence at tick {tick}: shard {shard} hash is {got:016x}, the journal recorded {expected:016x} \
         (zone hash {got_zone:016x} vs {expected_zone:016x}); hashes were recorded every {interval} ticks, so the \
         first differing tick is in {first}..={tick}"
    )]
    Divergence {
        tick: u64,
        shard: usize,
        expected: u64,
        got: u64,
        expected_zone: u64,
        got_zone: u64,
        interval: u32,
        first: u64,
    },
}

/// What a successful replay found.
#[derive(Clone, Debug)]
pub struct ReplayOutcome {
    pub final_hash: ZoneHash,
    pub hashes_checked: u64,
    pub batches: u64,
    pub wall: Duration,
    /// The journal ended with an End record (a clean shutdown).
    pub clean_end: bool,
    /// Where an incomplete last record started, if the journal was cut mid-write.
    pub torn_tail_at: Option<u64>,
    pub zone_name: String,
    pub seed: u64,
    /// The tick the replay started from (0, or the snapshot's tick).
    pub from_tick: u64,
}

impl ReplayOutcome {
    pub fn final_line(&self) -> String {
        format!("final_tick={} zone_hash={}", self.final_hash.tick, self.final_hash.hex())
    }
    pub fn ticks_per_s(&self) -> f64 {
        (self.final_hash.tick - self.from_tick) as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Replays the journal at `path` (a directory of segments, or one segment file) from tick 0.
/// `progress(tick)` is called every 1,000 ticks.
pub fn replay(path: &Path, exec: &dyn ShardExecutor, mut progress: impl FnMut(u64)) -> Result<ReplayOutcome, ReplayError> {
    let mut reader = JournalReader::open(path)?;
    let header = reader.header().clone();
    if header.start_tick != 0 {
        return Err(ReplayError::NeedsSnapshot { start: header.start_tick });
    }
    let spec = zone_spec(&header)?;
    let started = Instant::now();
    let mut zone = Zone::new(Arc::new(spec), header.seed)?;
    let done = continue_from_journal(&mut zone, &mut reader, exec, &mut progress)?;
    let final_hash = zone.hash(exec);
    Ok(ReplayOutcome {
        final_hash,
        hashes_checked: done.hashes_checked,
        batches: done.batches,
        wall: started.elapsed(),
        clean_end: done.clean_end,
        torn_tail_at: reader.torn_tail_at(),
        zone_name: header.zone_name,
        seed: header.seed,
        from_tick: 0,
    })
}

/// Replays the journal at `path` from a full snapshot: `snapshot` is a snapshot file, or a
/// directory of them (the file store), in which case the newest full snapshot the journal covers
/// and whose hash the journal recorded is used. The snapshot must be of the journal's zone and
/// seed, and must hash as the journal recorded at its tick.
pub fn replay_from_snapshot(
    path: &Path,
    snapshot: &Path,
    exec: &dyn ShardExecutor,
    mut progress: impl FnMut(u64),
) -> Result<ReplayOutcome, ReplayError> {
    let first = JournalReader::open(path)?;
    let header = first.header().clone();
    let spec = Arc::new(zone_spec(&header)?);
    let snap_err = |p: &Path, reason: String| ReplayError::Snapshot {
        path: p.display().to_string(),
        reason,
    };
    // The candidates, newest first.
    let files: Vec<std::path::PathBuf> = if snapshot.is_dir() {
        let mut v: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(snapshot)
            .map_err(|e| snap_err(snapshot, e.to_string()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let tick = name.strip_prefix("snap-")?.strip_suffix("-full.zsnap")?.parse().ok()?;
                Some((tick, e.path()))
            })
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.0));
        v.into_iter().map(|(_, p)| p).collect()
    } else {
        vec![snapshot.to_path_buf()]
    };
    let mut last_err = snap_err(snapshot, "no full snapshot in it".into());
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| snap_err(&file, e.to_string()))?;
        let (meta, state) = match decode_full(&bytes) {
            Ok(x) => x,
            Err(e) => {
                last_err = snap_err(&file, e.to_string());
                continue;
            }
        };
        if meta.zone_digest != header.zone_digest || state.seed != header.seed {
            last_err = snap_err(&file, "it is of another zone file or seed than the journal".into());
            continue;
        }
        let tick = meta.tick;
        let mut reader = JournalReader::open_at(path, tick)?;
        if reader.segment_header().start_tick > tick {
            last_err = snap_err(
                &file,
                format!(
                    "its tick {tick} is before the journal's first kept segment (tick {})",
                    reader.segment_header().start_tick
                ),
            );
            continue;
        }
        let started = Instant::now();
        let mut zone = Zone::restore(spec.clone(), state)?;
        let done = continue_from_journal(&mut zone, &mut reader, exec, &mut progress)?;
        if !done.checked_start {
            return Err(snap_err(
                &file,
                format!("the journal recorded no hash at its tick {tick}, so it cannot be tied to this journal"),
            ));
        }
        let final_hash = zone.hash(exec);
        return Ok(ReplayOutcome {
            final_hash,
            hashes_checked: done.hashes_checked,
            batches: done.batches,
            wall: started.elapsed(),
            clean_end: done.clean_end,
            torn_tail_at: reader.torn_tail_at(),
            zone_name: header.zone_name.clone(),
            seed: header.seed,
            from_tick: tick,
        });
    }
    Err(last_err)
}

/// What [`continue_from_journal`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Continued {
    pub batches: u64,
    pub hashes_checked: u64,
    /// The last record read was an End record (the recording shut down cleanly).
    pub clean_end: bool,
    /// A recorded hash at the zone's starting tick was checked (the zone is on the journal's
    /// timeline from its first tick).
    pub checked_start: bool,
}

/// Brings `zone` up to the end of the journal: records for ticks the zone has already run are
/// skipped (a hash at the zone's own tick is still checked), ticks without a record run empty,
/// every batch is applied and every recorded hash is checked. Used by replay (from tick 0) and by
/// recovery (from a restored snapshot). `progress(tick)` is called every 1,000 ticks.
pub fn continue_from_journal(
    zone: &mut Zone,
    reader: &mut JournalReader,
    exec: &dyn ShardExecutor,
    progress: &mut dyn FnMut(u64),
) -> Result<Continued, ReplayError> {
    let from = zone.tick();
    let interval = reader.header().hash_interval.max(1);
    let mut done = Continued::default();
    let mut advance_to = |zone: &mut Zone, tick: u64| {
        while zone.tick() < tick {
            let next = zone.tick() + 1;
            zone.step_batch(
                &TickBatch {
                    tick: next,
                    ..Default::default()
                },
                exec,
            )
            .expect("the next tick is always accepted");
            if next.is_multiple_of(1000) {
                progress(next);
            }
        }
    };
    loop {
        let offset = reader.offset();
        let Some(rec) = reader.next_record()? else { break };
        if matches!(rec, Record::Snapshot { .. }) {
            continue;
        }
        done.clean_end = matches!(rec, Record::End(_));
        match rec {
            Record::Snapshot { .. } => {}
            Record::Tick(batch) => {
                if batch.tick <= from {
                    continue;
                }
                if batch.tick <= zone.tick() {
                    return Err(ReplayError::OutOfOrder {
                        offset,
                        tick: batch.tick,
                        after: zone.tick(),
                    });
                }
                advance_to(zone, batch.tick - 1);
                zone.step_batch(&batch, exec)?;
                done.batches += 1;
            }
            Record::Hash(expected) | Record::End(expected) => {
                if expected.tick < from {
                    continue;
                }
                if expected.tick < zone.tick() {
                    return Err(ReplayError::OutOfOrder {
                        offset,
                        tick: expected.tick,
                        after: zone.tick(),
                    });
                }
                advance_to(zone, expected.tick);
                check_hash(zone, &expected, interval, exec)?;
                done.hashes_checked += 1;
                done.checked_start |= expected.tick == from;
            }
        }
    }
    Ok(done)
}

/// The zone file embedded in a journal, checked against the journal's digest.
fn zone_spec(header: &JournalHeader) -> Result<ZoneSpec, ReplayError> {
    let spec = ZoneSpec::from_toml_str(&header.zone_name, &header.zone_toml).map_err(|source| ReplayError::Zone {
        name: header.zone_name.clone(),
        source,
    })?;
    if spec.digest != header.zone_digest {
        return Err(ReplayError::DigestMismatch);
    }
    Ok(spec)
}

/// Compares the zone's hash with a recorded one; a difference names the tick and first shard.
fn check_hash(zone: &mut Zone, expected: &ZoneHash, interval: u32, exec: &dyn ShardExecutor) -> Result<(), ReplayError> {
    let got = zone.hash(exec);
    if got == *expected {
        return Ok(());
    }
    let shard = got.first_difference(expected).unwrap_or(0);
    Err(ReplayError::Divergence {
        tick: expected.tick,
        shard,
        expected: expected.shards.get(shard).copied().unwrap_or(0),
        got: got.shards.get(shard).copied().unwrap_or(0),
        expected_zone: expected.zone,
        got_zone: got.zone,
        interval,
        first: expected.tick.saturating_sub(u64::from(interval) - 1).max(1),
    })
}

/// A journal read whole into memory, for going to any tick of it in any order (the world
/// visualizer's replay). Holds the inputs (a few MB for 10 minutes of a busy zone), not states:
/// the caller keeps its own checkpoints ([`Zone::capture`]) and calls [`LoadedJournal::advance`]
/// from one of them.
#[derive(Debug)]
pub struct LoadedJournal {
    pub spec: Arc<ZoneSpec>,
    pub seed: u64,
    pub zone_name: String,
    pub hash_interval: u32,
    /// The last tick the journal covers (its last batch, hash or end record).
    pub end_tick: u64,
    pub clean_end: bool,
    pub torn_tail_at: Option<u64>,
    /// Batches in tick order (ticks without one ran empty).
    batches: Vec<TickBatch>,
    /// Recorded hashes in tick order.
    hashes: Vec<ZoneHash>,
}

/// Reads the journal at `path` into memory (checking its header, zone file and record order).
pub fn load_journal(path: &Path) -> Result<LoadedJournal, ReplayError> {
    let mut reader = JournalReader::open(path)?;
    let header = reader.header().clone();
    if header.start_tick != 0 {
        return Err(ReplayError::NeedsSnapshot { start: header.start_tick });
    }
    let spec = zone_spec(&header)?;
    let mut batches: Vec<TickBatch> = Vec::new();
    let mut hashes: Vec<ZoneHash> = Vec::new();
    let mut clean_end = false;
    let mut end_tick = 0u64;
    loop {
        let offset = reader.offset();
        let Some(rec) = reader.next_record()? else { break };
        if matches!(rec, Record::Snapshot { .. }) {
            continue;
        }
        clean_end = matches!(rec, Record::End(_));
        match rec {
            Record::Snapshot { .. } => {}
            Record::Tick(batch) => {
                // The same rules as `continue_from_journal`: a batch after the tick reached, a
                // hash at or after it.
                if batch.tick <= end_tick {
                    return Err(ReplayError::OutOfOrder {
                        offset,
                        tick: batch.tick,
                        after: end_tick,
                    });
                }
                end_tick = batch.tick;
                batches.push(batch);
            }
            Record::Hash(h) | Record::End(h) => {
                if h.tick < end_tick {
                    return Err(ReplayError::OutOfOrder {
                        offset,
                        tick: h.tick,
                        after: end_tick,
                    });
                }
                end_tick = h.tick;
                if hashes.last().is_none_or(|l| l.tick != h.tick) {
                    hashes.push(h);
                }
            }
        }
    }
    Ok(LoadedJournal {
        spec: Arc::new(spec),
        seed: header.seed,
        zone_name: header.zone_name,
        hash_interval: header.hash_interval.max(1),
        end_tick,
        clean_end,
        torn_tail_at: reader.torn_tail_at(),
        batches,
        hashes,
    })
}

impl LoadedJournal {
    /// The zone at tick 0.
    pub fn zone_at_start(&self) -> Result<Zone, ReplayError> {
        Ok(Zone::new(Arc::clone(&self.spec), self.seed)?)
    }

    /// Runs `zone` forward to tick `to` (at most the journal's end) with the recorded inputs,
    /// checking every recorded hash it passes. `zone` must be on this journal's timeline (from
    /// [`LoadedJournal::zone_at_start`] or a capture of such a zone).
    pub fn advance(&self, zone: &mut Zone, to: u64, exec: &dyn ShardExecutor) -> Result<(), ReplayError> {
        let to = to.min(self.end_tick);
        let mut b = self.batches.partition_point(|x| x.tick <= zone.tick());
        let mut h = self.hashes.partition_point(|x| x.tick <= zone.tick());
        while zone.tick() < to {
            let next = zone.tick() + 1;
            match self.batches.get(b) {
                Some(batch) if batch.tick == next => {
                    zone.step_batch(batch, exec)?;
                    b += 1;
                }
                _ => zone.step_batch(
                    &TickBatch {
                        tick: next,
                        ..Default::default()
                    },
                    exec,
                )?,
            }
            if let Some(expected) = self.hashes.get(h).filter(|x| x.tick == next) {
                check_hash(zone, expected, self.hash_interval, exec)?;
                h += 1;
            }
        }
        Ok(())
    }
}
