//! The persistence worker: snapshots and game events, written off the tick thread.
//!
//! The tick thread captures what changed in the zone since its previous capture
//! ([`zone_sim::Zone::capture_changes`], measured as `zone_snapshot_capture_duration_seconds`)
//! and offers it with [`Persister::offer_snapshot`]. The worker applies every capture, in order,
//! to its [`ZoneMirror`], a whole copy of the zone kept on the worker's thread, and encodes the
//! mirror's state. Captures queue (up to [`SNAPSHOT_QUEUE_MAX`]) while the worker is busy
//! writing; it then applies them all and writes only the newest (the others are counted as
//! skipped). When the queue is full the tick thread does not capture at all
//! ([`Persister::has_room`]; counted as dropped), the tick never waits, and its next capture is
//! whole ([`zone_sim::Zone::reset_capture`]); a
//! mirror that cannot apply a capture asks for a whole one the same way
//! ([`Persister::resync_wanted`]). The worker thread runs a small tokio runtime and does
//! everything slow: applying, encoding, compression, and writing to the stores.
//!
//! Where snapshots go:
//! - **hot**: Redis when configured and its breaker lets calls through; otherwise (not configured,
//!   down, or the write fails) the file store in DATA_DIR/snapshots, so a Redis outage never costs
//!   a snapshot;
//! - **files** also get every full snapshot, as the local fallback for recovery;
//! - **cold**: PostgreSQL, a full every `cold_snapshot_interval`, falling back to files.
//!
//! A diff is only ever written to a store that holds its base full; otherwise a full is written
//! instead. Player events go to PostgreSQL in batches through a bounded in-memory queue that drops
//! the oldest (counted, with a warning) while PostgreSQL is away and flushes in order when it
//! returns. Each backend has a circuit breaker; every breaker transition is logged and exported.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{counter, gauge};
use zone_persistence::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
use zone_persistence::events::{EventQueue, GameEvent};
use zone_persistence::snapshot::{SnapshotKind, SnapshotMeta, decode_meta, encode_diff, encode_full};
use zone_persistence::store::{FileStore, PostgresStore, RedisStore, SnapshotStore};
use zone_sim::{MirrorError, SpareLists, ZoneCapture, ZoneMirror, ZoneState};

/// Captures waiting for the worker: a capture a second, so about this many seconds of a slow
/// store before one is dropped (and the next capture is whole).
pub const SNAPSHOT_QUEUE_MAX: usize = 16;
/// Applied captures' lists waiting to go back to the tick thread: it takes one set per capture,
/// so two are enough to never wait for one.
const SPARE_LISTS_MAX: usize = 2;
/// Event batches waiting for the worker.
pub const EVENT_BATCHES_MAX: usize = 1024;
/// Events written to PostgreSQL per insert.
const EVENT_INSERT_BATCH: usize = 1000;

#[derive(Clone, Debug)]
pub struct PersistConfig {
    pub data_dir: PathBuf,
    pub keep_full: usize,
    pub redis: Option<String>,
    pub postgres: Option<String>,
    /// Names this server's data in Redis and PostgreSQL.
    pub instance: String,
    pub redis_ttl: Duration,
    pub op_timeout: Duration,
    pub breaker: BreakerConfig,
    pub event_queue: usize,
    /// Shown every snapshot the worker takes, after sorting (the world visualizer's history).
    pub observer: Option<SnapshotObserver>,
    /// Where stored full snapshots are noted in the journal (their tick and SHA-256).
    pub journal_notes: Option<crate::journal_sink::SnapshotNotes>,
}

/// A look at each snapshot on the worker thread, before it is encoded. Must not block.
#[derive(Clone)]
pub struct SnapshotObserver(pub Arc<dyn Fn(&ZoneState) + Send + Sync>);

impl std::fmt::Debug for SnapshotObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotObserver")
    }
}

enum Job {
    Snapshot {
        capture: ZoneCapture,
        full: bool,
        cold: bool,
    },
    Events(Vec<GameEvent>),
    /// The last snapshot before exit; the sender is told when it is written.
    Final {
        state: ZoneState,
        done: mpsc::Sender<()>,
    },
}

#[derive(Debug, Default)]
pub struct PersistCounters {
    /// Snapshots not written (shown in `/status`, with their sum): not captured because the
    /// queue was full, so persistence is behind;
    pub skipped_queue_full: AtomicU64,
    /// refused by the worker's mirror (a capture of changes without its base), which then asks
    /// for a whole capture;
    pub skipped_mirror_refused: AtomicU64,
    /// applied to the mirror but not written because a newer capture was already waiting: the
    /// worker writes the newest state only (normal when a write takes longer than the interval).
    pub skipped_superseded: AtomicU64,
    /// Captures in the queue (exported as `zone_queue_depth{queue="snapshot"}`).
    pub snapshots_queued: std::sync::atomic::AtomicUsize,
    /// Set by the worker when its mirror could not apply a capture; the tick thread then makes
    /// the next capture whole.
    pub resync: std::sync::atomic::AtomicBool,
    /// What `/status` shows under `snapshot`.
    pub status: std::sync::Mutex<SnapshotStatus>,
}

/// Why a snapshot was not written (a count each in [`PersistCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    QueueFull,
    MirrorRefused,
    Superseded,
}

impl PersistCounters {
    /// Counts one snapshot not written, under its reason.
    pub fn skip(&self, why: Skip) {
        let by_reason = match why {
            Skip::QueueFull => &self.skipped_queue_full,
            Skip::MirrorRefused => &self.skipped_mirror_refused,
            Skip::Superseded => &self.skipped_superseded,
        };
        by_reason.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by reason, as `/status` shows them (every reason, zeros included).
    pub fn skipped_by_reason(&self) -> std::collections::BTreeMap<&'static str, u64> {
        [
            ("queue_full", &self.skipped_queue_full),
            ("mirror_refused", &self.skipped_mirror_refused),
            ("superseded", &self.skipped_superseded),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }
}

/// The persistence part of `/status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SnapshotStatus {
    /// The last tick stored in at least one store.
    pub last_ok_tick: Option<u64>,
    pub last_error: Option<String>,
    /// Failures in a row, by store.
    pub consecutive_failures: std::collections::BTreeMap<&'static str, u32>,
    /// Breaker state, by backend.
    pub breakers: std::collections::BTreeMap<&'static str, &'static str>,
    pub events_queued: usize,
    pub events_dropped: u64,
    pub snapshots_skipped: u64,
    /// The same, by reason: `queue_full` (persistence is behind), `mirror_refused` (a capture
    /// without its base; a whole one follows), `superseded` (a newer capture was waiting).
    pub snapshots_skipped_by_reason: std::collections::BTreeMap<&'static str, u64>,
}

/// The tick thread's handle on the worker.
pub struct Persister {
    snap_tx: Option<SyncSender<Job>>,
    event_tx: Option<SyncSender<Job>>,
    /// The emptied lists of applied captures, coming back for the tick thread to fill again
    /// ([`Persister::take_spare_lists`]).
    spare_rx: Receiver<SpareLists>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<PersistCounters>,
}

impl Persister {
    pub fn start(cfg: PersistConfig, zone_digest: [u8; 32], seed: u64) -> anyhow::Result<Persister> {
        let files = FileStore::new(cfg.data_dir.join("snapshots"), cfg.keep_full)
            .with_context(|| format!("cannot use {} for snapshots", cfg.data_dir.join("snapshots").display()))?;
        let (snap_tx, snap_rx) = mpsc::sync_channel(SNAPSHOT_QUEUE_MAX);
        let (event_tx, event_rx) = mpsc::sync_channel(EVENT_BATCHES_MAX);
        // Lists waiting to go back: a full channel frees the newest instead.
        let (spare_tx, spare_rx) = mpsc::sync_channel(SPARE_LISTS_MAX);
        let counters = Arc::new(PersistCounters::default());
        let c = counters.clone();
        gauge!("zone_queue_capacity", "queue" => "events").set(cfg.event_queue as f64);
        gauge!("zone_queue_capacity", "queue" => "snapshot").set(SNAPSHOT_QUEUE_MAX as f64);
        counter!("zone_snapshot_failures_total", "store" => "file").increment(0);
        gauge!("zone_snapshot_consecutive_failures", "store" => "file").set(0.0);
        let thread = std::thread::Builder::new().name("persist".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the persistence runtime; snapshots and events are off");
                    return;
                }
            };
            let mut w = Worker::new(cfg, files, zone_digest, seed, c, spare_tx);
            rt.block_on(w.run(snap_rx, event_rx));
        })?;
        Ok(Persister {
            snap_tx: Some(snap_tx),
            event_tx: Some(event_tx),
            spare_rx,
            thread: Some(thread),
            counters,
        })
    }

    /// The emptied lists of captures the worker has applied, if any came back since the last
    /// call: give them to [`zone_sim::Zone::recycle_lists`] before the next capture, so that it
    /// fills memory the process already has (see [`SpareLists`]). Never blocks.
    pub fn take_spare_lists(&self) -> Option<SpareLists> {
        self.spare_rx.try_recv().ok()
    }

    /// Offers a capture; dropped (and counted) if the queue is full. Never blocks. `false` means
    /// the capture is lost: the caller must make its next capture whole.
    pub fn offer_snapshot(&self, capture: ZoneCapture, full: bool, cold: bool) -> bool {
        let Some(tx) = &self.snap_tx else { return false };
        // Counted before the send, so that the worker never takes one off before it was counted.
        self.counters.snapshots_queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Job::Snapshot { capture, full, cold }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.snapshots_queued.fetch_sub(1, Ordering::Relaxed);
                self.drop_snapshot();
                false
            }
        }
    }

    /// Whether the queue has room for a capture. When it has none, the tick thread does not
    /// capture at all ([`Persister::drop_snapshot`] instead): the capture would be dropped.
    pub fn has_room(&self) -> bool {
        self.snap_tx.is_some() && self.counters.snapshots_queued.load(Ordering::Relaxed) < SNAPSHOT_QUEUE_MAX
    }

    /// Counts a snapshot lost to a full queue (the caller makes its next capture whole).
    pub fn drop_snapshot(&self) {
        self.counters.skip(Skip::QueueFull);
        counter!("zone_queue_dropped_total", "queue" => "snapshot").increment(1);
    }

    /// Whether the worker wants the next capture whole (its mirror refused one). Clears the wish.
    pub fn resync_wanted(&self) -> bool {
        self.counters.resync.swap(false, Ordering::Relaxed)
    }

    /// Hands over player events. Never blocks; a full channel drops the batch (counted).
    pub fn offer_events(&self, events: Vec<GameEvent>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        if self.event_tx.as_ref().is_none_or(|tx| tx.try_send(Job::Events(events)).is_err()) {
            counter!("zone_queue_dropped_total", "queue" => "events").increment(n);
        }
    }

    /// Writes a last snapshot and waits (up to `timeout`) until it is stored. For shutdown only:
    /// the tick loop has stopped, so waiting here delays nothing.
    pub fn final_snapshot(&self, state: ZoneState, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let tick = state.tick;
        let deadline = Instant::now() + timeout;
        let mut job = Job::Final { state, done: tx };
        let Some(snap_tx) = &self.snap_tx else { return false };
        loop {
            match snap_tx.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(j)) if Instant::now() < deadline => {
                    job = j;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        let ok = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok();
        if ok {
            tracing::info!(tick, "final snapshot stored");
        } else {
            tracing::error!(tick, "final snapshot not confirmed in time");
        }
        ok
    }

    /// Stops the worker after it has flushed what it holds (events get one last try).
    pub fn finish(mut self) {
        self.snap_tx = None;
        self.event_tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How much [`Worker::flush_events`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// One batch, if the breaker allows (the regular once-a-second flush).
    Due,
    /// Batches until the queue is empty, a write fails or the breaker refuses.
    All,
    /// Like `All`, but past an open breaker: the process is exiting and this is the last chance.
    Final,
}

/// One remote backend: its store (connected lazily), its breaker.
struct Backend<S> {
    name: &'static str,
    /// Whether this backend stores snapshots (its failures feed the snapshot metrics) or events.
    snapshots: bool,
    store: Option<S>,
    breaker: Breaker,
    /// The tick of the full snapshot this store holds (diffs need it).
    base_tick: Option<u64>,
}

impl<S> Backend<S> {
    fn new(name: &'static str, snapshots: bool, breaker: BreakerConfig) -> Self {
        gauge!("zone_backend_breaker_state", "backend" => name).set(0.0);
        // Failure series exist from the start, so dashboards and alerts see zeros, not gaps.
        if snapshots {
            counter!("zone_snapshot_failures_total", "store" => name).increment(0);
            gauge!("zone_snapshot_consecutive_failures", "store" => name).set(0.0);
        } else {
            counter!("zone_event_write_failures_total").increment(0);
        }
        Backend {
            name,
            snapshots,
            store: None,
            breaker: Breaker::new(breaker),
            base_tick: None,
        }
    }

    fn admit(&mut self) -> bool {
        let a = self.breaker.admit(Instant::now());
        if let Some(t) = a.transition {
            log_transition(self.name, t);
        }
        a.allowed
    }

    fn failed(&mut self, what: &str, err: &dyn std::fmt::Display) {
        // Drop the client: a dead connection is never reused; the next admitted call reconnects
        // (the breaker bounds how often), and the new connection holds no base for diffs.
        self.store = None;
        self.base_tick = None;
        let t = self.breaker.record_failure(Instant::now());
        if self.snapshots {
            counter!("zone_snapshot_failures_total", "store" => self.name).increment(1);
            gauge!("zone_snapshot_consecutive_failures", "store" => self.name).set(f64::from(self.breaker.consecutive_failures()));
        } else {
            counter!("zone_event_write_failures_total").increment(1);
        }
        tracing::warn!(backend = self.name, what, error = %err, consecutive_failures = self.breaker.consecutive_failures(), "backend call failed");
        if let Some(t) = t {
            log_transition(self.name, t);
        }
    }

    fn succeeded(&mut self) {
        if let Some(t) = self.breaker.record_success(Instant::now()) {
            log_transition(self.name, t);
        }
        if self.snapshots {
            gauge!("zone_snapshot_consecutive_failures", "store" => self.name).set(0.0);
        }
    }
}

/// Connects a PostgreSQL backend if it has no live client (migrations run on connect).
async fn connect_pg(b: &mut Backend<PostgresStore>, url: &str, cfg: &PersistConfig) -> Result<(), zone_persistence::store::StoreError> {
    if b.store.is_none() {
        let s = PostgresStore::connect(url, &cfg.instance, cfg.keep_full, cfg.op_timeout).await?;
        tracing::info!(backend = b.name, instance = %cfg.instance, "connected (schema migrated)");
        b.store = Some(s);
    }
    Ok(())
}

fn log_transition(backend: &'static str, t: Transition) {
    let v = match t.to {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    gauge!("zone_backend_breaker_state", "backend" => backend).set(v);
    counter!("zone_backend_breaker_transitions_total", "backend" => backend, "to" => t.to.as_str()).increment(1);
    match t.to {
        BreakerState::Open => tracing::warn!(
            backend,
            from = t.from.as_str(),
            to = t.to.as_str(),
            failures = t.consecutive_failures,
            "backend circuit breaker opened: bypassing it"
        ),
        _ => tracing::info!(
            backend,
            from = t.from.as_str(),
            to = t.to.as_str(),
            "backend circuit breaker changed state"
        ),
    }
}

struct Worker {
    cfg: PersistConfig,
    digest: [u8; 32],
    seed: u64,
    files: FileStore,
    file_base_tick: Option<u64>,
    redis: Backend<RedisStore>,
    /// Cold snapshots.
    pg: Backend<PostgresStore>,
    /// Player events: its own connection and breaker, so event writes and snapshot writes never
    /// hide each other's failures.
    pg_events: Backend<PostgresStore>,
    last_full: Option<ZoneState>,
    /// The zone as the captures so far describe it.
    mirror: ZoneMirror,
    /// Where applied captures' emptied lists go back to the tick thread.
    spare_tx: SyncSender<SpareLists>,
    /// A whole capture was asked for and has not come yet: captures of changes are refused
    /// quietly until it does.
    awaiting_whole: bool,
    events: EventQueue,
    counters: Arc<PersistCounters>,
    consecutive_file_failures: u32,
    last_error: Option<String>,
    /// A diff was sent as a full this time (a store lacked the base).
    upgraded_to_full: bool,
}

impl Worker {
    fn new(
        cfg: PersistConfig,
        files: FileStore,
        digest: [u8; 32],
        seed: u64,
        counters: Arc<PersistCounters>,
        spare_tx: SyncSender<SpareLists>,
    ) -> Self {
        let redis = Backend::new("redis", true, cfg.breaker);
        let pg = Backend::new("postgres", true, cfg.breaker);
        let pg_events = Backend::new("postgres_events", false, cfg.breaker);
        let events = EventQueue::new(cfg.event_queue);
        Worker {
            cfg,
            digest,
            seed,
            files,
            file_base_tick: None,
            redis,
            pg,
            pg_events,
            last_full: None,
            mirror: ZoneMirror::new(),
            spare_tx,
            awaiting_whole: false,
            events,
            counters,
            consecutive_file_failures: 0,
            last_error: None,
            upgraded_to_full: false,
        }
    }

    async fn run(&mut self, snaps: Receiver<Job>, events: Receiver<Job>) {
        self.connect_at_start().await;
        let mut last_flush = Instant::now();
        loop {
            // Events first (cheap), then at most one snapshot, then a flush when due.
            while let Ok(Job::Events(batch)) = events.try_recv() {
                for e in batch {
                    if self.events.push(e) > 0 && self.events.dropped_total() % 1000 == 1 {
                        tracing::warn!(
                            capacity = self.events.capacity(),
                            dropped_total = self.events.dropped_total(),
                            "event queue full: dropping the oldest events"
                        );
                    }
                }
            }
            match snaps.recv_timeout(Duration::from_millis(100)) {
                Ok(Job::Snapshot { capture, full, cold }) => {
                    self.counters.snapshots_queued.fetch_sub(1, Ordering::Relaxed);
                    let final_job = self.take_captures(capture, full, cold, &snaps).await;
                    if let Some((state, done)) = final_job {
                        self.final_snapshot(state, done).await;
                    }
                }
                Ok(Job::Final { state, done }) => self.final_snapshot(state, done).await,
                Ok(Job::Events(_)) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    while let Ok(Job::Events(batch)) = events.try_recv() {
                        for e in batch {
                            self.events.push(e);
                        }
                    }
                    // The process is about to go: one last try, past an open breaker.
                    self.flush_events(Flush::Final).await;
                    let left = self.events.len();
                    if left > 0 && self.cfg.postgres.is_some() {
                        counter!("zone_events_dropped_total").absolute(self.events.dropped_total() + left as u64);
                        tracing::error!(events = left, "exiting with player events that could not be written to PostgreSQL");
                    }
                    break;
                }
            }
            if last_flush.elapsed() >= Duration::from_secs(1) {
                self.flush_events(Flush::Due).await;
                self.publish_status(None);
                last_flush = Instant::now();
            }
            gauge!("zone_queue_depth", "queue" => "events").set(self.events.len() as f64);
            gauge!("zone_queue_depth", "queue" => "snapshot").set(self.counters.snapshots_queued.load(Ordering::Relaxed) as f64);
            counter!("zone_events_dropped_total").absolute(self.events.dropped_total());
        }
    }

    /// Applies `capture` and every capture already queued behind it to the mirror, then writes
    /// the mirror's state once. Returns a final-snapshot job found in the queue, for the caller
    /// to run next.
    async fn take_captures(
        &mut self,
        capture: ZoneCapture,
        mut full: bool,
        mut cold: bool,
        snaps: &Receiver<Job>,
    ) -> Option<(ZoneState, mpsc::Sender<()>)> {
        let mut applied = self.apply_capture(capture);
        let mut final_job = None;
        while let Ok(job) = snaps.try_recv() {
            match job {
                Job::Snapshot { capture, full: f, cold: c } => {
                    self.counters.snapshots_queued.fetch_sub(1, Ordering::Relaxed);
                    if applied {
                        // Applied but never written: a newer state is already here.
                        self.counters.skip(Skip::Superseded);
                    }
                    applied = self.apply_capture(capture);
                    full |= f;
                    cold |= c;
                }
                Job::Final { state, done } => {
                    final_job = Some((state, done));
                    break;
                }
                Job::Events(_) => {}
            }
        }
        if final_job.is_some() {
            // The final snapshot comes next and supersedes this one: spend no time on it.
            if applied {
                self.counters.skip(Skip::Superseded);
            }
        } else if applied && let Some(state) = self.mirror.state() {
            self.snapshot(state, full, cold).await;
        }
        final_job
    }

    /// Applies one capture to the mirror; on failure asks the tick thread for a whole capture.
    /// Whether the mirror now holds the whole zone at the capture's tick.
    fn apply_capture(&mut self, capture: ZoneCapture) -> bool {
        let tick = capture.tick;
        let mut spare = SpareLists::default();
        let applied = self.mirror.apply_keeping_lists(capture, &mut spare);
        if !spare.is_empty() {
            // Full: the tick thread has lists enough; these are freed here.
            let _ = self.spare_tx.try_send(spare);
        }
        match applied {
            Ok(()) => {
                let complete = self.mirror.is_complete();
                self.awaiting_whole &= !complete;
                complete
            }
            Err(e) => {
                self.counters.skip(Skip::MirrorRefused);
                // Captures of changes queued behind the one that failed fail too: ask once.
                if !(self.awaiting_whole && matches!(e, MirrorError::NoBase { .. })) {
                    self.awaiting_whole = true;
                    self.counters.resync.store(true, Ordering::Relaxed);
                    tracing::warn!(tick, error = %e, "snapshot capture could not be applied; asking for a whole capture");
                }
                false
            }
        }
    }

    async fn final_snapshot(&mut self, state: ZoneState, done: mpsc::Sender<()>) {
        self.snapshot(state, true, self.cfg.postgres.is_some()).await;
        self.flush_events(Flush::All).await;
        let _ = done.send(());
    }

    async fn snapshot(&mut self, mut state: ZoneState, full: bool, cold: bool) {
        // Capture leaves objects in storage order (cheap on the tick thread); sort them here.
        state.normalize();
        if let Some(o) = &self.cfg.observer {
            (o.0)(&state);
        }
        let tick = state.tick;
        let full = full || self.last_full.is_none();
        let t0 = Instant::now();
        let full_bytes = full.then(|| encode_full(&state, self.digest));
        let diff_bytes = (!full).then(|| encode_diff(self.last_full.as_ref().expect("a base exists"), &state, self.digest));
        let encode_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let base_tick = if full {
            tick
        } else {
            self.last_full.as_ref().map_or(tick, |b| b.tick)
        };
        let (digest, seed) = (self.digest, self.seed);
        let meta = move |kind| SnapshotMeta {
            format_version: zone_persistence::snapshot::FORMAT_VERSION,
            kind,
            zone_digest: digest,
            tick,
            base_tick: if kind == SnapshotKind::Full { tick } else { base_tick },
            seed,
        };
        let (kind, bytes) = match (&full_bytes, &diff_bytes) {
            (Some(b), _) => (SnapshotKind::Full, b.as_slice()),
            (None, Some(b)) => (SnapshotKind::Diff, b.as_slice()),
            (None, None) => unreachable!(),
        };
        debug_assert_eq!(decode_meta(bytes).map(|m| m.tick).ok(), Some(tick));
        gauge!("zone_snapshot_bytes", "kind" => kind.as_str()).set(bytes.len() as f64);
        tracing::debug!(tick, kind = kind.as_str(), bytes = bytes.len(), encode_ms, "snapshot encoded");

        // Hot: Redis, or files when Redis is absent or failing.
        let mut hot_done = false;
        if let Some(url) = self.cfg.redis.clone() {
            if self.redis.admit() {
                match self.ensure_redis(&url).await {
                    Ok(()) => {
                        // A diff needs Redis to hold its base; else send the full instead.
                        let (m, b, k) = if kind == SnapshotKind::Diff && self.redis.base_tick != Some(base_tick) {
                            // Redis lacks the base (it was down, or reconnected): send a full,
                            // and make it the base of the diffs that follow.
                            let fb = encode_full(&state, self.digest);
                            self.upgraded_to_full = true;
                            (meta(SnapshotKind::Full), fb, SnapshotKind::Full)
                        } else {
                            (meta(kind), bytes.to_vec(), kind)
                        };
                        let store = self.redis.store.as_ref().expect("connected");
                        match store.put(&m, &b).await {
                            Ok(()) => {
                                self.redis.succeeded();
                                if k == SnapshotKind::Full {
                                    self.redis.base_tick = Some(tick);
                                }
                                counter!("zone_snapshots_total", "store" => "redis", "kind" => k.as_str()).increment(1);
                                hot_done = true;
                            }
                            Err(e) => {
                                self.last_error = Some(format!("redis: {e}"));
                                self.redis.failed("snapshot", &e)
                            }
                        }
                    }
                    Err(e) => {
                        self.last_error = Some(format!("redis: {e}"));
                        self.redis.failed("snapshot", &e)
                    }
                }
            }
            if !hot_done {
                counter!("zone_snapshot_fallbacks_total", "from" => "redis", "to" => "file").increment(1);
            }
        }
        // Files: every full, and diffs when they are the hot store.
        if kind == SnapshotKind::Full || !hot_done {
            let (m, b, k) = if kind == SnapshotKind::Diff && self.file_base_tick != Some(base_tick) {
                (meta(SnapshotKind::Full), encode_full(&state, self.digest), SnapshotKind::Full)
            } else {
                (meta(kind), bytes.to_vec(), kind)
            };
            match self.files.put(&m, &b).await {
                Ok(()) => {
                    if k == SnapshotKind::Full {
                        self.file_base_tick = Some(tick);
                        if let Some(n) = &self.cfg.journal_notes {
                            use sha2::Digest;
                            n.note(tick, sha2::Sha256::digest(&b).into());
                        }
                    }
                    self.consecutive_file_failures = 0;
                    gauge!("zone_snapshot_consecutive_failures", "store" => "file").set(0.0);
                    counter!("zone_snapshots_total", "store" => "file", "kind" => k.as_str()).increment(1);
                }
                Err(e) => {
                    self.consecutive_file_failures += 1;
                    counter!("zone_snapshot_failures_total", "store" => "file").increment(1);
                    gauge!("zone_snapshot_consecutive_failures", "store" => "file").set(f64::from(self.consecutive_file_failures));
                    tracing::error!(error = %e, consecutive_failures = self.consecutive_file_failures, "file snapshot failed");
                    self.last_error = Some(format!("file: {e}"));
                }
            }
        }
        // Cold: PostgreSQL fulls.
        if cold
            && let Some(url) = self.cfg.postgres.clone()
            && self.pg.admit()
        {
            match connect_pg(&mut self.pg, &url, &self.cfg).await {
                Ok(()) => {
                    let fb = full_bytes.clone().unwrap_or_else(|| encode_full(&state, self.digest));
                    let store = self.pg.store.as_ref().expect("connected");
                    match store.put(&meta(SnapshotKind::Full), &fb).await {
                        Ok(()) => {
                            self.pg.succeeded();
                            counter!("zone_snapshots_total", "store" => "postgres", "kind" => "full").increment(1);
                        }
                        Err(e) => {
                            self.last_error = Some(format!("postgres: {e}"));
                            self.pg.failed("snapshot", &e)
                        }
                    }
                }
                Err(e) => {
                    self.last_error = Some(format!("postgres: {e}"));
                    self.pg.failed("snapshot", &e)
                }
            }
        }
        if full || std::mem::take(&mut self.upgraded_to_full) {
            self.last_full = Some(state);
        }
        self.publish_status(Some(tick));
    }

    fn publish_status(&self, tick: Option<u64>) {
        if let Ok(mut st) = self.counters.status.lock() {
            let any_ok =
                self.consecutive_file_failures == 0 || (self.cfg.redis.is_some() && self.redis.breaker.consecutive_failures() == 0);
            if let (Some(t), true) = (tick, any_ok) {
                st.last_ok_tick = Some(t);
            }
            st.consecutive_failures.insert("file", self.consecutive_file_failures);
            if self.cfg.redis.is_some() {
                st.consecutive_failures.insert("redis", self.redis.breaker.consecutive_failures());
                st.breakers.insert("redis", self.redis.breaker.state().as_str());
            }
            if self.cfg.postgres.is_some() {
                st.consecutive_failures.insert("postgres", self.pg.breaker.consecutive_failures());
                st.breakers.insert("postgres", self.pg.breaker.state().as_str());
                st.breakers.insert("postgres_events", self.pg_events.breaker.state().as_str());
            }
            if let Some(e) = &self.last_error {
                st.last_error = Some(e.clone());
            }
            st.events_queued = self.events.len();
            st.events_dropped = self.events.dropped_total();
            st.snapshots_skipped_by_reason = self.counters.skipped_by_reason();
            st.snapshots_skipped = st.snapshots_skipped_by_reason.values().sum();
        }
    }

    /// Connects to the configured backends right away, so PostgreSQL migrations run at start and
    /// a backend that is down is reported at once (and bypassed, through its breaker).
    async fn connect_at_start(&mut self) {
        if let Some(url) = self.cfg.redis.clone()
            && let Err(e) = self.ensure_redis(&url).await
        {
            self.redis.failed("connect", &e);
        }
        if let Some(url) = self.cfg.postgres.clone() {
            if let Err(e) = connect_pg(&mut self.pg, &url, &self.cfg).await {
                self.pg.failed("connect", &e);
            }
            if let Err(e) = connect_pg(&mut self.pg_events, &url, &self.cfg).await {
                self.pg_events.failed("connect", &e);
            }
        }
        self.publish_status(None);
    }

    async fn ensure_redis(&mut self, url: &str) -> Result<(), zone_persistence::store::StoreError> {
        if self.redis.store.is_none() {
            let s = RedisStore::connect(url, &self.cfg.instance, self.cfg.redis_ttl, self.cfg.op_timeout).await?;
            tracing::info!(backend = "redis", instance = %self.cfg.instance, "connected");
            self.redis.store = Some(s);
        }
        Ok(())
    }

    /// Writes queued events to PostgreSQL, in order (see [`Flush`]).
    async fn flush_events(&mut self, mode: Flush) {
        let Some(url) = self.cfg.postgres.clone() else {
            // Without PostgreSQL there is nowhere to keep events: they are only counted.
            let n = self.events.len();
            if n > 0 {
                self.events.drain_batch(n);
            }
            return;
        };
        while !self.events.is_empty() {
            if mode != Flush::Final && !self.pg_events.admit() {
                return;
            }
            if let Err(e) = connect_pg(&mut self.pg_events, &url, &self.cfg).await {
                self.pg_events.failed("events", &e);
                return;
            }
            let batch = self.events.drain_batch(EVENT_INSERT_BATCH);
            let n = batch.len() as u64;
            let store = self.pg_events.store.as_ref().expect("connected");
            match store.insert_events(&batch).await {
                Ok(added) => {
                    self.pg_events.succeeded();
                    counter!("zone_events_written_total").increment(added);
                    // Already stored (a retry of a batch whose insert committed but was not
                    // confirmed): skipped by key, never written twice.
                    counter!("zone_events_duplicates_skipped_total").increment(n.saturating_sub(added));
                }
                Err(e) => {
                    self.events.requeue_front(batch);
                    self.pg_events.failed("events", &e);
                    return;
                }
            }
            if mode == Flush::Due {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use zone_sim::{Serial, Zone, ZoneSpec};

    use super::*;

    // A test harness: it may read the zone file.
    #[allow(clippy::disallowed_methods)]
    fn demo_zone() -> Zone {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
        let text = std::fs::read_to_string(path).expect("assets/zones/demo.toml");
        Zone::new(Arc::new(ZoneSpec::from_toml_str(path, &text).expect("demo.toml")), 4).expect("zone")
    }

    fn start(dir: &std::path::Path, seen: Arc<Mutex<Vec<ZoneState>>>) -> Persister {
        let cfg = PersistConfig {
            data_dir: dir.to_path_buf(),
            keep_full: 2,
            redis: None,
            postgres: None,
            instance: "test".into(),
            redis_ttl: Duration::from_secs(60),
            op_timeout: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
            event_queue: 10,
            observer: Some(SnapshotObserver(Arc::new(move |s: &ZoneState| {
                seen.lock().unwrap().push(s.clone())
            }))),
            journal_notes: None,
        };
        Persister::start(cfg, [7; 32], 4).expect("persister")
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_worker_writes_what_a_whole_capture_holds_and_asks_for_one_when_it_lacks_a_base() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let p = start(dir.path(), seen.clone());
        let mut zone = demo_zone();
        zone.step(&Serial);
        // The worker never saw this whole capture: the changes after it cannot be applied.
        drop(zone.capture_changes(&Serial));
        zone.step(&Serial);
        assert!(p.offer_snapshot(zone.capture_changes(&Serial), true, false));
        wait_for("the worker to ask for a whole capture", || {
            p.counters.resync.load(Ordering::Relaxed)
        });
        assert!(p.resync_wanted());
        assert!(!p.resync_wanted(), "asking clears the wish");
        assert!(seen.lock().unwrap().is_empty(), "nothing is written without a base");
        assert_eq!(p.counters.skipped_by_reason()["mirror_refused"], 1);

        zone.reset_capture();
        for i in 0..5 {
            for _ in 0..30 {
                zone.step(&Serial);
            }
            assert!(p.offer_snapshot(zone.capture_changes(&Serial), i == 0, false));
        }
        let mut want = zone.capture(&Serial);
        want.normalize();
        wait_for("the last snapshot", || {
            seen.lock().unwrap().last().is_some_and(|s| s.tick == want.tick)
        });
        assert_eq!(seen.lock().unwrap().last(), Some(&want));
        wait_for("the queue to empty", || p.counters.snapshots_queued.load(Ordering::Relaxed) == 0);
        assert!(p.has_room());
        p.drop_snapshot();
        let by_reason = p.counters.skipped_by_reason();
        assert_eq!((by_reason["queue_full"], by_reason["mirror_refused"]), (1, 1), "{by_reason:?}");
        assert_eq!(
            by_reason.keys().copied().collect::<Vec<_>>(),
            ["mirror_refused", "queue_full", "superseded"],
            "every reason is shown, zeros included"
        );
        p.finish();
    }
}
