//! # zone-persistence: what the zone server keeps, and where
//!
//! - [`journal`]: the input journal's segment format, an append-only, versioned, checksummed,
//!   delta-coded record of everything a zone needs to be replayed.
//! - [`segments`]: the journal as a directory of segments, each starting at a snapshot tick: read
//!   in order as one stream, scanned, and planned for retention.
//! - [`snapshot`]: the snapshot codec. A zone's whole state ([`zone_sim::ZoneState`]) as a full
//!   snapshot or as a diff against the previous full one; versioned, lz4-compressed,
//!   checksummed; [`snapshot::recover`] rebuilds the newest state from a full and its diffs.
//! - [`store`]: where snapshots go, behind one object-safe trait, [`SnapshotStore`]:
//!   [`FileStore`] (a directory), [`RedisStore`] (the newest full and its diffs, with a TTL) and
//!   [`PostgresStore`] (an archive with retention, plus the `game_events` table).
//! - [`breaker`]: a circuit breaker with time passed in, to stop calling a backend that is down.
//! - [`events`]: [`GameEvent`] and the bounded [`EventQueue`] feeding the `game_events` table.
//!
//! **Architecture invariant:** this crate encodes, decodes, reads and writes; it never decides
//! when (the server chooses the cadence and calls it off the tick thread) and never owns a thread.
//! The async stores run on the caller's tokio runtime (a connection task, the blocking pool);
//! every network operation is bounded by a timeout.

pub mod breaker;
pub mod events;
pub mod journal;
pub mod segments;
pub mod snapshot;
pub mod store;

pub use breaker::{Admission, Breaker, BreakerConfig, BreakerState, Transition};
pub use events::{EventQueue, GameEvent};
pub use journal::{JournalError, JournalHeader, JournalWriter, Origin, Record, SegmentReader};
pub use segments::{JournalReader, Retention, SegmentInfo, plan_retention, scan_segment};
pub use snapshot::{
    MindPatch, ObjectPatch, Recovered, ShardDiff, Snapshot, SnapshotBody, SnapshotError, SnapshotKind, SnapshotMeta, ZoneDiff, apply_diff,
    decode, decode_full, decode_meta, encode_diff, encode_full, recover,
};
pub use store::{BoxFut, Chain, FileStore, PostgresStore, RedisStore, SnapshotStore, StoreError, StoredSnapshot};
