//! One shard: a `bevy_ecs` World for one cell of the zone's grid, and the Schedule that advances it
//! by one tick.
//!
//! The schedule's system sets run in a fixed order, **Input → Simulate → Replicate → Persist →
//! Telemetry**, and is built with ambiguity detection set to error, so two systems that touch the
//! same data without an order between them fail the build instead of racing. A shard only ever
//! sees its own world plus read-only zone data handed in before the step (the players view, its
//! mail); everything it wants to tell other shards leaves through its [`Outbox`] and is routed by
//! the zone at the tick boundary, in sorted order. Nothing in a shard may depend on the order
//! entities are stored or visited in: every per-entity choice uses the entity's own generator, and
//! every cross-entity effect is sorted by object id first.

use std::sync::Arc;

use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{LogLevel, ScheduleBuildError, ScheduleBuildSettings, ScheduleLabel};

use crate::behaviour::Due;
use crate::capture::{ShardCapture, ShardChanges, SpareLists};
use crate::input::{MOVE_AXIS_MAX, PlayerId, PlayerInput};
use crate::object::{Body, Health, Mind, NPC_ID_SHARD_SHIFT, Npc, Obj, ObjectRecord, Player, Pos, Vel, object_hash, player_object_id};
use crate::rng::{DetRng, fold, mix64};
use crate::state::{RestoreError, ShardState, SpawnerPending};
use crate::stats::ShardStats;
use crate::units::{Rect, Vec2};
use crate::zone_file::{Behaviour, PLAYER_KIND, ZoneSpec};

/// The stages of a tick, in the order they run.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Joins, leaves and player inputs are applied.
    Input,
    /// Game rules: mail, AI, combat, spawning, movement, border crossings.
    Simulate,
    /// Reserved for the network crate: build what each client should see.
    Replicate,
    /// Reserved for the persistence crate: capture snapshot data.
    Persist,
    /// Statistics for this tick.
    Telemetry,
}

/// The label of the per-shard tick schedule.
#[derive(ScheduleLabel, Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardTick;

/// A schedule with the five stages chained and ambiguity detection set to error. Shards build
/// theirs with it; tests use it to prove that an unordered conflicting pair is refused.
pub fn checked_schedule() -> Schedule {
    let mut s = Schedule::new(ShardTick);
    s.set_build_settings(ScheduleBuildSettings {
        ambiguity_detection: LogLevel::Error,
        ..Default::default()
    });
    s.configure_sets((Stage::Input, Stage::Simulate, Stage::Replicate, Stage::Persist, Stage::Telemetry).chain());
    s
}

/// Cross-shard messages, delivered at the start of the next tick in sorted order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mail {
    /// An NPC hit a player (who may live in another shard).
    Damage { target: PlayerId, source: u64, amount: i32 },
    /// An NPC from this spawner died; the spawner schedules a replacement.
    Died { spawner: u32 },
}

/// A player as other shards see it at the start of a tick: where it is and whether it is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlayerView {
    pub player: PlayerId,
    pub pos: Vec2,
    pub alive: bool,
    pub shard: u16,
}

/// One spawner's share of one shard: the part of its area inside this shard's cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnerState {
    /// Zone-wide id (index into the zone's spawner list).
    pub id: u32,
    pub kind: u16,
    pub area: Rect,
    pub count: u64,
    pub respawn_delay_ticks: u32,
    /// Ticks at which a replacement is due, oldest first.
    pub pending: std::collections::VecDeque<u64>,
}

#[derive(Resource)]
pub(crate) struct Rules(pub Arc<ZoneSpec>);

#[derive(Resource, Clone, Copy)]
pub(crate) struct ShardInfo {
    pub cell: Rect,
    /// The cell grown by the players' awareness distance: players inside matter to this shard.
    pub watch: Rect,
    pub seed: u64,
}

#[derive(Resource, Default)]
pub(crate) struct Clock {
    pub tick: u64,
}

/// What the zone hands a shard before its step.
#[derive(Resource, Default)]
pub(crate) struct Inbox {
    pub joins: Vec<(PlayerId, Vec2)>,
    pub leaves: Vec<PlayerId>,
    pub inputs: Vec<PlayerInput>,
    pub mail: Vec<Mail>,
    pub players: Arc<[PlayerView]>,
}

/// What a shard hands back after its step.
#[derive(Resource, Default)]
pub(crate) struct Outbox {
    pub migrants: Vec<ObjectRecord>,
    pub mail: Vec<Mail>,
}

/// Alive players that NPCs of this shard may notice: sorted by player id, and bucketed in a grid
/// so that an NPC only looks at players in the cells around it.
#[derive(Resource, Default)]
pub(crate) struct Nearby {
    pub players: Vec<PlayerView>,
    pub grid: PlayerGrid,
}

/// A uniform grid over a rectangle, stored compactly (counting sort): `start[c]..start[c + 1]`
/// indexes the players of cell `c` in `items`.
#[derive(Default)]
pub(crate) struct PlayerGrid {
    /// The players' bounding box: an NPC farther than its radius from it skips the grid.
    bbox: Rect,
    origin: Vec2,
    cell_mm: i32,
    cols: i32,
    rows: i32,
    start: Vec<u32>,
    items: Vec<PlayerView>,
}

impl PlayerGrid {
    fn cell_of(&self, p: Vec2) -> (i32, i32) {
        let cx = ((i64::from(p.x) - i64::from(self.origin.x)) / i64::from(self.cell_mm)).clamp(0, i64::from(self.cols - 1));
        let cy = ((i64::from(p.y) - i64::from(self.origin.y)) / i64::from(self.cell_mm)).clamp(0, i64::from(self.rows - 1));
        (cx as i32, cy as i32)
    }

    pub(crate) fn build(&mut self, area: Rect, cell_mm: i32, players: &[PlayerView]) {
        self.origin = area.min;
        self.cell_mm = cell_mm.max(1000);
        self.cols = ((area.width() + i64::from(self.cell_mm) - 1) / i64::from(self.cell_mm)).clamp(1, 4096) as i32;
        self.rows = ((area.height() + i64::from(self.cell_mm) - 1) / i64::from(self.cell_mm)).clamp(1, 4096) as i32;
        let n = (self.cols * self.rows) as usize;
        self.start.clear();
        self.start.resize(n + 1, 0);
        for p in players {
            let (cx, cy) = self.cell_of(p.pos);
            self.start[(cy * self.cols + cx) as usize + 1] += 1;
        }
        for i in 0..n {
            self.start[i + 1] += self.start[i];
        }
        self.items.clear();
        self.items.resize(
            players.len(),
            PlayerView {
                player: 0,
                pos: Vec2::ZERO,
                alive: false,
                shard: 0,
            },
        );
        self.bbox = Rect {
            min: Vec2::new(i32::MAX, i32::MAX),
            max: Vec2::new(i32::MIN, i32::MIN),
        };
        for p in players {
            self.bbox.min = Vec2::new(self.bbox.min.x.min(p.pos.x), self.bbox.min.y.min(p.pos.y));
            self.bbox.max = Vec2::new(self.bbox.max.x.max(p.pos.x), self.bbox.max.y.max(p.pos.y));
        }
        let mut fill = self.start.clone();
        for p in players {
            let (cx, cy) = self.cell_of(p.pos);
            let c = (cy * self.cols + cx) as usize;
            self.items[fill[c] as usize] = *p;
            fill[c] += 1;
        }
    }

    /// The nearest player within `radius` of `p` (ties to the lower player id), if any.
    pub(crate) fn nearest(&self, p: Vec2, radius: i32) -> Option<PlayerView> {
        if self.items.is_empty()
            || p.x.saturating_add(radius) < self.bbox.min.x
            || p.x.saturating_sub(radius) > self.bbox.max.x
            || p.y.saturating_add(radius) < self.bbox.min.y
            || p.y.saturating_sub(radius) > self.bbox.max.y
        {
            return None;
        }
        let r2 = i64::from(radius).pow(2);
        let (x0, y0) = self.cell_of(Vec2::new(p.x.saturating_sub(radius), p.y.saturating_sub(radius)));
        let (x1, y1) = self.cell_of(Vec2::new(p.x.saturating_add(radius), p.y.saturating_add(radius)));
        let mut best: Option<(i64, PlayerView)> = None;
        for cy in y0..=y1 {
            let row = (cy * self.cols) as usize;
            let from = self.start[row + x0 as usize] as usize;
            let to = self.start[row + x1 as usize + 1] as usize;
            for v in &self.items[from..to] {
                let d2 = v.pos.dist2(p);
                if d2 <= r2 && best.is_none_or(|(bd, b)| (d2, v.player) < (bd, b.player)) {
                    best = Some((d2, *v));
                }
            }
        }
        best.map(|(_, v)| v)
    }
}

/// The objects `movement` found outside the shard's cell this tick, in storage order.
#[derive(Resource, Default)]
pub(crate) struct Leaving(Vec<Entity>);

/// The most world ticks between two captures of changes that bevy's change ticks are trusted
/// across (`bevy_ecs::change_detection::CHECK_TICK_THRESHOLD`, about 518 million).
const CAPTURE_GAP_MAX: u32 = bevy_ecs::change_detection::CHECK_TICK_THRESHOLD;

/// Whether a capture at world tick `now` is too far from the previous one, at `since`, to trust
/// bevy's change ticks across: then it copies everything.
fn too_old(now: bevy_ecs::change_detection::Tick, since: bevy_ecs::change_detection::Tick) -> bool {
    now.get().wrapping_sub(since.get()) > CAPTURE_GAP_MAX
}

/// Ids of the objects that left the shard since its last capture of changes (see
/// `crate::capture`). Off, and empty, until the first capture: a zone nobody captures keeps
/// nothing here. Not part of the state or the hash.
#[derive(Resource, Default)]
pub(crate) struct Departed {
    on: bool,
    ids: Vec<u64>,
}

impl Departed {
    fn note(&mut self, id: u64) {
        if self.on {
            self.ids.push(id);
        }
    }
}

#[derive(Resource)]
pub(crate) struct Spawners(pub Vec<SpawnerState>);

#[derive(Resource)]
pub(crate) struct ShardRng(pub DetRng);

#[derive(Resource)]
pub(crate) struct IdAlloc {
    pub next: u64,
}

#[derive(Resource, Default)]
pub(crate) struct Stats(pub ShardStats);

type HashQuery = (
    &'static Obj,
    &'static Pos,
    &'static Vel,
    &'static Health,
    Option<&'static Npc>,
    Option<&'static Player>,
);
/// What [`Shard::capture_changes`] reads of an NPC: its components and its write note (`Due`),
/// no change ticks (see `crate::capture`).
type NpcCaptureQuery = (
    &'static Obj,
    &'static Pos,
    &'static Vel,
    &'static Health,
    &'static Npc,
    &'static Due,
);
/// What [`Shard::capture_changes`] reads of a player: its components with their bevy change
/// ticks (every write to a player is marked).
type PlayerChangeQuery = (
    &'static Obj,
    Ref<'static, Pos>,
    Ref<'static, Vel>,
    Ref<'static, Health>,
    Ref<'static, Player>,
);
/// What debug builds read to check that every write bevy marked on an NPC was noted in its `Due`.
#[cfg(debug_assertions)]
type NpcMarksQuery = (
    &'static Obj,
    Ref<'static, Pos>,
    Ref<'static, Vel>,
    Ref<'static, Health>,
    Ref<'static, Npc>,
    &'static Due,
);
type RecordQuery = (
    Entity,
    &'static Obj,
    &'static Pos,
    &'static Vel,
    &'static Health,
    Option<&'static Npc>,
    Option<&'static Player>,
);

/// One shard of a zone.
pub struct Shard {
    index: u16,
    world: World,
    schedule: Schedule,
    hash_query: QueryState<HashQuery>,
    npc_query: QueryState<(&'static Obj, &'static Pos, &'static Vel, &'static Health, &'static Npc)>,
    pc_query: QueryState<(&'static Obj, &'static Pos, &'static Vel, &'static Health, &'static Player)>,
    player_query: QueryState<(&'static Pos, &'static Player)>,
    npc_changes: QueryState<NpcCaptureQuery>,
    pc_changes: QueryState<PlayerChangeQuery>,
    /// The bevy change tick and the zone tick of this shard's last capture (`None`: the next one
    /// is whole).
    captured_at: Option<(bevy_ecs::change_detection::Tick, u64)>,
    /// How many whole records and positions the last capture of changes copied: the next one
    /// reserves about as much, so that it does not grow its lists on the tick thread.
    captured_sizes: (usize, usize),
    /// Emptied lists of an applied capture, for the next capture of changes to fill (empty and
    /// without capacity when there are none; see [`crate::capture::SpareLists`]).
    spare_lists: (Vec<ObjectRecord>, Vec<(u64, Vec2)>),
}

impl Shard {
    /// Builds shard `index` of the zone with its spawners; does not populate it (see
    /// [`Shard::populate`]).
    pub(crate) fn new(spec: Arc<ZoneSpec>, index: usize, seed: u64, spawners: Vec<SpawnerState>) -> Result<Shard, ScheduleBuildError> {
        let mut world = World::new();
        let cell = spec.shard_rect(index);
        let watch = cell.expand(spec.player_awareness_mm());
        world.insert_resource(ShardInfo { cell, watch, seed });
        world.insert_resource(Rules(spec));
        world.insert_resource(Clock::default());
        world.insert_resource(Inbox::default());
        world.insert_resource(Outbox::default());
        world.insert_resource(Nearby::default());
        world.insert_resource(Spawners(spawners));
        world.insert_resource(ShardRng(DetRng::new(seed, index as u64)));
        world.insert_resource(IdAlloc {
            next: ((index as u64) + 1) << NPC_ID_SHARD_SHIFT,
        });
        world.insert_resource(Stats::default());
        world.insert_resource(Leaving::default());
        world.insert_resource(Departed::default());
        world.insert_resource(crate::replicate::Replica::default());

        let mut schedule = checked_schedule();
        schedule.add_systems((apply_joins_leaves, apply_inputs).chain().in_set(Stage::Input));
        schedule.add_systems(
            (
                deliver_mail,
                respawn_players,
                crate::behaviour::npc_ai,
                player_attacks,
                run_spawners,
                movement,
                collect_migrants,
            )
                .chain()
                .in_set(Stage::Simulate),
        );
        schedule.add_systems(crate::replicate::replicate_objects.in_set(Stage::Replicate));
        schedule.add_systems(count_objects.in_set(Stage::Telemetry));
        schedule.initialize(&mut world)?;

        let hash_query = world.query::<HashQuery>();
        let npc_query = world.query::<(&Obj, &Pos, &Vel, &Health, &Npc)>();
        let pc_query = world.query::<(&Obj, &Pos, &Vel, &Health, &Player)>();
        let player_query = world.query::<(&Pos, &Player)>();
        let npc_changes = world.query::<NpcCaptureQuery>();
        let pc_changes = world.query::<PlayerChangeQuery>();
        Ok(Shard {
            index: index as u16,
            world,
            schedule,
            hash_query,
            npc_query,
            pc_query,
            player_query,
            npc_changes,
            pc_changes,
            captured_at: None,
            captured_sizes: (0, 0),
            spare_lists: (Vec::new(), Vec::new()),
        })
    }

    pub fn index(&self) -> usize {
        usize::from(self.index)
    }

    /// Spawns every spawner's initial population (tick 0).
    pub(crate) fn populate(&mut self) {
        let spawners = std::mem::take(&mut self.world.resource_mut::<Spawners>().0);
        for s in &spawners {
            for _ in 0..s.count {
                let rec = self.make_npc(s, 0);
                rec.spawn(&mut self.world, 0);
                let mut stats = self.world.resource_mut::<Stats>();
                stats.0.spawns += 1;
                stats.0.objects += 1;
                stats.0.objects_by_kind[usize::from(s.kind)] += 1;
            }
        }
        self.world.resource_mut::<Spawners>().0 = spawners;
    }

    fn make_npc(&mut self, s: &SpawnerState, tick: u64) -> ObjectRecord {
        let spec = self.world.resource::<Rules>().0.clone();
        let seed = self.world.resource::<ShardInfo>().seed;
        let pos = {
            let rng = &mut self.world.resource_mut::<ShardRng>().0;
            Vec2::new(
                rng.range_i32(s.area.min.x, s.area.max.x - 1),
                rng.range_i32(s.area.min.y, s.area.max.y - 1),
            )
        };
        let id = {
            let mut alloc = self.world.resource_mut::<IdAlloc>();
            alloc.next += 1;
            alloc.next
        };
        new_npc(&spec, seed, s, id, pos, tick)
    }

    /// Hands the shard what it needs for tick `tick`.
    pub(crate) fn prepare(
        &mut self,
        tick: u64,
        joins: Vec<(PlayerId, Vec2)>,
        leaves: Vec<PlayerId>,
        inputs: Vec<PlayerInput>,
        players: Arc<[PlayerView]>,
    ) {
        let kinds = self.world.resource::<Rules>().0.kinds.len();
        self.world.resource_mut::<Clock>().tick = tick;
        self.world.resource_mut::<Stats>().0.reset(self.index, tick, kinds);
        let mut inbox = self.world.resource_mut::<Inbox>();
        inbox.joins = joins;
        inbox.leaves = leaves;
        inbox.inputs = inputs;
        inbox.players = players;
    }

    /// Runs the schedule once: the whole tick for this shard. Deterministic given the shard's
    /// state and what `prepare` handed it.
    pub fn step(&mut self) {
        // bevy_ecs records every removed component (despawns, migrants leaving) for
        // `RemovedComponents` readers until `clear_trackers`, which only a bevy App calls for
        // us. Nothing here reads them, so without this the record grew by every despawn and
        // migration for the life of the server (about 1 MiB a minute in a 1,000-bot soak).
        self.world.clear_trackers();
        self.schedule.run(&mut self.world);
    }

    /// Component removals bevy_ecs still holds (bounded to two ticks' worth by [`Shard::step`]).
    pub fn removals_held(&self) -> usize {
        self.world.removed_components().iter().map(|(_, m)| m.len()).sum()
    }

    pub(crate) fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut *self.world.resource_mut::<Outbox>())
    }

    pub(crate) fn receive_migrant(&mut self, rec: ObjectRecord) {
        let is_player = matches!(rec.body, Body::Player(_));
        // The Replicate stage ran before the boundary: add the newcomer to this tick's copy, or it
        // would be missing from clients' snapshots for one frame.
        let mut replica = self.world.resource_mut::<crate::replicate::Replica>();
        if replica.wanted {
            replica.objects.push(crate::replicate::Replicated {
                id: rec.obj.id,
                kind: rec.obj.kind,
                pos: rec.pos,
                vel: rec.vel,
                hp: rec.health.hp,
            });
        }
        let tick = self.world.resource::<Clock>().tick;
        rec.spawn(&mut self.world, tick);
        let mut stats = self.world.resource_mut::<Stats>();
        stats.0.migrations_in += 1;
        stats.0.objects += 1;
        stats.0.objects_by_kind[usize::from(rec.obj.kind)] += 1;
        if is_player {
            stats.0.players += 1;
        }
    }

    pub(crate) fn push_mail(&mut self, mail: Mail) {
        self.world.resource_mut::<Inbox>().mail.push(mail);
    }

    /// This tick's statistics.
    pub fn stats(&self) -> &ShardStats {
        &self.world.resource::<Stats>().0
    }

    /// The players this shard holds, in no particular order.
    pub(crate) fn players(&mut self, out: &mut Vec<PlayerView>) {
        for (pos, p) in self.player_query.iter(&self.world) {
            out.push(PlayerView {
                player: p.player,
                pos: pos.0,
                alive: p.respawn_at.is_none(),
                shard: self.index,
            });
        }
    }

    /// The shard's state hash: an order-independent sum of object hashes, folded with the shard's
    /// own state (generator, id allocator, spawners, pending mail).
    pub fn state_hash(&mut self) -> u64 {
        let mut sum: u64 = 0;
        self.hash_query.iter(&self.world).for_each(|(o, p, v, h, n, pl)| {
            sum = sum.wrapping_add(object_hash(o, p, v, h, n, pl));
        });
        let mut h = fold(mix64(u64::from(self.index)), sum);
        h = fold(h, self.world.resource::<ShardRng>().0.state);
        h = fold(h, self.world.resource::<IdAlloc>().next);
        for s in &self.world.resource::<Spawners>().0 {
            h = fold(h, u64::from(s.id));
            h = fold(h, s.pending.len() as u64);
            for &t in &s.pending {
                h = fold(h, t);
            }
        }
        for m in &self.world.resource::<Inbox>().mail {
            h = match *m {
                Mail::Damage { target, source, amount } => fold(fold(fold(fold(h, 1), target), source), amount as u32 as u64),
                Mail::Died { spawner } => fold(fold(h, 2), u64::from(spawner)),
            };
        }
        h
    }

    /// Copies the shard's whole state out (cheap: a pass over the objects and a few small lists).
    pub fn capture(&mut self) -> ShardState {
        ShardState {
            objects: self.objects_unsorted(),
            ..self.capture_small()
        }
    }

    /// Copies what changed since this shard's previous capture (see `crate::capture`); the first
    /// capture, and the first after [`Shard::reset_capture`], is whole. Reads only: the
    /// simulation and its hash are unaffected.
    pub fn capture_changes(&mut self) -> ShardCapture {
        // A fresh tick: everything written before it is older, everything after is newer.
        let now = self.world.increment_change_tick();
        // bevy's change ticks compare correctly only within about 2^32 world ticks (weeks without
        // a capture); past that, copy everything rather than trust them.
        let tick = self.world.resource::<Clock>().tick;
        let Some((since, since_tick)) = self.captured_at.replace((now, tick)).filter(|&(since, _)| !too_old(now, since)) else {
            let mut departed = self.world.resource_mut::<Departed>();
            departed.on = true;
            departed.ids.clear();
            return ShardCapture::Full(self.capture());
        };
        let departed = std::mem::take(&mut self.world.resource_mut::<Departed>().ids);
        let reserve = |n: usize| n + n / 4 + 16;
        // The spare lists handed back, if any (see `crate::capture::SpareLists`), else new ones.
        let mut records = std::mem::take(&mut self.spare_lists.0);
        records.clear();
        records.reserve(reserve(self.captured_sizes.0));
        let mut moved = std::mem::take(&mut self.spare_lists.1);
        moved.clear();
        moved.reserve(reserve(self.captured_sizes.1));
        #[cfg(debug_assertions)]
        check_npc_marks_noted(&self.world, (since, since_tick));
        collect_npc_changes(&mut self.npc_changes, &self.world, since_tick, &mut records);
        collect_player_changes(&mut self.pc_changes, &self.world, since, &mut records, &mut moved);
        self.captured_sizes = (records.len(), moved.len());
        ShardCapture::Changes(ShardChanges {
            shard: self.capture_small(),
            departed,
            records,
            moved,
            ticks: tick.saturating_sub(since_tick),
            bounds: self.world.resource::<Rules>().0.bounds,
        })
    }

    /// Whether the next [`Shard::capture_changes`] copies everything: the shard's first, the
    /// first after [`Shard::reset_capture`], or one after bevy's change ticks stopped comparing.
    pub(crate) fn next_capture_whole(&self) -> bool {
        // `increment_change_tick` hands the capture the current change tick.
        let now = self.world.read_change_tick();
        self.captured_at.is_none_or(|(since, _)| too_old(now, since))
    }

    /// Takes a spare pair of lists from `spare` for the next capture of changes, unless it holds
    /// one already.
    pub(crate) fn take_spare_lists(&mut self, spare: &mut SpareLists) {
        if self.spare_lists.0.capacity() == 0 {
            self.spare_lists.0 = spare.records.pop().unwrap_or_default();
        }
        if self.spare_lists.1.capacity() == 0 {
            self.spare_lists.1 = spare.moved.pop().unwrap_or_default();
        }
    }

    /// Makes the next [`Shard::capture_changes`] whole (a capture was lost on the way).
    pub fn reset_capture(&mut self) {
        self.captured_at = None;
        self.world.resource_mut::<Departed>().ids.clear();
    }

    /// The shard's small state, without objects.
    fn capture_small(&self) -> ShardState {
        let spawners = self
            .world
            .resource::<Spawners>()
            .0
            .iter()
            .filter(|s| !s.pending.is_empty())
            .map(|s| SpawnerPending {
                id: s.id,
                due: s.pending.iter().copied().collect(),
            })
            .collect();
        let mut mail = self.world.resource::<Inbox>().mail.clone();
        mail.sort_unstable();
        ShardState {
            index: self.index,
            rng_state: self.world.resource::<ShardRng>().0.state,
            last_npc_id: self.world.resource::<IdAlloc>().next,
            spawners,
            mail,
            objects: Vec::new(),
        }
    }

    /// Replaces the shard's state with `state` (on a freshly built shard). The zone has already
    /// placed every object in the shard that owns its position; validation errors leave the shard
    /// unusable.
    pub(crate) fn restore(&mut self, state: ShardState) -> Result<(), RestoreError> {
        let kinds = self.world.resource::<Rules>().0.kinds.len();
        self.world.resource_mut::<ShardRng>().0.state = state.rng_state;
        self.world.resource_mut::<IdAlloc>().next = state.last_npc_id;
        {
            let mut spawners = self.world.resource_mut::<Spawners>();
            for s in spawners.0.iter_mut() {
                s.pending.clear();
            }
            for p in state.spawners {
                let Some(s) = spawners.0.iter_mut().find(|s| s.id == p.id) else {
                    return Err(RestoreError::UnknownSpawner {
                        shard: usize::from(self.index),
                        spawner: p.id,
                    });
                };
                s.pending = p.due.into_iter().collect();
            }
        }
        self.world.resource_mut::<Inbox>().mail = state.mail;
        let mut stats = ShardStats::default();
        stats.reset(self.index, 0, kinds);
        for rec in state.objects {
            if usize::from(rec.obj.kind) >= kinds {
                return Err(RestoreError::UnknownKind {
                    id: rec.obj.id,
                    kind: rec.obj.kind,
                });
            }
            stats.objects_by_kind[usize::from(rec.obj.kind)] += 1;
            // Arrived at the shard's current tick; a restored shard's first capture is whole anyway.
            let tick = self.world.resource::<Clock>().tick;
            rec.spawn(&mut self.world, tick);
        }
        stats.objects = stats.objects_by_kind.iter().sum();
        stats.players = stats.objects_by_kind[usize::from(PLAYER_KIND)];
        self.world.resource_mut::<Stats>().0 = stats;
        Ok(())
    }

    /// Sets the shard's clock to the tick its restored state is at (the next step's `prepare`
    /// sets it anyway): a capture before that step must know it, or the captures of changes
    /// after it would count the ticks since 0 and the mirror would move NPCs too far.
    pub(crate) fn restored_at(&mut self, tick: u64) {
        self.world.resource_mut::<Clock>().tick = tick;
    }

    /// Every object in the shard as plain data, sorted by id.
    pub fn objects(&mut self) -> Vec<ObjectRecord> {
        let mut v = self.objects_unsorted();
        v.sort_unstable_by_key(|r| r.obj.id);
        v
    }

    /// Every object as plain data, in storage order: the cheapest copy (snapshot capture runs on
    /// the tick thread; sorting is left to whoever encodes).
    pub fn objects_unsorted(&mut self) -> Vec<ObjectRecord> {
        let mut v = Vec::with_capacity(self.object_count() + 16);
        // `for_each` rather than `for`: bevy's fold walks each table without a per-item check.
        self.npc_query.iter(&self.world).for_each(|(o, p, vel, h, n)| {
            v.push(ObjectRecord {
                obj: *o,
                pos: p.0,
                vel: vel.0,
                health: *h,
                body: Body::Npc(*n),
            });
        });
        self.pc_query.iter(&self.world).for_each(|(o, p, vel, h, pl)| {
            v.push(ObjectRecord {
                obj: *o,
                pos: p.0,
                vel: vel.0,
                health: *h,
                body: Body::Player(*pl),
            });
        });
        v
    }

    /// Objects at the end of the last tick (the world also holds resources, so this is not its
    /// entity count).
    pub fn object_count(&self) -> usize {
        self.stats().objects as usize
    }

    /// Asks the Replicate stage to copy every object at the end of each tick from now on (or stops).
    pub fn set_replicate(&mut self, wanted: bool) {
        self.world.resource_mut::<crate::replicate::Replica>().wanted = wanted;
    }

    /// The objects the Replicate stage copied in the last tick that wanted a copy (in storage
    /// order); empty after a take.
    pub fn take_replica(&mut self) -> Vec<crate::replicate::Replicated> {
        std::mem::take(&mut self.world.resource_mut::<crate::replicate::Replica>().objects)
    }

    /// The schedule, for systems other crates add around or inside the Replicate, Persist and
    /// Telemetry stages (the server adds timing probes between stages). Added systems must not
    /// change game state, or replay would not reproduce it.
    pub fn schedule_mut(&mut self) -> &mut Schedule {
        &mut self.schedule
    }

    /// The world, for systems that other crates add to the Replicate, Persist and Telemetry
    /// stages, and for tests.
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

/// NPCs for a capture of changes: whole if they arrived or were written since the last capture
/// (their `Due` note, see `crate::capture`), else nothing (the mirror moves them). Reads one
/// component per NPC, the five others only for the ones copied whole. `for_each`: bevy's fold
/// walks each table without a per-item check (a third fewer instructions than a `for` loop, in
/// `capture_large` under callgrind).
fn collect_npc_changes(query: &mut QueryState<NpcCaptureQuery>, world: &World, since_tick: u64, records: &mut Vec<ObjectRecord>) {
    query.iter(world).for_each(|(o, p, v, h, n, d)| {
        if d.written_after(since_tick) {
            records.push(ObjectRecord {
                obj: *o,
                pos: p.0,
                vel: v.0,
                health: *h,
                body: Body::Npc(*n),
            });
        }
    });
}

/// Players for a capture of changes, by bevy's change ticks: the Input stage writes every
/// player's velocity and attack flag every tick, so in practice they all go whole.
fn collect_player_changes(
    query: &mut QueryState<PlayerChangeQuery>,
    world: &World,
    since: bevy_ecs::change_detection::Tick,
    records: &mut Vec<ObjectRecord>,
    moved: &mut Vec<(u64, Vec2)>,
) {
    for (o, p, v, h, b) in query.iter(world) {
        // `|`, not `||`: every tick is read anyway, and a branch per test costs more.
        if p.is_added_after(since) | v.is_changed_after(since) | h.is_changed_after(since) | b.is_changed_after(since) {
            records.push(ObjectRecord {
                obj: *o,
                pos: p.0,
                vel: v.0,
                health: *h,
                body: Body::Player(*b),
            });
        } else if v.0 != Vec2::ZERO || p.is_changed_after(since) {
            // `movement` moves objects with a velocity without marking them.
            moved.push((o.id, p.0));
        }
    }
}

/// Debug builds: every NPC that bevy marked as added or written since the last capture must
/// carry a write note as new, or the capture of changes would miss it. A writer that marks but
/// does not note is a bug in that writer (see `Due`).
#[cfg(debug_assertions)]
fn check_npc_marks_noted(world: &World, (since, since_tick): (bevy_ecs::change_detection::Tick, u64)) {
    let mut q = world.try_query::<NpcMarksQuery>().expect("NPC components are registered");
    for (o, p, v, h, n, d) in q.iter(world) {
        let marked = p.is_added_after(since)
            | p.is_changed_after(since)
            | v.is_changed_after(since)
            | h.is_changed_after(since)
            | n.is_changed_after(since);
        assert!(
            !marked || d.written_after(since_tick),
            "NPC {} was written (marked) since the last capture but its Due does not note it: every writer of an NPC must set Due.1 to the tick",
            o.id
        );
    }
}

fn record(o: &Obj, p: &Pos, v: &Vel, h: &Health, n: Option<&Npc>, pl: Option<&Player>) -> ObjectRecord {
    let body = match (n, pl) {
        (Some(n), _) => Body::Npc(*n),
        (None, Some(p)) => Body::Player(*p),
        (None, None) => unreachable!("every object is an NPC or a player"),
    };
    ObjectRecord {
        obj: *o,
        pos: p.0,
        vel: v.0,
        health: *h,
        body,
    }
}

fn new_npc(spec: &ZoneSpec, seed: u64, s: &SpawnerState, id: u64, pos: Vec2, tick: u64) -> ObjectRecord {
    let k = &spec.kinds[usize::from(s.kind)];
    let mut rng = DetRng::new(seed, id);
    let mind = match k.behaviour {
        Behaviour::Patrol => Mind::Patrol { leg: rng.below(4) as u8 },
        Behaviour::Wander | Behaviour::Idle => Mind::Pause {
            until: tick + rng.below(u64::from(k.pause_ticks_max) + 1),
        },
    };
    ObjectRecord {
        obj: Obj { id, kind: s.kind },
        pos,
        vel: Vec2::ZERO,
        health: Health {
            hp: k.hit_points,
            max: k.hit_points,
        },
        body: Body::Npc(Npc {
            spawner: s.id,
            home: pos,
            mind,
            rng,
            ready_at: 0,
        }),
    }
}

/// Where a player (re)appears: one of the zone's spawn points, chosen by player id, with a small
/// id-derived offset so that players do not stack.
pub fn player_spawn_point(spec: &ZoneSpec, player: PlayerId) -> Vec2 {
    let h = mix64(player);
    let base = spec.player_spawns[(h % spec.player_spawns.len() as u64) as usize];
    let jitter = |v: u64| (v % 4001) as i32 - 2000;
    spec.bounds.clamp(Vec2::new(base.x + jitter(h >> 16), base.y + jitter(h >> 40)))
}

// ---------------------------------------------------------------------------------------------
// Input stage

/// Removes leaving players, then spawns joining ones (an exclusive system: they exist for the
/// rest of this tick).
fn apply_joins_leaves(world: &mut World) {
    let (joins, leaves) = {
        let mut inbox = world.resource_mut::<Inbox>();
        (std::mem::take(&mut inbox.joins), std::mem::take(&mut inbox.leaves))
    };
    let mut n_leaves = 0;
    if !leaves.is_empty() {
        let mut q = world.query::<(Entity, &Player)>();
        let mut gone: Vec<(PlayerId, Entity)> = q
            .iter(world)
            .filter(|(_, p)| leaves.binary_search(&p.player).is_ok())
            .map(|(e, p)| (p.player, e))
            .collect();
        gone.sort_unstable_by_key(|g| g.0);
        for (player, e) in gone {
            world.despawn(e);
            world.resource_mut::<Departed>().note(player_object_id(player));
            n_leaves += 1;
        }
    }
    let spec = world.resource::<Rules>().0.clone();
    let tick = world.resource::<Clock>().tick;
    for &(player, pos) in &joins {
        ObjectRecord {
            obj: Obj {
                id: player_object_id(player),
                kind: PLAYER_KIND,
            },
            pos,
            vel: Vec2::ZERO,
            health: Health {
                hp: spec.player.hit_points,
                max: spec.player.hit_points,
            },
            body: Body::Player(Player {
                player,
                wish: Vec2::ZERO,
                attack: false,
                ready_at: 0,
                respawn_at: None,
            }),
        }
        .spawn(world, tick);
    }
    let mut stats = world.resource_mut::<Stats>();
    stats.0.joins += joins.len() as u32;
    stats.0.spawns += joins.len() as u32;
    stats.0.leaves += n_leaves;
    stats.0.despawns += n_leaves;
}

/// Applies this tick's inputs to their players, capping speed. A player without an input this
/// tick keeps walking the way it last asked (a lost packet does not stop it) but does not attack.
fn apply_inputs(mut players: Query<(&mut Player, &mut Vel)>, inbox: Res<Inbox>, rules: Res<Rules>, mut stats: ResMut<Stats>) {
    let speed = rules.0.player.speed_mm_per_tick;
    let mut matched = 0u32;
    for (mut p, mut vel) in &mut players {
        p.attack = false;
        if let Ok(i) = inbox.inputs.binary_search_by_key(&p.player, |i| i.player) {
            let input = inbox.inputs[i];
            matched += 1;
            let raw = Vec2::new(
                input.move_x.clamp(-MOVE_AXIS_MAX, MOVE_AXIS_MAX),
                input.move_y.clamp(-MOVE_AXIS_MAX, MOVE_AXIS_MAX),
            );
            let (wish, capped) = raw.cap_length(speed);
            stats.0.inputs_speed_capped += u32::from(capped);
            p.wish = wish;
            p.attack = input.attack;
        }
        vel.0 = if p.respawn_at.is_some() { Vec2::ZERO } else { p.wish };
    }
    stats.0.inputs_applied += matched;
    stats.0.inputs_unknown_player += inbox.inputs.len() as u32 - matched;
}

// ---------------------------------------------------------------------------------------------
// Simulate stage

/// Applies last tick's mail: damage to players (in sorted order), deaths to spawners.
fn deliver_mail(
    mut players: Query<(&mut Player, &mut Health, &mut Vel)>,
    mut inbox: ResMut<Inbox>,
    mut spawners: ResMut<Spawners>,
    clock: Res<Clock>,
    rules: Res<Rules>,
    mut stats: ResMut<Stats>,
) {
    let mut mail = std::mem::take(&mut inbox.mail);
    if mail.is_empty() {
        return;
    }
    mail.sort_unstable();
    let damaged = mail.iter().any(|m| matches!(m, Mail::Damage { .. }));
    if damaged {
        for (mut p, mut h, mut v) in &mut players {
            if p.respawn_at.is_some() {
                continue;
            }
            let start = mail.partition_point(|m| matches!(m, Mail::Damage { target, .. } if *target < p.player));
            for m in &mail[start..] {
                match *m {
                    Mail::Damage { target, amount, .. } if target == p.player => h.hp -= amount,
                    _ => break,
                }
            }
            if h.hp <= 0 {
                h.hp = 0;
                p.respawn_at = Some(clock.tick + u64::from(rules.0.player.respawn_delay_ticks));
                v.0 = Vec2::ZERO;
                stats.0.player_deaths += 1;
                stats.0.dead_players.push(p.player);
            }
        }
    }
    for m in &mail {
        if let Mail::Died { spawner } = *m
            && let Some(s) = spawners.0.iter_mut().find(|s| s.id == spawner)
        {
            s.pending.push_back(clock.tick + u64::from(s.respawn_delay_ticks));
        }
    }
    // Keep the allocation.
    mail.clear();
    inbox.mail = mail;
}

/// Dead players whose delay has passed come back at their spawn point with full health.
fn respawn_players(mut players: Query<(&mut Player, &mut Pos, &mut Health)>, clock: Res<Clock>, rules: Res<Rules>) {
    for (mut p, mut pos, mut h) in &mut players {
        if p.respawn_at.is_some_and(|t| t <= clock.tick) {
            p.respawn_at = None;
            p.wish = Vec2::ZERO;
            h.hp = h.max;
            pos.0 = player_spawn_point(&rules.0, p.player);
        }
    }
}

/// Players that asked to attack hit the nearest living NPC within range (ties to the lower id).
/// Attackers go in player-id order; an NPC at 0 hit points dies at once and its spawner is told.
fn player_attacks(
    mut commands: Commands,
    mut players: Query<(&Obj, &Pos, &mut Player), Without<Npc>>,
    mut npcs: Query<(Entity, &Obj, &Pos, &mut Health, &Npc, &mut Due)>,
    rules: Res<Rules>,
    clock: Res<Clock>,
    mut out: ResMut<Outbox>,
    mut stats: ResMut<Stats>,
    mut departed: ResMut<Departed>,
) {
    let tick = clock.tick;
    let p = &rules.0.player;
    let mut attackers: Vec<(PlayerId, Vec2)> = Vec::new();
    for (_, pos, mut pl) in &mut players {
        if pl.attack && pl.respawn_at.is_none() && pl.ready_at <= tick {
            pl.ready_at = tick + u64::from(p.attack_cooldown_ticks);
            attackers.push((pl.player, pos.0));
        }
    }
    if attackers.is_empty() {
        return;
    }
    attackers.sort_unstable_by_key(|a| a.0);
    let range2 = i64::from(p.attack_range_mm).pow(2);
    for (_, from) in attackers {
        stats.0.attacks += 1;
        let mut best: Option<(i64, u64, Entity)> = None;
        npcs.iter().for_each(|(e, o, pos, h, _, _)| {
            let d2 = pos.0.dist2(from);
            if h.hp > 0 && d2 <= range2 && best.is_none_or(|(bd, bid, _)| (d2, o.id) < (bd, bid)) {
                best = Some((d2, o.id, e));
            }
        });
        let Some((_, _, e)) = best else { continue };
        let Ok((e, o, _, mut h, npc, mut due)) = npcs.get_mut(e) else {
            continue;
        };
        h.hp -= p.damage;
        // The NPC's write note, for the capture of changes (see `Due`).
        due.bypass_change_detection().1 = tick;
        if h.hp <= 0 {
            commands.entity(e).despawn();
            departed.note(o.id);
            out.mail.push(Mail::Died { spawner: npc.spawner });
            stats.0.npc_deaths += 1;
            stats.0.despawns += 1;
        }
    }
}

/// Spawns replacements that are due, spawner by spawner, in id order.
fn run_spawners(
    mut commands: Commands,
    mut spawners: ResMut<Spawners>,
    mut rng: ResMut<ShardRng>,
    mut alloc: ResMut<IdAlloc>,
    info: Res<ShardInfo>,
    rules: Res<Rules>,
    clock: Res<Clock>,
    mut stats: ResMut<Stats>,
) {
    for s in spawners.0.iter_mut() {
        while s.pending.front().is_some_and(|&t| t <= clock.tick) {
            s.pending.pop_front();
            let pos = Vec2::new(
                rng.0.range_i32(s.area.min.x, s.area.max.x - 1),
                rng.0.range_i32(s.area.min.y, s.area.max.y - 1),
            );
            alloc.next += 1;
            new_npc(&rules.0, info.seed, s, alloc.next, pos, clock.tick).spawn_cmd(&mut commands, clock.tick);
            stats.0.spawns += 1;
        }
    }
}

/// Moves everything by its velocity and keeps it inside the zone. In the same pass (one visit per
/// object instead of three) it notes the objects now outside this shard's cell, for
/// `collect_migrants`, and counts the objects that stay by kind, for the Telemetry stage: nothing
/// spawns or despawns between here and the end of the tick except those migrants.
fn movement(
    mut q: Query<(Entity, &Obj, &mut Pos, &Vel)>,
    rules: Res<Rules>,
    info: Res<ShardInfo>,
    mut leaving: ResMut<Leaving>,
    mut stats: ResMut<Stats>,
) {
    let bounds = rules.0.bounds;
    let cell = info.cell;
    let leaving = &mut leaving.0;
    leaving.clear();
    let by_kind = &mut stats.0.objects_by_kind;
    // `for_each`, not a `for` loop: bevy's fold walks each table without a per-item check.
    q.iter_mut().for_each(|(e, obj, mut pos, vel)| {
        // Unmarked, to save a write per moving object: `capture_changes` counts every object with
        // a velocity as moved, so this is safe only because positions change here only when the
        // velocity is not zero. Any other writer of `Pos` or `Vel` must mark what it writes and,
        // on an NPC, note it in the NPC's `Due` (as `npc_ai` does), where `capture_changes` looks.
        let pos = pos.bypass_change_detection();
        let stays = if vel.0 == Vec2::ZERO {
            cell.contains(pos.0)
        } else {
            let to = pos.0.saturating_add(vel.0);
            if cell.contains(to) {
                // The cell lies inside the zone (`ZoneSpec::shard_rect` cuts the zone in cells):
                // nothing to clamp (the common case).
                pos.0 = to;
                true
            } else {
                pos.0 = bounds.clamp(to);
                cell.contains(pos.0)
            }
        };
        if stays {
            by_kind[usize::from(obj.kind)] += 1;
        } else {
            leaving.push(e);
        }
    });
}

/// Objects now outside this shard's cell (found by `movement`, in storage order) leave the world
/// and go to the outbox; the zone moves them to their new shard at the tick boundary.
fn collect_migrants(
    mut commands: Commands,
    leaving: Res<Leaving>,
    full: Query<RecordQuery>,
    mut out: ResMut<Outbox>,
    mut stats: ResMut<Stats>,
    mut departed: ResMut<Departed>,
) {
    for &e in &leaving.0 {
        let Ok((e, o, p, v, h, n, pl)) = full.get(e) else { continue };
        out.migrants.push(record(o, p, v, h, n, pl));
        commands.entity(e).despawn();
        departed.note(o.id);
        stats.0.migrations_out += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Telemetry stage

/// Totals of the per-kind counts `movement` made (the population at the end of the tick).
fn count_objects(mut stats: ResMut<Stats>) {
    let s = &mut stats.0;
    s.objects = s.objects_by_kind.iter().sum();
    s.players = s.objects_by_kind[usize::from(PLAYER_KIND)];
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Serial, Zone};

    /// `next_capture_whole` foresees what `capture_changes` does: whole at first, after a reset,
    /// and once bevy's change ticks no longer compare, to the tick.
    #[test]
    fn the_next_capture_is_whole_first_after_a_reset_and_once_change_ticks_stop_comparing() {
        let spec = ZoneSpec::from_toml_str("assets/zones/demo.toml", include_str!("../../assets/zones/demo.toml")).unwrap();
        let mut zone = Zone::new(Arc::new(spec), 3).unwrap();
        zone.step(&Serial);
        let shard = &mut zone.shards_mut()[0];
        let whole = |c: ShardCapture| matches!(c, ShardCapture::Full(_));
        assert!(shard.next_capture_whole());
        assert!(whole(shard.capture_changes()));
        assert!(!shard.next_capture_whole());
        assert!(!whole(shard.capture_changes()));
        shard.reset_capture();
        assert!(shard.next_capture_whole());
        assert!(whole(shard.capture_changes()));
        // The capture took one change tick; this many more is the most bevy compares across.
        for _ in 1..CAPTURE_GAP_MAX {
            shard.world.increment_change_tick();
        }
        assert!(!shard.next_capture_whole());
        shard.world.increment_change_tick();
        assert!(shard.next_capture_whole());
        assert!(whole(shard.capture_changes()));
        assert!(!shard.next_capture_whole());
    }
}
