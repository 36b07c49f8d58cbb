//! The replay behind `zone-replay --serve`: the page over a recorded journal. Any tick can be
//! shown, stepped through tick by tick, and played at 1× to 50×; since the simulation is
//! deterministic (and every recorded hash is checked on the way), what it shows is exactly what
//! the server had.
//!
//! Two threads:
//! - the **indexer** runs the journal once from tick 0 to its end, checking every hash, and keeps
//!   a checkpoint (an encoded snapshot, `zone_persistence::snapshot`) every
//!   `checkpoint_every` ticks;
//! - the **driver** owns the playhead zone. A seek restores the nearest checkpoint at or before the
//!   tick and runs forward from it (so any seek costs at most `checkpoint_every` ticks of
//!   simulation once the index is built); play advances at the asked speed and sends a frame
//!   about `--viz-rate` times a second.
//!
//! Viewers share one playhead. Commands come from [`super::http`] through a bounded queue and are
//! answered with the playhead's state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use zone_sim::{ShardExecutor, Zone};

use super::frame::{Frame, FrameMeta};
use super::{Input, Viz, VizShared, frame_from_state};
use crate::executor::PoolExecutor;
use crate::replay::{LoadedJournal, ReplayError};

/// Commands the page sends.
#[derive(Clone, Copy, Debug)]
pub enum Command {
    Seek(u64),
    Step(i64),
    /// Play at this many times real time (1 to 50).
    Play(f64),
    Pause,
}

struct Request {
    cmd: Command,
    reply: tokio::sync::oneshot::Sender<serde_json::Value>,
}

/// Commands waiting for the driver.
const COMMAND_QUEUE_MAX: usize = 16;
/// How long an HTTP request waits for the driver (a seek on a large zone before the index is
/// built can take a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// What the HTTP side holds: a way to send commands and the last published state.
#[derive(Clone)]
pub struct ControlHandle {
    tx: SyncSender<Request>,
    state: Arc<Mutex<serde_json::Value>>,
    shared: Weak<VizShared>,
}

impl ControlHandle {
    /// Sends a command and waits (asynchronously) for the state after it; `None` if the driver is
    /// busy or gone.
    pub async fn send(&self, cmd: Command) -> Option<serde_json::Value> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.try_send(Request { cmd, reply }).ok()?;
        tokio::time::timeout(ANSWER_TIMEOUT, rx).await.ok()?.ok()
    }

    /// The playhead's last published state.
    pub fn state(&self) -> serde_json::Value {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends the state to every viewer.
    pub fn announce_state(&self) {
        if let Some(s) = self.shared.upgrade() {
            s.hub.announce("state", &self.state());
        }
    }
}

/// The replay's settings.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub threads: usize,
    /// Ticks between checkpoints (memory: one encoded snapshot each).
    pub checkpoint_every: u64,
}

/// Shared by the indexer and the driver.
struct Index {
    checkpoints: RwLock<BTreeMap<u64, Arc<Vec<u8>>>>,
    /// The tick up to which the journal has been run and checked.
    indexed: AtomicU64,
    bytes: AtomicU64,
    error: Mutex<Option<String>>,
    started: Instant,
    done_after_ms: AtomicU64,
}

/// A running replay server's threads.
pub struct ReplayDriver {
    pub control: ControlHandle,
    index: Arc<Index>,
    journal: Arc<LoadedJournal>,
}

impl ReplayDriver {
    /// Starts the indexer and the driver, and attaches the controls to `viz`.
    pub fn start(journal: Arc<LoadedJournal>, viz: &Viz, opts: ReplayOptions) -> anyhow::Result<ReplayDriver> {
        let shards = journal.spec.shard_count();
        let index = Arc::new(Index {
            checkpoints: RwLock::new(BTreeMap::new()),
            indexed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            error: Mutex::new(None),
            started: Instant::now(),
            done_after_ms: AtomicU64::new(0),
        });
        let every = opts.checkpoint_every.max(1);
        let indexer_exec = PoolExecutor::new(opts.threads, shards).context("cannot start the indexer's threads")?;
        std::thread::Builder::new()
            .name("replay-index".into())
            .spawn({
                let (journal, index) = (Arc::clone(&journal), Arc::clone(&index));
                move || build_index(&journal, &index, every, &indexer_exec)
            })
            .context("cannot start the indexer thread")?;

        let (tx, rx) = sync_channel(COMMAND_QUEUE_MAX);
        let state = Arc::new(Mutex::new(serde_json::json!({})));
        let control = ControlHandle {
            tx,
            state: Arc::clone(&state),
            shared: Arc::downgrade(&viz.shared),
        };
        let exec = PoolExecutor::new(opts.threads, shards).context("cannot start the replay's threads")?;
        let zone = journal.zone_at_start().context("cannot build the zone from the journal")?;
        let mut driver = Driver {
            journal: Arc::clone(&journal),
            index: Arc::clone(&index),
            exec,
            zone,
            frames: viz.sender(),
            shared: Arc::clone(&viz.shared),
            state,
            playing: None,
            speed: 1.0,
            frame_every: Duration::from_secs_f64(1.0 / f64::from(viz.shared.cfg.rate_hz.max(1))),
            last_seek_ms: None,
            achieved_tps: 0.0,
            error: None,
        };
        std::thread::Builder::new()
            .name("replay-driver".into())
            .spawn(move || {
                driver.send_frame(true);
                driver.run(&rx);
            })
            .context("cannot start the replay driver")?;
        *viz.shared.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(control.clone());
        Ok(ReplayDriver { control, index, journal })
    }

    /// The tick up to which the journal has been checked and indexed.
    pub fn indexed_tick(&self) -> u64 {
        self.index.indexed.load(Ordering::Relaxed)
    }

    /// Whether the whole journal is indexed.
    pub fn index_done(&self) -> bool {
        self.indexed_tick() >= self.journal.end_tick || self.index_error().is_some()
    }

    pub fn index_error(&self) -> Option<String> {
        self.index.error.lock().ok().and_then(|e| e.clone())
    }

    /// Bytes of checkpoints held, and how many.
    pub fn checkpoints(&self) -> (usize, u64) {
        let n = self.index.checkpoints.read().map_or(0, |c| c.len());
        (n, self.index.bytes.load(Ordering::Relaxed))
    }
}

fn encode_checkpoint(zone: &mut Zone, exec: &dyn ShardExecutor, digest: [u8; 32]) -> Vec<u8> {
    let mut state = zone.capture(exec);
    state.normalize();
    zone_persistence::snapshot::encode_full(&state, digest)
}

fn build_index(journal: &LoadedJournal, index: &Index, every: u64, exec: &PoolExecutor) {
    let mut zone = match journal.zone_at_start() {
        Ok(z) => z,
        Err(e) => {
            *index.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            return;
        }
    };
    let digest = journal.spec.digest;
    let mut last_log = Instant::now();
    loop {
        let next = (zone.tick() / every + 1) * every;
        if let Err(e) = journal.advance(&mut zone, next, exec) {
            tracing::error!(error = %e, "the journal does not replay: the page shows it up to the divergence");
            *index.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            return;
        }
        let t = zone.tick();
        let bytes = encode_checkpoint(&mut zone, exec, digest);
        index.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        index
            .checkpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(t, Arc::new(bytes));
        index.indexed.store(t, Ordering::Relaxed);
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(tick = t, end = journal.end_tick, "indexing the journal");
            last_log = Instant::now();
        }
        if t >= journal.end_tick {
            break;
        }
    }
    let ms = index.started.elapsed().as_millis() as u64;
    index.done_after_ms.store(ms.max(1), Ordering::Relaxed);
    tracing::info!(
        ticks = journal.end_tick,
        checkpoints = index.checkpoints.read().map_or(0, |c| c.len()),
        bytes = index.bytes.load(Ordering::Relaxed),
        ms,
        "journal indexed: every tick can be shown"
    );
}

struct Driver {
    journal: Arc<LoadedJournal>,
    index: Arc<Index>,
    exec: PoolExecutor,
    zone: Zone,
    frames: SyncSender<Input>,
    shared: Arc<VizShared>,
    state: Arc<Mutex<serde_json::Value>>,
    /// When play started and at which tick (None: paused).
    playing: Option<(Instant, u64)>,
    speed: f64,
    frame_every: Duration,
    last_seek_ms: Option<f64>,
    achieved_tps: f64,
    error: Option<String>,
}

impl Driver {
    fn run(&mut self, rx: &Receiver<Request>) {
        let mut last_frame = Instant::now();
        let mut last_state = Instant::now();
        let mut window = (Instant::now(), self.zone.tick());
        loop {
            let wait = if self.playing.is_some() {
                Duration::from_millis(2)
            } else {
                Duration::from_millis(250)
            };
            match rx.recv_timeout(wait) {
                Ok(req) => {
                    self.handle(req.cmd);
                    self.publish_state();
                    let _ = req.reply.send(self.state_json());
                    self.announce();
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some((t0, tick0)) = self.playing {
                let due = tick0 + (t0.elapsed().as_secs_f64() * 60.0 * self.speed) as u64;
                // At most one frame interval's worth of ticks before the next frame goes out, so a
                // zone that cannot keep up still shows progress.
                let chunk = ((60.0 * self.speed * self.frame_every.as_secs_f64()).ceil() as u64).max(1);
                let target = due.min(self.zone.tick() + chunk).min(self.journal.end_tick);
                if target > self.zone.tick()
                    && let Err(e) = self.journal.advance(&mut self.zone, target, &self.exec)
                {
                    self.fail(e);
                }
                if self.zone.tick() >= self.journal.end_tick {
                    self.playing = None;
                    self.send_frame(false);
                    self.publish_state();
                    self.announce();
                } else if last_frame.elapsed() >= self.frame_every {
                    self.send_frame(false);
                    last_frame = Instant::now();
                }
                if window.0.elapsed() >= Duration::from_secs(1) {
                    self.achieved_tps = (self.zone.tick().saturating_sub(window.1)) as f64 / window.0.elapsed().as_secs_f64();
                    window = (Instant::now(), self.zone.tick());
                }
            } else {
                window = (Instant::now(), self.zone.tick());
                self.achieved_tps = 0.0;
            }
            if last_state.elapsed() >= Duration::from_millis(500) {
                self.publish_state();
                self.announce();
                last_state = Instant::now();
            }
        }
    }

    fn fail(&mut self, e: ReplayError) {
        tracing::error!(error = %e, "replay stopped");
        self.error = Some(e.to_string());
        self.playing = None;
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Seek(t) => self.seek(t),
            Command::Step(by) => {
                let t = self.zone.tick().saturating_add_signed(by);
                self.playing = None;
                self.seek(t);
            }
            Command::Play(speed) => {
                self.speed = speed.clamp(1.0, 50.0);
                if self.zone.tick() >= self.journal.end_tick {
                    self.seek(0);
                }
                self.playing = Some((Instant::now(), self.zone.tick()));
            }
            Command::Pause => {
                self.playing = None;
                self.send_frame(false);
            }
        }
    }

    /// Moves the playhead to `tick`: forward from here when that is nearer than a checkpoint,
    /// else from the nearest checkpoint at or before it.
    fn seek(&mut self, tick: u64) {
        let t0 = Instant::now();
        let tick = tick.min(self.journal.end_tick);
        let checkpoint = self
            .index
            .checkpoints
            .read()
            .ok()
            .and_then(|c| c.range(..=tick).next_back().map(|(t, b)| (*t, Arc::clone(b))));
        let from_here = tick >= self.zone.tick() && checkpoint.as_ref().is_none_or(|(t, _)| *t <= self.zone.tick());
        if !from_here {
            let restored = match checkpoint {
                Some((_, bytes)) => restore(&self.journal, &bytes),
                None => self.journal.zone_at_start().map_err(|e| e.to_string()),
            };
            match restored {
                Ok(z) => self.zone = z,
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        if let Err(e) = self.journal.advance(&mut self.zone, tick, &self.exec) {
            self.fail(e);
        }
        if let Some((_, t)) = &mut self.playing {
            *t = self.zone.tick();
        }
        self.playing = self.playing.map(|(_, t)| (Instant::now(), t));
        self.last_seek_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        self.send_frame(true);
    }

    fn send_frame(&mut self, reset: bool) {
        let meta = FrameMeta {
            tick_rate_mhz: (self.achieved_tps * 1000.0).round() as u64,
            step_us: (0..self.journal.spec.shard_count())
                .map(|i| self.exec.step_duration(i).as_micros().min(u128::from(u32::MAX)) as u32)
                .collect(),
        };
        let mut state = self.zone.capture(&self.exec);
        state.normalize();
        let frame: Frame = frame_from_state(&state, meta);
        // The replay is not a tick thread: waiting for the viz thread here only paces playback.
        let _ = self.frames.send(Input::Ready { frame, live: true, reset });
    }

    fn state_json(&self) -> serde_json::Value {
        let indexed = self.index.indexed.load(Ordering::Relaxed);
        let index_error = self.index.error.lock().ok().and_then(|e| e.clone());
        serde_json::json!({
            "mode": "replay",
            "tick": self.zone.tick(),
            "start": 0,
            "end": self.journal.end_tick,
            "playing": self.playing.is_some(),
            "speed": self.speed,
            "achieved_ticks_per_s": self.achieved_tps,
            "indexed": indexed,
            "index_done_ms": match self.index.done_after_ms.load(Ordering::Relaxed) { 0 => None, ms => Some(ms) },
            "last_seek_ms": self.last_seek_ms,
            "objects": self.zone.object_count(),
            "error": self.error.clone().or(index_error),
            "clean_end": self.journal.clean_end,
        })
    }

    fn publish_state(&self) {
        if let Ok(mut s) = self.state.lock() {
            *s = self.state_json();
        }
    }

    fn announce(&self) {
        self.shared.hub.announce("state", &self.state_json());
    }
}

fn restore(journal: &LoadedJournal, bytes: &[u8]) -> Result<Zone, String> {
    let snap = zone_persistence::snapshot::decode(bytes).map_err(|e| format!("checkpoint does not decode: {e}"))?;
    let zone_persistence::snapshot::SnapshotBody::Full(state) = snap.body else {
        return Err("checkpoint is not a full snapshot".into());
    };
    Zone::restore(Arc::clone(&journal.spec), state).map_err(|e| format!("checkpoint does not restore: {e}"))
}
