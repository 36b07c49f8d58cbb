//! [`Endpoint`]: the server's half of the protocol as a sans-IO state machine, in the manner of
//! quinn-proto's `Endpoint`: datagrams, zone frames, join results and timeouts go in, each with
//! the time passed in (`now_us`, monotonic microseconds from any epoch); datagrams to send
//! ([`Transmit`]) and joins, leaves, inputs and forgotten addresses for the caller
//! ([`EndpointEvent`]) come out. One [`Session`] per peer address holds where the join is, the
//! duplicate window, the input position, the views sent (to delta against whichever the client
//! acknowledges), the unacknowledged reliable events and the RTT.
//!
//! Every datagram of a session but the client's Hello is sealed (see [`crate::seal`]) under the
//! key its join token carried: what does not authenticate, replays a counter, or arrives in
//! plaintext is dropped and counted (`forged`, `replayed`, `unsealed`).
//!
//! Sessions live in a `BTreeMap` keyed by the peer address, so every walk over them (timers,
//! frames, events, shutdown) is in a deterministic order: the same inputs give the same outputs,
//! byte for byte, which the unit tests and the whole-system simulation rely on.
//!
//! The caller (the server's network thread, `server/src/net/worker.rs`, or a test) owns the
//! socket, the clock and the threads. It screens strangers with [`crate::gate::screen`] first and
//! answers, when a Hello asks, what the gate admitted an address with. Snapshot encoding can be
//! spread over threads through the [`Parallel`] trait, which the caller implements; the endpoint
//! itself never spawns, sleeps, reads a clock or touches a socket, and never panics on received
//! bytes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;

use crate::delta::{BUDGET_BYTES_DEFAULT, SnapshotFrame, encode_delta_capped_into};
use crate::envelope::{Stamp, decode_client, encode_server, reject};
use crate::gate::Rejection;
use crate::interest::{Located, PosMm, ShardGrid, SpatialIndex, dist2_mm2};
use crate::proto::{
    Channel, Died, Event, EventBatch, Joined, Left, Notice, NoticeKind, Ping, Pong, RejectReason, Welcome, client_envelope, event,
    server_envelope,
};
use crate::quantize::quantize_pos;
use crate::seal::{Direction, Opener, SEAL_OVERHEAD, SealError, Sealer, is_sealed};
use crate::view::{QObject, View};

/// A player id: 1 to 2^63 − 1.
pub type PlayerId = u64;

/// Player object ids are the player id with this bit set.
pub const PLAYER_OBJECT_BIT: u64 = 1 << 63;
/// Unacknowledged events are resent this often.
pub const EVENT_RESEND_US: u64 = 100_000;
/// The server pings each client this often (RTT per client).
pub const PING_EVERY_US: u64 = 1_000_000;
/// Inputs may target at most this many ticks past the zone's next tick.
pub const INPUT_LEAD_TICKS_MAX: u64 = 30;
/// Unacknowledged events a client may have before the server gives up on it.
pub const EVENTS_UNACKED_MAX: usize = 256;
/// How long an event may stay unacknowledged before the server gives up on the client.
pub const EVENT_GIVE_UP_US: u64 = 10_000_000;
/// ... and only once the server has offered the oldest one at least this many times (2 s of
/// resends): a server that fell behind (its network thread stalled under overload) must not end
/// every session for acknowledgements its clients had no chance to send.
pub const EVENT_GIVE_UP_SENDS: u32 = 20;
/// A joining session whose join got no answer from the zone asks again after this long.
pub const JOIN_ASK_AGAIN_US: u64 = 1_000_000;
/// Other players' joins, leaves and deaths queued per client per frame at most.
pub const OTHER_EVENTS_PER_FRAME_MAX: usize = 16;
/// Other players' events are not queued for a client with this many unacknowledged events.
pub const OTHER_EVENTS_QUEUED_MAX: usize = 64;
/// RTT samples kept for [`Endpoint::take_rtt_samples_us`].
pub const RTT_SAMPLES_MAX: usize = 4_096;
/// Snapshot and event datagrams, laminar's 5-byte header and the seal included, fit the MTU
/// budget.
pub const SNAPSHOT_BUDGET_BYTES: usize = BUDGET_BYTES_DEFAULT - crate::wire::HEADER_BYTES - SEAL_OVERHEAD;
/// Spatial index bucket edge.
const BUCKET_MM: u32 = 32_000;

/// Views kept per client for delta baselines: half a second of sends (at least 8, at most 30).
/// An acknowledgement older than that is not used (the client keeps 32): sends are full snapshots
/// until a newer one arrives.
pub fn history_len(snapshot_rate_hz: u32) -> usize {
    (snapshot_rate_hz as usize / 2).clamp(8, 30)
}

/// The endpoint's settings.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    pub max_clients: usize,
    /// A session that sends nothing for this long is ended.
    pub idle_timeout_us: u64,
    pub snapshot_rate_hz: u32,
    pub interest_radius_mm: u32,
    pub interest_max: usize,
    /// A client's nearest objects are searched for at one frame in this many (1: every frame).
    /// In between its snapshot holds the same objects at their new states: an object that comes
    /// into range shows up at most this many frames less one late, and one that leaves range
    /// stays as long; one that is gone from the zone leaves at once. A client that moved more
    /// than an eighth of the radius since the search is searched for again.
    pub interest_refresh_frames: u32,
    /// Datagrams one snapshot may take per client; the rest of a large view follows later.
    pub datagrams_per_snapshot_max: usize,
    /// What every Welcome says about the zone (bounds, kinds, rates, input window); the player,
    /// its object id and the tick are filled in per Welcome.
    pub welcome: Welcome,
    /// The zone's shard grid (for interest).
    pub grid: ShardGrid,
}

/// Something the caller must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointEvent<P> {
    /// Ask the zone to take this player in; answer with [`Endpoint::handle_join_result`].
    Join(PlayerId),
    /// Take this player out of the zone.
    Leave(PlayerId),
    /// An input for the zone's input queue.
    Input(InputMsg),
    /// The address has no session any more: the gate should treat it as a stranger again.
    Forget(P),
}

/// What the gate admitted an address with: the player its token named and the session key the
/// token carried.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub player: PlayerId,
    pub key: [u8; 32],
}

impl Debug for Admission {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("player", &self.player).finish_non_exhaustive()
    }
}

/// One accepted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputMsg {
    pub player: PlayerId,
    pub tick: u64,
    pub move_x: i32,
    pub move_y: i32,
    pub attack: bool,
}

/// One datagram to send: an envelope, without laminar's header (the transport adds it; a raw
/// socket sends [`crate::wire::frame`] of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<P> {
    pub peer: P,
    pub payload: Vec<u8>,
}

/// What became of a [`EndpointEvent::Join`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    Accepted,
    /// The zone refused (`reason` is `ZONE_FULL` or `DRAINING`).
    Refused {
        reason: RejectReason,
        detail: String,
    },
    /// The join never reached the zone (its queue was full): the session is dropped, the client
    /// will say Hello again.
    NotAsked,
}

/// Counts since the last [`Endpoint::take_counts`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Indexed by `Rejection as usize`.
    pub rejected: [u64; Rejection::ALL.len()],
    pub duplicates: u64,
    pub event_resends: u64,
    pub event_give_ups: u64,
    pub events_dropped: u64,
    pub joins: u64,
    pub leaves: u64,
    pub replaced: u64,
    pub snapshot_bytes: u64,
    pub snapshots_full: u64,
    pub snapshots_delta: u64,
    /// Events queued for clients (own and others').
    pub events_queued: u64,
    /// Events acknowledged by clients.
    pub events_acked: u64,
}

impl Counts {
    fn reject(&mut self, r: Rejection) {
        self.rejected[r as usize] += 1;
    }
}

/// What one zone tick gives the endpoint: the objects, quantized and located, and the player
/// events since the last frame.
#[derive(Clone, Debug, Default)]
pub struct FrameInput {
    pub tick: u64,
    /// Every object, sorted by id.
    pub objects: Vec<QObject>,
    /// Every object's position in mm (for interest). Best sorted by id as well: `begin_frame`
    /// sorts it, which for a sorted list is one linear check.
    pub located: Vec<Located>,
    /// Player objects' positions, by object id.
    pub players: BTreeMap<u64, PosMm>,
    pub joins: Vec<(PlayerId, u64)>,
    pub leaves: Vec<(PlayerId, u64)>,
    pub deaths: Vec<(PlayerId, u64)>,
}

/// Runs one closure over many sessions, maybe on several threads (the server uses rayon).
pub trait Parallel {
    fn for_each(&self, sessions: &mut [&mut Session], f: &(dyn Fn(&mut Session) + Sync));
}

/// [`Parallel`] on the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl Parallel for Sequential {
    fn for_each(&self, sessions: &mut [&mut Session], f: &(dyn Fn(&mut Session) + Sync)) {
        sessions.iter_mut().for_each(|s| f(s));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Admitted by the gate; waiting for the zone to accept the join.
    Joining,
    Joined,
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    player: PlayerId,
    phase: Phase,
    last_heard_us: u64,
    newest_seq: Option<u32>,
    seen_mask: u64,
    /// The newest input tick seen (later copies of it and older ones are redundant).
    newest_input_tick: u64,
    /// The newest input tick forwarded to the zone (what snapshots acknowledge).
    last_input_tick: u64,
    join_asked_us: u64,
    /// The last event batch could not hold every unacknowledged event.
    events_truncated: bool,
    unreliable_seq: u32,
    reliable_seq: u32,
    /// What the client holds after each recent snapshot send, oldest first.
    sent: VecDeque<View>,
    /// The newest view the client acknowledged.
    baseline: Option<View>,
    /// Unacknowledged events (with when they were queued); the first has `events_first_seq`.
    events: VecDeque<(Event, u64)>,
    events_first_seq: u64,
    /// Events sent at least once (sequence numbers below this were sent before).
    events_sent: u64,
    events_last_send_us: Option<u64>,
    /// Batches sent since the oldest unacknowledged event became the oldest.
    events_front_sends: u32,
    last_ping_us: u64,
    rtt_us: Option<u64>,
    /// The snapshot encoded for the current frame: datagrams, bytes, whether it was full.
    outbox: Option<(Vec<Vec<u8>>, usize, bool)>,
    /// What the last interest search chose: ids ascending, each with its index in that frame's
    /// objects (a hint: the index usually stays the same from frame to frame).
    interest: Vec<(u64, u32)>,
    /// Where the player was at that search, and frames encoded since.
    interest_at: PosMm,
    interest_age: u32,
    /// Seals what the server sends, opens what the client sends.
    sealer: Sealer,
    opener: Opener,
}

impl Session {
    fn new(admission: Admission, now_us: u64) -> Session {
        let player = admission.player;
        Session {
            sealer: Sealer::new(&admission.key, Direction::ServerToClient),
            opener: Opener::new(&admission.key, Direction::ClientToServer),
            player,
            phase: Phase::Joining,
            last_heard_us: now_us,
            newest_seq: None,
            seen_mask: 0,
            newest_input_tick: 0,
            last_input_tick: 0,
            join_asked_us: now_us,
            events_truncated: false,
            unreliable_seq: 0,
            reliable_seq: 0,
            sent: VecDeque::new(),
            baseline: None,
            events: VecDeque::new(),
            events_first_seq: 0,
            events_sent: 0,
            events_last_send_us: None,
            events_front_sends: 0,
            last_ping_us: now_us,
            rtt_us: None,
            outbox: None,
            interest: Vec::new(),
            interest_at: PosMm { x_mm: 0, y_mm: 0 },
            interest_age: 0,
        }
    }

    pub fn player(&self) -> PlayerId {
        self.player
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The latest RTT sample, if any.
    pub fn rtt_us(&self) -> Option<u64> {
        self.rtt_us
    }

    /// Events queued and not yet acknowledged.
    pub fn events_unacked(&self) -> usize {
        self.events.len()
    }

    /// Sent views held for baselines (bounded by [`history_len`]).
    pub fn views_held(&self) -> usize {
        self.sent.len() + usize::from(self.baseline.is_some())
    }

    /// Records an unreliable-channel sequence number; false if it was seen before (or is too old
    /// to tell, 64 or more behind the newest).
    fn first_sight(&mut self, seq: u32) -> bool {
        let Some(newest) = self.newest_seq else {
            self.newest_seq = Some(seq);
            self.seen_mask = 1;
            return true;
        };
        let ahead = seq.wrapping_sub(newest);
        if ahead != 0 && ahead < (1 << 31) {
            self.seen_mask = if ahead >= 64 { 0 } else { self.seen_mask << ahead };
            self.seen_mask |= 1;
            self.newest_seq = Some(seq);
            return true;
        }
        let behind = newest.wrapping_sub(seq);
        if behind >= 64 || self.seen_mask & (1 << behind) != 0 {
            return false;
        }
        self.seen_mask |= 1 << behind;
        true
    }

    /// The client holds the view of `tick` completely: it becomes the baseline.
    fn acknowledge(&mut self, tick: u64) {
        if tick == 0 || self.baseline.as_ref().is_some_and(|b| b.tick() >= tick) {
            return;
        }
        while self.sent.front().is_some_and(|v| v.tick() < tick) {
            self.sent.pop_front();
        }
        if self.sent.front().is_some_and(|v| v.tick() == tick) {
            self.baseline = self.sent.pop_front();
        }
    }

    /// The baseline to delta against at `tick`: the acknowledged view, if it is at most
    /// `max_age_ticks` old (so the client, which keeps 32 views, still holds it).
    fn baseline_for(&self, tick: u64, max_age_ticks: u64) -> Option<&View> {
        self.baseline
            .as_ref()
            .filter(|b| b.tick() < tick && b.tick() + max_age_ticks >= tick)
    }

    fn record_sent(&mut self, held: View, history: usize) {
        while self.sent.len() >= history.max(1) {
            self.sent.pop_front();
        }
        self.sent.push_back(held);
    }

    /// The client has received `received` events in order; returns how many that newly covers.
    fn events_acked(&mut self, received: u64) -> u64 {
        let mut n = 0;
        while self.events_first_seq < received && self.events.pop_front().is_some() {
            self.events_first_seq += 1;
            n += 1;
        }
        if n > 0 {
            self.events_front_sends = 0;
        }
        n
    }

    fn events_stalled(&self, now_us: u64) -> bool {
        self.events.len() > EVENTS_UNACKED_MAX
            || self
                .events
                .front()
                .is_some_and(|(_, at)| now_us.saturating_sub(*at) > EVENT_GIVE_UP_US && self.events_front_sends >= EVENT_GIVE_UP_SENDS)
    }

    fn next_unreliable(&mut self) -> u32 {
        let s = self.unreliable_seq;
        self.unreliable_seq = s.wrapping_add(1);
        s
    }

    fn next_reliable(&mut self) -> u32 {
        let s = self.reliable_seq;
        self.reliable_seq = s.wrapping_add(1);
        s
    }

    /// Encodes this client's snapshot of the frame into `outbox`; nothing when its player is not
    /// in the frame (joins apply at the next tick).
    fn encode(&mut self, enc: &Encoder<'_>) {
        self.outbox = None;
        let Some(&pos) = enc.players.get(&(self.player | PLAYER_OBJECT_BIT)) else {
            return;
        };
        let objects = self.interest_objects(enc, pos);
        let Ok(view) = View::new(enc.tick, objects) else { return };
        let focus = (quantize_pos(pos.x_mm, enc.origin.0), quantize_pos(pos.y_mm, enc.origin.1));
        let frame = SnapshotFrame {
            ack_input_tick: self.last_input_tick,
            sequence: self.unreliable_seq,
        };
        let base = self.baseline_for(enc.tick, enc.history as u64 * enc.interval_ticks);
        let full = base.is_none();
        let Ok((datagrams, stats, held)) = encode_delta_capped_into(base, view, frame, SNAPSHOT_BUDGET_BYTES, focus, enc.datagrams_max)
        else {
            return;
        };
        self.unreliable_seq = self.unreliable_seq.wrapping_add(datagrams.len() as u32);
        self.record_sent(held, enc.history);
        let datagrams = datagrams.into_iter().map(|d| self.sealer.seal_vec(d)).collect();
        self.outbox = Some((datagrams, stats.bytes, full));
    }

    /// This frame's objects for the client at `pos`, ascending by id: the nearest ones, searched
    /// for anew when due (see [`EndpointConfig::interest_refresh_frames`]), else those of the
    /// last search that are still in the frame.
    fn interest_objects(&mut self, enc: &Encoder<'_>, pos: PosMm) -> Vec<QObject> {
        let drift = u64::from(enc.radius_mm / 8);
        let near =
            u64::from(pos.x_mm.abs_diff(self.interest_at.x_mm)) <= drift && u64::from(pos.y_mm.abs_diff(self.interest_at.y_mm)) <= drift;
        if self.interest_age + 1 < enc.refresh_frames && !self.interest.is_empty() && near {
            self.interest_age += 1;
            let mut objects = Vec::with_capacity(self.interest.len());
            // Each kept object where its hint says (its index in the last frame; the common
            // case), else searched for after the previous one; gone from the zone, it leaves the
            // view and the choice.
            let (mut from, mut kept) = (0, 0);
            for k in 0..self.interest.len() {
                let (id, hint) = self.interest[k];
                let h = hint as usize;
                let i = match enc.objects.get(h) {
                    Some(o) if o.id == id && h >= from => h,
                    _ => {
                        let i = from + enc.objects[from..].partition_point(|o| o.id < id);
                        match enc.objects.get(i) {
                            Some(o) if o.id == id => i,
                            _ => continue,
                        }
                    }
                };
                objects.push(enc.objects[i]);
                self.interest[kept] = (id, i as u32);
                kept += 1;
                from = i + 1;
            }
            self.interest.truncate(kept);
            return objects;
        }
        let mut scratch = Vec::with_capacity(enc.objects_max.min(1_024) * 4);
        let mut slots = Vec::with_capacity(enc.objects_max.min(1_024));
        enc.index
            .nearest_slots(pos, enc.radius_mm, enc.objects_max, &mut scratch, &mut slots);
        // Slots ascend with ids (the located objects are sorted by id), so the indices and the
        // view do too.
        let mut chosen: Vec<u32> = slots
            .iter()
            .filter_map(|&s| enc.slot_objects.get(s as usize).copied().filter(|&i| i != NO_OBJECT))
            .collect();
        chosen.dedup();
        self.interest.clear();
        self.interest.extend(chosen.iter().map(|&i| (enc.objects[i as usize].id, i)));
        self.interest_at = pos;
        self.interest_age = 0;
        chosen.iter().map(|&i| enc.objects[i as usize]).collect()
    }
}

/// A located object with no quantized object in the frame (see [`FrameJob::slot_objects`]).
const NO_OBJECT: u32 = u32::MAX;

/// What every client's snapshot at one frame is made from.
struct Encoder<'a> {
    tick: u64,
    objects: &'a [QObject],
    slot_objects: &'a [u32],
    index: &'a SpatialIndex,
    players: &'a BTreeMap<u64, PosMm>,
    origin: (i32, i32),
    radius_mm: u32,
    objects_max: usize,
    refresh_frames: u32,
    datagrams_max: usize,
    history: usize,
    interval_ticks: u64,
}

/// A frame being encoded, a chunk of clients at a time.
#[derive(Debug)]
struct FrameJob<P> {
    tick: u64,
    objects: Vec<QObject>,
    /// For each object of the spatial index (the frame's located objects, sorted by id), its
    /// position in `objects`, or [`NO_OBJECT`].
    slot_objects: Vec<u32>,
    index: SpatialIndex,
    players: BTreeMap<u64, PosMm>,
    /// Clients still to encode, in reverse order (popped from the back).
    pending: Vec<P>,
}

/// The server endpoint. See the module docs.
#[derive(Debug)]
pub struct Endpoint<P> {
    cfg: EndpointConfig,
    history: usize,
    interval_ticks: u64,
    origin: (i32, i32),
    sessions: BTreeMap<P, Session>,
    by_player: BTreeMap<PlayerId, P>,
    draining: bool,
    zone_tick: u64,
    transmits: VecDeque<Transmit<P>>,
    events: VecDeque<EndpointEvent<P>>,
    counts: Counts,
    rtt_samples: VecDeque<u64>,
    /// Player positions at the previous frame (for the events of players who just left).
    prev_players: BTreeMap<u64, PosMm>,
    frame: Option<FrameJob<P>>,
    /// The opened envelope of the datagram being handled (kept to reuse its room).
    opened: Vec<u8>,
}

impl<P: Copy + Ord + Debug + Send> Endpoint<P> {
    pub fn new(cfg: EndpointConfig) -> Endpoint<P> {
        let rate = cfg.snapshot_rate_hz.clamp(1, 60);
        let origin = (cfg.grid.min.x_mm, cfg.grid.min.y_mm);
        Endpoint {
            history: history_len(rate),
            interval_ticks: u64::from(60 / rate),
            origin,
            cfg,
            sessions: BTreeMap::new(),
            by_player: BTreeMap::new(),
            draining: false,
            zone_tick: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counts: Counts::default(),
            rtt_samples: VecDeque::new(),
            prev_players: BTreeMap::new(),
            frame: None,
            opened: Vec::new(),
        }
    }

    /// The last tick the zone ran (Welcomes carry it; inputs are checked against the next one).
    pub fn set_zone_tick(&mut self, tick: u64) {
        self.zone_tick = tick;
    }

    /// Sessions, joining or joined.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Joined sessions.
    pub fn joined(&self) -> usize {
        self.sessions.values().filter(|s| s.phase == Phase::Joined).count()
    }

    pub fn session(&self, peer: &P) -> Option<&Session> {
        self.sessions.get(peer)
    }

    /// The session of a player, if it has one.
    pub fn peer_of(&self, player: PlayerId) -> Option<P> {
        self.by_player.get(&player).copied()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<P>> {
        self.transmits.pop_front()
    }

    /// The next join, leave, input or forgotten address for the caller.
    pub fn poll_event(&mut self) -> Option<EndpointEvent<P>> {
        self.events.pop_front()
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// Counts a refusal the caller decided (a full input queue, ..).
    pub fn count(&mut self, r: Rejection) {
        self.counts.reject(r);
    }

    /// RTT samples (server pings) since the last call.
    pub fn take_rtt_samples_us(&mut self) -> Vec<u64> {
        self.rtt_samples.drain(..).collect()
    }

    /// When [`Endpoint::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.sessions
            .values()
            .map(|s| {
                let mut t = s.last_heard_us.saturating_add(self.cfg.idle_timeout_us).saturating_add(1);
                if s.phase == Phase::Joined {
                    t = t.min(s.last_ping_us.saturating_add(PING_EVERY_US));
                    if let Some((_, at)) = s.events.front() {
                        t = t.min(at.saturating_add(EVENT_GIVE_UP_US).saturating_add(1));
                        let resend = s.events_last_send_us.map_or(0, |l| l.saturating_add(EVENT_RESEND_US));
                        t = t.min(resend);
                    }
                }
                t
            })
            .min()
    }

    fn push(&mut self, peer: P, payload: Vec<u8>) {
        self.transmits.push_back(Transmit { peer, payload });
    }

    /// Sends on the reliable channel (Welcome, Reject), sealed; a peer without a session gets
    /// sequence 0, in plaintext.
    fn send_reliable(&mut self, peer: P, body: server_envelope::Body) {
        let payload = match self.sessions.get_mut(&peer) {
            Some(s) => {
                let stamp = Stamp {
                    channel: Channel::Reliable,
                    sequence: s.next_reliable(),
                };
                s.sealer.seal(&encode_server(stamp, body))
            }
            None => encode_server(
                Stamp {
                    channel: Channel::Reliable,
                    sequence: 0,
                },
                body,
            ),
        };
        self.push(peer, payload);
    }

    fn send_unreliable(&mut self, peer: P, body: server_envelope::Body) {
        let Some(s) = self.sessions.get_mut(&peer) else { return };
        let stamp = Stamp {
            channel: Channel::Unreliable,
            sequence: s.next_unreliable(),
        };
        let payload = s.sealer.seal(&encode_server(stamp, body));
        self.push(peer, payload);
    }

    /// One datagram's payload (laminar's header already stripped) from `peer`. `admitted` tells
    /// what the gate admitted the address with, if it did: a Hello from an address without a
    /// session starts one only then. It is asked only for such a Hello (a lookup saved on every
    /// other datagram). A session's datagrams must be sealed, except a repeated Hello.
    pub fn handle_datagram(&mut self, peer: P, payload: &[u8], admitted: impl FnOnce() -> Option<Admission>, now_us: u64) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            match decode_client(payload) {
                Ok((_, client_envelope::Body::Hello(_))) => self.on_hello(peer, admitted(), now_us),
                Ok(_) => self.counts.reject(Rejection::NotJoined),
                Err(_) if is_sealed(payload) => self.counts.reject(Rejection::NotJoined),
                Err(_) => self.counts.reject(Rejection::Malformed),
            }
            return;
        };
        let sealed = is_sealed(payload);
        let envelope: &[u8] = if sealed {
            match s.opener.open_into(payload, &mut self.opened) {
                Ok(()) => &self.opened,
                Err(SealError::Replayed) => {
                    self.counts.reject(Rejection::Replayed);
                    return;
                }
                Err(SealError::Forged | SealError::NotSealed) => {
                    self.counts.reject(Rejection::Forged);
                    return;
                }
            }
        } else {
            payload
        };
        let (stamp, body) = match decode_client(envelope) {
            Ok(m) => m,
            Err(_) => {
                self.counts.reject(Rejection::Malformed);
                return;
            }
        };
        if !sealed {
            if !matches!(body, client_envelope::Body::Hello(_)) {
                self.counts.reject(Rejection::Unsealed);
                return;
            }
        } else {
            // Only an authenticated datagram keeps the session alive (a plaintext Hello can be
            // replayed by anyone who saw it).
            s.last_heard_us = s.last_heard_us.max(now_us);
        }
        if stamp.channel == Channel::Unreliable && !s.first_sight(stamp.sequence) {
            self.counts.duplicates += 1;
            return;
        }
        match body {
            client_envelope::Body::Hello(_) => {
                let player = s.player;
                if s.phase == Phase::Joined {
                    // The client missed our Welcome: say it again (it is smaller than the Hello).
                    self.welcome(peer, player);
                } else if now_us.saturating_sub(s.join_asked_us) >= JOIN_ASK_AGAIN_US {
                    // The zone's answer was lost: ask again.
                    s.join_asked_us = now_us;
                    self.events.push_back(EndpointEvent::Join(player));
                }
            }
            client_envelope::Body::Inputs(b) => {
                if s.phase != Phase::Joined {
                    return;
                }
                s.acknowledge(b.snapshot_ack);
                self.counts.events_acked += s.events_acked(b.events_received);
                let next = self.zone_tick + 1;
                let lead = match u64::from(self.cfg.welcome.input_lead_ticks_max) {
                    0 => INPUT_LEAD_TICKS_MAX,
                    l => l.min(INPUT_LEAD_TICKS_MAX),
                };
                for i in b.inputs {
                    if i.tick <= s.newest_input_tick {
                        continue; // a redundant copy of an input already seen
                    }
                    s.newest_input_tick = i.tick;
                    if i.tick < next {
                        self.counts.reject(Rejection::InputTooOld);
                        continue;
                    }
                    if i.tick > next + lead {
                        self.counts.reject(Rejection::InputTooFar);
                        continue;
                    }
                    s.last_input_tick = i.tick;
                    self.events.push_back(EndpointEvent::Input(InputMsg {
                        player: s.player,
                        tick: i.tick,
                        move_x: i.move_x,
                        move_y: i.move_y,
                        attack: i.attack,
                    }));
                }
            }
            client_envelope::Body::SnapshotAck(a) => s.acknowledge(a.tick),
            client_envelope::Body::Ping(p) => {
                if s.phase == Phase::Joined {
                    self.send_unreliable(peer, server_envelope::Body::Pong(Pong { echo_us: p.sent_us }));
                }
            }
            client_envelope::Body::Pong(p) => {
                if p.echo_us <= now_us {
                    let rtt = now_us - p.echo_us;
                    s.rtt_us = Some(rtt);
                    if self.rtt_samples.len() == RTT_SAMPLES_MAX {
                        self.rtt_samples.pop_front();
                    }
                    self.rtt_samples.push_back(rtt);
                }
            }
            client_envelope::Body::Goodbye(_) => self.end_session(peer, true),
        }
    }

    /// A Hello from an address without a session.
    fn on_hello(&mut self, peer: P, admitted: Option<Admission>, now_us: u64) {
        let Some(admission) = admitted else {
            self.counts.reject(Rejection::NotJoined);
            return;
        };
        let player = admission.player;
        let refuse = |e: &mut Self, reason: RejectReason, why: Rejection, detail: &str| {
            e.counts.reject(why);
            e.send_reliable(peer, reject(reason, detail));
            e.events.push_back(EndpointEvent::Forget(peer));
        };
        if self.draining {
            return refuse(
                self,
                RejectReason::Draining,
                Rejection::Draining,
                "the zone is draining for shutdown",
            );
        }
        if player == 0 || player >= PLAYER_OBJECT_BIT {
            return refuse(self, RejectReason::BadSignature, Rejection::BadSignature, "player id out of range");
        }
        let replacing = self.by_player.get(&player).copied();
        if replacing.is_none() && self.sessions.len() >= self.cfg.max_clients {
            return refuse(self, RejectReason::ZoneFull, Rejection::ZoneFull, "the zone is full");
        }
        let s = Session::new(admission, now_us);
        if let Some(old) = replacing {
            // The newer connection wins: the old one is told why (twice, as datagrams get lost)
            // and dropped; the player stays in the zone.
            let old_phase = self.sessions.get(&old).map(|o| o.phase);
            for _ in 0..2 {
                self.send_reliable(old, reject(RejectReason::Replaced, "another connection joined as this player"));
            }
            self.end_session(old, false);
            self.counts.replaced += 1;
            self.insert_session(peer, s);
            if old_phase == Some(Phase::Joined) {
                self.on_joined(peer, now_us);
            }
            // Otherwise the old session's join is still on its way: its answer finds this one.
            return;
        }
        self.insert_session(peer, s);
        self.events.push_back(EndpointEvent::Join(player));
    }

    fn insert_session(&mut self, peer: P, s: Session) {
        self.by_player.insert(s.player, peer);
        self.sessions.insert(peer, s);
    }

    fn welcome(&mut self, peer: P, player: PlayerId) {
        let body = server_envelope::Body::Welcome(Welcome {
            player_id: player,
            tick: self.zone_tick,
            object_id: player | PLAYER_OBJECT_BIT,
            ..self.cfg.welcome.clone()
        });
        self.send_reliable(peer, body);
    }

    fn on_joined(&mut self, peer: P, now_us: u64) {
        let Some(s) = self.sessions.get_mut(&peer) else { return };
        s.phase = Phase::Joined;
        s.last_ping_us = now_us;
        let player = s.player;
        self.counts.joins += 1;
        self.welcome(peer, player);
        if self.draining {
            self.push_notice(peer, NoticeKind::Draining, "the zone is draining for shutdown", now_us);
        }
    }

    /// The zone's answer to an [`EndpointEvent::Join`].
    pub fn handle_join_result(&mut self, player: PlayerId, outcome: JoinOutcome, now_us: u64) {
        let Some(&peer) = self.by_player.get(&player) else {
            if outcome != JoinOutcome::NotAsked {
                // The client left before the zone took it in.
                self.events.push_back(EndpointEvent::Leave(player));
            }
            return;
        };
        match outcome {
            JoinOutcome::Accepted => {
                if self.sessions.get(&peer).is_some_and(|s| s.phase == Phase::Joining) {
                    self.on_joined(peer, now_us);
                }
            }
            JoinOutcome::Refused { reason, detail } => {
                let why = if reason == RejectReason::Draining {
                    Rejection::Draining
                } else {
                    Rejection::ZoneFull
                };
                self.counts.reject(why);
                self.send_reliable(peer, reject(reason, detail));
                self.end_session(peer, false);
            }
            JoinOutcome::NotAsked => {
                self.counts.reject(Rejection::ControlQueueFull);
                self.end_session(peer, false);
            }
        }
    }

    /// The zone is draining: every client is told, and new joins are refused.
    pub fn handle_draining(&mut self, now_us: u64) {
        self.draining = true;
        let peers: Vec<P> = self.sessions.keys().copied().collect();
        for p in peers {
            self.push_notice(p, NoticeKind::Draining, "the zone is draining for shutdown", now_us);
        }
    }

    /// The lobby ended `player`'s session elsewhere (a new login): its connection is told why
    /// (twice, as datagrams get lost) and ends, and the player leaves the zone. Only a connection
    /// whose join began at or before `before_us` is kicked, so a fresh reconnect is not.
    pub fn handle_kick(&mut self, player: PlayerId, before_us: u64) {
        let Some(peer) = self.by_player.get(&player).copied() else { return };
        if self.sessions.get(&peer).is_none_or(|s| s.join_asked_us > before_us) {
            return;
        }
        for _ in 0..2 {
            self.send_reliable(
                peer,
                reject(RejectReason::Replaced, "signed in elsewhere: the lobby ended this session"),
            );
        }
        self.end_session(peer, true);
    }

    /// The transport lost the peer (laminar's own timeout).
    pub fn handle_peer_lost(&mut self, peer: P) {
        if self.sessions.contains_key(&peer) {
            self.end_session(peer, true);
        } else {
            self.events.push_back(EndpointEvent::Forget(peer));
        }
    }

    fn push_notice(&mut self, peer: P, kind: NoticeKind, text: &str, now_us: u64) {
        if let Some(s) = self.sessions.get_mut(&peer) {
            s.events.push_back((
                Event {
                    kind: Some(event::Kind::Notice(Notice {
                        kind: kind as i32,
                        text: text.into(),
                    })),
                },
                now_us,
            ));
            self.counts.events_queued += 1;
        }
    }

    /// Ends a session; `leave` also takes the player out of the zone.
    fn end_session(&mut self, peer: P, leave: bool) {
        self.events.push_back(EndpointEvent::Forget(peer));
        let Some(s) = self.sessions.remove(&peer) else { return };
        if self.by_player.get(&s.player) == Some(&peer) {
            self.by_player.remove(&s.player);
        }
        if s.phase == Phase::Joined {
            self.counts.leaves += 1;
        }
        if leave {
            self.events.push_back(EndpointEvent::Leave(s.player));
        }
    }

    /// Resends events, pings, and ends sessions that went quiet or stopped acknowledging.
    pub fn handle_timeout(&mut self, now_us: u64) {
        let idle = self.cfg.idle_timeout_us;
        let mut ended: Vec<P> = Vec::new();
        let mut due_events: Vec<P> = Vec::new();
        let mut due_pings: Vec<P> = Vec::new();
        for (peer, s) in &mut self.sessions {
            if now_us.saturating_sub(s.last_heard_us) > idle {
                ended.push(*peer);
                continue;
            }
            if s.phase != Phase::Joined {
                continue;
            }
            if s.events_stalled(now_us) {
                self.counts.event_give_ups += s.events.len() as u64;
                ended.push(*peer);
                continue;
            }
            // New events go out at once unless the last batch was full (then they wait for the
            // acknowledgements, like the resends).
            let unsent = s.events_first_seq + s.events.len() as u64 > s.events_sent && !s.events_truncated;
            let resend = !s.events.is_empty() && s.events_last_send_us.is_none_or(|t| now_us.saturating_sub(t) >= EVENT_RESEND_US);
            if unsent || resend {
                due_events.push(*peer);
            }
            if now_us.saturating_sub(s.last_ping_us) >= PING_EVERY_US {
                s.last_ping_us = now_us;
                due_pings.push(*peer);
            }
        }
        for p in ended {
            self.end_session(p, true);
        }
        for p in due_events {
            self.send_events(p, now_us);
        }
        for p in due_pings {
            self.send_unreliable(p, server_envelope::Body::Ping(Ping { sent_us: now_us }));
        }
    }

    /// Sends every unacknowledged event (as many as fit one datagram), oldest first.
    fn send_events(&mut self, peer: P, now_us: u64) {
        let Some(s) = self.sessions.get_mut(&peer) else { return };
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
        self.counts.event_resends += s.events_sent.min(end).saturating_sub(s.events_first_seq);
        s.events_sent = s.events_sent.max(end);
        s.events_truncated = batch.events.len() < s.events.len();
        s.events_last_send_us = Some(now_us);
        s.events_front_sends = s.events_front_sends.saturating_add(1);
        self.send_unreliable(peer, server_envelope::Body::Events(batch));
    }

    /// Starts a frame: queues its player events and prepares every joined client's snapshot,
    /// encoded by [`Endpoint::encode_frame`] (a chunk at a time, so the caller can read the
    /// socket in between). A frame still unfinished is completed first.
    pub fn begin_frame(&mut self, mut f: FrameInput, now_us: u64) {
        if self.frame.is_some() {
            while self.encode_frame(usize::MAX, &Sequential) {}
        }
        // Sorted by id, the located objects line up with `objects`: each client's choice is then
        // a list of positions, ascending by id, with no search.
        f.located.sort_unstable_by_key(|l| l.id);
        let mut slot_objects = Vec::with_capacity(f.located.len());
        let mut j = 0;
        for l in &f.located {
            while f.objects.get(j).is_some_and(|o| o.id < l.id) {
                j += 1;
            }
            slot_objects.push(match f.objects.get(j) {
                Some(o) if o.id == l.id => j as u32,
                _ => NO_OBJECT,
            });
        }
        let index = SpatialIndex::build(self.cfg.grid, BUCKET_MM, &f.located);
        self.frame_events(&f, now_us);
        let mut pending: Vec<P> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.phase == Phase::Joined)
            .map(|(p, _)| *p)
            .collect();
        pending.reverse();
        self.frame = Some(FrameJob {
            tick: f.tick,
            objects: f.objects,
            slot_objects,
            index,
            players: f.players,
            pending,
        });
    }

    /// Encodes and queues the snapshots of up to `max_clients` more clients of the current
    /// frame; returns whether any are left.
    pub fn encode_frame(&mut self, max_clients: usize, par: &dyn Parallel) -> bool {
        let Some(mut job) = self.frame.take() else { return false };
        let n = max_clients.min(job.pending.len());
        // `pending` descends, so its last `n` reversed are the chunk's peers in ascending order.
        let chunk: Vec<P> = job.pending.split_off(job.pending.len() - n).into_iter().rev().collect();
        let enc = Encoder {
            tick: job.tick,
            objects: &job.objects,
            slot_objects: &job.slot_objects,
            index: &job.index,
            players: &job.players,
            origin: self.origin,
            radius_mm: self.cfg.interest_radius_mm,
            objects_max: self.cfg.interest_max,
            refresh_frames: self.cfg.interest_refresh_frames,
            datagrams_max: self.cfg.datagrams_per_snapshot_max,
            history: self.history,
            interval_ticks: self.interval_ticks,
        };
        // The chunk's sessions, borrowed in place: one walk of the map's range, merged with the
        // chunk (a peer gone since `begin_frame` is skipped), instead of a removal and an
        // insertion per session.
        let mut peers = Vec::with_capacity(chunk.len());
        let mut taken: Vec<&mut Session> = Vec::with_capacity(chunk.len());
        if let (Some(&first), Some(&last)) = (chunk.first(), chunk.last()) {
            let mut wanted = chunk.iter().peekable();
            for (p, s) in self.sessions.range_mut(first..=last) {
                while wanted.next_if(|&w| w < p).is_some() {}
                if wanted.next_if(|&w| w == p).is_some() {
                    peers.push(*p);
                    taken.push(s);
                }
            }
        }
        par.for_each(&mut taken, &|s: &mut Session| {
            if s.phase == Phase::Joined {
                s.encode(&enc);
            }
        });
        for (p, s) in peers.into_iter().zip(taken) {
            if let Some((datagrams, bytes, full)) = s.outbox.take() {
                if full {
                    self.counts.snapshots_full += 1;
                } else {
                    self.counts.snapshots_delta += 1;
                }
                self.counts.snapshot_bytes += bytes as u64;
                for d in datagrams {
                    self.transmits.push_back(Transmit { peer: p, payload: d });
                }
            }
        }
        if job.pending.is_empty() {
            self.prev_players = job.players;
            false
        } else {
            self.frame = Some(job);
            true
        }
    }

    /// Queues the frame's joins, leaves and deaths for each client: its own, and other players'
    /// within its interest radius.
    fn frame_events(&mut self, f: &FrameInput, now_us: u64) {
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
                    object_id: p | PLAYER_OBJECT_BIT,
                    killer_object_id: 0,
                    tick,
                }),
            )
        }));
        let prev_players = &self.prev_players;
        let counts = &mut self.counts;
        for s in self.sessions.values_mut().filter(|s| s.phase == Phase::Joined) {
            let me = f.players.get(&(s.player | PLAYER_OBJECT_BIT)).copied();
            let mut others = 0;
            for (p, kind) in &all {
                if *p == s.player {
                    s.events.push_back((Event { kind: Some(kind.clone()) }, now_us));
                    counts.events_queued += 1;
                    continue;
                }
                let obj = *p | PLAYER_OBJECT_BIT;
                let near = match (me, f.players.get(&obj).or_else(|| prev_players.get(&obj))) {
                    (Some(a), Some(b)) => dist2_mm2(a, *b) <= r2,
                    _ => false,
                };
                if !near {
                    continue;
                }
                // Other players' events are news, not state (the snapshots carry the state): a
                // crowd arriving at once must not flood every client's reliable stream.
                if others >= OTHER_EVENTS_PER_FRAME_MAX || s.events.len() >= OTHER_EVENTS_QUEUED_MAX {
                    counts.events_dropped += 1;
                    continue;
                }
                others += 1;
                s.events.push_back((Event { kind: Some(kind.clone()) }, now_us));
                counts.events_queued += 1;
            }
        }
    }

    /// At shutdown: tells every client the server is going away (`Reject{DRAINING}`).
    pub fn shutdown(&mut self) {
        let peers: Vec<P> = self.sessions.keys().copied().collect();
        for p in peers {
            self.send_reliable(p, reject(RejectReason::Draining, "the server is shutting down"));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Deterministic tests of the endpoint against real [`ClientSession`]s on a virtual clock.

    use super::*;
    use crate::client::{ClientConfig, ClientSession, EndReason};
    use crate::wire;

    const TICK_US: u64 = 1_000_000 / 60;

    fn key_of(player: PlayerId) -> [u8; 32] {
        [player as u8; 32]
    }

    fn config() -> EndpointConfig {
        EndpointConfig {
            max_clients: 8,
            idle_timeout_us: 5_000_000,
            snapshot_rate_hz: 20,
            interest_radius_mm: 150_000,
            interest_max: 128,
            interest_refresh_frames: 1,
            datagrams_per_snapshot_max: 4,
            welcome: Welcome {
                tick_rate_hz: 60,
                snapshot_rate_hz: 20,
                input_lead_ticks_max: 30,
                ..Welcome::default()
            },
            grid: ShardGrid {
                min: PosMm { x_mm: 0, y_mm: 0 },
                max: PosMm {
                    x_mm: 1_000_000,
                    y_mm: 1_000_000,
                },
                cols: 2,
                rows: 2,
            },
        }
    }

    struct Client {
        player: PlayerId,
        session: ClientSession,
        /// Datagrams from the server are lost while set.
        deaf: bool,
        /// Sends nothing while set.
        mute: bool,
    }

    /// An endpoint, its clients and a toy zone (players stand still at a spot derived from their
    /// id) on one virtual clock.
    struct World {
        ep: Endpoint<u32>,
        clients: BTreeMap<u32, Client>,
        in_zone: BTreeMap<PlayerId, u64>,
        left: Vec<PlayerId>,
        inputs: u64,
        forgotten: Vec<u32>,
        now: u64,
        counts: Counts,
        joins: Vec<(PlayerId, u64)>,
        log: Vec<(u32, Vec<u8>)>,
    }

    impl World {
        fn new() -> World {
            World::with(config())
        }

        fn with(cfg: EndpointConfig) -> World {
            World {
                ep: Endpoint::new(cfg),
                clients: BTreeMap::new(),
                in_zone: BTreeMap::new(),
                left: Vec::new(),
                inputs: 0,
                forgotten: Vec::new(),
                now: 1_000_000,
                counts: Counts::default(),
                joins: Vec::new(),
                log: Vec::new(),
            }
        }

        fn add(&mut self, peer: u32, player: PlayerId) {
            let session = ClientSession::new(ClientConfig::new("token").with_key(key_of(player)), self.now);
            self.clients.insert(
                peer,
                Client {
                    player,
                    session,
                    deaf: false,
                    mute: false,
                },
            );
        }

        fn tick(&self) -> u64 {
            self.now / TICK_US
        }

        fn deliver_to_endpoint(&mut self, peer: u32, datagrams: Vec<Vec<u8>>) {
            let c = &self.clients[&peer];
            if c.mute {
                return;
            }
            let admission = Admission {
                player: c.player,
                key: key_of(c.player),
            };
            for d in datagrams {
                let payload = wire::unframe(&d).expect("framed");
                self.ep.handle_datagram(peer, payload, || Some(admission), self.now);
            }
        }

        fn pump(&mut self) {
            loop {
                let mut progress = false;
                while let Some(e) = self.ep.poll_event() {
                    progress = true;
                    match e {
                        EndpointEvent::Join(p) => {
                            self.in_zone.insert(p, self.tick() + 1);
                            self.joins.push((p, self.tick() + 1));
                            self.ep.handle_join_result(p, JoinOutcome::Accepted, self.now);
                        }
                        EndpointEvent::Leave(p) => {
                            self.in_zone.remove(&p);
                            self.left.push(p);
                        }
                        EndpointEvent::Input(_) => self.inputs += 1,
                        EndpointEvent::Forget(a) => self.forgotten.push(a),
                    }
                }
                while let Some(t) = self.ep.poll_transmit() {
                    progress = true;
                    self.log.push((t.peer, t.payload.clone()));
                    let now = self.now;
                    let replies = match self.clients.get_mut(&t.peer) {
                        Some(c) if !c.deaf => c.session.receive(&wire::frame(&t.payload), now),
                        _ => Vec::new(),
                    };
                    self.deliver_to_endpoint(t.peer, replies);
                }
                if !progress {
                    break;
                }
            }
        }

        /// Runs the world for `us` microseconds, a tick at a time.
        fn run(&mut self, us: u64) {
            let end = self.now + us;
            while self.now < end {
                self.now += TICK_US;
                let tick = self.tick();
                self.ep.set_zone_tick(tick);
                let peers: Vec<u32> = self.clients.keys().copied().collect();
                for p in peers {
                    let now = self.now;
                    let out = self.clients.get_mut(&p).expect("client").session.poll(now);
                    self.deliver_to_endpoint(p, out);
                }
                self.ep.handle_timeout(self.now);
                if tick.is_multiple_of(3) {
                    let players: BTreeMap<u64, PosMm> = self
                        .in_zone
                        .iter()
                        .filter(|&(_, &since)| since <= tick)
                        .map(|(&p, _)| {
                            let pos = PosMm {
                                x_mm: 500_000 + (p as i32 % 7) * 1_000,
                                y_mm: 500_000,
                            };
                            (p | PLAYER_OBJECT_BIT, pos)
                        })
                        .collect();
                    let mut objects: Vec<QObject> = players
                        .iter()
                        .map(|(&id, pos)| QObject::quantize(id, 0, (pos.x_mm, pos.y_mm), (0, 0), 100, (0, 0)))
                        .collect();
                    objects.sort_unstable_by_key(|o| o.id);
                    let located = players.iter().map(|(&id, &pos)| Located { id, pos }).collect();
                    let joins = std::mem::take(&mut self.joins);
                    self.ep.begin_frame(
                        FrameInput {
                            tick,
                            objects,
                            located,
                            players,
                            joins,
                            ..FrameInput::default()
                        },
                        self.now,
                    );
                    while self.ep.encode_frame(3, &Sequential) {}
                }
                self.pump();
                let c = self.ep.take_counts();
                add_counts(&mut self.counts, &c);
            }
        }

        fn client(&self, peer: u32) -> &ClientSession {
            &self.clients[&peer].session
        }
    }

    fn add_counts(into: &mut Counts, c: &Counts) {
        for (a, b) in into.rejected.iter_mut().zip(c.rejected) {
            *a += b;
        }
        into.duplicates += c.duplicates;
        into.event_resends += c.event_resends;
        into.event_give_ups += c.event_give_ups;
        into.joins += c.joins;
        into.leaves += c.leaves;
        into.replaced += c.replaced;
        into.snapshots_full += c.snapshots_full;
        into.snapshots_delta += c.snapshots_delta;
        into.events_queued += c.events_queued;
        into.events_acked += c.events_acked;
    }

    /// Frames (one every 3 ticks) until client `who` sees player `p`, at most `max`.
    fn frames_until_seen(w: &mut World, who: u32, p: PlayerId, max: u32) -> Option<u32> {
        (1..=max).find(|_| {
            w.run(3 * TICK_US);
            w.client(who).view().is_some_and(|v| v.get(p | PLAYER_OBJECT_BIT).is_some())
        })
    }

    #[test]
    fn a_kept_interest_drops_what_left_the_zone_at_once_and_finds_arrivals_within_the_refresh() {
        for refresh in [1, 4] {
            let mut cfg = config();
            cfg.interest_refresh_frames = refresh;
            let mut w = World::with(cfg);
            w.add(1, 7);
            w.add(2, 8);
            w.run(1_000_000);
            let sees = |w: &World, p: PlayerId| w.client(1).view().is_some_and(|v| v.get(p | PLAYER_OBJECT_BIT).is_some());
            assert!(sees(&w, 8), "refresh {refresh}: client 1 sees player 8");
            let mut slowest = 0;
            for round in 0..6u64 {
                // Player 8's object leaves the zone (its client stays): gone from the next view.
                w.in_zone.remove(&8);
                w.run(3 * TICK_US);
                assert!(
                    !sees(&w, 8),
                    "refresh {refresh}, round {round}: a departed object leaves the view at once"
                );
                // Back in the zone: seen within `refresh` frames (whatever the client's phase
                // in its refresh cycle: the rounds shift it).
                let t = w.tick();
                w.in_zone.insert(8, t);
                let seen = frames_until_seen(&mut w, 1, 8, refresh + 1);
                assert!(
                    seen.is_some_and(|f| f <= refresh),
                    "refresh {refresh}, round {round}: seen after {seen:?} frames"
                );
                slowest = slowest.max(seen.unwrap_or(0));
                w.run(round * 3 * TICK_US);
            }
            // With a kept interest the arrival waits for the next search at least once.
            assert_eq!(slowest > 1, refresh > 1, "refresh {refresh}: slowest arrival {slowest} frames");
            assert_eq!(w.counts.snapshots_full, 2, "refresh {refresh}: deltas throughout, {:?}", w.counts);
        }
    }

    #[test]
    fn a_frame_encoded_in_chunks_reaches_each_client_once_and_skips_one_lost_between_chunks() {
        let mut w = World::new();
        for peer in 1..=6 {
            w.add(peer, 10 + PlayerId::from(peer));
        }
        w.run(1_000_000);
        assert_eq!(w.ep.joined(), 6);
        // The next frame by hand, three clients at a time: 1 to 3, then peer 5 is lost, then 4
        // and 6 (the walk of the map's range 4..=6 must step over 5 in the chunk).
        let tick = w.tick();
        let players: BTreeMap<u64, PosMm> = w
            .in_zone
            .keys()
            .map(|&p| {
                (
                    p | PLAYER_OBJECT_BIT,
                    PosMm {
                        x_mm: 500_000,
                        y_mm: 500_000,
                    },
                )
            })
            .collect();
        let objects: Vec<QObject> = players
            .iter()
            .map(|(&id, pos)| QObject::quantize(id, 0, (pos.x_mm, pos.y_mm), (0, 0), 100, (0, 0)))
            .collect();
        let located = players.iter().map(|(&id, &pos)| Located { id, pos }).collect();
        let input = FrameInput {
            tick,
            objects,
            located,
            players,
            ..FrameInput::default()
        };
        w.ep.begin_frame(input, w.now);
        assert!(w.ep.encode_frame(3, &Sequential), "three clients are left");
        w.ep.handle_peer_lost(5);
        while w.ep.encode_frame(3, &Sequential) {}
        let mut snapshots: BTreeMap<u32, usize> = BTreeMap::new();
        while let Some(t) = w.ep.poll_transmit() {
            *snapshots.entry(t.peer).or_default() += 1;
        }
        assert_eq!(snapshots, [(1, 1), (2, 1), (3, 1), (4, 1), (6, 1)].into_iter().collect());
    }

    #[test]
    fn a_client_joins_sees_itself_and_gets_deltas() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(1_000_000);
        let c = w.client(1);
        assert_eq!(c.player_id(), Some(7));
        assert_eq!(c.welcome().map(|w| w.object_id), Some(7 | PLAYER_OBJECT_BIT));
        let view = c.view().expect("a complete view");
        assert!(view.get(7 | PLAYER_OBJECT_BIT).is_some());
        assert!(w.counts.snapshots_delta > 10, "{:?}", w.counts);
        assert!(w.inputs > 30);
        // Its own Joined event arrived exactly once.
        assert_eq!(c.stats().events_received, 1);
        assert_eq!(w.counts.events_acked, 1);
    }

    #[test]
    fn events_are_resent_until_acknowledged_and_delivered_once() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(500_000);
        w.clients.get_mut(&1).unwrap().deaf = true;
        w.ep.handle_draining(w.now);
        w.run(1_000_000);
        assert!(w.counts.event_resends >= 5, "{:?}", w.counts);
        w.clients.get_mut(&1).unwrap().deaf = false;
        w.run(500_000);
        let c = w.client(1);
        assert_eq!(c.leave_notice(), Some(NoticeKind::Draining));
        assert_eq!(c.stats().events_received, 2);
        assert_eq!(w.ep.session(&1).map(Session::events_unacked), Some(0));
        assert_eq!(w.counts.events_queued, w.counts.events_acked);
    }

    #[test]
    fn a_client_that_never_acknowledges_events_is_given_up() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(500_000);
        w.clients.get_mut(&1).unwrap().deaf = true;
        w.ep.handle_draining(w.now);
        w.run(EVENT_GIVE_UP_US + 500_000);
        assert_eq!(w.ep.sessions(), 0);
        assert_eq!(w.counts.event_give_ups, 1);
        assert_eq!(w.left, vec![7]);
        assert!(w.forgotten.contains(&1));
    }

    #[test]
    fn a_server_that_fell_behind_does_not_give_up_on_clients_it_rarely_resent_to() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(500_000);
        w.clients.get_mut(&1).unwrap().deaf = true;
        w.ep.handle_draining(w.now);
        let queued = w.now;
        // The network thread falls behind under overload: it still reads datagrams (and answers
        // pings) but reaches its timers only every 3 s, so it resends the event rarely; the
        // client misses the first resends.
        while w.now < queued + EVENT_GIVE_UP_US + 2_500_000 {
            w.now += TICK_US;
            if w.now >= queued + 9_500_000 {
                w.clients.get_mut(&1).unwrap().deaf = false;
            }
            let now = w.now;
            let out = w.clients.get_mut(&1).unwrap().session.poll(now);
            w.deliver_to_endpoint(1, out);
            if (w.now - queued) % 3_000_000 < TICK_US {
                w.ep.handle_timeout(w.now);
            }
            w.pump();
        }
        w.run(1_000_000);
        assert_eq!(w.ep.sessions(), 1);
        assert_eq!(w.counts.event_give_ups, 0, "{:?}", w.counts);
        assert_eq!(w.client(1).leave_notice(), Some(NoticeKind::Draining));
        assert_eq!(w.ep.session(&1).map(Session::events_unacked), Some(0));
    }

    #[test]
    fn a_silent_client_times_out_and_leaves() {
        let mut w = World::new();
        w.add(1, 7);
        w.add(2, 8);
        w.run(500_000);
        w.clients.get_mut(&1).unwrap().mute = true;
        w.run(4_900_000);
        assert_eq!(w.ep.sessions(), 2, "not yet");
        w.run(300_000);
        assert_eq!(w.ep.sessions(), 1);
        assert_eq!(w.left, vec![7]);
        assert_eq!(w.counts.leaves, 1);
        assert!(w.ep.session(&2).is_some());
    }

    #[test]
    fn a_kick_from_the_lobby_ends_the_older_session_only() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(500_000);
        // A kick issued before this connection joined (a reconnect after a new login) misses it.
        w.ep.handle_kick(7, 1_000_000 - 1);
        w.run(100_000);
        assert_eq!(w.ep.peer_of(7), Some(1));
        // A kick of what was there when the lobby ended the session ends it, and the player leaves.
        w.ep.handle_kick(7, w.now);
        w.run(300_000);
        assert_eq!(w.client(1).end_reason().map(EndReason::label), Some("replaced"));
        assert_eq!(w.ep.peer_of(7), None);
        assert_eq!(w.left, vec![7]);
        w.ep.handle_kick(99, w.now); // nobody: nothing happens
    }

    #[test]
    fn a_second_join_as_the_same_player_replaces_the_first() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(500_000);
        w.add(2, 7);
        w.run(500_000);
        assert_eq!(
            w.client(1).end_reason().map(EndReason::label),
            Some("replaced"),
            "{:?}",
            w.client(1).state()
        );
        assert_eq!(w.client(2).player_id(), Some(7));
        assert!(w.client(2).view().is_some());
        assert_eq!(w.counts.replaced, 1);
        assert!(w.left.is_empty(), "the player stays in the zone");
        assert_eq!(w.ep.peer_of(7), Some(2));
    }

    #[test]
    fn draining_tells_everyone_and_refuses_new_joins() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(500_000);
        w.ep.handle_draining(w.now);
        w.add(2, 8);
        w.run(500_000);
        assert_eq!(w.client(1).leave_notice(), Some(NoticeKind::Draining));
        assert_eq!(w.client(2).end_reason().map(EndReason::label), Some("draining"));
        assert_eq!(w.counts.rejected[Rejection::Draining as usize], 1);
        w.ep.shutdown();
        w.pump();
        assert_eq!(w.client(1).end_reason().map(EndReason::label), Some("draining"));
    }

    #[test]
    fn the_zone_full_and_strangers_are_refused_and_counted() {
        let mut w = World::new();
        for p in 0..9 {
            w.add(p, 100 + u64::from(p));
        }
        w.run(500_000);
        assert_eq!(w.ep.sessions(), 8);
        assert_eq!(w.client(8).end_reason().map(EndReason::label), Some("zone_full"));
        // A datagram from an address the gate did not admit.
        w.ep.handle_datagram(99, b"\x08\x01", || None, w.now);
        w.ep.handle_datagram(99, &[0xff; 8], || None, w.now);
        let c = w.ep.take_counts();
        assert_eq!(
            c.rejected[Rejection::NotJoined as usize] + c.rejected[Rejection::Malformed as usize],
            2
        );
    }

    #[test]
    fn forged_replayed_and_plaintext_datagrams_are_dropped_and_counted() {
        let mut w = World::new();
        w.add(1, 7);
        w.run(500_000);
        let admission = Admission { player: 7, key: key_of(7) };
        let now = w.now;
        // A genuine sealed input batch, captured.
        let d = w
            .clients
            .get_mut(&1)
            .unwrap()
            .session
            .poll(now + TICK_US)
            .pop()
            .expect("an input batch");
        let payload = wire::unframe(&d).unwrap().to_vec();
        w.ep.handle_datagram(1, &payload, || Some(admission), now);
        w.ep.handle_datagram(1, &payload, || Some(admission), now);
        // A fresh one, altered on the way.
        let d = w
            .clients
            .get_mut(&1)
            .unwrap()
            .session
            .poll(now + 2 * TICK_US)
            .pop()
            .expect("an input batch");
        let mut altered = wire::unframe(&d).unwrap().to_vec();
        altered[12] ^= 0x40;
        w.ep.handle_datagram(1, &altered, || Some(admission), now);
        // Sealed under another key (an attacker who saw the token but not the key), with a
        // counter ahead of the client's.
        let mut other = crate::seal::Sealer::new(&[9; 32], Direction::ClientToServer);
        for _ in 0..1_000 {
            other.seal(b"");
        }
        let plain = crate::envelope::encode_client(
            Stamp {
                channel: Channel::Unreliable,
                sequence: 999,
            },
            client_envelope::Body::Goodbye(crate::proto::Goodbye {}),
        );
        w.ep.handle_datagram(1, &other.seal(&plain), || Some(admission), now);
        // The same Goodbye in plaintext.
        w.ep.handle_datagram(1, &plain, || Some(admission), now);
        let c = w.ep.take_counts();
        assert_eq!(c.rejected[Rejection::Replayed as usize], 1);
        assert_eq!(c.rejected[Rejection::Forged as usize], 2);
        assert_eq!(c.rejected[Rejection::Unsealed as usize], 1);
        assert_eq!(w.ep.sessions(), 1, "nothing forged ended the session");
        // The server's datagrams are sealed: a client without the key cannot read them.
        w.run(200_000);
        let sealed = w.log.iter().rev().find(|(p, _)| *p == 1).expect("a datagram").1.clone();
        assert!(is_sealed(&sealed));
        assert!(crate::envelope::decode_server(&sealed).is_err());
    }

    #[test]
    fn the_same_inputs_give_the_same_datagrams() {
        let run = || {
            let mut w = World::new();
            for p in 0..4 {
                w.add(p, 10 + u64::from(p));
            }
            w.run(2_000_000);
            w.log
        };
        assert_eq!(run(), run());
    }
}
