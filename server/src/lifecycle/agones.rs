//! The `agones` lifecycle: the Agones SDK spoken over its REST gateway (the `sdk-server` sidecar)
//! on `127.0.0.1:AGONES_SDK_HTTP_PORT` (default 9358). The contract is Agones' `sdk.swagger.json`
//! and `alpha.swagger.json`:
//!
//! - `POST /ready` once the zone is loaded (or restored) and the game socket is bound;
//! - `POST /health` every 2 s, only while the tick loop is alive (it advanced within 2 s, or the
//!   zone is still loading, or the final snapshot is being taken): a stalled tick stops the
//!   heartbeats and Agones marks the GameServer `Unhealthy`;
//! - `PUT /metadata/label` `allocatable` = `true`/`false` (Agones stores it as
//!   `agones.dev/sdk-allocatable`; allocations select on it): false while overloaded or draining;
//! - `PUT /metadata/annotation` `players`, `tick-p99-ms` and `draining` (at most every 5 s, and
//!   only when changed: every call is a write to the Kubernetes API);
//! - alpha player tracking: `PUT /alpha/player/capacity` at Ready, `POST /alpha/player/connect`
//!   and `/alpha/player/disconnect` per player (a 404/501, i.e. the `PlayerTracking` feature gate
//!   off, turns it off with one log line);
//! - `POST /shutdown` after the final snapshot.
//!
//! It runs on its own thread with blocking sockets and short timeouts, one request per
//! connection. The tick thread only stores atomics and `try_send`s player events into a bounded
//! queue (full: dropped and counted). A gateway that is not up yet (the sidecar may start after
//! the server) or goes away is retried with exponential backoff (250 ms up to 5 s) and logged at
//! most every 10 s; the zone keeps ticking. Never blocks the tick, never panics on an answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use zone_sim::PlayerId;

use crate::lifecycle::Lifecycle;
use crate::net::ToNet;

/// The SDK gateway's port when `AGONES_SDK_HTTP_PORT` is unset (Agones' default).
pub const SDK_HTTP_PORT_DEFAULT: u16 = 9358;
/// How often Health is sent while the tick is alive.
pub const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// The tick must have advanced within this long for Health to be sent.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(2);
/// Labels and annotations are rewritten at most this often (each is a Kubernetes API write).
const METADATA_EVERY: Duration = Duration::from_secs(5);
/// The worker's idle poll.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// First and longest pause after the gateway could not be reached.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Player events waiting for the worker.
const EVENTS_QUEUE_MAX: usize = 16_384;
/// Largest answer read from the gateway.
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

/// Where the gateway is and what to tell it.
#[derive(Clone, Debug)]
pub struct AgonesConfig {
    /// `127.0.0.1:AGONES_SDK_HTTP_PORT`.
    pub sdk: SocketAddr,
    /// Seats (sent as the alpha player capacity).
    pub capacity: u32,
    /// Bound on each request (connect, write, read).
    pub op_timeout: Duration,
}

impl AgonesConfig {
    pub fn local(port: u16, capacity: u32) -> AgonesConfig {
        AgonesConfig {
            sdk: SocketAddr::from(([127, 0, 0, 1], port)),
            capacity,
            op_timeout: Duration::from_secs(1),
        }
    }
}

/// Counters of what the worker did (for tests, `/status` and logs).
#[derive(Debug, Default)]
pub struct AgonesCounters {
    pub ready_sent: AtomicBool,
    pub health_sent: AtomicU64,
    pub labels_sent: AtomicU64,
    pub annotations_sent: AtomicU64,
    pub player_events_sent: AtomicU64,
    pub player_events_dropped: AtomicU64,
    /// Requests that failed (unreachable, timeout, an error status).
    pub errors: AtomicU64,
    pub shutdown_sent: AtomicBool,
}

/// What the tick thread shares with the worker.
pub struct AgonesShared {
    started: Instant,
    /// Nanoseconds since `started` of the last tick (0: none yet).
    last_tick_nanos: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
    stopping: AtomicBool,
    allocatable: AtomicBool,
    players: AtomicU32,
    tick_p99_us: AtomicU32,
    /// (joined, player)
    events_tx: Sender<(bool, PlayerId)>,
    events_rx: Receiver<(bool, PlayerId)>,
    shutdown: AtomicBool,
    /// Wakes the worker at once (a drain, Shutdown).
    urgent: AtomicBool,
    pub counters: AgonesCounters,
}

impl AgonesShared {
    fn new() -> AgonesShared {
        let (events_tx, events_rx) = crossbeam_channel::bounded(EVENTS_QUEUE_MAX);
        AgonesShared {
            started: Instant::now(),
            last_tick_nanos: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            allocatable: AtomicBool::new(true),
            players: AtomicU32::new(0),
            tick_p99_us: AtomicU32::new(0),
            events_tx,
            events_rx,
            shutdown: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            counters: AgonesCounters::default(),
        }
    }

    /// Alive: loading (no tick yet), taking the final snapshot, or the tick advanced within
    /// [`ALIVE_WINDOW`] — the same rule as `/healthz`.
    pub fn tick_alive(&self) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return true;
        }
        let last = self.last_tick_nanos.load(Ordering::Relaxed);
        last == 0 || self.started.elapsed().saturating_sub(Duration::from_nanos(last)) < ALIVE_WINDOW
    }

    fn event(&self, joined: bool, p: PlayerId) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.events_tx.try_send((joined, p)) {
            // An atomic only on the tick thread; the worker exports it (take_events).
            self.counters.player_events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The `allocatable` label's value: false while overloaded or draining.
    fn label_allocatable(&self) -> bool {
        self.allocatable.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}

/// The running `agones` backend: the tick-side state and the worker thread.
pub struct AgonesLifecycle {
    pub shared: Arc<AgonesShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AgonesLifecycle {
    /// Starts the worker. The gateway need not be up: it is retried with backoff.
    pub fn start(cfg: AgonesConfig) -> anyhow::Result<AgonesLifecycle> {
        let shared = Arc::new(AgonesShared::new());
        let thread = std::thread::Builder::new()
            .name("zone-agones".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let span = tracing::Span::current();
                move || span.in_scope(|| Worker::new(cfg, shared).run())
            })
            .context("cannot start the Agones SDK thread")?;
        Ok(AgonesLifecycle {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Lifecycle for AgonesLifecycle {
    fn backend(&self) -> &'static str {
        "agones"
    }
    fn ready(&self) {
        self.shared.ready.store(true, Ordering::Relaxed);
        self.shared.urgent.store(true, Ordering::Relaxed);
    }
    fn tick_advanced(&self) {
        let n = self.shared.started.elapsed().as_nanos() as u64;
        self.shared.last_tick_nanos.store(n.max(1), Ordering::Relaxed);
    }
    fn player_joined(&self, p: PlayerId) {
        self.shared.event(true, p);
    }
    fn player_left(&self, p: PlayerId) {
        self.shared.event(false, p);
    }
    fn set_players(&self, n: usize) {
        self.shared.players.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
    fn set_tick_p99_us(&self, us: u32) {
        self.shared.tick_p99_us.store(us, Ordering::Relaxed);
    }
    fn set_allocatable(&self, yes: bool) {
        if self.shared.allocatable.swap(yes, Ordering::Relaxed) != yes {
            self.shared.urgent.store(true, Ordering::Relaxed);
        }
    }
    fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.urgent.store(true, Ordering::Relaxed);
    }
    fn set_stopping(&self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
    }
    fn set_kick_sink(&self, _tx: SyncSender<ToNet>) {}
    /// Sends Shutdown (retried within `budget`) and stops the worker.
    fn shutdown(&self, budget: Duration) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.shutdown.store(true, Ordering::Relaxed);
        self.shared.urgent.store(true, Ordering::Relaxed);
        let t = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(t) = t {
            let deadline = Instant::now() + budget + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("agones: Shutdown did not go through in time; exiting anyway (Agones deletes the pod when it terminates)");
            }
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("cannot reach the SDK gateway at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {path}: answered {status}")]
    Status { method: &'static str, path: String, status: u16 },
    #[error("{method} {path}: no readable answer: {why}")]
    BadAnswer { method: &'static str, path: String, why: String },
}

impl SdkError {
    fn unreachable(&self) -> bool {
        matches!(self, SdkError::Unreachable { .. } | SdkError::BadAnswer { .. })
    }
}

/// One request, one connection (`Connection: close`). Returns the status and the body.
pub fn call(addr: SocketAddr, timeout: Duration, method: &'static str, path: &str, body: &str) -> Result<(u16, String), SdkError> {
    let unreachable = |source| SdkError::Unreachable { addr, source };
    let bad = |why: String| SdkError::BadAnswer {
        method,
        path: path.to_string(),
        why,
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    s.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let _ = s.set_nodelay(true);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    s.take(ANSWER_BYTES_MAX).read_to_end(&mut raw).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("{:?}", text.lines().next().unwrap_or(""))))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    if !(200..300).contains(&status) {
        return Err(SdkError::Status {
            method,
            path: path.to_string(),
            status,
        });
    }
    Ok((status, body))
}

/// The metadata last written, so only changes are sent.
#[derive(Clone, Debug, Default, PartialEq)]
struct Metadata {
    allocatable: Option<bool>,
    players: Option<u32>,
    tick_p99_ms: Option<String>,
    draining: Option<bool>,
}

struct Worker {
    cfg: AgonesConfig,
    shared: Arc<AgonesShared>,
    /// When the gateway may be tried again after failing to answer (None: it answers).
    retry_at: Option<Instant>,
    backoff: Duration,
    failing_since: Option<Instant>,
    attempts_failed: u64,
    last_logged: Option<Instant>,
    ready_sent: bool,
    next_health: Instant,
    next_metadata: Instant,
    written: Metadata,
    player_tracking: bool,
    /// Player events waiting for the gateway (bounded; the oldest go first).
    pending: std::collections::VecDeque<(bool, PlayerId)>,
}

impl Worker {
    fn new(cfg: AgonesConfig, shared: Arc<AgonesShared>) -> Worker {
        Worker {
            cfg,
            shared,
            retry_at: None,
            backoff: BACKOFF_MIN,
            failing_since: None,
            attempts_failed: 0,
            last_logged: None,
            ready_sent: false,
            next_health: Instant::now(),
            next_metadata: Instant::now(),
            written: Metadata::default(),
            player_tracking: true,
            pending: std::collections::VecDeque::new(),
        }
    }

    fn run(mut self) {
        tracing::info!(sdk = %self.cfg.sdk, "agones: lifecycle through the SDK's REST gateway (Ready, Health every 2 s while the tick advances, labels, Shutdown)");
        loop {
            let shutdown = self.shared.shutdown.load(Ordering::Relaxed);
            self.take_events();
            if self.retry_at.is_none_or(|t| Instant::now() >= t) {
                let result = self.exchange(shutdown);
                match result {
                    Ok(()) => self.answered(),
                    Err(e) => self.failed(&e),
                }
                if shutdown && self.shared.counters.shutdown_sent.load(Ordering::Relaxed) {
                    break;
                }
            }
            // Shutdown while the gateway is down: the caller's budget bounds the retries.
            let until = Instant::now() + POLL_EVERY;
            while Instant::now() < until && !self.shared.urgent.swap(false, Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        tracing::info!(
            health_sent = self.shared.counters.health_sent.load(Ordering::Relaxed),
            errors = self.shared.counters.errors.load(Ordering::Relaxed),
            "agones: Shutdown sent; the SDK thread stops"
        );
    }

    fn take_events(&mut self) {
        for e in self.shared.events_rx.try_iter().take(EVENTS_QUEUE_MAX) {
            if self.pending.len() >= EVENTS_QUEUE_MAX {
                self.pending.pop_front();
                self.shared.counters.player_events_dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.pending.push_back(e);
        }
        // Drops on both sides of the queue (tick and here), exported from this thread.
        let dropped = self.shared.counters.player_events_dropped.load(Ordering::Relaxed);
        metrics::counter!("zone_agones_events_dropped_total").absolute(dropped);
    }

    fn post(&self, method: &'static str, path: &str, body: &str) -> Result<(u16, String), SdkError> {
        call(self.cfg.sdk, self.cfg.op_timeout, method, path, body)
    }

    /// Everything due, in order; the first failure ends the round.
    fn exchange(&mut self, shutdown: bool) -> Result<(), SdkError> {
        let sh = Arc::clone(&self.shared);
        if sh.ready.load(Ordering::Relaxed) && !self.ready_sent {
            // Labels first, so an allocation never sees a Ready server without them.
            self.metadata(true)?;
            self.post("POST", "/ready", "{}")?;
            self.ready_sent = true;
            sh.counters.ready_sent.store(true, Ordering::Relaxed);
            tracing::info!("agones: Ready sent");
            if self.player_tracking {
                let body = format!("{{\"count\":\"{}\"}}", self.cfg.capacity);
                self.tracking("PUT", "/alpha/player/capacity", &body)?;
            }
        }
        if Instant::now() >= self.next_health && sh.tick_alive() {
            self.post("POST", "/health", "{}")?;
            sh.counters.health_sent.fetch_add(1, Ordering::Relaxed);
            self.next_health = Instant::now() + HEALTH_EVERY;
        }
        // A drain or an overload change is written at once; the figures every few seconds.
        let urgent = self.written.allocatable.is_some_and(|a| a != sh.label_allocatable())
            || (sh.draining.load(Ordering::Relaxed) && self.written.draining != Some(true));
        if self.ready_sent && (urgent || Instant::now() >= self.next_metadata) {
            self.metadata(false)?;
        }
        while self.ready_sent && self.player_tracking {
            let Some(&(joined, p)) = self.pending.front() else { break };
            let body = format!("{{\"playerID\":\"{p}\"}}");
            let path = if joined {
                "/alpha/player/connect"
            } else {
                "/alpha/player/disconnect"
            };
            self.tracking("POST", path, &body)?;
            self.pending.pop_front();
            sh.counters.player_events_sent.fetch_add(1, Ordering::Relaxed);
        }
        if !self.player_tracking {
            self.pending.clear();
        }
        if shutdown {
            self.post("POST", "/shutdown", "{}")?;
            sh.counters.shutdown_sent.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A player-tracking call: a 404/501 (the alpha `PlayerTracking` feature off) turns player
    /// tracking off for the run.
    fn tracking(&mut self, method: &'static str, path: &str, body: &str) -> Result<(), SdkError> {
        match self.post(method, path, body) {
            Ok(_) => Ok(()),
            Err(SdkError::Status { status, .. }) if matches!(status, 404 | 405 | 501) => {
                tracing::warn!(
                    status,
                    path,
                    "agones: player tracking is not available (the alpha PlayerTracking feature gate is off?); players are still in the `players` annotation"
                );
                self.player_tracking = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the label and annotations that changed (all of them when `all`).
    fn metadata(&mut self, all: bool) -> Result<(), SdkError> {
        let sh = Arc::clone(&self.shared);
        let want = Metadata {
            allocatable: Some(sh.label_allocatable()),
            players: Some(sh.players.load(Ordering::Relaxed)),
            tick_p99_ms: Some(format!("{:.2}", f64::from(sh.tick_p99_us.load(Ordering::Relaxed)) / 1000.0)),
            draining: Some(sh.draining.load(Ordering::Relaxed)),
        };
        if all || want.allocatable != self.written.allocatable {
            let v = want.allocatable.unwrap_or(true);
            self.post("PUT", "/metadata/label", &kv("allocatable", if v { "true" } else { "false" }))?;
            sh.counters.labels_sent.fetch_add(1, Ordering::Relaxed);
            self.written.allocatable = want.allocatable;
            tracing::info!(allocatable = v, "agones: label agones.dev/sdk-allocatable set");
        }
        if all || want.draining != self.written.draining {
            let v = want.draining.unwrap_or(false);
            self.post("PUT", "/metadata/annotation", &kv("draining", if v { "true" } else { "false" }))?;
            sh.counters.annotations_sent.fetch_add(1, Ordering::Relaxed);
            self.written.draining = want.draining;
        }
        if all || want.players != self.written.players {
            self.post(
                "PUT",
                "/metadata/annotation",
                &kv("players", &want.players.unwrap_or(0).to_string()),
            )?;
            sh.counters.annotations_sent.fetch_add(1, Ordering::Relaxed);
            self.written.players = want.players;
        }
        if all || want.tick_p99_ms != self.written.tick_p99_ms {
            self.post(
                "PUT",
                "/metadata/annotation",
                &kv("tick-p99-ms", want.tick_p99_ms.as_deref().unwrap_or("0")),
            )?;
            sh.counters.annotations_sent.fetch_add(1, Ordering::Relaxed);
            self.written.tick_p99_ms = want.tick_p99_ms;
        }
        self.next_metadata = Instant::now() + METADATA_EVERY;
        Ok(())
    }

    fn answered(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                after_s = format!("{:.1}", since.elapsed().as_secs_f64()),
                failed_attempts = self.attempts_failed,
                "agones: the SDK gateway answers again"
            );
        }
        self.retry_at = None;
        self.backoff = BACKOFF_MIN;
        self.attempts_failed = 0;
    }

    fn failed(&mut self, e: &SdkError) {
        self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zone_agones_sdk_errors_total").increment(1);
        self.attempts_failed += 1;
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
        }
        if self.last_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(
                error = %e,
                failed_attempts = self.attempts_failed,
                retry_in_ms = self.backoff.as_millis() as u64,
                "agones: SDK call failed; retrying with backoff (the zone keeps running)"
            );
            self.last_logged = Some(Instant::now());
        }
        // An error status is not an outage: retry at the next health beat, no backoff growth.
        let pause = if e.unreachable() { self.backoff } else { BACKOFF_MIN };
        self.retry_at = Some(Instant::now() + pause);
        if e.unreachable() {
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// `{"key": k, "value": v}` (keys and values here never need escaping).
fn kv(k: &str, v: &str) -> String {
    format!("{{\"key\":\"{k}\",\"value\":\"{v}\"}}")
}
