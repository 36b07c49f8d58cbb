//! Snapshot stores: where encoded snapshots are kept, behind one trait, [`SnapshotStore`].
//!
//! Three stores implement it: [`FileStore`] (a directory, atomic renames), [`RedisStore`] (the
//! newest full snapshot and its diffs, with a TTL) and [`PostgresStore`] (a table with retention,
//! plus the player-event table). The server holds them as `Box<dyn SnapshotStore>` and treats
//! them alike.
//!
//! A store keeps bytes and reads their header ([`crate::snapshot::decode_meta`]); it never
//! decodes a body, never decides when to take a snapshot or which store to use, never retries
//! (the caller's circuit breaker, [`crate::breaker`], does that) and owns no thread. Every network
//! operation is bounded by the store's `op_timeout` and fails with [`StoreError::Timeout`] rather
//! than hanging. The network stores need a tokio runtime: [`PostgresStore`] spawns its connection
//! task on it, [`RedisStore`]'s connection manager does the same, and [`FileStore`] runs its
//! blocking file IO on the runtime's blocking pool.
//!
//! Keys ([`StoredSnapshot::key`]) are opaque strings, meaningful only to the store that listed
//! them.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use crate::snapshot::{SnapshotError, SnapshotMeta, decode_meta};

mod file;
mod postgres;
mod redis_store;

pub use file::FileStore;
pub use postgres::PostgresStore;
pub use redis_store::RedisStore;

/// The future every store method returns: boxed, so that the trait stays object safe.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One snapshot a store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// What to pass to [`SnapshotStore::get`].
    pub key: String,
    pub meta: SnapshotMeta,
    /// Size of the stored bytes.
    pub bytes_len: u64,
}

/// The newest full snapshot and the diffs taken after it (oldest first), as stored bytes; feed
/// them to [`crate::snapshot::recover`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub full: Vec<u8>,
    pub diffs: Vec<Vec<u8>>,
}

/// Where snapshots are kept. Object safe: use it as `Box<dyn SnapshotStore>` or `Arc<dyn ..>`.
///
/// Every method may be called concurrently; a store does no caching, so two calls always see
/// what the backend holds.
pub trait SnapshotStore: Send + Sync {
    /// `"file"`, `"redis"` or `"postgres"`: for logs and metric labels.
    fn name(&self) -> &'static str;

    /// Stores one encoded snapshot. `meta` must be what its header says (checked: a mismatch
    /// is [`StoreError::MetaMismatch`]). Storing a full snapshot applies the store's retention.
    fn put<'a>(&'a self, meta: &'a SnapshotMeta, bytes: &'a [u8]) -> BoxFut<'a, Result<(), StoreError>>;

    /// Every snapshot held, newest first (by tick). Entries whose header does not decode are left
    /// out.
    fn list(&self) -> BoxFut<'_, Result<Vec<StoredSnapshot>, StoreError>>;

    /// The bytes stored under `key` (from [`SnapshotStore::list`]).
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Vec<u8>, StoreError>>;

    /// The newest full snapshot and the diffs with a later tick, oldest diff first; `None` if the
    /// store holds no full snapshot. Damaged entries are returned as they are:
    /// [`crate::snapshot::recover`] skips and reports them.
    fn latest_chain(&self) -> BoxFut<'_, Result<Option<Chain>, StoreError>>;
}

/// A store operation that failed. Each names the store and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store} store: {op} timed out after {timeout:?}")]
    Timeout {
        store: &'static str,
        op: &'static str,
        timeout: Duration,
    },
    #[error("file store: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("redis store: {op}: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("postgres store: {op}: {source}")]
    Postgres {
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{store} store: nothing stored under key {key:?}")]
    NotFound { store: &'static str, key: String },
    #[error("{store} store: the bytes given are not a snapshot: {source}")]
    BadSnapshot {
        store: &'static str,
        #[source]
        source: SnapshotError,
    },
    #[error("{store} store: the meta given does not match the snapshot's header")]
    MetaMismatch { store: &'static str },
    #[error("{store} store: {field} {value} does not fit the store's column type")]
    OutOfRange {
        store: &'static str,
        field: &'static str,
        value: u64,
    },
    #[error("{store} store: the stored value is invalid: {reason}")]
    BadStoredValue { store: &'static str, reason: String },
    #[error("{store} store: a background IO task failed: {reason}")]
    Task { store: &'static str, reason: String },
}

/// Checks that `meta` is what `bytes`' header says.
pub(crate) fn check_meta(store: &'static str, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), StoreError> {
    let found = decode_meta(bytes).map_err(|source| StoreError::BadSnapshot { store, source })?;
    if &found != meta {
        return Err(StoreError::MetaMismatch { store });
    }
    Ok(())
}

/// Runs `fut` for at most `timeout`.
pub(crate) async fn bounded<T>(
    store: &'static str,
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(StoreError::Timeout { store, op, timeout }))
}
