//! The durable matchmaking queue in PostgreSQL: tickets, matches and the rating store (tables of
//! migration 2 in `accounts.rs`), and the notifications that wake the leader and the waiters.
//!
//! - `match_tickets`: one row per ticket (a player, or a party matched as a unit), written before
//!   the API answers. States: `waiting` → `matched` (with `match_id`), or `cancelled` / `refused`.
//!   A player has at most one waiting ticket (a partial unique index), and `(player_id,
//!   request_id)` is unique, so a retried request finds its ticket instead of making another.
//! - `matches`: one row per match, with its room, zone server and the join tokens' expiry. A match
//!   is committed by ONE guarded statement ([`Queue::commit_match`]) that locks the match's tickets
//!   and moves them from `waiting` to `matched` only if every one of them is still waiting: no
//!   ticket can land in two matches, and a cancel racing a match resolves to exactly one outcome
//!   (whichever statement takes the row lock first).
//! - `ratings`: Glicko-2 ratings (rating, deviation, volatility); 1500 when a player has none.
//!
//! The leader's changes send a `NOTIFY` on the channel `{schema}_match` (delivered at commit), to
//! wake the waiters wherever they wait: `m<id>,<id>...` tickets matched (one notification after
//! each batch of match commits, [`Queue::notify_matched`]) or refused, `r<id>,<id>...` tickets put
//! back. Ticket inserts, cancels and match commits do NOT notify: PostgreSQL serialises the
//! commits of notifying transactions (a global lock held through the WAL flush), which capped
//! them near 1/fsync; the leader reads new tickets by id instead.
//!
//! Never logs a player's token; never holds a row lock across a network call of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, Statement};

use crate::accounts::{AccountsError, bounded, connect_one, pg};
use crate::pg_pool::{PgPool, Prepared};

/// A rating the store has never seen.
pub const DEFAULT_RATING: f64 = 1500.0;
/// Glicko-2's default deviation and volatility for a new player.
pub const DEFAULT_DEVIATION: f64 = 350.0;
pub const DEFAULT_VOLATILITY: f64 = 0.06;

struct Statements {
    insert_session: Statement,
    insert_service: Statement,
    by_request: Statement,
    open_of: Statement,
    view: Statement,
    cancel: Statement,
    refuse: Statement,
    waiting_all: Statement,
    waiting_by_ids: Statement,
    waiting_since: Statement,
    commit_match: Statement,
    joining: Statement,
    requeue: Statement,
    depth: Statement,
    rating_of: Statement,
    members_of: Statement,
    notify: Statement,
}

type Conn = crate::pg_pool::Conn<Statements>;

/// A ticket as the leader's pool needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitingRow {
    pub id: i64,
    pub members: Vec<i64>,
    pub ratings: Vec<f64>,
    pub mode: String,
    pub region: Option<String>,
    pub enqueued_ms: i64,
}

/// A ticket with its match, as the API answers it.
#[derive(Clone, Debug, PartialEq)]
pub struct TicketView {
    pub id: i64,
    pub player_id: i64,
    pub members: Vec<i64>,
    pub mode: String,
    pub region: Option<String>,
    pub enqueued_ms: i64,
    /// waiting, matched, cancelled or refused.
    pub state: String,
    pub reason: Option<String>,
    pub matched: Option<MatchView>,
}

/// A committed match.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchView {
    pub match_id: i64,
    pub room_id: String,
    pub zone_id: String,
    pub instance_id: String,
    pub addr: String,
    /// JSON `[[player_id...], ...]`, one list per team.
    pub teams: String,
    pub join_expires_ms: i64,
}

/// A match to commit.
#[derive(Clone, Debug)]
pub struct NewMatch<'a> {
    pub tickets: &'a [i64],
    pub mode: &'a str,
    pub region: Option<&'a str>,
    pub teams_json: &'a str,
    pub spread: f64,
    pub made_ms: i64,
    pub room_id: &'a str,
    pub zone_id: &'a str,
    pub instance_id: &'a str,
    pub addr: &'a str,
    pub join_expires_ms: i64,
}

/// A match whose players may still be on their way to the zone server.
#[derive(Clone, Debug, PartialEq)]
pub struct Joining {
    pub match_id: i64,
    pub mode: String,
    pub zone_id: String,
    pub instance_id: String,
    pub tickets: Vec<i64>,
}

/// Waiting tickets and players of one (mode, region); region "" when none.
#[derive(Clone, Debug, PartialEq)]
pub struct DepthRow {
    pub mode: String,
    pub region: String,
    pub tickets: i64,
    pub players: i64,
}

/// What inserting a ticket did.
#[derive(Clone, Debug, PartialEq)]
pub enum Inserted {
    /// A new ticket, durable now.
    New { id: i64, enqueued_ms: i64 },
    /// The same `request_id` was seen before: this is its ticket.
    Retry(i64),
    /// The player (or a party member) already has a waiting ticket.
    AlreadyWaiting(i64),
}

/// One player's stored rating.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoredRating {
    pub rating: f64,
    pub deviation: f64,
    pub volatility: f64,
    pub games: i32,
}

impl Default for StoredRating {
    fn default() -> StoredRating {
        StoredRating {
            rating: DEFAULT_RATING,
            deviation: DEFAULT_DEVIATION,
            volatility: DEFAULT_VOLATILITY,
            games: 0,
        }
    }
}

/// Why a result was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("no match {0}")]
    UnknownMatch(i64),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] AccountsError),
}

/// The queue store.
pub struct Queue {
    /// The NOTIFY channel, `{schema}_match`.
    pub channel: String,
    pool: PgPool<Statements>,
}

impl Prepared for Statements {
    async fn prepare(client: &Client) -> Result<Statements, AccountsError> {
        let p = |sql: &'static str| {
            let c = client;
            async move { c.prepare(sql).await.map_err(pg("prepare queue")) }
        };
        let st = Statements {
        insert_session: p("WITH r AS (
                 SELECT array_agg(coalesce(s.rating, 1500.0) ORDER BY m.ord) AS ratings
                 FROM unnest($2::bigint[]) WITH ORDINALITY AS m(pid, ord) LEFT JOIN ratings s ON s.player_id = m.pid),
             ins AS (
                 INSERT INTO match_tickets (player_id, members, ratings, mode, region, source, request_id, enqueued_ms, state, updated_ms)
                 SELECT $1, $2, r.ratings, $3, $4, 'session', $5, $6, 'waiting', $6 FROM r
                 WHERE NOT EXISTS (SELECT 1 FROM match_tickets o WHERE o.state = 'waiting' AND o.members && $2::bigint[])
                 ON CONFLICT DO NOTHING RETURNING id, enqueued_ms)
             SELECT id, enqueued_ms FROM ins")
        .await?,
        insert_service: p("WITH ins AS (
                 INSERT INTO match_tickets (player_id, members, ratings, mode, region, source, enqueued_ms, state, updated_ms)
                 SELECT $1, ARRAY[$1::bigint], ARRAY[$2::float8], $3, $4, 'service', $5, 'waiting', $5
                 WHERE NOT EXISTS (SELECT 1 FROM match_tickets o WHERE o.state = 'waiting' AND o.members && ARRAY[$1::bigint])
                 ON CONFLICT DO NOTHING RETURNING id, enqueued_ms)
             SELECT id, enqueued_ms FROM ins")
        .await?,
        by_request: p("SELECT id FROM match_tickets WHERE player_id = $1 AND request_id = $2").await?,
        open_of: p("SELECT id FROM match_tickets WHERE state = 'waiting' AND members && $1::bigint[] ORDER BY id LIMIT 1").await?,
        view: p("SELECT t.id, t.player_id, t.members, t.mode, t.region, t.enqueued_ms, t.state, t.reason,
                    m.id, m.room_id, m.zone_id, m.instance_id, m.addr, m.teams, m.join_expires_ms
             FROM match_tickets t LEFT JOIN matches m ON m.id = t.match_id AND t.state = 'matched'
             WHERE t.id = $1")
        .await?,
        cancel: p("UPDATE match_tickets SET state = 'cancelled', updated_ms = $3
             WHERE id = $1 AND $2 = ANY(members) AND state = 'waiting' RETURNING id")
        .await?,
        refuse: p("WITH r AS (UPDATE match_tickets SET state = 'refused', reason = $2, updated_ms = $3
                 WHERE id = $1 AND state = 'waiting' RETURNING id)
             SELECT id, pg_notify($4, 'm' || id) FROM r")
        .await?,
        waiting_all: p("SELECT id, members, ratings, mode, region, enqueued_ms FROM match_tickets WHERE state = 'waiting' ORDER BY id")
            .await?,
        waiting_by_ids: p(
            "SELECT id, members, ratings, mode, region, enqueued_ms FROM match_tickets WHERE id = ANY($1) AND state = 'waiting' ORDER BY id",
        )
        .await?,
        waiting_since: p(
            "SELECT id, members, ratings, mode, region, enqueued_ms, state = 'waiting' FROM match_tickets WHERE id > $1 ORDER BY id LIMIT 20000",
        )
        .await?,
        commit_match: p("WITH locked AS (
                 SELECT id, state FROM match_tickets WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE),
             ok AS (SELECT count(*) FILTER (WHERE state = 'waiting') = cardinality($1::bigint[]) AS ok FROM locked),
             m AS (INSERT INTO matches (mode, region, tickets, teams, spread, made_ms, state, room_id, zone_id, instance_id, addr, join_expires_ms)
                 SELECT $2, $3, $1::bigint[], $4, $5, $6, 'allocated', $7, $8, $9, $10, $11 FROM ok WHERE ok.ok RETURNING id),
             u AS (UPDATE match_tickets t SET state = 'matched', match_id = m.id, updated_ms = $6
                 FROM m WHERE t.id = ANY($1::bigint[]) RETURNING t.id)
             SELECT m.id, (SELECT count(*) FROM u) FROM m")
        .await?,
        joining: p("SELECT id, mode, zone_id, instance_id, tickets FROM matches
             WHERE state = 'allocated' AND join_expires_ms > $1 ORDER BY id")
        .await?,
        requeue: p("WITH m AS (UPDATE matches SET state = 'requeued' WHERE id = $1 AND state = 'allocated' RETURNING id, tickets),
             u AS (UPDATE match_tickets t SET state = 'waiting', match_id = NULL, updated_ms = $2 FROM m
                 WHERE t.id = ANY(m.tickets) AND t.match_id = m.id AND t.state = 'matched'
                 AND NOT EXISTS (SELECT 1 FROM match_tickets o WHERE o.state = 'waiting' AND o.members && t.members)
                 RETURNING t.id)
             SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM u),
                    pg_notify($3, 'r' || array_to_string(m.tickets, ',')) FROM m")
        .await?,
        depth: p("SELECT mode, coalesce(region, ''), count(*), coalesce(sum(cardinality(members)), 0)::bigint
             FROM match_tickets WHERE state = 'waiting' GROUP BY 1, 2 ORDER BY 1, 2")
        .await?,
        rating_of: p("SELECT rating, deviation, volatility, games FROM ratings WHERE player_id = $1").await?,
        notify: p("SELECT pg_notify($1, $2)").await?,
        members_of: p("SELECT coalesce(array_agg(m ORDER BY m), '{}') FROM match_tickets, unnest(members) m WHERE id = ANY($1)").await?,
    };
        Ok(st)
    }
}

fn waiting_row(r: &tokio_postgres::Row) -> WaitingRow {
    WaitingRow {
        id: r.get(0),
        members: r.get(1),
        ratings: r.get(2),
        mode: r.get(3),
        region: r.get(4),
        enqueued_ms: r.get(5),
    }
}

impl Queue {
    /// Opens `connections` connections with the statements prepared (the tables exist: the
    /// accounts store migrated first).
    pub async fn connect(url: &str, schema: &str, connections: usize, timeout: Duration) -> Result<Queue, AccountsError> {
        Ok(Queue {
            channel: format!("{schema}_match"),
            pool: PgPool::connect(url, schema, connections, timeout).await?,
        })
    }

    /// The PostgreSQL URL and schema (for the dedicated leader and listener connections).
    pub fn url(&self) -> &str {
        &self.pool.url
    }
    pub fn schema(&self) -> &str {
        &self.pool.schema
    }

    async fn conn(&self) -> Result<Arc<Conn>, AccountsError> {
        self.pool.conn().await
    }

    /// Stores a session player's ticket (ratings from the rating store), or finds the one a
    /// retry or a second request refers to.
    pub async fn insert_session(
        &self,
        player_id: i64,
        members: &[i64],
        mode: &str,
        region: Option<&str>,
        request_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Inserted, AccountsError> {
        let c = self.conn().await?;
        let members = members.to_vec();
        bounded("insert ticket", self.pool.timeout, async {
            if let Some(r) = c
                .client
                .query_opt(&c.st.insert_session, &[&player_id, &members, &mode, &region, &request_id, &now_ms])
                .await
                .map_err(pg("insert ticket"))?
            {
                return Ok(Inserted::New {
                    id: r.get(0),
                    enqueued_ms: r.get(1),
                });
            }
            self.existing(&c, player_id, &members, request_id).await
        })
        .await
    }

    /// Stores a trusted backend's ticket with the rating it gave, or finds the player's waiting one.
    pub async fn insert_service(
        &self,
        player_id: i64,
        rating: f64,
        mode: &str,
        region: Option<&str>,
        now_ms: i64,
    ) -> Result<Inserted, AccountsError> {
        let c = self.conn().await?;
        bounded("insert ticket", self.pool.timeout, async {
            if let Some(r) = c
                .client
                .query_opt(&c.st.insert_service, &[&player_id, &rating, &mode, &region, &now_ms])
                .await
                .map_err(pg("insert ticket"))?
            {
                return Ok(Inserted::New {
                    id: r.get(0),
                    enqueued_ms: r.get(1),
                });
            }
            self.existing(&c, player_id, &[player_id], None).await
        })
        .await
    }

    async fn existing(&self, c: &Conn, player_id: i64, members: &[i64], request_id: Option<&str>) -> Result<Inserted, AccountsError> {
        if let Some(rid) = request_id
            && let Some(r) = c
                .client
                .query_opt(&c.st.by_request, &[&player_id, &rid])
                .await
                .map_err(pg("find ticket"))?
        {
            return Ok(Inserted::Retry(r.get(0)));
        }
        let members = members.to_vec();
        match c.client.query_opt(&c.st.open_of, &[&members]).await.map_err(pg("find ticket"))? {
            Some(r) => Ok(Inserted::AlreadyWaiting(r.get(0))),
            // Matched or cancelled between the insert and this read: a retry finds it then.
            None => Ok(Inserted::AlreadyWaiting(0)),
        }
    }

    /// A ticket and its match.
    pub async fn view(&self, ticket_id: i64) -> Result<Option<TicketView>, AccountsError> {
        let c = self.conn().await?;
        bounded("read ticket", self.pool.timeout, async {
            let Some(r) = c.client.query_opt(&c.st.view, &[&ticket_id]).await.map_err(pg("read ticket"))? else {
                return Ok(None);
            };
            let match_id: Option<i64> = r.get(8);
            Ok(Some(TicketView {
                id: r.get(0),
                player_id: r.get(1),
                members: r.get(2),
                mode: r.get(3),
                region: r.get(4),
                enqueued_ms: r.get(5),
                state: r.get(6),
                reason: r.get(7),
                matched: match_id.map(|match_id| MatchView {
                    match_id,
                    room_id: r.get(9),
                    zone_id: r.get(10),
                    instance_id: r.get(11),
                    addr: r.get(12),
                    teams: r.get(13),
                    join_expires_ms: r.get(14),
                }),
            }))
        })
        .await
    }

    /// Cancels a waiting ticket of which `player_id` is a member; false if it was not waiting
    /// (already matched, cancelled or refused).
    pub async fn cancel(&self, ticket_id: i64, player_id: i64, now_ms: i64) -> Result<bool, AccountsError> {
        let c = self.conn().await?;
        bounded("cancel ticket", self.pool.timeout, async {
            Ok(c.client
                .query_opt(&c.st.cancel, &[&ticket_id, &player_id, &now_ms])
                .await
                .map_err(pg("cancel ticket"))?
                .is_some())
        })
        .await
    }

    /// Refuses a waiting ticket the matcher cannot take (e.g. a party member queued twice).
    pub async fn refuse(&self, ticket_id: i64, reason: &str, now_ms: i64) -> Result<bool, AccountsError> {
        let c = self.conn().await?;
        bounded("refuse ticket", self.pool.timeout, async {
            Ok(c.client
                .query_opt(&c.st.refuse, &[&ticket_id, &reason, &now_ms, &self.channel])
                .await
                .map_err(pg("refuse ticket"))?
                .is_some())
        })
        .await
    }

    /// Every waiting ticket, oldest id first (the leader's pool is rebuilt from these).
    pub async fn waiting(&self) -> Result<Vec<WaitingRow>, AccountsError> {
        let c = self.conn().await?;
        bounded("read queue", self.pool.timeout * 5, async {
            Ok(c.client
                .query(&c.st.waiting_all, &[])
                .await
                .map_err(pg("read queue"))?
                .iter()
                .map(waiting_row)
                .collect())
        })
        .await
    }

    /// The tickets among `ids` that are still waiting.
    pub async fn waiting_by_ids(&self, ids: &[i64]) -> Result<Vec<WaitingRow>, AccountsError> {
        let c = self.conn().await?;
        let ids = ids.to_vec();
        bounded("read tickets", self.pool.timeout, async {
            Ok(c.client
                .query(&c.st.waiting_by_ids, &[&ids])
                .await
                .map_err(pg("read tickets"))?
                .iter()
                .map(waiting_row)
                .collect())
        })
        .await
    }

    /// Tickets with an id above `after`, oldest id first (at most 20,000): the waiting ones, and
    /// the highest id read (waiting or not, so that the caller's watermark moves past them all).
    pub async fn waiting_since(&self, after: i64) -> Result<(Vec<WaitingRow>, i64), AccountsError> {
        let c = self.conn().await?;
        bounded("read new tickets", self.pool.timeout, async {
            let rows = c
                .client
                .query(&c.st.waiting_since, &[&after])
                .await
                .map_err(pg("read new tickets"))?;
            let max = rows.iter().map(|r| r.get::<_, i64>(0)).max().unwrap_or(after);
            Ok((rows.iter().filter(|r| r.get::<_, bool>(6)).map(waiting_row).collect(), max))
        })
        .await
    }

    /// Commits a match in one guarded statement: its tickets move from waiting to matched only
    /// if all of them are still waiting. Returns the match id, or `None` when one was not (then
    /// nothing changed).
    pub async fn commit_match(&self, m: &NewMatch<'_>) -> Result<Option<i64>, AccountsError> {
        let c = self.conn().await?;
        let tickets = m.tickets.to_vec();
        bounded("commit match", self.pool.timeout, async {
            Ok(c.client
                .query_opt(
                    &c.st.commit_match,
                    &[
                        &tickets,
                        &m.mode,
                        &m.region,
                        &m.teams_json,
                        &m.spread,
                        &m.made_ms,
                        &m.room_id,
                        &m.zone_id,
                        &m.instance_id,
                        &m.addr,
                        &m.join_expires_ms,
                    ],
                )
                .await
                .map_err(pg("commit match"))?
                .map(|r| r.get(0)))
        })
        .await
    }

    /// Matches whose join tokens are still valid at `now_ms`.
    pub async fn joining(&self, now_ms: i64) -> Result<Vec<Joining>, AccountsError> {
        let c = self.conn().await?;
        bounded("read matches", self.pool.timeout, async {
            Ok(c.client
                .query(&c.st.joining, &[&now_ms])
                .await
                .map_err(pg("read matches"))?
                .iter()
                .map(|r| Joining {
                    match_id: r.get(0),
                    mode: r.get(1),
                    zone_id: r.get(2),
                    instance_id: r.get(3),
                    tickets: r.get(4),
                })
                .collect())
        })
        .await
    }

    /// Puts a match's tickets back in the queue (their zone server died before the join),
    /// keeping their waiting time. Returns the tickets that are waiting again (a player who
    /// queued anew meanwhile keeps the new ticket).
    pub async fn requeue(&self, match_id: i64, now_ms: i64) -> Result<Vec<i64>, AccountsError> {
        let c = self.conn().await?;
        bounded("requeue match", self.pool.timeout, async {
            Ok(c.client
                .query_opt(&c.st.requeue, &[&match_id, &now_ms, &self.channel])
                .await
                .map_err(pg("requeue match"))?
                .map(|r| r.get::<_, Vec<i64>>(0))
                .unwrap_or_default())
        })
        .await
    }

    /// Wakes the waiters of these tickets wherever they wait (`m<id>,<id>...`, in payloads under
    /// PostgreSQL's 8,000-byte limit). One notifying commit for many matches: PostgreSQL
    /// serialises notifying commits, so the match commits themselves do not notify.
    pub async fn notify_matched(&self, ticket_ids: &[i64]) -> Result<(), AccountsError> {
        let c = self.conn().await?;
        let mut payloads = Vec::new();
        let mut cur = String::from("m");
        for id in ticket_ids {
            if cur.len() > 7_000 {
                payloads.push(std::mem::replace(&mut cur, String::from("m")));
            }
            if cur.len() > 1 {
                cur.push(',');
            }
            cur.push_str(&id.to_string());
        }
        if cur.len() > 1 {
            payloads.push(cur);
        }
        bounded("notify", self.pool.timeout, async {
            for p in payloads {
                c.client.execute(&c.st.notify, &[&self.channel, &p]).await.map_err(pg("notify"))?;
            }
            Ok(())
        })
        .await
    }

    /// Every player of the given tickets.
    pub async fn members_of(&self, ticket_ids: &[i64]) -> Result<Vec<i64>, AccountsError> {
        let c = self.conn().await?;
        let ids = ticket_ids.to_vec();
        bounded("read members", self.pool.timeout, async {
            Ok(c.client
                .query_one(&c.st.members_of, &[&ids])
                .await
                .map_err(pg("read members"))?
                .get(0))
        })
        .await
    }

    /// Waiting tickets and players by (mode, region).
    pub async fn depth(&self) -> Result<Vec<DepthRow>, AccountsError> {
        let c = self.conn().await?;
        bounded("queue depth", self.pool.timeout, async {
            Ok(c.client
                .query(&c.st.depth, &[])
                .await
                .map_err(pg("queue depth"))?
                .iter()
                .map(|r| DepthRow {
                    mode: r.get(0),
                    region: r.get(1),
                    tickets: r.get(2),
                    players: r.get(3),
                })
                .collect())
        })
        .await
    }

    /// A player's rating (the default for a new player).
    pub async fn rating(&self, player_id: i64) -> Result<StoredRating, AccountsError> {
        let c = self.conn().await?;
        bounded("read rating", self.pool.timeout, async {
            Ok(c.client
                .query_opt(&c.st.rating_of, &[&player_id])
                .await
                .map_err(pg("read rating"))?
                .map(|r| StoredRating {
                    rating: r.get(0),
                    deviation: r.get(1),
                    volatility: r.get(2),
                    games: r.get(3),
                })
                .unwrap_or_default())
        })
        .await
    }

    /// Applies a match's result once, in one transaction on its own connection: locks the match
    /// (refusing a second result), locks and reads the players' ratings, stores the new ones
    /// `update` computes from (teams, ranks, ratings). Returns false when the result was already
    /// recorded (nothing changes: results are idempotent).
    pub async fn apply_result(
        &self,
        match_id: i64,
        ranks: &[u32],
        now_ms: i64,
        update: impl FnOnce(&[Vec<i64>], &[u32], &std::collections::BTreeMap<i64, StoredRating>) -> Result<Vec<(i64, StoredRating)>, String>,
    ) -> Result<bool, ResultError> {
        let timeout = self.pool.timeout * 2;
        let work = async {
            let mut client = connect_one(&self.pool.url, &self.pool.schema).await?;
            let tx = client.transaction().await.map_err(pg("result: begin"))?;
            let Some(m) = tx
                .query_opt("SELECT teams, result FROM matches WHERE id = $1 FOR UPDATE", &[&match_id])
                .await
                .map_err(pg("result: read match"))?
            else {
                return Err(ResultError::UnknownMatch(match_id));
            };
            let result: Option<String> = m.get(1);
            if result.is_some() {
                return Ok(false);
            }
            let teams: Vec<Vec<i64>> = serde_json::from_str(&m.get::<_, String>(0))
                .map_err(|e| ResultError::Invalid(format!("the match's teams are unreadable: {e}")))?;
            let players: Vec<i64> = teams.iter().flatten().copied().collect();
            let mut stored = std::collections::BTreeMap::new();
            for r in tx
                .query(
                    "SELECT player_id, rating, deviation, volatility, games FROM ratings WHERE player_id = ANY($1) ORDER BY player_id FOR UPDATE",
                    &[&players],
                )
                .await
                .map_err(pg("result: read ratings"))?
            {
                stored.insert(
                    r.get::<_, i64>(0),
                    StoredRating {
                        rating: r.get(1),
                        deviation: r.get(2),
                        volatility: r.get(3),
                        games: r.get(4),
                    },
                );
            }
            for p in &players {
                stored.entry(*p).or_default();
            }
            let new = update(&teams, ranks, &stored).map_err(ResultError::Invalid)?;
            let ids: Vec<i64> = new.iter().map(|(p, _)| *p).collect();
            let rating: Vec<f64> = new.iter().map(|(_, r)| r.rating).collect();
            let deviation: Vec<f64> = new.iter().map(|(_, r)| r.deviation).collect();
            let volatility: Vec<f64> = new.iter().map(|(_, r)| r.volatility).collect();
            tx.execute(
                "INSERT INTO ratings (player_id, rating, deviation, volatility, games, updated_ms)
                 SELECT p, r, d, v, 1, $5 FROM unnest($1::bigint[], $2::float8[], $3::float8[], $4::float8[]) AS x(p, r, d, v)
                 ON CONFLICT (player_id) DO UPDATE SET rating = excluded.rating, deviation = excluded.deviation,
                     volatility = excluded.volatility, games = ratings.games + 1, updated_ms = excluded.updated_ms",
                &[&ids, &rating, &deviation, &volatility, &now_ms],
            )
            .await
            .map_err(pg("result: store ratings"))?;
            let text = serde_json::to_string(ranks).unwrap_or_default();
            tx.execute(
                "UPDATE matches SET result = $2, result_ms = $3 WHERE id = $1",
                &[&match_id, &text, &now_ms],
            )
            .await
            .map_err(pg("result: record"))?;
            tx.commit().await.map_err(pg("result: commit"))?;
            Ok(true)
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            ResultError::Store(AccountsError::Timeout {
                op: "apply result",
                timeout,
            })
        })?
    }
}
