//! The world visualizer: a page on the admin listener that draws the zone live, with a scrub bar
//! over the recent past; and, through `zone-replay --serve`, the same page over a recorded
//! journal, any tick of it, exactly.
//!
//! Where frames come from (never built on the tick thread):
//! - **while someone watches**, the Replicate stage's copies (the same `Arc`ed copies the game
//!   socket gets, see [`crate::replica`]) at `--viz-rate` frames per second. The tick thread's
//!   part is one atomic load per tick ([`VizTap::wants_copy`]) and, at frame ticks, a `try_send`
//!   of an `Arc` ([`VizTap::offer`]); a full queue drops the frame and counts it;
//! - **always, when persistence is on**, the snapshots the persistence thread already takes
//!   (every `--snapshot-diff-interval`): it hands each one, after sorting, to [`capture_observer`],
//!   which projects it on that thread. So the history ring fills with no viewer and at no cost
//!   to the tick.
//!
//! The `viz` thread turns copies into [`frame::Frame`]s, stores one per second in the
//! [`ring::Ring`] (diff-coded, bounded by `--viz-history` and `--viz-ring-mb`) and broadcasts
//! every live frame to the viewers ([`hub::Hub`]). HTTP lives in [`http`]; the replay driver
//! in [`replay`]; the page in `page/` (embedded in the binary: no build step).
//!
//! Never touches the zone, never blocks the tick, and holds nothing unbounded.

pub mod frame;
pub mod http;
pub mod hub;
pub mod replay;
pub mod ring;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use zone_sim::{Replicated, ZoneSpec, ZoneState};

use frame::{Frame, FrameMeta, VizObject, mm_to_dm};
use hub::Hub;
use ring::Ring;

/// Live frames per second when `--viz-rate` is not given. Each of these frames costs the tick a
/// copy of every object (about 390 k instructions on the demo zone); at 2 per second that is
/// under 1% of a demo tick (benchmarks/2026-11-29-viz.md). When players are connected the page
/// gets up to 10 frames/s from their copies (see [`FREE_FRAME_EVERY`]), and it moves objects
/// smoothly between frames either way.
pub const LIVE_RATE_HZ_DEFAULT: u32 = 2;

/// Ticks between frames made from copies the game socket takes anyway (10 frames/s): they cost
/// the tick nothing, so viewers get them whatever `--viz-rate` says.
pub const FREE_FRAME_EVERY: u64 = 6;

/// Copies waiting for the viz thread: more would only be older.
const INPUT_QUEUE_MAX: usize = 2;

/// The visualizer's settings.
#[derive(Clone, Debug)]
pub struct VizConfig {
    /// Live frames per second sent to viewers (a divisor of 60).
    pub rate_hz: u32,
    pub max_viewers: usize,
    /// A viewer that has not pinged for this long is dropped.
    pub idle_timeout: Duration,
    /// History kept in the ring, seconds.
    pub history_s: u64,
    /// The ring's budget for encoded frames, bytes.
    pub ring_bytes_max: usize,
    /// Ticks between stored history frames.
    pub ring_spacing_ticks: u64,
}

impl Default for VizConfig {
    fn default() -> Self {
        VizConfig {
            rate_hz: LIVE_RATE_HZ_DEFAULT,
            max_viewers: 8,
            idle_timeout: Duration::from_secs(30),
            history_s: 600,
            ring_bytes_max: 256 << 20,
            ring_spacing_ticks: 60,
        }
    }
}

/// Live (a running server) or replay (`zone-replay --serve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Replay,
}

/// What reaches the viz thread.
pub enum Input {
    /// The Replicate stage's copies at `tick` (live).
    Replica { tick: u64, shards: crate::replica::Copies },
    /// A frame already projected (persistence captures, replays); `live` frames go to viewers,
    /// `reset` makes every viewer start again from a key (the replay jumped).
    Ready { frame: Frame, live: bool, reset: bool },
}

/// State the HTTP handlers, the viz thread and the tick thread share.
pub struct VizShared {
    pub mode: Mode,
    pub cfg: VizConfig,
    pub spec: Arc<ZoneSpec>,
    pub hub: Hub,
    pub ring: Mutex<Ring>,
    /// The last frame rebuilt from the ring (sequence number, frame): sequential scrubbing applies
    /// one diff per step.
    pub rebuilt: Mutex<Option<(u64, Frame)>>,
    /// Copies dropped because the viz thread was behind.
    pub frames_dropped: AtomicU64,
    /// Where live frames get their tick rate and step times (the `/status` document).
    pub status: Option<Arc<crate::admin::AdminShared>>,
    /// The replay's controls (replay mode only).
    pub control: Mutex<Option<replay::ControlHandle>>,
    /// Set by [`Viz::shutdown`]: the thread ends even while some sender lingers.
    stop: std::sync::atomic::AtomicBool,
}

impl VizShared {
    /// The page's description of the zone: bounds, shard grid, kinds (index 0 is the player).
    pub fn meta_json(&self) -> serde_json::Value {
        let s = &self.spec;
        // `kinds[0]` is the player's placeholder; its hit points are the player's.
        let kinds: Vec<serde_json::Value> = s
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match i {
                0 => serde_json::json!({"name": "player", "hp_max": s.player.hit_points}),
                _ => serde_json::json!({"name": k.name, "hp_max": k.hit_points}),
            })
            .collect();
        serde_json::json!({
            "format_version": frame::FORMAT_VERSION,
            "mode": match self.mode { Mode::Live => "live", Mode::Replay => "replay" },
            "zone": s.id,
            "bounds_dm": [mm_to_dm(s.bounds.min.x), mm_to_dm(s.bounds.min.y), mm_to_dm(s.bounds.max.x), mm_to_dm(s.bounds.max.y)],
            "shard_cols": s.shard_cols,
            "shard_rows": s.shard_rows,
            "kinds": kinds,
            "tick_rate_hz": zone_sim::units::TICK_RATE_HZ,
            "rate_hz": self.cfg.rate_hz,
            "max_viewers": self.cfg.max_viewers,
            "idle_timeout_s": self.cfg.idle_timeout.as_secs_f64(),
            "history_s": self.cfg.history_s,
        })
    }
}

/// The tick thread's end: decides when a copy is wanted and hands it over without waiting.
#[derive(Clone)]
pub struct VizTap {
    tx: SyncSender<Input>,
    shared: Arc<VizShared>,
    every: u64,
    /// The last tick copied for viewers (spaces out the copies the game socket pays for).
    last_copy: std::cell::Cell<u64>,
}

impl VizTap {
    /// Whether the Replicate stage should copy the objects at `next_tick` for viewers: someone
    /// watches, and it is a frame tick (`--viz-rate`), or the copy is `free` (the game socket
    /// takes this tick's copy anyway) and the last frame is at least [`FREE_FRAME_EVERY`] ticks
    /// old. One relaxed load: the whole cost with nobody watching.
    pub fn wants_copy(&self, next_tick: u64, free: bool) -> bool {
        if self.shared.hub.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let due = next_tick.is_multiple_of(self.every) || (free && next_tick >= self.last_copy.get() + FREE_FRAME_EVERY);
        if due {
            self.last_copy.set(next_tick);
        }
        due
    }

    /// Hands the copies over; drops (and counts) them if the viz thread is behind.
    pub fn offer(&self, tick: u64, shards: crate::replica::Copies) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(Input::Replica { tick, shards }) {
            self.shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("zone_viz_frames_dropped_total").increment(1);
        }
    }
}

/// A running visualizer: its shared state, the tick thread's tap and the thread.
pub struct Viz {
    pub shared: Arc<VizShared>,
    tap: VizTap,
    thread: Option<JoinHandle<()>>,
}

impl Viz {
    /// Starts the viz thread.
    pub fn start(mode: Mode, cfg: VizConfig, spec: Arc<ZoneSpec>, status: Option<Arc<crate::admin::AdminShared>>) -> anyhow::Result<Viz> {
        let tick_hz = u64::from(zone_sim::units::TICK_RATE_HZ);
        let ring = Ring::new(cfg.history_s.saturating_mul(tick_hz), cfg.ring_bytes_max, cfg.ring_spacing_ticks);
        let every = tick_hz / u64::from(cfg.rate_hz.clamp(1, 60));
        let shared = Arc::new(VizShared {
            mode,
            hub: Hub::new(cfg.max_viewers, cfg.idle_timeout),
            cfg,
            spec,
            ring: Mutex::new(ring),
            rebuilt: Mutex::new(None),
            frames_dropped: AtomicU64::new(0),
            status,
            control: Mutex::new(None),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = sync_channel(INPUT_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("viz".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let span = tracing::Span::current();
                move || span.in_scope(|| run(&shared, &rx))
            })
            .context("cannot start the visualizer thread")?;
        Ok(Viz {
            tap: VizTap {
                tx,
                shared: Arc::clone(&shared),
                every: every.max(1),
                last_copy: std::cell::Cell::new(0),
            },
            shared,
            thread: Some(thread),
        })
    }

    /// The tick thread's handle.
    pub fn tap(&self) -> VizTap {
        self.tap.clone()
    }

    /// A sender for already-built frames (the replay driver).
    pub fn sender(&self) -> SyncSender<Input> {
        self.tap.tx.clone()
    }

    /// Lets the persistence thread feed the history ring with the snapshots it takes.
    pub fn capture_observer(&self) -> crate::persist::SnapshotObserver {
        capture_observer(self.tap.tx.clone())
    }

    /// Tells the viewers the server is going away, ends their streams and stops the thread once
    /// every sender is gone.
    pub fn shutdown(mut self) {
        self.shared.hub.close();
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.tap);
        if let Some(t) = self.thread.take() {
            // The persistence thread may still hold a sender; it is stopped before this.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The persistence thread's hook: projects a sorted snapshot into a frame and offers it to the
/// history ring. Runs on the persistence thread; never blocks.
pub fn capture_observer(tx: SyncSender<Input>) -> crate::persist::SnapshotObserver {
    crate::persist::SnapshotObserver(Arc::new(move |state: &ZoneState| {
        let frame = frame_from_state(state, FrameMeta::default());
        // Full: the viz thread is behind; this history frame is skipped.
        let _ = tx.try_send(Input::Ready {
            frame,
            live: false,
            reset: false,
        });
    }))
}

/// A frame from a captured state (objects sorted by id here).
pub fn frame_from_state(state: &ZoneState, meta: FrameMeta) -> Frame {
    let mut objects: Vec<VizObject> = Vec::with_capacity(state.shards.iter().map(|s| s.objects.len()).sum());
    for s in &state.shards {
        objects.extend(s.objects.iter().map(|o| VizObject {
            id: o.obj.id,
            kind: o.obj.kind,
            shard: s.index,
            x: mm_to_dm(o.pos.x),
            y: mm_to_dm(o.pos.y),
            hp: o.health.hp,
        }));
    }
    objects.sort_unstable_by_key(|o| o.id);
    Frame {
        tick: state.tick,
        meta,
        objects,
    }
}

/// A frame from the Replicate stage's copies (shard `i`'s objects are `shards[i]`).
pub fn frame_from_replicas(tick: u64, shards: &[Vec<Replicated>], meta: FrameMeta) -> Frame {
    let mut objects: Vec<VizObject> = Vec::with_capacity(shards.iter().map(Vec::len).sum());
    for (i, s) in shards.iter().enumerate() {
        objects.extend(s.iter().map(|r| VizObject {
            id: r.id,
            kind: r.kind,
            shard: i as u16,
            x: mm_to_dm(r.pos.x),
            y: mm_to_dm(r.pos.y),
            hp: r.hp,
        }));
    }
    objects.sort_unstable_by_key(|o| o.id);
    Frame { tick, meta, objects }
}

/// The live frame header from the `/status` document the tick loop publishes.
fn live_meta(shared: &VizShared) -> FrameMeta {
    let Some(status) = &shared.status else {
        return FrameMeta::default();
    };
    let doc = status.status();
    let tick_rate_mhz = (doc["tick_rate_hz"].as_f64().unwrap_or(0.0) * 1000.0).round().max(0.0) as u64;
    let step_us = doc["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| (s["tick_p50_ms"].as_f64().unwrap_or(0.0) * 1000.0).round().max(0.0) as u32)
                .collect()
        })
        .unwrap_or_default();
    FrameMeta { tick_rate_mhz, step_us }
}

fn run(shared: &VizShared, rx: &Receiver<Input>) {
    let mut last_sweep = Instant::now();
    let mut last_live_tick: Option<u64> = None;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(input) => {
                let (frame, live, reset) = match input {
                    Input::Replica { tick, shards } => (frame_from_replicas(tick, &shards, live_meta(shared)), true, false),
                    Input::Ready { mut frame, live, reset } => {
                        if shared.mode == Mode::Live && frame.meta.step_us.is_empty() {
                            frame.meta = live_meta(shared);
                        }
                        (frame, live, reset)
                    }
                };
                if shared.mode == Mode::Live {
                    let mut ring = shared.ring.lock().unwrap_or_else(|e| e.into_inner());
                    if ring.wants(frame.tick) {
                        ring.offer(frame.clone());
                        metrics::gauge!("zone_viz_ring_bytes").set(ring.bytes() as f64);
                        if let Some((a, b)) = ring.span() {
                            metrics::gauge!("zone_viz_ring_seconds").set((b - a) as f64 / f64::from(zone_sim::units::TICK_RATE_HZ));
                        }
                    }
                }
                if live && (reset || last_live_tick.is_none_or(|t| frame.tick > t)) {
                    last_live_tick = Some(frame.tick);
                    shared.hub.broadcast(frame, reset);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            shared.hub.sweep_idle(Instant::now());
            last_sweep = Instant::now();
        }
    }
    shared.hub.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_spec() -> Arc<ZoneSpec> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
        crate::zone_load::load_zone(path.as_ref()).unwrap().spec
    }

    /// Which of the 120 ticks from `from` get a copy for viewers, with the game socket copying
    /// every `net_every`th tick (0: never).
    fn copied(tap: &VizTap, from: u64, net_every: u64) -> Vec<u64> {
        (from..from + 120)
            .filter(|&t| tap.wants_copy(t, net_every > 0 && t % net_every == 0))
            .collect()
    }

    #[test]
    fn copies_follow_the_rate_and_ride_free_on_the_game_sockets_copies() {
        let cfg = VizConfig {
            rate_hz: 2,
            ..VizConfig::default()
        };
        let viz = Viz::start(Mode::Live, cfg, demo_spec(), None).unwrap();
        let tap = viz.tap();
        assert!(copied(&tap, 1, 3).is_empty(), "nobody watches: no copy, whatever is free");
        let (_id, _rx) = viz.shared.hub.join(serde_json::json!({})).unwrap();
        // No players: the visualizer's own 2 frames/s.
        assert_eq!(copied(&tap, 121, 0), vec![150, 180, 210, 240]);
        // Players connected (a copy every 3rd tick): 10 frames/s, every one of them free but the
        // rate's own ticks, which are copy ticks of the game socket too.
        let with_players = copied(&tap, 241, 3);
        assert_eq!(with_players.len(), 20);
        assert!(with_players.iter().all(|t| t % 3 == 0));
        assert!(with_players.windows(2).all(|w| w[1] - w[0] >= FREE_FRAME_EVERY));
    }
}
