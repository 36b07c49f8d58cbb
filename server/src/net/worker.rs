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
use zone_net::envelope::{Stamp, decode_client, encode_server};
use zone_net::interest::{Located, PosMm, ShardGrid, SpatialIndex};
use zone_net::proto::{
    Channel, Died, Event, EventBatch, Joined, Left, Notice, NoticeKind, Ping, Pong, Reject, RejectReason, Welcome, client_envelope, event,
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

/// How long the thread sleeps when there is nothing to do.
const IDLE_SLEEP: Duration = Duration::from_millis(1);
/// Unacknowledged events are resent this often.
const EVENT_RESEND: Duration = Duration::from_millis(100);
/// The server pings each client this often (RTT per client).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Inputs may target at most this many ticks past the zone's next tick (the zone's own
/// `input_lead_ticks_max` applies too).
const INPUT_LEAD_TICKS_MAX: u64 = 30;
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
    scratch: Vec<(u64, u64)>,
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
            scratch: Vec::new(),
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
            self.manager.manual_poll(now);
            let mut busy = false;
            while let Ok(ev) = self.events.try_recv() {
                busy = true;
                self.on_socket_event(ev, now);
            }
            while let Ok(m) = self.from_tick.try_recv() {
                busy = true;
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
            if !busy {
                std::thread::sleep(IDLE_SLEEP);
            }
        }
        self.goodbye_all();
    }

    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn send_to(&mut self, addr: SocketAddr, payload: Vec<u8>) {
        self.size_hist.record((payload.len() + zone_net::wire::HEADER_BYTES) as f64);
        let _ = self.send.send(Packet::unreliable(addr, payload));
    }

    fn send_reliable_body(&mut self, addr: SocketAddr, body: server_envelope::Body) {
        let Some(s) = self.sessions.get_mut(&addr) else { return };
        let stamp = Stamp {
            channel: Channel::Reliable,
            sequence: s.next_reliable(),
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
        let rate = self.cfg.peer_packet_rate;
        let s = self.sessions.get_mut(&addr).expect("checked above");
        s.last_heard = now;
        if !s.bucket.take(rate, rate * 2.0, now) {
            counters.reject(Rejection::PeerRate);
            return;
        }
        if stamp.channel == Channel::Unreliable && !s.first_sight(stamp.sequence) {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match body {
            client_envelope::Body::Hello(_) => {
                // The client missed our Welcome: say it again (it is smaller than the Hello).
                if s.phase == Phase::Joined {
                    let player = s.player;
                    self.welcome(addr, player);
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
                    if i.tick <= s.last_input_tick {
                        continue; // a redundant copy of an input already forwarded
                    }
                    s.last_input_tick = i.tick;
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
                    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.inputs.try_send(input) {
                        counters.reject(Rejection::InputQueueFull);
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
            let stamp = Stamp {
                channel: Channel::Reliable,
                sequence: 0,
            };
            let body = server_envelope::Body::Reject(Reject {
                reason: reason as i32,
                detail: detail.into(),
            });
            w.send_to(addr, encode_server(stamp, body));
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
        let mut s = Session::new(player, now, self.cfg.peer_packet_rate * 2.0);
        if let Some(old) = replacing {
            // The newer connection wins: the old one is told why and dropped; the player stays.
            let old_phase = self.sessions.get(&old).map(|o| o.phase);
            self.send_reliable_body(
                old,
                server_envelope::Body::Reject(Reject {
                    reason: RejectReason::Replaced as i32,
                    detail: "another connection joined as this player".into(),
                }),
            );
            self.end_session(old, "replaced", false);
            counters.replaced.fetch_add(1, Ordering::Relaxed);
            self.sessions.insert(addr, s);
            self.by_player.insert(player, addr);
            if old_phase == Some(Phase::Joined) {
                self.on_joined(addr, now);
            } else {
                self.request_join(addr, player);
            }
            return;
        }
        s.phase = Phase::Joining;
        self.sessions.insert(addr, s);
        self.by_player.insert(player, addr);
        self.request_join(addr, player);
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
                        self.send_reliable_body(
                            addr,
                            server_envelope::Body::Reject(Reject {
                                reason: reason as i32,
                                detail: format!("the zone refused the join: {refusal:?}"),
                            }),
                        );
                        self.end_session(addr, "join refused", false);
                    }
                }
            }
            ToNet::Frame(f) => self.on_frame(*f, now),
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
            let unsent = s.events_first_seq + s.events.len() as u64 > s.events_sent;
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
        s.events_last_send = Some(now);
        self.send_unreliable_body(addr, server_envelope::Body::Events(batch));
    }

    /// One frame: every joined client's snapshot, and the frame's player events.
    fn on_frame(&mut self, f: Frame, now: Instant) {
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
        let addrs: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.phase == Phase::Joined)
            .map(|(a, _)| *a)
            .collect();
        for addr in addrs {
            self.snapshot(addr, f.tick, &objects, &index, &players);
        }
    }

    fn snapshot(&mut self, addr: SocketAddr, tick: u64, objects: &[QObject], index: &SpatialIndex, players: &HashMap<u64, PosMm>) {
        let Some(s) = self.sessions.get(&addr) else { return };
        let Some(&pos) = players.get(&player_object_id(s.player)) else {
            return; // not in the zone yet (joins apply at the next tick)
        };
        let ids = index.nearest(pos, self.cfg.interest_radius_mm, self.cfg.interest_max, &mut self.scratch);
        let view_objects: Vec<QObject> = ids
            .iter()
            .filter_map(|id| objects.binary_search_by_key(id, |o| o.id).ok().map(|i| objects[i]))
            .collect();
        let Ok(view) = View::new(tick, view_objects) else { return };
        let focus = (quantize_pos(pos.x_mm, self.origin.0), quantize_pos(pos.y_mm, self.origin.1));
        let frame = SnapshotFrame {
            ack_input_tick: s.last_input_tick,
            sequence: s.unreliable_seq,
        };
        let base = s.baseline_for(tick);
        let encoded = encode_delta_capped(
            base,
            &view,
            frame,
            SNAPSHOT_BUDGET_BYTES,
            focus,
            self.cfg.datagrams_per_snapshot_max,
        );
        let Ok((datagrams, stats, held)) = encoded else { return };
        let s = self.sessions.get_mut(&addr).expect("checked above");
        s.unreliable_seq = s.unreliable_seq.wrapping_add(datagrams.len() as u32);
        s.record_sent(held);
        let c = &self.shared.counters;
        c.snapshot_datagrams.fetch_add(stats.datagrams as u64, Ordering::Relaxed);
        c.snapshot_bytes.fetch_add(stats.bytes as u64, Ordering::Relaxed);
        for d in datagrams {
            self.send_to(addr, d);
        }
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
        for s in self.sessions.values_mut().filter(|s| s.phase == Phase::Joined) {
            let me = players.get(&player_object_id(s.player)).copied();
            for (p, kind) in &all {
                let near = *p == s.player
                    || match (me, players.get(&player_object_id(*p))) {
                        (Some(a), Some(b)) => zone_net::interest::dist2_mm2(a, *b) <= r2,
                        _ => false,
                    };
                if near {
                    s.push_event(Event { kind: Some(kind.clone()) }, now);
                }
            }
        }
    }

    /// At shutdown: tells every client, outside laminar (its poll loop is over).
    fn goodbye_all(&mut self) {
        let addrs: Vec<SocketAddr> = self.sessions.keys().copied().collect();
        for addr in addrs {
            let body = server_envelope::Body::Reject(Reject {
                reason: RejectReason::Draining as i32,
                detail: "the server is shutting down".into(),
            });
            let stamp = Stamp {
                channel: Channel::Reliable,
                sequence: self.sessions.get_mut(&addr).map_or(0, Session::next_reliable),
            };
            let d = zone_net::wire::frame(&encode_server(stamp, body));
            self.manager.socket_mut().send_raw(&addr, &d);
        }
    }
}
