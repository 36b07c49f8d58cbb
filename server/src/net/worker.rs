//! The network thread: the IO driver of [`zone_net::endpoint::Endpoint`]. It polls laminar
//! (behind the gate), feeds every datagram, tick message and timer to the endpoint with the time,
//! and carries out what comes back: datagrams to the gate's send queue (framed as laminar's
//! unreliable packets but not passed through laminar, which now only receives), joins, leaves and
//! inputs to the tick thread, forgotten addresses to the gate, counts to [`super::NetCounters`].
//!
//! All protocol logic (sessions, handshake, inputs, snapshots, events, timers) lives in the
//! endpoint, which has deterministic tests; this file only moves bytes and messages. Never blocks
//! on the tick thread (every send to it is a `try_send`, counted when full).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver as CbReceiver;
use laminar::{Config as LaminarConfig, ConnectionManager, SocketEvent, VirtualConnection};
use zone_net::client::INPUT_BATCH_TICKS_MAX;
use zone_net::endpoint::{Endpoint, EndpointConfig, EndpointEvent, FrameInput, INPUT_LEAD_TICKS_MAX, JoinOutcome, Parallel, Session};
use zone_net::gate::Rejection;
use zone_net::interest::{Located, PosMm, ShardGrid};
use zone_net::proto::{KindInfo, RejectReason, Welcome, ZoneBounds};
use zone_net::view::QObject;
use zone_sim::{InputRefusal, PlayerInput, ZoneSpec};

use super::gate::{CLIENT_DATAGRAM_BYTES_MAX, GateSocket};
use super::{Control, Frame, NetConfig, NetShared, ToNet};

/// The thread polls the socket at most this often: each poll has a fixed cost (a system call
/// that finds the socket empty, laminar's and the endpoint's bookkeeping), so polling back to
/// back under load would spend the thread on it. Datagrams wait in
/// the kernel's 4 MiB buffer meanwhile (at most this long; see also `gate::RECV_BATCH`).
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Clients encoded between two socket polls.
const ENCODE_CHUNK: usize = 200;

/// The zone facts a Welcome tells a client: bounds, the kind table, the input window and the
/// input batches' interval.
pub fn welcome_template(spec: &ZoneSpec, cfg: &NetConfig) -> Welcome {
    let b = spec.bounds;
    Welcome {
        player_id: 0,
        tick: 0,
        tick_rate_hz: zone_sim::units::TICK_RATE_HZ,
        snapshot_rate_hz: cfg.snapshot_rate_hz,
        object_id: 0,
        bounds: Some(ZoneBounds {
            min_x_mm: b.min.x,
            min_y_mm: b.min.y,
            max_x_mm: b.max.x,
            max_y_mm: b.max.y,
        }),
        kinds: spec
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| KindInfo {
                kind: i as u32,
                name: k.name.clone(),
                hit_points: k.hit_points.max(0) as u32,
            })
            .collect(),
        input_lead_ticks_max: spec.input_lead_ticks_max.min(INPUT_LEAD_TICKS_MAX as u32),
        zone_id: spec.id.clone(),
        input_batch_ticks: cfg.input_batch_ticks.clamp(1, INPUT_BATCH_TICKS_MAX),
    }
}

/// The endpoint's settings from the server's.
pub fn endpoint_config(cfg: &NetConfig, spec: &ZoneSpec) -> EndpointConfig {
    let b = spec.bounds;
    EndpointConfig {
        max_clients: cfg.max_clients,
        idle_timeout_us: cfg.idle_timeout.as_micros() as u64,
        snapshot_rate_hz: cfg.snapshot_rate_hz,
        interest_radius_mm: cfg.interest_radius_mm,
        interest_max: cfg.interest_max,
        interest_refresh_frames: cfg.interest_refresh_frames,
        datagrams_per_snapshot_max: cfg.datagrams_per_snapshot_max,
        welcome: welcome_template(spec, cfg),
        grid: ShardGrid {
            min: PosMm {
                x_mm: b.min.x,
                y_mm: b.min.y,
            },
            max: PosMm {
                x_mm: b.max.x,
                y_mm: b.max.y,
            },
            cols: spec.shard_cols,
            rows: spec.shard_rows,
        },
    }
}

/// Sessions a thread takes at a time from a chunk being encoded.
const ENCODE_BATCH: usize = 8;

/// Snapshot encoding shared between the network thread and the encode pool (one thread fewer
/// than the cores): the network thread encodes too instead of sleeping until the pool is done,
/// and both take sessions from one queue, [`ENCODE_BATCH`] at a time, so neither waits on the
/// other's share when the scheduler runs one of them late.
struct Pool<'a>(Option<&'a rayon::ThreadPool>);

impl Parallel for Pool<'_> {
    fn for_each(&self, sessions: &mut [&mut Session], f: &(dyn Fn(&mut Session) + Sync)) {
        share_out(self.0, sessions, ENCODE_BATCH, &|s: &mut &mut Session| f(s));
    }
}

/// Runs `f` once on every item: on the calling thread and every thread of `pool`, each taking
/// `batch` items at a time from one queue until none are left (all on the calling thread when
/// there is no pool or at most one batch).
fn share_out<T: Send>(pool: Option<&rayon::ThreadPool>, items: &mut [T], batch: usize, f: &(dyn Fn(&mut T) + Sync)) {
    let batch = batch.max(1);
    let Some(pool) = pool.filter(|_| items.len() > batch) else {
        items.iter_mut().for_each(f);
        return;
    };
    let queue = std::sync::Mutex::new(items.chunks_mut(batch));
    let drain = || {
        loop {
            // The lock is held only to take a batch, never while working on it, so it cannot be
            // poisoned by a panic in `f` (that reaches the caller from `in_place_scope`).
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            match next {
                Some(taken) => taken.iter_mut().for_each(f),
                None => break,
            }
        }
    };
    pool.in_place_scope(|scope| {
        for _ in 0..pool.current_num_threads() {
            scope.spawn(|_| drain());
        }
        drain();
    });
}

pub struct Worker {
    cfg: NetConfig,
    origin: (i32, i32),
    manager: ConnectionManager<GateSocket, VirtualConnection>,
    events: CbReceiver<SocketEvent>,
    shared: Arc<NetShared>,
    from_tick: Receiver<ToNet>,
    control: SyncSender<Control>,
    inputs: SyncSender<PlayerInput>,
    endpoint: Endpoint<SocketAddr>,
    epoch: Instant,
    /// Snapshot encoding runs on this thread and this pool (one thread fewer than the cores;
    /// none on one core).
    pool: Option<rayon::ThreadPool>,
    encode_hist: metrics::Histogram,
    slow_logged: Instant,
    rtt_hist: metrics::Histogram,
    size_hist: metrics::Histogram,
    /// The frame sort's scratch buffer, kept from frame to frame.
    order_scratch: Vec<(u64, u32)>,
}

/// The encode pool: one thread fewer than the cores, none on one core (or if the threads cannot
/// be started: the network thread then encodes alone).
fn encode_pool() -> Option<rayon::ThreadPool> {
    let helpers = std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1);
    if helpers == 0 {
        return None;
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(helpers)
        .thread_name(|i| format!("zone-net-encode-{i}"))
        .build()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot start the snapshot encode threads; the network thread encodes alone"))
        .ok()
}

impl Worker {
    pub fn new(
        cfg: NetConfig,
        spec: Arc<ZoneSpec>,
        gate: GateSocket,
        shared: Arc<NetShared>,
        from_tick: Receiver<ToNet>,
        control: SyncSender<Control>,
        inputs: SyncSender<PlayerInput>,
    ) -> Worker {
        let laminar_cfg = LaminarConfig {
            // Sessions end on our own idle timeout first; laminar's only frees its state.
            idle_connection_timeout: cfg.idle_timeout + Duration::from_secs(2),
            receive_buffer_max_size: CLIENT_DATAGRAM_BYTES_MAX + 1,
            // The gate admits only verified Hellos, so laminar's own cap is not the defence.
            max_unestablished_connections: u16::MAX,
            // We never fragment (every datagram fits the MTU budget): keep its buffers small.
            fragment_reassembly_buffer_size: 2,
            max_packets_in_flight: 64,
            // Our patch: visit every connection every 100 ms, not on every 2 ms poll. We send only
            // unreliable packets with no heartbeat, so the visits (resends, heartbeats, drops)
            // find nothing to do but drop connections idle for longer than the timeout above,
            // which 100 ms later is as good. (At 10 ms they were 1.09% of the server's samples at
            // 500 bots, at 100 ms 0.05%: `benchmarks/2026-11-30-network-thread.md`.)
            sweep_interval: Duration::from_millis(100),
            ..LaminarConfig::default()
        };
        let manager = ConnectionManager::new(gate, laminar_cfg);
        let events = manager.event_receiver().clone();
        let endpoint = Endpoint::new(endpoint_config(&cfg, &spec));
        Worker {
            origin: (spec.bounds.min.x, spec.bounds.min.y),
            cfg,
            manager,
            events,
            shared,
            from_tick,
            control,
            inputs,
            endpoint,
            epoch: Instant::now(),
            pool: encode_pool(),
            encode_hist: metrics::histogram!("zone_net_frame_encode_seconds"),
            slow_logged: Instant::now() - Duration::from_secs(60),
            rtt_hist: metrics::histogram!("zone_rtt_seconds"),
            size_hist: metrics::histogram!("zone_packet_size_bytes", "direction" => "out"),
            order_scratch: Vec::new(),
        }
    }

    pub fn run(mut self) {
        let addr = laminar::DatagramSocket::local_addr(self.manager.socket()).map_or_else(|e| e.to_string(), |a| a.to_string());
        tracing::info!(%addr, clients_max = self.cfg.max_clients, snapshot_rate_hz = self.cfg.snapshot_rate_hz, "game socket listening (UDP)");
        let mut last_timers = Instant::now();
        let mut last_publish = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            self.poll_socket(started);
            // At most one frame a pass: under overload a new frame is ready as soon as the last
            // one is encoded, and the timers below (event resends, pings, idle checks) and the
            // counters must still run between frames (they once starved for 30 s).
            while let Ok(m) = self.from_tick.try_recv() {
                let frame = matches!(m, ToNet::Frame(_));
                self.on_tick_message(m, started);
                if frame {
                    break;
                }
            }
            let now = Instant::now();
            if now.duration_since(last_timers) >= Duration::from_millis(10) {
                self.endpoint.set_zone_tick(self.shared.tick.load(Ordering::Relaxed));
                self.endpoint.handle_timeout(self.now_us(now));
                self.flush();
                last_timers = now;
            }
            if now.duration_since(last_publish) >= Duration::from_secs(1) {
                self.shared.counters.publish();
                last_publish = now;
            }
            let spent = started.elapsed();
            if spent < POLL_INTERVAL {
                std::thread::sleep(POLL_INTERVAL - spent);
            }
        }
        self.goodbye_all();
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// One laminar poll (reads what arrived), the gate's queued datagrams sent, every datagram
    /// handed to the endpoint, and what the endpoint produced carried out.
    fn poll_socket(&mut self, now: Instant) {
        self.manager.socket_mut().begin_poll();
        self.manager.manual_poll(now);
        self.manager.socket_mut().flush_sends();
        self.endpoint.set_zone_tick(self.shared.tick.load(Ordering::Relaxed));
        let now_us = self.now_us(now);
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                SocketEvent::Packet(p) => {
                    let gate = self.manager.socket();
                    self.endpoint
                        .handle_datagram(p.addr(), p.payload(), || gate.admitted(&p.addr()), now_us);
                }
                SocketEvent::Timeout(addr) | SocketEvent::Disconnect(addr) => self.endpoint.handle_peer_lost(addr),
                SocketEvent::Connect(_) => {}
            }
        }
        self.flush();
    }

    /// Carries out the endpoint's output: events to the tick thread and the gate, datagrams to
    /// the gate's send queue (sent at the next poll, or as soon as a batch is full), counts to the
    /// shared counters.
    fn flush(&mut self) {
        // Counted before a join reaches the tick thread, which only collects events for frames
        // while someone is connected.
        let clients = self.endpoint.sessions() as u64;
        self.shared.counters.clients.store(clients, Ordering::Relaxed);
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                EndpointEvent::Join(p) => {
                    if self.control.try_send(Control::Join(p)).is_err() {
                        self.endpoint
                            .handle_join_result(p, JoinOutcome::NotAsked, self.now_us(Instant::now()));
                    }
                }
                EndpointEvent::Leave(p) => {
                    if self.control.try_send(Control::Leave(p)).is_err() {
                        self.endpoint.count(Rejection::ControlQueueFull);
                    }
                }
                EndpointEvent::Input(i) => {
                    let input = PlayerInput {
                        player: i.player,
                        tick: i.tick,
                        move_x: i.move_x,
                        move_y: i.move_y,
                        attack: i.attack,
                    };
                    if self.inputs.try_send(input).is_err() {
                        self.endpoint.count(Rejection::InputQueueFull);
                    }
                }
                EndpointEvent::Forget(addr) => self.manager.socket_mut().revoke(&addr),
            }
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            self.size_hist.record((t.payload.len() + zone_net::wire::HEADER_BYTES) as f64);
            self.manager.socket_mut().queue_unreliable(&t.peer, &t.payload);
        }
        self.shared.counters.add(&self.endpoint.take_counts());
        for rtt in self.endpoint.take_rtt_samples_us() {
            self.rtt_hist.record(rtt as f64 / 1e6);
        }
        self.shared
            .counters
            .clients
            .store(self.endpoint.sessions() as u64, Ordering::Relaxed);
    }

    fn on_tick_message(&mut self, m: ToNet, now: Instant) {
        let now_us = self.now_us(now);
        match m {
            ToNet::JoinResult(player, r) => {
                let outcome = match r {
                    Ok(()) => JoinOutcome::Accepted,
                    Err(refusal) => JoinOutcome::Refused {
                        reason: if matches!(refusal, InputRefusal::Draining) {
                            RejectReason::Draining
                        } else {
                            RejectReason::ZoneFull
                        },
                        detail: format!("the zone refused the join: {refusal:?}"),
                    },
                };
                self.endpoint.handle_join_result(player, outcome, now_us);
                self.flush();
            }
            ToNet::Frame(f) => {
                self.on_frame(*f, now);
                self.shared.frames_in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            ToNet::Kick(player, before) => {
                let before_us = self.now_us(before);
                self.endpoint.handle_kick(player, before_us);
                self.flush();
            }
            ToNet::Draining => {
                self.endpoint.handle_draining(now_us);
                self.flush();
            }
        }
    }

    /// One frame: every joined client's snapshot, and the frame's player events.
    fn on_frame(&mut self, f: Frame, now: Instant) {
        let t0 = Instant::now();
        self.encode_frame(f, now);
        let took = t0.elapsed();
        self.encode_hist.record(took.as_secs_f64());
        if took > Duration::from_millis(50) && now.saturating_duration_since(self.slow_logged).as_secs() >= 5 {
            self.slow_logged = now;
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                clients = self.endpoint.sessions(),
                "snapshot encoding is slow: clients get fewer snapshots (zone_net_frames_dropped_total)"
            );
        }
    }

    fn encode_frame(&mut self, f: Frame, now: Instant) {
        let total: usize = f.shards.iter().map(Vec::len).sum();
        let mut objects: Vec<QObject> = Vec::with_capacity(total);
        let mut located: Vec<Located> = Vec::with_capacity(total);
        let mut players: BTreeMap<u64, PosMm> = BTreeMap::new();
        // One sort, of small keys, puts both lists in id order (the endpoint wants both sorted,
        // and its own sort of `located` then only checks). Sorting the two lists themselves was
        // 3.64% of the server's samples at 500 bots, this 1.86%
        // (`benchmarks/2026-11-30-network-thread.md`).
        let rows: Vec<&zone_sim::Replicated> = f.shards.iter().flatten().collect();
        let mut order: Vec<(u64, u32)> = rows.iter().enumerate().map(|(i, r)| (r.id, i as u32)).collect();
        // By id alone (an object lives in one shard, so ids are unique), a byte of id a pass.
        zone_net::order::sort_by_id(&mut order, &mut self.order_scratch);
        for r in order.iter().map(|&(_, i)| rows[i as usize]) {
            objects.push(QObject::quantize(
                r.id,
                r.kind,
                (r.pos.x, r.pos.y),
                (r.vel.x, r.vel.y),
                r.hp,
                self.origin,
            ));
            let pos = PosMm {
                x_mm: r.pos.x,
                y_mm: r.pos.y,
            };
            located.push(Located { id: r.id, pos });
            if r.kind == zone_sim::zone_file::PLAYER_KIND {
                players.insert(r.id, pos);
            }
        }
        let input = FrameInput {
            tick: f.tick,
            objects,
            located,
            players,
            joins: f.joins,
            leaves: f.leaves,
            deaths: f.deaths,
        };
        self.endpoint.begin_frame(input, self.now_us(now));
        // Keep reading between chunks: acknowledgements and inputs must not wait for a whole
        // frame of encoding (late acknowledgements would turn deltas into full snapshots).
        loop {
            let more = self.endpoint.encode_frame(ENCODE_CHUNK, &Pool(self.pool.as_ref()));
            self.flush();
            if !more {
                break;
            }
            self.poll_socket(Instant::now());
        }
    }

    /// At shutdown: tells every client, outside laminar (its poll loop is over).
    fn goodbye_all(&mut self) {
        self.endpoint.shutdown();
        while let Some(t) = self.endpoint.poll_transmit() {
            let d = zone_net::wire::frame(&t.payload);
            self.manager.socket_mut().send_raw(&t.peer, &d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_out_work_reaches_every_item_exactly_once() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for (pool, n) in [
            (Some(&pool), 1_000),
            (Some(&pool), 8),
            (Some(&pool), 9),
            (None, 100),
            (Some(&pool), 0),
        ] {
            let mut items = vec![0u32; n];
            share_out(pool, &mut items, ENCODE_BATCH, &|x: &mut u32| *x += 1);
            assert!(items.iter().all(|&x| x == 1), "{n} items, pool {}: {:?}", pool.is_some(), items);
        }
    }
}
