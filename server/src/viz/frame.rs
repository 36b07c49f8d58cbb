//! The visualizer's frame format: what the browser receives, and what the history ring stores.
//!
//! A frame is the zone at one tick as the page draws it: every object's id, kind, shard, position
//! (in decimetres: the page needs no more, and small numbers code small) and hit points, sorted by
//! id, plus a small header (the tick rate and each shard's step time). It travels in one of two
//! binary forms, both versioned:
//!
//! - a **key** frame holds every object;
//! - a **diff** frame holds only what changed since a base frame: objects removed, objects changed
//!   (moved, hurt, crossed a shard border), objects added. Objects are named by their *index* in
//!   the base frame (both ends hold the base sorted by id), so a changed object costs a few bytes.
//!
//! Layout (little-endian; `v` is an unsigned LEB128 varint, `s` a zigzag varint):
//!
//! ```text
//! 'Z' 'V' version:u8 type:u8          type 1 = key, 2 = diff
//! tick:v [base_tick:v, diffs only] tick_rate_mhz:v (ticks per 1000 s) shards:v step_us:v × shards
//! key:  n:v  then n × { id_delta:v kind:v shard:v x:s y:s hp:s }     (ids ascending; the first delta is the id)
//! diff: base_n:v new_n:v
//!       removed:v × { index_gap:v }                                    (base indices, ascending)
//!       changed:v × { index_gap:v mask:u8 [dx:s dy:s] [hp:s] [shard:v] [kind:v] }   mask bits 1 pos, 2 hp, 4 shard, 8 kind
//!       added:v   × { new_index_gap:v id:v kind:v shard:v x:s y:s hp:s }            (indices in the new frame, ascending)
//! ```
//!
//! An index gap is the distance from the previous index minus one (the first is the index itself).
//! `page/viz.js` decodes the same bytes; change both together and bump [`FORMAT_VERSION`].
//!
//! Pure code: no clock, no IO. Decoding never panics on hostile bytes ([`FrameError`]).

/// Bumped on any change to the layout above.
pub const FORMAT_VERSION: u8 = 1;
/// Objects one frame may hold (far above any zone we ship; guards decoding).
pub const FRAME_OBJECTS_MAX: usize = 4_000_000;
/// Shards one frame header may describe (the zone file's grid limit is 64 × 64).
pub const FRAME_SHARDS_MAX: usize = 4096;

const TYPE_KEY: u8 = 1;
const TYPE_DIFF: u8 = 2;
const MASK_POS: u8 = 1;
const MASK_HP: u8 = 2;
const MASK_SHARD: u8 = 4;
const MASK_KIND: u8 = 8;

/// One object as the page draws it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VizObject {
    pub id: u64,
    /// Index into the zone's kinds (0 is the player).
    pub kind: u16,
    pub shard: u16,
    /// Decimetres.
    pub x: i32,
    pub y: i32,
    pub hp: i32,
}

/// Millimetres to the frame's decimetres (floor, so a position never rounds out of its cell).
pub fn mm_to_dm(mm: i32) -> i32 {
    mm.div_euclid(100)
}

/// A frame's header: how the zone was doing at that tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Achieved ticks per 1000 seconds (60 Hz is 60,000).
    pub tick_rate_mhz: u64,
    /// Each shard's step time (a recent median), microseconds.
    pub step_us: Vec<u32>,
}

/// The zone at one tick, objects sorted by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub tick: u64,
    pub meta: FrameMeta,
    pub objects: Vec<VizObject>,
}

/// Why bytes did not decode as a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not a visualizer frame (bad magic)")]
    Magic,
    #[error("frame format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    Version(u8),
    #[error("unknown frame type {0}")]
    Type(u8),
    #[error("frame cut short")]
    Truncated,
    #[error("frame field out of range: {0}")]
    Range(&'static str),
    #[error("diff applies to tick {expected}, not to tick {got}")]
    WrongBase { expected: u64, got: u64 },
}

/// What kind of frame some bytes hold, read from the header only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Key,
    Diff { base_tick: u64 },
}

// ---- encoding ----------------------------------------------------------------------------------

fn put_v(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_s(out: &mut Vec<u8>, v: i64) {
    put_v(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_header(out: &mut Vec<u8>, ty: u8, tick: u64, base: Option<u64>, meta: &FrameMeta) {
    out.extend_from_slice(&[b'Z', b'V', FORMAT_VERSION, ty]);
    put_v(out, tick);
    if let Some(b) = base {
        put_v(out, b);
    }
    put_v(out, meta.tick_rate_mhz);
    put_v(out, meta.step_us.len() as u64);
    for &s in &meta.step_us {
        put_v(out, u64::from(s));
    }
}

fn put_object_body(out: &mut Vec<u8>, o: &VizObject) {
    put_v(out, u64::from(o.kind));
    put_v(out, u64::from(o.shard));
    put_s(out, i64::from(o.x));
    put_s(out, i64::from(o.y));
    put_s(out, i64::from(o.hp));
}

/// Encodes `frame` whole. Its objects must be sorted by id (checked in debug builds).
pub fn encode_key(frame: &Frame) -> Vec<u8> {
    debug_assert!(frame.objects.windows(2).all(|w| w[0].id < w[1].id), "objects sorted by id");
    let mut out = Vec::with_capacity(32 + frame.objects.len() * 10);
    put_header(&mut out, TYPE_KEY, frame.tick, None, &frame.meta);
    put_v(&mut out, frame.objects.len() as u64);
    let mut prev = 0u64;
    for o in &frame.objects {
        put_v(&mut out, o.id.wrapping_sub(prev));
        prev = o.id;
        put_object_body(&mut out, o);
    }
    out
}

/// Encodes what changed from `base` to `frame` (both sorted by id).
pub fn encode_diff(base: &Frame, frame: &Frame) -> Vec<u8> {
    let (a, b) = (&base.objects, &frame.objects);
    let mut removed: Vec<usize> = Vec::new();
    let mut changed: Vec<(usize, u8, VizObject, VizObject)> = Vec::new();
    let mut added: Vec<(usize, VizObject)> = Vec::new();
    let (mut i, mut j) = (0usize, 0usize);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.id == y.id => {
                let mut mask = 0;
                if x.x != y.x || x.y != y.y {
                    mask |= MASK_POS;
                }
                if x.hp != y.hp {
                    mask |= MASK_HP;
                }
                if x.shard != y.shard {
                    mask |= MASK_SHARD;
                }
                if x.kind != y.kind {
                    mask |= MASK_KIND;
                }
                if mask != 0 {
                    changed.push((i, mask, *x, *y));
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.id < y.id => {
                removed.push(i);
                i += 1;
            }
            (Some(_), None) => {
                removed.push(i);
                i += 1;
            }
            (_, Some(y)) => {
                added.push((j, *y));
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    let mut out = Vec::with_capacity(32 + changed.len() * 6 + added.len() * 16 + removed.len() * 2);
    put_header(&mut out, TYPE_DIFF, frame.tick, Some(base.tick), &frame.meta);
    put_v(&mut out, a.len() as u64);
    put_v(&mut out, b.len() as u64);
    let gap = |prev: &mut Option<usize>, idx: usize| {
        let g = match *prev {
            None => idx,
            Some(p) => idx - p - 1,
        };
        *prev = Some(idx);
        g as u64
    };
    put_v(&mut out, removed.len() as u64);
    let mut prev = None;
    for &r in &removed {
        put_v(&mut out, gap(&mut prev, r));
    }
    put_v(&mut out, changed.len() as u64);
    let mut prev = None;
    for (idx, mask, x, y) in &changed {
        put_v(&mut out, gap(&mut prev, *idx));
        out.push(*mask);
        if mask & MASK_POS != 0 {
            put_s(&mut out, i64::from(y.x) - i64::from(x.x));
            put_s(&mut out, i64::from(y.y) - i64::from(x.y));
        }
        if mask & MASK_HP != 0 {
            put_s(&mut out, i64::from(y.hp));
        }
        if mask & MASK_SHARD != 0 {
            put_v(&mut out, u64::from(y.shard));
        }
        if mask & MASK_KIND != 0 {
            put_v(&mut out, u64::from(y.kind));
        }
    }
    put_v(&mut out, added.len() as u64);
    let mut prev = None;
    for (idx, o) in &added {
        put_v(&mut out, gap(&mut prev, *idx));
        put_v(&mut out, o.id);
        put_object_body(&mut out, o);
    }
    out
}

// ---- decoding ----------------------------------------------------------------------------------

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, FrameError> {
        let v = *self.b.get(self.at).ok_or(FrameError::Truncated)?;
        self.at += 1;
        Ok(v)
    }
    fn v(&mut self) -> Result<u64, FrameError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FrameError::Range("varint longer than 64 bits"))
    }
    fn s(&mut self) -> Result<i64, FrameError> {
        let v = self.v()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    fn v_max(&mut self, max: u64, what: &'static str) -> Result<u64, FrameError> {
        let v = self.v()?;
        if v > max { Err(FrameError::Range(what)) } else { Ok(v) }
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, FrameError> {
        i32::try_from(self.s()?).map_err(|_| FrameError::Range(what))
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        Ok(self.v_max(u64::from(u16::MAX), what)? as u16)
    }
}

struct Header {
    ty: u8,
    tick: u64,
    base: Option<u64>,
    meta: FrameMeta,
}

fn read_header(r: &mut Reader) -> Result<Header, FrameError> {
    if r.u8()? != b'Z' || r.u8()? != b'V' {
        return Err(FrameError::Magic);
    }
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(FrameError::Version(version));
    }
    let ty = r.u8()?;
    if ty != TYPE_KEY && ty != TYPE_DIFF {
        return Err(FrameError::Type(ty));
    }
    let tick = r.v()?;
    let base = if ty == TYPE_DIFF { Some(r.v()?) } else { None };
    let tick_rate_mhz = r.v()?;
    let n = r.v_max(FRAME_SHARDS_MAX as u64, "shard count")? as usize;
    let mut step_us = Vec::with_capacity(n);
    for _ in 0..n {
        step_us.push(r.v_max(u64::from(u32::MAX), "step time")? as u32);
    }
    Ok(Header {
        ty,
        tick,
        base,
        meta: FrameMeta { tick_rate_mhz, step_us },
    })
}

fn read_object_body(r: &mut Reader, id: u64) -> Result<VizObject, FrameError> {
    Ok(VizObject {
        id,
        kind: r.u16("kind")?,
        shard: r.u16("shard")?,
        x: r.i32("x")?,
        y: r.i32("y")?,
        hp: r.i32("hp")?,
    })
}

/// The tick and kind of the frame in `bytes`, from its header.
pub fn peek(bytes: &[u8]) -> Result<(u64, FrameKind), FrameError> {
    let h = read_header(&mut Reader { b: bytes, at: 0 })?;
    Ok((
        h.tick,
        match h.base {
            None => FrameKind::Key,
            Some(base_tick) => FrameKind::Diff { base_tick },
        },
    ))
}

/// Decodes a key frame.
pub fn decode_key(bytes: &[u8]) -> Result<Frame, FrameError> {
    let mut r = Reader { b: bytes, at: 0 };
    let h = read_header(&mut r)?;
    if h.ty != TYPE_KEY {
        return Err(FrameError::Type(h.ty));
    }
    let n = r.v_max(FRAME_OBJECTS_MAX as u64, "object count")? as usize;
    // Every object takes at least 6 bytes: a count larger than the bytes left is a lie.
    if n > bytes.len() / 6 {
        return Err(FrameError::Truncated);
    }
    let mut objects = Vec::with_capacity(n);
    let mut id = 0u64;
    for k in 0..n {
        let d = r.v()?;
        if k > 0 && d == 0 {
            return Err(FrameError::Range("ids not ascending"));
        }
        id = id.checked_add(d).ok_or(FrameError::Range("id"))?;
        objects.push(read_object_body(&mut r, id)?);
    }
    Ok(Frame {
        tick: h.tick,
        meta: h.meta,
        objects,
    })
}

/// Applies a diff frame to `base` (the frame it was coded against) and returns the new frame.
pub fn apply_diff(base: &Frame, bytes: &[u8]) -> Result<Frame, FrameError> {
    let mut r = Reader { b: bytes, at: 0 };
    let h = read_header(&mut r)?;
    let Some(base_tick) = h.base else {
        return Err(FrameError::Type(h.ty));
    };
    if base_tick != base.tick {
        return Err(FrameError::WrongBase {
            expected: base_tick,
            got: base.tick,
        });
    }
    let base_n = r.v_max(FRAME_OBJECTS_MAX as u64, "base object count")? as usize;
    if base_n != base.objects.len() {
        return Err(FrameError::Range("base object count differs"));
    }
    let new_n = r.v_max(FRAME_OBJECTS_MAX as u64, "object count")? as usize;
    let mut objects = base.objects.clone();
    // Mark removed objects (kept in place until the rebuild below).
    let mut keep = vec![true; base_n];
    let read_indices = |r: &mut Reader, limit: usize, what: &'static str| -> Result<Vec<usize>, FrameError> {
        let n = r.v_max(limit as u64, what)? as usize;
        let mut out = Vec::with_capacity(n.min(bytes.len()));
        let mut prev: Option<usize> = None;
        for _ in 0..n {
            let g = r.v_max(limit as u64, what)? as usize;
            let idx = match prev {
                None => g,
                Some(p) => p.checked_add(g + 1).ok_or(FrameError::Range(what))?,
            };
            if idx >= limit {
                return Err(FrameError::Range(what));
            }
            out.push(idx);
            prev = Some(idx);
        }
        Ok(out)
    };
    for idx in read_indices(&mut r, base_n, "removed index")? {
        keep[idx] = false;
    }
    let n_changed = r.v_max(base_n as u64, "changed count")? as usize;
    let mut prev: Option<usize> = None;
    for _ in 0..n_changed {
        let g = r.v_max(base_n as u64, "changed index")? as usize;
        let idx = match prev {
            None => g,
            Some(p) => p + g + 1,
        };
        if idx >= base_n {
            return Err(FrameError::Range("changed index"));
        }
        prev = Some(idx);
        let mask = r.u8()?;
        let o = &mut objects[idx];
        if mask & MASK_POS != 0 {
            let (dx, dy) = (r.s()?, r.s()?);
            o.x = i32::try_from(i64::from(o.x) + dx).map_err(|_| FrameError::Range("x"))?;
            o.y = i32::try_from(i64::from(o.y) + dy).map_err(|_| FrameError::Range("y"))?;
        }
        if mask & MASK_HP != 0 {
            o.hp = r.i32("hp")?;
        }
        if mask & MASK_SHARD != 0 {
            o.shard = r.u16("shard")?;
        }
        if mask & MASK_KIND != 0 {
            o.kind = r.u16("kind")?;
        }
    }
    let n_added = r.v_max(new_n as u64, "added count")? as usize;
    let mut added: Vec<(usize, VizObject)> = Vec::with_capacity(n_added.min(bytes.len()));
    let mut prev: Option<usize> = None;
    for _ in 0..n_added {
        let g = r.v_max(new_n as u64, "added index")? as usize;
        let idx = match prev {
            None => g,
            Some(p) => p + g + 1,
        };
        if idx >= new_n {
            return Err(FrameError::Range("added index"));
        }
        prev = Some(idx);
        let id = r.v()?;
        added.push((idx, read_object_body(&mut r, id)?));
    }
    let kept = keep.iter().filter(|&&k| k).count();
    if kept + added.len() != new_n {
        return Err(FrameError::Range("object counts do not add up"));
    }
    let mut out = Vec::with_capacity(new_n);
    let mut survivors = objects.into_iter().zip(keep).filter_map(|(o, k)| k.then_some(o));
    let mut added = added.into_iter().peekable();
    for idx in 0..new_n {
        if added.peek().is_some_and(|(i, _)| *i == idx) {
            out.push(added.next().expect("peeked").1);
        } else {
            out.push(survivors.next().ok_or(FrameError::Range("object counts do not add up"))?);
        }
    }
    if out.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(FrameError::Range("ids not ascending"));
    }
    Ok(Frame {
        tick: h.tick,
        meta: h.meta,
        objects: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: u64, x: i32, hp: i32) -> VizObject {
        VizObject {
            id,
            kind: (id % 5) as u16,
            shard: (id % 16) as u16,
            x,
            y: -x,
            hp,
        }
    }

    fn frame(tick: u64, objects: Vec<VizObject>) -> Frame {
        Frame {
            tick,
            meta: FrameMeta {
                tick_rate_mhz: 60_000,
                step_us: vec![120, 130],
            },
            objects,
        }
    }

    #[test]
    fn key_round_trips_including_player_ids() {
        let f = frame(
            7,
            vec![obj(1 << 40, 5, 10), obj((1 << 40) + 3, -500, 0), obj((1 << 63) | 99, 1 << 20, 200)],
        );
        let b = encode_key(&f);
        assert_eq!(peek(&b).unwrap(), (7, FrameKind::Key));
        assert_eq!(decode_key(&b).unwrap(), f);
    }

    #[test]
    fn diff_round_trips_removals_changes_and_additions() {
        let a = frame(10, (0..200).map(|i| obj(100 + i * 3, i as i32, 50)).collect());
        let mut objs: Vec<VizObject> = a
            .objects
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 != 3)
            .map(|(i, o)| {
                let mut o = *o;
                if i % 2 == 0 {
                    o.x += 4;
                }
                if i % 5 == 0 {
                    o.hp -= 9;
                    o.shard = 3;
                }
                o
            })
            .collect();
        objs.extend([obj(1, 0, 1), obj(101, 2, 3), obj(5000, 9, 9), obj(1 << 63 | 5, 1, 1)]);
        objs.sort_by_key(|o| o.id);
        let b = frame(16, objs);
        let d = encode_diff(&a, &b);
        assert_eq!(peek(&d).unwrap(), (16, FrameKind::Diff { base_tick: 10 }));
        assert_eq!(apply_diff(&a, &d).unwrap(), b);
        assert!(d.len() < encode_key(&b).len(), "a small change codes smaller than the whole");
        // Against the wrong base it refuses.
        let other = frame(11, a.objects.clone());
        assert!(matches!(apply_diff(&other, &d), Err(FrameError::WrongBase { .. })));
        // An unchanged frame is a header and a few zero counts.
        assert!(encode_diff(&a, &frame(11, a.objects.clone())).len() < 32);
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        let a = frame(10, (0..50).map(|i| obj(100 + i, i as i32, 50)).collect());
        let mut b = a.clone();
        b.tick = 12;
        b.objects[3].x += 1;
        b.objects.remove(9);
        let d = encode_diff(&a, &b);
        let k = encode_key(&a);
        for bytes in [&d, &k] {
            for cut in 0..bytes.len() {
                let _ = decode_key(&bytes[..cut]);
                let _ = apply_diff(&a, &bytes[..cut]);
            }
            for at in 0..bytes.len() {
                let mut m = bytes.clone();
                m[at] ^= 0x5a;
                let _ = decode_key(&m);
                let _ = apply_diff(&a, &m);
            }
        }
        assert_eq!(decode_key(b"XX"), Err(FrameError::Magic));
        assert_eq!(decode_key(&[b'Z', b'V', 9, 1]), Err(FrameError::Version(9)));
    }
}
