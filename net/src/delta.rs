//! The per-client snapshot codec: one client's [`View`] change (baseline → next) as a sequence of
//! datagrams, each at most `budget_bytes`, nearest objects first; and, on the client, each
//! datagram applied back onto the view, reconstructing the server's quantized view exactly.
//!
//! Never panics on bad bytes, never allocates more than a bounded multiple of the datagram size
//! (plus the base view), and never reads the clock or touches a socket: the server decides when
//! to encode, for whom, against which acked baseline, and sends the bytes itself.
//!
//! ## Format
//! A datagram is a `zone.v1.ServerEnvelope` (protobuf, see `proto/zone.proto`) on the unreliable
//! channel carrying a `Snapshot`. Inside it:
//! - `creates` hold an object's whole state, `remove_id_gaps` the removed ids, and `updates` the
//!   changed fields of known objects in three packed columns: id gaps, a field mask per object
//!   (bit 0 x, 1 y, 2 vx, 3 vy, 4 hp, 5 kind) and one value per set bit, in bit order;
//! - in each of the three lists, ids are ascending and delta-coded: the first value is the id,
//!   each next one the gap to the previous id (at least 1), so nearby ids cost one or two bytes;
//! - dead reckoning: both ends first move every baseline object on by its velocity for the ticks
//!   between the baseline and the snapshot ([`predict`], exact integer maths). An object that is
//!   where it was predicted is not sent at all; an update's values are the new field minus the
//!   *predicted* one, as zigzag varints: a small correction costs a byte per axis, and an object
//!   that turned costs about four bytes in all. (Without prediction, deltas were 11.5% of full in
//!   `tests/bandwidth.rs`; with it, 6.5%.) Parts after the first apply to a view already at the
//!   snapshot's tick, so nothing is predicted twice;
//! - `baseline_tick` 0 means the datagram applies to the empty view (a full snapshot);
//! - a change too big for one datagram is split into parts 0, 1, .. with `more_follow` set on all
//!   but the last. The changes are ordered by distance from the client's focus point (ties by id),
//!   so the first part carries the nearest objects. Parts touch disjoint objects: each applies to
//!   the baseline on its own, and applying all of them (in any order) gives the next view. The
//!   envelope's sequence number is `frame.sequence + part`.
//!
//! The format is protobuf rather than a hand-rolled bit format so that parsing is prost's
//! (hardened, bounded); the columns and delta coding above keep the size close to a hand-rolled
//! format. (One `ObjectDelta` message per update with `optional` fields measured about twice the
//! bytes per moving object: 20.9% of full instead of the figure in `tests/bandwidth.rs`.)
//!
//! The server writes those bytes itself (`write_snapshot`), straight from the changes, rather
//! than building the prost messages and encoding them: it is the same protobuf, byte for byte (a
//! property test holds it to prost's encoding), at about a quarter fewer instructions for a
//! client's snapshot (`benches/snapshot.rs`, `benchmarks/2026-11-30-snapshot-writer.md`).
//! Decoding is prost's.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;

use prost::Message;

use crate::envelope::{EnvelopeError, PROTOCOL_VERSION, decode_server};
use crate::proto::{Channel, ObjectState, Snapshot, server_envelope};
#[cfg(test)]
use crate::proto::{ObjectDeltas, ServerEnvelope};
use crate::quantize::{POS_STEP_MM, VEL_STEP_MM_PER_TICK};
use crate::view::{QObject, VIEW_OBJECTS_MAX, View};

/// The datagram budget that fits every path MTU we care about (1280-byte IPv6 minimum, less
/// headroom for IP, UDP and transport headers).
pub const BUDGET_BYTES_DEFAULT: usize = 1200;
/// The smallest budget accepted: the largest possible single change plus every header fits in it.
pub const BUDGET_BYTES_MIN: usize = 160;

/// Per-datagram facts the view does not hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotFrame {
    /// The newest input tick the server has applied for this client.
    pub ack_input_tick: u64,
    /// The envelope sequence number of part 0 on the unreliable channel; part `k` uses
    /// `sequence + k` (wrapping), so the caller advances its counter by the number of parts.
    pub sequence: u32,
}

/// What one datagram (or, summed with [`DeltaStats::add`], one view change) carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    pub datagrams: usize,
    pub bytes: usize,
    pub creates: usize,
    pub updates: usize,
    pub removes: usize,
}

impl DeltaStats {
    pub fn add(&mut self, o: DeltaStats) {
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.creates += o.creates;
        self.updates += o.updates;
        self.removes += o.removes;
    }
}

/// Why the server could not encode a view change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a datagram budget of {budget_bytes} bytes is under the {BUDGET_BYTES_MIN}-byte minimum")]
    BudgetTooSmall { budget_bytes: usize },
    #[error("the next view's tick {next_tick} is not after the baseline's tick {baseline_tick}")]
    TickNotAfterBaseline { baseline_tick: u64, next_tick: u64 },
    #[error("a baseline view at tick 0 cannot be told apart from a full snapshot")]
    BaselineAtTickZero,
}

/// Why a datagram could not be applied. Each one means the datagram is dropped and the view kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("the datagram is not a snapshot")]
    NotASnapshot,
    #[error("the datagram is a delta against tick {baseline_tick} but no baseline view was given")]
    MissingBaseline { baseline_tick: u64 },
    #[error("the {list} ids are not strictly ascending or overflow")]
    BadIds { list: &'static str },
    #[error("the update columns disagree (ids, masks and values do not line up)")]
    BadColumns,
    #[error("object {id} is updated or removed but is not in the view")]
    UnknownObject { id: u64 },
    #[error("object {id} is created but is already in the view")]
    DuplicateObject { id: u64 },
    #[error("field {field} of object {id} is out of range")]
    OutOfRange { id: u64, field: &'static str },
    #[error("the view would hold more than {VIEW_OBJECTS_MAX} objects")]
    TooManyObjects,
}

/// One change of one object, waiting to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Create(QObject),
    Update {
        base: QObject,
        next: QObject,
    },
    /// The object as the baseline has it (its position orders the removal).
    Remove(QObject),
}

impl Change {
    fn id(&self) -> u64 {
        match self {
            Change::Create(o) | Change::Update { next: o, .. } => o.id,
            Change::Remove(o) => o.id,
        }
    }

    /// The squared distance from `focus` to where the client sees (or last saw) the object.
    fn dist2(&self, focus: (u32, u32)) -> u128 {
        let o = match self {
            Change::Create(o) | Change::Update { next: o, .. } | Change::Remove(o) => o,
        };
        let dx = u128::from(o.x.abs_diff(focus.0));
        let dy = u128::from(o.y.abs_diff(focus.1));
        dx * dx + dy * dy
    }
}

/// The changes of a view change not yet sent, nearest first. Pass it to [`encode_leftover`] for
/// the next datagram; empty when the last datagram had `more_follow` unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftover {
    tick: u64,
    baseline_tick: u64,
    frame: SnapshotFrame,
    part: u32,
    focus: (u32, u32),
    /// In id order until the first split, then (from `at` on) nearest first.
    changes: Vec<Change>,
    by_distance: bool,
    at: usize,
    /// The next datagram is the last one sent for this change: it says no more follow even if
    /// changes are left (see [`encode_delta_capped`]).
    final_part: bool,
}

impl Leftover {
    /// How many object changes are still to send.
    pub fn len(&self) -> usize {
        self.changes.len() - self.at
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a client expects an object `dt` ticks after the view it has: moved on by its velocity
/// (dead reckoning). Both ends compute exactly this, in integers, so a delta only carries how far
/// each object is from where it was expected, and an object moving steadily costs nothing.
pub fn predict(o: &QObject, dt: u64) -> QObject {
    if dt == 0 || (o.vx == 0 && o.vy == 0) {
        return *o;
    }
    let dt = i64::try_from(dt.min(1 << 20)).unwrap_or(1 << 20);
    let step = |p: u32, v: i16| -> u32 {
        let mm = i64::from(v) * i64::from(VEL_STEP_MM_PER_TICK) * dt;
        let units = (mm + i64::from(POS_STEP_MM) / 2).div_euclid(i64::from(POS_STEP_MM));
        u32::try_from((i64::from(p) + units).clamp(0, i64::from(u32::MAX))).unwrap_or(0)
    };
    QObject {
        x: step(o.x, o.vx),
        y: step(o.y, o.vy),
        ..*o
    }
}

/// Ticks from a base view to a snapshot at `tick` (0 when the base is not older).
fn ticks_between(base: Option<&View>, tick: u64) -> u64 {
    base.map_or(0, |b| tick.saturating_sub(b.tick()))
}

/// Every change from `base` (or the empty view) to `next`, in id order. An update is against
/// the base object as [`predict`]ed at `next`'s tick; an object exactly where it was predicted is
/// no change at all.
fn diff(base: Option<&View>, next: &View, mut out: Vec<Change>) -> Vec<Change> {
    let empty: &[QObject] = &[];
    let old = base.map_or(empty, View::objects);
    let new = next.objects();
    let dt = ticks_between(base, next.tick());
    out.clear();
    // Most snapshots change a few objects of the view: room for a quarter, grown when more.
    out.reserve(old.len().max(new.len()) / 4 + 8);
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (old.get(i), new.get(j)) {
        if x.id == y.id {
            let expected = predict(x, dt);
            if expected != *y {
                out.push(Change::Update { base: expected, next: *y });
            }
            i += 1;
            j += 1;
        } else if x.id < y.id {
            out.push(Change::Remove(predict(x, dt)));
            i += 1;
        } else {
            out.push(Change::Create(*y));
            j += 1;
        }
    }
    out.extend(old[i..].iter().map(|x| Change::Remove(predict(x, dt))));
    out.extend(new[j..].iter().map(|y| Change::Create(*y)));
    out
}

fn state(o: &QObject, id_gap: u64) -> ObjectState {
    ObjectState {
        id_gap,
        kind: u32::from(o.kind),
        x: o.x,
        y: o.y,
        vx: i32::from(o.vx),
        vy: i32::from(o.vy),
        hp: u32::from(o.hp),
    }
}

/// Bits of an update's field mask, in value order.
const MASK_X: u32 = 1;
const MASK_Y: u32 = 2;
const MASK_VX: u32 = 4;
const MASK_VY: u32 = 8;
const MASK_HP: u32 = 16;
const MASK_KIND: u32 = 32;
const MASK_ALL: u32 = 63;

/// An update's field mask and values (new minus base, for each changed field, in bit order).
/// The reference for [`write_delta`], which the writer uses.
fn delta(base: &QObject, next: &QObject) -> (u32, impl Iterator<Item = i64>) {
    let fields = [
        (MASK_X, i64::from(base.x), i64::from(next.x)),
        (MASK_Y, i64::from(base.y), i64::from(next.y)),
        (MASK_VX, i64::from(base.vx), i64::from(next.vx)),
        (MASK_VY, i64::from(base.vy), i64::from(next.vy)),
        (MASK_HP, i64::from(base.hp), i64::from(next.hp)),
        (MASK_KIND, i64::from(base.kind), i64::from(next.kind)),
    ];
    let mask = fields.iter().filter(|(_, a, b)| a != b).fold(0, |m, (bit, _, _)| m | bit);
    (mask, fields.into_iter().filter(|(_, a, b)| a != b).map(|(_, a, b)| b - a))
}

fn zigzag_len(v: i64) -> usize {
    varint_len(zigzag(v))
}

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// Bytes of a length-delimited field whose content is `len` bytes.
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

/// Bytes of a packed repeated field whose elements take `len` bytes (absent when empty).
fn packed_len(len: usize) -> usize {
    if len == 0 { 0 } else { field_len(len) }
}

/// Bytes of one `ObjectState` whose other fields take `rest` bytes, with id gap `gap`.
fn create_len(rest: usize, gap: u64) -> usize {
    field_len(rest + if gap == 0 { 0 } else { 1 + varint_len(gap) })
}

/// The encoded sizes of a snapshot's lists, kept exact as changes are added in any id order.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    creates: usize,
    updates: usize,
    update_gaps: usize,
    update_masks: usize,
    update_values: usize,
    removes: usize,
    /// How many creates and removes (only [`Lists::totals`] counts them; the updates are counted
    /// above).
    create_count: usize,
    remove_count: usize,
}

impl Totals {
    fn lists_len(&self) -> usize {
        let updates = if self.updates == 0 {
            0
        } else {
            field_len(packed_len(self.update_gaps) + packed_len(self.update_masks) + packed_len(self.update_values))
        };
        self.creates + updates + packed_len(self.removes)
    }
}

/// The ids chosen for one datagram, per list (for creates, with the bytes of their other
/// fields), so that adding one costs O(log n): its gap is to its predecessor, and its successor's
/// gap shrinks.
#[derive(Default)]
struct Sizer {
    creates: BTreeMap<u64, usize>,
    updates: BTreeMap<u64, usize>,
    removes: BTreeMap<u64, usize>,
    totals: Totals,
}

/// The predecessor of `id` in `set` (0 if none: the first id is coded whole) and its successor.
fn neighbours(set: &BTreeMap<u64, usize>, id: u64) -> (u64, Option<(u64, usize)>) {
    let pred = set.range(..id).next_back().map_or(0, |(k, _)| *k);
    let succ = set.range((Bound::Excluded(id), Bound::Unbounded)).next().map(|(k, v)| (*k, *v));
    (pred, succ)
}

impl Sizer {
    /// The totals if `c` were added.
    fn with(&self, c: &Change) -> Totals {
        let mut t = self.totals;
        match c {
            Change::Create(o) => {
                let rest = state(o, 0).encoded_len();
                let (pred, succ) = neighbours(&self.creates, o.id);
                t.creates += create_len(rest, o.id - pred);
                if let Some((s, s_rest)) = succ {
                    t.creates = t.creates - create_len(s_rest, s - pred) + create_len(s_rest, s - o.id);
                }
            }
            Change::Update { base, next } => {
                let (mask, values) = delta(base, next);
                let (pred, succ) = neighbours(&self.updates, next.id);
                t.update_gaps += varint_len(next.id - pred);
                if let Some((s, _)) = succ {
                    t.update_gaps = t.update_gaps - varint_len(s - pred) + varint_len(s - next.id);
                }
                t.update_masks += varint_len(mask.into());
                t.update_values += values.map(zigzag_len).sum::<usize>();
                t.updates += 1;
            }
            Change::Remove(o) => {
                let (pred, succ) = neighbours(&self.removes, o.id);
                t.removes += varint_len(o.id - pred);
                if let Some((s, _)) = succ {
                    t.removes = t.removes - varint_len(s - pred) + varint_len(s - o.id);
                }
            }
        }
        t
    }

    fn insert(&mut self, c: &Change, totals: Totals) {
        match c {
            Change::Create(o) => self.creates.insert(o.id, state(o, 0).encoded_len()),
            Change::Update { next, .. } => self.updates.insert(next.id, 0),
            Change::Remove(o) => self.removes.insert(o.id, 0),
        };
        self.totals = totals;
    }
}

/// The snapshot for the chosen changes, each list sorted by id and gap-coded, as prost messages:
/// the reference [`write_snapshot`] is checked against (tests only).
#[cfg(test)]
fn build(lo: &Leftover, chosen: &mut [Change], more_follow: bool) -> Snapshot {
    chosen.sort_unstable_by_key(Change::id);
    let count = |f: fn(&Change) -> bool| chosen.iter().filter(|c| f(c)).count();
    let (creates, updates, removes) = (
        count(|c| matches!(c, Change::Create(_))),
        count(|c| matches!(c, Change::Update { .. })),
        count(|c| matches!(c, Change::Remove(_))),
    );
    let mut snap = Snapshot {
        tick: lo.tick,
        baseline_tick: lo.baseline_tick,
        ack_input_tick: lo.frame.ack_input_tick,
        part: lo.part,
        more_follow,
        creates: Vec::with_capacity(creates),
        remove_id_gaps: Vec::with_capacity(removes),
        updates: (updates > 0).then(|| ObjectDeltas {
            id_gaps: Vec::with_capacity(updates),
            masks: Vec::with_capacity(updates),
            // Most updates are a position correction: two values.
            values: Vec::with_capacity(updates * 2),
        }),
    };
    let (mut prev_create, mut prev_update, mut prev_remove) = (0u64, 0u64, 0u64);
    for c in chosen.iter() {
        match c {
            Change::Create(o) => {
                snap.creates.push(state(o, o.id - prev_create));
                prev_create = o.id;
            }
            Change::Update { base, next } => {
                let updates = snap.updates.get_or_insert_with(ObjectDeltas::default);
                let (mask, values) = delta(base, next);
                updates.id_gaps.push(next.id - prev_update);
                updates.masks.push(mask);
                updates.values.extend(values);
                prev_update = next.id;
            }
            Change::Remove(o) => {
                snap.remove_id_gaps.push(o.id - prev_remove);
                prev_remove = o.id;
            }
        }
    }
    snap
}

#[cfg(test)]
fn envelope(lo: &Leftover, snap: Snapshot) -> ServerEnvelope {
    ServerEnvelope {
        protocol_version: PROTOCOL_VERSION,
        channel: Channel::Unreliable as i32,
        sequence: lo.frame.sequence.wrapping_add(lo.part),
        body: Some(server_envelope::Body::Snapshot(snap)),
    }
}

/// Bytes of a varint field with value `v` (absent when 0, as proto3 has it).
fn varint_field_len(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + varint_len(v) }
}

/// Bytes of the snapshot's fields other than its three lists.
fn header_len(lo: &Leftover, more_follow: bool) -> usize {
    varint_field_len(lo.tick)
        + varint_field_len(lo.baseline_tick)
        + varint_field_len(lo.frame.ack_input_tick)
        + varint_field_len(lo.part.into())
        + if more_follow { 2 } else { 0 }
}

/// Envelope bytes for a snapshot body of `snapshot_bytes`.
fn envelope_bytes(lo: &Leftover, snapshot_bytes: usize) -> usize {
    varint_field_len(PROTOCOL_VERSION.into())
        + varint_field_len(Channel::Unreliable as u64)
        + varint_field_len(lo.frame.sequence.wrapping_add(lo.part).into())
        + field_len(snapshot_bytes)
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const LEN: u8 = 2;

/// A field key; every field number here is below 16, so a key is one byte.
fn key(out: &mut Vec<u8>, field: u8, wire_type: u8) {
    out.push(field << 3 | wire_type);
}

/// A varint, as prost writes it (its own `encode_varint` goes through `BufMut`, which costs about
/// three times the instructions of this loop into a `Vec`).
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u8, v: u64) {
    if v != 0 {
        key(out, field, VARINT);
        varint(out, v);
    }
}

/// A `sint64`'s varint value (protobuf's zigzag: 0, -1, 1, -2 .. as 0, 1, 2, 3 ..).
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The three lists of one datagram's snapshot, encoded in one pass over its changes (sorted by
/// id): each create as a whole `creates` field (key, length, `ObjectState`), and the contents of
/// the packed update columns and of `remove_id_gaps`. Their lengths are the exact sizes [`Sizer`]
/// sums, and [`write_snapshot`] only frames and copies them.
#[derive(Default)]
struct Lists {
    creates: Vec<u8>,
    update_gaps: Vec<u8>,
    update_masks: Vec<u8>,
    update_values: Vec<u8>,
    removes: Vec<u8>,
    create_count: usize,
    update_count: usize,
    remove_count: usize,
}

impl Lists {
    #[cfg(test)]
    fn encode(chosen: &[Change]) -> Lists {
        let mut l = Lists::default();
        l.encode_into(chosen);
        l
    }

    /// Encodes `chosen` into these columns, cleared first (their buffers are kept: one `Lists`
    /// per thread serves every client, see [`Scratch`]).
    fn encode_into(&mut self, chosen: &[Change]) {
        let l = self;
        for column in [
            &mut l.creates,
            &mut l.update_gaps,
            &mut l.update_masks,
            &mut l.update_values,
            &mut l.removes,
        ] {
            column.clear();
        }
        (l.create_count, l.update_count, l.remove_count) = (0, 0, 0);
        // Most changes are updates of one byte of id gap, one of mask and two of values.
        l.update_gaps.reserve(chosen.len());
        l.update_masks.reserve(chosen.len());
        l.update_values.reserve(chosen.len() * 3);
        let (mut prev_create, mut prev_update, mut prev_remove) = (0u64, 0u64, 0u64);
        for c in chosen {
            match c {
                Change::Create(o) => {
                    write_create(&mut l.creates, o, o.id - prev_create);
                    l.create_count += 1;
                    prev_create = o.id;
                }
                Change::Update { base, next } => {
                    varint(&mut l.update_gaps, next.id - prev_update);
                    let mask = write_delta(base, next, &mut l.update_values);
                    varint(&mut l.update_masks, mask.into());
                    l.update_count += 1;
                    prev_update = next.id;
                }
                Change::Remove(o) => {
                    varint(&mut l.removes, o.id - prev_remove);
                    l.remove_count += 1;
                    prev_remove = o.id;
                }
            }
        }
    }

    /// The sizes, as [`Sizer`] would have summed them.
    fn totals(&self) -> Totals {
        Totals {
            creates: self.creates.len(),
            updates: self.update_count,
            update_gaps: self.update_gaps.len(),
            update_masks: self.update_masks.len(),
            update_values: self.update_values.len(),
            removes: self.removes.len(),
            create_count: self.create_count,
            remove_count: self.remove_count,
        }
    }
}

/// Appends a `creates` field: key, length and the `ObjectState` of `o` with id gap `gap`, as
/// prost encodes [`state`] (fields in number order, zeros left out, `sint32` zigzag-coded). Its
/// length always fits one byte: at most 11 bytes of id gap and 6 for each of the other six fields.
fn write_create(out: &mut Vec<u8>, o: &QObject, gap: u64) {
    key(out, 4, LEN);
    let at = out.len();
    out.push(0);
    varint_field(out, 1, gap);
    varint_field(out, 2, o.kind.into());
    varint_field(out, 3, o.x.into());
    varint_field(out, 4, o.y.into());
    let zigzag32 = |v: i16| u64::from(((i32::from(v) << 1) ^ (i32::from(v) >> 31)) as u32);
    varint_field(out, 5, zigzag32(o.vx));
    varint_field(out, 6, zigzag32(o.vy));
    varint_field(out, 7, o.hp.into());
    let len = out.len() - at - 1;
    debug_assert!(len < 0x80, "an ObjectState of {len} bytes");
    out[at] = len as u8;
}

/// Appends an update's values ([`delta`]'s, as zigzag varints) to `out` and returns its mask.
/// It spells out `delta`'s field list rather than share it: sharing the array cost 1.6% more
/// instructions per client-frame (`endpoint_cost` under callgrind, 59,269 against 60,191). The
/// writer's property test holds the two together: `Sizer` and the prost reference use `delta`.
fn write_delta(base: &QObject, next: &QObject, out: &mut Vec<u8>) -> u32 {
    let mut mask = 0;
    let mut field = |bit: u32, a: i64, b: i64| {
        if a != b {
            mask |= bit;
            varint(out, zigzag(b - a));
        }
    };
    field(MASK_X, base.x.into(), next.x.into());
    field(MASK_Y, base.y.into(), next.y.into());
    field(MASK_VX, base.vx.into(), next.vx.into());
    field(MASK_VY, base.vy.into(), next.vy.into());
    field(MASK_HP, base.hp.into(), next.hp.into());
    field(MASK_KIND, base.kind.into(), next.kind.into());
    mask
}

/// Appends the envelope of one snapshot datagram holding `lists`: byte for byte what prost
/// encodes for the `ServerEnvelope` (the tests check it against prost), without building the
/// messages first. The snapshot is most of the server's encoding work, once per client and
/// frame; decoding stays with prost.
fn write_snapshot(lo: &Leftover, lists: &Lists, more_follow: bool, out: &mut Vec<u8>) {
    let totals = lists.totals();
    // ServerEnvelope
    varint_field(out, 1, PROTOCOL_VERSION.into());
    varint_field(out, 2, Channel::Unreliable as u64);
    varint_field(out, 3, lo.frame.sequence.wrapping_add(lo.part).into());
    key(out, 6, LEN);
    varint(out, (header_len(lo, more_follow) + totals.lists_len()) as u64);
    // Snapshot
    varint_field(out, 1, lo.tick);
    varint_field(out, 2, lo.baseline_tick);
    varint_field(out, 3, lo.frame.ack_input_tick);
    out.extend_from_slice(&lists.creates);
    if lists.update_count > 0 {
        key(out, 5, LEN);
        varint(
            out,
            (packed_len(totals.update_gaps) + packed_len(totals.update_masks) + packed_len(totals.update_values)) as u64,
        );
        for (field, column) in [(1, &lists.update_gaps), (2, &lists.update_masks), (3, &lists.update_values)] {
            if !column.is_empty() {
                key(out, field, LEN);
                varint(out, column.len() as u64);
                out.extend_from_slice(column);
            }
        }
    }
    if !lists.removes.is_empty() {
        key(out, 6, LEN);
        varint(out, lists.removes.len() as u64);
        out.extend_from_slice(&lists.removes);
    }
    varint_field(out, 7, lo.part.into());
    varint_field(out, 8, more_follow.into());
}

/// The datagram for `lists`, with room for the seal after it ([`crate::seal::SEAL_OVERHEAD`]),
/// so sealing does not grow it.
fn datagram(lo: &Leftover, lists: &Lists, more_follow: bool) -> Vec<u8> {
    let len = envelope_bytes(lo, header_len(lo, more_follow) + lists.totals().lists_len());
    let mut out = Vec::with_capacity(len + crate::seal::SEAL_OVERHEAD);
    write_snapshot(lo, lists, more_follow, &mut out);
    debug_assert_eq!(out.len(), len, "size model is off");
    out
}

/// Buffers one thread reuses for every client it encodes: the changes of a view change, a copy
/// of some of them sorted by id, and the encoded columns of a datagram. Kept per thread rather
/// than allocated per client and frame, they stay in the cache and cost no allocator call.
#[derive(Default)]
struct Scratch {
    changes: Vec<Change>,
    sorted: Vec<Change>,
    lists: Lists,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The thread's change buffer, empty (a new one if it is lent out).
fn take_changes() -> Vec<Change> {
    SCRATCH.with(|s| s.try_borrow_mut().map(|mut s| std::mem::take(&mut s.changes)).unwrap_or_default())
}

/// Gives a change buffer back to the thread for the next view change.
fn give_back_changes(mut changes: Vec<Change>) {
    changes.clear();
    SCRATCH.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut()
            && s.changes.capacity() < changes.capacity()
        {
            s.changes = changes;
        }
    });
}

/// Encodes the next datagram of `lo` (nearest changes first) and advances it. Refuses a budget
/// in which not even one change fits (which [`BUDGET_BYTES_MIN`] rules out), rather than loop.
fn pack(lo: &mut Leftover, budget_bytes: usize) -> Result<(Vec<u8>, DeltaStats), EncodeError> {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            let Scratch { sorted, lists, .. } = &mut *s;
            pack_with(lo, budget_bytes, sorted, lists)
        }
        Err(_) => pack_with(lo, budget_bytes, &mut Vec::new(), &mut Lists::default()),
    })
}

/// [`pack`] with the buffers to use.
fn pack_with(
    lo: &mut Leftover,
    budget_bytes: usize,
    sorted: &mut Vec<Change>,
    lists: &mut Lists,
) -> Result<(Vec<u8>, DeltaStats), EncodeError> {
    if budget_bytes < BUDGET_BYTES_MIN {
        return Err(EncodeError::BudgetTooSmall { budget_bytes });
    }
    let start = lo.at;
    // The common case (a delta): everything left fits in this datagram. The changes are still in
    // id order unless an earlier datagram split them. (Every change takes at least a byte, so
    // more changes than budget bytes cannot fit: skip the trial for huge views.)
    let may_fit = lo.len() <= budget_bytes;
    sorted.clear();
    let rest: &[Change] = if !may_fit {
        &[]
    } else if lo.by_distance {
        sorted.extend_from_slice(&lo.changes[start..]);
        sorted.sort_unstable_by_key(Change::id);
        sorted
    } else {
        &lo.changes[start..]
    };
    if may_fit {
        lists.encode_into(rest);
    }
    let (bytes, totals) = if may_fit && envelope_bytes(lo, header_len(lo, false) + lists.totals().lists_len()) <= budget_bytes {
        let bytes = datagram(lo, lists, false);
        lo.at = lo.changes.len();
        (bytes, lists.totals())
    } else {
        // Otherwise the nearest changes while the exact size, with `more_follow` set, fits.
        if !lo.by_distance {
            let focus = lo.focus;
            lo.changes[start..].sort_unstable_by_key(|c| (c.dist2(focus), c.id()));
            lo.by_distance = true;
        }
        let header = header_len(lo, !lo.final_part);
        let mut sizer = Sizer::default();
        while let Some(c) = lo.changes.get(lo.at) {
            let totals = sizer.with(c);
            if envelope_bytes(lo, header + totals.lists_len()) > budget_bytes {
                break;
            }
            sizer.insert(c, totals);
            lo.at += 1;
        }
        if lo.at == start {
            return Err(EncodeError::BudgetTooSmall { budget_bytes });
        }
        sorted.clear();
        sorted.extend_from_slice(&lo.changes[start..lo.at]);
        sorted.sort_unstable_by_key(Change::id);
        let more_follow = lo.at < lo.changes.len() && !lo.final_part;
        lists.encode_into(sorted);
        let totals = lists.totals();
        debug_assert_eq!(
            header_len(lo, more_follow) + totals.lists_len(),
            header + sizer.totals.lists_len(),
            "size model is off"
        );
        (datagram(lo, lists, more_follow), totals)
    };
    // The size model is exact, so this cannot fail; a datagram over the budget would be dropped
    // silently by the transport, so check it here where the cause is known.
    assert!(
        bytes.len() <= budget_bytes,
        "snapshot datagram of {} bytes over the {budget_bytes}-byte budget",
        bytes.len()
    );
    lo.part = lo.part.wrapping_add(1);
    let stats = DeltaStats {
        datagrams: 1,
        bytes: bytes.len(),
        creates: totals.create_count,
        updates: totals.updates,
        removes: totals.remove_count,
    };
    Ok((bytes, stats))
}

/// Encodes the first datagram of the change from `base` (the client's acked view; `None` for a
/// full snapshot) to `next`, at most `budget_bytes`, nearest to `focus` (quantized x, y) first.
/// The [`Leftover`] holds what did not fit: keep calling [`encode_leftover`] until it is empty.
pub fn encode_delta(
    base: Option<&View>,
    next: &View,
    frame: SnapshotFrame,
    budget_bytes: usize,
    focus: (u32, u32),
) -> Result<(Vec<u8>, DeltaStats, Leftover), EncodeError> {
    let mut lo = start(base, next, frame, focus)?;
    let (bytes, stats) = pack(&mut lo, budget_bytes)?;
    Ok((bytes, stats, lo))
}

/// Every change from `base` to `next`, not yet packed.
fn start(base: Option<&View>, next: &View, frame: SnapshotFrame, focus: (u32, u32)) -> Result<Leftover, EncodeError> {
    let baseline_tick = match base {
        None => 0,
        Some(b) if b.tick() == 0 => return Err(EncodeError::BaselineAtTickZero),
        Some(b) if b.tick() >= next.tick() => {
            return Err(EncodeError::TickNotAfterBaseline {
                baseline_tick: b.tick(),
                next_tick: next.tick(),
            });
        }
        Some(b) => b.tick(),
    };
    Ok(Leftover {
        tick: next.tick(),
        baseline_tick,
        frame,
        part: 0,
        focus,
        changes: diff(base, next, take_changes()),
        by_distance: false,
        at: 0,
        final_part: false,
    })
}

/// Encodes the next datagram of a view change begun by [`encode_delta`]. On an empty leftover it
/// returns `None`.
pub fn encode_leftover(lo: &mut Leftover, budget_bytes: usize) -> Result<Option<(Vec<u8>, DeltaStats)>, EncodeError> {
    if lo.is_empty() {
        return Ok(None);
    }
    pack(lo, budget_bytes).map(Some)
}

/// Encodes a whole view change: every datagram, nearest objects first, each at most
/// `budget_bytes`, and the summed statistics. Always at least one datagram (an unchanged view
/// still tells the client the tick and the input ack).
pub fn encode_delta_all(
    base: Option<&View>,
    next: &View,
    frame: SnapshotFrame,
    budget_bytes: usize,
    focus: (u32, u32),
) -> Result<(Vec<Vec<u8>>, DeltaStats), EncodeError> {
    let (first, mut total, mut lo) = encode_delta(base, next, frame, budget_bytes, focus)?;
    let mut out = vec![first];
    while let Some((bytes, stats)) = encode_leftover(&mut lo, budget_bytes)? {
        out.push(bytes);
        total.add(stats);
    }
    Ok((out, total))
}

/// Encodes a view change in at most `max_datagrams` datagrams (nearest objects first), the last
/// one saying that no more follow. Returns the datagrams, their statistics and the view the client
/// holds once it has applied all of them: `next` itself when everything fit, otherwise the
/// baseline with the nearest changes applied. The server records that view as what it sent at
/// `next.tick()`; the next change (against it, once acknowledged) carries the rest, so a view too
/// big for one send is spread over the following sends.
pub fn encode_delta_capped(
    base: Option<&View>,
    next: &View,
    frame: SnapshotFrame,
    budget_bytes: usize,
    focus: (u32, u32),
    max_datagrams: usize,
) -> Result<(Vec<Vec<u8>>, DeltaStats, View), EncodeError> {
    encode_delta_capped_into(base, next.clone(), frame, budget_bytes, focus, max_datagrams)
}

/// [`encode_delta_capped`] taking the next view by value: when everything fits, it becomes the
/// held view without a copy (the server's path, once per client and snapshot).
pub fn encode_delta_capped_into(
    base: Option<&View>,
    next: View,
    frame: SnapshotFrame,
    budget_bytes: usize,
    focus: (u32, u32),
    max_datagrams: usize,
) -> Result<(Vec<Vec<u8>>, DeltaStats, View), EncodeError> {
    let max_datagrams = max_datagrams.max(1);
    let mut lo = start(base, &next, frame, focus)?;
    let mut out = Vec::new();
    let mut total = DeltaStats::default();
    // Always at least one datagram: an unchanged view still tells the client the tick and ack.
    loop {
        lo.final_part = out.len() + 1 == max_datagrams;
        let (bytes, stats) = pack(&mut lo, budget_bytes)?;
        out.push(bytes);
        total.add(stats);
        if lo.is_empty() || lo.final_part {
            break;
        }
    }
    let held = if lo.is_empty() {
        next
    } else {
        apply_changes(base, next.tick(), &lo.changes[..lo.at])
    };
    give_back_changes(lo.changes);
    Ok((out, total, held))
}

/// The baseline (or the empty view) with `changes` applied, at `tick`.
fn apply_changes(base: Option<&View>, tick: u64, changes: &[Change]) -> View {
    let dt = ticks_between(base, tick);
    let mut objects: BTreeMap<u64, QObject> = base
        .map(|b| b.objects().iter().map(|o| (o.id, predict(o, dt))).collect())
        .unwrap_or_default();
    for c in changes {
        match c {
            Change::Create(o) | Change::Update { next: o, .. } => {
                objects.insert(o.id, *o);
            }
            Change::Remove(o) => {
                objects.remove(&o.id);
            }
        }
    }
    // The objects come from two valid views, so the result is valid too.
    View::new(tick, objects.into_values().collect()).unwrap_or_else(|_| View::empty(tick))
}

/// A decoded snapshot datagram: its header and the view after applying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedSnapshot {
    pub sequence: u32,
    pub tick: u64,
    pub baseline_tick: u64,
    pub ack_input_tick: u64,
    pub part: u32,
    pub more_follow: bool,
    /// The base view with this datagram's changes applied, at `tick`.
    pub view: View,
}

/// Ascending ids from a gap list (first value absolute, then gaps of at least 1).
fn ids(gaps: impl Iterator<Item = u64>, list: &'static str) -> impl Iterator<Item = Result<u64, DecodeError>> {
    let mut prev: Option<u64> = None;
    gaps.map(move |gap| {
        let id = match prev {
            None => gap,
            Some(_) if gap == 0 => return Err(DecodeError::BadIds { list }),
            Some(p) => p.checked_add(gap).ok_or(DecodeError::BadIds { list })?,
        };
        prev = Some(id);
        Ok(id)
    })
}

fn narrow<T: TryFrom<i64>>(v: i64, id: u64, field: &'static str) -> Result<T, DecodeError> {
    T::try_from(v).map_err(|_| DecodeError::OutOfRange { id, field })
}

/// Applies one snapshot datagram to `base`: for part 0, the view of `baseline_tick` (`None` when
/// it is 0); for later parts, the result of the previous part (or the baseline again: parts are
/// disjoint). Bad bytes give an error, never a panic; the caller keeps its view.
pub fn decode_snapshot(base: Option<&View>, bytes: &[u8]) -> Result<DecodedSnapshot, DecodeError> {
    let (stamp, body) = decode_server(bytes)?;
    let server_envelope::Body::Snapshot(snap) = body else {
        return Err(DecodeError::NotASnapshot);
    };
    apply_snapshot(base, stamp.sequence, &snap)
}

/// [`decode_snapshot`] for a snapshot already decoded from its envelope (whose stamp carried
/// `sequence`): a client that decoded the envelope to learn what it holds does not decode it twice.
pub fn apply_snapshot(base: Option<&View>, sequence: u32, snap: &Snapshot) -> Result<DecodedSnapshot, DecodeError> {
    if base.is_none() && snap.baseline_tick != 0 {
        return Err(DecodeError::MissingBaseline {
            baseline_tick: snap.baseline_tick,
        });
    }
    // Every object the datagram does not mention is where the client predicts it (parts after the
    // first apply to a view already at `tick`, so nothing moves twice).
    let dt = ticks_between(base, snap.tick);
    let mut objects: Vec<QObject> = base.map_or_else(Vec::new, |b| b.objects().iter().map(|o| predict(o, dt)).collect());
    // Which objects are removed; left empty (no allocation) when none are, as in most deltas.
    let mut gone = if snap.remove_id_gaps.is_empty() {
        Vec::new()
    } else {
        vec![false; objects.len()]
    };
    let find = |objects: &[QObject], id: u64| objects.binary_search_by_key(&id, |o| o.id);

    for id in ids(snap.remove_id_gaps.iter().copied(), "removed") {
        let id = id?;
        match find(&objects, id) {
            Ok(i) if !gone[i] => gone[i] = true,
            _ => return Err(DecodeError::UnknownObject { id }),
        }
    }
    let no_updates = crate::proto::ObjectDeltas::default();
    let updates = snap.updates.as_ref().unwrap_or(&no_updates);
    if updates.masks.len() != updates.id_gaps.len() {
        return Err(DecodeError::BadColumns);
    }
    let mut values = updates.values.iter().copied();
    for (&mask, id) in updates.masks.iter().zip(ids(updates.id_gaps.iter().copied(), "updated")) {
        let id = id?;
        let i = match find(&objects, id) {
            Ok(i) if !is_gone(&gone, i) => i,
            _ => return Err(DecodeError::UnknownObject { id }),
        };
        if mask & !MASK_ALL != 0 {
            return Err(DecodeError::BadColumns);
        }
        let o = &mut objects[i];
        let mut field = |bit: u32, old: i64, name: &'static str| -> Result<Option<i64>, DecodeError> {
            if mask & bit == 0 {
                return Ok(None);
            }
            let d = values.next().ok_or(DecodeError::BadColumns)?;
            old.checked_add(d).map(Some).ok_or(DecodeError::OutOfRange { id, field: name })
        };
        if let Some(v) = field(MASK_X, o.x.into(), "x")? {
            o.x = narrow(v, id, "x")?;
        }
        if let Some(v) = field(MASK_Y, o.y.into(), "y")? {
            o.y = narrow(v, id, "y")?;
        }
        if let Some(v) = field(MASK_VX, o.vx.into(), "vx")? {
            o.vx = narrow(v, id, "vx")?;
        }
        if let Some(v) = field(MASK_VY, o.vy.into(), "vy")? {
            o.vy = narrow(v, id, "vy")?;
        }
        if let Some(v) = field(MASK_HP, o.hp.into(), "hp")? {
            o.hp = narrow(v, id, "hp")?;
        }
        if let Some(v) = field(MASK_KIND, o.kind.into(), "kind")? {
            o.kind = narrow(v, id, "kind")?;
        }
    }
    if values.next().is_some() {
        return Err(DecodeError::BadColumns);
    }
    let mut creates = Vec::with_capacity(snap.creates.len());
    for (s, id) in snap.creates.iter().zip(ids(snap.creates.iter().map(|s| s.id_gap), "created")) {
        let id = id?;
        if let Ok(i) = find(&objects, id)
            && !is_gone(&gone, i)
        {
            return Err(DecodeError::DuplicateObject { id });
        }
        creates.push(QObject {
            id,
            kind: narrow(s.kind.into(), id, "kind")?,
            x: s.x,
            y: s.y,
            vx: narrow(s.vx.into(), id, "vx")?,
            vy: narrow(s.vy.into(), id, "vy")?,
            hp: narrow(s.hp.into(), id, "hp")?,
        });
    }
    let removed = gone.iter().filter(|g| **g).count();
    let count = objects.len() - removed + creates.len();
    if count > VIEW_OBJECTS_MAX {
        return Err(DecodeError::TooManyObjects);
    }
    // Nothing removed or created (most deltas): the updated objects are the view as they are.
    let merged = if removed == 0 && creates.is_empty() {
        objects
    } else {
        merge(&objects, &gone, creates, count)
    };
    Ok(DecodedSnapshot {
        sequence,
        tick: snap.tick,
        baseline_tick: snap.baseline_tick,
        ack_input_tick: snap.ack_input_tick,
        part: snap.part,
        more_follow: snap.more_follow,
        view: View::from_sorted(snap.tick, merged),
    })
}

/// Whether object `i` is marked removed (`gone` is empty when nothing is).
fn is_gone(gone: &[bool], i: usize) -> bool {
    gone.get(i).copied().unwrap_or(false)
}

/// The objects not `gone` (all of them when `gone` is empty), and `creates`, in id order (both
/// lists ascend, and no id is in both).
fn merge(objects: &[QObject], gone: &[bool], creates: Vec<QObject>, count: usize) -> Vec<QObject> {
    let kept = objects.iter().enumerate().filter(|&(i, _)| !is_gone(gone, i)).map(|(_, o)| *o);
    let mut merged = Vec::with_capacity(count);
    let mut kept = kept.peekable();
    let mut created = creates.into_iter().peekable();
    loop {
        let take_kept = match (kept.peek(), created.peek()) {
            (Some(a), Some(b)) => a.id < b.id,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_kept { kept.next() } else { created.next() };
        merged.extend(next);
    }
    merged
}

/// [`decode_snapshot`], keeping only the resulting view.
pub fn decode_delta(base: Option<&View>, bytes: &[u8]) -> Result<View, DecodeError> {
    decode_snapshot(base, bytes).map(|d| d.view)
}

#[cfg(test)]
mod tests {
    //! [`write_snapshot`] against the prost messages it stands in for.

    use proptest::prelude::*;

    use super::*;

    fn arb_obj() -> impl Strategy<Value = QObject> {
        (any::<u16>(), any::<u32>(), any::<u32>(), any::<i16>(), any::<i16>(), any::<u16>()).prop_map(|(kind, x, y, vx, vy, hp)| QObject {
            id: 0,
            kind,
            x,
            y,
            vx,
            vy,
            hp,
        })
    }

    /// Changes with unique ids, sorted by id (ids from 0, near each other or far apart).
    fn arb_changes() -> impl Strategy<Value = Vec<Change>> {
        proptest::collection::btree_map(prop_oneof![0u64..300, any::<u64>()], (0u8..3, arb_obj(), arb_obj()), 0..120).prop_map(|m| {
            m.into_iter()
                .map(|(id, (kind, a, b))| {
                    let (a, b) = (QObject { id, ..a }, QObject { id, ..b });
                    match kind {
                        0 => Change::Create(a),
                        1 => Change::Update { base: a, next: b },
                        _ => Change::Remove(a),
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn written_snapshot_is_what_prost_encodes(
            changes in arb_changes(),
            tick in arb_u64(),
            baseline_tick in arb_u64(),
            ack_input_tick in arb_u64(),
            sequence in prop_oneof![Just(0u32), 1u32..300, any::<u32>()],
            part in prop_oneof![Just(0u32), 1u32..300, any::<u32>()],
            more_follow in any::<bool>(),
        ) {
            let lo = Leftover {
                tick,
                baseline_tick,
                frame: SnapshotFrame { ack_input_tick, sequence },
                part,
                ..Leftover::default()
            };
            check(&lo, &changes, more_follow);
        }
    }

    /// Zero, and varints of every length from one byte to ten.
    fn arb_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            (0u32..64).prop_flat_map(|bits| (1u64 << bits)..=(1u64 << bits).saturating_mul(2).saturating_sub(1))
        ]
    }

    fn check(lo: &Leftover, changes: &[Change], more_follow: bool) {
        let expected = envelope(lo, build(lo, &mut changes.to_vec(), more_follow)).encode_to_vec();
        let lists = Lists::encode(changes);
        assert_eq!(
            envelope_bytes(lo, header_len(lo, more_follow) + lists.totals().lists_len()),
            expected.len()
        );
        assert_eq!(datagram(lo, &lists, more_follow), expected);
    }

    #[test]
    fn written_snapshot_edge_cases() {
        let o = |id: u64| QObject {
            id,
            kind: 1,
            x: 2,
            y: 3,
            vx: -1,
            vy: 0,
            hp: 0,
        };
        let moved = |id: u64| QObject { x: 9, ..o(id) };
        let lists: [Vec<Change>; 6] = [
            vec![],
            vec![Change::Remove(o(0)), Change::Remove(o(u64::MAX))],
            vec![Change::Create(o(0)), Change::Create(o(u64::MAX))],
            vec![
                Change::Update {
                    base: o(0),
                    next: moved(0),
                },
                Change::Update {
                    base: o(u64::MAX),
                    next: moved(u64::MAX),
                },
            ],
            // An update whose fields are all equal: mask 0, no values.
            vec![Change::Update { base: o(7), next: o(7) }],
            vec![
                Change::Create(o(1)),
                Change::Update {
                    base: o(2),
                    next: moved(2),
                },
                Change::Remove(o(3)),
            ],
        ];
        for changes in &lists {
            for (part, more_follow, tick) in [(0, true, 0), (0, false, 1), (3, true, u64::MAX)] {
                let lo = Leftover {
                    tick,
                    baseline_tick: tick / 2,
                    frame: SnapshotFrame {
                        ack_input_tick: tick,
                        sequence: u32::MAX,
                    },
                    part,
                    ..Leftover::default()
                };
                check(&lo, changes, more_follow);
            }
        }
    }
}
