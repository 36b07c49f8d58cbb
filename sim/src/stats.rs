//! Per-shard statistics: plain numbers the simulation returns after every tick.
//!
//! The simulation fills these in; it never times anything (it has no clock) and never exports
//! anything. The server measures each shard's tick duration around `Shard::step`, and telemetry
//! turns both into metrics and logs.

/// What happened in one shard during one tick. Counts are for that tick only, except
/// `objects_by_kind`, `objects` and `players`, which are the population at the end of the tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u16,
    pub tick: u64,
    /// Population by kind id (index 0 is players), after migration.
    pub objects_by_kind: Vec<u32>,
    pub objects: u32,
    pub players: u32,
    /// Objects created (NPC spawns and player joins) and removed (deaths and leaves).
    pub spawns: u32,
    pub despawns: u32,
    pub npc_deaths: u32,
    pub player_deaths: u32,
    pub migrations_in: u32,
    pub migrations_out: u32,
    pub joins: u32,
    pub leaves: u32,
    pub inputs_applied: u32,
    /// Inputs whose requested speed was over the player's speed and was capped.
    pub inputs_speed_capped: u32,
    /// Inputs for a player this shard does not hold (they left or died this tick).
    pub inputs_unknown_player: u32,
    pub attacks: u32,
    /// Players who died this tick (for the game-events log), unsorted.
    pub dead_players: Vec<u64>,
}

impl ShardStats {
    pub(crate) fn reset(&mut self, shard: u16, tick: u64, kinds: usize) {
        let mut dead = std::mem::take(&mut self.dead_players);
        dead.clear();
        *self = ShardStats {
            shard,
            tick,
            objects_by_kind: std::mem::take(&mut self.objects_by_kind),
            dead_players: dead,
            ..Default::default()
        };
        self.objects_by_kind.clear();
        self.objects_by_kind.resize(kinds, 0);
    }
}
