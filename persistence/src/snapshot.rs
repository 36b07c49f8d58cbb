//! The snapshot codec: a whole zone's state ([`ZoneState`]) as bytes, either **full** or as a
//! **diff** against the previous full snapshot, and back.
//!
//! This module only turns values into bytes and bytes into values. It never does IO, never reads
//! a clock, never decides when a snapshot is taken (the server does), and never panics on bad
//! bytes: every damaged input is a [`SnapshotError`] naming what is wrong and, where it can, the
//! byte offset.
//!
//! ## Format (version 2, all integers little-endian unless marked varint)
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
//!              | n u32 | ids(removed)                     objects the base shard has and this one not
//!              | n u32 | object*n                         objects the base shard does not have
//!              | n u32 | patch*n                          objects both have that differ
//! ids          = first id varint | (id - previous id - 1) varint ...  (strictly ascending)
//! patch        = id (as in ids) | fields u8 | the fields set, in bit order:
//!                  0x01 kind u16 | 0x02 pos - base pos (zigzag varint x, y; wrapping)
//!                | 0x04 vel (zigzag varint x, y) | 0x08 hp, max (zigzag varint)
//!                | 0x10 body (whole, as in object) | 0x20 mind | 0x40 rng steps varint
//!                | 0x80 ready_at - base ready_at (zigzag varint of the wrapping difference)
//! mind (patch) = 1 u8 | until - tick (zigzag varint)        -- Pause (tick: the diff's tick)
//!              | 2 u8 | to - home (zigzag varint x, y)      -- Goto
//!              | 3 u8 | leg u8 | 4 u8 | player varint       -- Patrol, Chase
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
//!
//! **Field-level diffs.** An object the base also has is written as an [`ObjectPatch`]: only the
//! fields that differ, each small where it can be. A moving NPC's position is written as its
//! distance from the base position (a few bytes, not 8), a walk target relative to the NPC's home,
//! a pause end relative to the diff's tick, and its generator as the number of draws since the
//! base: a SplitMix64 state only ever advances by a fixed odd constant, so
//! `(new - base) × constant⁻¹` is the draw count, exact for any two states (wrapping arithmetic
//! makes every one of these transforms a bijection, so a diff always rebuilds the state bit for
//! bit). Version 1 wrote every changed object whole; this build still reads version 1 snapshots.

use zone_sim::object::{Body, Health, Mind, Npc, Obj, Player};
use zone_sim::rng::DetRng;
use zone_sim::shard::Mail;
use zone_sim::state::SpawnerPending;
use zone_sim::units::Vec2;
use zone_sim::{ObjectRecord, ShardState, ZoneState};

pub const MAGIC: &[u8; 4] = b"ZSNP";
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this build still reads (version 1 diffs hold whole objects only).
pub const FORMAT_VERSION_MIN: u16 = 1;
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
    /// Objects written whole, sorted by id: new in this shard (or, in a version 1 diff, any that
    /// differ from the base).
    pub upserted: Vec<ObjectRecord>,
    /// Objects the base shard also has that differ from it, field by field, sorted by id.
    pub changed: Vec<ObjectPatch>,
}

/// The fields of one object that differ from its base version (same id, same shard). `None`
/// means "as in the base". Values are kept in the form they are encoded in, relative to the base
/// where that makes them small; [`ObjectPatch::between`] and [`ObjectPatch::apply`] convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectPatch {
    pub id: u64,
    pub kind: Option<u16>,
    /// New position minus base position (wrapping).
    pub pos_delta: Option<Vec2>,
    pub vel: Option<Vec2>,
    pub health: Option<Health>,
    /// The whole body, when the NPC-only fields below cannot say the change: a player, a change of
    /// body variant, or an NPC whose spawner or home changed. The NPC fields are then `None`.
    pub body: Option<Body>,
    pub mind: Option<MindPatch>,
    /// Draws of the NPC's generator since the base: `(new - base) × RNG_GAMMA⁻¹` (wrapping).
    pub rng_steps: Option<u64>,
    /// New `ready_at` minus the base's (wrapping).
    pub ready_at_delta: Option<u64>,
}

/// An NPC's new [`Mind`], relative to what the diff knows without the base's mind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MindPatch {
    /// `until - tick` (wrapping), `tick` being the diff's tick.
    Pause {
        until_from_tick: u64,
    },
    /// `to - home` (wrapping), `home` being the NPC's home.
    Goto {
        to_from_home: Vec2,
    },
    Patrol {
        leg: u8,
    },
    Chase {
        player: u64,
    },
}

/// The increment of [`zone_sim::rng::DetRng`] per draw (SplitMix64's gamma).
const RNG_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// Its inverse modulo 2^64 (computed at compile time by Newton's iteration).
const RNG_GAMMA_INV: u64 = {
    let mut x: u64 = RNG_GAMMA; // correct to 3 bits for an odd number
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(RNG_GAMMA.wrapping_mul(x)));
        i += 1;
    }
    x
};

const F_KIND: u8 = 0x01;
const F_POS: u8 = 0x02;
const F_VEL: u8 = 0x04;
const F_HEALTH: u8 = 0x08;
const F_BODY: u8 = 0x10;
const F_MIND: u8 = 0x20;
const F_RNG: u8 = 0x40;
const F_READY: u8 = 0x80;

fn sub2(a: Vec2, b: Vec2) -> Vec2 {
    Vec2 {
        x: a.x.wrapping_sub(b.x),
        y: a.y.wrapping_sub(b.y),
    }
}
fn add2(a: Vec2, b: Vec2) -> Vec2 {
    Vec2 {
        x: a.x.wrapping_add(b.x),
        y: a.y.wrapping_add(b.y),
    }
}

impl ObjectPatch {
    /// The changes from `base` to `new` (same id), or `None` if they are equal. `tick` is the
    /// tick of the state `new` belongs to.
    pub fn between(base: &ObjectRecord, new: &ObjectRecord, tick: u64) -> Option<ObjectPatch> {
        if base == new {
            return None;
        }
        let some_if = |changed: bool| changed.then_some(());
        let mut p = ObjectPatch {
            id: new.obj.id,
            kind: some_if(base.obj.kind != new.obj.kind).map(|_| new.obj.kind),
            pos_delta: some_if(base.pos != new.pos).map(|_| sub2(new.pos, base.pos)),
            vel: some_if(base.vel != new.vel).map(|_| new.vel),
            health: some_if(base.health != new.health).map(|_| new.health),
            body: None,
            mind: None,
            rng_steps: None,
            ready_at_delta: None,
        };
        match (base.body, new.body) {
            (Body::Npc(b), Body::Npc(n)) if b.spawner == n.spawner && b.home == n.home => {
                if b.mind != n.mind {
                    p.mind = Some(match n.mind {
                        Mind::Pause { until } => MindPatch::Pause {
                            until_from_tick: until.wrapping_sub(tick),
                        },
                        Mind::Goto { to } => MindPatch::Goto {
                            to_from_home: sub2(to, n.home),
                        },
                        Mind::Patrol { leg } => MindPatch::Patrol { leg },
                        Mind::Chase { player } => MindPatch::Chase { player },
                    });
                }
                if b.rng != n.rng {
                    p.rng_steps = Some(n.rng.state.wrapping_sub(b.rng.state).wrapping_mul(RNG_GAMMA_INV));
                }
                if b.ready_at != n.ready_at {
                    p.ready_at_delta = Some(n.ready_at.wrapping_sub(b.ready_at));
                }
            }
            (b, n) if b != n => p.body = Some(n),
            _ => {}
        }
        Some(p)
    }

    /// The object this patch makes of `base` (which must have the patch's id). `tick` is the
    /// diff's tick. Fails (naming why) if the patch cannot apply to that base.
    pub fn apply(&self, base: &ObjectRecord, tick: u64) -> Result<ObjectRecord, &'static str> {
        if base.obj.id != self.id {
            return Err("the patch is for another object id");
        }
        let mut o = *base;
        if let Some(k) = self.kind {
            o.obj.kind = k;
        }
        if let Some(d) = self.pos_delta {
            o.pos = add2(o.pos, d);
        }
        if let Some(v) = self.vel {
            o.vel = v;
        }
        if let Some(h) = self.health {
            o.health = h;
        }
        if let Some(b) = self.body {
            o.body = b;
        }
        if self.mind.is_some() || self.rng_steps.is_some() || self.ready_at_delta.is_some() {
            let Body::Npc(n) = &mut o.body else {
                return Err("NPC fields are patched on an object that is not an NPC");
            };
            if let Some(m) = self.mind {
                n.mind = match m {
                    MindPatch::Pause { until_from_tick } => Mind::Pause {
                        until: tick.wrapping_add(until_from_tick),
                    },
                    MindPatch::Goto { to_from_home } => Mind::Goto {
                        to: add2(n.home, to_from_home),
                    },
                    MindPatch::Patrol { leg } => Mind::Patrol { leg },
                    MindPatch::Chase { player } => Mind::Chase { player },
                };
            }
            if let Some(k) = self.rng_steps {
                n.rng.state = n.rng.state.wrapping_add(k.wrapping_mul(RNG_GAMMA));
            }
            if let Some(d) = self.ready_at_delta {
                n.ready_at = n.ready_at.wrapping_add(d);
            }
        }
        Ok(o)
    }

    fn fields(&self) -> u8 {
        let mut f = 0;
        let bits = [
            (self.kind.is_some(), F_KIND),
            (self.pos_delta.is_some(), F_POS),
            (self.vel.is_some(), F_VEL),
            (self.health.is_some(), F_HEALTH),
            (self.body.is_some(), F_BODY),
            (self.mind.is_some(), F_MIND),
            (self.rng_steps.is_some(), F_RNG),
            (self.ready_at_delta.is_some(), F_READY),
        ];
        for (set, bit) in bits {
            if set {
                f |= bit;
            }
        }
        f
    }
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
    #[error("snapshot format version {found} is not supported (this build reads versions {FORMAT_VERSION_MIN} to {FORMAT_VERSION})")]
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
    #[error("the diff does not fit its base: object {id} in shard {shard}: {reason}")]
    DiffDoesNotFit { shard: usize, id: u64, reason: &'static str },
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
fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}
fn zigzag32(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}
fn unzigzag32(v: u32) -> i32 {
    (v >> 1) as i32 ^ -((v & 1) as i32)
}
fn zigzag64(v: u64) -> u64 {
    let v = v as i64;
    ((v << 1) ^ (v >> 63)) as u64
}
fn unzigzag64(v: u64) -> u64 {
    ((v >> 1) as i64 ^ -((v & 1) as i64)) as u64
}
fn put_vec2_small(b: &mut Vec<u8>, v: Vec2) {
    put_varint(b, zigzag32(v.x));
    put_varint(b, zigzag32(v.y));
}
/// Strictly ascending ids: the first whole, then each one's distance from the one before, less 1.
fn put_ids(b: &mut Vec<u8>, ids: impl Iterator<Item = u64>) {
    let mut prev: Option<u64> = None;
    for id in ids {
        put_varint(b, prev.map_or(id, |p| id.wrapping_sub(p).wrapping_sub(1)));
        prev = Some(id);
    }
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
    put_body(b, &o.body);
}

fn put_body(b: &mut Vec<u8>, body: &Body) {
    match *body {
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

fn put_patch(b: &mut Vec<u8>, p: &ObjectPatch) {
    let f = p.fields();
    b.push(f);
    if let Some(k) = p.kind {
        put_u16(b, k);
    }
    if let Some(d) = p.pos_delta {
        put_vec2_small(b, d);
    }
    if let Some(v) = p.vel {
        put_vec2_small(b, v);
    }
    if let Some(h) = p.health {
        put_varint(b, zigzag32(h.hp));
        put_varint(b, zigzag32(h.max));
    }
    if let Some(body) = &p.body {
        put_body(b, body);
    }
    if let Some(m) = p.mind {
        match m {
            MindPatch::Pause { until_from_tick } => {
                b.push(1);
                put_varint(b, zigzag64(until_from_tick));
            }
            MindPatch::Goto { to_from_home } => {
                b.push(2);
                put_vec2_small(b, to_from_home);
            }
            MindPatch::Patrol { leg } => {
                b.push(3);
                b.push(leg);
            }
            MindPatch::Chase { player } => {
                b.push(4);
                put_varint(b, player);
            }
        }
    }
    if let Some(k) = p.rng_steps {
        put_varint(b, k);
    }
    if let Some(d) = p.ready_at_delta {
        put_varint(b, zigzag64(d));
    }
}

/// Rough bytes per object, to size buffers.
const OBJECT_BYTES_TYPICAL: usize = 72;
/// Rough bytes per changed object in a diff, to size buffers.
const PATCH_BYTES_TYPICAL: usize = 16;

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
    let mut b = Vec::with_capacity(
        16 + diff.shards.iter().map(|s| s.upserted.len()).sum::<usize>() * OBJECT_BYTES_TYPICAL
            + diff.shards.iter().map(|s| s.changed.len()).sum::<usize>() * PATCH_BYTES_TYPICAL,
    );
    put_shard_count(&mut b, diff.shards.len());
    for s in &diff.shards {
        put_u16(&mut b, s.index);
        put_u64(&mut b, s.rng_state);
        put_u64(&mut b, s.last_npc_id);
        put_spawners(&mut b, &s.spawners);
        put_mail(&mut b, &s.mail);
        put_len(&mut b, s.removed.len());
        put_ids(&mut b, s.removed.iter().copied());
        put_len(&mut b, s.upserted.len());
        s.upserted.iter().for_each(|o| put_object(&mut b, o));
        put_len(&mut b, s.changed.len());
        let mut prev: Option<u64> = None;
        for p in &s.changed {
            put_varint(&mut b, prev.map_or(p.id, |q| p.id.wrapping_sub(q).wrapping_sub(1)));
            prev = Some(p.id);
            put_patch(&mut b, p);
        }
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
            let (mut removed, mut upserted, mut changed) = (Vec::new(), Vec::new(), Vec::new());
            let (mut a, mut b) = (0, 0);
            while a < old.len() || b < n.objects.len() {
                match (old.get(a), n.objects.get(b)) {
                    (Some(o), Some(x)) if o.obj.id == x.obj.id => {
                        if let Some(p) = ObjectPatch::between(o, x, next.tick) {
                            changed.push(p);
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
                changed,
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
        .map(|(i, sd)| -> Result<ShardState, SnapshotError> {
            let old: &[ObjectRecord] = base.shards.get(i).map_or(&[], |b| &b.objects);
            // Merge four id-sorted lists: base objects, removed ids, whole objects, patches.
            let mut objects = Vec::with_capacity(old.len() + sd.upserted.len());
            let (mut r, mut u, mut c) = (0, 0, 0);
            let misfit = |id: u64, reason: &'static str| SnapshotError::DiffDoesNotFit { shard: i, id, reason };
            for o in old {
                let id = o.obj.id;
                while sd.removed.get(r).is_some_and(|&x| x < id) {
                    r += 1;
                }
                while let Some(x) = sd.upserted.get(u).filter(|x| x.obj.id < id) {
                    objects.push(*x);
                    u += 1;
                }
                if let Some(p) = sd.changed.get(c).filter(|p| p.id < id) {
                    return Err(misfit(p.id, "a patched object is missing from the base"));
                }
                let patch = sd.changed.get(c).filter(|p| p.id == id);
                if patch.is_some() {
                    c += 1;
                }
                let whole = sd.upserted.get(u).filter(|x| x.obj.id == id);
                if whole.is_some() {
                    u += 1;
                }
                if sd.removed.get(r) == Some(&id) {
                    if patch.is_some() || whole.is_some() {
                        return Err(misfit(id, "the object is both removed and changed"));
                    }
                    continue;
                }
                match (whole, patch) {
                    (Some(_), Some(_)) => return Err(misfit(id, "the object is both written whole and patched")),
                    (Some(x), None) => objects.push(*x),
                    (None, Some(p)) => objects.push(p.apply(o, d.tick).map_err(|reason| misfit(id, reason))?),
                    (None, None) => objects.push(*o),
                }
            }
            if let Some(p) = sd.changed.get(c) {
                return Err(misfit(p.id, "a patched object is missing from the base"));
            }
            objects.extend_from_slice(&sd.upserted[u..]);
            Ok(ShardState {
                index: sd.index,
                rng_state: sd.rng_state,
                last_npc_id: sd.last_npc_id,
                spawners: sd.spawners.clone(),
                mail: sd.mail.clone(),
                objects,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
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
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&format_version) {
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
    /// A LEB128 varint of at most 10 bytes whose value fits in 64 bits.
    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let at = self.at;
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            if i == 9 && byte > 1 {
                return Err(self.corrupt(at, "a varint overflows 64 bits".into()));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt(at, "a varint is longer than 10 bytes".into()))
    }
    fn varint_u32(&mut self) -> Result<u32, SnapshotError> {
        let at = self.at;
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| self.corrupt(at, format!("varint {v} does not fit in 32 bits")))
    }
    fn zigzag_i32(&mut self) -> Result<i32, SnapshotError> {
        Ok(unzigzag32(self.varint_u32()?))
    }
    fn vec2_small(&mut self) -> Result<Vec2, SnapshotError> {
        Ok(Vec2 {
            x: self.zigzag_i32()?,
            y: self.zigzag_i32()?,
        })
    }
    /// The next of a list of strictly ascending ids written by `put_ids`.
    fn next_id(&mut self, prev: Option<u64>) -> Result<u64, SnapshotError> {
        let at = self.at;
        let v = self.varint()?;
        match prev {
            None => Ok(v),
            Some(p) => p
                .checked_add(v)
                .and_then(|x| x.checked_add(1))
                .ok_or_else(|| self.corrupt(at, format!("an id {v} + 1 past {p} overflows"))),
        }
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
const PATCH_BYTES_MIN: usize = 2;

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
    let body = read_body(c)?;
    Ok(ObjectRecord {
        obj,
        pos,
        vel,
        health,
        body,
    })
}

fn read_body(c: &mut Cursor) -> Result<Body, SnapshotError> {
    let at = c.at;
    Ok(match c.u8()? {
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
    })
}

fn read_patch(c: &mut Cursor, id: u64) -> Result<ObjectPatch, SnapshotError> {
    let at = c.at;
    let f = c.u8()?;
    if f == 0 {
        return Err(c.corrupt(at, format!("object {id} is listed as changed with no field changed")));
    }
    if f & F_BODY != 0 && f & (F_MIND | F_RNG | F_READY) != 0 {
        return Err(c.corrupt(at, format!("object {id} has both a whole body and NPC fields changed")));
    }
    let has = |bit: u8| f & bit != 0;
    let kind = if has(F_KIND) { Some(c.u16()?) } else { None };
    let pos_delta = if has(F_POS) { Some(c.vec2_small()?) } else { None };
    let vel = if has(F_VEL) { Some(c.vec2_small()?) } else { None };
    let health = if has(F_HEALTH) {
        Some(Health {
            hp: c.zigzag_i32()?,
            max: c.zigzag_i32()?,
        })
    } else {
        None
    };
    let body = if has(F_BODY) { Some(read_body(c)?) } else { None };
    let mind = if has(F_MIND) {
        let mind_at = c.at;
        Some(match c.u8()? {
            1 => MindPatch::Pause {
                until_from_tick: unzigzag64(c.varint()?),
            },
            2 => MindPatch::Goto {
                to_from_home: c.vec2_small()?,
            },
            3 => MindPatch::Patrol { leg: c.u8()? },
            4 => MindPatch::Chase { player: c.varint()? },
            t => return Err(c.corrupt(mind_at, format!("unknown NPC mind tag {t}"))),
        })
    } else {
        None
    };
    let rng_steps = if has(F_RNG) { Some(c.varint()?) } else { None };
    let ready_at_delta = if has(F_READY) { Some(unzigzag64(c.varint()?)) } else { None };
    Ok(ObjectPatch {
        id,
        kind,
        pos_delta,
        vel,
        health,
        body,
        mind,
        rng_steps,
        ready_at_delta,
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
        let v1 = meta.format_version == 1;
        let k = c.count(if v1 { 8 } else { 1 })?;
        let mut removed: Vec<u64> = Vec::with_capacity(k);
        for _ in 0..k {
            let at = c.at;
            let id = if v1 { c.u64()? } else { c.next_id(removed.last().copied())? };
            if removed.last().is_some_and(|&p| p >= id) {
                return Err(c.corrupt(at, format!("removed id {id} is out of order")));
            }
            removed.push(id);
        }
        let upserted = read_objects(c)?;
        let mut changed: Vec<ObjectPatch> = Vec::new();
        if !v1 {
            let k = c.count(PATCH_BYTES_MIN)?;
            changed.reserve_exact(k);
            for _ in 0..k {
                let id = c.next_id(changed.last().map(|p| p.id))?;
                changed.push(read_patch(c, id)?);
            }
        }
        shards.push(ShardDiff {
            index,
            rng_state,
            last_npc_id,
            spawners,
            mail,
            removed,
            upserted,
            changed,
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
        // The migrant is new in shard 1 (whole); the NPC that moved is a position patch.
        assert_eq!(zd.shards[1].upserted.len(), 1);
        assert_eq!(zd.shards[1].changed.len(), 1);
        assert_eq!(zd.shards[1].changed[0].pos_delta, Some(Vec2 { x: 1, y: 0 }));
        assert_eq!(zd.shards[1].changed[0].fields(), F_POS);
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
    fn rng_steps_count_draws() {
        assert_eq!(RNG_GAMMA.wrapping_mul(RNG_GAMMA_INV), 1);
        let mut r = DetRng { state: 0x1234 };
        let base = r;
        for _ in 0..5 {
            r.next_u64();
        }
        let mut a = npc(1, Mind::Pause { until: 5 });
        let mut b = a;
        if let (Body::Npc(x), Body::Npc(y)) = (&mut a.body, &mut b.body) {
            x.rng = base;
            y.rng = r;
        }
        let p = ObjectPatch::between(&a, &b, 9).unwrap();
        assert_eq!(p.rng_steps, Some(5));
        assert_eq!(p.apply(&a, 9).unwrap(), b);
    }

    #[test]
    fn a_moving_npc_costs_a_few_bytes() {
        let a = npc(
            1000,
            Mind::Goto {
                to: Vec2 { x: 400, y: 40 },
            },
        );
        let mut b = a;
        b.pos = Vec2 { x: 60, y: 30 };
        let p = ObjectPatch::between(&a, &b, 60).unwrap();
        let mut bytes = Vec::new();
        put_patch(&mut bytes, &p);
        // The fields byte, then x + 65 (zigzag 130: 2 bytes) and y + 23 (zigzag 46: 1 byte).
        assert_eq!(bytes.len(), 4);
    }

    /// A version 1 diff (every changed object whole, removed ids as u64) still decodes and applies.
    #[test]
    fn version_1_diffs_are_still_read() {
        let s = state(10);
        let mut next = state(20);
        next.shards[0].objects.remove(1);
        next.shards[1].objects[0].pos.x += 1;
        let mut p = Vec::new();
        put_shard_count(&mut p, next.shards.len());
        for (i, n) in next.shards.iter().enumerate() {
            put_u16(&mut p, n.index);
            put_u64(&mut p, n.rng_state);
            put_u64(&mut p, n.last_npc_id);
            put_spawners(&mut p, &n.spawners);
            put_mail(&mut p, &n.mail);
            let removed: Vec<u64> = s.shards[i]
                .objects
                .iter()
                .filter(|o| !n.objects.iter().any(|x| x.obj.id == o.obj.id))
                .map(|o| o.obj.id)
                .collect();
            put_len(&mut p, removed.len());
            removed.iter().for_each(|&id| put_u64(&mut p, id));
            let up: Vec<&ObjectRecord> = n.objects.iter().filter(|x| !s.shards[i].objects.contains(x)).collect();
            put_len(&mut p, up.len());
            up.iter().for_each(|o| put_object(&mut p, o));
        }
        let meta = SnapshotMeta {
            format_version: 1,
            kind: SnapshotKind::Diff,
            zone_digest: [1; 32],
            tick: 20,
            base_tick: 10,
            seed: 99,
        };
        let snap = decode(&assemble(&meta, &p)).unwrap();
        assert_eq!(snap.meta.format_version, 1);
        let SnapshotBody::Diff(zd) = snap.body else { panic!("not a diff") };
        assert!(zd.shards.iter().all(|s| s.changed.is_empty()));
        assert_eq!(apply_diff(&s, &zd).unwrap(), next);
    }

    #[test]
    fn a_patch_without_its_base_object_is_refused() {
        let s = state(10);
        let mut next = state(20);
        next.shards[1].objects[0].pos.x += 1;
        let mut d = diff(&s, &next);
        let mut other = s.clone();
        other.shards[1].objects.remove(0);
        assert!(matches!(
            apply_diff(&other, &d),
            Err(SnapshotError::DiffDoesNotFit { shard: 1, id: 3, .. })
        ));
        // NPC fields patched onto a player.
        d.shards[1].changed[0].id = next.shards[1].objects[2].obj.id;
        d.shards[1].changed[0].rng_steps = Some(1);
        assert!(matches!(apply_diff(&s, &d), Err(SnapshotError::DiffDoesNotFit { shard: 1, .. })));
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
