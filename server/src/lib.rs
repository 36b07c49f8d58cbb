//! # zone-server: glue, not a library
//!
//! The `zone-server` binary and the pieces of it that tools and tests reuse. This is the only crate
//! that owns threads and reads the wall clock: it drives the deterministic `zone-sim` core at a
//! fixed 60 ticks/s ([`pacing`]), runs shards on a thread pool ([`executor`]), writes the journal
//! off the tick thread ([`journal_sink`]) and reports per-shard statistics ([`report`]).
//!
//! Never put game rules here: anything that changes the zone's state belongs in `sim/`, or replay
//! would not reproduce it.

pub mod admin;
pub mod announce;
pub mod config;
pub mod executor;
pub mod housekeeping;
pub mod journal_sink;
pub mod lifecycle;
pub mod net;
pub mod pacing;
pub mod persist;
pub mod recovery;
pub mod replay;
pub mod replica;
pub mod report;
pub mod runner;
pub mod stage_probe;
pub mod viz;
pub mod zone_load;
