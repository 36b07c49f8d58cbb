//! # zone-sim: the deterministic core of the zone server
//!
//! A zone's state is a pure function of (zone file, seed, inputs). This crate holds that function:
//! a [`Zone`] of [`Shard`]s, each a `bevy_ecs` World ticked by a Schedule whose stages run in the
//! order Input → Simulate → Replicate → Persist → Telemetry ([`Stage`]).
//!
//! **Architecture invariant: this crate does no IO.** It knows nothing about sockets, files, wall
//! time, threads, tokio or OS randomness, and never iterates a `HashMap`/`HashSet`. Time is the
//! tick number the caller advances; randomness comes from [`rng::DetRng`] seeded from the zone
//! seed and stable ids; positions are integer millimetres ([`units`]); objects have stable `u64`
//! ids ([`object`]); inputs are applied in player-id order ([`input`]). Parallelism is the
//! caller's business: it passes a [`ShardExecutor`]. `tests/tests/guard.rs` enforces all of this.
//!
//! Entry points: [`ZoneSpec::from_toml_str`] to load a zone file's text, [`Zone::new`], then
//! [`Zone::join`] / [`Zone::submit_input`] / [`Zone::step`] and [`Zone::hash`].

// bevy systems take their data as parameters; eight is normal for a system, not a smell.
#![allow(clippy::too_many_arguments)]

pub mod behaviour;
pub mod capture;
pub mod input;
pub mod object;
pub mod replicate;
pub mod rng;
pub mod scripted;
pub mod shard;
pub mod state;
pub mod stats;
pub mod units;
pub mod zone;
pub mod zone_file;

pub use capture::{MirrorError, ShardCapture, ShardChanges, SpareLists, ZoneCapture, ZoneMirror};
pub use input::{InputRefusal, PlayerId, PlayerInput, RefusalCounts, TickBatch};
pub use object::ObjectRecord;
pub use replicate::Replicated;
pub use scripted::ScriptedPlayers;
pub use shard::{Shard, Stage};
pub use state::{RestoreError, ShardState, ZoneState};
pub use stats::ShardStats;
pub use zone::{Phase, Serial, ShardExecutor, TotalStats, Zone, ZoneError, ZoneHash};
pub use zone_file::{ZoneFileError, ZoneSpec};
