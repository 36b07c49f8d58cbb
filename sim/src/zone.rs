//! A zone: its shards, the tick boundary between them, and the input API.
//!
//! One tick is: take the tick's [`TickBatch`], route each join, leave and input to the shard that
//! owns the player, step every shard (in parallel, through a [`ShardExecutor`] the caller
//! provides), then, at the boundary, move migrants to their new shards and route mail, both in
//! object-id order. Because shards only exchange data at the boundary and the boundary sorts
//! everything, the result does not depend on which shard ran first or on how many threads ran
//! them. This module owns no threads and reads no clock.

use std::collections::VecDeque;
use std::sync::Arc;

use bevy_ecs::schedule::ScheduleBuildError;

use crate::capture::{SpareLists, ZoneCapture};
use crate::input::{InputQueue, InputRefusal, PlayerId, PlayerInput, RefusalCounts, TickBatch};
use crate::object::ObjectRecord;
use crate::rng::{fold, mix64};
use crate::shard::{Mail, PlayerView, Shard, SpawnerState, player_spawn_point};
use crate::state::{RestoreError, ZoneState};
use crate::stats::ShardStats;
use crate::zone_file::ZoneSpec;

/// Which part of a tick an executor is asked to run, so that callers can time the step alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `Shard::step`: the tick itself.
    Step,
    /// `Shard::state_hash`.
    Hash,
    /// A capture of changes (`Shard::capture_changes`, snapshots): small.
    Capture,
    /// A capture in which every shard, or some, copies everything (`Zone::capture`, and a capture
    /// of changes that is a shard's first, follows a reset, or comes after bevy's change ticks
    /// stopped comparing): several milliseconds of work.
    CaptureWhole,
}

/// Runs a function over every shard, in any order and on any threads. The simulation is
/// indifferent to both; implementations only decide how fast it goes.
pub trait ShardExecutor: Sync {
    fn run(&self, phase: Phase, shards: &mut [Shard], f: &(dyn Fn(&mut Shard) + Sync));
}

/// Runs shards one after another on the caller's thread.
pub struct Serial;

impl ShardExecutor for Serial {
    fn run(&self, _phase: Phase, shards: &mut [Shard], f: &(dyn Fn(&mut Shard) + Sync)) {
        shards.iter_mut().for_each(f);
    }
}

/// A zone's state hash at one tick: one value per shard and their combination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneHash {
    pub tick: u64,
    pub zone: u64,
    pub shards: Vec<u64>,
}

impl ZoneHash {
    pub fn combine(tick: u64, shards: Vec<u64>) -> ZoneHash {
        let mut h = fold(mix64(0x7a6f_6e65), tick);
        for &s in &shards {
            h = fold(h, s);
        }
        ZoneHash { tick, zone: h, shards }
    }

    /// The zone hash as 16 lowercase hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.zone)
    }

    /// The first shard whose hash differs from `other`'s.
    pub fn first_difference(&self, other: &ZoneHash) -> Option<usize> {
        (0..self.shards.len().max(other.shards.len())).find(|&i| self.shards.get(i) != other.shards.get(i))
    }
}

/// A running zone.
pub struct Zone {
    spec: Arc<ZoneSpec>,
    seed: u64,
    /// The last completed tick; 0 is the initial population.
    tick: u64,
    shards: Vec<Shard>,
    /// Which shard each zone-wide spawner lives in.
    spawner_shard: Vec<u16>,
    /// Players at the end of the last tick, sorted by id.
    players: Arc<[PlayerView]>,
    queue: InputQueue,
    last_stats_total: TotalStats,
    /// Lists of applied captures, to be filled again (see [`Zone::recycle_lists`]).
    spare_lists: SpareLists,
    /// Refuse new joins (the server is draining for shutdown). Not game state: refused joins never
    /// reach a batch, so replay does not need it.
    draining: bool,
}

/// Running totals over the zone's life (not part of the state hash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TotalStats {
    pub spawns: u64,
    pub despawns: u64,
    pub migrations: u64,
    pub npc_deaths: u64,
    pub player_deaths: u64,
}

/// A zone could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("the shard schedule is invalid: {0}")]
    Schedule(#[from] ScheduleBuildError),
    #[error("cannot restore: {0}")]
    Restore(#[from] RestoreError),
    #[error("batch for tick {got} given when tick {expected} is next")]
    WrongTick { expected: u64, got: u64 },
}

impl Zone {
    /// Builds the zone and spawns its initial population. Same spec and seed, same zone.
    pub fn new(spec: Arc<ZoneSpec>, seed: u64) -> Result<Zone, ZoneError> {
        let mut zone = Zone::empty(spec, seed)?;
        for shard in &mut zone.shards {
            shard.populate();
        }
        Ok(zone)
    }

    /// Rebuilds a zone from captured state. It continues exactly as the captured zone would have.
    pub fn restore(spec: Arc<ZoneSpec>, state: ZoneState) -> Result<Zone, ZoneError> {
        let mut zone = Zone::empty(spec, state.seed)?;
        if state.shards.len() != zone.shards.len() {
            return Err(RestoreError::ShardCount {
                expected: zone.shards.len(),
                got: state.shards.len(),
            }
            .into());
        }
        if state.tick > crate::input::TICK_MAX {
            return Err(RestoreError::TickOutOfRange { tick: state.tick }.into());
        }
        for s in &state.shards {
            for o in &s.objects {
                match o.body {
                    crate::object::Body::Npc(n) if n.spawner as usize >= zone.spawner_shard.len() => {
                        return Err(RestoreError::UnknownSpawner {
                            shard: usize::from(s.index),
                            spawner: n.spawner,
                        }
                        .into());
                    }
                    crate::object::Body::Player(p)
                        if crate::object::player_object_id(p.player) != o.obj.id || !crate::input::is_valid_player_id(p.player) =>
                    {
                        return Err(RestoreError::BadPlayerObject { id: o.obj.id }.into());
                    }
                    _ => {}
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut shards = state.shards;
        // Every object goes to the shard that owns its position (a captured state already has
        // them there; anything else is put right rather than trusted).
        let mut placed: Vec<Vec<crate::object::ObjectRecord>> = vec![Vec::new(); shards.len()];
        for s in &mut shards {
            for o in s.objects.drain(..) {
                if !seen.insert(o.obj.id) {
                    return Err(RestoreError::DuplicateId { id: o.obj.id }.into());
                }
                let p = zone.spec.bounds.clamp(o.pos);
                placed[zone.spec.shard_of(p)].push(crate::object::ObjectRecord { pos: p, ..o });
            }
        }
        for (i, (mut s, objects)) in shards.into_iter().zip(placed).enumerate() {
            s.index = i as u16;
            s.objects = objects;
            zone.shards[i].restore(s)?;
        }
        zone.tick = state.tick;
        for shard in &mut zone.shards {
            shard.restored_at(state.tick);
        }
        let mut players = Vec::new();
        for shard in &mut zone.shards {
            shard.players(&mut players);
        }
        players.sort_unstable_by_key(|p| p.player);
        zone.players = Arc::from(players);
        Ok(zone)
    }

    /// Copies the whole state out, shards in parallel on `exec`. Cheap enough for the tick thread;
    /// encoding it is not (do that elsewhere).
    pub fn capture(&mut self, exec: &dyn ShardExecutor) -> ZoneState {
        ZoneState {
            tick: self.tick,
            seed: self.seed,
            shards: self.capture_each(exec, Phase::CaptureWhole, Shard::capture),
        }
    }

    /// Copies what changed since the previous capture, shards in parallel on `exec` (see
    /// [`crate::capture`]): whole for each shard's first capture and after
    /// [`Zone::reset_capture`]. Apply the captures, in order and all of them, to a
    /// [`crate::ZoneMirror`] to get the [`ZoneState`] back.
    ///
    /// Lists handed back with [`Zone::recycle_lists`] are filled again here instead of fresh ones.
    pub fn capture_changes(&mut self, exec: &dyn ShardExecutor) -> ZoneCapture {
        // In reverse: lists come back in shard order and are taken from the end, so each shard
        // gets its own lists back (sized for it) when a whole set came back.
        for s in self.shards.iter_mut().rev() {
            s.take_spare_lists(&mut self.spare_lists);
        }
        let phase = if self.shards.iter().any(Shard::next_capture_whole) {
            Phase::CaptureWhole
        } else {
            Phase::Capture
        };
        ZoneCapture {
            tick: self.tick,
            seed: self.seed,
            shards: self.capture_each(exec, phase, Shard::capture_changes),
        }
    }

    /// Runs `capture` on every shard (in parallel on `exec`); the results in shard order.
    fn capture_each<T: Send>(&mut self, exec: &dyn ShardExecutor, phase: Phase, capture: fn(&mut Shard) -> T) -> Vec<T> {
        let slots: Vec<std::sync::Mutex<Option<T>>> = (0..self.shards.len()).map(|_| std::sync::Mutex::new(None)).collect();
        exec.run(phase, &mut self.shards, &|s: &mut Shard| {
            let c = capture(s);
            *slots[s.index()].lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        });
        slots
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every shard captured"))
            .collect()
    }

    /// Takes back the emptied lists of applied captures ([`crate::ZoneMirror::apply_keeping_lists`])
    /// for the next [`Zone::capture_changes`] to fill (see [`SpareLists`]). Keeps at most one pair
    /// per shard; the rest is freed.
    pub fn recycle_lists(&mut self, lists: SpareLists) {
        let n = self.shards.len();
        let spare = &mut self.spare_lists;
        spare.records.extend(lists.records.into_iter().filter(|v| v.capacity() > 0));
        spare.records.truncate(n);
        spare.moved.extend(lists.moved.into_iter().filter(|v| v.capacity() > 0));
        spare.moved.truncate(n);
    }

    /// Makes the next [`Zone::capture_changes`] whole: call it when a capture did not reach the
    /// mirror (dropped, or refused by it).
    pub fn reset_capture(&mut self) {
        for s in &mut self.shards {
            s.reset_capture();
        }
    }

    fn empty(spec: Arc<ZoneSpec>, seed: u64) -> Result<Zone, ZoneError> {
        let n = spec.shard_count();
        let mut per_shard: Vec<Vec<SpawnerState>> = vec![Vec::new(); n];
        let mut spawner_shard = Vec::new();
        for s in &spec.spawners {
            for (shard, area, count) in split_spawner(&spec, s.area, s.count) {
                per_shard[shard].push(SpawnerState {
                    id: spawner_shard.len() as u32,
                    kind: s.kind,
                    area,
                    count,
                    respawn_delay_ticks: s.respawn_delay_ticks,
                    pending: VecDeque::new(),
                });
                spawner_shard.push(shard as u16);
            }
        }
        let mut shards = Vec::with_capacity(n);
        for (i, sp) in per_shard.into_iter().enumerate() {
            let mut shard = Shard::new(spec.clone(), i, seed, sp)?;
            shard.prepare(0, Vec::new(), Vec::new(), Vec::new(), Arc::from([]));
            shards.push(shard);
        }
        Ok(Zone {
            spec,
            seed,
            tick: 0,
            shards,
            spawner_shard,
            players: Arc::from([]),
            queue: InputQueue::default(),
            last_stats_total: TotalStats::default(),
            spare_lists: SpareLists::default(),
            draining: false,
        })
    }

    pub fn spec(&self) -> &Arc<ZoneSpec> {
        &self.spec
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The last completed tick (0 before the first step).
    pub fn tick(&self) -> u64 {
        self.tick
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn shards_mut(&mut self) -> &mut [Shard] {
        &mut self.shards
    }

    /// Players at the end of the last tick, sorted by id.
    pub fn players(&self) -> &[PlayerView] {
        &self.players
    }

    fn is_present(&self, player: PlayerId) -> bool {
        self.players.binary_search_by_key(&player, |p| p.player).is_ok()
    }

    /// Starts (or stops) refusing joins with [`InputRefusal::Draining`].
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Asks for `player` to join at the next tick.
    pub fn join(&mut self, player: PlayerId) -> Result<(), InputRefusal> {
        if self.draining {
            self.queue.count_refusal(InputRefusal::Draining);
            return Err(InputRefusal::Draining);
        }
        let present = self.is_present(player);
        self.queue.join(player, present, self.players.len(), self.spec.max_players)
    }

    /// Asks for `player` to leave at the next tick.
    pub fn leave(&mut self, player: PlayerId) -> Result<(), InputRefusal> {
        let present = self.is_present(player);
        self.queue.leave(player, present)
    }

    /// Queues an input for the tick it names. Refusals are counted by reason.
    pub fn submit_input(&mut self, input: PlayerInput) -> Result<(), InputRefusal> {
        let present = self.is_present(input.player) || self.queue.is_joining(input.player);
        self.queue.submit(input, self.tick + 1, present, self.spec.input_lead_ticks_max)
    }

    /// Refusals since the zone was built.
    pub fn refusals(&self) -> RefusalCounts {
        self.queue.refusals()
    }

    /// Inputs waiting for future ticks.
    pub fn queued_inputs(&self) -> usize {
        self.queue.queued_inputs()
    }

    /// Runs the next tick with what the input queue holds for it, and returns what was applied
    /// (the journal records exactly this).
    pub fn step(&mut self, exec: &dyn ShardExecutor) -> TickBatch {
        let batch = self.queue.take_batch(self.tick + 1);
        self.run_tick(&batch, exec);
        batch
    }

    /// Runs the next tick with a given batch (replay). The batch must be for `tick() + 1`.
    pub fn step_batch(&mut self, batch: &TickBatch, exec: &dyn ShardExecutor) -> Result<(), ZoneError> {
        if batch.tick != self.tick + 1 || batch.tick > crate::input::TICK_MAX {
            return Err(ZoneError::WrongTick {
                expected: self.tick + 1,
                got: batch.tick,
            });
        }
        let mut b = batch.clone();
        b.canonicalize();
        self.run_tick(&b, exec);
        Ok(())
    }

    fn run_tick(&mut self, batch: &TickBatch, exec: &dyn ShardExecutor) {
        let tick = self.tick + 1;
        let n = self.shards.len();
        let mut joins: Vec<Vec<(PlayerId, crate::units::Vec2)>> = vec![Vec::new(); n];
        let mut leaves: Vec<Vec<PlayerId>> = vec![Vec::new(); n];
        let mut inputs: Vec<Vec<PlayerInput>> = vec![Vec::new(); n];
        let mut joined = 0usize;
        // Players leaving this tick are gone before joins are placed (leave and rejoin is allowed).
        let leaving = |p: &PlayerId| batch.leaves.binary_search(p).is_ok();
        let staying = self.players.iter().filter(|v| !leaving(&v.player)).count();
        for &p in &batch.joins {
            // Joins were checked when queued; a replayed batch gets the same checks here.
            if !crate::input::is_valid_player_id(p)
                || (self.is_present(p) && !leaving(&p))
                || staying + joined >= self.spec.max_players as usize
            {
                continue;
            }
            joined += 1;
            let at = player_spawn_point(&self.spec, p);
            joins[self.spec.shard_of(at)].push((p, at));
        }
        let shard_of_player = |p: PlayerId| -> Option<usize> {
            if batch.joins.binary_search(&p).is_ok() {
                return Some(self.spec.shard_of(player_spawn_point(&self.spec, p)));
            }
            match self.players.binary_search_by_key(&p, |v| v.player) {
                Ok(i) => Some(usize::from(self.players[i].shard)),
                Err(_) => None,
            }
        };
        for &p in &batch.leaves {
            if let Ok(i) = self.players.binary_search_by_key(&p, |v| v.player) {
                leaves[usize::from(self.players[i].shard)].push(p);
            }
        }
        for i in &batch.inputs {
            // Unknown players go to shard 0, which counts them as unknown.
            inputs[shard_of_player(i.player).unwrap_or(0)].push(*i);
        }
        for (i, shard) in self.shards.iter_mut().enumerate() {
            shard.prepare(
                tick,
                std::mem::take(&mut joins[i]),
                std::mem::take(&mut leaves[i]),
                std::mem::take(&mut inputs[i]),
                self.players.clone(),
            );
        }

        exec.run(Phase::Step, &mut self.shards, &|s: &mut Shard| s.step());

        // The boundary: migrants first (so mail can find players where they now are), both sorted.
        let mut migrants: Vec<ObjectRecord> = Vec::new();
        let mut mail: Vec<Mail> = Vec::new();
        for shard in &mut self.shards {
            let mut out = shard.take_outbox();
            migrants.append(&mut out.migrants);
            mail.append(&mut out.mail);
        }
        migrants.sort_unstable_by_key(|r| r.obj.id);
        let migrated = migrants.len() as u64;
        for rec in migrants {
            let to = self.spec.shard_of(rec.pos);
            self.shards[to].receive_migrant(rec);
        }

        let mut players = Vec::with_capacity(self.players.len() + joined);
        for shard in &mut self.shards {
            shard.players(&mut players);
        }
        players.sort_unstable_by_key(|p| p.player);
        self.players = Arc::from(players);

        mail.sort_unstable();
        for m in mail {
            let to = match m {
                Mail::Damage { target, .. } => match self.players.binary_search_by_key(&target, |p| p.player) {
                    Ok(i) => usize::from(self.players[i].shard),
                    Err(_) => continue, // the player left
                },
                Mail::Died { spawner } => usize::from(self.spawner_shard[spawner as usize]),
            };
            self.shards[to].push_mail(m);
        }

        let t = &mut self.last_stats_total;
        t.migrations += migrated;
        for s in self.shards.iter().map(|s| s.stats()) {
            t.spawns += u64::from(s.spawns);
            t.despawns += u64::from(s.despawns);
            t.npc_deaths += u64::from(s.npc_deaths);
            t.player_deaths += u64::from(s.player_deaths);
        }
        self.tick = tick;
    }

    /// This tick's statistics, one per shard.
    pub fn shard_stats(&self) -> impl Iterator<Item = &ShardStats> {
        self.shards.iter().map(|s| s.stats())
    }

    /// Totals since the zone was built.
    pub fn totals(&self) -> TotalStats {
        self.last_stats_total
    }

    /// The state hash of every shard and of the zone, at the last completed tick.
    pub fn hash(&mut self, exec: &dyn ShardExecutor) -> ZoneHash {
        let n = self.shards.len();
        let out: Vec<std::sync::atomic::AtomicU64> = (0..n).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        exec.run(Phase::Hash, &mut self.shards, &|s: &mut Shard| {
            out[s.index()].store(s.state_hash(), std::sync::atomic::Ordering::Relaxed);
        });
        ZoneHash::combine(self.tick, out.into_iter().map(|a| a.into_inner()).collect())
    }

    /// Every object in the zone as plain data, sorted by id.
    pub fn objects(&mut self) -> Vec<ObjectRecord> {
        let mut v: Vec<ObjectRecord> = self.shards.iter_mut().flat_map(|s| s.objects()).collect();
        v.sort_unstable_by_key(|r| r.obj.id);
        v
    }

    /// Asks every shard's Replicate stage to copy its objects at the end of each tick (or stops).
    pub fn set_replicate(&mut self, wanted: bool) {
        for s in &mut self.shards {
            s.set_replicate(wanted);
        }
    }

    /// Each shard's Replicate-stage copy from the last tick that wanted one, by shard index.
    pub fn take_replicas(&mut self) -> Vec<Vec<crate::replicate::Replicated>> {
        self.shards.iter_mut().map(Shard::take_replica).collect()
    }

    pub fn object_count(&self) -> usize {
        self.shards.iter().map(|s| s.object_count()).sum()
    }
}

/// Splits a spawner's area over the shard cells it touches, giving each cell a share of the count
/// proportional to its part of the area (largest remainder; ties to the lower shard index).
fn split_spawner(spec: &ZoneSpec, area: crate::units::Rect, count: u64) -> Vec<(usize, crate::units::Rect, u64)> {
    let parts: Vec<(usize, crate::units::Rect)> = (0..spec.shard_count())
        .filter_map(|i| spec.shard_rect(i).intersect(&area).map(|r| (i, r)))
        .collect();
    let total: u128 = parts.iter().map(|(_, r)| r.area() as u128).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut shares: Vec<(usize, crate::units::Rect, u64, u128)> = parts
        .iter()
        .map(|&(i, r)| {
            let num = u128::from(count) * r.area() as u128;
            (i, r, (num / total) as u64, num % total)
        })
        .collect();
    let mut left = count - shares.iter().map(|s| s.2).sum::<u64>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| shares[b].3.cmp(&shares[a].3).then(a.cmp(&b)));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].2 += 1;
        left -= 1;
    }
    shares.into_iter().map(|(i, r, c, _)| (i, r, c)).collect()
}
