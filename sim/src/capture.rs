//! Captures of only what changed, and the mirror that turns them back into whole states.
//!
//! Copying the whole zone on the tick thread for every snapshot costs a pass that copies every
//! object (about 100 bytes each; 10 MB for the large zone). [`crate::Zone::capture_changes`]
//! copies instead, per shard, what changed since that shard's previous capture:
//! - the objects that arrived (spawned, joined, migrated in) or whose velocity, health or body
//!   changed, whole;
//! - the objects that only moved, as an id and a position (16 bytes; players never qualify: the
//!   Input stage writes every player's velocity and attack flag every tick, so they go whole);
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
//!   One number per NPC instead of four components' bevy change ticks: the capture reads four
//!   components of each NPC (id, position, velocity, note) and the rest only of those it copies
//!   whole. Every writer of an NPC must note it; debug builds (the tests) check that every write
//!   bevy marked on an NPC was noted.
//! - **Players** by bevy change ticks on `Vel`, `Health` and `Player` and "added" ticks for
//!   arrivals.
//! - **Positions:** `movement` writes them every tick without marking, so an object's position
//!   counts as changed when its velocity is not zero (or, for a player, changed since the last
//!   capture): `movement` only writes positions of objects with a velocity, and every other writer
//!   of a position marks it (and, for an NPC, notes it).
//!
//! Departures are noted by the three places that despawn. Nothing here alters the simulation or
//! its hash.
//!
//! This module never does IO and never iterates a hash map.

use std::collections::BTreeMap;

use crate::object::ObjectRecord;
use crate::state::{ShardState, ZoneState};
use crate::units::Vec2;

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
    /// Objects that only moved: id and new position (storage order).
    pub moved: Vec<(u64, Vec2)>,
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
/// Why: a capture of the large zone fills about 2 MB of lists on the tick thread, once a second.
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

    #[test]
    fn a_capture_of_changes_fills_the_lists_handed_back_and_the_mirror_hands_them_back() {
        let mut zone = demo();
        let mut mirror = ZoneMirror::new();
        zone.step(&Serial);
        let first = zone.capture_changes(&Serial);
        assert!(first.is_full());
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
