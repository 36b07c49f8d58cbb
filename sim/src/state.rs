//! A zone's complete state as plain data: what a snapshot holds, and what a restore rebuilds.
//!
//! [`ZoneState`] holds everything that can influence the future: every object, each shard's
//! generator, id allocator, pending respawns and undelivered mail, and the tick. A zone restored
//! from it continues exactly as the original would have (the storage order inside the restored
//! worlds differs, which is why nothing in a shard may depend on storage order). The input queue
//! is not part of it: inputs after the snapshot come from the journal.
//!
//! Encoding, compression and IO are the persistence crate's business; this module only copies.

use crate::object::ObjectRecord;
use crate::shard::Mail;

/// One spawner's pending respawns (ticks at which a replacement is due, oldest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnerPending {
    /// Zone-wide spawner id.
    pub id: u32,
    pub due: Vec<u64>,
}

/// One shard's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardState {
    pub index: u16,
    pub rng_state: u64,
    /// The last NPC id this shard handed out.
    pub last_npc_id: u64,
    /// Only spawners with something pending are listed.
    pub spawners: Vec<SpawnerPending>,
    /// Mail waiting for the next tick, sorted.
    pub mail: Vec<Mail>,
    /// Objects. `Zone::capture` leaves them in storage order (cheap on the tick thread);
    /// [`ZoneState::normalize`] sorts them by id, which encoders and comparisons want.
    pub objects: Vec<ObjectRecord>,
}

/// A whole zone's state at the end of `tick`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneState {
    pub tick: u64,
    pub seed: u64,
    pub shards: Vec<ShardState>,
}

impl ZoneState {
    /// Sorts every shard's objects by id: the canonical form. Two captures of equal zones are
    /// equal after this.
    pub fn normalize(&mut self) {
        for s in &mut self.shards {
            s.objects.sort_unstable_by_key(|o| o.obj.id);
        }
    }

    pub fn object_count(&self) -> usize {
        self.shards.iter().map(|s| s.objects.len()).sum()
    }
}

/// A state that does not fit the zone it is restored into.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("the state has {got} shards but the zone file defines {expected}")]
    ShardCount { expected: usize, got: usize },
    #[error("shard {shard} names spawner {spawner}, which that shard does not have in this zone file")]
    UnknownSpawner { shard: usize, spawner: u32 },
    #[error("object {id} has kind {kind}, which this zone file does not define")]
    UnknownKind { id: u64, kind: u16 },
    #[error("object id {id} appears twice")]
    DuplicateId { id: u64 },
    #[error("tick {tick} is beyond the largest tick a zone may reach")]
    TickOutOfRange { tick: u64 },
    #[error("object {id} is a player whose object id does not match its player id")]
    BadPlayerObject { id: u64 },
}
