//! The objects of a zone: their ECS components, and [`ObjectRecord`], the plain-data form an
//! object takes when it crosses a shard border (and, later, a snapshot or the wire).
//!
//! Object ids are stable `u64`s that survive migration and restore; a bevy `Entity` is a local
//! storage handle and never leaves its shard.

use bevy_ecs::prelude::*;

use crate::input::PlayerId;
use crate::rng::{DetRng, fold, mix64};
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

#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Spawns the record into a world.
    pub fn spawn(self, world: &mut World) -> Entity {
        let base = (self.obj, Pos(self.pos), Vel(self.vel), self.health);
        match self.body {
            Body::Npc(n) => world.spawn((base, n)).id(),
            Body::Player(p) => world.spawn((base, p)).id(),
        }
    }

    /// Spawns the record through commands (inside a system).
    pub fn spawn_cmd(self, commands: &mut Commands) {
        let base = (self.obj, Pos(self.pos), Vel(self.vel), self.health);
        match self.body {
            Body::Npc(n) => commands.spawn((base, n)),
            Body::Player(p) => commands.spawn((base, p)),
        };
    }
}

/// The state hash of one object. Shard hashes add these up (wrapping), so the order objects are
/// visited in cannot change the result. Every field that can influence the future is included.
pub fn object_hash(obj: &Obj, pos: &Pos, vel: &Vel, health: &Health, npc: Option<&Npc>, player: Option<&Player>) -> u64 {
    let mut h = mix64(obj.id);
    h = fold(h, u64::from(obj.kind));
    h = fold(h, (pos.0.x as u32 as u64) << 32 | pos.0.y as u32 as u64);
    h = fold(h, (vel.0.x as u32 as u64) << 32 | vel.0.y as u32 as u64);
    h = fold(h, (health.hp as u32 as u64) << 32 | health.max as u32 as u64);
    if let Some(n) = npc {
        h = fold(h, u64::from(n.spawner));
        h = fold(h, (n.home.x as u32 as u64) << 32 | n.home.y as u32 as u64);
        h = match n.mind {
            Mind::Pause { until } => fold(fold(h, 1), until),
            Mind::Goto { to } => fold(fold(h, 2), (to.x as u32 as u64) << 32 | to.y as u32 as u64),
            Mind::Patrol { leg } => fold(fold(h, 3), u64::from(leg)),
            Mind::Chase { player } => fold(fold(h, 4), player),
        };
        h = fold(h, n.rng.state);
        h = fold(h, n.ready_at);
    }
    if let Some(p) = player {
        h = fold(h, p.player);
        h = fold(h, (p.wish.x as u32 as u64) << 32 | p.wish.y as u32 as u64);
        h = fold(h, u64::from(p.attack));
        h = fold(h, p.ready_at);
        h = fold(h, p.respawn_at.map_or(u64::MAX, |t| t));
    }
    h
}
