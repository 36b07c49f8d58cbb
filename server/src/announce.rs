//! The zone directory announcer: tells a zone-lobby (through its Redis) that this server is
//! running, how full it is and how its tick is doing; reports joins and leaves; and hands the
//! lobby's kicks (a newer login of the same account) to the network thread.
//!
//! It runs on its own thread with its own small runtime. The tick thread only stores atomics and
//! `try_send`s join/leave events into a bounded queue (full: dropped and counted); the network
//! thread gets kicks through its existing command queue (`ToNet::Kick`, also `try_send`).
//! Every second the record is rewritten with a TTL of a few seconds (5 s from `zone-server`;
//! `zone-directory`), so a
//! killed server disappears from the directory on its own. Redis errors are counted
//! (`zone_lobby_announce_errors_total`) and logged at most every 10 s; they never reach the tick.
//!
//! Never blocks the tick, never panics on Redis' answers.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use zone_directory::{InstanceState, Keys, ZoneEvent, ZoneEventKind, ZoneRecord};
use zone_sim::PlayerId;

use crate::net::ToNet;

/// Join/leave events waiting for the announcer.
const EVENTS_QUEUE_MAX: usize = 16_384;
/// Events kept for a retry while Redis is unreachable.
const PENDING_MAX: usize = 16_384;
/// How often events and kicks are exchanged.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often the record is rewritten.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// Kicks taken per poll at most.
const KICKS_PER_POLL: usize = 256;
/// Pause after a failed exchange: a Redis that is down is not hammered, and one that is only
/// slow gets the record rewritten well within its TTL.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(250);

/// Where and as what to announce.
#[derive(Clone, Debug)]
pub struct AnnounceConfig {
    pub redis_url: String,
    pub prefix: String,
    pub zone_id: String,
    pub instance_id: String,
    pub public_addr: String,
    pub capacity: u32,
    /// Record lifetime after each rewrite.
    pub ttl: Duration,
    /// Bound on each Redis operation.
    pub op_timeout: Duration,
}

/// What the tick and network threads share with the announcer.
pub struct AnnounceShared {
    players: AtomicU32,
    tick_p99_us: AtomicU32,
    state: AtomicU8,
    allocatable: AtomicBool,
    /// A state change waits for no timer: the record is rewritten at the next poll.
    announce_now: AtomicBool,
    events_tx: Sender<(ZoneEventKind, PlayerId)>,
    events_rx: Receiver<(ZoneEventKind, PlayerId)>,
    kick_sink: Mutex<Option<SyncSender<ToNet>>>,
    pub events_dropped: AtomicU64,
    pub kicks_dropped: AtomicU64,
    pub kicks: AtomicU64,
    pub announces: AtomicU64,
    pub errors: AtomicU64,
}

impl std::fmt::Debug for AnnounceShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnounceShared").field("players", &self.players).finish()
    }
}

impl AnnounceShared {
    fn new() -> AnnounceShared {
        let (events_tx, events_rx) = crossbeam_channel::bounded(EVENTS_QUEUE_MAX);
        AnnounceShared {
            players: AtomicU32::new(0),
            tick_p99_us: AtomicU32::new(0),
            state: AtomicU8::new(0),
            allocatable: AtomicBool::new(true),
            announce_now: AtomicBool::new(false),
            events_tx,
            events_rx,
            kick_sink: Mutex::new(None),
            events_dropped: AtomicU64::new(0),
            kicks_dropped: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            announces: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Tick thread: a player joined (never waits).
    pub fn player_joined(&self, p: PlayerId) {
        self.event(ZoneEventKind::Join, p);
    }
    /// Tick thread: a player left (never waits).
    pub fn player_left(&self, p: PlayerId) {
        self.event(ZoneEventKind::Leave, p);
    }
    fn event(&self, kind: ZoneEventKind, p: PlayerId) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.events_tx.try_send((kind, p)) {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn set_players(&self, n: usize) {
        self.players.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
    pub fn set_tick_p99_us(&self, us: u32) {
        self.tick_p99_us.store(us, Ordering::Relaxed);
    }
    pub fn set_ready(&self) {
        self.state.store(1, Ordering::Relaxed);
        self.announce_now.store(true, Ordering::Relaxed);
    }
    pub fn set_draining(&self) {
        self.state.store(2, Ordering::Relaxed);
        self.announce_now.store(true, Ordering::Relaxed);
    }
    /// Overload: the record says `allocatable: false` and the lobby stops offering the instance.
    pub fn set_allocatable(&self, yes: bool) {
        if self.allocatable.swap(yes, Ordering::Relaxed) != yes {
            self.announce_now.store(true, Ordering::Relaxed);
        }
    }
    /// Where kicks go (the network thread's command queue).
    pub fn set_kick_sink(&self, tx: SyncSender<ToNet>) {
        if let Ok(mut g) = self.kick_sink.lock() {
            *g = Some(tx);
        }
    }
    fn state(&self) -> InstanceState {
        match self.state.load(Ordering::Relaxed) {
            0 => InstanceState::Starting,
            1 => InstanceState::Ready,
            _ => InstanceState::Draining,
        }
    }
}

/// The `local` lifecycle's tick side (also usable on its own through [`crate::runner::Hooks::announce`]).
impl crate::lifecycle::Lifecycle for AnnounceShared {
    fn backend(&self) -> &'static str {
        "local"
    }
    fn ready(&self) {
        self.set_ready();
    }
    fn player_joined(&self, p: PlayerId) {
        AnnounceShared::player_joined(self, p);
    }
    fn player_left(&self, p: PlayerId) {
        AnnounceShared::player_left(self, p);
    }
    fn set_players(&self, n: usize) {
        AnnounceShared::set_players(self, n);
    }
    fn set_tick_p99_us(&self, us: u32) {
        AnnounceShared::set_tick_p99_us(self, us);
    }
    fn set_allocatable(&self, yes: bool) {
        AnnounceShared::set_allocatable(self, yes);
    }
    fn set_draining(&self) {
        AnnounceShared::set_draining(self);
    }
    fn set_kick_sink(&self, tx: SyncSender<ToNet>) {
        AnnounceShared::set_kick_sink(self, tx);
    }
}

/// The running announcer.
pub struct Announcer {
    pub shared: Arc<AnnounceShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Announcer {
    /// Starts the announcer's thread. Fails only for a bad URL or when the thread cannot start;
    /// an unreachable Redis is retried for as long as the server runs.
    pub fn start(cfg: AnnounceConfig) -> anyhow::Result<Announcer> {
        let client = redis::Client::open(cfg.redis_url.as_str())
            .with_context(|| format!("--lobby-redis {}: not a Redis URL", zone_config::mask_url_passwords(&cfg.redis_url)))?;
        let shared = Arc::new(AnnounceShared::new());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("zone-announce".into())
            .spawn({
                let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
                let span = tracing::Span::current();
                move || span.in_scope(|| run(cfg, client, shared, stop))
            })
            .context("cannot start the announcer thread")?;
        Ok(Announcer {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops announcing and withdraws the record (best effort, bounded).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn run(cfg: AnnounceConfig, client: redis::Client, shared: Arc<AnnounceShared>, stop: Arc<AtomicBool>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "announcer: cannot build its runtime; not announcing");
            return;
        }
    };
    rt.block_on(async move {
        let keys = Keys::new(&cfg.prefix);
        let mgr_cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.op_timeout))
            .set_response_timeout(Some(cfg.op_timeout))
            .set_number_of_retries(0);
        let mut conn = match redis::aio::ConnectionManager::new_lazy_with_config(client, mgr_cfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "announcer: cannot set up the Redis connection; not announcing");
                return;
            }
        };
        let ttl_ms = u64::try_from(cfg.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pending: Vec<ZoneEvent> = Vec::new();
        let mut last_announce: Option<Instant> = None;
        let mut last_logged: Option<Instant> = None;
        let mut failing = false;
        tracing::info!(zone = %cfg.zone_id, instance = %cfg.instance_id, addr = %cfg.public_addr, "announcing to the lobby's zone directory");
        let timeout = cfg.op_timeout;
        while !stop.load(Ordering::Relaxed) {
            let now = now_ms();
            for (kind, player_id) in shared.events_rx.try_iter().take(PENDING_MAX) {
                if pending.len() >= PENDING_MAX {
                    pending.remove(0);
                    shared.events_dropped.fetch_add(1, Ordering::Relaxed);
                }
                pending.push(ZoneEvent {
                    kind,
                    zone_id: cfg.zone_id.clone(),
                    instance_id: cfg.instance_id.clone(),
                    addr: cfg.public_addr.clone(),
                    player_id,
                    at_ms: now,
                });
            }
            let mut result: Result<(), String> = Ok(());
            let urgent = shared.announce_now.swap(false, Ordering::Relaxed);
            if urgent || last_announce.is_none_or(|t| t.elapsed() >= ANNOUNCE_EVERY) {
                let record = ZoneRecord {
                    zone_id: cfg.zone_id.clone(),
                    instance_id: cfg.instance_id.clone(),
                    addr: cfg.public_addr.clone(),
                    capacity: cfg.capacity,
                    players: shared.players.load(Ordering::Relaxed),
                    tick_p99_us: shared.tick_p99_us.load(Ordering::Relaxed),
                    state: shared.state(),
                    allocatable: shared.allocatable.load(Ordering::Relaxed),
                    updated_ms: now,
                };
                last_announce = Some(Instant::now());
                result = bounded(timeout, zone_directory::announce(&mut conn, &keys, &record, now, ttl_ms)).await;
                if result.is_ok() {
                    shared.announces.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Retried at the next poll, not a second later.
                    last_announce = None;
                }
            }
            if result.is_ok() && !pending.is_empty() {
                result = bounded(timeout, zone_directory::report_events(&mut conn, &keys, &pending)).await;
                if result.is_ok() {
                    pending.clear();
                }
            }
            if result.is_ok() {
                match tokio::time::timeout(timeout, zone_directory::pop_kicks(&mut conn, &keys, &cfg.zone_id, &cfg.instance_id, KICKS_PER_POLL)).await {
                    Ok(Ok(kicks)) => deliver_kicks(&shared, &kicks),
                    Ok(Err(e)) => result = Err(e.to_string()),
                    Err(_) => result = Err(format!("no answer within {timeout:?}")),
                }
            }
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("announcer: Redis is back; announcing again");
                        failing = false;
                    }
                }
                Err(e) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("zone_lobby_announce_errors_total").increment(1);
                    if last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, errors_total = shared.errors.load(Ordering::Relaxed), "announcer: cannot reach the lobby's Redis; the zone keeps running, unlisted");
                        last_logged = Some(Instant::now());
                    }
                    failing = true;
                    tokio::time::sleep(RETRY_AFTER_ERROR).await;
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        let _ = tokio::time::timeout(timeout, zone_directory::withdraw(&mut conn, &keys, &cfg.zone_id, &cfg.instance_id)).await;
    });
}

async fn bounded(timeout: Duration, f: impl Future<Output = Result<(), zone_directory::DirectoryError>>) -> Result<(), String> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

fn deliver_kicks(shared: &AnnounceShared, kicks: &[u64]) {
    if kicks.is_empty() {
        return;
    }
    let sink = shared.kick_sink.lock().ok().and_then(|g| g.clone());
    // Connections that started before now are the ones the lobby meant.
    let before = Instant::now();
    for &p in kicks {
        match &sink {
            Some(tx) if tx.try_send(ToNet::Kick(p, before)).is_ok() => {
                shared.kicks.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("zone_lobby_kicks_total").increment(1);
            }
            _ => {
                shared.kicks_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
