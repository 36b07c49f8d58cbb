//! The matchmaking service: tickets in the durable queue (`queue.rs`), one leader that matches,
//! seats on zone servers, rooms in Redis, and the waiters woken wherever they wait.
//!
//! - **Every instance** accepts tickets (each is durable in PostgreSQL before the API answers),
//!   answers long-polls, and listens on the queue's NOTIFY channel on a dedicated connection:
//!   a waiter registered for a ticket is woken when the ticket is matched, refused or put back.
//! - **One instance at a time is the leader**: it holds a PostgreSQL session advisory lock on a
//!   dedicated connection (the key is derived from the schema, so lobbies sharing a schema share
//!   a leader). When that connection dies (the process was killed, the network broke), PostgreSQL
//!   releases the lock and another instance takes it at its next try (every second).
//! - **The leader** rebuilds the `zone-matchmaker` pool from the waiting tickets, reads new
//!   tickets by id before each pass (and resynchronises with the table every few seconds, so a
//!   ticket is never missed for long, never lost), runs a pass every `--match-pass-ms`, and
//!   places each match (16 at a time): seats reserved on one ready zone server (all or nothing),
//!   a room in Redis with the join tokens, then the guarded commit. A match that finds no seat
//!   goes back to the pool keeping its waiting time (parked for a second, counted as the seat
//!   shortage); one whose commit lost a race to a cancel gives its seats back. A match whose zone
//!   server disappears from the directory (at two watches a second apart) before its join tokens
//!   expire and before any of its players joined is put back in the queue.
//!
//! Never logs a join token or a session key; never holds a PostgreSQL row lock across a Redis call.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use zone_directory::{Keys, ZoneRecord};
use zone_matchmaker::{Match, Member, Mode, Modes, Pool, PoolError, Ticket};

use crate::app::{App, hex, now_ms, random};
use crate::error::ApiError;
use crate::join::{encode_session_key, mint_join_token};
use crate::queue::{Inserted, NewMatch, Queue, TicketView, WaitingRow};

/// Longest long-poll.
pub const MAX_WAIT_MS: u64 = 30_000;
/// How often the leader tries to take the lock, and a waiter re-reads its ticket without a wake-up.
const LEADER_RETRY: Duration = Duration::from_secs(1);
const WAITER_RECHECK: Duration = Duration::from_secs(2);
/// How often the leader reconciles its pool with the table, and watches matches on their way in.
const RESYNC_EVERY_MS: u64 = 5_000;
const WATCH_EVERY_MS: u64 = 1_000;
/// How long a match that found no seat waits before it is tried again.
const PARK_MS: u64 = 1_000;
/// How long a room lives in Redis after its match.
const ROOM_TTL_MS: u64 = 3_600_000;
/// Notifications buffered between the listener and the dispatcher; beyond it, a resync.
const NOTIFY_QUEUE: usize = 65_536;

/// Queue demand for the autoscaler: players waiting, and players matched but waiting for a seat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MatchDemand {
    pub waiting_players: u64,
    pub shortage_players: u64,
}

/// What a player receives for its seat, kept in the room until the room expires.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Grant {
    join_token: String,
    session_key: String,
    expires_at: u64,
}

/// A ticket's answer.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a short-lived answer
pub enum TicketAnswer {
    Matched(Matched),
    Waiting { ticket_id: i64, window: f64, waited_ms: u64 },
    Cancelled { ticket_id: i64 },
    Refused { ticket_id: i64, reason: String },
}

/// A matched ticket, as one player sees it.
#[derive(Clone, Debug)]
pub struct Matched {
    pub ticket_id: i64,
    pub match_id: i64,
    pub room_id: String,
    pub game_server: String,
    pub zone_id: String,
    pub instance_id: String,
    pub opponent_id: Option<i64>,
    pub opponent_ids: Vec<i64>,
    pub team: usize,
    pub teams: Vec<Vec<i64>>,
    pub join_token: String,
    pub session_key: String,
    pub expires_at: u64,
}

/// What the leader is told by the notification listener.
#[derive(Default)]
struct Inbox {
    new: Vec<i64>,
    cancelled: Vec<i64>,
    resync: bool,
}

/// The matchmaking state an instance shares between its handlers and its tasks.
pub struct Matchmaking {
    pub modes: Modes,
    pub queue: Queue,
    waiters: Mutex<HashMap<i64, Arc<Notify>>>,
    inbox: Mutex<Inbox>,
    wake_leader: Notify,
    leader: AtomicBool,
    /// Players waiting by mode (refreshed every second from PostgreSQL), plus tickets this
    /// instance added since.
    waiting_by_mode: Mutex<BTreeMap<String, i64>>,
    waiting_total: AtomicU64,
    shortage_total: AtomicU64,
}

fn fnv1a(s: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

fn refused(reason: &'static str) {
    metrics::counter!("lobby_match_refused_total", "reason" => reason).increment(1);
}

fn to_ticket(r: &WaitingRow) -> Ticket {
    Ticket {
        id: r.id,
        mode: r.mode.clone(),
        region: r.region.clone(),
        members: r
            .members
            .iter()
            .zip(r.ratings.iter().chain(std::iter::repeat(&crate::queue::DEFAULT_RATING)))
            .map(|(p, rating)| Member {
                player_id: *p,
                rating: *rating,
            })
            .collect(),
        enqueued_ms: r.enqueued_ms.max(0) as u64,
    }
}

/// Checks a session request's party: the caller plus `party`, no duplicates, 1..=max_party.
pub fn party_members(mode: &Mode, caller: i64, party: &[i64]) -> Result<Vec<i64>, String> {
    let mut members = vec![caller];
    for p in party {
        if *p == caller {
            continue;
        }
        if *p <= 0 {
            return Err(format!("field `party`: {p} is not an account id"));
        }
        if members.contains(p) {
            return Err(format!("field `party`: account {p} is listed twice"));
        }
        members.push(*p);
        if members.len() > 64 {
            break;
        }
    }
    let max = mode.max_party.min(mode.team_size) as usize;
    if members.len() > max {
        return Err(format!(
            "field `party`: a party of {} in mode {:?}, which takes parties of 1 to {max}",
            members.len(),
            mode.name
        ));
    }
    Ok(members)
}

/// Checks a region name: 1 to 32 letters, digits, `-` and `_`.
pub fn check_region(region: Option<&str>) -> Result<(), String> {
    match region {
        Some(r) if r.is_empty() || r.len() > 32 || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
            Err(format!("field `region`: {r:?} must be 1 to 32 letters, digits, - and _"))
        }
        _ => Ok(()),
    }
}

impl Matchmaking {
    pub fn new(modes: Modes, queue: Queue) -> Matchmaking {
        Matchmaking {
            modes,
            queue,
            waiters: Mutex::new(HashMap::new()),
            inbox: Mutex::new(Inbox::default()),
            wake_leader: Notify::new(),
            leader: AtomicBool::new(false),
            waiting_by_mode: Mutex::new(BTreeMap::new()),
            waiting_total: AtomicU64::new(0),
            shortage_total: AtomicU64::new(0),
        }
    }

    /// Whether this instance is the one that matches.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Players waiting, and matched but waiting for a seat (refreshed every second).
    pub fn demand(&self) -> MatchDemand {
        MatchDemand {
            waiting_players: self.waiting_total.load(Ordering::Relaxed),
            shortage_players: self.shortage_total.load(Ordering::Relaxed),
        }
    }

    /// The mode, or 400 naming the modes there are.
    pub fn mode(&self, name: &str) -> Result<&Mode, ApiError> {
        self.modes.get(name).ok_or_else(|| {
            refused("unknown_mode");
            ApiError::bad_request(
                "unknown_mode",
                format!("field `mode`: no mode {name:?}; this lobby has {:?}", self.modes.names()),
            )
        })
    }

    /// 429 when the mode's queue is full (players waiting, as of the last refresh plus this
    /// instance's own tickets since).
    pub fn check_room(&self, mode: &Mode, players: usize) -> Result<(), ApiError> {
        let waiting = self.waiting_by_mode.lock().map_or(0, |m| m.get(&mode.name).copied().unwrap_or(0));
        if waiting.max(0) as usize + players > mode.queue_limit {
            refused("queue_full");
            return Err(ApiError::rate_limited(
                format!(
                    "mode {:?} has {} players waiting, its limit (queue_limit): try again later",
                    mode.name, mode.queue_limit
                ),
                1_000,
            ));
        }
        Ok(())
    }

    fn added(&self, mode: &str, players: usize) {
        if let Ok(mut m) = self.waiting_by_mode.lock() {
            *m.entry(mode.to_string()).or_insert(0) += players as i64;
        }
    }

    /// Maps an insert's outcome to a ticket id, or 409 for a second waiting ticket.
    pub fn inserted(&self, mode: &Mode, players: usize, r: Inserted) -> Result<i64, ApiError> {
        match r {
            Inserted::New { id, .. } => {
                self.added(&mode.name, players);
                metrics::counter!("lobby_match_tickets_total", "mode" => mode.name.clone()).increment(1);
                Ok(id)
            }
            Inserted::Retry(id) => Ok(id),
            Inserted::AlreadyWaiting(id) => {
                refused("duplicate");
                Err(ApiError::conflict(
                    "already_queued",
                    if id > 0 {
                        format!("a player of this request already waits in ticket {id}: wait on it or cancel it first")
                    } else {
                        "a player of this request already has a ticket: wait on it or cancel it first".to_string()
                    },
                ))
            }
        }
    }

    fn waiter(&self, ticket_id: i64) -> Arc<Notify> {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(w.entry(ticket_id).or_insert_with(|| Arc::new(Notify::new())))
    }

    fn release_waiter(&self, ticket_id: i64, n: Arc<Notify>) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else waits on this ticket.
        if Arc::strong_count(&n) <= 2 {
            w.remove(&ticket_id);
        }
    }

    fn wake(&self, ticket_id: i64) {
        let n = self.waiters.lock().ok().and_then(|w| w.get(&ticket_id).cloned());
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self.waiters.lock().map(|w| w.values().cloned().collect()).unwrap_or_default();
        for n in all {
            n.notify_waiters();
        }
    }

    fn dispatch(&self, payload: &str) {
        let kind = payload.get(..1).unwrap_or("");
        let rest = payload.get(1..).unwrap_or("");
        let ids = rest.split(',').filter_map(|s| s.parse::<i64>().ok());
        match kind {
            "t" => {
                if self.is_leader() {
                    if let Ok(mut i) = self.inbox.lock() {
                        i.new.extend(ids);
                    }
                    self.wake_leader.notify_one();
                }
            }
            "c" => {
                let ids: Vec<i64> = ids.collect();
                for id in &ids {
                    self.wake(*id);
                }
                if self.is_leader()
                    && let Ok(mut i) = self.inbox.lock()
                {
                    i.cancelled.extend(ids);
                }
            }
            "r" => {
                let ids: Vec<i64> = ids.collect();
                for id in &ids {
                    self.wake(*id);
                }
                if self.is_leader() {
                    if let Ok(mut i) = self.inbox.lock() {
                        i.new.extend(ids);
                    }
                    self.wake_leader.notify_one();
                }
            }
            _ => {
                for id in ids {
                    self.wake(id);
                }
            }
        }
    }

    /// Waits on a ticket of which `caller` is a member for up to `wait_ms`, and answers it.
    pub async fn wait(&self, app: &App, ticket_id: i64, caller: i64, wait_ms: u64) -> Result<TicketAnswer, ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        let notify = self.waiter(ticket_id);
        let r = self.wait_inner(app, ticket_id, caller, deadline, &notify).await;
        self.release_waiter(ticket_id, notify);
        r
    }

    async fn wait_inner(
        &self,
        app: &App,
        ticket_id: i64,
        caller: i64,
        deadline: tokio::time::Instant,
        notify: &Notify,
    ) -> Result<TicketAnswer, ApiError> {
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let view = self
                .queue
                .view(ticket_id)
                .await?
                .filter(|v| v.members.contains(&caller))
                .ok_or_else(|| ApiError::not_found("unknown_ticket", format!("no ticket {ticket_id} of yours")))?;
            if let Some(a) = self.answer(app, &view, caller).await? {
                return Ok(a);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let waited_ms = now_ms().saturating_sub(view.enqueued_ms.max(0) as u64);
                let window = self.modes.get(&view.mode).map_or(0.0, |m| zone_matchmaker::window(m, waited_ms));
                return Ok(TicketAnswer::Waiting {
                    ticket_id,
                    window,
                    waited_ms,
                });
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline.min(now + WAITER_RECHECK)) => {}
            }
        }
    }

    /// The final answer of a ticket, or None while it waits.
    async fn answer(&self, app: &App, v: &TicketView, caller: i64) -> Result<Option<TicketAnswer>, ApiError> {
        match v.state.as_str() {
            "waiting" => Ok(None),
            "cancelled" => Ok(Some(TicketAnswer::Cancelled { ticket_id: v.id })),
            "refused" => Ok(Some(TicketAnswer::Refused {
                ticket_id: v.id,
                reason: v.reason.clone().unwrap_or_default(),
            })),
            _ => {
                let Some(m) = &v.matched else {
                    return Ok(None);
                };
                let teams: Vec<Vec<i64>> = serde_json::from_str(&m.teams).unwrap_or_default();
                let team = teams.iter().position(|t| t.contains(&caller)).unwrap_or(0);
                let opponent_ids: Vec<i64> = teams
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != team)
                    .flat_map(|(_, t)| t.iter().copied())
                    .collect();
                let one_v_one = teams.len() == 2 && teams.iter().all(|t| t.len() == 1);
                let mut c = app.sessions.conn.clone();
                let key = room_key(&app.keys, &m.room_id);
                let grant: Option<String> = tokio::time::timeout(
                    app.sessions.timeout,
                    redis::cmd("HGET").arg(&key).arg(format!("grant:{caller}")).query_async(&mut c),
                )
                .await
                .map_err(|_| ApiError::unavailable("redis_unavailable", "the room did not answer in time"))?
                .map_err(|e| {
                    metrics::counter!("lobby_backend_errors_total", "backend" => "redis").increment(1);
                    ApiError::unavailable("redis_unavailable", format!("the room is unavailable: {e}"))
                })?;
                let grant: Grant = match grant.and_then(|g| serde_json::from_str(&g).ok()) {
                    Some(g) => g,
                    None => {
                        return Err(ApiError {
                            status: axum::http::StatusCode::GONE,
                            ..ApiError::not_found(
                                "room_expired",
                                format!("match {} was made but its room has expired: request a new match", m.match_id),
                            )
                        });
                    }
                };
                Ok(Some(TicketAnswer::Matched(Matched {
                    ticket_id: v.id,
                    match_id: m.match_id,
                    room_id: m.room_id.clone(),
                    game_server: m.addr.clone(),
                    zone_id: m.zone_id.clone(),
                    instance_id: m.instance_id.clone(),
                    opponent_id: if one_v_one { opponent_ids.first().copied() } else { None },
                    opponent_ids,
                    team,
                    teams,
                    join_token: grant.join_token,
                    session_key: grant.session_key,
                    expires_at: grant.expires_at,
                })))
            }
        }
    }

    /// Cancels a waiting ticket; 409 when it was matched first (exactly one of the two wins).
    pub async fn cancel(&self, ticket_id: i64, caller: i64) -> Result<(), ApiError> {
        if self.queue.cancel(ticket_id, caller, now_ms() as i64).await? {
            metrics::counter!("lobby_match_cancelled_total").increment(1);
            return Ok(());
        }
        match self.queue.view(ticket_id).await?.filter(|v| v.members.contains(&caller)) {
            None => Err(ApiError::not_found("unknown_ticket", format!("no ticket {ticket_id} of yours"))),
            Some(v) if v.state == "cancelled" => Ok(()),
            Some(v) => Err(ApiError::conflict(
                "not_waiting",
                format!("ticket {ticket_id} is {} already: it cannot be cancelled", v.state),
            )),
        }
    }
}

fn room_key(keys: &Keys, room_id: &str) -> String {
    format!("{}room:{room_id}", keys.prefix)
}

fn shortage_key(keys: &Keys) -> String {
    format!("{}match:shortage", keys.prefix)
}

/// Starts the instance's matchmaking tasks: the notification listener, the leader candidate,
/// and the refresher of queue depth and demand.
pub fn spawn(app: &Arc<App>, stop: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(listen(Arc::clone(app), stop.clone())),
        tokio::spawn(lead(Arc::clone(app), stop.clone())),
        tokio::spawn(refresh(Arc::clone(app), stop.clone())),
    ]
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// LISTENs on the queue's channel and dispatches notifications; reconnects after a second when
/// the connection breaks (then every waiter re-reads its ticket and the leader resyncs).
async fn listen(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mm = &app.matching;
    loop {
        let r = async {
            let (client, mut conn) = tokio_postgres::connect(mm.queue.url(), NoTls).await?;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(NOTIFY_QUEUE);
            let overflow = Arc::new(AtomicBool::new(false));
            let over = Arc::clone(&overflow);
            let driver = tokio::spawn(async move {
                while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    match m {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx.try_send(n.payload().to_string()).is_err() {
                                over.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "matchmaking listener connection failed");
                            break;
                        }
                    }
                }
            });
            client.batch_execute(&format!("LISTEN \"{}\"", mm.queue.channel)).await?;
            // Anything sent while we were not listening: waiters re-read, the leader resyncs.
            mm.wake_all();
            if let Ok(mut i) = mm.inbox.lock() {
                i.resync = true;
            }
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(p) => {
                            if overflow.swap(false, Ordering::Relaxed) {
                                metrics::counter!("lobby_match_notifications_dropped_total").increment(1);
                                mm.wake_all();
                                if let Ok(mut i) = mm.inbox.lock() { i.resync = true; }
                            }
                            mm.dispatch(&p);
                        }
                        None => break,
                    },
                    _ = stopped(&mut stop) => { driver.abort(); return Ok(()); }
                }
            }
            drop(client);
            let _ = driver.await;
            Ok::<(), tokio_postgres::Error>(())
        }
        .await;
        if *stop.borrow() {
            return;
        }
        if let Err(e) = r {
            tracing::warn!(error = %e, "matchmaking listener: cannot listen; retrying in 1 s");
        }
        tokio::select! {
            _ = tokio::time::sleep(LEADER_RETRY) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Refreshes the queue depth (for the 429 bound, the queue gauge and the demand) and the shortage
/// every second.
async fn refresh(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mm = &app.matching;
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        if let Ok(rows) = mm.queue.depth().await {
            let mut by_mode = BTreeMap::new();
            let mut total = 0i64;
            for r in &rows {
                *by_mode.entry(r.mode.clone()).or_insert(0) += r.players;
                total += r.players;
            }
            if let Ok(mut m) = mm.waiting_by_mode.lock() {
                *m = by_mode;
            }
            mm.waiting_total.store(total.max(0) as u64, Ordering::Relaxed);
            // Exported by the leader only, so that a sum over instances counts each player once.
            let leader = mm.is_leader();
            let mut now_seen = BTreeSet::new();
            for r in rows {
                if leader {
                    metrics::gauge!("lobby_match_queue_players", "mode" => r.mode.clone(), "region" => r.region.clone())
                        .set(r.players as f64);
                    now_seen.insert((r.mode, r.region));
                }
            }
            if leader {
                // Every mode has a series from the start (0 while nobody waits, region ""), so the
                // dashboard and LobbyMatchQueueDeep see zeros, not gaps (assets/grafana/check-live-lobby.sh).
                for mode in mm.modes.names() {
                    if !now_seen.iter().any(|(m, _)| m.as_str() == mode) {
                        metrics::gauge!("lobby_match_queue_players", "mode" => mode.to_string(), "region" => "").set(0.0);
                        now_seen.insert((mode.to_string(), String::new()));
                    }
                }
            }
            for (mode, region) in seen.difference(&now_seen) {
                metrics::gauge!("lobby_match_queue_players", "mode" => mode.clone(), "region" => region.clone()).set(0.0);
            }
            seen = now_seen;
        }
        if !mm.is_leader() {
            let mut c = app.sessions.conn.clone();
            let r: Result<Result<Option<u64>, _>, _> = tokio::time::timeout(
                app.sessions.timeout,
                redis::cmd("GET").arg(shortage_key(&app.keys)).query_async(&mut c),
            )
            .await;
            if let Ok(Ok(v)) = r {
                mm.shortage_total.store(v.unwrap_or(0), Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Tries to become the leader every second; leads while the lock's connection lives.
async fn lead(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mm = &app.matching;
    let key = fnv1a(&format!("zone-lobby match leader {}", mm.queue.schema()));
    metrics::gauge!("lobby_match_leader").set(0.0);
    loop {
        let got = async {
            let (client, conn) = tokio_postgres::connect(mm.queue.url(), NoTls).await.ok()?;
            let driver = tokio::spawn(conn);
            loop {
                let r = client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await.ok()?;
                if r.get::<_, bool>(0) {
                    return Some((client, driver));
                }
                tokio::select! {
                    _ = tokio::time::sleep(LEADER_RETRY) => {}
                    _ = stopped(&mut stop) => return None,
                }
            }
        }
        .await;
        if *stop.borrow() {
            return;
        }
        let Some((lock, driver)) = got else {
            tokio::select! {
                _ = tokio::time::sleep(LEADER_RETRY) => {}
                _ = stopped(&mut stop) => return,
            }
            continue;
        };
        mm.leader.store(true, Ordering::Relaxed);
        metrics::gauge!("lobby_match_leader").set(1.0);
        metrics::counter!("lobby_match_leader_changes_total").increment(1);
        tracing::info!("matchmaking: this instance is the leader");
        let mut leader = Leader::new(&app);
        let why = leader.run(&lock, &mut stop).await;
        mm.leader.store(false, Ordering::Relaxed);
        metrics::gauge!("lobby_match_leader").set(0.0);
        for mode in mm.modes.names() {
            metrics::gauge!("lobby_match_seat_shortage_players", "mode" => mode.to_string()).set(0.0);
        }
        drop(lock);
        let _ = driver.await;
        match why {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "matchmaking: no longer the leader"),
        }
    }
}

/// Why a match was not placed.
enum PlaceError {
    NoSeat,
    Raced,
    Backend(String),
}

/// The leader's state.
struct Leader<'a> {
    app: &'a App,
    pool: Pool,
    /// Every ticket in the pool or parked (the pool hands matches back as ids).
    tickets: HashMap<i64, Ticket>,
    /// Matches that found no seat: back in the pool at the time given.
    parked: Vec<(u64, Vec<i64>)>,
    last_resync: u64,
    last_watch: u64,
    /// Matches whose zone server was missing from the directory at the last watch.
    missing: BTreeSet<i64>,
    /// The highest ticket id read, and when each value was reached: new tickets are read above
    /// the value of `NEW_TICKETS_LAG_MS` ago, so one whose id was taken earlier but committed a
    /// little later is not skipped (the resync every 5 s catches any later still).
    seen: std::collections::VecDeque<(u64, i64)>,
    /// New tickets refused for a player already in the pool, with that player's older tickets.
    pending_conflicts: HashMap<i64, Vec<i64>>,
}

/// How far back the leader re-reads new tickets by id (see `Leader::seen`).
const NEW_TICKETS_LAG_MS: u64 = 250;
/// Matches placed at once (their Redis and PostgreSQL round trips overlap).
const PLACE_AT_ONCE: usize = 16;

/// Polls every future to completion, concurrently on this task; outputs in input order.
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

impl<'a> Leader<'a> {
    fn new(app: &'a App) -> Leader<'a> {
        Leader {
            app,
            pool: Pool::new(app.matching.modes.clone()),
            tickets: HashMap::new(),
            parked: Vec::new(),
            last_resync: 0,
            last_watch: 0,
            missing: BTreeSet::new(),
            seen: std::collections::VecDeque::new(),
            pending_conflicts: HashMap::new(),
        }
    }

    fn mm(&self) -> &'a Matchmaking {
        &self.app.matching
    }

    async fn run(&mut self, lock: &tokio_postgres::Client, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let every = Duration::from_millis(self.app.cfg.match_pass_ms);
        let started = std::time::Instant::now();
        self.resync().await?;
        tracing::info!(
            tickets = self.tickets.len(),
            ms = started.elapsed().as_millis() as u64,
            "matchmaking: pool rebuilt from the queue"
        );
        loop {
            if lock.is_closed() {
                return Err("the advisory lock's connection closed".into());
            }
            tokio::select! {
                _ = self.mm().wake_leader.notified() => {}
                _ = tokio::time::sleep(every) => {}
                _ = stopped(stop) => return Ok(()),
            }
            if let Err(e) = self.cycle().await {
                tracing::warn!(error = %e, "matchmaking pass failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(LEADER_RETRY) => {}
                    _ = stopped(stop) => return Ok(()),
                }
            }
        }
    }

    fn insert(&mut self, t: Ticket, refuse: &mut Vec<(i64, String)>) {
        let id = t.id;
        if self.tickets.contains_key(&id) {
            return;
        }
        let players: Vec<i64> = t.members.iter().map(|m| m.player_id).collect();
        match self.pool.restore(t.clone()) {
            Ok(()) => {
                self.tickets.insert(id, t);
            }
            Err(PoolError::DuplicateTicket(_)) => {}
            Err(e @ PoolError::DuplicatePlayer(_)) => {
                // The older tickets of these players, in the pool or parked.
                let older: Vec<i64> = self
                    .tickets
                    .values()
                    .filter(|o| o.members.iter().any(|m| players.contains(&m.player_id)))
                    .map(|o| o.id)
                    .collect();
                self.pending_conflicts.insert(id, older);
                refuse.push((id, e.to_string()));
            }
            Err(e) => refuse.push((id, e.to_string())),
        }
    }

    fn forget(&mut self, id: i64) {
        self.pool.remove(id);
        self.tickets.remove(&id);
        for (_, ids) in &mut self.parked {
            ids.retain(|x| *x != id);
        }
    }

    async fn refuse_all(&mut self, refuse: Vec<(i64, String)>) {
        // A player already in the pool may be there on a ticket cancelled since (cancels do not
        // notify): if that older ticket no longer waits, it goes and the new one comes in.
        let mut refuse_now = Vec::new();
        let mut retry = Vec::new();
        for (id, why) in refuse {
            let older: Vec<i64> = self.pending_conflicts.remove(&id).unwrap_or_default();
            if older.is_empty() {
                refuse_now.push((id, why));
            } else {
                retry.push((id, why, older));
            }
        }
        if !retry.is_empty() {
            let olds: Vec<i64> = retry.iter().flat_map(|(_, _, o)| o.iter().copied()).collect();
            let still: BTreeSet<i64> = match self.mm().queue.waiting_by_ids(&olds).await {
                Ok(rows) => rows.iter().map(|r| r.id).collect(),
                Err(_) => olds.iter().copied().collect(),
            };
            let ids: Vec<i64> = retry.iter().map(|(id, _, _)| *id).collect();
            let rows = self.mm().queue.waiting_by_ids(&ids).await.unwrap_or_default();
            for (id, why, older) in retry {
                if older.iter().any(|o| still.contains(o)) {
                    refuse_now.push((id, why));
                    continue;
                }
                for o in older {
                    self.forget(o);
                }
                if let Some(r) = rows.iter().find(|r| r.id == id) {
                    let t = to_ticket(r);
                    match self.pool.restore(t.clone()) {
                        Ok(()) => {
                            self.tickets.insert(id, t);
                        }
                        Err(e) => refuse_now.push((id, e.to_string())),
                    }
                }
            }
        }
        for (id, why) in refuse_now {
            refused("matcher");
            tracing::info!(ticket_id = id, reason = %why, "matchmaking: ticket refused by the matcher");
            let _ = self.mm().queue.refuse(id, &why, now_ms() as i64).await;
        }
    }

    /// Makes the pool hold exactly the waiting tickets of the table.
    async fn resync(&mut self) -> Result<(), String> {
        let rows = self.mm().queue.waiting().await.map_err(|e| e.to_string())?;
        if let Ok(mut i) = self.mm().inbox.lock() {
            i.resync = false;
        }
        let waiting: BTreeSet<i64> = rows.iter().map(|r| r.id).collect();
        let gone: Vec<i64> = self.tickets.keys().copied().filter(|id| !waiting.contains(id)).collect();
        for id in gone {
            self.forget(id);
        }
        let mut refuse = Vec::new();
        for r in &rows {
            self.insert(to_ticket(r), &mut refuse);
        }
        self.refuse_all(refuse).await;
        self.last_resync = now_ms();
        let max = rows.iter().map(|r| r.id).max().unwrap_or(0);
        self.note_seen(max);
        Ok(())
    }

    fn note_seen(&mut self, max: i64) {
        let now = now_ms();
        let top = self.seen.back().map_or(0, |(_, m)| *m).max(max);
        self.seen.push_back((now, top));
        // Keep one entry older than the lag (the floor) and the newer ones.
        while self.seen.len() > 1 && self.seen[1].0 + NEW_TICKETS_LAG_MS <= now {
            self.seen.pop_front();
        }
    }

    /// The id above which new tickets are read: the highest id seen `NEW_TICKETS_LAG_MS` ago.
    fn floor(&self) -> i64 {
        let now = now_ms();
        self.seen
            .iter()
            .rev()
            .find(|(at, _)| at + NEW_TICKETS_LAG_MS <= now)
            .or(self.seen.front())
            .map_or(0, |(_, m)| *m)
    }

    async fn cycle(&mut self) -> Result<(), String> {
        let (new, cancelled, resync) = match self.mm().inbox.lock() {
            Ok(mut i) => (std::mem::take(&mut i.new), std::mem::take(&mut i.cancelled), i.resync),
            Err(_) => (Vec::new(), Vec::new(), true),
        };
        for id in cancelled {
            self.forget(id);
        }
        let now = now_ms();
        if resync || now.saturating_sub(self.last_resync) >= RESYNC_EVERY_MS {
            self.resync().await?;
        } else {
            // Tickets put back ('r' notifications) and new ones (by id).
            let back: Vec<i64> = new.into_iter().filter(|id| !self.tickets.contains_key(id)).collect();
            let mut rows = if back.is_empty() {
                Vec::new()
            } else {
                self.mm().queue.waiting_by_ids(&back).await.map_err(|e| e.to_string())?
            };
            let (fresh, max) = self.mm().queue.waiting_since(self.floor()).await.map_err(|e| e.to_string())?;
            rows.extend(fresh);
            let mut refuse = Vec::new();
            for r in &rows {
                self.insert(to_ticket(r), &mut refuse);
            }
            self.refuse_all(refuse).await;
            self.note_seen(max);
        }
        // Parked matches whose second is up go back to the pool.
        let now = now_ms();
        let due: Vec<Vec<i64>> = {
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked).into_iter().partition(|(at, _)| *at <= now);
            self.parked = keep;
            due.into_iter().map(|(_, ids)| ids).collect()
        };
        for id in due.into_iter().flatten() {
            if let Some(t) = self.tickets.get(&id).cloned() {
                let _ = self.pool.restore(t);
            }
        }
        let pass_started = std::time::Instant::now();
        let matches = self.pool.pass(now);
        metrics::histogram!("lobby_match_pass_seconds").record(pass_started.elapsed().as_secs_f64());
        if !matches.is_empty() {
            let records = self.app.directory(now).await.map_err(|e| e.message)?;
            let mut matches = matches.into_iter().peekable();
            while matches.peek().is_some() {
                let chunk: Vec<Match> = matches.by_ref().take(PLACE_AT_ONCE).collect();
                // Seats are reserved by atomic scripts, so matches placed at once never overfill
                // a server; each commit is guarded on its own tickets.
                let placed = {
                    let this = &*self;
                    join_all(chunk.iter().map(|m| this.try_place(m, &records, now)).collect()).await
                };
                let woken: Vec<i64> = chunk
                    .iter()
                    .zip(&placed)
                    .filter(|(_, r)| r.is_ok())
                    .flat_map(|(m, _)| m.tickets.iter().copied())
                    .collect();
                if !woken.is_empty()
                    && let Err(e) = self.mm().queue.notify_matched(&woken).await
                {
                    // The waiters re-read their tickets within WAITER_RECHECK anyway.
                    tracing::warn!(error = %e, "cannot notify matched tickets' waiters");
                }
                for (m, r) in chunk.into_iter().zip(placed) {
                    self.placed(m, r, now).await;
                }
            }
        }
        self.export_shortage().await;
        if now.saturating_sub(self.last_watch) >= WATCH_EVERY_MS {
            self.last_watch = now;
            self.watch(now).await;
        }
        Ok(())
    }

    async fn export_shortage(&self) {
        let mut by_mode: BTreeMap<&str, u64> = self.mm().modes.names().into_iter().map(|m| (m, 0)).collect();
        let mut total = 0;
        for (_, ids) in &self.parked {
            for id in ids {
                if let Some(t) = self.tickets.get(id) {
                    let n = t.members.len() as u64;
                    total += n;
                    if let Some(v) = by_mode.get_mut(t.mode.as_str()) {
                        *v += n;
                    }
                }
            }
        }
        for (mode, n) in by_mode {
            metrics::gauge!("lobby_match_seat_shortage_players", "mode" => mode.to_string()).set(n as f64);
        }
        let before = self.mm().shortage_total.swap(total, Ordering::Relaxed);
        if before != total || total > 0 {
            let mut c = self.app.sessions.conn.clone();
            let _ = tokio::time::timeout(
                self.app.sessions.timeout,
                redis::cmd("SET")
                    .arg(shortage_key(&self.app.keys))
                    .arg(total)
                    .arg("PX")
                    .arg(10_000)
                    .query_async::<()>(&mut c),
            )
            .await;
        }
    }

    /// Records what placing a match did; a match that could not be placed goes back to the pool.
    async fn placed(&mut self, m: Match, r: Result<i64, PlaceError>, now: u64) {
        let mode = m.mode.clone();
        match r {
            Ok(match_id) => {
                metrics::counter!("lobby_matches_total", "mode" => mode.clone()).increment(1);
                metrics::histogram!("lobby_match_spread", "mode" => mode.clone()).record(m.spread);
                for id in &m.tickets {
                    if let Some(t) = self.tickets.remove(id) {
                        let waited = now.saturating_sub(t.enqueued_ms) as f64 / 1000.0;
                        metrics::histogram!("lobby_match_wait_seconds", "mode" => mode.clone()).record(waited);
                    }
                }
                tracing::debug!(match_id, mode = %mode, spread = m.spread, "match placed");
            }
            Err(PlaceError::NoSeat) => {
                metrics::counter!("lobby_match_allocation_failures_total", "mode" => mode.clone()).increment(1);
                self.parked.push((now + PARK_MS, m.tickets.clone()));
            }
            Err(PlaceError::Raced) => {
                metrics::counter!("lobby_match_commit_races_total", "mode" => mode.clone()).increment(1);
                // Tickets still waiting go back; the others were cancelled.
                if let Ok(rows) = self.mm().queue.waiting_by_ids(&m.tickets).await {
                    let still: BTreeSet<i64> = rows.iter().map(|r| r.id).collect();
                    for id in &m.tickets {
                        match self.tickets.get(id).cloned() {
                            Some(t) if still.contains(id) => {
                                let _ = self.pool.restore(t);
                            }
                            _ => {
                                self.tickets.remove(id);
                            }
                        }
                    }
                } else {
                    if let Ok(mut i) = self.mm().inbox.lock() {
                        i.resync = true;
                    }
                }
            }
            Err(PlaceError::Backend(e)) => {
                metrics::counter!("lobby_match_allocation_failures_total", "mode" => mode.clone()).increment(1);
                tracing::warn!(error = %e, mode = %mode, "cannot place a match; its tickets wait again");
                self.parked.push((now + PARK_MS, m.tickets.clone()));
            }
        }
    }

    async fn try_place(&self, m: &Match, records: &[ZoneRecord], now: u64) -> Result<i64, PlaceError> {
        let app = self.app;
        let players: Vec<i64> = m.teams.iter().flatten().copied().collect();
        let budget = app.cfg.tick_budget_us();
        let candidates = crate::choose::candidates_for(records, app.cfg.match_zone.as_deref(), budget, players.len() as u32);
        let expires_at = now / 1000 + app.cfg.join_token_ttl;
        let redis_err = |e: redis::RedisError| PlaceError::Backend(format!("redis: {e}"));
        let timed = |what: &'static str| move |_| PlaceError::Backend(format!("redis: {what} did not answer in time"));
        let mut c = app.sessions.conn.clone();
        let mut chosen = None;
        for r in candidates {
            let seats: Vec<u64> = players.iter().map(|&p| p as u64).collect();
            let reserve = zone_directory::reserve_seats(&mut c, &app.keys, &r.zone_id, &r.instance_id, &seats, now, expires_at * 1000);
            let (got, newly) = tokio::time::timeout(app.sessions.timeout, reserve)
                .await
                .map_err(timed("seat reservation"))?
                .map_err(|e| PlaceError::Backend(e.to_string()))?;
            if got == zone_directory::Reservation::Reserved {
                chosen = Some((r, newly));
                break;
            }
        }
        let Some((r, newly_seated)) = chosen else {
            return Err(PlaceError::NoSeat);
        };
        let room_id = hex(&random::<8>().map_err(|e| PlaceError::Backend(e.message))?);
        let key = room_key(&app.keys, &room_id);
        let teams_json = serde_json::to_string(&m.teams).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("mode")
            .arg(&m.mode)
            .arg("zone_id")
            .arg(&r.zone_id)
            .arg("instance_id")
            .arg(&r.instance_id)
            .arg("addr")
            .arg(&r.addr)
            .arg("teams")
            .arg(&teams_json)
            .arg("made_ms")
            .arg(now)
            .ignore();
        for p in &players {
            let g = mint_join_token(
                app.cfg.token_secret.as_bytes(),
                *p as u64,
                &r.zone_id,
                expires_at,
                random().map_err(|e| PlaceError::Backend(e.message))?,
            )
            .map_err(|e| PlaceError::Backend(format!("cannot mint a join token: {e}")))?;
            let grant = Grant {
                join_token: g.token,
                session_key: encode_session_key(&g.key),
                expires_at,
            };
            pipe.cmd("HSET")
                .arg(&key)
                .arg(format!("grant:{p}"))
                .arg(serde_json::to_string(&grant).unwrap_or_default())
                .ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(ROOM_TTL_MS).ignore();
        tokio::time::timeout(app.sessions.timeout, pipe.query_async::<()>(&mut c))
            .await
            .map_err(timed("room"))?
            .map_err(redis_err)?;
        let committed = self
            .mm()
            .queue
            .commit_match(&NewMatch {
                tickets: &m.tickets,
                mode: &m.mode,
                region: m.region.as_deref(),
                teams_json: &teams_json,
                spread: m.spread,
                made_ms: now as i64,
                room_id: &room_id,
                zone_id: &r.zone_id,
                instance_id: &r.instance_id,
                addr: &r.addr,
                join_expires_ms: (expires_at * 1000) as i64,
            })
            .await;
        match committed {
            Ok(Some(match_id)) => {
                let _ = tokio::time::timeout(
                    app.sessions.timeout,
                    redis::cmd("HSET").arg(&key).arg("match_id").arg(match_id).query_async::<()>(&mut c),
                )
                .await;
                Ok(match_id)
            }
            Ok(None) => {
                // The match did not happen: give back the room and the seats this reservation
                // added (a player who already held a seat keeps it).
                let mut undo = redis::pipe();
                if !newly_seated.is_empty() {
                    undo.cmd("ZREM").arg(app.keys.seats(&r.zone_id, &r.instance_id));
                    for p in &newly_seated {
                        undo.arg(*p);
                    }
                    undo.ignore();
                }
                undo.cmd("DEL").arg(&key).ignore();
                let _ = tokio::time::timeout(app.sessions.timeout, undo.query_async::<()>(&mut c)).await;
                Err(PlaceError::Raced)
            }
            // The statement may have committed before the error (a timeout cuts off the client,
            // not the server): keep the room and the seats, which expire by themselves if it did
            // not. The tickets are parked; a still-waiting one is matched again later, a matched
            // one is dropped at its next commit attempt.
            Err(e) => Err(PlaceError::Backend(e.to_string())),
        }
    }

    /// Puts back the matches whose zone server left the directory before their players joined.
    async fn watch(&mut self, now: u64) {
        let Ok(joining) = self.mm().queue.joining(now as i64).await else {
            return;
        };
        if joining.is_empty() {
            return;
        }
        // A directory we cannot read proves nothing: try again next time.
        let Ok(records) = self.app.directory(now).await else {
            return;
        };
        let live: BTreeSet<(&str, &str)> = records.iter().map(|r| (r.zone_id.as_str(), r.instance_id.as_str())).collect();
        let mut missing = BTreeSet::new();
        for j in joining {
            if live.contains(&(j.zone_id.as_str(), j.instance_id.as_str())) {
                continue;
            }
            // Missing at two watches in a row (a record that lapsed once on a busy machine is
            // not a dead server), and nobody has joined it yet (a joined seat is held at +inf:
            // players already playing are not queued again).
            missing.insert(j.match_id);
            if !self.missing.contains(&j.match_id) || self.anyone_joined(&j).await {
                continue;
            }
            missing.remove(&j.match_id);
            match self.mm().queue.requeue(j.match_id, now as i64).await {
                Ok(back) => {
                    metrics::counter!("lobby_match_requeued_total", "mode" => j.mode.clone()).increment(back.len() as u64);
                    tracing::warn!(
                        match_id = j.match_id,
                        zone_id = %j.zone_id,
                        instance_id = %j.instance_id,
                        tickets = back.len(),
                        "matchmaking: the zone server left before its players joined; they wait again"
                    );
                    if let Ok(rows) = self.mm().queue.waiting_by_ids(&back).await {
                        let mut refuse = Vec::new();
                        for r in &rows {
                            self.insert(to_ticket(r), &mut refuse);
                        }
                        self.refuse_all(refuse).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, match_id = j.match_id, "cannot put a match back in the queue"),
            }
        }
        self.missing = missing;
    }

    /// Whether a player of the match has joined its zone server (its seat is held at +inf).
    /// Unknown (Redis did not answer) counts as joined: nobody is queued twice on a guess.
    async fn anyone_joined(&self, j: &crate::queue::Joining) -> bool {
        let players: Vec<i64> = match self.mm().queue.members_of(&j.tickets).await {
            Ok(p) => p,
            Err(_) => return true,
        };
        let mut c = self.app.sessions.conn.clone();
        let mut cmd = redis::cmd("ZMSCORE");
        cmd.arg(self.app.keys.seats(&j.zone_id, &j.instance_id));
        for p in &players {
            cmd.arg(*p);
        }
        match tokio::time::timeout(self.app.sessions.timeout, cmd.query_async::<Vec<Option<f64>>>(&mut c)).await {
            Ok(Ok(scores)) => scores.iter().any(|s| s.is_some_and(f64::is_infinite)),
            _ => true,
        }
    }
}
