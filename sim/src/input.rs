//! The input API: player joins, leaves and per-tick inputs, validated and queued per tick.
//!
//! [`InputQueue`] takes submissions from any source (the network, scripted players, a journal) and
//! hands the simulation one canonical, sorted [`TickBatch`] per tick. Validation that depends only
//! on the queue (stale or far-future ticks, unknown players, duplicates) happens here and is
//! counted by reason; speed capping happens when the input is applied, because it is part of the
//! game rules and must replay identically. This module never reads a clock: "now" is the tick the
//! caller passes in.

use std::collections::{BTreeMap, BTreeSet};

/// A player's id, assigned by whoever authenticates players (a token's subject). Never 0.
pub type PlayerId = u64;

/// One player's intent for one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlayerInput {
    pub player: PlayerId,
    /// The tick this input is for.
    pub tick: u64,
    /// Desired velocity in mm per tick; capped to the player's speed when applied.
    pub move_x: i32,
    pub move_y: i32,
    /// Attack the nearest NPC in range this tick.
    pub attack: bool,
}

/// Everything applied at one tick, in canonical order: joins, then leaves, then inputs, each
/// sorted by player id. This is what the journal records and what replay feeds back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickBatch {
    pub tick: u64,
    pub joins: Vec<PlayerId>,
    pub leaves: Vec<PlayerId>,
    pub inputs: Vec<PlayerInput>,
}

impl TickBatch {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty() && self.inputs.is_empty()
    }

    /// Puts the batch in canonical order and removes duplicates (first input per player wins).
    pub fn canonicalize(&mut self) {
        self.joins.sort_unstable();
        self.joins.dedup();
        self.leaves.sort_unstable();
        self.leaves.dedup();
        self.inputs.sort_by_key(|i| i.player);
        self.inputs.dedup_by_key(|i| i.player);
    }
}

/// Why a submission was refused. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputRefusal {
    /// The player is not in the zone (and not about to join).
    UnknownPlayer,
    /// The input targets a tick that has already run.
    StaleTick,
    /// The input targets a tick further ahead than the zone's `input_lead_ticks_max`.
    FutureTick,
    /// The player already has an input queued for that tick.
    Duplicate,
    /// A join for a player who is already in the zone or joining.
    AlreadyJoined,
    /// A join when the zone already holds `max_players`.
    ZoneFull,
    /// The per-tick input queue is full.
    QueueFull,
    /// A join while the zone is draining for shutdown.
    Draining,
    /// A join with a player id outside 1..2^63 (the top bit marks player object ids).
    InvalidPlayerId,
}

impl InputRefusal {
    pub const ALL: [InputRefusal; 9] = [
        InputRefusal::UnknownPlayer,
        InputRefusal::StaleTick,
        InputRefusal::FutureTick,
        InputRefusal::Duplicate,
        InputRefusal::AlreadyJoined,
        InputRefusal::ZoneFull,
        InputRefusal::QueueFull,
        InputRefusal::Draining,
        InputRefusal::InvalidPlayerId,
    ];

    /// A stable snake_case name, used as a metric label and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            InputRefusal::UnknownPlayer => "unknown_player",
            InputRefusal::StaleTick => "stale_tick",
            InputRefusal::FutureTick => "future_tick",
            InputRefusal::Duplicate => "duplicate",
            InputRefusal::AlreadyJoined => "already_joined",
            InputRefusal::ZoneFull => "zone_full",
            InputRefusal::QueueFull => "queue_full",
            InputRefusal::Draining => "draining",
            InputRefusal::InvalidPlayerId => "invalid_player_id",
        }
    }
}

impl std::fmt::Display for InputRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusal counts, indexed like [`InputRefusal::ALL`]. Cumulative since the queue was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusalCounts(pub [u64; 9]);

impl RefusalCounts {
    pub fn get(&self, r: InputRefusal) -> u64 {
        self.0[r as usize]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (InputRefusal, u64)> + '_ {
        InputRefusal::ALL.iter().map(|&r| (r, self.get(r)))
    }
}

/// Player ids are 1..2^63: 0 means "nobody" and the top bit marks player object ids.
pub const fn is_valid_player_id(player: PlayerId) -> bool {
    player != 0 && player < (1 << 63)
}

/// The largest tick a zone may reach (far beyond any real run: 2^62 ticks at 60 Hz is 2.4 billion
/// years). Keeps every `tick + delay` sum in the simulation far from overflow.
pub const TICK_MAX: u64 = 1 << 62;

/// Input velocities are clamped to this many mm per tick per axis before the speed cap, so the
/// cap's arithmetic cannot overflow whatever a client sends.
pub const MOVE_AXIS_MAX: i32 = 1 << 20;

/// Most inputs held for future ticks at once, over all ticks and players.
pub const QUEUED_INPUTS_MAX: usize = 1 << 20;

/// Inputs, joins and leaves waiting for their tick. Owned by the zone (see `Zone::submit_input`),
/// which knows who is in the zone.
#[derive(Debug, Default)]
pub struct InputQueue {
    inputs: BTreeMap<u64, BTreeMap<PlayerId, PlayerInput>>,
    queued: usize,
    joins: BTreeSet<PlayerId>,
    leaves: BTreeSet<PlayerId>,
    refusals: RefusalCounts,
}

impl InputQueue {
    /// Queues an input. `next_tick` is the next tick the zone will run; `present` says whether
    /// the player is in the zone or joining; `lead_max` is the zone's `input_lead_ticks_max`.
    pub fn submit(&mut self, input: PlayerInput, next_tick: u64, present: bool, lead_max: u32) -> Result<(), InputRefusal> {
        let r = self.check(input, next_tick, present, lead_max);
        if let Err(reason) = r {
            self.refusals.0[reason as usize] += 1;
        }
        r
    }

    fn check(&mut self, input: PlayerInput, next_tick: u64, present: bool, lead_max: u32) -> Result<(), InputRefusal> {
        if !present || self.leaves.contains(&input.player) {
            return Err(InputRefusal::UnknownPlayer);
        }
        if input.tick < next_tick {
            return Err(InputRefusal::StaleTick);
        }
        if input.tick > next_tick + u64::from(lead_max) {
            return Err(InputRefusal::FutureTick);
        }
        if self.queued >= QUEUED_INPUTS_MAX {
            return Err(InputRefusal::QueueFull);
        }
        // One walk of the tick's map (about a player's worth of inputs a tick), not a lookup and
        // then an insertion.
        match self.inputs.entry(input.tick).or_default().entry(input.player) {
            std::collections::btree_map::Entry::Occupied(_) => Err(InputRefusal::Duplicate),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(input);
                self.queued += 1;
                Ok(())
            }
        }
    }

    /// Counts a refusal decided by the caller (e.g. a join while draining).
    pub fn count_refusal(&mut self, reason: InputRefusal) {
        self.refusals.0[reason as usize] += 1;
    }

    /// Queues a join for the next tick. `present` says whether the player is already in the zone;
    /// `players` is how many are in the zone now.
    pub fn join(&mut self, player: PlayerId, present: bool, players: usize, max_players: u32) -> Result<(), InputRefusal> {
        let r = if !is_valid_player_id(player) {
            Err(InputRefusal::InvalidPlayerId)
        } else if (present && !self.leaves.contains(&player)) || self.joins.contains(&player) {
            Err(InputRefusal::AlreadyJoined)
        } else if players + self.joins.len() >= max_players as usize {
            Err(InputRefusal::ZoneFull)
        } else {
            self.joins.insert(player);
            Ok(())
        };
        if let Err(reason) = r {
            self.refusals.0[reason as usize] += 1;
        }
        r
    }

    /// Queues a leave for the next tick. Leaving a player who is only joining cancels the join.
    pub fn leave(&mut self, player: PlayerId, present: bool) -> Result<(), InputRefusal> {
        if self.joins.remove(&player) {
            return Ok(());
        }
        if !present {
            self.refusals.0[InputRefusal::UnknownPlayer as usize] += 1;
            return Err(InputRefusal::UnknownPlayer);
        }
        self.leaves.insert(player);
        Ok(())
    }

    pub fn is_joining(&self, player: PlayerId) -> bool {
        self.joins.contains(&player)
    }

    /// Takes everything due at `tick`, in canonical order, and drops anything older.
    pub fn take_batch(&mut self, tick: u64) -> TickBatch {
        let mut batch = TickBatch {
            tick,
            ..TickBatch::default()
        };
        batch.joins = std::mem::take(&mut self.joins).into_iter().collect();
        batch.leaves = std::mem::take(&mut self.leaves).into_iter().collect();
        while let Some(entry) = self.inputs.first_entry() {
            if *entry.key() > tick {
                break;
            }
            let due = *entry.key() == tick;
            let slot = entry.remove();
            self.queued -= slot.len();
            if due {
                // A player who leaves this tick sends nothing more.
                batch.inputs = slot
                    .into_values()
                    .filter(|i| batch.leaves.binary_search(&i.player).is_err())
                    .collect();
            }
        }
        batch
    }

    pub fn refusals(&self) -> RefusalCounts {
        self.refusals
    }

    /// Inputs waiting for future ticks.
    pub fn queued_inputs(&self) -> usize {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(player: u64, tick: u64) -> PlayerInput {
        PlayerInput {
            player,
            tick,
            move_x: 1,
            move_y: 0,
            attack: false,
        }
    }

    #[test]
    fn refuses_by_reason_and_counts() {
        let mut q = InputQueue::default();
        assert_eq!(q.submit(input(1, 10), 10, false, 5), Err(InputRefusal::UnknownPlayer));
        assert_eq!(q.submit(input(1, 9), 10, true, 5), Err(InputRefusal::StaleTick));
        assert_eq!(q.submit(input(1, 16), 10, true, 5), Err(InputRefusal::FutureTick));
        assert_eq!(q.submit(input(1, 15), 10, true, 5), Ok(()));
        assert_eq!(q.submit(input(1, 15), 10, true, 5), Err(InputRefusal::Duplicate));
        let c = q.refusals();
        assert_eq!(c.total(), 4);
        assert_eq!(c.get(InputRefusal::FutureTick), 1);
    }

    #[test]
    fn batches_are_sorted_and_old_inputs_dropped() {
        let mut q = InputQueue::default();
        for p in [5, 3, 9] {
            q.submit(input(p, 12), 10, true, 5).unwrap();
        }
        q.submit(input(1, 11), 10, true, 5).unwrap();
        let b = q.take_batch(12);
        assert_eq!(b.inputs.iter().map(|i| i.player).collect::<Vec<_>>(), vec![3, 5, 9]);
        assert_eq!(q.queued_inputs(), 0);
    }

    #[test]
    fn join_rules() {
        let mut q = InputQueue::default();
        assert_eq!(q.join(7, false, 0, 2), Ok(()));
        assert_eq!(q.join(7, false, 0, 2), Err(InputRefusal::AlreadyJoined));
        assert_eq!(q.join(8, false, 1, 2), Err(InputRefusal::ZoneFull));
        assert_eq!(q.join(0, false, 0, 2), Err(InputRefusal::InvalidPlayerId));
        assert_eq!(q.join(1 << 63, false, 0, 2), Err(InputRefusal::InvalidPlayerId));
        q.leave(7, false).unwrap();
        assert!(q.take_batch(1).joins.is_empty());
    }
}
