//! The Replicate stage: at the ticks the server asks for, each shard copies what clients may see
//! of every object (id, kind, position, velocity, hit points) into its [`Replica`]. The server
//! takes the copies after the tick and hands them to the network thread, which picks each
//! client's objects and encodes its snapshot; the tick thread never encodes or sends anything.
//!
//! Never changes game state (replay and hashes do not depend on whether it ran) and never sorts:
//! the copy is in storage order, which is deterministic, and whoever encodes orders by id.

use bevy_ecs::prelude::*;

use crate::object::{Health, Obj, Pos, Vel};
use crate::units::Vec2;

/// What a client may see of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicated {
    pub id: u64,
    /// Index into `ZoneSpec::kinds` (0 is the player).
    pub kind: u16,
    pub pos: Vec2,
    /// mm per tick.
    pub vel: Vec2,
    pub hp: i32,
}

/// A shard's replication request and output.
#[derive(Resource, Debug, Default)]
pub struct Replica {
    /// Copy the objects at the end of the next tick(s).
    pub wanted: bool,
    /// The copy of the last tick that wanted one (taken by the server).
    pub objects: Vec<Replicated>,
}

/// The Replicate-stage system.
pub(crate) fn replicate_objects(mut replica: ResMut<Replica>, objects: Query<(&Obj, &Pos, &Vel, &Health)>) {
    if !replica.wanted {
        return;
    }
    let out = &mut replica.objects;
    out.clear();
    out.reserve(objects.iter().len());
    // `for_each` rather than `extend`: bevy's fold walks each table without a per-item check.
    objects.iter().for_each(|(o, p, v, h)| {
        out.push(Replicated {
            id: o.id,
            kind: o.kind,
            pos: p.0,
            vel: v.0,
            hp: h.hp,
        })
    });
}
