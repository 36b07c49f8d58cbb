//! # zone-directory: what zone servers and the lobby say to each other through Redis
//!
//! One place for the directory's wire format, so the announcer in `zone-server` and the reader in
//! `zone-lobby` cannot drift apart:
//!
//! - **records**: each running zone server rewrites `{prefix}dir:{zone}:{instance}` (a JSON
//!   [`ZoneRecord`]) every second with a TTL of a few seconds, and scores its member in the
//!   index sorted set `{prefix}dir:index` with the record's expiry (ms). Readers take the members
//!   whose score is still in the future, fetch them with one `MGET`, and drop (repair) members whose
//!   record is gone: a killed server disappears when its TTL runs out. Never `KEYS` or `SCAN`;
//! - **seats**: `{prefix}seats:{zone}:{instance}` is a sorted set of player ids scored with the time
//!   a reservation lapses (`+inf` once the player has joined). [`RESERVE_SEATS_LUA`] checks the
//!   record's state and capacity and adds the seat in one atomic step, so concurrent joins never
//!   over-fill an instance;
//! - **events**: the zone server pushes joins and leaves to the list `{prefix}events` (bounded);
//!   the lobby pops them and keeps each session's zone current;
//! - **kicks**: the lobby pushes player ids to `{prefix}kicks:{zone}:{instance}` when a new login
//!   takes over a session; that instance's announcer pops them and drops the player.
//!
//! Pure data and key names plus thin async helpers over a `redis` connection. It never reads a
//! clock (callers pass `now_ms`), never blocks, and never retries: callers count and log failures.

use serde::{Deserialize, Serialize};

/// How long a record lives after its last rewrite unless a caller says otherwise.
pub const RECORD_TTL_MS_DEFAULT: u64 = 3_000;
/// Most join/leave events the list holds; older ones are trimmed when no lobby is consuming.
pub const EVENTS_MAX: i64 = 100_000;
/// How long a seat set lives after the last announce or reservation: a dead instance's seats go.
pub const SEATS_TTL_MS: u64 = 600_000;

/// A zone server's lifecycle as the directory sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Loading or restoring; not offered.
    Starting,
    /// Taking players.
    Ready,
    /// Refusing new players; listed, not offered.
    Draining,
}

/// One zone server, as announced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoneRecord {
    pub zone_id: String,
    pub instance_id: String,
    /// UDP address players connect to (`HOST:PORT`).
    pub addr: String,
    pub capacity: u32,
    pub players: u32,
    /// Tick duration p99 over the last window, microseconds.
    pub tick_p99_us: u32,
    pub state: InstanceState,
    /// False while the server is overloaded (its tick p99 over budget for a while): it keeps
    /// running and keeps its players, but takes no new ones. Records of older servers lack the
    /// field and read as allocatable.
    #[serde(default = "allocatable_default")]
    pub allocatable: bool,
    /// When this record was written, Unix ms.
    pub updated_ms: u64,
}

fn allocatable_default() -> bool {
    true
}

/// A join or a leave, reported by the zone server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneEvent {
    pub kind: ZoneEventKind,
    pub zone_id: String,
    pub instance_id: String,
    /// The instance's public address, so the lobby can tell the player where it is.
    pub addr: String,
    pub player_id: u64,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneEventKind {
    Join,
    Leave,
}

/// Key names under one prefix (e.g. `lobby:`; tests use a unique one per run).
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// Member of the index for one instance.
    pub fn member(zone_id: &str, instance_id: &str) -> String {
        format!("{zone_id}:{instance_id}")
    }
    pub fn index(&self) -> String {
        format!("{}dir:index", self.prefix)
    }
    pub fn record(&self, member: &str) -> String {
        format!("{}dir:{member}", self.prefix)
    }
    pub fn seats(&self, zone_id: &str, instance_id: &str) -> String {
        format!("{}seats:{}", self.prefix, Keys::member(zone_id, instance_id))
    }
    pub fn kicks(&self, zone_id: &str, instance_id: &str) -> String {
        format!("{}kicks:{}", self.prefix, Keys::member(zone_id, instance_id))
    }
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
}

/// Why a directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("redis {op}: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

fn rerr(op: &'static str) -> impl FnOnce(redis::RedisError) -> DirectoryError {
    move |source| DirectoryError::Redis { op, source }
}

/// Reserves seats for one or more players on one instance, all or nothing. KEYS: record, seats.
/// ARGV: now ms, hold-until ms, seats TTL ms, player ids... A player who already holds a seat keeps
/// it (its hold is raised to hold-until, never lowered; `+inf` once joined stays). Returns
/// `{1, ids...}` (reserved; the ids are the players who held no seat before, the only ones an undo
/// may free), `{0}` (not enough room), `{-1}` (no record: the instance is gone), `{-2}` (not
/// ready, or not allocatable).
pub const RESERVE_SEATS_LUA: &str = r#"
local rec = redis.call('GET', KEYS[1])
if not rec then return {-1} end
local r = cjson.decode(rec)
if r.state ~= 'ready' or r.allocatable == false then return {-2} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
local new = {}
for i = 4, #ARGV do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then new[#new + 1] = ARGV[i] end
end
if redis.call('ZCARD', KEYS[2]) + #new > tonumber(r.capacity) then return {0} end
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[i])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local out = {1}
for _, id in ipairs(new) do out[#out + 1] = tonumber(id) end
return out
"#;

/// The answer of [`reserve_seat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    Reserved,
    Full,
    Gone,
    NotReady,
}

/// Rewrites an instance's record (TTL `ttl_ms`), its index entry, and the seat set's lifetime.
pub async fn announce<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    record: &ZoneRecord,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<(), DirectoryError> {
    let member = Keys::member(&record.zone_id, &record.instance_id);
    let json = serde_json::to_string(record).unwrap_or_default();
    redis::pipe()
        .cmd("SET")
        .arg(keys.record(&member))
        .arg(json)
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .cmd("ZADD")
        .arg(keys.index())
        .arg(now_ms + ttl_ms)
        .arg(&member)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys.index())
        .arg("-inf")
        .arg(format!("({now_ms}"))
        .ignore()
        // The index outlives every record in it, but not a directory nobody announces to.
        .cmd("PEXPIRE")
        .arg(keys.index())
        .arg(SEATS_TTL_MS)
        .ignore()
        .cmd("PEXPIRE")
        .arg(keys.seats(&record.zone_id, &record.instance_id))
        .arg(SEATS_TTL_MS)
        .ignore()
        .query_async::<()>(conn)
        .await
        .map_err(rerr("announce"))
}

/// Removes an instance's record at once (a clean shutdown).
pub async fn withdraw<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    zone_id: &str,
    instance_id: &str,
) -> Result<(), DirectoryError> {
    let member = Keys::member(zone_id, instance_id);
    redis::pipe()
        .cmd("DEL")
        .arg(keys.record(&member))
        .ignore()
        .cmd("ZREM")
        .arg(keys.index())
        .arg(&member)
        .ignore()
        .query_async::<()>(conn)
        .await
        .map_err(rerr("withdraw"))
}

/// Every live record. Index members whose expiry passed or whose record is gone are removed on
/// the way (repair).
pub async fn list<C: redis::aio::ConnectionLike>(conn: &mut C, keys: &Keys, now_ms: u64) -> Result<Vec<ZoneRecord>, DirectoryError> {
    let (members,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys.index())
        .arg("-inf")
        .arg(format!("({now_ms}"))
        .ignore()
        .cmd("ZRANGEBYSCORE")
        .arg(keys.index())
        .arg(now_ms)
        .arg("+inf")
        .query_async(conn)
        .await
        .map_err(rerr("list index"))?;
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let mut mget = redis::cmd("MGET");
    for m in &members {
        mget.arg(keys.record(m));
    }
    let values: Vec<Option<String>> = mget.query_async(conn).await.map_err(rerr("list records"))?;
    let mut out = Vec::with_capacity(values.len());
    let mut dangling = Vec::new();
    for (m, v) in members.iter().zip(values) {
        match v.and_then(|t| serde_json::from_str::<ZoneRecord>(&t).ok()) {
            Some(r) => out.push(r),
            None => dangling.push(m.clone()),
        }
    }
    if !dangling.is_empty() {
        redis::cmd("ZREM")
            .arg(keys.index())
            .arg(&dangling)
            .query_async::<()>(conn)
            .await
            .map_err(rerr("repair index"))?;
    }
    Ok(out)
}

/// Atomically reserves a seat for `player_id` on an instance until `hold_until_ms`.
pub async fn reserve_seat<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    zone_id: &str,
    instance_id: &str,
    player_id: u64,
    now_ms: u64,
    hold_until_ms: u64,
) -> Result<Reservation, DirectoryError> {
    Ok(reserve_seats(conn, keys, zone_id, instance_id, &[player_id], now_ms, hold_until_ms)
        .await?
        .0)
}

/// Atomically reserves seats for every one of `players` on an instance until `hold_until_ms`,
/// all or nothing ([`RESERVE_SEATS_LUA`]). With [`Reservation::Reserved`], also returns the players
/// who held no seat before: the only seats an undo may free.
pub async fn reserve_seats<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    zone_id: &str,
    instance_id: &str,
    players: &[u64],
    now_ms: u64,
    hold_until_ms: u64,
) -> Result<(Reservation, Vec<u64>), DirectoryError> {
    let member = Keys::member(zone_id, instance_id);
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RESERVE_SEATS_LUA)
        .arg(2)
        .arg(keys.record(&member))
        .arg(keys.seats(zone_id, instance_id))
        .arg(now_ms)
        .arg(hold_until_ms)
        .arg(SEATS_TTL_MS);
    for p in players {
        cmd.arg(*p);
    }
    let r: Vec<i64> = cmd.query_async(conn).await.map_err(rerr("reserve seats"))?;
    Ok(match r.first() {
        Some(1) => (Reservation::Reserved, r[1..].iter().map(|&p| p as u64).collect()),
        Some(0) => (Reservation::Full, Vec::new()),
        Some(-2) => (Reservation::NotReady, Vec::new()),
        _ => (Reservation::Gone, Vec::new()),
    })
}

/// Seats held on an instance (reserved or joined), after dropping lapsed reservations.
pub async fn seats_held<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    zone_id: &str,
    instance_id: &str,
    now_ms: u64,
) -> Result<u64, DirectoryError> {
    let key = keys.seats(zone_id, instance_id);
    let (n,): (u64,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(format!("({now_ms}"))
        .ignore()
        .cmd("ZCARD")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(rerr("seats"))?;
    Ok(n)
}

/// Reports joins and leaves: pushes the events (bounded list) and turns each join's seat into a
/// held one (`+inf`) and frees each leave's.
pub async fn report_events<C: redis::aio::ConnectionLike>(conn: &mut C, keys: &Keys, events: &[ZoneEvent]) -> Result<(), DirectoryError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut p = redis::pipe();
    let mut push = redis::cmd("RPUSH");
    push.arg(keys.events());
    for e in events {
        push.arg(serde_json::to_string(e).unwrap_or_default());
        let seats = keys.seats(&e.zone_id, &e.instance_id);
        match e.kind {
            ZoneEventKind::Join => p.cmd("ZADD").arg(&seats).arg("+inf").arg(e.player_id).ignore(),
            ZoneEventKind::Leave => p.cmd("ZREM").arg(&seats).arg(e.player_id).ignore(),
        };
    }
    p.add_command(push).ignore();
    p.cmd("LTRIM").arg(keys.events()).arg(-EVENTS_MAX).arg(-1).ignore();
    p.cmd("PEXPIRE").arg(keys.events()).arg(SEATS_TTL_MS).ignore();
    p.query_async::<()>(conn).await.map_err(rerr("report events"))
}

/// Pops up to `max` join/leave events (oldest first). Unparsable entries are skipped.
pub async fn pop_events<C: redis::aio::ConnectionLike>(conn: &mut C, keys: &Keys, max: usize) -> Result<Vec<ZoneEvent>, DirectoryError> {
    let raw: Option<Vec<String>> = redis::cmd("LPOP")
        .arg(keys.events())
        .arg(max.max(1))
        .query_async(conn)
        .await
        .map_err(rerr("pop events"))?;
    Ok(raw
        .unwrap_or_default()
        .iter()
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect())
}

/// Asks an instance to drop a player (its announcer pops the list).
pub async fn push_kick<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    zone_id: &str,
    instance_id: &str,
    player_id: u64,
) -> Result<(), DirectoryError> {
    let key = keys.kicks(zone_id, instance_id);
    redis::pipe()
        .cmd("RPUSH")
        .arg(&key)
        .arg(player_id)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(SEATS_TTL_MS)
        .ignore()
        .query_async::<()>(conn)
        .await
        .map_err(rerr("push kick"))
}

/// Pops up to `max` kicks for an instance.
pub async fn pop_kicks<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    zone_id: &str,
    instance_id: &str,
    max: usize,
) -> Result<Vec<u64>, DirectoryError> {
    let raw: Option<Vec<u64>> = redis::cmd("LPOP")
        .arg(keys.kicks(zone_id, instance_id))
        .arg(max.max(1))
        .query_async(conn)
        .await
        .map_err(rerr("pop kicks"))?;
    Ok(raw.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_keys() {
        let r = ZoneRecord {
            zone_id: "demo".into(),
            instance_id: "a".into(),
            addr: "127.0.0.1:7777".into(),
            capacity: 10,
            players: 2,
            tick_p99_us: 900,
            state: InstanceState::Ready,
            allocatable: true,
            updated_ms: 5,
        };
        let t = serde_json::to_string(&r).unwrap();
        assert!(t.contains("\"state\":\"ready\""), "{t}");
        assert_eq!(serde_json::from_str::<ZoneRecord>(&t).unwrap(), r);
        // A record of a server from before the field reads as allocatable.
        let old = t.replace(",\"allocatable\":true", "");
        assert!(!old.contains("allocatable"), "{old}");
        assert_eq!(serde_json::from_str::<ZoneRecord>(&old).unwrap(), r);
        let k = Keys::new("p:");
        assert_eq!(k.record(&Keys::member("demo", "a")), "p:dir:demo:a");
        assert_eq!(k.seats("demo", "a"), "p:seats:demo:a");
    }
}
