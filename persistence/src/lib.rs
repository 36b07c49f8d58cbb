//! # zone-persistence: what the zone server keeps on disk
//!
//! Today that is the input journal ([`journal`]): an append-only, versioned, checksummed record of
//! everything a zone needs to be replayed. Snapshots and the Redis and PostgreSQL stores come with
//! issue 5.
//!
//! **Architecture invariant:** this crate encodes, decodes, reads and writes; it never decides when
//! (the server calls it off the tick thread) and never owns a thread.

pub mod journal;

pub use journal::{JournalError, JournalHeader, JournalReader, JournalWriter, Record};
