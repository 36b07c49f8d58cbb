//! The input journal's segment files: the zone file, the seed, every tick's joins, leaves and
//! inputs, and the zone hash at intervals and at the end. A journal is a sequence of segments
//! ([`crate::segments`] names them and reads them in order); with the segments from tick 0, or a
//! snapshot and the segments after it, `zone-replay` reproduces a run bit for bit.
//!
//! This module encodes and decodes one segment. It never decides when a segment starts or ends
//! (the server does) and owns no thread.
//!
//! ## Format (version 2, all fixed-size integers little-endian)
//! ```text
//! file    = magic "ZJNL" | version u16 | header_len u32 | header | crc32(header) u32 | record*
//! header  = seed u64 | hash_interval u32 | zone_digest [32] | zone_name str | zone_toml str
//!         | run_id u64 | start_tick u64 | origin u8 | has_hash u8 | (hash)? | snapshot_sha256 [32]
//! str     = len u32 | utf-8 bytes
//! hash    = tick u64 | zone_hash u64 | n u16 | shard_hash u64*n
//! record  = len u32 | tag u8 | payload (len - 1 bytes) | crc32(tag | payload) u32
//! tag 1   = raw tick batch: tick u64 | n u32 | joins u64*n | n u32 | leaves u64*n
//!                       | n u32 | (player u64 | move_x i32 | move_y i32 | attack u8)*n
//! tag 2   = hash: a `hash`
//! tag 3   = end:  same payload as hash; the run ended cleanly at that tick
//! tag 4   = compact tick batch (below)
//! tag 5   = snapshot note: tick u64 | sha256 [32]: a full snapshot of this tick was stored
//! ```
//! `origin` says why the segment starts where it does: 0 genesis (tick 0, a fresh zone), 1 a full
//! snapshot, 2 the `--journal-segment` interval, 3 a restore. The header's hash is the zone hash at
//! `start_tick` (absent only for genesis); `snapshot_sha256` names the snapshot the segment
//! continues from when it was known when the segment was created (a restore), else zeros (a
//! snapshot note follows once the snapshot is stored).
//!
//! ### Compact tick batches (tag 4)
//! Inputs are delta-coded against the previous batch of the same segment (each segment decodes on
//! its own), with LEB128 varints and zigzag for signed values:
//! ```text
//! payload = tick - previous tick (varint; the segment's start tick before the first batch)
//!         | ids(joins) | ids(leaves) | ids(players whose input stopped)
//!         | n varint | (player delta varint | flags u8 | x zigzag? | y zigzag?)*n
//! ids     = n varint | first id varint | (id - previous id) varint*(n-1)   (ascending)
//! flags   = bit 0 attack | bit 1 move_x follows | bit 2 move_y follows
//! ```
//! The `n` entries are the players whose input is new or changed (move and attack compared with
//! their previous input; an absent component keeps its previous value). A wandering player whose
//! input does not change costs nothing per tick. Batches that are not in canonical order (inputs
//! strictly ascending by player) are written raw (tag 1), which leaves the delta state as it was.
//!
//! Version 1 files (one file per journal, no start tick: tag 1 batches only) are still read, as a
//! genesis segment.
//!
//! A record whose length runs past the end of the file is a torn tail (a crash mid-write): the
//! reader stops before it and reports its offset. Anything else that does not decode is
//! corruption, reported with its byte offset. Nothing here panics on bad bytes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use zone_sim::{PlayerInput, TickBatch, ZoneHash};

pub const MAGIC: &[u8; 4] = b"ZJNL";
/// The version this build writes.
pub const VERSION: u16 = 2;
/// The oldest version this build reads.
pub const VERSION_OLDEST: u16 = 1;
/// Largest record accepted (a tick batch of ~600k inputs); anything longer is corruption.
pub const RECORD_BYTES_MAX: u32 = 16 << 20;
/// Largest header accepted (it holds the zone file).
pub const HEADER_BYTES_MAX: u32 = 16 << 20;

const TAG_TICK: u8 = 1;
const TAG_HASH: u8 = 2;
const TAG_END: u8 = 3;
const TAG_COMPACT: u8 = 4;
const TAG_SNAPSHOT: u8 = 5;

/// Why a segment starts where it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Tick 0 of a fresh zone.
    Genesis,
    /// A full snapshot tick.
    Snapshot,
    /// The `--journal-segment` interval.
    Interval,
    /// A restore (from a snapshot, with or without a journal).
    Restore,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Genesis => "genesis",
            Origin::Snapshot => "snapshot",
            Origin::Interval => "interval",
            Origin::Restore => "restore",
        }
    }
    fn code(self) -> u8 {
        match self {
            Origin::Genesis => 0,
            Origin::Snapshot => 1,
            Origin::Interval => 2,
            Origin::Restore => 3,
        }
    }
    fn from_code(c: u8) -> Option<Origin> {
        Some(match c {
            0 => Origin::Genesis,
            1 => Origin::Snapshot,
            2 => Origin::Interval,
            3 => Origin::Restore,
            _ => return None,
        })
    }
}

/// What a segment starts with: enough to rebuild the zone exactly, and where in the run it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalHeader {
    pub seed: u64,
    /// Ticks between recorded hashes.
    pub hash_interval: u32,
    /// SHA-256 of `zone_toml`.
    pub zone_digest: [u8; 32],
    /// Where the zone file was loaded from, for messages.
    pub zone_name: String,
    /// The zone file itself, so that a journal replays on its own.
    pub zone_toml: String,
    /// Names the run (the timeline) this segment belongs to; the same in all its segments.
    pub run_id: u64,
    /// The tick the zone is at before this segment's first record.
    pub start_tick: u64,
    pub origin: Origin,
    /// The zone hash at `start_tick` (None for genesis and for version 1 files).
    pub start_hash: Option<ZoneHash>,
    /// SHA-256 of the snapshot this segment continues from, when known at creation (else zeros).
    pub snapshot_sha256: [u8; 32],
    /// The format version the file was written in (set by the reader; the writer writes
    /// [`VERSION`]).
    pub version: u16,
}

impl JournalHeader {
    /// A genesis header (tick 0) for a fresh run.
    pub fn genesis(seed: u64, hash_interval: u32, zone_digest: [u8; 32], zone_name: String, zone_toml: String, run_id: u64) -> Self {
        JournalHeader {
            seed,
            hash_interval,
            zone_digest,
            zone_name,
            zone_toml,
            run_id,
            start_tick: 0,
            origin: Origin::Genesis,
            start_hash: None,
            snapshot_sha256: [0; 32],
            version: VERSION,
        }
    }

    /// The header of a segment of the same run starting at `hash.tick`.
    pub fn continued(&self, origin: Origin, hash: ZoneHash, snapshot_sha256: Option<[u8; 32]>) -> Self {
        JournalHeader {
            start_tick: hash.tick,
            origin,
            start_hash: Some(hash),
            snapshot_sha256: snapshot_sha256.unwrap_or([0; 32]),
            version: VERSION,
            ..self.clone()
        }
    }

    /// Same zone file and seed (what makes two segments belong to one zone).
    pub fn same_zone(&self, other: &JournalHeader) -> bool {
        self.zone_digest == other.zone_digest && self.seed == other.seed
    }
}

/// One record after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Tick(TickBatch),
    Hash(ZoneHash),
    End(ZoneHash),
    /// A full snapshot of this tick was stored; its SHA-256 (of the encoded bytes).
    Snapshot {
        tick: u64,
        sha256: [u8; 32],
    },
}

impl Record {
    /// The tick the record is about.
    pub fn tick(&self) -> u64 {
        match self {
            Record::Tick(b) => b.tick,
            Record::Hash(h) | Record::End(h) => h.tick,
            Record::Snapshot { tick, .. } => *tick,
        }
    }
}

/// A journal that cannot be read. Offsets are bytes from the start of the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a zone journal: the file does not start with \"ZJNL\"")]
    BadMagic,
    #[error("journal format version {found} is not supported (this build reads versions {VERSION_OLDEST} to {VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("journal is corrupt at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("journal header is truncated at byte {offset}: the file ends inside it")]
    TruncatedHeader { offset: u64 },
    #[error("journal segment {path}: {source}")]
    InSegment {
        path: PathBuf,
        #[source]
        source: Box<JournalError>,
    },
    #[error("journal {path}: {reason}")]
    Chain { path: PathBuf, reason: String },
}

impl JournalError {
    /// The error without the segment it happened in.
    pub fn root(&self) -> &JournalError {
        match self {
            JournalError::InSegment { source, .. } => source.root(),
            e => e,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s.as_bytes());
}
fn put_var(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}
fn zigzag(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}
fn unzigzag(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}
fn put_hash(b: &mut Vec<u8>, h: &ZoneHash) {
    put_u64(b, h.tick);
    put_u64(b, h.zone);
    put_u16(b, h.shards.len() as u16);
    h.shards.iter().for_each(|&s| put_u64(b, s));
}
fn put_ids(b: &mut Vec<u8>, ids: &[u64]) {
    put_var(b, ids.len() as u64);
    let mut prev = 0;
    for (i, &id) in ids.iter().enumerate() {
        put_var(b, if i == 0 { id } else { id - prev });
        prev = id;
    }
}
fn ascending(ids: impl IntoIterator<Item = u64>) -> bool {
    let mut prev = None;
    for id in ids {
        if prev.is_some_and(|p| p >= id) {
            return false;
        }
        prev = Some(id);
    }
    true
}

/// Encodes a header (magic, version, length, payload, checksum) in the current version.
pub fn encode_header(h: &JournalHeader) -> Vec<u8> {
    let mut payload = Vec::with_capacity(128 + h.zone_toml.len());
    put_u64(&mut payload, h.seed);
    put_u32(&mut payload, h.hash_interval);
    payload.extend_from_slice(&h.zone_digest);
    put_str(&mut payload, &h.zone_name);
    put_str(&mut payload, &h.zone_toml);
    put_u64(&mut payload, h.run_id);
    put_u64(&mut payload, h.start_tick);
    payload.push(h.origin.code());
    match &h.start_hash {
        Some(hash) => {
            payload.push(1);
            put_hash(&mut payload, hash);
        }
        None => payload.push(0),
    }
    payload.extend_from_slice(&h.snapshot_sha256);
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.extend_from_slice(MAGIC);
    put_u16(&mut out, VERSION);
    put_u32(&mut out, payload.len() as u32);
    out.extend_from_slice(&payload);
    put_u32(&mut out, crc32fast::hash(&payload));
    out
}

/// The delta state of one segment: the previous batch's tick and every player's last input.
/// The writer and the reader keep the same state record by record.
#[derive(Clone, Debug, Default)]
pub struct Codec {
    prev_tick: u64,
    /// Inputs of the previous compact batch, ascending by player.
    prev: Vec<PlayerInput>,
}

impl Codec {
    /// The state at the start of a segment that starts at `start_tick`.
    pub fn new(start_tick: u64) -> Codec {
        Codec {
            prev_tick: start_tick,
            prev: Vec::new(),
        }
    }

    /// Appends the encoding of `rec` to `out` (framed: length, tag, payload, checksum).
    pub fn encode(&mut self, rec: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        put_u32(out, 0); // length, patched below
        match rec {
            Record::Tick(b) if b.tick > self.prev_tick && self.compactable(b) => {
                out.push(TAG_COMPACT);
                self.encode_compact(b, out);
            }
            Record::Tick(b) => {
                out.push(TAG_TICK);
                put_u64(out, b.tick);
                put_u32(out, b.joins.len() as u32);
                b.joins.iter().for_each(|&p| put_u64(out, p));
                put_u32(out, b.leaves.len() as u32);
                b.leaves.iter().for_each(|&p| put_u64(out, p));
                put_u32(out, b.inputs.len() as u32);
                for i in &b.inputs {
                    put_u64(out, i.player);
                    out.extend_from_slice(&i.move_x.to_le_bytes());
                    out.extend_from_slice(&i.move_y.to_le_bytes());
                    out.push(u8::from(i.attack));
                }
                self.prev_tick = self.prev_tick.max(b.tick);
            }
            Record::Hash(h) | Record::End(h) => {
                out.push(if matches!(rec, Record::Hash(_)) { TAG_HASH } else { TAG_END });
                put_hash(out, h);
            }
            Record::Snapshot { tick, sha256 } => {
                out.push(TAG_SNAPSHOT);
                put_u64(out, *tick);
                out.extend_from_slice(sha256);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&out[start + 4..]);
        put_u32(out, crc);
    }

    fn compactable(&self, b: &TickBatch) -> bool {
        ascending(b.joins.iter().copied())
            && ascending(b.leaves.iter().copied())
            && ascending(b.inputs.iter().map(|i| i.player))
            && b.inputs.iter().all(|i| i.tick == b.tick)
    }

    fn encode_compact(&mut self, b: &TickBatch, out: &mut Vec<u8>) {
        put_var(out, b.tick - self.prev_tick);
        put_ids(out, &b.joins);
        put_ids(out, &b.leaves);
        // Players in the previous batch without an input now.
        let mut stopped = Vec::new();
        let mut changed: Vec<(u64, u8, Option<i32>, Option<i32>)> = Vec::new();
        let (mut i, mut j) = (0, 0);
        let (prev, cur) = (&self.prev, &b.inputs);
        while i < prev.len() || j < cur.len() {
            match (prev.get(i), cur.get(j)) {
                (Some(p), Some(c)) if p.player == c.player => {
                    if p.move_x != c.move_x || p.move_y != c.move_y || p.attack != c.attack {
                        let x = (p.move_x != c.move_x).then_some(c.move_x);
                        let y = (p.move_y != c.move_y).then_some(c.move_y);
                        changed.push((c.player, u8::from(c.attack), x, y));
                    }
                    i += 1;
                    j += 1;
                }
                (Some(p), c) if c.is_none_or(|c| p.player < c.player) => {
                    stopped.push(p.player);
                    i += 1;
                }
                (_, Some(c)) => {
                    let x = (c.move_x != 0).then_some(c.move_x);
                    let y = (c.move_y != 0).then_some(c.move_y);
                    changed.push((c.player, u8::from(c.attack), x, y));
                    j += 1;
                }
                _ => unreachable!("the loop runs while either list has items"),
            }
        }
        put_ids(out, &stopped);
        put_var(out, changed.len() as u64);
        let mut prev_id = 0;
        for (k, (player, attack, x, y)) in changed.iter().enumerate() {
            put_var(out, if k == 0 { *player } else { player - prev_id });
            prev_id = *player;
            out.push(attack | (u8::from(x.is_some()) << 1) | (u8::from(y.is_some()) << 2));
            if let Some(x) = x {
                put_var(out, zigzag(*x));
            }
            if let Some(y) = y {
                put_var(out, zigzag(*y));
            }
        }
        self.prev_tick = b.tick;
        self.prev.clone_from(&b.inputs);
    }
}

/// Writes one segment. Buffered: call [`JournalWriter::flush`] to bound what a crash can lose.
pub struct JournalWriter {
    out: BufWriter<File>,
    codec: Codec,
    buf: Vec<u8>,
    bytes: u64,
    path: PathBuf,
}

impl JournalWriter {
    /// Creates the segment file at `path` with its header, atomically: the header goes to a
    /// temporary file in the same directory, is fsynced, and the file is renamed into place (and
    /// the directory fsynced), so a crash never leaves a segment with a torn header under its real
    /// name. An existing file at `path` is replaced.
    pub fn create(path: &Path, header: &JournalHeader) -> io::Result<JournalWriter> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = dir.join(format!("{}{name}", crate::segments::TEMP_PREFIX));
        let h = encode_header(header);
        let write = || -> io::Result<File> {
            let mut f = File::create(&temp)?;
            f.write_all(&h)?;
            f.sync_all()?;
            Ok(f)
        };
        let file = match write() {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        std::fs::rename(&temp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(JournalWriter {
            out: BufWriter::with_capacity(1 << 16, file),
            codec: Codec::new(header.start_tick),
            buf: Vec::with_capacity(4096),
            bytes: h.len() as u64,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        self.buf.clear();
        self.codec.encode(rec, &mut self.buf);
        self.out.write_all(&self.buf)?;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Pushes buffered records to the OS (survives a process crash, not a power cut).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and fsyncs (survives a power cut).
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// Bytes written so far, header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A cursor over one record's payload that turns every short read into a `Corrupt` error.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, reason: String) -> JournalError {
        JournalError::Corrupt {
            offset: self.base + self.at as u64,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], JournalError> {
        if self.b.len() - self.at < n {
            return Err(self.corrupt(format!(
                "a field needs {n} bytes but the record has {} left",
                self.b.len() - self.at
            )));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, JournalError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, JournalError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, JournalError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn i32(&mut self) -> Result<i32, JournalError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, JournalError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn var(&mut self) -> Result<u64, JournalError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("a varint is longer than 64 bits".into()))
    }
    fn var_i32(&mut self) -> Result<i32, JournalError> {
        let v = self.var()?;
        let v = u32::try_from(v).map_err(|_| self.corrupt(format!("a zigzag value {v} does not fit 32 bits")))?;
        Ok(unzigzag(v))
    }
    /// A count of items of at least `size` bytes each, checked against what is left.
    fn count(&mut self, size: usize) -> Result<usize, JournalError> {
        let at = self.base + self.at as u64;
        let n = self.u32()? as usize;
        self.check_count(n, size, at)
    }
    fn var_count(&mut self, size: usize) -> Result<usize, JournalError> {
        let at = self.base + self.at as u64;
        let n = usize::try_from(self.var()?).unwrap_or(usize::MAX);
        self.check_count(n, size, at)
    }
    fn check_count(&self, n: usize, size: usize, at: u64) -> Result<usize, JournalError> {
        if n.saturating_mul(size) > self.b.len() - self.at {
            return Err(JournalError::Corrupt {
                offset: at,
                reason: format!("a count of {n} items does not fit in the record"),
            });
        }
        Ok(n)
    }
    fn ids(&mut self) -> Result<Vec<u64>, JournalError> {
        let n = self.var_count(1)?;
        let mut v = Vec::with_capacity(n);
        for k in 0..n {
            let d = self.var()?;
            if k == 0 {
                v.push(d);
            } else {
                let prev: u64 = v[k - 1];
                match prev.checked_add(d).filter(|_| d > 0) {
                    Some(id) => v.push(id),
                    None => return Err(self.corrupt("player ids are not strictly ascending".into())),
                }
            }
        }
        Ok(v)
    }
    fn str(&mut self) -> Result<String, JournalError> {
        let at = self.base + self.at as u64;
        let n = self.count(1)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| JournalError::Corrupt {
            offset: at,
            reason: "a string is not UTF-8".into(),
        })
    }
    fn hash(&mut self) -> Result<ZoneHash, JournalError> {
        let tick = self.u64()?;
        let zone = self.u64()?;
        let n = self.u16()? as usize;
        let shards = (0..n).map(|_| self.u64()).collect::<Result<_, _>>()?;
        Ok(ZoneHash { tick, zone, shards })
    }
    fn finish(&self) -> Result<(), JournalError> {
        if self.at != self.b.len() {
            return Err(self.corrupt(format!("{} unexpected bytes at the end of a record", self.b.len() - self.at)));
        }
        Ok(())
    }
}

impl Codec {
    fn decode(&mut self, version: u16, tag: u8, payload: &[u8], base: u64) -> Result<Record, JournalError> {
        let mut c = Cursor { b: payload, at: 0, base };
        let rec = match tag {
            TAG_TICK => {
                let tick = c.u64()?;
                let n = c.count(8)?;
                let joins = (0..n).map(|_| c.u64()).collect::<Result<_, _>>()?;
                let n = c.count(8)?;
                let leaves = (0..n).map(|_| c.u64()).collect::<Result<_, _>>()?;
                let n = c.count(17)?;
                let mut inputs = Vec::with_capacity(n);
                for _ in 0..n {
                    let player = c.u64()?;
                    let move_x = c.i32()?;
                    let move_y = c.i32()?;
                    let attack = match c.u8()? {
                        0 => false,
                        1 => true,
                        v => {
                            return Err(JournalError::Corrupt {
                                offset: base + c.at as u64 - 1,
                                reason: format!("attack flag is {v}, not 0 or 1"),
                            });
                        }
                    };
                    inputs.push(PlayerInput {
                        player,
                        tick,
                        move_x,
                        move_y,
                        attack,
                    });
                }
                self.prev_tick = self.prev_tick.max(tick);
                Record::Tick(TickBatch {
                    tick,
                    joins,
                    leaves,
                    inputs,
                })
            }
            TAG_COMPACT if version >= 2 => Record::Tick(self.decode_compact(&mut c)?),
            TAG_HASH | TAG_END => {
                let h = c.hash()?;
                if tag == TAG_HASH { Record::Hash(h) } else { Record::End(h) }
            }
            TAG_SNAPSHOT if version >= 2 => {
                let tick = c.u64()?;
                let sha256 = c.take(32)?.try_into().expect("32 bytes");
                Record::Snapshot { tick, sha256 }
            }
            other => {
                return Err(JournalError::Corrupt {
                    offset: base - 1,
                    reason: format!("unknown record tag {other}"),
                });
            }
        };
        c.finish()?;
        Ok(rec)
    }

    fn decode_compact(&mut self, c: &mut Cursor) -> Result<TickBatch, JournalError> {
        let delta = c.var()?;
        let tick = match self.prev_tick.checked_add(delta).filter(|_| delta > 0) {
            Some(t) => t,
            None => return Err(c.corrupt(format!("tick delta {delta} after tick {}", self.prev_tick))),
        };
        let joins = c.ids()?;
        let leaves = c.ids()?;
        let stopped = c.ids()?;
        let n = c.var_count(2)?;
        let mut changed = Vec::with_capacity(n);
        let mut prev_id = 0u64;
        for k in 0..n {
            let d = c.var()?;
            let player = if k == 0 {
                d
            } else {
                match prev_id.checked_add(d).filter(|_| d > 0) {
                    Some(p) => p,
                    None => return Err(c.corrupt("changed inputs are not strictly ascending by player".into())),
                }
            };
            prev_id = player;
            let flags = c.u8()?;
            if flags & !7 != 0 {
                return Err(c.corrupt(format!("input flags {flags:#x} have unknown bits")));
            }
            let x = if flags & 2 != 0 { Some(c.var_i32()?) } else { None };
            let y = if flags & 4 != 0 { Some(c.var_i32()?) } else { None };
            changed.push((player, flags & 1 != 0, x, y));
        }
        // Merge: the previous inputs minus the stopped players, updated or joined by the changed.
        let mut inputs = Vec::with_capacity(self.prev.len() + changed.len());
        let (mut i, mut s, mut k) = (0, 0, 0);
        loop {
            let p = self.prev.get(i);
            let ch = changed.get(k);
            match (p, ch) {
                (None, None) => break,
                (Some(p), ch) if ch.is_none_or(|ch| p.player <= ch.0) => {
                    while stopped.get(s).is_some_and(|&x| x < p.player) {
                        s += 1;
                    }
                    let stops = stopped.get(s) == Some(&p.player);
                    let same = ch.is_some_and(|ch| ch.0 == p.player);
                    if stops && same {
                        return Err(c.corrupt(format!("player {} both stopped and changed", p.player)));
                    }
                    if same {
                        let ch = ch.expect("same");
                        inputs.push(PlayerInput {
                            player: p.player,
                            tick,
                            move_x: ch.2.unwrap_or(p.move_x),
                            move_y: ch.3.unwrap_or(p.move_y),
                            attack: ch.1,
                        });
                        k += 1;
                    } else if !stops {
                        inputs.push(PlayerInput { tick, ..*p });
                    }
                    i += 1;
                }
                (_, Some(ch)) => {
                    inputs.push(PlayerInput {
                        player: ch.0,
                        tick,
                        move_x: ch.2.unwrap_or(0),
                        move_y: ch.3.unwrap_or(0),
                        attack: ch.1,
                    });
                    k += 1;
                }
                _ => unreachable!("the first arm takes a previous input when nothing changed is left"),
            }
        }
        if stopped.iter().any(|x| self.prev.binary_search_by_key(x, |p| p.player).is_err()) {
            return Err(c.corrupt("a stopped player had no previous input".into()));
        }
        self.prev_tick = tick;
        self.prev.clone_from(&inputs);
        Ok(TickBatch {
            tick,
            joins,
            leaves,
            inputs,
        })
    }
}

/// Reads one segment record by record.
pub struct SegmentReader<R: Read = BufReader<File>> {
    input: R,
    header: JournalHeader,
    codec: Codec,
    offset: u64,
    header_len: u64,
    torn_tail_at: Option<u64>,
    done: bool,
    buf: Vec<u8>,
}

impl SegmentReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        SegmentReader::new(BufReader::with_capacity(1 << 16, File::open(path)?))
    }
}

/// Reads up to `buf.len()` bytes; returns how many (short only at end of input).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> SegmentReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, JournalError> {
        let mut fixed = [0u8; 10];
        let got = read_full(&mut input, &mut fixed)?;
        if got < 4 || &fixed[..4] != MAGIC {
            return Err(if got < 4 && MAGIC.starts_with(&fixed[..got]) {
                JournalError::TruncatedHeader { offset: got as u64 }
            } else {
                JournalError::BadMagic
            });
        }
        if got < 10 {
            return Err(JournalError::TruncatedHeader { offset: got as u64 });
        }
        let version = u16::from_le_bytes([fixed[4], fixed[5]]);
        if !(VERSION_OLDEST..=VERSION).contains(&version) {
            return Err(JournalError::UnsupportedVersion { found: version });
        }
        let len = u32::from_le_bytes(fixed[6..10].try_into().expect("4 bytes"));
        if len > HEADER_BYTES_MAX {
            return Err(JournalError::Corrupt {
                offset: 6,
                reason: format!("header length {len} is over the {HEADER_BYTES_MAX}-byte limit"),
            });
        }
        let mut payload = vec![0u8; len as usize + 4];
        let got = read_full(&mut input, &mut payload)?;
        if got < payload.len() {
            return Err(JournalError::TruncatedHeader { offset: 10 + got as u64 });
        }
        let crc = u32::from_le_bytes(payload[len as usize..].try_into().expect("4 bytes"));
        payload.truncate(len as usize);
        if crc32fast::hash(&payload) != crc {
            return Err(JournalError::Corrupt {
                offset: 10,
                reason: "header checksum does not match".into(),
            });
        }
        let mut c = Cursor {
            b: &payload,
            at: 0,
            base: 10,
        };
        let seed = c.u64()?;
        let hash_interval = c.u32()?;
        let zone_digest: [u8; 32] = c.take(32)?.try_into().expect("32 bytes");
        let zone_name = c.str()?;
        let zone_toml = c.str()?;
        let mut header = JournalHeader::genesis(seed, hash_interval, zone_digest, zone_name, zone_toml, 0);
        header.version = version;
        if version >= 2 {
            header.run_id = c.u64()?;
            header.start_tick = c.u64()?;
            let code = c.u8()?;
            header.origin = Origin::from_code(code).ok_or_else(|| c.corrupt(format!("unknown segment origin {code}")))?;
            header.start_hash = match c.u8()? {
                0 => None,
                1 => Some(c.hash()?),
                v => return Err(c.corrupt(format!("hash flag is {v}, not 0 or 1"))),
            };
            header.snapshot_sha256 = c.take(32)?.try_into().expect("32 bytes");
            if header.start_hash.as_ref().is_some_and(|h| h.tick != header.start_tick) {
                return Err(c.corrupt("the start hash is not at the start tick".into()));
            }
        }
        c.finish()?;
        let header_len = 14 + u64::from(len);
        Ok(SegmentReader {
            input,
            codec: Codec::new(header.start_tick),
            header,
            offset: header_len,
            header_len,
            torn_tail_at: None,
            done: false,
            buf: Vec::new(),
        })
    }

    pub fn header(&self) -> &JournalHeader {
        &self.header
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the header (the offset of the first record).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Where an incomplete last record starts, if the file ends inside one.
    pub fn torn_tail_at(&self) -> Option<u64> {
        self.torn_tail_at
    }

    /// Whether everything left in the input is zero bytes (reads it all; bounded by the file).
    fn rest_is_zeros(&mut self) -> Result<bool, JournalError> {
        let mut chunk = [0u8; 8192];
        loop {
            let n = read_full(&mut self.input, &mut chunk)?;
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            if n < chunk.len() {
                return Ok(true);
            }
        }
    }

    /// The next whole record, `None` at the end (or at a torn tail), or the corruption found.
    pub fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        if self.done {
            return Ok(None);
        }
        let start = self.offset;
        let mut len_bytes = [0u8; 4];
        let got = read_full(&mut self.input, &mut len_bytes)?;
        if got == 0 {
            self.done = true;
            return Ok(None);
        }
        if got < 4 {
            self.done = true;
            self.torn_tail_at = Some(start);
            return Ok(None);
        }
        let len = u32::from_le_bytes(len_bytes);
        if len == 0 && self.rest_is_zeros()? {
            // After a power cut a file can end in zeros (the size was updated, the data was not):
            // that is a torn tail, not corruption.
            self.done = true;
            self.torn_tail_at = Some(start);
            return Ok(None);
        }
        if len == 0 || len > RECORD_BYTES_MAX {
            self.done = true;
            return Err(JournalError::Corrupt {
                offset: start,
                reason: format!("record length {len} is outside 1..={RECORD_BYTES_MAX}"),
            });
        }
        self.buf.resize(len as usize + 4, 0);
        let got = read_full(&mut self.input, &mut self.buf)?;
        if got < self.buf.len() {
            self.done = true;
            self.torn_tail_at = Some(start);
            return Ok(None);
        }
        let (body, crc) = self.buf.split_at(len as usize);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            self.done = true;
            return Err(JournalError::Corrupt {
                offset: start,
                reason: "record checksum does not match".into(),
            });
        }
        let rec = self.codec.decode(self.header.version, body[0], &body[1..], start + 5);
        if rec.is_err() {
            self.done = true;
        }
        self.offset = start + 8 + u64::from(len);
        rec.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> JournalHeader {
        JournalHeader::genesis(7, 60, [3; 32], "z.toml".into(), "[zone]".into(), 99)
    }

    fn input(player: u64, tick: u64, x: i32, y: i32, attack: bool) -> PlayerInput {
        PlayerInput {
            player,
            tick,
            move_x: x,
            move_y: y,
            attack,
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Tick(TickBatch {
                tick: 1,
                joins: vec![5, 9],
                leaves: vec![],
                inputs: vec![input(5, 1, -3, 4, true)],
            }),
            Record::Hash(ZoneHash {
                tick: 1,
                zone: 42,
                shards: vec![1, 2, 3],
            }),
            Record::Tick(TickBatch {
                tick: 2,
                joins: vec![],
                leaves: vec![],
                inputs: vec![input(5, 2, -3, 4, false), input(9, 2, 0, -7, false)],
            }),
            // Not canonical: written raw.
            Record::Tick(TickBatch {
                tick: 3,
                joins: vec![],
                leaves: vec![],
                inputs: vec![input(9, 3, 1, 1, false), input(5, 3, 2, 2, false)],
            }),
            Record::Tick(TickBatch {
                tick: 7,
                joins: vec![11],
                leaves: vec![9],
                inputs: vec![input(5, 7, i32::MIN, i32::MAX, true), input(11, 7, 0, 0, false)],
            }),
            Record::Snapshot { tick: 7, sha256: [8; 32] },
            Record::Tick(TickBatch {
                tick: 8,
                joins: vec![],
                leaves: vec![],
                inputs: vec![input(5, 8, i32::MIN, i32::MAX, true), input(11, 8, 0, 0, false)],
            }),
            Record::End(ZoneHash {
                tick: 8,
                zone: 43,
                shards: vec![4],
            }),
        ]
    }

    fn bytes(records: &[Record]) -> Vec<u8> {
        let mut b = encode_header(&header());
        let mut codec = Codec::new(0);
        for r in records {
            codec.encode(r, &mut b);
        }
        b
    }

    fn read_all(b: &[u8]) -> Result<(Vec<Record>, Option<u64>), JournalError> {
        let mut r = SegmentReader::new(b)?;
        let mut v = Vec::new();
        while let Some(rec) = r.next_record()? {
            v.push(rec);
        }
        Ok((v, r.torn_tail_at()))
    }

    #[test]
    fn round_trip() {
        let (got, torn) = read_all(&bytes(&sample())).unwrap();
        assert_eq!(got, sample());
        assert_eq!(torn, None);
        assert_eq!(SegmentReader::new(&bytes(&[])[..]).unwrap().header(), &header());
        let h = header().continued(
            Origin::Restore,
            ZoneHash {
                tick: 600,
                zone: 1,
                shards: vec![2, 3],
            },
            Some([4; 32]),
        );
        assert_eq!(SegmentReader::new(&encode_header(&h)[..]).unwrap().header(), &h);
    }

    #[test]
    fn an_unchanged_input_costs_nothing() {
        let batch = |tick| {
            Record::Tick(TickBatch {
                tick,
                joins: vec![],
                leaves: vec![],
                inputs: (0..500).map(|p| input(1_000_000 + p, tick, 90, -40, false)).collect(),
            })
        };
        let mut codec = Codec::new(0);
        let mut first = Vec::new();
        codec.encode(&batch(1), &mut first);
        let mut next = Vec::new();
        codec.encode(&batch(2), &mut next);
        assert!(first.len() < 500 * 6, "{} bytes for 500 new inputs", first.len());
        assert!(next.len() <= 14, "{} bytes for 500 unchanged inputs", next.len());
    }

    #[test]
    fn every_truncation_is_a_clean_stop_or_a_clear_error() {
        let full = bytes(&sample());
        let header_len = encode_header(&header()).len();
        // Where each whole record ends: a cut there is a clean end, anywhere else a torn tail.
        let mut ends = vec![header_len];
        let mut buf = Vec::new();
        let mut codec = Codec::new(0);
        for r in sample() {
            codec.encode(&r, &mut buf);
            ends.push(header_len + buf.len());
        }
        for cut in 0..full.len() {
            match read_all(&full[..cut]) {
                Ok((recs, torn)) => {
                    assert!(cut >= header_len);
                    let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
                    assert_eq!(recs, sample()[..whole], "cut {cut}: every whole record before the cut is read");
                    let at_boundary = ends.contains(&cut);
                    assert_eq!(torn, (!at_boundary).then(|| ends[whole] as u64), "cut {cut}");
                }
                Err(JournalError::TruncatedHeader { .. }) => assert!(cut < header_len),
                Err(e) => panic!("cut at {cut}: unexpected {e}"),
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_detected_or_harmless() {
        let full = bytes(&sample());
        for at in 0..full.len() {
            let mut b = full.clone();
            b[at] ^= 0x40;
            // Must not panic; must not return the original records unchanged as if nothing happened.
            if let Ok((recs, _)) = read_all(&b) {
                assert_ne!(recs, sample(), "flip at {at} went unnoticed");
            }
        }
    }

    #[test]
    fn a_zero_filled_tail_is_a_torn_tail() {
        let mut b = bytes(&sample());
        let good = b.len() as u64;
        b.extend_from_slice(&[0u8; 4096]);
        let (recs, torn) = read_all(&b).unwrap();
        assert_eq!(recs, sample());
        assert_eq!(torn, Some(good));
        // Zeros followed by data are corruption, not a tail.
        b.push(1);
        assert!(matches!(read_all(&b), Err(JournalError::Corrupt { .. })));
    }

    #[test]
    fn corruption_names_the_offset() {
        let mut b = bytes(&sample());
        let first_record = encode_header(&header()).len();
        b[first_record + 6] ^= 1;
        match read_all(&b) {
            Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, first_record as u64),
            other => panic!("{other:?}"),
        }
        assert!(matches!(read_all(b"NOPE and more bytes"), Err(JournalError::BadMagic)));
    }

    /// A version 1 file (the single-file journal of earlier builds) reads as a genesis segment.
    #[test]
    fn version_1_files_are_read() {
        let mut payload = Vec::new();
        put_u64(&mut payload, 7);
        put_u32(&mut payload, 60);
        payload.extend_from_slice(&[3; 32]);
        put_str(&mut payload, "z.toml");
        put_str(&mut payload, "[zone]");
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        put_u16(&mut b, 1);
        put_u32(&mut b, payload.len() as u32);
        b.extend_from_slice(&payload);
        put_u32(&mut b, crc32fast::hash(&payload));
        // Raw batches only (a codec at a tick past them writes raw).
        let recs = vec![
            Record::Tick(TickBatch {
                tick: 1,
                joins: vec![5],
                leaves: vec![],
                inputs: vec![input(5, 1, 1, 2, false)],
            }),
            Record::Hash(ZoneHash {
                tick: 1,
                zone: 42,
                shards: vec![1],
            }),
        ];
        let mut codec = Codec::new(u64::MAX);
        for r in &recs {
            codec.encode(r, &mut b);
        }
        let mut r = SegmentReader::new(&b[..]).unwrap();
        assert_eq!(r.header().version, 1);
        assert_eq!(r.header().start_tick, 0);
        assert_eq!(r.header().origin, Origin::Genesis);
        assert_eq!(r.next_record().unwrap(), Some(recs[0].clone()));
        assert_eq!(r.next_record().unwrap(), Some(recs[1].clone()));
        assert_eq!(r.next_record().unwrap(), None);
    }
}
