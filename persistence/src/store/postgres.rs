//! [`PostgresStore`]: the durable archive of a zone's snapshots, and the table of player events.
//!
//! Tables (created by the migrations below at connect, under an advisory lock so that several
//! servers or test runs may connect at once):
//! - `zone_snapshots(id, zone_id, tick, base_tick, kind 'full'|'diff', digest, data, created_at)`,
//!   indexed on `(zone_id, tick desc)`. Storing a full snapshot keeps the newest `keep_full`
//!   fulls of the zone and deletes its diffs older than the oldest full kept (one statement).
//! - `game_events(id, zone_id, tick, kind, player_id, detail jsonb, created_at, event_key)`,
//!   filled by [`PostgresStore::insert_events`] in one statement per batch. `(zone_id, event_key)`
//!   is unique and inserts skip keys already stored (`ON CONFLICT DO NOTHING`), so retrying a
//!   batch whose outcome is unknown (a timeout after the commit) never writes an event twice.
//!
//! Every operation is bounded by `op_timeout`. Nothing here retries or decides when to write;
//! the connection task is spawned on the caller's tokio runtime and ends when the store is
//! dropped.

use std::time::Duration;

use tokio_postgres::NoTls;

use super::{BoxFut, Chain, SnapshotStore, StoreError, StoredSnapshot, bounded, check_meta};
use crate::events::GameEvent;
use crate::snapshot::{HEADER_BYTES, SnapshotMeta, decode_meta};

const STORE: &str = "postgres";

/// Key of the advisory lock held while migrating (an arbitrary constant: "ZSNP" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x5A53_4E50;

/// Schema migrations, applied in order; each runs once per database, recorded in
/// `zone_schema_migrations`. Never edit a released one: add a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE zone_snapshots (
        id bigserial PRIMARY KEY,
        zone_id text NOT NULL,
        tick bigint NOT NULL,
        base_tick bigint NOT NULL,
        kind text NOT NULL CHECK (kind IN ('full', 'diff')),
        digest bytea NOT NULL,
        data bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX zone_snapshots_zone_tick ON zone_snapshots (zone_id, tick DESC);
    CREATE TABLE game_events (
        id bigserial PRIMARY KEY,
        zone_id text NOT NULL,
        tick bigint NOT NULL,
        kind text NOT NULL,
        player_id bigint,
        detail jsonb NOT NULL DEFAULT '{}',
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX game_events_zone_tick ON game_events (zone_id, tick);",
    ),
    (
        2,
        // Idempotent events: a retried insert (say, one that timed out after PostgreSQL committed
        // it) finds its key and adds nothing. Rows from before have no key (NULLs never conflict).
        "ALTER TABLE game_events ADD COLUMN event_key text;
    CREATE UNIQUE INDEX game_events_zone_key ON game_events (zone_id, event_key);",
    ),
];

/// A zone's snapshots and events in PostgreSQL.
pub struct PostgresStore {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    zone_id: String,
    keep_full: i64,
    op_timeout: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("zone_id", &self.zone_id)
            .field("keep_full", &self.keep_full)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn pg_err(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange {
        store: STORE,
        field,
        value,
    })
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`, no TLS), spawns the connection task and
    /// applies pending migrations, all within `op_timeout` per step. `keep_full` (at least 1) is
    /// how many full snapshots of this zone are kept.
    pub async fn connect(url: &str, zone_id: &str, keep_full: usize, op_timeout: Duration) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(pg_err("parse url"))?;
        config.connect_timeout(op_timeout);
        let (mut client, connection) = bounded(STORE, "connect", op_timeout, async {
            config.connect(NoTls).await.map_err(pg_err("connect"))
        })
        .await?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres snapshot store connection ended");
            }
        });
        bounded(STORE, "migrate", op_timeout, migrate(&mut client)).await?;
        Ok(PostgresStore {
            client,
            connection,
            zone_id: zone_id.to_owned(),
            keep_full: i64::try_from(keep_full.max(1)).unwrap_or(i64::MAX),
            op_timeout,
        })
    }

    pub fn zone_id(&self) -> &str {
        &self.zone_id
    }

    /// Inserts a batch of events in one statement (all or none). Each event keeps its own
    /// `zone_id`. Events whose key is already stored are skipped, so a batch may be retried
    /// safely after any failure. Returns how many rows were added. An empty batch does nothing.
    pub async fn insert_events(&self, events: &[GameEvent]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        let zones: Vec<&str> = events.iter().map(|e| e.zone_id.as_str()).collect();
        let ticks = events.iter().map(|e| to_i64("tick", e.tick)).collect::<Result<Vec<_>, _>>()?;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let players = events
            .iter()
            .map(|e| e.player_id.map(|p| to_i64("player_id", p)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let details: Vec<String> = events.iter().map(|e| e.detail.to_string()).collect();
        bounded(STORE, "insert events", self.op_timeout, async {
            self.client
                .execute(
                    "INSERT INTO game_events (zone_id, tick, kind, player_id, detail, event_key)
                     SELECT z, t, k, p, d::jsonb, e FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::text[])
                        AS u(z, t, k, p, d, e)
                     ON CONFLICT (zone_id, event_key) DO NOTHING",
                    &[&zones, &ticks, &kinds, &players, &details, &keys],
                )
                .await
                .map_err(pg_err("insert events"))
        })
        .await
    }

    /// The number of events stored for this zone (for tests and operators).
    pub async fn count_events(&self) -> Result<u64, StoreError> {
        bounded(STORE, "count events", self.op_timeout, async {
            let row = self
                .client
                .query_one("SELECT count(*) FROM game_events WHERE zone_id = $1", &[&self.zone_id])
                .await
                .map_err(pg_err("count events"))?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
        .await
    }

    /// Deletes this zone's snapshots and events.
    pub async fn delete_zone(&self) -> Result<(), StoreError> {
        bounded(STORE, "delete zone", self.op_timeout, async {
            self.client
                .execute("DELETE FROM zone_snapshots WHERE zone_id = $1", &[&self.zone_id])
                .await
                .map_err(pg_err("delete zone"))?;
            self.client
                .execute("DELETE FROM game_events WHERE zone_id = $1", &[&self.zone_id])
                .await
                .map_err(pg_err("delete zone"))?;
            Ok(())
        })
        .await
    }
}

/// Applies the migrations not yet recorded, in one transaction under an advisory lock.
async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err("migrate"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(pg_err("migrate: lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS zone_schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(pg_err("migrate: create migrations table"))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM zone_schema_migrations", &[])
        .await
        .map_err(pg_err("migrate: read versions"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await.map_err(pg_err("migrate: apply"))?;
            tx.execute("INSERT INTO zone_schema_migrations (version) VALUES ($1)", &[version])
                .await
                .map_err(pg_err("migrate: record version"))?;
        }
    }
    tx.commit().await.map_err(pg_err("migrate: commit"))
}

impl SnapshotStore for PostgresStore {
    fn name(&self) -> &'static str {
        STORE
    }

    fn put<'a>(&'a self, meta: &'a SnapshotMeta, bytes: &'a [u8]) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_meta(STORE, meta, bytes)?;
            let tick = to_i64("tick", meta.tick)?;
            let base_tick = to_i64("base_tick", meta.base_tick)?;
            let digest: &[u8] = &meta.zone_digest;
            bounded(STORE, "put", self.op_timeout, async {
                self.client
                    .execute(
                        "INSERT INTO zone_snapshots (zone_id, tick, base_tick, kind, digest, data) VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&self.zone_id, &tick, &base_tick, &meta.kind.as_str(), &digest, &bytes],
                    )
                    .await
                    .map_err(pg_err("put"))?;
                if meta.kind == crate::snapshot::SnapshotKind::Full {
                    self.client
                        .execute(
                            "WITH keep AS (
                                SELECT id, tick FROM zone_snapshots WHERE zone_id = $1 AND kind = 'full'
                                ORDER BY id DESC LIMIT $2
                             )
                             DELETE FROM zone_snapshots WHERE zone_id = $1 AND (
                                (kind = 'full' AND id NOT IN (SELECT id FROM keep))
                                OR (kind = 'diff' AND tick < (SELECT min(tick) FROM keep)))",
                            &[&self.zone_id, &self.keep_full],
                        )
                        .await
                        .map_err(pg_err("put: retention"))?;
                }
                Ok(())
            })
            .await
        })
    }

    fn list(&self) -> BoxFut<'_, Result<Vec<StoredSnapshot>, StoreError>> {
        Box::pin(bounded(STORE, "list", self.op_timeout, async {
            let header_len = HEADER_BYTES as i32;
            let rows = self
                .client
                .query(
                    "SELECT id, substring(data FROM 1 FOR $2), length(data) FROM zone_snapshots WHERE zone_id = $1 ORDER BY tick DESC, id DESC",
                    &[&self.zone_id, &header_len],
                )
                .await
                .map_err(pg_err("list"))?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let meta = decode_meta(r.get::<_, &[u8]>(1)).ok()?;
                    Some(StoredSnapshot {
                        key: r.get::<_, i64>(0).to_string(),
                        meta,
                        bytes_len: r.get::<_, i32>(2).max(0) as u64,
                    })
                })
                .collect())
        }))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            let not_found = || StoreError::NotFound {
                store: STORE,
                key: key.to_owned(),
            };
            let id: i64 = key.parse().map_err(|_| not_found())?;
            let row = bounded(STORE, "get", self.op_timeout, async {
                self.client
                    .query_opt(
                        "SELECT data FROM zone_snapshots WHERE zone_id = $1 AND id = $2",
                        &[&self.zone_id, &id],
                    )
                    .await
                    .map_err(pg_err("get"))
            })
            .await?;
            row.map(|r| r.get::<_, Vec<u8>>(0)).ok_or_else(not_found)
        })
    }

    fn latest_chain(&self) -> BoxFut<'_, Result<Option<Chain>, StoreError>> {
        Box::pin(bounded(STORE, "latest chain", self.op_timeout, async {
            let Some(full) = self
                .client
                .query_opt(
                    "SELECT tick, data FROM zone_snapshots WHERE zone_id = $1 AND kind = 'full' ORDER BY tick DESC, id DESC LIMIT 1",
                    &[&self.zone_id],
                )
                .await
                .map_err(pg_err("latest chain"))?
            else {
                return Ok(None);
            };
            let full_tick: i64 = full.get(0);
            let diffs = self
                .client
                .query(
                    "SELECT data FROM zone_snapshots WHERE zone_id = $1 AND kind = 'diff' AND tick > $2 ORDER BY tick, id",
                    &[&self.zone_id, &full_tick],
                )
                .await
                .map_err(pg_err("latest chain"))?;
            Ok(Some(Chain {
                full: full.get(1),
                diffs: diffs.iter().map(|r| r.get(0)).collect(),
            }))
        }))
    }
}
