//! One bot: its own UDP socket connected to the server, its own join token, a
//! [`ClientSession`] driven from the socket and the clock, a [`Brain`] choosing its inputs, and
//! its counters fed to the shared [`Live`] totals. Returns a [`BotOutcome`] when the run ends, the
//! server ends the session, a draining notice arrives or the swarm is stopped.
//!
//! With a lobby, a drain is a move, not an end: on a DRAINING notice (or a `draining` reject, or
//! a server gone silent) the bot says Goodbye, asks the lobby again with its session, and
//! connects to the server it is sent to, retrying (lobby answers `no_room`, the same draining
//! server, a refused join) until `rejoin_within` has passed since the notice. The first join
//! request can be asked again too, for `join_wait` (`--join-wait`), but only while the lobby's
//! answer may change by itself (no room or no server yet, rate limited, unavailable).
//!
//! Never blocks a runtime thread (all waits are async) and never panics on what the server
//! sends: every datagram goes through the session, which counts and drops what it cannot use.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use zone_net::client::{ClientConfig, ClientSession, ClientStats, SessionState};

use crate::behavior::{Behavior, Brain};
use crate::report::{BotOutcome, Live};

/// Goodbyes sent when leaving (each is one unreliable datagram).
const GOODBYES: usize = 3;
/// How often a bot adds its counters to the shared totals.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Longest wait between two polls even when nothing is due (the session says when it is).
const POLL_MAX_WAIT: Duration = Duration::from_millis(20);
const RECV_BUFFER_BYTES: usize = 65_536;

/// What every bot of a swarm shares.
#[derive(Debug)]
pub struct SwarmConfig {
    /// The zone server (None with a lobby, which says where to go).
    pub server: Option<SocketAddr>,
    /// A zone-lobby's URL: log in with a device id and ask it for the zone.
    pub lobby: Option<String>,
    pub device_prefix: String,
    pub zone_id: String,
    /// With a lobby: queue for a match in this mode instead of joining `zone_id`.
    pub match_mode: Option<String>,
    pub region: Option<String>,
    /// How long a bot waits for its match.
    pub match_wait: Duration,
    /// The lobby's service key: the bot with the smallest account id of a match reports its result.
    pub service_key: Option<String>,
    pub token_secret: Vec<u8>,
    pub token_ttl: Duration,
    pub behavior: Behavior,
    /// Ticks of input per input datagram ([`ClientConfig::input_batch_ticks`]); `None`: what
    /// the server's Welcome asks for.
    pub input_batch_ticks: Option<u32>,
    pub seed: u64,
    /// The run's time origin (`now_us` is measured from it).
    pub epoch: Instant,
    /// When every bot leaves.
    pub deadline: Instant,
    /// With a lobby: a drained bot must be on another server within this long (None: no moves).
    pub rejoin_within: Option<Duration>,
    /// With a lobby: how long a bot's first join request is asked again while the lobby cannot
    /// place it yet (zero: the first such answer is the bot's join failure).
    pub join_wait: Duration,
}

impl SwarmConfig {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Why a bot stopped.
enum Stop {
    /// The run's duration is over.
    Deadline,
    /// Ctrl-C.
    Interrupted,
    /// The session ended (a reject, the join timeout).
    SessionEnded(String),
    /// A DRAINING or SHUTDOWN notice arrived.
    Notice,
}

/// Counters of the sessions a bot already finished (it has one per server it played on).
#[derive(Clone, Copy, Debug, Default)]
struct Carried {
    snapshots: u64,
    bytes_in: u64,
    bytes_out: u64,
    decode_errors: u64,
    missing_baselines: u64,
    events_received: u64,
    duplicate_events: u64,
}

/// The bot's progress through the run, and the counters already published.
struct Tracker {
    /// The first join.
    joined_at: Option<Instant>,
    /// The current session has joined.
    stint_joined: bool,
    at_join: ClientStats,
    published: ClientStats,
    published_at: Instant,
    carried: Carried,
    moves: u64,
    /// Ticks per input batch of the last session that joined.
    input_batch_ticks: u32,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            joined_at: None,
            stint_joined: false,
            at_join: ClientStats::default(),
            published: ClientStats::default(),
            published_at: Instant::now(),
            carried: Carried::default(),
            moves: 0,
            input_batch_ticks: 0,
        }
    }

    /// Notes the join; once joined, adds the new counters and RTT samples to `live` (at most
    /// every [`PUBLISH_EVERY`] unless `force`).
    fn publish(&mut self, s: &mut ClientSession, live: &Live, now: Instant, force: bool) {
        if s.is_joined() && !self.stint_joined {
            self.stint_joined = true;
            self.joined_at.get_or_insert_with(Instant::now);
            self.at_join = *s.stats();
            self.input_batch_ticks = s.input_batch_ticks();
            Live::add(&live.connected, 1);
        }
        if !self.stint_joined {
            // Live rates are per joined bot: the join handshake's bytes are not counted.
            self.published = *s.stats();
            return;
        }
        if !force && now.saturating_duration_since(self.published_at) < PUBLISH_EVERY {
            return;
        }
        self.published_at = now;
        let (now, old) = (*s.stats(), self.published);
        Live::add(&live.snapshots, now.snapshots_completed - old.snapshots_completed);
        Live::add(&live.bytes_in, now.bytes_in - old.bytes_in);
        Live::add(&live.bytes_out, now.bytes_out - old.bytes_out);
        Live::add(&live.decode_errors, now.decode_errors - old.decode_errors);
        live.record_rtts(&s.take_rtt_samples_us());
        self.published = now;
    }

    /// The session on one server is over: its counters are carried into the bot's totals.
    fn end_stint(&mut self, s: &mut ClientSession, live: &Live) {
        self.publish(s, live, Instant::now(), true);
        if self.stint_joined {
            live.connected.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let (end, start) = (*s.stats(), self.at_join);
            let c = &mut self.carried;
            c.snapshots += end.snapshots_completed - start.snapshots_completed;
            c.bytes_in += end.bytes_in - start.bytes_in;
            c.bytes_out += end.bytes_out - start.bytes_out;
            c.decode_errors += end.decode_errors;
            c.missing_baselines += end.missing_baselines;
            c.events_received += end.events_received;
            c.duplicate_events += end.duplicate_events;
        }
        self.stint_joined = false;
        self.published = ClientStats::default();
    }

    /// The outcome, once the bot has stopped for `stop` (after [`Tracker::end_stint`]).
    fn finish(self, live: &Live, stop: Stop, move_failure: Option<String>) -> BotOutcome {
        let reason = match stop {
            Stop::Deadline => None,
            Stop::Interrupted => Some("interrupted".to_owned()),
            Stop::SessionEnded(r) => Some(r),
            Stop::Notice => Some("draining_notice".to_owned()),
        };
        let Some(joined_at) = self.joined_at else {
            Live::add(&live.failed_joins, 1);
            return BotOutcome {
                join_failure: Some(reason.unwrap_or_else(|| "deadline_before_join".to_owned())),
                ..BotOutcome::default()
            };
        };
        let c = self.carried;
        BotOutcome {
            joined: true,
            joined_s: joined_at.elapsed().as_secs_f64(),
            join_failure: None,
            ended_early: reason,
            snapshots: c.snapshots,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            decode_errors: c.decode_errors,
            missing_baselines: c.missing_baselines,
            events_received: c.events_received,
            duplicate_events: c.duplicate_events,
            moves: self.moves,
            move_failure,
            input_batch_ticks: self.input_batch_ticks,
        }
    }
}

/// A failure before the session could start.
fn failed(live: &Live, why: &str) -> BotOutcome {
    Live::add(&live.failed_joins, 1);
    BotOutcome {
        join_failure: Some(why.to_owned()),
        ..BotOutcome::default()
    }
}

/// A socket connected to `server`, bound to loopback when the server is.
async fn connect(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: IpAddr = match (server.ip().is_loopback(), server.is_ipv4()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv6Addr::LOCALHOST.into(),
        (false, true) => Ipv4Addr::UNSPECIFIED.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(server).await?;
    Ok(socket)
}

/// Sends datagrams, ignoring errors (a refused or dropped datagram is what UDP does; the
/// session's timeouts and counters notice the consequences).
async fn send_all(socket: &UdpSocket, datagrams: Vec<Vec<u8>>) {
    for d in datagrams {
        let _ = socket.send(&d).await;
    }
}

/// Resolves once the swarm is told to stop (never, if the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The match a bot was placed in (with --match), for the result it may report at the end.
struct Placed {
    match_id: i64,
    teams: Vec<Vec<i64>>,
    account_id: i64,
}

/// A long poll: the lobby holds a match request or a ticket wait at most this long.
const LONG_POLL_MS: u64 = 25_000;

/// With --match: asks for a match and waits on the ticket until matched (timed from the request),
/// cancelled, refused, or `match_wait` is over (then cancels).
async fn request_match(
    cfg: &SwarmConfig,
    live: &Live,
    client: &mut zone_lobby::client::LobbyClient,
    token: &str,
    mode: &str,
    n: u64,
) -> Result<zone_lobby::client::MatchedAnswer, &'static str> {
    use zone_lobby::client::{MatchAnswer, MatchOptions};
    let t0 = Instant::now();
    let give_up = t0 + cfg.match_wait;
    let poll_ms = |now: Instant| (give_up.saturating_duration_since(now).as_millis() as u64).min(LONG_POLL_MS);
    let opts = MatchOptions {
        mode: mode.to_owned(),
        region: cfg.region.clone(),
        party: Vec::new(),
        wait_ms: poll_ms(t0),
        request_id: Some(format!("{}{n}-match", cfg.device_prefix)),
    };
    let mut answer = client
        .match_request(token, &opts)
        .await
        .map_err(|e| lobby_failure(&e, "match_request"))?;
    loop {
        match answer {
            MatchAnswer::Matched(m) => {
                Live::record_lobby(&live.match_wait_us, t0.elapsed().as_micros() as u64);
                Live::add(&live.matched, 1);
                return Ok(m);
            }
            MatchAnswer::Cancelled { .. } => return Err("match_cancelled"),
            MatchAnswer::Refused { .. } => return Err("match_refused"),
            MatchAnswer::Waiting { ticket_id, .. } => {
                let now = Instant::now();
                if now >= give_up || now >= cfg.deadline {
                    // Matched in the meantime is fine too: the cancel then answers 409.
                    let _ = client.cancel_ticket(token, ticket_id).await;
                    return Err("match_timeout");
                }
                answer = client
                    .wait_ticket(token, ticket_id, poll_ms(now))
                    .await
                    .map_err(|e| lobby_failure(&e, "match_wait"))?;
            }
        }
    }
}

/// A bot's lobby login, kept for asking again after a drain.
struct LobbyLogin {
    client: zone_lobby::client::LobbyClient,
    session_token: String,
    account_id: u64,
}

/// Logs in to the lobby with the bot's device id (timed).
async fn lobby_login(cfg: &SwarmConfig, url: &str, live: &Live, n: u64) -> Result<LobbyLogin, &'static str> {
    let mut client = zone_lobby::client::LobbyClient::new(url).map_err(|_| "lobby_url")?;
    let t0 = Instant::now();
    let login = client
        .device_login(&format!("{}{n}", cfg.device_prefix))
        .await
        .map_err(|e| lobby_failure(&e, "lobby_login"))?;
    Live::record_lobby(&live.lobby_login_us, t0.elapsed().as_micros() as u64);
    Ok(LobbyLogin {
        client,
        session_token: login.session_token,
        account_id: login.account_id as u64,
    })
}

/// Asks the lobby where to play (timed): the server and the join grant.
async fn lobby_join(
    cfg: &SwarmConfig,
    live: &Live,
    login: &mut LobbyLogin,
) -> Result<(SocketAddr, zone_net::token::JoinGrant), &'static str> {
    let t1 = Instant::now();
    let join = login
        .client
        .join(&login.session_token, &cfg.zone_id)
        .await
        .map_err(|e| lobby_failure(&e, "lobby_join"))?;
    Live::record_lobby(&live.lobby_join_us, t1.elapsed().as_micros() as u64);
    let server = crate::cli::parse_server(&join.addr).map_err(|_| "lobby_bad_addr")?;
    let grant = join.grant().ok_or("lobby_bad_key")?;
    Ok((server, grant))
}

/// Where to connect, with which token and session key, as which player: from the lobby (device
/// login, then a join request, both timed), or minted here with the shared secret.
async fn ticket(
    cfg: &SwarmConfig,
    live: &Live,
    n: u64,
) -> Result<(SocketAddr, zone_net::token::JoinGrant, u64, Option<LobbyLogin>, Option<Placed>), &'static str> {
    if let (Some(url), Some(mode)) = (&cfg.lobby, &cfg.match_mode) {
        // Matched bots do not move after a drain (the lobby would send them to --zone-id, not to
        // their match): no login is kept for a rejoin.
        let mut login = lobby_login(cfg, url, live, n).await?;
        let token = login.session_token.clone();
        let m = request_match(cfg, live, &mut login.client, &token, mode, n).await?;
        let join = m.join();
        let server = crate::cli::parse_server(&join.addr).map_err(|_| "lobby_bad_addr")?;
        let grant = join.grant().ok_or("lobby_bad_key")?;
        let placed = Placed {
            match_id: m.match_id,
            teams: m.teams.clone(),
            account_id: login.account_id as i64,
        };
        return Ok((server, grant, login.account_id, None, Some(placed)));
    }
    if let Some(url) = &cfg.lobby {
        let mut login = lobby_login(cfg, url, live, n).await?;
        let (server, grant) = first_lobby_join(cfg, live, &mut login).await?;
        let id = login.account_id;
        return Ok((server, grant, id, Some(login), None));
    }
    let server = cfg.server.ok_or("no_server")?;
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires = now_unix.saturating_add(cfg.token_ttl.as_secs().max(1));
    let entropy = os_entropy().ok_or("token_error")?;
    let grant = zone_net::token::mint(&cfg.token_secret, n, &cfg.zone_id, expires, entropy).map_err(|_| "token_error")?;
    Ok((server, grant, n, None, None))
}

/// With --match and --service-key: the bot with the smallest account id of its match reports
/// the result once it has played (one rank per team: the winner, chosen from the match id and
/// --seed, ranks 1, every other team 2), so that every match gets at most one report.
async fn report_result(cfg: &SwarmConfig, live: &Live, placed: &Placed) {
    let (Some(url), Some(key)) = (&cfg.lobby, &cfg.service_key) else {
        return;
    };
    let smallest = placed.teams.iter().flatten().min().copied();
    if smallest != Some(placed.account_id) || placed.teams.is_empty() {
        return;
    }
    let winner = ((placed.match_id as u64) ^ cfg.seed) % placed.teams.len() as u64;
    let ranks: Vec<u32> = (0..placed.teams.len() as u64).map(|t| if t == winner { 1 } else { 2 }).collect();
    let ok = match zone_lobby::client::LobbyClient::new(url) {
        Ok(mut c) => c.report_result(key, placed.match_id, &ranks).await.is_ok(),
        Err(_) => false,
    };
    Live::add(if ok { &live.results_reported } else { &live.result_errors }, 1);
}

/// Pauses between requests to the lobby: 100 ms, doubling to 1 s, never past `until`.
struct Backoff {
    pause: Duration,
    until: Instant,
}

impl Backoff {
    fn until(until: Instant) -> Backoff {
        Backoff {
            pause: Duration::from_millis(100),
            until,
        }
    }

    async fn sleep(&mut self) {
        tokio::time::sleep(self.pause.min(self.until.saturating_duration_since(Instant::now()))).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
    }
}

/// Whether the lobby's answer to a join request may change by itself soon: no room yet, no
/// server of the zone yet, too many requests, the lobby briefly unavailable.
fn worth_asking_again(why: &str) -> bool {
    matches!(
        why,
        "lobby_no_room" | "lobby_unknown_zone" | "lobby_rate_limited" | "lobby_unavailable"
    )
}

/// The bot's first join request: [`lobby_join`], asked again with a backoff (100 ms doubling to
/// 1 s, the last pause cut short) while the answer is [`worth_asking_again`] and `join_wait`
/// (cut at the run's deadline) has not passed: the last request is made when it ends. Each
/// retry is counted. With a zero `join_wait` the first answer stands.
async fn first_lobby_join(
    cfg: &SwarmConfig,
    live: &Live,
    login: &mut LobbyLogin,
) -> Result<(SocketAddr, zone_net::token::JoinGrant), &'static str> {
    let until = (Instant::now() + cfg.join_wait).min(cfg.deadline);
    let mut backoff = Backoff::until(until);
    let mut retried = false;
    loop {
        match lobby_join(cfg, live, login).await {
            Err(why) if worth_asking_again(why) && Instant::now() < until => {
                Live::add(&live.lobby_join_retries, 1);
                if !retried {
                    retried = true;
                    Live::add(&live.lobby_join_retried_bots, 1);
                }
                backoff.sleep().await;
            }
            answer => return answer,
        }
    }
}

/// After a drain: asks the lobby again until it names a server other than `left` (the same one
/// is accepted after a few tries: a replacement may reuse its address), with a short backoff on
/// `no_room` and lobby errors, until `until`.
async fn rejoin(
    cfg: &SwarmConfig,
    live: &Live,
    login: &mut LobbyLogin,
    left: SocketAddr,
    until: Instant,
    n: u64,
) -> Result<(SocketAddr, zone_net::token::JoinGrant), String> {
    let mut backoff = Backoff::until(until);
    let mut same = 0;
    let mut last = "rejoin_timeout";
    while Instant::now() < until {
        match lobby_join(cfg, live, login).await {
            Ok((server, grant)) if server != left || same >= 8 => return Ok((server, grant)),
            Ok(_) => {
                same += 1;
                last = "lobby_sent_back_to_the_draining_server";
            }
            Err("lobby_login") | Err("lobby_unauthorized") => {
                // The session lapsed: log in again.
                if let Some(url) = &cfg.lobby
                    && let Ok(l) = lobby_login(cfg, url, live, n).await
                {
                    *login = l;
                }
                last = "lobby_session_lapsed";
            }
            Err(why) => last = why,
        }
        backoff.sleep().await;
    }
    Err(format!("rejoin_failed_{last}"))
}

/// A failure label for the report: the step and, when the lobby answered, its status.
fn lobby_failure(e: &zone_lobby::client::ClientError, step: &'static str) -> &'static str {
    match (step, e.status()) {
        ("lobby_login", Some(429)) | ("lobby_join", Some(429)) => "lobby_rate_limited",
        ("lobby_join", Some(409)) => "lobby_no_room",
        ("lobby_join", Some(404)) => "lobby_unknown_zone",
        ("match_request", Some(400)) => "match_bad_request",
        ("match_request", Some(409)) => "match_duplicate",
        ("match_request", Some(429)) => "match_queue_full",
        (_, Some(401)) => "lobby_unauthorized",
        (_, Some(s)) if s >= 500 => "lobby_unavailable",
        (s, _) => s,
    }
}

/// Whether a stop means the server is going away (so a bot with a lobby moves).
fn drained(stop: &Stop) -> bool {
    match stop {
        Stop::Notice => true,
        Stop::SessionEnded(r) => matches!(r.as_str(), "draining" | "server_silent"),
        Stop::Deadline | Stop::Interrupted => false,
    }
}

/// Runs bot `player_id` from `start_at` until the deadline, a stop or the session's end; with a
/// lobby, moves to another server when its server drains.
pub async fn run_bot(
    cfg: Arc<SwarmConfig>,
    live: Arc<Live>,
    player_id: u64,
    start_at: Instant,
    mut stop: watch::Receiver<bool>,
) -> BotOutcome {
    tokio::select! {
        _ = tokio::time::sleep_until(start_at.into()) => {}
        _ = stopped(&mut stop) => return failed(&live, "interrupted"),
    }
    let n = player_id;
    // A join that waits for room (--join-wait) still ends at a stop. (A match request is not
    // cut short: it cancels its own ticket at the lobby when it gives up.)
    let ticket = if cfg.match_mode.is_some() {
        ticket(&cfg, &live, n).await
    } else {
        tokio::select! {
            t = ticket(&cfg, &live, n) => t,
            _ = stopped(&mut stop) => return failed(&live, "interrupted"),
        }
    };
    let (mut server, grant, player_id, mut login, placed) = match ticket {
        Ok(t) => t,
        Err(why) => return failed(&live, why),
    };
    let mut brain = Brain::new(cfg.behavior, cfg.seed, player_id);
    let mut tracker = Tracker::new();
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let mut grant = grant;
    // While moving: when the drain notice came.
    let mut moving: Option<Instant> = None;
    let mut move_failure: Option<String> = None;
    let (stop_reason, mut session) = 'stints: loop {
        let socket = match connect(server).await {
            Ok(s) => s,
            Err(_) if moving.is_none() => return failed(&live, "socket_error"),
            Err(_) => {
                move_failure = Some("rejoin_failed_socket_error".into());
                break 'stints (
                    Stop::SessionEnded("rejoin_failed".into()),
                    ClientSession::new(ClientConfig::sealed(&grant), cfg.now_us()),
                );
            }
        };
        let mut config = ClientConfig::sealed(&grant);
        config.input_batch_ticks = cfg.input_batch_ticks;
        let mut session = ClientSession::new(config, cfg.now_us());
        // One timer for the whole stint, moved only when the wake time changes: a new `Sleep`
        // per pass registered and removed a timer entry for every datagram received.
        let mut wake_at = cfg.deadline;
        let sleep = tokio::time::sleep_until(wake_at.into());
        tokio::pin!(sleep);
        // Snapshots completed when the brain last decided: it decides again only on a new view
        // or when its heading is due (not on every pass, which read the newest view each time).
        let mut decided_at_snapshots = u64::MAX;
        let stop_reason = loop {
            // One clock read per pass.
            let now_i = Instant::now();
            let now = u64::try_from(now_i.saturating_duration_since(cfg.epoch).as_micros()).unwrap_or(u64::MAX);
            send_all(&socket, session.poll(now)).await;
            tracker.publish(&mut session, &live, now_i, false);
            if let (Some(t), true) = (moving, session.is_joined()) {
                // Moved: from the drain notice to the new server's Welcome.
                live.record_move(t.elapsed());
                tracker.moves += 1;
                moving = None;
            }
            // Bots only count events (the session does); draining keeps them acknowledged.
            drop(session.take_events());
            if let SessionState::Ended(r) = session.state() {
                break Stop::SessionEnded(r.label().to_owned());
            }
            if session.leave_notice().is_some() {
                break Stop::Notice;
            }
            if now_i >= cfg.deadline {
                break Stop::Deadline;
            }
            // Ctrl-C: seen within one pass (a pass waits at most POLL_MAX_WAIT).
            if *stop.borrow() {
                break Stop::Interrupted;
            }
            let completed = session.stats().snapshots_completed;
            if session.is_joined() && (completed != decided_at_snapshots || brain.heading_due(now)) {
                decided_at_snapshots = completed;
                let m = brain.decide(now, session.view(), session.player_object_id());
                session.set_input(m.x, m.y, m.attack);
            }
            let wake_us = session.next_poll_us().unwrap_or(now).max(now);
            let wake = (cfg.epoch + Duration::from_micros(wake_us))
                .min(now_i + POLL_MAX_WAIT)
                .min(cfg.deadline);
            if wake != wake_at {
                wake_at = wake;
                sleep.as_mut().reset(wake.into());
            }
            tokio::select! {
                biased;
                r = socket.recv(&mut buf) => {
                    // Errors (an ICMP "port unreachable" while the server is down) are left to the
                    // join timeout.
                    if let Ok(n) = r {
                        let now = cfg.now_us();
                        let replies = session.receive(&buf[..n], now);
                        send_all(&socket, replies).await;
                        // The rest of a snapshot's datagrams, without another pass.
                        while let Ok(n) = socket.try_recv(&mut buf) {
                            let replies = session.receive(&buf[..n], now);
                            send_all(&socket, replies).await;
                        }
                    }
                }
                _ = &mut sleep => {}
            }
        };
        if matches!(stop_reason, Stop::Deadline | Stop::Interrupted | Stop::Notice) {
            let goodbyes: Vec<Vec<u8>> = (0..GOODBYES).map(|_| session.goodbye()).collect();
            send_all(&socket, goodbyes).await;
        }
        // A drain (or a failed join while moving) sends a bot with a lobby elsewhere.
        let move_now = drained(&stop_reason) || (moving.is_some() && matches!(stop_reason, Stop::SessionEnded(_)));
        let (Some(within), Some(l), true) = (cfg.rejoin_within, login.as_mut(), move_now) else {
            break (stop_reason, session);
        };
        if Instant::now() >= cfg.deadline {
            break (stop_reason, session);
        }
        let since = *moving.get_or_insert_with(Instant::now);
        tracker.end_stint(&mut session, &live);
        let until = (since + within).min(cfg.deadline);
        match rejoin(&cfg, &live, l, server, until, n).await {
            Ok((s, g)) => {
                server = s;
                grant = g;
            }
            Err(why) => {
                move_failure = Some(why.clone());
                break (Stop::SessionEnded(why), session);
            }
        }
    };
    tracker.end_stint(&mut session, &live);
    if let Some(t) = tracker.joined_at {
        let us = u64::try_from(t.saturating_duration_since(cfg.epoch).as_micros()).unwrap_or(u64::MAX);
        live.last_join_us.fetch_max(us, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(p) = &placed
        && tracker.joined_at.is_some()
    {
        report_result(&cfg, &live, p).await;
    }
    tracker.finish(&live, stop_reason, move_failure)
}

/// 32 bytes of OS randomness for a join grant's key.
fn os_entropy() -> Option<[u8; 32]> {
    use std::io::Read;
    let mut e = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut e)).ok()?;
    Some(e)
}
