//! The snapshot codec: a whole zone's state ([`ZoneState`]) as bytes, either **full** or as a
//! **diff** against the previous full snapshot, and back.
//!
//! This module only turns values into bytes and bytes into values. It never does IO, never reads
//! a clock, never decides when a snapshot is taken (the server does), and never panics on bad
//! bytes: every damaged input is a [`SnapshotError`] naming what is wrong and, where it can, the
//! byte offset.
//!
//! ## Format (version 1, all integers little-endian)
//! ```text
//! snapshot = header | body | crc32(header | body) u32
//! header   = magic "ZSNP" | version u16 | kind u8 (1 full, 2 diff) | reserved u8 (0)
//!          | zone_digest [32] | tick u64 | base_tick u64 | seed u64 | body_len u32
//!          | crc32(header so far) u32                                        (72 bytes)
//! body     = raw_len u32 | lz4 block of the payload (raw_len bytes once decompressed)
//!
//! full payload = n u16 | shard*n
//! shard        = index u16 | rng_state u64 | last_npc_id u64 | spawners | mail | n u32 | object*n
//! diff payload = n u16 | shard_diff*n
//! shard_diff   = index u16 | rng_state u64 | last_npc_id u64 | spawners | mail
//!              | n u32 | removed_id u64*n | n u32 | object*n      (created or changed objects)
//! spawners     = n u32 | (id u32 | n u32 | due u64*n)*n
//! mail         = n u32 | (1 u8 | target u64 | source u64 | amount i32  -- Damage
//!                        | 2 u8 | spawner u32)*n                        -- Died
//! object       = id u64 | kind u16 | pos (x i32 | y i32) | vel (x i32 | y i32) | hp i32 | max i32
//!              | 1 u8 | npc | 2 u8 | player
//! npc          = spawner u32 | home (x i32 | y i32) | mind | rng_state u64 | ready_at u64
//! mind         = 1 u8 | until u64  -- Pause | 2 u8 | to (x i32 | y i32)  -- Goto
//!              | 3 u8 | leg u8     -- Patrol | 4 u8 | player u64          -- Chase
//! player       = player u64 | wish (x i32 | y i32) | attack u8 (0/1) | ready_at u64
//!              | respawn u8 (0 none, 1 some) [| respawn_at u64]
//! ```
//! `base_tick` equals `tick` in a full snapshot. The header has its own checksum so that
//! [`decode_meta`] can trust it without reading the body; the trailing checksum covers
//! everything. Objects inside a shard are sorted by id with no duplicates, as in [`ZoneState`];
//! [`decode`] rejects anything else.
//!
//! A diff always refers to the previous *full* snapshot (not to the previous diff), so recovery
//! is one full plus at most one diff: [`recover`] picks the newest diff that decodes and fits.

use zone_sim::object::{Body, Health, Mind, Npc, Obj, Player};
use zone_sim::rng::DetRng;
use zone_sim::shard::Mail;
use zone_sim::state::SpawnerPending;
use zone_sim::units::Vec2;
use zone_sim::{ObjectRecord, ShardState, ZoneState};

pub const MAGIC: &[u8; 4] = b"ZSNP";
pub const FORMAT_VERSION: u16 = 1;
/// Bytes in the header, its checksum included.
pub const HEADER_BYTES: usize = 72;
/// Bytes in the trailing checksum.
const TRAILER_BYTES: usize = 4;
/// Largest payload accepted, compressed or not: a declared size above this is corruption, and no
/// decoder allocation is ever larger.
pub const PAYLOAD_BYTES_MAX: u32 = 1 << 30;
/// lz4 expands at most ~255× (one literal-length byte per 255 bytes of match); a declared raw
/// size beyond that ratio cannot come from a real compressor.
const LZ4_EXPANSION_MAX: u64 = 256;

const KIND_FULL: u8 = 1;
const KIND_DIFF: u8 = 2;

// Byte offsets of the header fields.
const OFF_VERSION: usize = 4;
const OFF_KIND: usize = 6;
const OFF_RESERVED: usize = 7;
const OFF_BODY_LEN: usize = 64;
const OFF_HEADER_CRC: usize = 68;

/// Whether a snapshot holds a whole state or the changes since a full one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotKind {
    Full,
    Diff,
}

impl SnapshotKind {
    /// `"full"` or `"diff"`: how the stores label it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Full => "full",
            SnapshotKind::Diff => "diff",
        }
    }
}

/// What the header of a snapshot says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub format_version: u16,
    pub kind: SnapshotKind,
    /// SHA-256 of the zone file the state belongs to.
    pub zone_digest: [u8; 32],
    /// The state is the zone at the end of this tick.
    pub tick: u64,
    /// The tick of the full snapshot a diff applies to; `tick` for a full snapshot.
    pub base_tick: u64,
    pub seed: u64,
}

/// One shard's changes between two states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardDiff {
    pub index: u16,
    pub rng_state: u64,
    pub last_npc_id: u64,
    /// Stored whole (small).
    pub spawners: Vec<SpawnerPending>,
    /// Stored whole (small).
    pub mail: Vec<Mail>,
    /// Ids of objects that the base shard has and this one does not, ascending.
    pub removed: Vec<u64>,
    /// Objects that are new in this shard or differ from the base, sorted by id.
    pub upserted: Vec<ObjectRecord>,
}

/// The changes from the state at `base_tick` (a full snapshot) to the state at `tick`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneDiff {
    pub base_tick: u64,
    pub tick: u64,
    pub seed: u64,
    /// One per shard of the new state, in shard order.
    pub shards: Vec<ShardDiff>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotBody {
    Full(ZoneState),
    Diff(ZoneDiff),
}

/// A decoded snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub body: SnapshotBody,
}

/// Bytes that are not a usable snapshot, or a diff that does not fit its base. Offsets are bytes
/// from the start of the snapshot, or from the start of the decompressed payload where the
/// variant says so.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a zone snapshot: it does not start with \"ZSNP\"")]
    BadMagic,
    #[error("snapshot format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("snapshot is truncated at byte {offset}: {needed} bytes were expected")]
    Truncated { offset: u64, needed: u64 },
    #[error("snapshot header checksum does not match")]
    HeaderChecksum,
    #[error("snapshot checksum does not match (header and body, {len} bytes)")]
    Checksum { len: u64 },
    #[error("snapshot has {extra} unexpected bytes after its end at byte {offset}")]
    TrailingBytes { offset: u64, extra: u64 },
    #[error("snapshot is corrupt at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("snapshot payload is corrupt at payload byte {offset}: {reason}")]
    CorruptPayload { offset: u64, reason: String },
    #[error("snapshot body does not decompress: {reason}")]
    Decompress { reason: String },
    #[error("the diff applies to the full snapshot of tick {diff_base_tick}, but the base given is tick {base_tick}")]
    BaseMismatch { diff_base_tick: u64, base_tick: u64 },
    #[error("the diff is for seed {diff_seed}, but the base has seed {base_seed}")]
    SeedMismatch { diff_seed: u64, base_seed: u64 },
    #[error("expected a {expected} snapshot, found a {found} one")]
    WrongKind { expected: &'static str, found: &'static str },
    #[error("snapshot is for another zone file (digest differs)")]
    DigestMismatch,
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_i32(b: &mut Vec<u8>, v: i32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_vec2(b: &mut Vec<u8>, v: Vec2) {
    put_i32(b, v.x);
    put_i32(b, v.y);
}
/// Counts are `u32` on the wire; a zone is bounded far below that (see the sim's limits).
fn put_len(b: &mut Vec<u8>, n: usize) {
    put_u32(b, u32::try_from(n).unwrap_or(u32::MAX));
}

fn put_spawners(b: &mut Vec<u8>, spawners: &[SpawnerPending]) {
    put_len(b, spawners.len());
    for s in spawners {
        put_u32(b, s.id);
        put_len(b, s.due.len());
        s.due.iter().for_each(|&t| put_u64(b, t));
    }
}

fn put_mail(b: &mut Vec<u8>, mail: &[Mail]) {
    put_len(b, mail.len());
    for m in mail {
        match *m {
            Mail::Damage { target, source, amount } => {
                b.push(1);
                put_u64(b, target);
                put_u64(b, source);
                put_i32(b, amount);
            }
            Mail::Died { spawner } => {
                b.push(2);
                put_u32(b, spawner);
            }
        }
    }
}

fn put_object(b: &mut Vec<u8>, o: &ObjectRecord) {
    put_u64(b, o.obj.id);
    put_u16(b, o.obj.kind);
    put_vec2(b, o.pos);
    put_vec2(b, o.vel);
    put_i32(b, o.health.hp);
    put_i32(b, o.health.max);
    match o.body {
        Body::Npc(n) => {
            b.push(1);
            put_u32(b, n.spawner);
            put_vec2(b, n.home);
            match n.mind {
                Mind::Pause { until } => {
                    b.push(1);
                    put_u64(b, until);
                }
                Mind::Goto { to } => {
                    b.push(2);
                    put_vec2(b, to);
                }
                Mind::Patrol { leg } => {
                    b.push(3);
                    b.push(leg);
                }
                Mind::Chase { player } => {
                    b.push(4);
                    put_u64(b, player);
                }
            }
            put_u64(b, n.rng.state);
            put_u64(b, n.ready_at);
        }
        Body::Player(p) => {
            b.push(2);
            put_u64(b, p.player);
            put_vec2(b, p.wish);
            b.push(u8::from(p.attack));
            put_u64(b, p.ready_at);
            match p.respawn_at {
                None => b.push(0),
                Some(t) => {
                    b.push(1);
                    put_u64(b, t);
                }
            }
        }
    }
}

/// Rough bytes per object, to size buffers.
const OBJECT_BYTES_TYPICAL: usize = 72;

fn put_shard_count(b: &mut Vec<u8>, n: usize) {
    put_u16(b, u16::try_from(n).unwrap_or(u16::MAX));
}

fn full_payload(state: &ZoneState) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + state.object_count() * OBJECT_BYTES_TYPICAL);
    put_shard_count(&mut b, state.shards.len());
    for s in &state.shards {
        put_u16(&mut b, s.index);
        put_u64(&mut b, s.rng_state);
        put_u64(&mut b, s.last_npc_id);
        put_spawners(&mut b, &s.spawners);
        put_mail(&mut b, &s.mail);
        put_len(&mut b, s.objects.len());
        s.objects.iter().for_each(|o| put_object(&mut b, o));
    }
    b
}

fn diff_payload(diff: &ZoneDiff) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + diff.shards.iter().map(|s| s.upserted.len()).sum::<usize>() * OBJECT_BYTES_TYPICAL);
    put_shard_count(&mut b, diff.shards.len());
    for s in &diff.shards {
        put_u16(&mut b, s.index);
        put_u64(&mut b, s.rng_state);
        put_u64(&mut b, s.last_npc_id);
        put_spawners(&mut b, &s.spawners);
        put_mail(&mut b, &s.mail);
        put_len(&mut b, s.removed.len());
        s.removed.iter().for_each(|&id| put_u64(&mut b, id));
        put_len(&mut b, s.upserted.len());
        s.upserted.iter().for_each(|o| put_object(&mut b, o));
    }
    b
}

fn assemble(meta: &SnapshotMeta, payload: &[u8]) -> Vec<u8> {
    let body = lz4_flex::compress_prepend_size(payload);
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len() + TRAILER_BYTES);
    out.extend_from_slice(MAGIC);
    put_u16(&mut out, meta.format_version);
    out.push(match meta.kind {
        SnapshotKind::Full => KIND_FULL,
        SnapshotKind::Diff => KIND_DIFF,
    });
    out.push(0);
    out.extend_from_slice(&meta.zone_digest);
    put_u64(&mut out, meta.tick);
    put_u64(&mut out, meta.base_tick);
    put_u64(&mut out, meta.seed);
    put_len(&mut out, body.len());
    let header_crc = crc32fast::hash(&out);
    put_u32(&mut out, header_crc);
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    put_u32(&mut out, crc);
    out
}

/// Whether every shard's objects are sorted by id, as the format requires.
fn is_normalized(state: &ZoneState) -> bool {
    state.shards.iter().all(|s| s.objects.windows(2).all(|w| w[0].obj.id < w[1].obj.id))
}

/// Encodes the whole state. A state straight from `Zone::capture` (objects in storage order) is
/// sorted first, on a copy; call [`ZoneState::normalize`] beforehand to avoid the copy.
pub fn encode_full(state: &ZoneState, zone_digest: [u8; 32]) -> Vec<u8> {
    if !is_normalized(state) {
        // Sort once (no recursion: a state with duplicate ids stays unsorted, and the decoder
        // will refuse it with a clear error rather than the encoder looping).
        let mut sorted = state.clone();
        sorted.normalize();
        return encode_full_sorted(&sorted, zone_digest);
    }
    encode_full_sorted(state, zone_digest)
}

fn encode_full_sorted(state: &ZoneState, zone_digest: [u8; 32]) -> Vec<u8> {
    let meta = SnapshotMeta {
        format_version: FORMAT_VERSION,
        kind: SnapshotKind::Full,
        zone_digest,
        tick: state.tick,
        base_tick: state.tick,
        seed: state.seed,
    };
    assemble(&meta, &full_payload(state))
}

/// The changes from `base` (the state of the previous full snapshot) to `next`.
///
/// Objects are compared by id within each shard (position `i` of `next` against position `i` of
/// `base`); an object that moved to another shard is removed from one and created in the other.
/// Both states are sorted first (on a copy) unless already normalized ([`ZoneState::normalize`]).
pub fn diff(base: &ZoneState, next: &ZoneState) -> ZoneDiff {
    if !is_normalized(base) || !is_normalized(next) {
        let (mut b, mut n) = (base.clone(), next.clone());
        b.normalize();
        n.normalize();
        return diff_sorted(&b, &n);
    }
    diff_sorted(base, next)
}

fn diff_sorted(base: &ZoneState, next: &ZoneState) -> ZoneDiff {
    let shards = next
        .shards
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let old: &[ObjectRecord] = base.shards.get(i).map_or(&[], |b| &b.objects);
            let (mut removed, mut upserted) = (Vec::new(), Vec::new());
            let (mut a, mut b) = (0, 0);
            while a < old.len() || b < n.objects.len() {
                match (old.get(a), n.objects.get(b)) {
                    (Some(o), Some(x)) if o.obj.id == x.obj.id => {
                        if o != x {
                            upserted.push(*x);
                        }
                        a += 1;
                        b += 1;
                    }
                    (Some(o), Some(x)) if o.obj.id < x.obj.id => {
                        removed.push(o.obj.id);
                        a += 1;
                    }
                    (Some(o), None) => {
                        removed.push(o.obj.id);
                        a += 1;
                    }
                    (_, Some(x)) => {
                        upserted.push(*x);
                        b += 1;
                    }
                    (None, None) => break,
                }
            }
            ShardDiff {
                index: n.index,
                rng_state: n.rng_state,
                last_npc_id: n.last_npc_id,
                spawners: n.spawners.clone(),
                mail: n.mail.clone(),
                removed,
                upserted,
            }
        })
        .collect();
    ZoneDiff {
        base_tick: base.tick,
        tick: next.tick,
        seed: next.seed,
        shards,
    }
}

/// Encodes the changes from `base` (the state of the previous full snapshot) to `next`.
pub fn encode_diff(base: &ZoneState, next: &ZoneState, zone_digest: [u8; 32]) -> Vec<u8> {
    encode_zone_diff(&diff(base, next), zone_digest)
}

/// Encodes an already computed diff.
pub fn encode_zone_diff(d: &ZoneDiff, zone_digest: [u8; 32]) -> Vec<u8> {
    let meta = SnapshotMeta {
        format_version: FORMAT_VERSION,
        kind: SnapshotKind::Diff,
        zone_digest,
        tick: d.tick,
        base_tick: d.base_tick,
        seed: d.seed,
    };
    assemble(&meta, &diff_payload(d))
}

/// Rebuilds the state a diff describes from the state of its base full snapshot.
pub fn apply_diff(base: &ZoneState, d: &ZoneDiff) -> Result<ZoneState, SnapshotError> {
    if d.base_tick != base.tick {
        return Err(SnapshotError::BaseMismatch {
            diff_base_tick: d.base_tick,
            base_tick: base.tick,
        });
    }
    if d.seed != base.seed {
        return Err(SnapshotError::SeedMismatch {
            diff_seed: d.seed,
            base_seed: base.seed,
        });
    }
    let shards = d
        .shards
        .iter()
        .enumerate()
        .map(|(i, sd)| {
            let old: &[ObjectRecord] = base.shards.get(i).map_or(&[], |b| &b.objects);
            // Merge three id-sorted lists: base objects, removed ids, upserted objects.
            let mut objects = Vec::with_capacity(old.len() + sd.upserted.len());
            let (mut r, mut u) = (0, 0);
            for o in old {
                let id = o.obj.id;
                while sd.removed.get(r).is_some_and(|&x| x < id) {
                    r += 1;
                }
                while let Some(x) = sd.upserted.get(u).filter(|x| x.obj.id < id) {
                    objects.push(*x);
                    u += 1;
                }
                if sd.removed.get(r) == Some(&id) {
                    continue;
                }
                match sd.upserted.get(u) {
                    Some(x) if x.obj.id == id => {
                        objects.push(*x);
                        u += 1;
                    }
                    _ => objects.push(*o),
                }
            }
            objects.extend_from_slice(&sd.upserted[u..]);
            ShardState {
                index: sd.index,
                rng_state: sd.rng_state,
                last_npc_id: sd.last_npc_id,
                spawners: sd.spawners.clone(),
                mail: sd.mail.clone(),
                objects,
            }
        })
        .collect();
    Ok(ZoneState {
        tick: d.tick,
        seed: d.seed,
        shards,
    })
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads and checks the header (magic, version, kind, header checksum) without touching the
/// body: cheap enough to list many snapshots. It does not prove the body is intact; [`decode`]
/// does.
pub fn decode_meta(bytes: &[u8]) -> Result<SnapshotMeta, SnapshotError> {
    let got = bytes.len().min(MAGIC.len());
    if bytes[..got] != MAGIC[..got] {
        return Err(SnapshotError::BadMagic);
    }
    if bytes.len() < HEADER_BYTES {
        return Err(SnapshotError::Truncated {
            offset: bytes.len() as u64,
            needed: HEADER_BYTES as u64,
        });
    }
    let h = &bytes[..HEADER_BYTES];
    if crc32fast::hash(&h[..OFF_HEADER_CRC]) != le_u32(h, OFF_HEADER_CRC) {
        return Err(SnapshotError::HeaderChecksum);
    }
    let format_version = le_u16(h, OFF_VERSION);
    if format_version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion { found: format_version });
    }
    let kind = match h[OFF_KIND] {
        KIND_FULL => SnapshotKind::Full,
        KIND_DIFF => SnapshotKind::Diff,
        k => {
            return Err(SnapshotError::Corrupt {
                offset: OFF_KIND as u64,
                reason: format!("unknown snapshot kind {k}"),
            });
        }
    };
    if h[OFF_RESERVED] != 0 {
        return Err(SnapshotError::Corrupt {
            offset: OFF_RESERVED as u64,
            reason: format!("reserved byte is {}, not 0", h[OFF_RESERVED]),
        });
    }
    let mut zone_digest = [0u8; 32];
    zone_digest.copy_from_slice(&h[8..40]);
    let tick = le_u64(h, 40);
    let base_tick = le_u64(h, 48);
    let seed = le_u64(h, 56);
    match kind {
        SnapshotKind::Full if base_tick != tick => {
            return Err(SnapshotError::Corrupt {
                offset: 48,
                reason: format!("a full snapshot's base tick {base_tick} is not its tick {tick}"),
            });
        }
        SnapshotKind::Diff if base_tick > tick => {
            return Err(SnapshotError::Corrupt {
                offset: 48,
                reason: format!("a diff's base tick {base_tick} is after its tick {tick}"),
            });
        }
        _ => {}
    }
    Ok(SnapshotMeta {
        format_version,
        kind,
        zone_digest,
        tick,
        base_tick,
        seed,
    })
}

/// Decodes and checks a whole snapshot.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let meta = decode_meta(bytes)?;
    let body_len = le_u32(bytes, OFF_BODY_LEN);
    if body_len > PAYLOAD_BYTES_MAX {
        return Err(SnapshotError::Corrupt {
            offset: OFF_BODY_LEN as u64,
            reason: format!("body length {body_len} is over the {PAYLOAD_BYTES_MAX}-byte limit"),
        });
    }
    let end = HEADER_BYTES + body_len as usize;
    let total = end + TRAILER_BYTES;
    if bytes.len() < total {
        return Err(SnapshotError::Truncated {
            offset: bytes.len() as u64,
            needed: total as u64,
        });
    }
    if bytes.len() > total {
        return Err(SnapshotError::TrailingBytes {
            offset: total as u64,
            extra: (bytes.len() - total) as u64,
        });
    }
    if crc32fast::hash(&bytes[..end]) != le_u32(bytes, end) {
        return Err(SnapshotError::Checksum { len: end as u64 });
    }
    let payload = decompress(&bytes[HEADER_BYTES..end])?;
    let mut c = Cursor { b: &payload, at: 0 };
    let body = match meta.kind {
        SnapshotKind::Full => SnapshotBody::Full(read_full(&mut c, &meta)?),
        SnapshotKind::Diff => SnapshotBody::Diff(read_diff(&mut c, &meta)?),
    };
    if c.at != payload.len() {
        return Err(c.corrupt(c.at, format!("{} unexpected bytes after the payload", payload.len() - c.at)));
    }
    Ok(Snapshot { meta, body })
}

/// Decodes a snapshot that must be full, and returns its state.
pub fn decode_full(bytes: &[u8]) -> Result<(SnapshotMeta, ZoneState), SnapshotError> {
    let s = decode(bytes)?;
    match s.body {
        SnapshotBody::Full(state) => Ok((s.meta, state)),
        SnapshotBody::Diff(_) => Err(SnapshotError::WrongKind {
            expected: "full",
            found: "diff",
        }),
    }
}

fn decompress(body: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    if body.len() < 4 {
        return Err(SnapshotError::Corrupt {
            offset: HEADER_BYTES as u64,
            reason: "body is shorter than its size prefix".into(),
        });
    }
    let raw_len = le_u32(body, 0);
    let bound = (body.len() as u64)
        .saturating_mul(LZ4_EXPANSION_MAX)
        .min(u64::from(PAYLOAD_BYTES_MAX));
    if u64::from(raw_len) > bound {
        return Err(SnapshotError::Corrupt {
            offset: HEADER_BYTES as u64,
            reason: format!("declared payload size {raw_len} is over the {bound}-byte limit for this body"),
        });
    }
    let out = lz4_flex::block::decompress(&body[4..], raw_len as usize).map_err(|e| SnapshotError::Decompress { reason: e.to_string() })?;
    if out.len() != raw_len as usize {
        return Err(SnapshotError::Decompress {
            reason: format!("payload is {} bytes, {raw_len} were declared", out.len()),
        });
    }
    Ok(out)
}

/// A cursor over the decompressed payload; every short read is an error, never a panic.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, offset: usize, reason: String) -> SnapshotError {
        SnapshotError::CorruptPayload {
            offset: offset as u64,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let left = self.b.len() - self.at;
        if left < n {
            return Err(self.corrupt(self.at, format!("a field needs {n} bytes but the payload has {left} left")));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(le_u16(self.take(2)?, 0))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(le_u32(self.take(4)?, 0))
    }
    fn i32(&mut self) -> Result<i32, SnapshotError> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(le_u64(self.take(8)?, 0))
    }
    fn vec2(&mut self) -> Result<Vec2, SnapshotError> {
        Ok(Vec2 {
            x: self.i32()?,
            y: self.i32()?,
        })
    }
    fn bool(&mut self, what: &str) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.corrupt(self.at - 1, format!("{what} is {v}, not 0 or 1"))),
        }
    }
    /// A count of items of at least `min_size` bytes each, checked against what is left, so a
    /// bad count can never make a large allocation.
    fn count(&mut self, min_size: usize) -> Result<usize, SnapshotError> {
        let at = self.at;
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size) > self.b.len() - self.at {
            return Err(self.corrupt(at, format!("a count of {n} items does not fit in the payload")));
        }
        Ok(n)
    }
}

// Smallest encodings, used to bound counts.
const SPAWNER_BYTES_MIN: usize = 8;
const MAIL_BYTES_MIN: usize = 5;
const OBJECT_BYTES_MIN: usize = 8 + 2 + 8 + 8 + 8 + 1 + 8 + 1 + 8 + 8;

fn read_spawners(c: &mut Cursor) -> Result<Vec<SpawnerPending>, SnapshotError> {
    let n = c.count(SPAWNER_BYTES_MIN)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let id = c.u32()?;
        let k = c.count(8)?;
        let due = (0..k).map(|_| c.u64()).collect::<Result<_, _>>()?;
        v.push(SpawnerPending { id, due });
    }
    Ok(v)
}

fn read_mail(c: &mut Cursor) -> Result<Vec<Mail>, SnapshotError> {
    let n = c.count(MAIL_BYTES_MIN)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let at = c.at;
        v.push(match c.u8()? {
            1 => Mail::Damage {
                target: c.u64()?,
                source: c.u64()?,
                amount: c.i32()?,
            },
            2 => Mail::Died { spawner: c.u32()? },
            t => return Err(c.corrupt(at, format!("unknown mail tag {t}"))),
        });
    }
    Ok(v)
}

fn read_object(c: &mut Cursor) -> Result<ObjectRecord, SnapshotError> {
    let obj = Obj {
        id: c.u64()?,
        kind: c.u16()?,
    };
    let pos = c.vec2()?;
    let vel = c.vec2()?;
    let health = Health {
        hp: c.i32()?,
        max: c.i32()?,
    };
    let at = c.at;
    let body = match c.u8()? {
        1 => {
            let spawner = c.u32()?;
            let home = c.vec2()?;
            let mind_at = c.at;
            let mind = match c.u8()? {
                1 => Mind::Pause { until: c.u64()? },
                2 => Mind::Goto { to: c.vec2()? },
                3 => Mind::Patrol { leg: c.u8()? },
                4 => Mind::Chase { player: c.u64()? },
                t => return Err(c.corrupt(mind_at, format!("unknown NPC mind tag {t}"))),
            };
            Body::Npc(Npc {
                spawner,
                home,
                mind,
                rng: DetRng { state: c.u64()? },
                ready_at: c.u64()?,
            })
        }
        2 => {
            let player = c.u64()?;
            let wish = c.vec2()?;
            let attack = c.bool("player attack flag")?;
            let ready_at = c.u64()?;
            let respawn_at = if c.bool("player respawn flag")? { Some(c.u64()?) } else { None };
            Body::Player(Player {
                player,
                wish,
                attack,
                ready_at,
                respawn_at,
            })
        }
        t => return Err(c.corrupt(at, format!("unknown object body tag {t}"))),
    };
    Ok(ObjectRecord {
        obj,
        pos,
        vel,
        health,
        body,
    })
}

/// Reads `n` objects whose ids must be strictly ascending.
fn read_objects(c: &mut Cursor) -> Result<Vec<ObjectRecord>, SnapshotError> {
    let n = c.count(OBJECT_BYTES_MIN)?;
    let mut v: Vec<ObjectRecord> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = c.at;
        let o = read_object(c)?;
        if let Some(prev) = v.last()
            && prev.obj.id >= o.obj.id
        {
            return Err(c.corrupt(at, format!("object id {} follows id {}: ids must ascend", o.obj.id, prev.obj.id)));
        }
        v.push(o);
    }
    Ok(v)
}

/// The part of a shard that full snapshots and diffs both store whole.
struct ShardHead {
    index: u16,
    rng_state: u64,
    last_npc_id: u64,
    spawners: Vec<SpawnerPending>,
    mail: Vec<Mail>,
}

fn read_shard_head(c: &mut Cursor) -> Result<ShardHead, SnapshotError> {
    Ok(ShardHead {
        index: c.u16()?,
        rng_state: c.u64()?,
        last_npc_id: c.u64()?,
        spawners: read_spawners(c)?,
        mail: read_mail(c)?,
    })
}

fn read_full(c: &mut Cursor, meta: &SnapshotMeta) -> Result<ZoneState, SnapshotError> {
    let n = c.u16()? as usize;
    let mut shards = Vec::with_capacity(n.min(c.b.len()));
    for _ in 0..n {
        let ShardHead {
            index,
            rng_state,
            last_npc_id,
            spawners,
            mail,
        } = read_shard_head(c)?;
        let objects = read_objects(c)?;
        shards.push(ShardState {
            index,
            rng_state,
            last_npc_id,
            spawners,
            mail,
            objects,
        });
    }
    Ok(ZoneState {
        tick: meta.tick,
        seed: meta.seed,
        shards,
    })
}

fn read_diff(c: &mut Cursor, meta: &SnapshotMeta) -> Result<ZoneDiff, SnapshotError> {
    let n = c.u16()? as usize;
    let mut shards = Vec::with_capacity(n.min(c.b.len()));
    for _ in 0..n {
        let ShardHead {
            index,
            rng_state,
            last_npc_id,
            spawners,
            mail,
        } = read_shard_head(c)?;
        let k = c.count(8)?;
        let mut removed: Vec<u64> = Vec::with_capacity(k);
        for _ in 0..k {
            let at = c.at;
            let id = c.u64()?;
            if removed.last().is_some_and(|&p| p >= id) {
                return Err(c.corrupt(at, format!("removed id {id} is out of order")));
            }
            removed.push(id);
        }
        let upserted = read_objects(c)?;
        shards.push(ShardDiff {
            index,
            rng_state,
            last_npc_id,
            spawners,
            mail,
            removed,
            upserted,
        });
    }
    Ok(ZoneDiff {
        base_tick: meta.base_tick,
        tick: meta.tick,
        seed: meta.seed,
        shards,
    })
}

// ---------------------------------------------------------------------------------------------
// Recovery

/// What [`recover`] rebuilt, and what it had to pass over.
#[derive(Debug)]
pub struct Recovered {
    pub state: ZoneState,
    /// The full snapshot's header.
    pub full: SnapshotMeta,
    /// The header of the diff applied, if any.
    pub diff: Option<SnapshotMeta>,
    /// Newer diffs passed over because they are damaged or do not fit this full snapshot, newest
    /// first, by position in the `diffs` given, with the reason. Diffs older than the one applied
    /// are not looked at.
    pub skipped: Vec<(usize, SnapshotError)>,
}

/// Rebuilds the newest state from a full snapshot and the diffs taken after it (oldest first, as
/// [`crate::store::SnapshotStore::latest_chain`] returns them). Each diff refers to the full, so
/// only the newest one that decodes, matches the zone and applies is used; damaged newer ones are
/// reported in [`Recovered::skipped`] by their position in `diffs`. Fails only if the full
/// snapshot itself is unusable.
pub fn recover(full: &[u8], diffs: &[Vec<u8>], zone_digest: &[u8; 32]) -> Result<Recovered, SnapshotError> {
    let (full_meta, base) = decode_full(full)?;
    if &full_meta.zone_digest != zone_digest {
        return Err(SnapshotError::DigestMismatch);
    }
    let mut skipped = Vec::new();
    for (i, bytes) in diffs.iter().enumerate().rev() {
        let attempt = decode(bytes).and_then(|s| {
            if &s.meta.zone_digest != zone_digest {
                return Err(SnapshotError::DigestMismatch);
            }
            match s.body {
                SnapshotBody::Diff(d) => apply_diff(&base, &d).map(|state| (s.meta, state)),
                SnapshotBody::Full(_) => Err(SnapshotError::WrongKind {
                    expected: "diff",
                    found: "full",
                }),
            }
        });
        match attempt {
            Ok((meta, state)) => {
                return Ok(Recovered {
                    state,
                    full: full_meta,
                    diff: Some(meta),
                    skipped,
                });
            }
            Err(e) => skipped.push((i, e)),
        }
    }
    Ok(Recovered {
        state: base,
        full: full_meta,
        diff: None,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npc(id: u64, mind: Mind) -> ObjectRecord {
        ObjectRecord {
            obj: Obj { id, kind: 2 },
            pos: Vec2 { x: -5, y: 7 },
            vel: Vec2 { x: 1, y: -1 },
            health: Health { hp: 3, max: 10 },
            body: Body::Npc(Npc {
                spawner: 4,
                home: Vec2 { x: 9, y: 9 },
                mind,
                rng: DetRng { state: 0xdead_beef },
                ready_at: 77,
            }),
        }
    }

    fn player(p: u64, respawn_at: Option<u64>) -> ObjectRecord {
        ObjectRecord {
            obj: Obj {
                id: zone_sim::object::player_object_id(p),
                kind: 0,
            },
            pos: Vec2 { x: 100, y: 200 },
            vel: Vec2::default(),
            health: Health { hp: 0, max: 100 },
            body: Body::Player(Player {
                player: p,
                wish: Vec2 { x: 3, y: 4 },
                attack: true,
                ready_at: 12,
                respawn_at,
            }),
        }
    }

    fn state(tick: u64) -> ZoneState {
        ZoneState {
            tick,
            seed: 99,
            shards: vec![
                ShardState {
                    index: 0,
                    rng_state: 1,
                    last_npc_id: 5,
                    spawners: vec![SpawnerPending { id: 3, due: vec![10, 20] }],
                    mail: vec![
                        Mail::Damage {
                            target: 1,
                            source: 2,
                            amount: -3,
                        },
                        Mail::Died { spawner: 7 },
                    ],
                    objects: vec![
                        npc(1, Mind::Pause { until: 5 }),
                        npc(2, Mind::Goto { to: Vec2 { x: 1, y: 2 } }),
                        player(1, Some(40)),
                    ],
                },
                ShardState {
                    index: 1,
                    rng_state: 2,
                    last_npc_id: 0,
                    spawners: vec![],
                    mail: vec![],
                    objects: vec![npc(3, Mind::Patrol { leg: 2 }), npc(4, Mind::Chase { player: 1 }), player(2, None)],
                },
            ],
        }
    }

    /// Re-wraps a modified payload with a valid header and checksums, to reach the field checks
    /// behind the checksum.
    fn rewrap(kind: SnapshotKind, tick: u64, base_tick: u64, payload: &[u8]) -> Vec<u8> {
        let meta = SnapshotMeta {
            format_version: FORMAT_VERSION,
            kind,
            zone_digest: [1; 32],
            tick,
            base_tick,
            seed: 99,
        };
        assemble(&meta, payload)
    }

    #[test]
    fn full_and_diff_round_trip() {
        let s = state(10);
        let b = encode_full(&s, [1; 32]);
        let snap = decode(&b).unwrap();
        assert_eq!(snap.body, SnapshotBody::Full(s.clone()));
        assert_eq!(snap.meta, decode_meta(&b).unwrap());
        assert_eq!(snap.meta.base_tick, 10);

        let mut next = state(20);
        next.shards[0].objects.remove(1);
        next.shards[1].objects[0].pos.x += 1;
        next.shards[1].objects.insert(0, npc(2, Mind::Pause { until: 1 })); // migrated from shard 0
        next.shards[0].mail.clear();
        let d = encode_diff(&s, &next, [1; 32]);
        let SnapshotBody::Diff(zd) = decode(&d).unwrap().body else {
            panic!("not a diff")
        };
        assert_eq!(zd.shards[0].removed, vec![2]);
        assert_eq!(zd.shards[1].upserted.len(), 2);
        assert_eq!(apply_diff(&s, &zd).unwrap(), next);
        assert!(matches!(
            apply_diff(&next, &zd),
            Err(SnapshotError::BaseMismatch {
                diff_base_tick: 10,
                base_tick: 20
            })
        ));
    }

    #[test]
    fn header_damage_is_named() {
        let b = encode_full(&state(1), [1; 32]);
        assert_eq!(decode(b"NOPE"), Err(SnapshotError::BadMagic));
        assert_eq!(
            decode(&b[..3]),
            Err(SnapshotError::Truncated {
                offset: 3,
                needed: HEADER_BYTES as u64
            })
        );
        let mut v = b.clone();
        v[OFF_VERSION] = 9;
        assert_eq!(decode(&v), Err(SnapshotError::HeaderChecksum));
        // A future version with a valid header checksum is reported as such.
        let crc = crc32fast::hash(&v[..OFF_HEADER_CRC]);
        v[OFF_HEADER_CRC..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&v), Err(SnapshotError::UnsupportedVersion { found: 9 }));
        let mut t = b.clone();
        t.push(0);
        assert!(matches!(decode(&t), Err(SnapshotError::TrailingBytes { extra: 1, .. })));
        let mut c = b.clone();
        let mid = HEADER_BYTES + 3;
        c[mid] ^= 1;
        assert!(matches!(decode(&c), Err(SnapshotError::Checksum { .. })));
    }

    #[test]
    fn absurd_declared_sizes_are_refused_before_allocating() {
        // Body length over the limit.
        let mut b = encode_full(&state(1), [1; 32]);
        b[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_le_bytes());
        let crc = crc32fast::hash(&b[..OFF_HEADER_CRC]);
        b[OFF_HEADER_CRC..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&b), Err(SnapshotError::Corrupt { offset, .. }) if offset == OFF_BODY_LEN as u64));
        // A raw size of 4 GiB declared inside a valid, checksummed body.
        let mut body = lz4_flex::compress_prepend_size(b"tiny");
        body[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decompress(&body), Err(SnapshotError::Corrupt { .. })));
    }

    #[test]
    fn damaged_payload_behind_a_valid_checksum_is_an_error_or_a_valid_state() {
        let s = state(3);
        let payload = full_payload(&s);
        for cut in 0..payload.len() {
            let b = rewrap(SnapshotKind::Full, 3, 3, &payload[..cut]);
            assert!(matches!(decode(&b), Err(SnapshotError::CorruptPayload { .. })), "cut {cut}");
        }
        for at in 0..payload.len() {
            for bit in [0x01u8, 0x80] {
                let mut p = payload.clone();
                p[at] ^= bit;
                // Must not panic; what decodes is well formed (ids ascending).
                if let Ok(Snapshot {
                    body: SnapshotBody::Full(got),
                    ..
                }) = decode(&rewrap(SnapshotKind::Full, 3, 3, &p))
                {
                    for sh in &got.shards {
                        assert!(sh.objects.windows(2).all(|w| w[0].obj.id < w[1].obj.id));
                    }
                }
            }
        }
        let d = diff_payload(&diff(&state(3), &ZoneState { tick: 4, ..state(3) }));
        for cut in 0..d.len() {
            assert!(decode(&rewrap(SnapshotKind::Diff, 4, 3, &d[..cut])).is_err(), "diff cut {cut}");
        }
        // A huge count is refused without allocating.
        let mut p = vec![1, 0, 0, 0];
        p.extend_from_slice(&[0; 16]);
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&rewrap(SnapshotKind::Full, 3, 3, &p)),
            Err(SnapshotError::CorruptPayload { offset: 20, .. })
        ));
    }

    #[test]
    fn recover_uses_the_newest_good_diff() {
        let s = state(10);
        let digest = [1; 32];
        let full = encode_full(&s, digest);
        let mut s20 = state(20);
        s20.shards[0].rng_state = 42;
        let mut s30 = state(30);
        s30.shards[1].objects.clear();
        let d20 = encode_diff(&s, &s20, digest);
        let mut d30 = encode_diff(&s, &s30, digest);
        let r = recover(&full, &[d20.clone(), d30.clone()], &digest).unwrap();
        assert_eq!(r.state, s30);
        assert!(r.skipped.is_empty());
        let last = d30.len() - 1;
        d30[last] ^= 1;
        let r = recover(&full, &[d20.clone(), d30], &digest).unwrap();
        assert_eq!(r.state, s20);
        assert_eq!(r.diff.map(|m| m.tick), Some(20));
        assert!(matches!(r.skipped.as_slice(), [(1, SnapshotError::Checksum { .. })]));
        let r = recover(&full, &[], &digest).unwrap();
        assert_eq!(r.state, s);
        assert_eq!(recover(&full, &[], &[2; 32]).err(), Some(SnapshotError::DigestMismatch));
        assert_eq!(
            recover(&d20, &[], &digest).err(),
            Some(SnapshotError::WrongKind {
                expected: "full",
                found: "diff"
            })
        );
    }
}
