//! [`ClientSession`]: one player's side of the zone protocol as a pure state machine: the join
//! handshake (Hello retries, Welcome, Reject), input batches with redundancy every k ticks (the
//! server's `Welcome.input_batch_ticks`, or [`ClientConfig::input_batch_ticks`]) and the
//! client's acknowledgements, Ping/Pong round-trip times, per-tick snapshot reassembly onto acked
//! baselines (see [`crate::delta`]), and the reliable, ordered event stream.
//!
//! The caller owns the socket and the clock: it passes every received datagram to
//! [`ClientSession::receive`], calls [`ClientSession::poll`] often (at least at 60 Hz, or at
//! [`ClientSession::next_poll_us`]), and sends every datagram either returns. Time is `now_us`,
//! monotonic microseconds from any epoch.
//!
//! With a session key ([`ClientConfig::with_key`], the key the lobby hands out beside the token),
//! every datagram but the Hello is sealed (see [`crate::seal`]), and once joined only sealed server
//! datagrams are accepted: a forged, replayed or altered one is dropped and counted. Without a key
//! the session speaks plaintext (tests of the codec only; a zone server refuses it).
//!
//! **Never** opens a socket, reads a clock, spawns a thread or panics on received bytes; memory is
//! bounded whatever the server sends (views kept, ticks in progress, parts per tick, queued events
//! and RTT samples all have caps below).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::delta::apply_snapshot;
use crate::envelope::{PROTOCOL_VERSION, ServerDecoder, Stamp, encode_client};
use crate::proto::{
    Channel, Event, EventBatch, Goodbye, Hello, Input, InputBatch, NoticeKind, Ping, Pong, Reject, RejectReason, Snapshot, Welcome,
    client_envelope, event, server_envelope,
};
use crate::seal::{Direction, Opener, SealError, Sealer, is_sealed};
use crate::view::View;
use crate::wire;

/// The simulation rate assumed until a `Welcome` names one (and if it names an absurd one).
pub const TICK_RATE_HZ_DEFAULT: u32 = 60;
/// How long to wait for a `Welcome` before giving up, by default.
pub const JOIN_TIMEOUT_US_DEFAULT: u64 = 10_000_000;
/// Hello resend interval while joining.
pub const HELLO_INTERVAL_US_DEFAULT: u64 = 250_000;
/// Hello resend interval after a `Reject { RATE_LIMITED }`.
pub const HELLO_BACKOFF_US_DEFAULT: u64 = 500_000;
/// Ping interval once joined.
pub const PING_INTERVAL_US_DEFAULT: u64 = 250_000;
/// Inputs carried by each `InputBatch` (the newest ones, oldest first), at one tick per batch;
/// with k ticks per batch ([`ClientSession::input_batch_ticks`]) it carries max(4, 2k).
pub const INPUTS_PER_BATCH: usize = 4;
/// The most ticks of input one batch may plan ([`ClientSession::input_batch_ticks`]).
pub const INPUT_BATCH_TICKS_MAX: u32 = 4;
/// Lead, in ticks, of an input over the estimated server tick, on top of half the RTT.
pub const INPUT_LEAD_TICKS_MIN: u64 = 2;
/// How far past the wanted tick the newest input may be before new inputs are held back.
pub const INPUT_AHEAD_SLACK_TICKS: u64 = 10;
/// Completed views kept as possible baselines.
pub const VIEWS_KEPT: usize = 32;
/// Ticks being reassembled at once; the oldest is dropped beyond this.
pub const TICKS_IN_PROGRESS_MAX: usize = 8;
/// Highest part count accepted for one tick (a view of `VIEW_OBJECTS_MAX` objects needs far fewer).
pub const PARTS_PER_TICK_MAX: u32 = 4_096;
/// Delivered events waiting for [`ClientSession::take_events`]. When full, further events are not
/// acknowledged, so the server resends them later: nothing is lost, the stream just waits.
pub const EVENTS_QUEUED_MAX: usize = 4_096;
/// RTT samples waiting for [`ClientSession::take_rtt_samples_us`]; beyond this the oldest go.
pub const RTT_SAMPLES_MAX: usize = 1_024;

const US_PER_S: u64 = 1_000_000;

/// What a session needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The signed join token (see [`crate::token::mint`]).
    pub join_token: String,
    /// The session key given beside the token ([`crate::token::JoinGrant::key`]); `None` speaks
    /// plaintext.
    pub session_key: Option<[u8; 32]>,
    /// No `Welcome` within this long after [`ClientSession::new`] ends the session.
    pub join_timeout_us: u64,
    pub hello_interval_us: u64,
    pub hello_backoff_us: u64,
    pub ping_interval_us: u64,
    /// A joined session that hears nothing from the server for this long ends
    /// ([`EndReason::ServerSilent`]); the server pings every second, so this means it is gone.
    pub server_silence_timeout_us: u64,
    /// Ticks of input per `InputBatch` datagram, 1 to [`INPUT_BATCH_TICKS_MAX`]; `None` (the
    /// default) takes the server's `Welcome.input_batch_ticks` (1 if it names none). With k, a
    /// batch goes every k ticks and carries an input for each of its k ticks, all from the intent
    /// set when it is sent (the first for the same tick as with 1, so no added delay), plus the
    /// previous batch's inputs as redundancy. It divides the client's sends and the server's
    /// receives by k; the intent is sampled k times less often (with 1: every tick, 60 Hz).
    pub input_batch_ticks: Option<u32>,
}

impl ClientConfig {
    /// A config for a grant from [`crate::token::mint`]: its token and its key.
    pub fn sealed(grant: &crate::token::JoinGrant) -> ClientConfig {
        ClientConfig::new(grant.token.clone()).with_key(grant.key)
    }

    /// Seals the session with `key`.
    pub fn with_key(mut self, key: [u8; 32]) -> ClientConfig {
        self.session_key = Some(key);
        self
    }

    /// A config with the default timings.
    pub fn new(join_token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            join_token: join_token.into(),
            session_key: None,
            join_timeout_us: JOIN_TIMEOUT_US_DEFAULT,
            hello_interval_us: HELLO_INTERVAL_US_DEFAULT,
            hello_backoff_us: HELLO_BACKOFF_US_DEFAULT,
            ping_interval_us: PING_INTERVAL_US_DEFAULT,
            server_silence_timeout_us: 10 * US_PER_S,
            input_batch_ticks: None,
        }
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The server refused the join or closed the session (any reason but `RATE_LIMITED`).
    Rejected { reason: RejectReason, detail: String },
    /// No `Welcome` arrived within [`ClientConfig::join_timeout_us`].
    JoinTimeout,
    /// The caller left with [`ClientSession::goodbye`].
    Left,
    /// Nothing arrived from the server for [`ClientConfig::server_silence_timeout_us`] after joining.
    ServerSilent,
}

impl EndReason {
    /// A short, stable, lowercase label (for reports and metrics): `replaced`, `draining`,
    /// `zone_full`, .., `join_timeout`, `left`.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::Rejected { reason, .. } => reject_label(*reason),
            EndReason::JoinTimeout => "join_timeout",
            EndReason::ServerSilent => "server_silent",
            EndReason::Left => "left",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Rejected { detail, .. } if !detail.is_empty() => write!(f, "rejected: {} ({detail})", self.label()),
            EndReason::Rejected { .. } => write!(f, "rejected: {}", self.label()),
            EndReason::JoinTimeout => write!(f, "no Welcome before the join timeout"),
            EndReason::ServerSilent => write!(f, "the server went silent"),
            EndReason::Left => write!(f, "left"),
        }
    }
}

/// The short label of a reject reason.
pub fn reject_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::Unspecified => "unspecified",
        RejectReason::BadVersion => "bad_version",
        RejectReason::MissingToken => "missing_token",
        RejectReason::BadSignature => "bad_signature",
        RejectReason::Expired => "expired",
        RejectReason::WrongZone => "wrong_zone",
        RejectReason::ZoneFull => "zone_full",
        RejectReason::Draining => "draining",
        RejectReason::RateLimited => "rate_limited",
        RejectReason::Replaced => "replaced",
    }
}

/// Where the session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Sending Hellos, waiting for a Welcome.
    Joining,
    Joined {
        player_id: u64,
    },
    Ended(EndReason),
}

/// Counters since the session started. Byte counts are whole datagrams (frame included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Received datagrams that were not a framed server envelope.
    pub invalid_datagrams: u64,
    /// Sealed datagrams that did not authenticate (forged, altered, or under another key).
    pub forged_datagrams: u64,
    /// Sealed datagrams already received (or too old to tell).
    pub replayed_datagrams: u64,
    /// Plaintext datagrams refused because the session is sealed.
    pub unsealed_datagrams: u64,
    pub hellos_sent: u64,
    pub input_batches_sent: u64,
    pub pings_sent: u64,
    /// Snapshot datagrams received while joined (parts, whatever became of them).
    pub snapshot_datagrams: u64,
    /// Ticks whose every part arrived and applied.
    pub snapshots_completed: u64,
    /// Snapshot datagrams that did not decode or contradicted earlier parts of their tick.
    pub decode_errors: u64,
    /// Delta datagrams whose baseline view this client no longer (or never) held.
    pub missing_baselines: u64,
    /// Snapshot datagrams for ticks not newer than the newest complete one.
    pub stale_snapshot_parts: u64,
    /// Snapshot parts received again after being applied.
    pub duplicate_snapshot_parts: u64,
    /// Events delivered in order (equals the `events_received` acknowledgement).
    pub events_received: u64,
    /// Events received again after delivery.
    pub duplicate_events: u64,
    pub rtt_samples: u64,
}

/// The input the caller currently intends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Intent {
    move_x: i32,
    move_y: i32,
    attack: bool,
}

/// One tick being reassembled from its parts.
#[derive(Debug)]
struct InProgress {
    baseline_tick: u64,
    /// The baseline with every applied part on it.
    view: View,
    applied: BTreeSet<u32>,
    /// The part with `more_follow` unset, once seen.
    last: Option<u32>,
}

impl InProgress {
    fn is_complete(&self) -> bool {
        self.last.is_some_and(|l| self.applied.len() as u64 == u64::from(l) + 1)
    }

    /// Whether part `part` (with `more_follow`) contradicts what was already seen of this tick.
    fn contradicts(&self, part: u32, more_follow: bool) -> bool {
        match self.last {
            Some(l) => part > l || (part == l && more_follow),
            None => !more_follow && self.applied.last().is_some_and(|&a| a > part),
        }
    }
}

/// One player's protocol session. See the module docs for how to drive it.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: SessionState,
    started_us: u64,
    /// When the last well-formed datagram from the server arrived.
    last_heard_us: u64,
    sequence_unreliable: u32,
    sequence_reliable: u32,
    next_hello_us: u64,
    /// The server's cookie from its `Challenge` (empty until one arrives).
    cookie: Vec<u8>,
    hello_interval_us: u64,
    tick_rate_hz: u32,
    snapshot_rate_hz: u32,
    /// Input batch `k` after joining is due at `input_epoch_us + k / tick rate`.
    input_epoch_us: u64,
    inputs_scheduled: u64,
    next_ping_us: u64,
    /// The newest server tick known and when it was learnt: (tick, now_us).
    anchor: (u64, u64),
    intent: Intent,
    inputs: VecDeque<Input>,
    srtt_us: Option<u64>,
    rtt_samples: VecDeque<u64>,
    views: BTreeMap<u64, View>,
    in_progress: BTreeMap<u64, InProgress>,
    snapshot_ack: u64,
    ack_input_tick: u64,
    events_received: u64,
    events: VecDeque<Event>,
    leave_notice: Option<NoticeKind>,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    /// The Welcome, once joined: the zone's bounds, kind table and this player's object id.
    welcome: Option<Welcome>,
    stats: ClientStats,
    /// The last datagram opened, and the decoder that keeps the last snapshot's vectors.
    rx_plain: Vec<u8>,
    decoder: ServerDecoder,
}

impl ClientSession {
    /// A session that will send its first Hello at the first [`poll`](Self::poll).
    pub fn new(config: ClientConfig, now_us: u64) -> ClientSession {
        let hello_interval_us = config.hello_interval_us;
        let sealer = config.session_key.map(|k| Sealer::new(&k, Direction::ClientToServer));
        let opener = config.session_key.map(|k| Opener::new(&k, Direction::ServerToClient));
        ClientSession {
            config,
            state: SessionState::Joining,
            started_us: now_us,
            last_heard_us: now_us,
            sequence_unreliable: 0,
            sequence_reliable: 0,
            next_hello_us: now_us,
            cookie: Vec::new(),
            hello_interval_us,
            tick_rate_hz: TICK_RATE_HZ_DEFAULT,
            snapshot_rate_hz: 0,
            input_epoch_us: 0,
            inputs_scheduled: 0,
            next_ping_us: 0,
            anchor: (0, now_us),
            intent: Intent::default(),
            inputs: VecDeque::with_capacity(INPUTS_PER_BATCH),
            srtt_us: None,
            rtt_samples: VecDeque::new(),
            views: BTreeMap::new(),
            in_progress: BTreeMap::new(),
            snapshot_ack: 0,
            ack_input_tick: 0,
            events_received: 0,
            events: VecDeque::new(),
            leave_notice: None,
            sealer,
            opener,
            welcome: None,
            stats: ClientStats::default(),
            rx_plain: Vec::new(),
            decoder: ServerDecoder::default(),
        }
    }

    /// The datagrams due at `now_us`: a Hello retry while joining; once joined, one input batch
    /// per elapsed tick (catching up at most [`INPUTS_PER_BATCH`] ticks in one batch) and a Ping
    /// every [`ClientConfig::ping_interval_us`]. Also ends the session on the join timeout.
    pub fn poll(&mut self, now_us: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.check_join_timeout(now_us);
        match self.state {
            SessionState::Ended(_) => {}
            SessionState::Joining => {
                if now_us >= self.next_hello_us {
                    self.next_hello_us = now_us.saturating_add(self.hello_interval_us);
                    self.stats.hellos_sent += 1;
                    let hello = client_envelope::Body::Hello(Hello {
                        protocol_version: PROTOCOL_VERSION,
                        join_token: self.config.join_token.clone(),
                        cookie: self.cookie.clone(),
                    });
                    out.push(self.send(Channel::Reliable, hello));
                }
            }
            SessionState::Joined { .. } => {
                if let Some(batch) = self.due_input_batch(now_us) {
                    out.push(batch);
                }
                if now_us >= self.next_ping_us {
                    // A steady cadence; after a stall, one ping and a fresh start.
                    self.next_ping_us = self.next_ping_us.saturating_add(self.config.ping_interval_us);
                    if self.next_ping_us <= now_us {
                        self.next_ping_us = now_us.saturating_add(self.config.ping_interval_us);
                    }
                    self.stats.pings_sent += 1;
                    out.push(self.send(Channel::Unreliable, client_envelope::Body::Ping(Ping { sent_us: now_us })));
                }
            }
        }
        out
    }

    /// When [`poll`](Self::poll) next has something to do (`None` once ended).
    pub fn next_poll_us(&self) -> Option<u64> {
        match self.state {
            SessionState::Ended(_) => None,
            SessionState::Joining => Some(self.next_hello_us.min(self.started_us.saturating_add(self.config.join_timeout_us))),
            SessionState::Joined { .. } => Some(self.input_due_us(self.inputs_scheduled).min(self.next_ping_us)),
        }
    }

    /// Handles one received datagram; returns the replies due at once (a Pong to a server Ping).
    /// Any bytes are accepted: what is not a valid server message is counted and dropped.
    pub fn receive(&mut self, datagram: &[u8], now_us: u64) -> Vec<Vec<u8>> {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        self.check_join_timeout(now_us);
        if matches!(self.state, SessionState::Ended(_)) {
            return Vec::new();
        }
        let Some(payload) = wire::unframe(datagram) else {
            self.stats.invalid_datagrams += 1;
            return Vec::new();
        };
        // The opened bytes and the decoded snapshot go into buffers the session keeps: after the
        // first snapshot, receiving one allocates little more than the view it builds.
        let mut plain = std::mem::take(&mut self.rx_plain);
        let replies = self.receive_payload(payload, &mut plain, now_us);
        self.rx_plain = plain;
        replies
    }

    /// [`receive`](Self::receive) once unframed, opened into `plain`.
    fn receive_payload(&mut self, payload: &[u8], plain: &mut Vec<u8>, now_us: u64) -> Vec<Vec<u8>> {
        let was_sealed = is_sealed(payload);
        let payload: &[u8] = match self.opener.as_mut() {
            Some(o) if was_sealed => match o.open_into(payload, plain) {
                Ok(()) => plain,
                Err(e) => {
                    match e {
                        SealError::Replayed => self.stats.replayed_datagrams += 1,
                        SealError::Forged | SealError::NotSealed => self.stats.forged_datagrams += 1,
                    }
                    return Vec::new();
                }
            },
            _ => payload,
        };
        let Ok((stamp, body)) = self.decoder.decode(payload) else {
            self.stats.invalid_datagrams += 1;
            return Vec::new();
        };
        // A sealed session believes only sealed datagrams, except the handshake's Challenge and
        // Reject before the Welcome (the server cannot seal a refusal of a token it did not accept).
        if self.opener.is_some()
            && !was_sealed
            && !(matches!(self.state, SessionState::Joining)
                && matches!(body, server_envelope::Body::Challenge(_) | server_envelope::Body::Reject(_)))
        {
            self.stats.unsealed_datagrams += 1;
            self.decoder.recycle(body);
            return Vec::new();
        }
        self.last_heard_us = now_us;
        let joined = matches!(self.state, SessionState::Joined { .. });
        if let server_envelope::Body::Snapshot(s) = &body {
            if joined {
                self.on_snapshot(stamp.sequence, s, now_us);
            }
            self.decoder.recycle(body);
            return Vec::new();
        }
        match body {
            server_envelope::Body::Welcome(w) => self.on_welcome(&w, now_us),
            server_envelope::Body::Challenge(c) if matches!(self.state, SessionState::Joining) => {
                // Say Hello again at once, with the cookie (and keep it for the retries).
                self.cookie = c.cookie.into_iter().take(64).collect();
                self.next_hello_us = now_us;
                return self.poll(now_us);
            }
            server_envelope::Body::Reject(r) => self.on_reject(r, now_us),
            server_envelope::Body::Events(b) if joined => self.on_events(b),
            server_envelope::Body::Ping(p) if joined => {
                return vec![self.send(Channel::Unreliable, client_envelope::Body::Pong(Pong { echo_us: p.sent_us }))];
            }
            server_envelope::Body::Pong(p) if joined => self.on_pong(p.echo_us, now_us),
            // A single `Event` is not part of the ordered stream; anything else before the
            // Welcome is premature.
            _ => {}
        }
        Vec::new()
    }

    /// Sets the input sent for every tick from now on: moves in mm per tick, and attack.
    pub fn set_input(&mut self, move_x: i32, move_y: i32, attack: bool) {
        self.intent = Intent { move_x, move_y, attack };
    }

    /// A framed `Goodbye` to send (more than once if losses are likely; each call gives a new
    /// datagram). Ends the session with [`EndReason::Left`] unless it had already ended.
    pub fn goodbye(&mut self) -> Vec<u8> {
        if !matches!(self.state, SessionState::Ended(_)) {
            self.state = SessionState::Ended(EndReason::Left);
        }
        self.send(Channel::Reliable, client_envelope::Body::Goodbye(Goodbye {}))
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    pub fn is_joined(&self) -> bool {
        matches!(self.state, SessionState::Joined { .. })
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        match &self.state {
            SessionState::Ended(r) => Some(r),
            _ => None,
        }
    }

    /// The player id from the Welcome.
    pub fn player_id(&self) -> Option<u64> {
        match self.state {
            SessionState::Joined { player_id } => Some(player_id),
            _ => None,
        }
    }

    /// The id of the player's own object in snapshots (`player_id | 1 << 63`; the Welcome says
    /// so in `object_id`).
    pub fn player_object_id(&self) -> Option<u64> {
        self.player_id().map(|p| p | 1 << 63)
    }

    /// Ticks of input per batch this session sends: [`ClientConfig::input_batch_ticks`] if set,
    /// else the server's `Welcome.input_batch_ticks` (1 before the Welcome, or if it names
    /// none), within 1..=[`INPUT_BATCH_TICKS_MAX`].
    pub fn input_batch_ticks(&self) -> u32 {
        let k = self
            .config
            .input_batch_ticks
            .unwrap_or_else(|| self.welcome.as_ref().map_or(1, |w| w.input_batch_ticks));
        k.clamp(1, INPUT_BATCH_TICKS_MAX)
    }

    /// The Welcome the session joined with: the zone's bounds, its kind table, the input window.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The newest complete view.
    pub fn view(&self) -> Option<&View> {
        self.views.values().next_back()
    }

    /// The newest snapshot tick held completely (0 = none); what the client acknowledges.
    pub fn snapshot_ack(&self) -> u64 {
        self.snapshot_ack
    }

    /// The newest input tick the server says it has applied for this player.
    pub fn ack_input_tick(&self) -> u64 {
        self.ack_input_tick
    }

    /// The tick of the newest input sent (`None` before the first).
    pub fn last_input_tick(&self) -> Option<u64> {
        self.inputs.back().map(|i| i.tick)
    }

    /// The server's tick as estimated at `now_us` (from the newest snapshot tick, or the Welcome).
    pub fn estimated_server_tick(&self, now_us: u64) -> u64 {
        let (tick, at_us) = self.anchor;
        let elapsed_us = now_us.saturating_sub(at_us);
        let ticks = u128::from(elapsed_us) * u128::from(self.tick_rate_hz) / u128::from(US_PER_S);
        tick.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
    }

    /// The simulation and snapshot rates from the Welcome (the default tick rate before it; 0
    /// snapshot rate before it).
    pub fn rates_hz(&self) -> (u32, u32) {
        (self.tick_rate_hz, self.snapshot_rate_hz)
    }

    /// The smoothed round-trip time (1/8 EWMA of the samples), `None` before the first sample.
    pub fn smoothed_rtt_us(&self) -> Option<u64> {
        self.srtt_us
    }

    /// The RTT samples since the last call, oldest first.
    pub fn take_rtt_samples_us(&mut self) -> Vec<u64> {
        self.rtt_samples.drain(..).collect()
    }

    /// The events delivered in order since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// The first `DRAINING` or `SHUTDOWN` notice delivered, if any: the session will end soon.
    pub fn leave_notice(&self) -> Option<NoticeKind> {
        self.leave_notice
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    fn check_join_timeout(&mut self, now_us: u64) {
        if matches!(self.state, SessionState::Joining) && now_us.saturating_sub(self.started_us) >= self.config.join_timeout_us {
            self.state = SessionState::Ended(EndReason::JoinTimeout);
        }
        if matches!(self.state, SessionState::Joined { .. })
            && now_us.saturating_sub(self.last_heard_us) >= self.config.server_silence_timeout_us
        {
            self.state = SessionState::Ended(EndReason::ServerSilent);
        }
    }

    /// Frames one message on `channel`, advancing that channel's sequence, and counts it.
    fn send(&mut self, channel: Channel, body: client_envelope::Body) -> Vec<u8> {
        let counter = match channel {
            Channel::Reliable => &mut self.sequence_reliable,
            _ => &mut self.sequence_unreliable,
        };
        let sequence = *counter;
        *counter = counter.wrapping_add(1);
        let hello = matches!(body, client_envelope::Body::Hello(_));
        let envelope = encode_client(Stamp { channel, sequence }, body);
        let datagram = match self.sealer.as_mut() {
            // The Hello is the one plaintext datagram: the server reads the key from its token.
            Some(s) if !hello => wire::frame(&s.seal(&envelope)),
            _ => wire::frame(&envelope),
        };
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += datagram.len() as u64;
        datagram
    }

    fn input_due_us(&self, k: u64) -> u64 {
        let offset = u128::from(k) * u128::from(US_PER_S) / u128::from(self.tick_rate_hz);
        self.input_epoch_us.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// Ticks of input per batch: the config's, else the Welcome's, within
    /// 1..=[`INPUT_BATCH_TICKS_MAX`].
    fn batch_ticks(&self) -> u64 {
        u64::from(self.input_batch_ticks())
    }

    /// Inputs kept for the next batch: the newest batch's and the previous one's.
    fn inputs_kept(&self) -> usize {
        INPUTS_PER_BATCH.max(2 * self.batch_ticks() as usize)
    }

    /// One input per tick elapsed since the last batch, a batch's k ticks at a time (catching up
    /// at most [`INPUTS_PER_BATCH`] ticks, or one batch; after a longer stall the schedule
    /// restarts from now), and the batch carrying the newest ones.
    fn due_input_batch(&mut self, now_us: u64) -> Option<Vec<u8>> {
        let k = self.batch_ticks();
        let mut new = 0;
        while new < INPUTS_PER_BATCH.max(k as usize) && self.input_due_us(self.inputs_scheduled) <= now_us {
            for _ in 0..k {
                self.push_input(now_us);
            }
            self.inputs_scheduled += k;
            new += k as usize;
        }
        if self.input_due_us(self.inputs_scheduled) <= now_us {
            self.input_epoch_us = now_us;
            self.inputs_scheduled = 1;
        }
        if new == 0 {
            return None;
        }
        self.stats.input_batches_sent += 1;
        let batch = InputBatch {
            inputs: self.inputs.iter().copied().collect(),
            snapshot_ack: self.snapshot_ack,
            events_received: self.events_received,
        };
        Some(self.send(Channel::Unreliable, client_envelope::Body::Inputs(batch)))
    }

    /// Adds the next input: for tick max(previous + 1, estimated server tick + lead). The estimate
    /// comes from snapshots, which are already half a round trip old, and the input needs the
    /// other half to arrive: the lead is a whole RTT in ticks, plus a margin.
    fn push_input(&mut self, now_us: u64) {
        let rtt_ticks = u128::from(self.srtt_us.unwrap_or(0)) * u128::from(self.tick_rate_hz);
        let rtt_ticks = u64::try_from(rtt_ticks.div_ceil(u128::from(US_PER_S))).unwrap_or(u64::MAX);
        let lead = INPUT_LEAD_TICKS_MIN.saturating_add(rtt_ticks);
        let wanted = self.estimated_server_tick(now_us).saturating_add(lead);
        let tick = match self.inputs.back() {
            // Far ahead of where the server is (it fell behind real time, or the RTT dropped):
            // hold this tick's input rather than drift out of the server's input window.
            Some(prev) if prev.tick > wanted.saturating_add(INPUT_AHEAD_SLACK_TICKS) => return,
            Some(prev) => wanted.max(prev.tick.saturating_add(1)),
            None => wanted,
        };
        if self.inputs.len() >= self.inputs_kept() {
            self.inputs.pop_front();
        }
        self.inputs.push_back(Input {
            tick,
            move_x: self.intent.move_x,
            move_y: self.intent.move_y,
            attack: self.intent.attack,
        });
    }

    fn on_welcome(&mut self, w: &Welcome, now_us: u64) {
        if !matches!(self.state, SessionState::Joining) {
            return; // a duplicate (answer to a Hello retry)
        }
        self.state = SessionState::Joined { player_id: w.player_id };
        self.welcome = Some(w.clone());
        self.tick_rate_hz = if (1..=1_000).contains(&w.tick_rate_hz) {
            w.tick_rate_hz
        } else {
            TICK_RATE_HZ_DEFAULT
        };
        self.snapshot_rate_hz = w.snapshot_rate_hz;
        self.anchor = (w.tick, now_us);
        self.input_epoch_us = now_us;
        self.inputs_scheduled = 0;
        self.next_ping_us = now_us;
    }

    fn on_reject(&mut self, r: Reject, now_us: u64) {
        let reason = RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified);
        if reason == RejectReason::RateLimited {
            if matches!(self.state, SessionState::Joining) {
                self.hello_interval_us = self.config.hello_backoff_us;
                self.next_hello_us = now_us.saturating_add(self.hello_interval_us);
            }
            return;
        }
        self.state = SessionState::Ended(EndReason::Rejected { reason, detail: r.detail });
    }

    fn on_pong(&mut self, echo_us: u64, now_us: u64) {
        if echo_us > now_us || echo_us < self.started_us {
            return;
        }
        let sample = now_us - echo_us;
        self.srtt_us = Some(match self.srtt_us {
            None => sample,
            Some(s) => {
                let s = i128::from(s);
                u64::try_from(s + (i128::from(sample) - s) / 8).unwrap_or(sample)
            }
        });
        if self.rtt_samples.len() == RTT_SAMPLES_MAX {
            self.rtt_samples.pop_front();
        }
        self.rtt_samples.push_back(sample);
        self.stats.rtt_samples += 1;
    }

    /// Delivers the events of `b` that continue the stream, in order.
    fn on_events(&mut self, b: EventBatch) {
        for (i, ev) in b.events.into_iter().enumerate() {
            let Some(seq) = b.first_seq.checked_add(i as u64) else { break };
            if seq < self.events_received {
                self.stats.duplicate_events += 1;
                continue;
            }
            if seq > self.events_received || self.events.len() >= EVENTS_QUEUED_MAX {
                break;
            }
            if let Some(event::Kind::Notice(n)) = &ev.kind
                && self.leave_notice.is_none()
                && let Ok(kind @ (NoticeKind::Draining | NoticeKind::Shutdown)) = NoticeKind::try_from(n.kind)
            {
                self.leave_notice = Some(kind);
            }
            self.events.push_back(ev);
            self.events_received += 1;
            self.stats.events_received += 1;
        }
    }

    /// Applies one snapshot part (`s`, already decoded from the envelope whose stamp carried
    /// `sequence`) to its tick in progress; completes the tick when every part is in.
    fn on_snapshot(&mut self, sequence: u32, s: &Snapshot, now_us: u64) {
        self.stats.snapshot_datagrams += 1;
        let (tick, baseline_tick, part) = (s.tick, s.baseline_tick, s.part);
        if tick <= self.snapshot_ack {
            self.stats.stale_snapshot_parts += 1;
            return;
        }
        if (baseline_tick != 0 && baseline_tick >= tick) || part >= PARTS_PER_TICK_MAX {
            self.stats.decode_errors += 1;
            return;
        }
        let base = match self.in_progress.get(&tick) {
            Some(p) if p.baseline_tick != baseline_tick || p.contradicts(part, s.more_follow) => {
                self.stats.decode_errors += 1;
                return;
            }
            Some(p) if p.applied.contains(&part) => {
                self.stats.duplicate_snapshot_parts += 1;
                return;
            }
            Some(p) => Some(&p.view),
            None if baseline_tick == 0 => None,
            None => match self.views.get(&baseline_tick) {
                Some(v) => Some(v),
                None => {
                    self.stats.missing_baselines += 1;
                    return;
                }
            },
        };
        let decoded = match apply_snapshot(base, sequence, s) {
            Ok(d) => d,
            Err(_) => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        self.ack_input_tick = self.ack_input_tick.max(decoded.ack_input_tick);
        if tick > self.anchor.0 {
            self.anchor = (tick, now_us);
        }
        let p = self.in_progress.entry(tick).or_insert_with(|| InProgress {
            baseline_tick,
            view: View::empty(tick),
            applied: BTreeSet::new(),
            last: None,
        });
        p.view = decoded.view;
        p.applied.insert(part);
        if !decoded.more_follow {
            p.last = Some(part);
        }
        if p.is_complete() {
            self.complete(tick);
        } else {
            while self.in_progress.len() > TICKS_IN_PROGRESS_MAX {
                self.in_progress.pop_first();
            }
        }
    }

    /// Tick `tick` has every part: keep its view as a baseline, acknowledge it, and forget older
    /// ticks in progress.
    fn complete(&mut self, tick: u64) {
        let Some(p) = self.in_progress.remove(&tick) else { return };
        self.views.insert(tick, p.view);
        while self.views.len() > VIEWS_KEPT {
            self.views.pop_first();
        }
        self.in_progress.retain(|&t, _| t > tick);
        self.snapshot_ack = tick;
        self.stats.snapshots_completed += 1;
    }
}
