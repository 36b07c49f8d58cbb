//! One bot: its own UDP socket connected to the server, its own join token, a
//! [`ClientSession`] driven from the socket and the clock, a [`Brain`] choosing its inputs, and
//! its counters fed to the shared [`Live`] totals. Returns a [`BotOutcome`] when the run ends, the
//! server ends the session, a draining notice arrives or the swarm is stopped.
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
    pub seed: u64,
    /// The run's time origin (`now_us` is measured from it).
    pub epoch: Instant,
    /// When every bot leaves.
    pub deadline: Instant,
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

/// The bot's progress through the run, and the counters already published.
struct Tracker {
    joined_at: Option<Instant>,
    at_join: ClientStats,
    published: ClientStats,
    published_at: Instant,
    was_connected: bool,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            joined_at: None,
            at_join: ClientStats::default(),
            published: ClientStats::default(),
            published_at: Instant::now(),
            was_connected: false,
        }
    }

    /// Notes the join; once joined, adds the new counters and RTT samples to `live` (at most
    /// every [`PUBLISH_EVERY`] unless `force`).
    fn publish(&mut self, s: &mut ClientSession, live: &Live, force: bool) {
        if s.is_joined() && self.joined_at.is_none() {
            self.joined_at = Some(Instant::now());
            self.at_join = *s.stats();
            self.was_connected = true;
            Live::add(&live.connected, 1);
        }
        if self.joined_at.is_none() {
            // Live rates are per joined bot: the join handshake's bytes are not counted.
            self.published = *s.stats();
            return;
        }
        if !force && self.published_at.elapsed() < PUBLISH_EVERY {
            return;
        }
        self.published_at = Instant::now();
        let (now, old) = (*s.stats(), self.published);
        Live::add(&live.snapshots, now.snapshots_completed - old.snapshots_completed);
        Live::add(&live.bytes_in, now.bytes_in - old.bytes_in);
        Live::add(&live.bytes_out, now.bytes_out - old.bytes_out);
        Live::add(&live.decode_errors, now.decode_errors - old.decode_errors);
        live.record_rtts(&s.take_rtt_samples_us());
        self.published = now;
    }

    /// The outcome, once the bot has stopped for `stop`.
    fn finish(mut self, s: &mut ClientSession, live: &Live, stop: Stop) -> BotOutcome {
        self.publish(s, live, true);
        if self.was_connected {
            live.connected.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
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
        let (end, start) = (*s.stats(), self.at_join);
        BotOutcome {
            joined: true,
            joined_s: joined_at.elapsed().as_secs_f64(),
            join_failure: None,
            ended_early: reason,
            snapshots: end.snapshots_completed - start.snapshots_completed,
            bytes_in: end.bytes_in - start.bytes_in,
            bytes_out: end.bytes_out - start.bytes_out,
            decode_errors: end.decode_errors,
            missing_baselines: end.missing_baselines,
            events_received: end.events_received,
            duplicate_events: end.duplicate_events,
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

/// Where to connect, with which token and session key, as which player: from the lobby (device
/// login, then a join request or a match, timed), or minted here with the shared secret.
async fn ticket(
    cfg: &SwarmConfig,
    live: &Live,
    n: u64,
) -> Result<(SocketAddr, zone_net::token::JoinGrant, u64, Option<Placed>), &'static str> {
    if let (Some(url), Some(mode)) = (&cfg.lobby, &cfg.match_mode) {
        let mut client = zone_lobby::client::LobbyClient::new(url).map_err(|_| "lobby_url")?;
        let t0 = Instant::now();
        let login = client
            .device_login(&format!("{}{n}", cfg.device_prefix))
            .await
            .map_err(|e| lobby_failure(&e, "lobby_login"))?;
        Live::record_lobby(&live.lobby_login_us, t0.elapsed().as_micros() as u64);
        let m = request_match(cfg, live, &mut client, &login.session_token, mode, n).await?;
        let join = m.join();
        let server = crate::cli::parse_server(&join.addr).map_err(|_| "lobby_bad_addr")?;
        let grant = join.grant().ok_or("lobby_bad_key")?;
        let placed = Placed {
            match_id: m.match_id,
            teams: m.teams.clone(),
            account_id: login.account_id,
        };
        return Ok((server, grant, login.account_id as u64, Some(placed)));
    }
    if let Some(url) = &cfg.lobby {
        let mut client = zone_lobby::client::LobbyClient::new(url).map_err(|_| "lobby_url")?;
        let t0 = Instant::now();
        let login = client
            .device_login(&format!("{}{n}", cfg.device_prefix))
            .await
            .map_err(|e| lobby_failure(&e, "lobby_login"))?;
        Live::record_lobby(&live.lobby_login_us, t0.elapsed().as_micros() as u64);
        let t1 = Instant::now();
        let join = client
            .join(&login.session_token, &cfg.zone_id)
            .await
            .map_err(|e| lobby_failure(&e, "lobby_join"))?;
        Live::record_lobby(&live.lobby_join_us, t1.elapsed().as_micros() as u64);
        let server = crate::cli::parse_server(&join.addr).map_err(|_| "lobby_bad_addr")?;
        let grant = join.grant().ok_or("lobby_bad_key")?;
        return Ok((server, grant, login.account_id as u64, None));
    }
    let server = cfg.server.ok_or("no_server")?;
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires = now_unix.saturating_add(cfg.token_ttl.as_secs().max(1));
    let entropy = os_entropy().ok_or("token_error")?;
    let grant = zone_net::token::mint(&cfg.token_secret, n, &cfg.zone_id, expires, entropy).map_err(|_| "token_error")?;
    Ok((server, grant, n, None))
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

/// A failure label for the report: the step and, when the lobby answered, its status.
fn lobby_failure(e: &zone_lobby::client::ClientError, step: &'static str) -> &'static str {
    match (step, e.status()) {
        ("lobby_login", Some(429)) | ("lobby_join", Some(429)) => "lobby_rate_limited",
        ("lobby_join", Some(409)) => "lobby_no_room",
        ("lobby_join", Some(404)) => "lobby_unknown_zone",
        ("match_request", Some(400)) => "match_bad_request",
        ("match_request", Some(409)) => "match_duplicate",
        ("match_request", Some(429)) => "match_queue_full",
        (_, Some(s)) if s >= 500 => "lobby_unavailable",
        (s, _) => s,
    }
}

/// Runs bot `player_id` from `start_at` until the deadline, a stop or the session's end.
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
    let (server, grant, player_id, placed) = match ticket(&cfg, &live, player_id).await {
        Ok(t) => t,
        Err(why) => return failed(&live, why),
    };
    let socket = match connect(server).await {
        Ok(s) => s,
        Err(_) => return failed(&live, "socket_error"),
    };
    let mut session = ClientSession::new(ClientConfig::sealed(&grant), cfg.now_us());
    let mut brain = Brain::new(cfg.behavior, cfg.seed, player_id);
    let mut tracker = Tracker::new();
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let stop_reason = loop {
        let now = cfg.now_us();
        send_all(&socket, session.poll(now)).await;
        tracker.publish(&mut session, &live, false);
        // Bots only count events (the session does); draining keeps them acknowledged.
        drop(session.take_events());
        if let SessionState::Ended(r) = session.state() {
            break Stop::SessionEnded(r.label().to_owned());
        }
        if session.leave_notice().is_some() {
            break Stop::Notice;
        }
        if Instant::now() >= cfg.deadline {
            break Stop::Deadline;
        }
        if session.is_joined() {
            let m = brain.decide(now, session.view(), session.player_object_id());
            session.set_input(m.x, m.y, m.attack);
        }
        let wake_us = session.next_poll_us().unwrap_or(now).max(now);
        let wake = (cfg.epoch + Duration::from_micros(wake_us))
            .min(Instant::now() + POLL_MAX_WAIT)
            .min(cfg.deadline);
        tokio::select! {
            r = socket.recv(&mut buf) => {
                // Errors (an ICMP "port unreachable" while the server is down) are left to the
                // join timeout.
                if let Ok(n) = r {
                    let replies = session.receive(&buf[..n], cfg.now_us());
                    send_all(&socket, replies).await;
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stopped(&mut stop) => break Stop::Interrupted,
        }
    };
    tracker.publish(&mut session, &live, true);
    if let Some(t) = tracker.joined_at {
        let us = u64::try_from(t.saturating_duration_since(cfg.epoch).as_micros()).unwrap_or(u64::MAX);
        live.last_join_us.fetch_max(us, std::sync::atomic::Ordering::Relaxed);
    }
    if matches!(stop_reason, Stop::Deadline | Stop::Interrupted | Stop::Notice) {
        let goodbyes: Vec<Vec<u8>> = (0..GOODBYES).map(|_| session.goodbye()).collect();
        send_all(&socket, goodbyes).await;
    }
    if let Some(p) = &placed
        && tracker.joined_at.is_some()
    {
        report_result(&cfg, &live, p).await;
    }
    tracker.finish(&mut session, &live, stop_reason)
}

/// 32 bytes of OS randomness for a join grant's key.
fn os_entropy() -> Option<[u8; 32]> {
    use std::io::Read;
    let mut e = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut e)).ok()?;
    Some(e)
}
