//! Captures of only what changed, and the mirror that turns them back into whole states.
//!
//! Copying the whole zone on the tick thread for every snapshot costs a pass that copies every
//! object (about 100 bytes each; 10 MB for the large zone). [`crate::Zone::capture_changes`]
//! copies instead, per shard, what changed since that shard's previous capture:
//! - the objects that arrived (spawned, joined, migrated in) or whose velocity, health or body
//!   changed, whole;
//! - nothing for an NPC that only moved: its velocity has not changed since the mirror last saw
//!   it, so the mirror moves it as `movement` did ([`advance`]; the capture says how many ticks
//!   passed and the zone's bounds);
//! - the players that only moved, as an id and a position (16 bytes; in practice none: the Input
//!   stage writes every player's velocity and attack flag every tick, so they go whole);
//! - the ids of the objects that left (despawned, left, migrated out);
//! - the shard's small state (generator, id allocator, pending respawns, mail), always whole.
//!
//! The first capture of a shard, and the first after [`crate::Zone::reset_capture`], is whole
//! ([`ShardCapture::Full`]). A [`ZoneMirror`] on the persistence side applies the captures in
//! order and gives back the [`ZoneState`] a whole capture would have given, so everything
//! downstream (encoding, diffs, stores) is unchanged. Captures must reach the mirror in order and
//! none may be lost: whoever drops one calls [`crate::Zone::reset_capture`] so that the next is
//! whole, and a mirror that finds a capture it cannot apply says so ([`MirrorError`]) and wants a
//! whole one too.
//!
//! How changes are found:
//! - **NPCs** (nearly all objects) by their write note alone, the second field of their
//!   [`crate::behaviour::Due`]: the tick at which the NPC arrived (spawned, migrated in) or anything
//!   wrote it beyond its position (`npc_ai` its velocity or `Npc`, `player_attacks` its health).
//!   The capture reads one component of each NPC (the note), and the rest only of those it copies
//!   whole. Every writer of an NPC must note it; debug builds (the tests) check that every write
//!   bevy marked on an NPC was noted.
//! - **Players** by bevy change ticks on `Vel`, `Health` and `Player` and "added" ticks for
//!   arrivals.
//! - **Positions:** `movement` writes them every tick without marking, and only for objects with
//!   a velocity: each tick it sets the position to `bounds.clamp(pos.saturating_add(vel))` (or
//!   the object leaves the shard, and the capture lists it as departed). Every other writer of a
//!   position marks it (and, for an NPC, notes it). So an unnoted NPC kept its velocity since the
//!   previous capture, and [`advance`] gives its position exactly, from the previous one.
//!
//! Departures are noted by the three places that despawn. Nothing here alters the simulation or
//! its hash.
//!
//! This module never does IO and never iterates a hash map.

use std::collections::BTreeMap;

use crate::object::ObjectRecord;
use crate::state::{ShardState, ZoneState};
use crate::units::{Rect, Vec2};

/// What one shard's capture holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardCapture {
    /// The whole shard (a first capture, or after a reset).
    Full(ShardState),
    /// What changed since the previous capture of this shard.
    Changes(ShardChanges),
}

/// What changed in one shard since its previous capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardChanges {
    /// The shard's small state, whole (its `objects` are empty: they are the lists below).
    pub shard: ShardState,
    /// Ids of objects that left this shard (in the order they left; an id may also be in
    /// `records` if the object came back, or be unknown to the mirror if it arrived and left
    /// between two captures).
    pub departed: Vec<u64>,
    /// Objects that arrived or changed beyond their position, whole (storage order).
    pub records: Vec<ObjectRecord>,
    /// Players that only moved: id and new position (storage order). NPCs that only moved are
    /// in no list: the mirror moves them ([`advance`]).
    pub moved: Vec<(u64, Vec2)>,
    /// Zone ticks since this shard's previous capture: how far the mirror moves every object in
    /// no list.
    pub ticks: u64,
    /// The zone's bounds, which `movement` clamps positions to.
    pub bounds: Rect,
}

/// Where `movement` puts an object at `pos` with velocity `vel` after `ticks` ticks, the velocity
/// unchanged throughout and the object never leaving its shard: each tick sets the position to
/// `bounds.clamp(pos.saturating_add(vel))`, and a zero velocity leaves it alone. Exact for any
/// start, bounds and count, in constant time: after the first step the position is inside the
/// bounds, and from there each axis moves one way until it meets the bound it moves towards.
pub fn advance(pos: Vec2, vel: Vec2, ticks: u64, bounds: Rect) -> Vec2 {
    if ticks == 0 || vel == Vec2::ZERO {
        return pos;
    }
    let first = bounds.clamp(pos.saturating_add(vel));
    let rest = i64::try_from(ticks - 1).unwrap_or(i64::MAX);
    let axis = |x: i32, v: i32, lo: i32, max: i32| -> i32 {
        let to = i64::from(x).saturating_add(rest.saturating_mul(i64::from(v)));
        // The same `max` then `min` as `Rect::clamp`; the result lies between x and a bound.
        to.max(i64::from(lo)).min(i64::from(max) - 1) as i32
    };
    Vec2::new(
        axis(first.x, vel.x, bounds.min.x, bounds.max.x),
        axis(first.y, vel.y, bounds.min.y, bounds.max.y),
    )
}

/// A capture of the whole zone at the end of `tick`: each shard whole or as changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneCapture {
    pub tick: u64,
    pub seed: u64,
    pub shards: Vec<ShardCapture>,
}

impl ZoneCapture {
    /// Whether every shard is whole (a capture a fresh mirror can start from).
    pub fn is_full(&self) -> bool {
        self.shards.iter().all(|s| matches!(s, ShardCapture::Full(_)))
    }

    /// Whether any shard was copied whole (the zone's first capture, or the first after a reset
    /// or a resync): not a capture of changes only.
    pub fn has_whole_shards(&self) -> bool {
        self.shards.iter().any(|s| matches!(s, ShardCapture::Full(_)))
    }

    /// Objects copied whole plus objects copied as a position: what this capture cost to copy.
    pub fn copied(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(r, m), s| match s {
            ShardCapture::Full(st) => (r + st.objects.len(), m),
            ShardCapture::Changes(c) => (r + c.records.len(), m + c.moved.len()),
        })
    }
}

/// The emptied lists of applied captures of changes ([`ZoneMirror::apply_keeping_lists`]), to hand
/// back to the zone ([`crate::Zone::recycle_lists`]) for its next capture of changes.
///
/// Why: a capture of the large zone fills its lists on the tick thread once a second (about 2 MB
/// when moving NPCs were copied as positions; now the whole records of about a tenth of the NPCs).
/// Fresh from the allocator, that memory is often fresh from the OS too, since allocators hand
/// freed memory back (mimalloc after a second, glibc when the top of its heap is free), and every
/// page then faults on first touch: that made the capture 1.4–1.6× slower in `capture_large` and
/// in the server (`benchmarks/2026-11-30-capture.md`). Reused lists are already the process's.
#[derive(Debug, Default)]
pub struct SpareLists {
    pub(crate) records: Vec<Vec<ObjectRecord>>,
    pub(crate) moved: Vec<Vec<(u64, Vec2)>>,
}

impl SpareLists {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.moved.is_empty()
    }

    /// The bytes the lists hold (their capacity).
    pub fn bytes(&self) -> usize {
        self.records.iter().map(|v| v.capacity() * size_of::<ObjectRecord>()).sum::<usize>()
            + self.moved.iter().map(|v| v.capacity() * size_of::<(u64, Vec2)>()).sum::<usize>()
    }
}

/// A capture the mirror cannot apply: the next capture must be whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MirrorError {
    #[error("the mirror has no state for shard {shard} yet, and the capture holds only changes")]
    NoBase { shard: usize },
    #[error("the capture has {got} shards but the mirror has {expected}")]
    ShardCount { expected: usize, got: usize },
    #[error("shard {shard}: object {id} moved but the mirror does not hold it")]
    UnknownObject { shard: usize, id: u64 },
}

/// One shard as the mirror holds it: the small state, and the objects by id.
#[derive(Clone, Debug)]
struct MirrorShard {
    /// Its `objects` stay empty: they are in `objects` here.
    shard: ShardState,
    objects: BTreeMap<u64, ObjectRecord>,
}

/// The zone's state rebuilt from captures, kept off the tick thread (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct ZoneMirror {
    tick: u64,
    seed: u64,
    /// `None` until the shard's first whole capture.
    shards: Vec<Option<MirrorShard>>,
}

impl ZoneMirror {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `capture`. On an error the mirror keeps what it had for the shards before the one
    /// that failed, forgets that shard and those after it, and needs whole captures of them.
    pub fn apply(&mut self, capture: ZoneCapture) -> Result<(), MirrorError> {
        self.apply_keeping_lists(capture, &mut SpareLists::default())
    }

    /// [`ZoneMirror::apply`], keeping the capture's emptied lists in `spare` (see [`SpareLists`]).
    pub fn apply_keeping_lists(&mut self, capture: ZoneCapture, spare: &mut SpareLists) -> Result<(), MirrorError> {
        if self.shards.len() != capture.shards.len() {
            if !capture.is_full() && !self.shards.is_empty() {
                let expected = self.shards.len();
                self.shards.clear();
                return Err(MirrorError::ShardCount {
                    expected,
                    got: capture.shards.len(),
                });
            }
            self.shards = vec![None; capture.shards.len()];
        }
        self.tick = capture.tick;
        self.seed = capture.seed;
        for (i, shard) in capture.shards.into_iter().enumerate() {
            if let Err(e) = self.apply_shard(i, shard, spare) {
                for s in &mut self.shards[i..] {
                    *s = None;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn apply_shard(&mut self, i: usize, capture: ShardCapture, spare: &mut SpareLists) -> Result<(), MirrorError> {
        match capture {
            ShardCapture::Full(mut shard) => {
                let objects = std::mem::take(&mut shard.objects).into_iter().map(|r| (r.obj.id, r)).collect();
                self.shards[i] = Some(MirrorShard { shard, objects });
            }
            ShardCapture::Changes(mut c) => {
                let Some(m) = self.shards[i].as_mut() else {
                    return Err(MirrorError::NoBase { shard: i });
                };
                m.shard = c.shard;
                // Every object moves first; those the capture lists are then overwritten.
                for r in m.objects.values_mut() {
                    r.pos = advance(r.pos, r.vel, c.ticks, c.bounds);
                }
                for id in c.departed {
                    m.objects.remove(&id);
                }
                for r in c.records.drain(..) {
                    m.objects.insert(r.obj.id, r);
                }
                spare.records.push(c.records);
                for &(id, pos) in &c.moved {
                    let Some(r) = m.objects.get_mut(&id) else {
                        return Err(MirrorError::UnknownObject { shard: i, id });
                    };
                    r.pos = pos;
                }
                c.moved.clear();
                spare.moved.push(c.moved);
            }
        }
        Ok(())
    }

    /// Whether every shard has a state (the mirror can give a whole zone).
    pub fn is_complete(&self) -> bool {
        !self.shards.is_empty() && self.shards.iter().all(Option::is_some)
    }

    /// The zone as a whole capture would have given it, normalized (objects sorted by id).
    /// `None` until [`ZoneMirror::is_complete`].
    pub fn state(&self) -> Option<ZoneState> {
        let shards = self
            .shards
            .iter()
            .map(|s| {
                s.as_ref().map(|m| ShardState {
                    objects: m.objects.values().copied().collect(),
                    ..m.shard.clone()
                })
            })
            .collect::<Option<Vec<_>>>()?;
        if shards.is_empty() {
            return None;
        }
        Some(ZoneState {
            tick: self.tick,
            seed: self.seed,
            shards,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::{Serial, Zone, ZoneSpec};

    fn demo() -> Zone {
        let text = include_str!("../../assets/zones/demo.toml");
        let spec = ZoneSpec::from_toml_str("assets/zones/demo.toml", text).expect("demo.toml is valid");
        Zone::new(Arc::new(spec), 5).expect("demo zone")
    }

    /// The capacity of each shard's lists in a capture of changes.
    fn capacities(c: &ZoneCapture) -> Vec<(usize, usize)> {
        c.shards
            .iter()
            .map(|s| match s {
                ShardCapture::Changes(c) => (c.records.capacity(), c.moved.capacity()),
                ShardCapture::Full(_) => panic!("a capture of changes was expected"),
            })
            .collect()
    }

    /// One tick of `movement` for an object that stays in its shard, spelled out.
    fn step(pos: Vec2, vel: Vec2, bounds: Rect) -> Vec2 {
        if vel == Vec2::ZERO {
            pos
        } else {
            bounds.clamp(pos.saturating_add(vel))
        }
    }

    fn arb_rect() -> impl Strategy<Value = Rect> {
        (any::<i32>(), any::<i32>(), 1..=u32::MAX, 1..=u32::MAX).prop_map(|(x, y, w, h)| {
            let end = |a: i32, d: u32| i32::try_from(i64::from(a) + i64::from(d)).unwrap_or(i32::MAX);
            let (x, y) = (x.min(i32::MAX - 1), y.min(i32::MAX - 1));
            Rect {
                min: Vec2::new(x, y),
                max: Vec2::new(end(x, w), end(y, h)),
            }
        })
    }

    proptest! {
        /// `advance` is `ticks` steps of `movement`, from anywhere (inside the bounds or not),
        /// at any velocity, in bounds of any size (small ones and near the ends of `i32` too).
        #[test]
        fn advance_is_movement_tick_after_tick(
            bounds in prop_oneof![
                arb_rect(),
                (-1000i32..1000, -1000i32..1000, 1i32..300, 1i32..300)
                    .prop_map(|(x, y, w, h)| Rect { min: Vec2::new(x, y), max: Vec2::new(x + w, y + h) }),
            ],
            pos in prop_oneof![
                (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Vec2::new(x, y)),
                (-1500i32..1500, -1500i32..1500).prop_map(|(x, y)| Vec2::new(x, y)),
            ],
            vel in prop_oneof![
                (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Vec2::new(x, y)),
                (-40i32..40, -40i32..40).prop_map(|(x, y)| Vec2::new(x, y)),
            ],
            ticks in 0u64..200,
        ) {
            let mut p = pos;
            for t in 0..=ticks {
                prop_assert_eq!(advance(pos, vel, t, bounds), p, "after {} ticks", t);
                p = step(p, vel, bounds);
            }
        }
    }

    #[test]
    fn advance_over_many_ticks_stops_at_the_bound_it_moves_towards() {
        let bounds = Rect {
            min: Vec2::new(-10, 0),
            max: Vec2::new(100, 50),
        };
        let from = Vec2::new(5, 5);
        assert_eq!(advance(from, Vec2::new(3, -1), u64::MAX, bounds), Vec2::new(99, 0));
        assert_eq!(advance(from, Vec2::new(i32::MIN, i32::MAX), u64::MAX, bounds), Vec2::new(-10, 49));
        assert_eq!(advance(from, Vec2::new(0, 1), 1 << 40, bounds), Vec2::new(5, 49));
        assert_eq!(advance(from, Vec2::new(2, 0), 10, bounds), Vec2::new(25, 5));
        // A zero velocity leaves even a position outside the bounds alone, as `movement` does.
        assert_eq!(advance(Vec2::new(500, -5), Vec2::ZERO, 9, bounds), Vec2::new(500, -5));
    }

    #[test]
    fn a_capture_of_changes_fills_the_lists_handed_back_and_the_mirror_hands_them_back() {
        let mut zone = demo();
        let mut mirror = ZoneMirror::new();
        zone.step(&Serial);
        let first = zone.capture_changes(&Serial);
        assert!(first.is_full());
        assert!(first.has_whole_shards());
        let shards = first.shards.len();
        mirror.apply(first).unwrap();
        // Lists far larger than the demo zone's shards need: only recycling gives a capture these.
        const BIG: usize = 50_000;
        let big = SpareLists {
            records: (0..shards).map(|_| Vec::with_capacity(BIG)).collect(),
            moved: (0..shards).map(|_| Vec::with_capacity(BIG)).collect(),
        };
        zone.recycle_lists(big);
        zone.step(&Serial);
        let c = zone.capture_changes(&Serial);
        assert!(!c.has_whole_shards());
        assert!(
            capacities(&c).iter().all(|&(r, m)| r >= BIG && m >= BIG),
            "every shard filled the lists handed back: {:?}",
            capacities(&c)
        );
        let mut spare = SpareLists::default();
        mirror.apply_keeping_lists(c, &mut spare).unwrap();
        assert_eq!(
            (spare.records.len(), spare.moved.len()),
            (shards, shards),
            "the mirror hands every list back"
        );
        assert!(spare.records.iter().all(|v| v.is_empty() && v.capacity() >= BIG));
        assert!(spare.moved.iter().all(|v| v.is_empty() && v.capacity() >= BIG));
        assert!(spare.bytes() >= shards * BIG * (size_of::<ObjectRecord>() + size_of::<(u64, Vec2)>()));
        // Not handed back: the next capture makes lists sized for what the shard holds.
        zone.step(&Serial);
        let fresh = zone.capture_changes(&Serial);
        assert!(
            capacities(&fresh).iter().all(|&(r, m)| r < BIG && m < BIG),
            "{:?}",
            capacities(&fresh)
        );
    }
}
