//! The objects of a zone: their ECS components, and [`ObjectRecord`], the plain-data form an
//! object takes when it crosses a shard border (and, later, a snapshot or the wire).
//!
//! Object ids are stable `u64`s that survive migration and restore; a bevy `Entity` is a local
//! storage handle and never leaves its shard.

use bevy_ecs::prelude::*;

use crate::behaviour::Due;
use crate::input::PlayerId;
use crate::rng::{DetRng, mix64};
use crate::units::Vec2;

/// Player object ids are the player id with this bit set, so they can never collide with NPC ids.
pub const PLAYER_OBJECT_BIT: u64 = 1 << 63;

/// NPC ids are `(shard + 1) << NPC_ID_SHARD_SHIFT | sequence`: each shard allocates its own.
pub const NPC_ID_SHARD_SHIFT: u32 = 40;

/// The object id of a player.
pub const fn player_object_id(player: PlayerId) -> u64 {
    player | PLAYER_OBJECT_BIT
}

/// Identity and kind: every object has one.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Obj {
    pub id: u64,
    /// Index into `ZoneSpec::kinds`; 0 is the player.
    pub kind: u16,
}

#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos(pub Vec2);

/// Velocity in mm per tick, applied by the movement system.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Vel(pub Vec2);

#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub hp: i32,
    pub max: i32,
}

/// What an NPC is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mind {
    /// Standing still until the tick given.
    Pause { until: u64 },
    /// Walking to a point (wander).
    Goto { to: Vec2 },
    /// Walking the patrol square; `leg` is the corner it walks to.
    Patrol { leg: u8 },
    /// Chasing a player.
    Chase { player: PlayerId },
}

/// Every NPC also carries a [`crate::behaviour::Due`] (when it next decides): a cache rebuilt from
/// this state, never part of it.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
#[require(crate::behaviour::Due)]
pub struct Npc {
    /// The global id of the spawner that made it and will replace it.
    pub spawner: u32,
    pub home: Vec2,
    pub mind: Mind,
    /// This NPC's own generator: its choices do not depend on the order NPCs are visited in.
    pub rng: DetRng,
    /// The first tick it may attack again.
    pub ready_at: u64,
}

#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Player {
    pub player: PlayerId,
    /// The velocity asked for by this tick's input (already capped).
    pub wish: Vec2,
    pub attack: bool,
    pub ready_at: u64,
    /// While dead: the tick at which the player respawns.
    pub respawn_at: Option<u64>,
}

/// What kind of object a record describes, with the state only that kind has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Npc(Npc),
    Player(Player),
}

/// An object as plain data: exactly its components, nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRecord {
    pub obj: Obj,
    pub pos: Vec2,
    pub vel: Vec2,
    pub health: Health,
    pub body: Body,
}

impl ObjectRecord {
    /// Spawns the record into a world, arriving at `tick` (an NPC notes it in its
    /// [`crate::behaviour::Due`] for the capture of changes).
    pub(crate) fn spawn(self, world: &mut World, tick: u64) -> Entity {
        let base = (self.obj, Pos(self.pos), Vel(self.vel), self.health);
        match self.body {
            Body::Npc(n) => world.spawn((base, n, Due::arrived(tick))).id(),
            Body::Player(p) => world.spawn((base, p)).id(),
        }
    }

    /// Spawns the record through commands (inside a system), arriving at `tick`.
    pub(crate) fn spawn_cmd(self, commands: &mut Commands, tick: u64) {
        let base = (self.obj, Pos(self.pos), Vel(self.vel), self.health);
        match self.body {
            Body::Npc(n) => commands.spawn((base, n, Due::arrived(tick))),
            Body::Player(p) => commands.spawn((base, p)),
        };
    }
}

/// The state hash of one object. Shard hashes add these up (wrapping), so the order objects are
/// visited in cannot change the result. Every field that can influence the future is included.
/// One multiply per field and one full mix at the end keep it cheap (it runs over every object).
pub fn object_hash(obj: &Obj, pos: &Pos, vel: &Vel, health: &Health, npc: Option<&Npc>, player: Option<&Player>) -> u64 {
    #[inline(always)]
    fn add(h: u64, v: u64) -> u64 {
        (h.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    #[inline(always)]
    fn pair(a: i32, b: i32) -> u64 {
        (a as u32 as u64) << 32 | b as u32 as u64
    }
    let mut h = add(obj.id, u64::from(obj.kind));
    h = add(h, pair(pos.0.x, pos.0.y));
    h = add(h, pair(vel.0.x, vel.0.y));
    h = add(h, pair(health.hp, health.max));
    if let Some(n) = npc {
        h = add(h, u64::from(n.spawner));
        h = add(h, pair(n.home.x, n.home.y));
        h = match n.mind {
            Mind::Pause { until } => add(add(h, 1), until),
            Mind::Goto { to } => add(add(h, 2), pair(to.x, to.y)),
            Mind::Patrol { leg } => add(add(h, 3), u64::from(leg)),
            Mind::Chase { player } => add(add(h, 4), player),
        };
        h = add(h, n.rng.state);
        h = add(h, n.ready_at);
    }
    if let Some(p) = player {
        h = add(h, p.player);
        h = add(h, pair(p.wish.x, p.wish.y));
        h = add(h, u64::from(p.attack));
        h = add(h, p.ready_at);
        h = add(h, p.respawn_at.map_or(u64::MAX, |t| t));
    }
    mix64(h)
}
