//! The journal as a directory of segments: naming, listing, reading them in order as one stream
//! ([`JournalReader`]), scanning one ([`scan_segment`]) and deciding which may be deleted
//! ([`plan_retention`]).
//!
//! A segment is named `seg-<start tick, 20 digits>.zjnl`, so names sort by tick. Segments of one
//! run are contiguous: each one starts at the tick the previous one ends at (the server always
//! records the zone hash at that tick before it switches), and its header repeats that hash, which
//! a reader checks as it crosses the boundary. A gap, or a segment of another zone or seed, is an
//! error naming both files.
//!
//! A journal path may also be a single file (a segment, or a version 1 journal of earlier builds,
//! read as a genesis segment).
//!
//! This module reads, lists and plans; it deletes nothing itself and never decides when to switch
//! segments (the server does both).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use zone_sim::ZoneHash;

use crate::journal::{JournalError, JournalHeader, Record, SegmentReader};

/// Temporary files (a segment whose header is being written) start with this.
pub const TEMP_PREFIX: &str = ".tmp-";
const PREFIX: &str = "seg-";
const SUFFIX: &str = ".zjnl";

/// The file name of the segment starting at `start_tick`.
pub fn segment_name(start_tick: u64) -> String {
    format!("{PREFIX}{start_tick:020}{SUFFIX}")
}

/// The start tick a segment file name says, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let t = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (t.len() == 20 && t.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse().ok())
        .flatten()
}

/// The segments in `dir`, by start tick (ascending). Other files are ignored.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(t) = e.file_name().to_str().and_then(parse_segment_name) {
            v.push((t, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Removes the temporary files an interrupted segment switch left in `dir`; returns them.
pub fn remove_temp_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            fs::remove_file(e.path())?;
            removed.push(e.path());
        }
    }
    Ok(removed)
}

/// The files of the journal at `path`: the segments of a directory (oldest first), or the file.
pub fn journal_files(path: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let meta = fs::metadata(path)?;
    if meta.is_dir() {
        let segs = list_segments(path)?;
        if segs.is_empty() {
            return Err(JournalError::Chain {
                path: path.to_path_buf(),
                reason: "the directory holds no journal segment (seg-<tick>.zjnl)".into(),
            });
        }
        Ok(segs.into_iter().map(|(_, p)| p).collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// What a read of a whole segment found.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub header: JournalHeader,
    /// The last tick the segment reaches (its start tick when it holds no record).
    pub end_tick: u64,
    /// Tick batches, hashes (plus end) and snapshot notes read.
    pub batches: u64,
    pub hashes_recorded: u64,
    /// The file's size, and the length of its header and whole records.
    pub bytes: u64,
    pub valid_len: u64,
    pub header_len: u64,
    pub torn_tail_at: Option<u64>,
    pub clean_end: bool,
    /// Every recorded hash by tick, the header's start hash included.
    pub hashes: BTreeMap<u64, ZoneHash>,
    /// Full snapshots noted as stored: tick and SHA-256.
    pub snapshots: Vec<(u64, [u8; 32])>,
}

/// Reads a segment through (bounded by its size), checking every record.
pub fn scan_segment(path: &Path) -> Result<SegmentInfo, JournalError> {
    let wrap = |e: JournalError| JournalError::InSegment {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let bytes = fs::metadata(path).map_err(|e| wrap(e.into()))?.len();
    let mut r = SegmentReader::open(path).map_err(wrap)?;
    let header = r.header().clone();
    let mut info = SegmentInfo {
        path: path.to_path_buf(),
        end_tick: header.start_tick,
        batches: 0,
        hashes_recorded: 0,
        bytes,
        valid_len: r.offset(),
        header_len: r.header_len(),
        torn_tail_at: None,
        clean_end: false,
        hashes: header.start_hash.iter().map(|h| (h.tick, h.clone())).collect(),
        snapshots: Vec::new(),
        header,
    };
    while let Some(rec) = r.next_record().map_err(wrap)? {
        info.clean_end = matches!(rec, Record::End(_));
        match rec {
            Record::Tick(b) => {
                info.batches += 1;
                info.end_tick = info.end_tick.max(b.tick);
            }
            Record::Hash(h) | Record::End(h) => {
                info.hashes_recorded += 1;
                info.end_tick = info.end_tick.max(h.tick);
                info.hashes.insert(h.tick, h);
            }
            Record::Snapshot { tick, sha256 } => info.snapshots.push((tick, sha256)),
        }
        info.valid_len = r.offset();
    }
    info.torn_tail_at = r.torn_tail_at();
    Ok(info)
}

/// Reads a journal's segments in order as one stream of records, checking that each segment
/// continues the one before (same zone and seed, starting where it ended). Crossing into a
/// segment yields its start hash as a [`Record::Hash`], so a replay checks it.
pub struct JournalReader {
    path: PathBuf,
    files: Vec<PathBuf>,
    next_file: usize,
    cur: SegmentReader,
    first: JournalHeader,
    /// The last tick reached (records and segment starts).
    reached: u64,
    /// Whether errors name the segment (a directory journal).
    in_dir: bool,
    /// The first segment's start hash, yielded before its records.
    pending: Option<Record>,
}

impl JournalReader {
    /// Opens the journal at `path` (a directory of segments, or one file) at its first segment.
    pub fn open(path: &Path) -> Result<JournalReader, JournalError> {
        Self::open_at(path, 0)
    }

    /// Opens the journal at `path` at the last segment that starts at or before `tick` (the first
    /// segment if none does). Its start hash comes first, as a [`Record::Hash`].
    pub fn open_at(path: &Path, tick: u64) -> Result<JournalReader, JournalError> {
        let files = journal_files(path)?;
        let in_dir = fs::metadata(path)?.is_dir();
        let starts: Vec<u64> = files
            .iter()
            .map(|f| f.file_name().and_then(|n| n.to_str()).and_then(parse_segment_name).unwrap_or(0))
            .collect();
        let idx = starts.iter().rposition(|&s| s <= tick).unwrap_or(0);
        let cur = Self::open_file(&files[idx], in_dir)?;
        let first = cur.header().clone();
        Ok(JournalReader {
            pending: first.start_hash.clone().map(Record::Hash),
            path: path.to_path_buf(),
            reached: first.start_tick,
            next_file: idx + 1,
            files,
            cur,
            first,
            in_dir,
        })
    }

    fn open_file(path: &Path, in_dir: bool) -> Result<SegmentReader, JournalError> {
        SegmentReader::open(path).map_err(|e| wrap_in(path, in_dir, e))
    }

    /// The header of the first segment read.
    pub fn header(&self) -> &JournalHeader {
        &self.first
    }

    /// The header of the segment being read.
    pub fn segment_header(&self) -> &JournalHeader {
        self.cur.header()
    }

    /// The segment file being read.
    pub fn segment_path(&self) -> &Path {
        &self.files[self.next_file - 1]
    }

    /// Byte offset of the next record in the segment being read.
    pub fn offset(&self) -> u64 {
        self.cur.offset()
    }

    /// Where an incomplete last record of the segment being read starts, if it has one.
    pub fn torn_tail_at(&self) -> Option<u64> {
        self.cur.torn_tail_at()
    }

    /// The next record (crossing segments), `None` at the end of the last segment.
    pub fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        if let Some(r) = self.pending.take() {
            return Ok(Some(r));
        }
        loop {
            let rec = match self.cur.next_record() {
                Ok(r) => r,
                Err(e) => return Err(wrap_in(&self.files[self.next_file - 1], self.in_dir, e)),
            };
            match rec {
                Some(rec) => {
                    if !matches!(rec, Record::Snapshot { .. }) {
                        self.reached = self.reached.max(rec.tick());
                    }
                    return Ok(Some(rec));
                }
                None if self.next_file >= self.files.len() => return Ok(None),
                None => {
                    let here = self.files[self.next_file - 1].clone();
                    let next = self.files[self.next_file].clone();
                    let reader = Self::open_file(&next, self.in_dir)?;
                    let h = reader.header();
                    if !h.same_zone(&self.first) {
                        return Err(JournalError::Chain {
                            path: next,
                            reason: format!(
                                "recorded with another zone file or seed (seed {}) than {} (seed {})",
                                h.seed,
                                here.display(),
                                self.first.seed
                            ),
                        });
                    }
                    if h.start_tick != self.reached {
                        return Err(JournalError::Chain {
                            path: self.path.clone(),
                            reason: format!(
                                "gap: {} ends at tick {}{} but the next segment {} starts at tick {}",
                                here.display(),
                                self.reached,
                                self.cur.torn_tail_at().map(|o| format!(" (torn at byte {o})")).unwrap_or_default(),
                                next.display(),
                                h.start_tick
                            ),
                        });
                    }
                    let start = h.start_hash.clone();
                    self.cur = reader;
                    self.next_file += 1;
                    if let Some(h) = start {
                        return Ok(Some(Record::Hash(h)));
                    }
                }
            }
        }
    }
}

fn wrap_in(path: &Path, in_dir: bool, e: JournalError) -> JournalError {
    if in_dir {
        JournalError::InSegment {
            path: path.to_path_buf(),
            source: Box::new(e),
        }
    } else {
        e
    }
}

// ---------------------------------------------------------------------------------------------
// Retention

/// How much journal to keep beyond what the newest snapshot needs. Both limits may be set; a
/// segment goes when either says so. With neither, everything is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep segments that end within this many ticks of the newest tick.
    pub keep_ticks: Option<u64>,
    /// Keep at most this many bytes of segments.
    pub keep_bytes: Option<u64>,
}

/// One segment as retention sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFacts {
    pub start_tick: u64,
    pub end_tick: u64,
    pub bytes: u64,
}

/// How many of the oldest segments (`segs` sorted by start tick) may be deleted. Only a prefix is
/// ever deleted, so what is kept stays contiguous; and never the segment holding
/// `protected_tick` (the newest verified snapshot's tick) or any after it: with that snapshot,
/// they replay to the end. With no verified snapshot (`None`) nothing is deleted: every segment
/// back to tick 0 is needed.
pub fn plan_retention(segs: &[SegmentFacts], protected_tick: Option<u64>, policy: Retention) -> usize {
    let Some(p) = protected_tick else { return 0 };
    // The segment a replay from the snapshot starts in: the last one starting at or before it.
    let Some(needed_from) = segs.iter().rposition(|s| s.start_tick <= p) else {
        return 0;
    };
    let newest = segs.iter().map(|s| s.end_tick).max().unwrap_or(0);
    let mut total: u64 = segs.iter().map(|s| s.bytes).sum();
    let mut n = 0;
    while n < needed_from {
        let s = &segs[n];
        let too_old = policy.keep_ticks.is_some_and(|k| s.end_tick.saturating_add(k) < newest);
        let too_big = policy.keep_bytes.is_some_and(|k| total > k);
        if !(too_old || too_big) {
            break;
        }
        total -= s.bytes;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_tick_and_parse_back() {
        assert_eq!(segment_name(42), "seg-00000000000000000042.zjnl");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("seg-42.zjnl"), None);
        assert_eq!(parse_segment_name(".tmp-seg-00000000000000000042.zjnl"), None);
        assert!(segment_name(9) < segment_name(10));
    }

    fn segs(bounds: &[(u64, u64)]) -> Vec<SegmentFacts> {
        bounds
            .iter()
            .map(|&(start_tick, end_tick)| SegmentFacts {
                start_tick,
                end_tick,
                bytes: 100,
            })
            .collect()
    }

    #[test]
    fn retention_never_deletes_what_the_newest_snapshot_needs() {
        let s = segs(&[(0, 600), (600, 1200), (1200, 1800), (1800, 2400)]);
        let keep_nothing = Retention {
            keep_ticks: Some(0),
            keep_bytes: Some(0),
        };
        // Snapshot at 1500: replay starts in the segment from 1200; the two before may go.
        assert_eq!(plan_retention(&s, Some(1500), keep_nothing), 2);
        // Snapshot exactly at a segment start: that segment starts the replay.
        assert_eq!(plan_retention(&s, Some(1800), keep_nothing), 3);
        // No verified snapshot: everything back to tick 0 is needed.
        assert_eq!(plan_retention(&s, None, keep_nothing), 0);
        // A snapshot older than every segment: nothing is known to be unneeded.
        assert_eq!(plan_retention(&s[1..], Some(10), keep_nothing), 0);
        // Limits: 1000 ticks keeps segments ending at or after 1400; 250 bytes keeps two.
        let by_ticks = Retention {
            keep_ticks: Some(1000),
            keep_bytes: None,
        };
        assert_eq!(plan_retention(&s, Some(2400), by_ticks), 2);
        let by_bytes = Retention {
            keep_ticks: None,
            keep_bytes: Some(250),
        };
        assert_eq!(plan_retention(&s, Some(2400), by_bytes), 2);
        assert_eq!(plan_retention(&s, Some(2400), Retention::default()), 0);
    }
}
