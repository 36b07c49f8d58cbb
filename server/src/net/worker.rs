//! The network thread: polls laminar (behind the gate), turns datagrams into joins, leaves and
//! inputs for the tick thread, and turns the tick thread's frames into per-client snapshots
//! (interest, then a delta against the client's acknowledged view, within the MTU budget) and
//! reliable events.
//!
//! Never blocks on the tick thread (every send to it is a `try_send`, counted when full) and
//! never trusts a client: every datagram is decoded defensively and every limit is counted by
//! reason (`counters.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver as CbReceiver, Sender as CbSender};
use laminar::{Config as LaminarConfig, ConnectionManager, Packet, SocketEvent, VirtualConnection};
use zone_net::delta::{BUDGET_BYTES_DEFAULT, SnapshotFrame, encode_delta_capped};
use zone_net::envelope::{Stamp, decode_client, encode_server, reject};
use zone_net::interest::{Located, PosMm, ShardGrid, SpatialIndex};
use zone_net::proto::{
    Channel, Died, Event, EventBatch, Joined, Left, Notice, NoticeKind, Ping, Pong, RejectReason, Welcome, client_envelope, event,
    server_envelope,
};
use zone_net::quantize::quantize_pos;
use zone_net::view::{QObject, View};
use zone_sim::object::player_object_id;
use zone_sim::{InputRefusal, PlayerId, PlayerInput, ZoneSpec};

use super::counters::Rejection;
use super::gate::{CLIENT_DATAGRAM_BYTES_MAX, GateSocket};
use super::session::{Phase, Session};
use super::{Control, Frame, NetConfig, NetShared, ToNet};

/// The thread polls the socket at most this often: each laminar poll visits every connection,
/// so polling back to back under load would spend the thread on bookkeeping. Datagrams wait in
/// the kernel's 4 MiB buffer meanwhile (at most this long).
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Unacknowledged events are resent this often.
const EVENT_RESEND: Duration = Duration::from_millis(100);
/// The server pings each client this often (RTT per client).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Inputs may target at most this many ticks past the zone's next tick (the zone's own
/// `input_lead_ticks_max` applies too).
const INPUT_LEAD_TICKS_MAX: u64 = 30;
/// What every client's snapshot at one frame is made from.
struct Encoder<'a> {
    tick: u64,
    objects: &'a [QObject],
    index: &'a SpatialIndex,
    players: &'a HashMap<u64, PosMm>,
    origin: (i32, i32),
    radius_mm: u32,
    objects_max: usize,
    datagrams_max: usize,
    history: usize,
    interval_ticks: u64,
}

impl Encoder<'_> {
    /// One client's snapshot datagrams (and their bytes), recorded in its session; None when
    /// its player is not in the zone yet (joins apply at the next tick).
    fn snapshot(&self, s: &mut Session) -> Option<(Vec<Vec<u8>>, usize, bool)> {
        let &pos = self.players.get(&player_object_id(s.player))?;
        let ids = self.index.nearest(pos, self.radius_mm, self.objects_max, &mut Vec::new());
        let view_objects: Vec<QObject> = ids
            .iter()
            .filter_map(|id| self.objects.binary_search_by_key(id, |o| o.id).ok().map(|i| self.objects[i]))
            .collect();
        let view = View::new(self.tick, view_objects).ok()?;
        let focus = (quantize_pos(pos.x_mm, self.origin.0), quantize_pos(pos.y_mm, self.origin.1));
        let frame = SnapshotFrame {
            ack_input_tick: s.last_input_tick,
            sequence: s.unreliable_seq,
        };
        let base = s.baseline_for(self.tick, self.history as u64 * self.interval_ticks).cloned();
        let base = base.as_ref();
        let (datagrams, stats, held) = encode_delta_capped(base, &view, frame, SNAPSHOT_BUDGET_BYTES, focus, self.datagrams_max).ok()?;
        s.unreliable_seq = s.unreliable_seq.wrapping_add(datagrams.len() as u32);
        s.record_sent(held, self.history);
        Some((datagrams, stats.bytes, base.is_none()))
    }
}

/// Other players' joins, leaves and deaths queued per client per frame at most.
const OTHER_EVENTS_PER_FRAME_MAX: usize = 16;
/// Other players' events are not queued for a client with this many unacknowledged events.
const OTHER_EVENTS_QUEUED_MAX: usize = 64;
/// Clients encoded between two socket polls.
const ENCODE_CHUNK: usize = 200;
/// Spatial index bucket edge.
const BUCKET_MM: u32 = 32_000;
/// Snapshot datagrams carry laminar's header too.
const SNAPSHOT_BUDGET_BYTES: usize = BUDGET_BYTES_DEFAULT - zone_net::wire::HEADER_BYTES;

pub struct Worker {
    cfg: NetConfig,
    grid: ShardGrid,
    origin: (i32, i32),
    manager: ConnectionManager<GateSocket, VirtualConnection>,
    send: CbSender<Packet>,
    events: CbReceiver<SocketEvent>,
    shared: Arc<NetShared>,
    from_tick: Receiver<ToNet>,
    control: SyncSender<Control>,
    inputs: SyncSender<PlayerInput>,
    sessions: HashMap<SocketAddr, Session>,
    by_player: HashMap<PlayerId, SocketAddr>,
    draining: bool,
    epoch: Instant,
    /// Snapshot encoding runs on this pool (one thread per core).
    pool: rayon::ThreadPool,
    /// Views kept per client for baselines (about half a second of sends).
    history: usize,
    /// Player positions at the previous frame (for the events of players who just left).
    prev_players: HashMap<u64, PosMm>,
    encode_hist: metrics::Histogram,
    slow_logged: Instant,
    rtt_hist: metrics::Histogram,
    size_hist: metrics::Histogram,
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
            ..LaminarConfig::default()
        };
        let manager = ConnectionManager::new(gate, laminar_cfg);
        let send = manager.event_sender().clone();
        let events = manager.event_receiver().clone();
        let b = spec.bounds;
        let grid = ShardGrid {
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
        };
        let history = super::session::history_len(cfg.snapshot_rate_hz);
        Worker {
            origin: (b.min.x, b.min.y),
            grid,
            cfg,
            manager,
            send,
            events,
            shared,
            from_tick,
            control,
            inputs,
            sessions: HashMap::new(),
            by_player: HashMap::new(),
            draining: false,
            epoch: Instant::now(),
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
                .thread_name(|i| format!("zone-net-encode-{i}"))
                .build()
                .expect("a thread pool of available_parallelism threads"),
            history,
            prev_players: HashMap::new(),
            encode_hist: metrics::histogram!("zone_net_frame_encode_seconds"),
            slow_logged: Instant::now() - Duration::from_secs(60),
            rtt_hist: metrics::histogram!("zone_rtt_seconds"),
            size_hist: metrics::histogram!("zone_packet_size_bytes", "direction" => "out"),
        }
    }

    pub fn run(mut self) {
        let addr = laminar::DatagramSocket::local_addr(self.manager.socket()).map_or_else(|e| e.to_string(), |a| a.to_string());
        tracing::info!(%addr, clients_max = self.cfg.max_clients, snapshot_rate_hz = self.cfg.snapshot_rate_hz, "game socket listening (UDP)");
        let mut last_timers = Instant::now();
        let mut last_publish = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.poll_socket(now);
            while let Ok(m) = self.from_tick.try_recv() {
                self.on_tick_message(m, now);
            }
            if now.duration_since(last_timers) >= Duration::from_millis(10) {
                self.timers(now);
                last_timers = now;
            }
            if now.duration_since(last_publish) >= Duration::from_secs(1) {
                self.shared.counters.clients.store(self.sessions.len() as u64, Ordering::Relaxed);
                self.shared.counters.publish();
                last_publish = now;
            }
            let spent = now.elapsed();
            if spent < POLL_INTERVAL {
                std::thread::sleep(POLL_INTERVAL - spent);
            }
        }
        self.goodbye_all();
    }

    /// One laminar poll (sends what is queued, reads what arrived) and the datagrams it produced.
    fn poll_socket(&mut self, now: Instant) {
        self.manager.socket_mut().begin_poll();
        self.manager.manual_poll(now);
        while let Ok(ev) = self.events.try_recv() {
            self.on_socket_event(ev, now);
        }
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn send_to(&mut self, addr: SocketAddr, payload: Vec<u8>) {
        self.size_hist.record((payload.len() + zone_net::wire::HEADER_BYTES) as f64);
        let _ = self.send.send(Packet::unreliable(addr, payload));
    }

    /// Sends on the reliable channel (Welcome, Reject); an address without a session (a refused
    /// join) gets sequence 0.
    fn send_reliable_body(&mut self, addr: SocketAddr, body: server_envelope::Body) {
        let stamp = Stamp {
            channel: Channel::Reliable,
            sequence: self.sessions.get_mut(&addr).map_or(0, Session::next_reliable),
        };
        self.send_to(addr, encode_server(stamp, body));
    }

    fn send_unreliable_body(&mut self, addr: SocketAddr, body: server_envelope::Body) {
        let Some(s) = self.sessions.get_mut(&addr) else { return };
        let stamp = Stamp {
            channel: Channel::Unreliable,
            sequence: s.next_unreliable(),
        };
        self.send_to(addr, encode_server(stamp, body));
    }

    fn on_socket_event(&mut self, ev: SocketEvent, now: Instant) {
        match ev {
            SocketEvent::Packet(p) => self.on_datagram(p.addr(), p.payload(), now),
            SocketEvent::Timeout(addr) | SocketEvent::Disconnect(addr) => {
                if self.sessions.contains_key(&addr) {
                    self.end_session(addr, "timeout", true);
                } else {
                    self.manager.socket_mut().revoke(&addr);
                }
            }
            SocketEvent::Connect(_) => {}
        }
    }

    fn on_datagram(&mut self, addr: SocketAddr, payload: &[u8], now: Instant) {
        let now_us = self.now_us(now);
        let counters = Arc::clone(&self.shared.counters);
        let (stamp, body) = match decode_client(payload) {
            Ok(m) => m,
            Err(_) => {
                counters.reject(Rejection::Malformed);
                return;
            }
        };
        if !self.sessions.contains_key(&addr) {
            if let client_envelope::Body::Hello(_) = body {
                self.on_hello(addr, now);
            } else {
                counters.reject(Rejection::NotJoined);
            }
            return;
        }
        let s = self.sessions.get_mut(&addr).expect("checked above");
        s.last_heard = now;
        if stamp.channel == Channel::Unreliable && !s.first_sight(stamp.sequence) {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match body {
            client_envelope::Body::Hello(_) => {
                let player = s.player;
                if s.phase == Phase::Joined {
                    // The client missed our Welcome: say it again (it is smaller than the Hello).
                    self.welcome(addr, player);
                } else if now.saturating_duration_since(s.join_asked) >= Duration::from_secs(1) {
                    // The tick thread's answer was lost (its queue was full): ask again.
                    s.join_asked = now;
                    self.request_join(addr, player);
                }
            }
            client_envelope::Body::Inputs(b) => {
                if s.phase != Phase::Joined {
                    return;
                }
                s.acknowledge(b.snapshot_ack);
                s.events_acked(b.events_received);
                let next = self.shared.tick.load(Ordering::Relaxed) + 1;
                let player = s.player;
                for i in b.inputs {
                    if i.tick <= s.newest_input_tick {
                        continue; // a redundant copy of an input already seen
                    }
                    s.newest_input_tick = i.tick;
                    if i.tick < next {
                        counters.reject(Rejection::InputTooOld);
                        continue;
                    }
                    if i.tick > next + INPUT_LEAD_TICKS_MAX {
                        counters.reject(Rejection::InputTooFar);
                        continue;
                    }
                    let input = PlayerInput {
                        player,
                        tick: i.tick,
                        move_x: i.move_x,
                        move_y: i.move_y,
                        attack: i.attack,
                    };
                    match self.inputs.try_send(input) {
                        Ok(()) => s.last_input_tick = i.tick,
                        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => counters.reject(Rejection::InputQueueFull),
                    }
                }
            }
            client_envelope::Body::SnapshotAck(a) => s.acknowledge(a.tick),
            client_envelope::Body::Ping(p) => {
                if s.phase == Phase::Joined {
                    self.send_unreliable_body(addr, server_envelope::Body::Pong(Pong { echo_us: p.sent_us }));
                }
            }
            client_envelope::Body::Pong(p) => {
                if p.echo_us <= now_us {
                    let rtt = Duration::from_micros(now_us - p.echo_us);
                    s.rtt = Some(rtt);
                    self.rtt_hist.record(rtt.as_secs_f64());
                }
            }
            client_envelope::Body::Goodbye(_) => self.end_session(addr, "goodbye", true),
        }
    }

    /// A Hello from an address the gate just admitted.
    fn on_hello(&mut self, addr: SocketAddr, now: Instant) {
        let counters = Arc::clone(&self.shared.counters);
        let Some(player) = self.manager.socket().admitted_player(&addr) else {
            counters.reject(Rejection::NotJoined);
            return;
        };
        let refuse = |w: &mut Worker, reason: RejectReason, why: Rejection, detail: &str| {
            counters.reject(why);
            w.send_reliable_body(addr, reject(reason, detail));
            w.manager.socket_mut().revoke(&addr);
        };
        if self.draining {
            return refuse(
                self,
                RejectReason::Draining,
                Rejection::Draining,
                "the zone is draining for shutdown",
            );
        }
        if !zone_sim::input::is_valid_player_id(player) {
            return refuse(self, RejectReason::BadSignature, Rejection::BadSignature, "player id out of range");
        }
        let replacing = self.by_player.get(&player).copied();
        if replacing.is_none() && self.sessions.len() >= self.cfg.max_clients {
            return refuse(self, RejectReason::ZoneFull, Rejection::ZoneFull, "the zone is full");
        }
        let s = Session::new(player, now);
        if let Some(old) = replacing {
            // The newer connection wins: the old one is told why (twice, as datagrams get lost)
            // and dropped; the player stays in the zone.
            let old_phase = self.sessions.get(&old).map(|o| o.phase);
            for _ in 0..2 {
                self.send_reliable_body(old, reject(RejectReason::Replaced, "another connection joined as this player"));
            }
            self.end_session(old, "replaced", false);
            counters.replaced.fetch_add(1, Ordering::Relaxed);
            self.insert_session(addr, s);
            if old_phase == Some(Phase::Joined) {
                self.on_joined(addr, now);
            }
            // Otherwise the old session's join is still on its way: its answer finds this one.
            return;
        }
        self.insert_session(addr, s);
        self.request_join(addr, player);
    }

    fn insert_session(&mut self, addr: SocketAddr, s: Session) {
        self.by_player.insert(s.player, addr);
        self.sessions.insert(addr, s);
        // Counted before the join reaches the tick thread, which only collects events for frames
        // while someone is connected.
        self.shared.counters.clients.store(self.sessions.len() as u64, Ordering::Relaxed);
    }

    fn request_join(&mut self, addr: SocketAddr, player: PlayerId) {
        if self.control.try_send(Control::Join(player)).is_err() {
            self.shared.counters.reject(Rejection::ControlQueueFull);
            // The client will say Hello again; forget it until then.
            self.end_session(addr, "control queue full", false);
        }
    }

    fn welcome(&mut self, addr: SocketAddr, player: PlayerId) {
        let body = server_envelope::Body::Welcome(Welcome {
            player_id: player,
            tick: self.shared.tick.load(Ordering::Relaxed),
            tick_rate_hz: zone_sim::units::TICK_RATE_HZ,
            snapshot_rate_hz: self.cfg.snapshot_rate_hz,
        });
        self.send_reliable_body(addr, body);
    }

    fn on_joined(&mut self, addr: SocketAddr, now: Instant) {
        let Some(s) = self.sessions.get_mut(&addr) else { return };
        s.phase = Phase::Joined;
        let player = s.player;
        self.shared.counters.joins.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.clients.store(self.sessions.len() as u64, Ordering::Relaxed);
        self.welcome(addr, player);
        if self.draining {
            self.push_notice(addr, NoticeKind::Draining, "the zone is draining for shutdown", now);
        }
    }

    fn on_tick_message(&mut self, m: ToNet, now: Instant) {
        match m {
            ToNet::JoinResult(player, r) => {
                let Some(&addr) = self.by_player.get(&player) else {
                    // The client left before the zone took it in.
                    let _ = self.control.try_send(Control::Leave(player));
                    return;
                };
                match r {
                    Ok(()) => self.on_joined(addr, now),
                    Err(refusal) => {
                        let (reason, why) = match refusal {
                            InputRefusal::Draining => (RejectReason::Draining, Rejection::Draining),
                            _ => (RejectReason::ZoneFull, Rejection::ZoneFull),
                        };
                        self.shared.counters.reject(why);
                        self.send_reliable_body(addr, reject(reason, format!("the zone refused the join: {refusal:?}")));
                        self.end_session(addr, "join refused", false);
                    }
                }
            }
            ToNet::Frame(f) => {
                self.on_frame(*f, now);
                self.shared.frames_in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            ToNet::Kick(player, before) => {
                if let Some(&addr) = self
                    .by_player
                    .get(&player)
                    .filter(|a| self.sessions.get(a).is_some_and(|s| s.join_asked <= before))
                {
                    self.send_reliable_body(
                        addr,
                        reject(RejectReason::Replaced, "signed in elsewhere: the lobby ended this session"),
                    );
                    self.end_session(addr, "kicked by the lobby", true);
                }
            }
            ToNet::Draining => {
                self.draining = true;
                let addrs: Vec<SocketAddr> = self.sessions.keys().copied().collect();
                for a in addrs {
                    self.push_notice(a, NoticeKind::Draining, "the zone is draining for shutdown", now);
                }
            }
        }
    }

    fn push_notice(&mut self, addr: SocketAddr, kind: NoticeKind, text: &str, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&addr) {
            s.push_event(
                Event {
                    kind: Some(event::Kind::Notice(Notice {
                        kind: kind as i32,
                        text: text.into(),
                    })),
                },
                now,
            );
        }
    }

    /// Ends a session; `leave` also takes the player out of the zone.
    fn end_session(&mut self, addr: SocketAddr, why: &str, leave: bool) {
        self.manager.socket_mut().revoke(&addr);
        let Some(s) = self.sessions.remove(&addr) else { return };
        if self.by_player.get(&s.player) == Some(&addr) {
            self.by_player.remove(&s.player);
        }
        if s.phase == Phase::Joined {
            self.shared.counters.leaves.fetch_add(1, Ordering::Relaxed);
        }
        if leave && self.control.try_send(Control::Leave(s.player)).is_err() {
            self.shared.counters.reject(Rejection::ControlQueueFull);
        }
        self.shared.counters.clients.store(self.sessions.len() as u64, Ordering::Relaxed);
        tracing::debug!(player = s.player, %addr, why, "session ended");
    }

    /// Resends events, pings, and ends sessions that went quiet or stopped acknowledging.
    fn timers(&mut self, now: Instant) {
        let idle = self.cfg.idle_timeout;
        let mut ended: Vec<(SocketAddr, &'static str)> = Vec::new();
        let mut due_events: Vec<SocketAddr> = Vec::new();
        let mut due_pings: Vec<SocketAddr> = Vec::new();
        for (addr, s) in &mut self.sessions {
            if now.saturating_duration_since(s.last_heard) > idle {
                ended.push((*addr, "timeout"));
                continue;
            }
            if s.phase != Phase::Joined {
                continue;
            }
            if s.events_stalled(now) {
                self.shared
                    .counters
                    .event_give_ups
                    .fetch_add(s.events.len() as u64, Ordering::Relaxed);
                ended.push((*addr, "events unacknowledged"));
                continue;
            }
            // New events go out at once unless the last batch was full (then they wait for the
            // acknowledgements, like the resends).
            let unsent = s.events_first_seq + s.events.len() as u64 > s.events_sent && !s.events_truncated;
            let resend = !s.events.is_empty() && s.events_last_send.is_none_or(|t| now.saturating_duration_since(t) >= EVENT_RESEND);
            if unsent || resend {
                due_events.push(*addr);
            }
            if now.saturating_duration_since(s.last_ping) >= PING_EVERY {
                s.last_ping = now;
                due_pings.push(*addr);
            }
        }
        for (a, why) in ended {
            self.end_session(a, why, true);
        }
        for a in due_events {
            self.send_events(a, now);
        }
        let now_us = self.now_us(now);
        for a in due_pings {
            self.send_unreliable_body(a, server_envelope::Body::Ping(Ping { sent_us: now_us }));
        }
    }

    /// Sends every unacknowledged event (as many as fit one datagram), oldest first.
    fn send_events(&mut self, addr: SocketAddr, now: Instant) {
        let Some(s) = self.sessions.get_mut(&addr) else { return };
        let mut batch = EventBatch {
            first_seq: s.events_first_seq,
            events: Vec::new(),
        };
        let mut bytes = 0;
        for (e, _) in &s.events {
            bytes += prost::Message::encoded_len(e) + 3;
            if bytes > SNAPSHOT_BUDGET_BYTES - 64 && !batch.events.is_empty() {
                break;
            }
            batch.events.push(e.clone());
        }
        let end = s.events_first_seq + batch.events.len() as u64;
        let resent = s.events_sent.min(end).saturating_sub(s.events_first_seq);
        self.shared.counters.event_resends.fetch_add(resent, Ordering::Relaxed);
        s.events_sent = s.events_sent.max(end);
        s.events_truncated = batch.events.len() < s.events.len();
        s.events_last_send = Some(now);
        self.send_unreliable_body(addr, server_envelope::Body::Events(batch));
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
                clients = self.sessions.len(),
                "snapshot encoding is slow: clients get fewer snapshots (zone_net_frames_dropped_total)"
            );
        }
    }

    fn encode_frame(&mut self, f: Frame, now: Instant) {
        let total: usize = f.shards.iter().map(Vec::len).sum();
        let mut objects: Vec<QObject> = Vec::with_capacity(total);
        let mut located: Vec<Located> = Vec::with_capacity(total);
        let mut players: HashMap<u64, PosMm> = HashMap::new();
        for r in f.shards.iter().flatten() {
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
        objects.sort_unstable_by_key(|o| o.id);
        let index = SpatialIndex::build(self.grid, BUCKET_MM, &located);
        self.frame_events(&f, &players, now);
        // Each client's interest and encoding is independent: spread them over the encode pool.
        let enc = Encoder {
            tick: f.tick,
            objects: &objects,
            index: &index,
            players: &players,
            origin: self.origin,
            radius_mm: self.cfg.interest_radius_mm,
            objects_max: self.cfg.interest_max,
            datagrams_max: self.cfg.datagrams_per_snapshot_max,
            history: self.history,
            interval_ticks: u64::from(60 / self.cfg.snapshot_rate_hz.clamp(1, 60)),
        };
        let joined: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.phase == Phase::Joined)
            .map(|(a, _)| *a)
            .collect();
        let c = Arc::clone(&self.shared.counters);
        for chunk in joined.chunks(ENCODE_CHUNK) {
            let mut taken: Vec<(SocketAddr, Session)> = chunk.iter().filter_map(|a| self.sessions.remove(a).map(|s| (*a, s))).collect();
            let out: Vec<(SocketAddr, Vec<Vec<u8>>, usize, bool)> = self.pool.install(|| {
                use rayon::prelude::*;
                taken
                    .par_iter_mut()
                    .filter_map(|(addr, s)| enc.snapshot(s).map(|(d, bytes, full)| (*addr, d, bytes, full)))
                    .collect()
            });
            self.sessions.extend(taken);
            for (addr, datagrams, bytes, full) in out {
                if full {
                    c.snapshots_full.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.snapshots_delta.fetch_add(1, Ordering::Relaxed);
                }
                c.snapshot_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                for d in datagrams {
                    self.send_to(addr, d);
                }
            }
            // Keep reading between chunks: acknowledgements and inputs must not wait for a whole
            // frame of encoding (late acknowledgements would turn deltas into full snapshots).
            self.poll_socket(Instant::now());
        }
        self.prev_players = players;
    }

    /// Queues the frame's joins, leaves and deaths for each client: its own, and other players'
    /// within its interest radius.
    fn frame_events(&mut self, f: &Frame, players: &HashMap<u64, PosMm>, now: Instant) {
        if f.joins.is_empty() && f.leaves.is_empty() && f.deaths.is_empty() {
            return;
        }
        let r2 = u64::from(self.cfg.interest_radius_mm).pow(2);
        let mut all: Vec<(PlayerId, event::Kind)> = Vec::new();
        all.extend(
            f.joins
                .iter()
                .map(|&(p, tick)| (p, event::Kind::Joined(Joined { player_id: p, tick }))),
        );
        all.extend(
            f.leaves
                .iter()
                .map(|&(p, tick)| (p, event::Kind::Left(Left { player_id: p, tick }))),
        );
        all.extend(f.deaths.iter().map(|&(p, tick)| {
            (
                p,
                event::Kind::Died(Died {
                    object_id: player_object_id(p),
                    killer_object_id: 0,
                    tick,
                }),
            )
        }));
        let prev_players = &self.prev_players;
        let counters = Arc::clone(&self.shared.counters);
        for s in self.sessions.values_mut().filter(|s| s.phase == Phase::Joined) {
            let me = players.get(&player_object_id(s.player)).copied();
            let mut others = 0;
            for (p, kind) in &all {
                if *p == s.player {
                    s.push_event(Event { kind: Some(kind.clone()) }, now);
                    continue;
                }
                let near = match (
                    me,
                    players
                        .get(&player_object_id(*p))
                        .or_else(|| prev_players.get(&player_object_id(*p))),
                ) {
                    (Some(a), Some(b)) => zone_net::interest::dist2_mm2(a, *b) <= r2,
                    _ => false,
                };
                if !near {
                    continue;
                }
                // Other players' events are news, not state (the snapshots carry the state): a
                // crowd arriving at once must not flood every client's reliable stream.
                if others >= OTHER_EVENTS_PER_FRAME_MAX || s.events.len() >= OTHER_EVENTS_QUEUED_MAX {
                    counters.events_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                others += 1;
                s.push_event(Event { kind: Some(kind.clone()) }, now);
            }
        }
    }

    /// At shutdown: tells every client, outside laminar (its poll loop is over).
    fn goodbye_all(&mut self) {
        let addrs: Vec<SocketAddr> = self.sessions.keys().copied().collect();
        for addr in addrs {
            let body = reject(RejectReason::Draining, "the server is shutting down");
            let stamp = Stamp {
                channel: Channel::Reliable,
                sequence: self.sessions.get_mut(&addr).map_or(0, Session::next_reliable),
            };
            let d = zone_net::wire::frame(&encode_server(stamp, body));
            self.manager.socket_mut().send_raw(&addr, &d);
        }
    }
}
