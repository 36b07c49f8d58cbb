//! [`RedisStore`]: the newest full snapshot of a zone and the diffs since, in Redis, for fast
//! restarts and hand-over between hosts.
//!
//! Keys, namespaced by zone id: `zone:{id}:full` (a string: the newest full snapshot) and
//! `zone:{id}:diffs` (a list: the diffs stored since, oldest first, at most [`DIFFS_MAX`]).
//! Storing a full replaces `full` and deletes `diffs` in one `MULTI`/`EXEC`; storing a diff
//! appends it and refreshes both keys' TTL in one `MULTI`/`EXEC`. Every key expires `ttl` after
//! the last write, so an abandoned zone cleans itself up.
//!
//! Redis is a cache here, not the archive: it keeps one full snapshot, never more. Every
//! operation is bounded by `op_timeout`; nothing here retries beyond the connection manager's
//! own reconnect.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BoxFut, Chain, SnapshotStore, StoreError, StoredSnapshot, bounded, check_meta};
use crate::snapshot::{HEADER_BYTES, SnapshotKind, SnapshotMeta, decode_meta};

const STORE: &str = "redis";
/// Most diffs kept after one full snapshot (the oldest are trimmed).
pub const DIFFS_MAX: usize = 256;
const FULL_KEY: &str = "full";
const DIFF_KEY_PREFIX: &str = "diff/";

/// A zone's snapshots in Redis. Cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    zone_id: String,
    full_key: String,
    diffs_key: String,
    ttl: Duration,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("zone_id", &self.zone_id)
            .field("ttl", &self.ttl)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

fn redis_err(op: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |source| StoreError::Redis { op, source }
}

impl RedisStore {
    /// Connects (within `op_timeout`) to `url` (`redis://host:port/db`). `ttl` is how long keys
    /// live after the last write (at least 1 ms); `op_timeout` bounds every operation, including
    /// this one.
    pub async fn connect(url: &str, zone_id: &str, ttl: Duration, op_timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(redis_err("parse url"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(2)
            .set_max_delay(op_timeout);
        let conn = bounded(STORE, "connect", op_timeout, async {
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(redis_err("connect"))
        })
        .await?;
        Ok(RedisStore {
            conn,
            zone_id: zone_id.to_owned(),
            full_key: format!("zone:{zone_id}:full"),
            diffs_key: format!("zone:{zone_id}:diffs"),
            ttl: ttl.max(Duration::from_millis(1)),
            op_timeout,
        })
    }

    pub fn zone_id(&self) -> &str {
        &self.zone_id
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Deletes this zone's keys.
    pub async fn delete_zone(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        bounded(STORE, "delete zone", self.op_timeout, async {
            redis::cmd("DEL")
                .arg(&self.full_key)
                .arg(&self.diffs_key)
                .exec_async(&mut conn)
                .await
                .map_err(redis_err("delete zone"))
        })
        .await
    }

    /// The full snapshot's header and length, and every diff, read in one `MULTI`/`EXEC`.
    async fn read_all(&self, op: &'static str, full_whole: bool) -> Result<(Vec<u8>, u64, Vec<Vec<u8>>), StoreError> {
        let mut conn = self.conn.clone();
        bounded(STORE, op, self.op_timeout, async {
            let end = if full_whole { -1 } else { HEADER_BYTES as i64 - 1 };
            let (full, full_len, diffs): (Vec<u8>, u64, Vec<Vec<u8>>) = redis::pipe()
                .atomic()
                .cmd("GETRANGE")
                .arg(&self.full_key)
                .arg(0)
                .arg(end)
                .cmd("STRLEN")
                .arg(&self.full_key)
                .cmd("LRANGE")
                .arg(&self.diffs_key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(redis_err(op))?;
            Ok((full, full_len, diffs))
        })
        .await
    }
}

impl SnapshotStore for RedisStore {
    fn name(&self) -> &'static str {
        STORE
    }

    fn put<'a>(&'a self, meta: &'a SnapshotMeta, bytes: &'a [u8]) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_meta(STORE, meta, bytes)?;
            let mut conn = self.conn.clone();
            let ttl_ms = self.ttl_ms();
            let mut pipe = redis::pipe();
            pipe.atomic();
            match meta.kind {
                SnapshotKind::Full => {
                    pipe.cmd("SET").arg(&self.full_key).arg(bytes).arg("PX").arg(ttl_ms).ignore();
                    pipe.cmd("DEL").arg(&self.diffs_key).ignore();
                }
                SnapshotKind::Diff => {
                    pipe.cmd("RPUSH").arg(&self.diffs_key).arg(bytes).ignore();
                    pipe.cmd("LTRIM").arg(&self.diffs_key).arg(-(DIFFS_MAX as i64)).arg(-1).ignore();
                    pipe.cmd("PEXPIRE").arg(&self.diffs_key).arg(ttl_ms).ignore();
                    pipe.cmd("PEXPIRE").arg(&self.full_key).arg(ttl_ms).ignore();
                }
            }
            bounded(STORE, "put", self.op_timeout, async {
                pipe.exec_async(&mut conn).await.map_err(redis_err("put"))
            })
            .await
        })
    }

    fn list(&self) -> BoxFut<'_, Result<Vec<StoredSnapshot>, StoreError>> {
        Box::pin(async move {
            let (full_header, full_len, diffs) = self.read_all("list", false).await?;
            let mut out: Vec<StoredSnapshot> = diffs
                .iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    let meta = decode_meta(d).ok()?;
                    Some(StoredSnapshot {
                        key: format!("{DIFF_KEY_PREFIX}{i}"),
                        meta,
                        bytes_len: d.len() as u64,
                    })
                })
                .collect();
            if let Ok(meta) = decode_meta(&full_header) {
                out.push(StoredSnapshot {
                    key: FULL_KEY.to_owned(),
                    meta,
                    bytes_len: full_len,
                });
            }
            // Newest first; a full sorts after the diffs of the same tick, as it is older.
            out.sort_by_key(|s| std::cmp::Reverse((s.meta.tick, s.meta.kind == SnapshotKind::Diff)));
            Ok(out)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            let not_found = || StoreError::NotFound {
                store: STORE,
                key: key.to_owned(),
            };
            let cmd = if key == FULL_KEY {
                let mut c = redis::cmd("GET");
                c.arg(&self.full_key);
                c
            } else {
                let index: i64 = key
                    .strip_prefix(DIFF_KEY_PREFIX)
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(not_found)?;
                let mut c = redis::cmd("LINDEX");
                c.arg(&self.diffs_key).arg(index);
                c
            };
            let mut conn = self.conn.clone();
            let got: Option<Vec<u8>> = bounded(STORE, "get", self.op_timeout, async {
                cmd.query_async(&mut conn).await.map_err(redis_err("get"))
            })
            .await?;
            got.ok_or_else(not_found)
        })
    }

    fn latest_chain(&self) -> BoxFut<'_, Result<Option<Chain>, StoreError>> {
        Box::pin(async move {
            let (full, _, diffs) = self.read_all("latest chain", true).await?;
            if full.is_empty() {
                return Ok(None);
            }
            let full_tick = decode_meta(&full).map(|m| m.tick).ok();
            // Keep undecodable diffs (recovery reports them); drop those not newer than the full.
            let diffs = diffs.into_iter().filter(|d| match (decode_meta(d), full_tick) {
                (Ok(m), Some(t)) => m.tick > t,
                _ => true,
            });
            Ok(Some(Chain {
                full,
                diffs: diffs.collect(),
            }))
        })
    }
}
