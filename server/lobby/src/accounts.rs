//! Accounts and refresh tokens in PostgreSQL.
//!
//! Tables, in the configured schema (created with the tables by the migrations below, at start,
//! under an advisory lock so several lobbies or test runs may start at once):
//! - `accounts (id bigserial, created_ms)`;
//! - `identities (platform, user_id, account_id, created_ms)`, primary key (platform, user_id):
//!   a platform identity belongs to one account; an account has any number;
//! - `refresh_tokens (token_hash, family, account_id, session_id, expires_ms, used, revoked, ...)`:
//!   only the SHA-256 of a token is stored; rotation marks the old row used and inserts its
//!   successor in one statement; a family is revoked as a whole;
//! - migration 2: `match_tickets`, `matches` and `ratings`, used by the matchmaking queue
//!   (`queue.rs`).
//!
//! A few connections, each with its statements prepared once; queries are pipelined on them. A
//! closed connection is replaced on its next use. Never logs a token or its hash.

use std::time::Duration;

use tokio_postgres::{Client, NoTls, Statement};

use crate::pg_pool::{PgPool, Prepared};
use crate::refresh::StoredToken;

/// Key of the advisory lock held while migrating ("ZLBY" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x5A4C_4259;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE accounts (id bigserial PRIMARY KEY, created_ms bigint NOT NULL);
     CREATE TABLE identities (
         platform text NOT NULL, user_id text NOT NULL,
         account_id bigint NOT NULL REFERENCES accounts(id),
         created_ms bigint NOT NULL,
         PRIMARY KEY (platform, user_id));
     CREATE INDEX identities_by_account ON identities (account_id);
     CREATE TABLE refresh_tokens (
         token_hash bytea PRIMARY KEY, family bytea NOT NULL,
         account_id bigint NOT NULL REFERENCES accounts(id),
         session_id text NOT NULL, expires_ms bigint NOT NULL, created_ms bigint NOT NULL,
         used boolean NOT NULL DEFAULT false, revoked boolean NOT NULL DEFAULT false);
     CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
     CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);",
    ),
    (
        2,
        // Matchmaking (see `queue.rs`): the durable queue, the matches, and the rating store.
        "CREATE TABLE match_tickets (
         id bigserial PRIMARY KEY,
         player_id bigint NOT NULL, members bigint[] NOT NULL, ratings double precision[] NOT NULL,
         mode text NOT NULL, region text, source text NOT NULL, request_id text,
         enqueued_ms bigint NOT NULL, state text NOT NULL, reason text, match_id bigint,
         updated_ms bigint NOT NULL);
     CREATE UNIQUE INDEX match_tickets_request ON match_tickets (player_id, request_id) WHERE request_id IS NOT NULL;
     CREATE UNIQUE INDEX match_tickets_open ON match_tickets (player_id) WHERE state = 'waiting';
     CREATE INDEX match_tickets_open_members ON match_tickets USING gin (members) WHERE state = 'waiting';
     CREATE INDEX match_tickets_by_match ON match_tickets (match_id) WHERE match_id IS NOT NULL;
     CREATE TABLE matches (
         id bigserial PRIMARY KEY, mode text NOT NULL, region text, tickets bigint[] NOT NULL,
         teams text NOT NULL, spread double precision NOT NULL, made_ms bigint NOT NULL,
         state text NOT NULL, room_id text NOT NULL, zone_id text NOT NULL, instance_id text NOT NULL,
         addr text NOT NULL, join_expires_ms bigint NOT NULL, result text, result_ms bigint);
     CREATE INDEX matches_joining ON matches (join_expires_ms) WHERE state = 'allocated';
     CREATE TABLE ratings (
         player_id bigint PRIMARY KEY, rating double precision NOT NULL,
         deviation double precision NOT NULL, volatility double precision NOT NULL,
         games integer NOT NULL DEFAULT 0, updated_ms bigint NOT NULL);",
    ),
];

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("PostgreSQL {op}: {source}")]
    Postgres {
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL {op}: no answer within {0:?}", .timeout)]
    Timeout { op: &'static str, timeout: Duration },
    #[error("this identity already belongs to another account")]
    IdentityTaken,
}

pub(crate) fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> AccountsError {
    move |source| AccountsError::Postgres { op, source }
}

struct Statements {
    find_identity: Statement,
    create_with_identity: Statement,
    link: Statement,
    identities_of: Statement,
    insert_refresh: Statement,
    get_refresh: Statement,
    rotate_refresh: Statement,
    revoke_family: Statement,
    revoke_session: Statement,
}

/// A platform identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub platform: String,
    pub user_id: String,
}

/// The accounts store.
pub struct Accounts {
    pool: PgPool<Statements>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("schema", &self.pool.schema)
            .field("connections", &self.pool.len())
            .finish()
    }
}

pub(crate) async fn connect_one(url: &str, schema: &str) -> Result<Client, AccountsError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg("connect"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .map_err(pg("set search_path"))?;
    Ok(client)
}

impl Prepared for Statements {
    async fn prepare(client: &Client) -> Result<Statements, AccountsError> {
        let p = |sql: &'static str| {
            let c = client;
            async move { c.prepare(sql).await.map_err(pg("prepare")) }
        };
        let st = Statements {
            find_identity: p("SELECT account_id FROM identities WHERE platform = $1 AND user_id = $2").await?,
            create_with_identity: p("WITH a AS (INSERT INTO accounts (created_ms) VALUES ($3) RETURNING id)
             INSERT INTO identities (platform, user_id, account_id, created_ms)
             SELECT $1, $2, id, $3 FROM a ON CONFLICT DO NOTHING RETURNING account_id")
            .await?,
            link: p(
                "INSERT INTO identities (platform, user_id, account_id, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING RETURNING account_id",
            )
            .await?,
            identities_of: p("SELECT platform, user_id FROM identities WHERE account_id = $1 ORDER BY platform, user_id").await?,
            insert_refresh: p(
                "INSERT INTO refresh_tokens (token_hash, family, account_id, session_id, expires_ms, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?,
            get_refresh: p("SELECT account_id, family, session_id, expires_ms, used, revoked FROM refresh_tokens WHERE token_hash = $1")
                .await?,
            rotate_refresh: p("WITH old AS (UPDATE refresh_tokens SET used = true
                 WHERE token_hash = $1 AND NOT used AND NOT revoked RETURNING family, account_id, session_id)
             INSERT INTO refresh_tokens (token_hash, family, account_id, session_id, expires_ms, created_ms)
             SELECT $2, family, account_id, session_id, $3, $4 FROM old RETURNING account_id")
            .await?,
            revoke_family: p("UPDATE refresh_tokens SET revoked = true WHERE family = $1 AND NOT revoked").await?,
            revoke_session: p("UPDATE refresh_tokens SET revoked = true WHERE session_id = $1 AND NOT revoked").await?,
        };
        Ok(st)
    }
}

/// Creates the schema and applies the migrations not yet recorded, in one transaction under an
/// advisory lock.
async fn migrate(url: &str, schema: &str) -> Result<(), AccountsError> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(pg("connect"))?;
    let task = tokio::spawn(connection);
    let tx = client.transaction().await.map_err(pg("migrate"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(pg("migrate: lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS lobby_schema_migrations (version int PRIMARY KEY, applied_ms bigint NOT NULL DEFAULT 0)"
    ))
    .await
    .map_err(pg("migrate: schema"))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM lobby_schema_migrations", &[])
        .await
        .map_err(pg("migrate: read versions"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await.map_err(pg("migrate: apply"))?;
            tx.execute("INSERT INTO lobby_schema_migrations (version) VALUES ($1)", &[version])
                .await
                .map_err(pg("migrate: record version"))?;
            tracing::info!(version, schema, "applied lobby migration");
        }
    }
    tx.commit().await.map_err(pg("migrate: commit"))?;
    drop(client);
    let _ = task.await;
    Ok(())
}

impl Accounts {
    /// Migrates, then opens `connections` connections with their statements prepared.
    pub async fn connect(url: &str, schema: &str, connections: usize, timeout: Duration) -> Result<Accounts, AccountsError> {
        bounded("migrate", timeout * 5, migrate(url, schema)).await?;
        Ok(Accounts {
            pool: PgPool::connect(url, schema, connections, timeout).await?,
        })
    }

    /// The next connection, reconnected first when it has closed.
    async fn conn(&self) -> Result<std::sync::Arc<crate::pg_pool::Conn<Statements>>, AccountsError> {
        self.pool.conn().await
    }

    /// Whether PostgreSQL answers.
    pub async fn ping(&self) -> Result<(), AccountsError> {
        let c = self.conn().await?;
        bounded("ping", self.pool.timeout, async {
            c.client.simple_query("SELECT 1").await.map_err(pg("ping"))
        })
        .await?;
        Ok(())
    }

    /// The account bound to an identity, creating both when it is new. Returns (account, created).
    pub async fn find_or_create(&self, id: &Identity, now_ms: i64) -> Result<(i64, bool), AccountsError> {
        let c = self.conn().await?;
        bounded("find or create account", self.pool.timeout, async {
            for _ in 0..3 {
                if let Some(r) = c
                    .client
                    .query_opt(&c.st.find_identity, &[&id.platform, &id.user_id])
                    .await
                    .map_err(pg("find identity"))?
                {
                    return Ok((r.get(0), false));
                }
                if let Some(r) = c
                    .client
                    .query_opt(&c.st.create_with_identity, &[&id.platform, &id.user_id, &now_ms])
                    .await
                    .map_err(pg("create account"))?
                {
                    return Ok((r.get(0), true));
                }
                // Another request created it between the two statements: read it again.
            }
            Err(AccountsError::IdentityTaken)
        })
        .await
    }

    /// Binds another identity to `account_id`. Binding one it already has is not an error.
    pub async fn link(&self, account_id: i64, id: &Identity, now_ms: i64) -> Result<(), AccountsError> {
        let c = self.conn().await?;
        bounded("link", self.pool.timeout, async {
            if c.client
                .query_opt(&c.st.link, &[&id.platform, &id.user_id, &account_id, &now_ms])
                .await
                .map_err(pg("link"))?
                .is_some()
            {
                return Ok(());
            }
            let owner: Option<i64> = c
                .client
                .query_opt(&c.st.find_identity, &[&id.platform, &id.user_id])
                .await
                .map_err(pg("link: owner"))?
                .map(|r| r.get(0));
            if owner == Some(account_id) {
                Ok(())
            } else {
                Err(AccountsError::IdentityTaken)
            }
        })
        .await
    }

    /// Every identity of an account.
    pub async fn identities(&self, account_id: i64) -> Result<Vec<Identity>, AccountsError> {
        let c = self.conn().await?;
        bounded("identities", self.pool.timeout, async {
            Ok(c.client
                .query(&c.st.identities_of, &[&account_id])
                .await
                .map_err(pg("identities"))?
                .iter()
                .map(|r| Identity {
                    platform: r.get(0),
                    user_id: r.get(1),
                })
                .collect())
        })
        .await
    }

    /// Stores a new family's first refresh token.
    pub async fn insert_refresh(
        &self,
        hash: &[u8; 32],
        family: &[u8],
        account_id: i64,
        session_id: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(), AccountsError> {
        let c = self.conn().await?;
        let h: &[u8] = hash;
        bounded("insert refresh token", self.pool.timeout, async {
            c.client
                .execute(&c.st.insert_refresh, &[&h, &family, &account_id, &session_id, &expires_ms, &now_ms])
                .await
                .map_err(pg("insert refresh token"))
        })
        .await?;
        Ok(())
    }

    /// A stored token by hash.
    pub async fn get_refresh(&self, hash: &[u8; 32]) -> Result<Option<StoredToken>, AccountsError> {
        let c = self.conn().await?;
        let h: &[u8] = hash;
        bounded("get refresh token", self.pool.timeout, async {
            Ok(c.client
                .query_opt(&c.st.get_refresh, &[&h])
                .await
                .map_err(pg("get refresh token"))?
                .map(|r| StoredToken {
                    account_id: r.get(0),
                    family: r.get(1),
                    session_id: r.get(2),
                    expires_ms: r.get(3),
                    used: r.get(4),
                    revoked: r.get(5),
                }))
        })
        .await
    }

    /// Marks `old` used and stores `new` in its family, atomically. False when `old` was used or
    /// revoked meanwhile (a concurrent use: treat as reuse).
    pub async fn rotate_refresh(&self, old: &[u8; 32], new: &[u8; 32], expires_ms: i64, now_ms: i64) -> Result<bool, AccountsError> {
        let c = self.conn().await?;
        let (o, n): (&[u8], &[u8]) = (old, new);
        bounded("rotate refresh token", self.pool.timeout, async {
            Ok(c.client
                .query_opt(&c.st.rotate_refresh, &[&o, &n, &expires_ms, &now_ms])
                .await
                .map_err(pg("rotate refresh token"))?
                .is_some())
        })
        .await
    }

    /// Revokes every token of a family; returns how many were still live.
    pub async fn revoke_family(&self, family: &[u8]) -> Result<u64, AccountsError> {
        let c = self.conn().await?;
        bounded("revoke family", self.pool.timeout, async {
            c.client.execute(&c.st.revoke_family, &[&family]).await.map_err(pg("revoke family"))
        })
        .await
    }

    /// Revokes every token issued to a session (logout, takeover).
    pub async fn revoke_session(&self, session_id: &str) -> Result<u64, AccountsError> {
        let c = self.conn().await?;
        bounded("revoke session", self.pool.timeout, async {
            c.client
                .execute(&c.st.revoke_session, &[&session_id])
                .await
                .map_err(pg("revoke session"))
        })
        .await
    }

    /// Drops the schema and everything in it (tests).
    pub async fn drop_schema(&self) -> Result<(), AccountsError> {
        let c = self.conn().await?;
        c.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.pool.schema))
            .await
            .map_err(pg("drop schema"))
    }
}

pub(crate) async fn bounded<T>(
    op: &'static str,
    timeout: Duration,
    f: impl Future<Output = Result<T, AccountsError>>,
) -> Result<T, AccountsError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| AccountsError::Timeout { op, timeout })?
}
