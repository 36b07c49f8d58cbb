//! The input journal: the zone file, the seed, every tick's joins, leaves and inputs, and the zone
//! hash at intervals and at the end. With it, `zone-replay` reproduces a run bit for bit.
//!
//! ## Format (version 1, all integers little-endian)
//! ```text
//! file    = magic "ZJNL" | version u16 | header_len u32 | header | crc32(header) u32 | record*
//! header  = seed u64 | hash_interval u32 | zone_digest [32] | zone_name str | zone_toml str
//! str     = len u32 | utf-8 bytes
//! record  = len u32 | tag u8 | payload (len - 1 bytes) | crc32(tag | payload) u32
//! tag 1   = tick batch: tick u64 | n u32 | joins u64*n | n u32 | leaves u64*n
//!                       | n u32 | (player u64 | move_x i32 | move_y i32 | attack u8)*n
//! tag 2   = hash:  tick u64 | zone_hash u64 | n u16 | shard_hash u64*n
//! tag 3   = end:   same payload as hash; the run ended cleanly at that tick
//! ```
//! A record whose length runs past the end of the file is a torn tail (a crash mid-write): the
//! reader stops before it and reports its offset. Anything else that does not decode is
//! corruption, reported with its byte offset. Nothing here panics on bad bytes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use zone_sim::{PlayerInput, TickBatch, ZoneHash};

pub const MAGIC: &[u8; 4] = b"ZJNL";
pub const VERSION: u16 = 1;
/// Largest record accepted (a tick batch of ~600k inputs); anything longer is corruption.
pub const RECORD_BYTES_MAX: u32 = 16 << 20;
/// Largest header accepted (it holds the zone file).
pub const HEADER_BYTES_MAX: u32 = 16 << 20;

const TAG_TICK: u8 = 1;
const TAG_HASH: u8 = 2;
const TAG_END: u8 = 3;

/// What a journal starts with: enough to rebuild the zone exactly.
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
}

/// One record after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Tick(TickBatch),
    Hash(ZoneHash),
    End(ZoneHash),
}

/// A journal that cannot be read. Offsets are bytes from the start of the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a zone journal: the file does not start with \"ZJNL\"")]
    BadMagic,
    #[error("journal format version {found} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("journal is corrupt at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("journal header is truncated at byte {offset}: the file ends inside it")]
    TruncatedHeader { offset: u64 },
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

fn encode_header(h: &JournalHeader) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64 + h.zone_toml.len());
    put_u64(&mut payload, h.seed);
    put_u32(&mut payload, h.hash_interval);
    payload.extend_from_slice(&h.zone_digest);
    put_str(&mut payload, &h.zone_name);
    put_str(&mut payload, &h.zone_toml);
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.extend_from_slice(MAGIC);
    put_u16(&mut out, VERSION);
    put_u32(&mut out, payload.len() as u32);
    out.extend_from_slice(&payload);
    put_u32(&mut out, crc32fast::hash(&payload));
    out
}

/// Appends the encoding of `rec` to `out`.
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    put_u32(out, 0); // length, patched below
    match rec {
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
        }
        Record::Hash(h) | Record::End(h) => {
            out.push(if matches!(rec, Record::Hash(_)) { TAG_HASH } else { TAG_END });
            put_u64(out, h.tick);
            put_u64(out, h.zone);
            put_u16(out, h.shards.len() as u16);
            h.shards.iter().for_each(|&s| put_u64(out, s));
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    put_u32(out, crc);
}

/// Writes a journal. Buffered: call [`JournalWriter::flush`] to bound what a crash can lose.
pub struct JournalWriter {
    out: BufWriter<File>,
    buf: Vec<u8>,
    bytes: u64,
}

impl JournalWriter {
    /// Creates (or truncates) the file and writes the header.
    pub fn create(path: &Path, header: &JournalHeader) -> io::Result<JournalWriter> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        let h = encode_header(header);
        out.write_all(&h)?;
        Ok(JournalWriter {
            out,
            buf: Vec::with_capacity(4096),
            bytes: h.len() as u64,
        })
    }

    /// Reopens an existing journal to continue it after a restart: checks it records the same
    /// zone file and seed as `header` (the file's own header is kept: its hash interval and the
    /// name the zone was loaded under may differ), cuts it at `valid_len` (dropping a torn last
    /// record) and appends from there.
    pub fn open_append(path: &Path, header: &JournalHeader, valid_len: u64) -> Result<JournalWriter, JournalError> {
        let existing = JournalReader::open(path)?;
        let h = existing.header();
        if h.zone_digest != header.zone_digest || h.seed != header.seed || h.zone_toml != header.zone_toml {
            return Err(JournalError::Corrupt {
                offset: 0,
                reason: "the journal was recorded with another zone file or seed".into(),
            });
        }
        drop(existing);
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(valid_len)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        io::Seek::seek(&mut out, io::SeekFrom::Start(valid_len))?;
        Ok(JournalWriter {
            out,
            buf: Vec::with_capacity(4096),
            bytes: valid_len,
        })
    }

    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        self.buf.clear();
        encode_record(rec, &mut self.buf);
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
    fn take(&mut self, n: usize) -> Result<&'a [u8], JournalError> {
        if self.b.len() - self.at < n {
            return Err(JournalError::Corrupt {
                offset: self.base + self.at as u64,
                reason: format!("a field needs {n} bytes but the record has {} left", self.b.len() - self.at),
            });
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
    /// A count of items of `size` bytes each, checked against what is left.
    fn count(&mut self, size: usize) -> Result<usize, JournalError> {
        let at = self.base + self.at as u64;
        let n = self.u32()? as usize;
        if n.saturating_mul(size) > self.b.len() - self.at {
            return Err(JournalError::Corrupt {
                offset: at,
                reason: format!("a count of {n} items does not fit in the record"),
            });
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, JournalError> {
        let at = self.base + self.at as u64;
        let n = self.count(1)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| JournalError::Corrupt {
            offset: at,
            reason: "a string is not UTF-8".into(),
        })
    }
    fn finish(&self) -> Result<(), JournalError> {
        if self.at != self.b.len() {
            return Err(JournalError::Corrupt {
                offset: self.base + self.at as u64,
                reason: format!("{} unexpected bytes at the end of a record", self.b.len() - self.at),
            });
        }
        Ok(())
    }
}

fn decode_payload(tag: u8, payload: &[u8], base: u64) -> Result<Record, JournalError> {
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
            Record::Tick(TickBatch {
                tick,
                joins,
                leaves,
                inputs,
            })
        }
        TAG_HASH | TAG_END => {
            let tick = c.u64()?;
            let zone = c.u64()?;
            let n = c.u16()? as usize;
            let shards = (0..n).map(|_| c.u64()).collect::<Result<_, _>>()?;
            let h = ZoneHash { tick, zone, shards };
            if tag == TAG_HASH { Record::Hash(h) } else { Record::End(h) }
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

/// Reads a journal record by record.
pub struct JournalReader<R: Read = BufReader<File>> {
    input: R,
    header: JournalHeader,
    offset: u64,
    torn_tail_at: Option<u64>,
    done: bool,
    buf: Vec<u8>,
}

impl JournalReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        JournalReader::new(BufReader::with_capacity(1 << 16, File::open(path)?))
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

impl<R: Read> JournalReader<R> {
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
        if version != VERSION {
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
        c.finish()?;
        let header = JournalHeader {
            seed,
            hash_interval,
            zone_digest,
            zone_name,
            zone_toml,
        };
        Ok(JournalReader {
            input,
            header,
            offset: 14 + u64::from(len),
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
        let rec = decode_payload(body[0], &body[1..], start + 5);
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
        JournalHeader {
            seed: 7,
            hash_interval: 60,
            zone_digest: [3; 32],
            zone_name: "z.toml".into(),
            zone_toml: "[zone]".into(),
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Tick(TickBatch {
                tick: 1,
                joins: vec![5, 9],
                leaves: vec![],
                inputs: vec![PlayerInput {
                    player: 5,
                    tick: 1,
                    move_x: -3,
                    move_y: 4,
                    attack: true,
                }],
            }),
            Record::Hash(ZoneHash {
                tick: 1,
                zone: 42,
                shards: vec![1, 2, 3],
            }),
            Record::End(ZoneHash {
                tick: 2,
                zone: 43,
                shards: vec![4],
            }),
        ]
    }

    fn bytes(records: &[Record]) -> Vec<u8> {
        let mut b = encode_header(&header());
        for r in records {
            encode_record(r, &mut b);
        }
        b
    }

    fn read_all(b: &[u8]) -> Result<(Vec<Record>, Option<u64>), JournalError> {
        let mut r = JournalReader::new(b)?;
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
        assert_eq!(JournalReader::new(&bytes(&[])[..]).unwrap().header(), &header());
    }

    #[test]
    fn every_truncation_is_a_clean_stop_or_a_clear_error() {
        let full = bytes(&sample());
        let header_len = encode_header(&header()).len();
        // Where each whole record ends: a cut there is a clean end, anywhere else a torn tail.
        let mut ends = vec![header_len];
        let mut buf = Vec::new();
        for r in sample() {
            encode_record(&r, &mut buf);
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
}
