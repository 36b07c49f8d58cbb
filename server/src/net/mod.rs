//! The game socket: players over UDP. A network thread owns the socket (laminar behind the
//! stateless gate, [`gate`]) and drives the protocol's sans-IO endpoint
//! ([`zone_net::endpoint::Endpoint`], see [`worker`]); the tick thread talks to it only through
//! bounded queues, through [`NetLink`]:
//!
//! - network → tick: joins and leaves ([`Control`]) and inputs, drained before each step and
//!   handed to `Zone::join` / `leave` / `submit_input`; after a restore, the restored players
//!   that have not joined again when the grace is over (or a drain starts) leave there too
//!   ([`NetLink::expect_back`]);
//! - tick → network: join results, and at every snapshot tick a [`Frame`], the Replicate stage's
//!   copy of every shard's objects plus the tick's joins, leaves and deaths. The network thread
//!   picks each client's objects, encodes its delta snapshot and sends it ([`worker`]).
//!
//! **The tick never waits**: every send from the tick thread is a `try_send`; a full queue drops
//! the message and counts it (`zone_net_frames_dropped_total`, the input refusal counters).
//! Never encode, sort or send on the tick thread beyond what is listed here.

pub mod counters;
pub mod gate;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use zone_sim::{InputRefusal, PlayerId, PlayerInput, TickBatch, Zone, ZoneSpec};

pub use counters::{NetCounters, Rejection};

/// Joins and leaves waiting for the tick thread.
const CONTROL_QUEUE_MAX: usize = 4_096;
/// Inputs waiting for the tick thread: about 16 ticks of 1,000 players (the endpoint passes each
/// player's input for a tick on once, however many batches repeat it).
const INPUT_QUEUE_MAX: usize = 16_384;
/// Messages waiting for the network thread.
const TO_NET_QUEUE_MAX: usize = 256;
/// Frames waiting for the network thread at most: an older frame is worthless once a newer one
/// exists, and each holds a copy of the zone's objects.
const FRAMES_IN_FLIGHT_MAX: usize = 2;
/// Joins, leaves and deaths held for the next frame when frames are being dropped.
const PENDING_EVENTS_MAX: usize = 10_000;

/// Ticks between a client's input batches that the server asks for by default: one datagram every
/// third tick (20 Hz, the snapshot rate) carrying an input for each tick. At one per tick, the
/// input datagrams were a third of the server's CPU and half of each client's sends
/// (`benchmarks/2026-12-01-input-rate.md`); a change of intent waits at most two ticks longer.
pub const INPUT_BATCH_TICKS_DEFAULT: u32 = 3;

/// The game socket's settings.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub bind: SocketAddr,
    pub token_secret: Option<Vec<u8>>,
    pub snapshot_rate_hz: u32,
    pub interest_radius_mm: u32,
    pub interest_max: usize,
    /// Interest searched for at one frame in this many (see `EndpointConfig`).
    pub interest_refresh_frames: u32,
    pub max_clients: usize,
    pub handshake_rate_per_ip: f64,
    pub peer_packet_rate: f64,
    /// A session that sends nothing for this long is ended.
    pub idle_timeout: Duration,
    /// Datagrams one snapshot may take per client; the rest of a large view follows in later sends.
    pub datagrams_per_snapshot_max: usize,
    /// After a restore, how long the players restored with the zone have to come back (a new
    /// session as the same player continues the same character); those that have not by then
    /// leave, as a session that went idle does ([`NetLink::expect_back`]).
    pub restored_player_grace: Duration,
    /// Ticks between a client's input batches that the Welcome asks for, 1 to
    /// [`zone_net::client::INPUT_BATCH_TICKS_MAX`] (`Welcome.input_batch_ticks`): 1 is a datagram
    /// per tick (60 Hz), 3 one every third tick (20 Hz, as often as snapshots go).
    pub input_batch_ticks: u32,
}

impl NetConfig {
    pub fn new(bind: SocketAddr, token_secret: Option<Vec<u8>>, max_clients: usize) -> NetConfig {
        NetConfig {
            bind,
            token_secret,
            snapshot_rate_hz: 20,
            interest_radius_mm: 150_000,
            interest_max: 128,
            interest_refresh_frames: 4,
            max_clients,
            handshake_rate_per_ip: 100.0,
            peer_packet_rate: 240.0,
            idle_timeout: Duration::from_secs(5),
            datagrams_per_snapshot_max: 4,
            restored_player_grace: Duration::from_secs(60),
            input_batch_ticks: INPUT_BATCH_TICKS_DEFAULT,
        }
    }
}

/// A join or leave for the tick thread.
#[derive(Clone, Copy, Debug)]
pub enum Control {
    Join(PlayerId),
    Leave(PlayerId),
}

/// What the Replicate stage produced at one tick, with the player events since the last frame.
#[derive(Debug, Default)]
pub struct Frame {
    pub tick: u64,
    /// Each shard's objects (storage order), shared with the world visualizer.
    pub shards: crate::replica::Copies,
    pub joins: Vec<(PlayerId, u64)>,
    pub leaves: Vec<(PlayerId, u64)>,
    pub deaths: Vec<(PlayerId, u64)>,
}

/// Messages from the tick thread.
#[derive(Debug)]
pub enum ToNet {
    JoinResult(PlayerId, Result<(), InputRefusal>),
    Frame(Box<Frame>),
    Draining,
    /// The lobby ended the player's session: drop its connections that started before the instant.
    Kick(PlayerId, std::time::Instant),
}

/// State both threads read.
#[derive(Debug, Default)]
pub struct NetShared {
    /// The last tick the zone ran.
    pub tick: AtomicU64,
    pub stop: AtomicBool,
    /// Frames sent to the network thread and not yet encoded.
    pub frames_in_flight: std::sync::atomic::AtomicUsize,
    pub counters: Arc<NetCounters>,
}

/// The tick thread's end of the game socket.
pub struct NetLink {
    to_net: SyncSender<ToNet>,
    control: Receiver<Control>,
    inputs: Receiver<PlayerInput>,
    shared: Arc<NetShared>,
    snapshot_every: u64,
    pending: Frame,
    replicating: bool,
    thread: Option<JoinHandle<()>>,
    /// Restored players with no session since the restore, sorted; they leave at tick
    /// `orphans_leave_at`, or at once when a drain starts (no join is taken then).
    orphans: Vec<PlayerId>,
    orphans_leave_at: u64,
    restored_grace_ticks: u64,
}

impl NetLink {
    /// Binds the socket and starts the network thread.
    pub fn start(cfg: NetConfig, spec: Arc<ZoneSpec>) -> anyhow::Result<NetLink> {
        let shared = Arc::new(NetShared::default());
        let policy = gate::GatePolicy {
            token_secret: cfg.token_secret.clone(),
            zone_id: spec.id.clone(),
            handshake_rate_per_ip: cfg.handshake_rate_per_ip,
            peer_packet_rate: cfg.peer_packet_rate,
            // Room for joining clients and replaced sessions beyond the joined ones.
            admitted_max: cfg.max_clients + cfg.max_clients / 4 + 16,
        };
        let gate = gate::GateSocket::bind(cfg.bind, policy, Arc::clone(&shared.counters)).with_context(|| {
            format!(
                "cannot bind the game socket on UDP {} (is another server using it? set --bind)",
                cfg.bind
            )
        })?;
        let (to_net, from_tick) = sync_channel(TO_NET_QUEUE_MAX);
        let (control_tx, control) = sync_channel(CONTROL_QUEUE_MAX);
        let (input_tx, inputs) = sync_channel(INPUT_QUEUE_MAX);
        let snapshot_every = u64::from(60 / cfg.snapshot_rate_hz.clamp(1, 60));
        let restored_grace_ticks = (cfg.restored_player_grace.as_secs_f64() * f64::from(zone_sim::units::TICK_RATE_HZ)).ceil() as u64;
        let worker = worker::Worker::new(cfg, spec, gate, Arc::clone(&shared), from_tick, control_tx, input_tx);
        let thread = std::thread::Builder::new()
            .name("zone-net".into())
            .spawn({
                // The thread's log lines carry the run's `zone` span like the tick thread's.
                let span = tracing::Span::current();
                move || span.in_scope(|| worker.run())
            })
            .context("cannot start the network thread")?;
        Ok(NetLink {
            to_net,
            control,
            inputs,
            shared,
            snapshot_every,
            pending: Frame::default(),
            replicating: false,
            thread: Some(thread),
            orphans: Vec::new(),
            orphans_leave_at: 0,
            restored_grace_ticks,
        })
    }

    /// After a restore at `tick`: `players` (the restored zone's players that have a client
    /// somewhere, not scripted ones) get the grace (`NetConfig::restored_player_grace`) to join
    /// again. A player that does continues where it was; the others leave once it is over, so
    /// that they neither stand in the zone, take seats, nor hold up a drain for ever.
    pub fn expect_back(&mut self, players: impl IntoIterator<Item = PlayerId>, tick: u64) {
        self.orphans = players.into_iter().collect();
        self.orphans.sort_unstable();
        self.orphans.dedup();
        self.orphans_leave_at = tick.saturating_add(self.restored_grace_ticks);
        if !self.orphans.is_empty() {
            tracing::info!(
                players = self.orphans.len(),
                grace_s = self.restored_grace_ticks as f64 / f64::from(zone_sim::units::TICK_RATE_HZ),
                "restored players have until the grace is over to join again; the others will leave then"
            );
        }
    }

    /// Players restored with the zone still waiting for a session.
    pub fn restored_players_waiting(&self) -> usize {
        self.orphans.len()
    }

    fn came_back(&mut self, p: PlayerId) {
        if let Ok(i) = self.orphans.binary_search(&p) {
            self.orphans.remove(i);
        }
    }

    /// The network thread's command queue, for the lobby announcer's kicks.
    pub fn command_sender(&self) -> SyncSender<ToNet> {
        self.to_net.clone()
    }

    pub fn counters(&self) -> &NetCounters {
        &self.shared.counters
    }

    fn send(&self, m: ToNet) -> bool {
        match self.to_net.try_send(m) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Before a step: applies queued joins, leaves and inputs, and says whether the network
    /// thread wants the Replicate stage's copy of the coming tick (a snapshot tick with someone
    /// connected). The caller switches the stage ([`crate::replica::Replicas`]) and passes the
    /// copies to [`NetLink::after_step`].
    pub fn before_step(&mut self, zone: &mut Zone) -> bool {
        loop {
            match self.control.try_recv() {
                Ok(Control::Join(p)) => {
                    let r = match zone.join(p) {
                        // A rejoin before the leave of an old session ran, or a restored player.
                        Err(InputRefusal::AlreadyJoined) => Ok(()),
                        r => r,
                    };
                    // Only a join taken brings a restored player back (one refused because a
                    // drain began has no session, so it must not hold up the drain).
                    if r.is_ok() {
                        self.came_back(p);
                    }
                    self.send(ToNet::JoinResult(p, r));
                }
                Ok(Control::Leave(p)) => {
                    self.came_back(p);
                    let _ = zone.leave(p);
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if !self.orphans.is_empty() && (zone.tick() >= self.orphans_leave_at || zone.is_draining()) {
            let (mut left, gone) = (0usize, self.orphans.len());
            for p in std::mem::take(&mut self.orphans) {
                left += usize::from(zone.leave(p).is_ok());
            }
            tracing::info!(
                players = left,
                already_gone = gone - left,
                draining = zone.is_draining(),
                "restored players that did not join again leave"
            );
        }
        // At most one queue's worth per tick, so a flood cannot stall the tick.
        for _ in 0..INPUT_QUEUE_MAX {
            match self.inputs.try_recv() {
                Ok(i) => {
                    let _ = zone.submit_input(i);
                }
                Err(_) => break,
            }
        }
        let next = zone.tick() + 1;
        self.replicating = next.is_multiple_of(self.snapshot_every) && self.shared.counters.clients.load(Ordering::Relaxed) > 0;
        self.replicating
    }

    /// After a step: records the tick's player events and hands a frame to the network thread at
    /// snapshot ticks (`copies`: the Replicate stage's copies, when `before_step` asked for them).
    pub fn after_step(&mut self, zone: &Zone, batch: &TickBatch, copies: Option<crate::replica::Copies>) {
        let t = zone.tick();
        self.shared.tick.store(t, Ordering::Relaxed);
        let p = &mut self.pending;
        if self.shared.counters.clients.load(Ordering::Relaxed) == 0 {
            // Nobody to tell: a later client must not receive a backlog of old events.
            p.joins.clear();
            p.leaves.clear();
            p.deaths.clear();
        } else if p.joins.len() + p.leaves.len() + p.deaths.len() < PENDING_EVENTS_MAX {
            p.joins.extend(batch.joins.iter().map(|&j| (j, t)));
            p.leaves.extend(batch.leaves.iter().map(|&l| (l, t)));
            for s in zone.shard_stats() {
                p.deaths.extend(s.dead_players.iter().map(|&d| (d, t)));
            }
        }
        if self.replicating {
            if self.shared.frames_in_flight.load(Ordering::Relaxed) >= FRAMES_IN_FLIGHT_MAX {
                // The network thread is behind: skip this frame (its objects would be stale by
                // the time it was encoded) and keep the events for the next one.
                self.shared.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.shared.frames_in_flight.fetch_add(1, Ordering::Relaxed);
            let mut frame = std::mem::take(&mut self.pending);
            frame.tick = t;
            frame.shards = copies.unwrap_or_default();
            if let Err(TrySendError::Full(ToNet::Frame(f)) | TrySendError::Disconnected(ToNet::Frame(f))) =
                self.to_net.try_send(ToNet::Frame(Box::new(frame)))
            {
                self.shared.frames_in_flight.fetch_sub(1, Ordering::Relaxed);
                self.shared.counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
                // Keep the events for the next frame; the objects are stale anyway.
                self.pending = Frame {
                    joins: f.joins,
                    leaves: f.leaves,
                    deaths: f.deaths,
                    ..Frame::default()
                };
            }
        }
    }

    /// Tells every client the zone is draining.
    pub fn set_draining(&self) {
        self.send(ToNet::Draining);
    }

    /// Tells clients the server is going away and stops the network thread.
    pub fn shutdown(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
