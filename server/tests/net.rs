//! The game socket end to end on loopback: real UDP through laminar and the gate, real join
//! tokens, the tick thread and the network thread, against clients built from `zone-net`'s
//! client session.
//!
//! No assertion depends on timing: the server runs a fixed number of ticks in real time, the
//! clients run for a fixed number of rounds, and the checks are about what arrived, not when.

mod common;

use common::free_udp_port;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zone_net::client::{ClientConfig, ClientSession};
use zone_net::envelope::PROTOCOL_VERSION;
use zone_net::token::JoinGrant;
use zone_net::view::{QObject, View};
use zone_persistence::{JournalReader, Record};
use zone_server::net::NetConfig;
use zone_server::runner::{Hooks, RunConfig, RunOutcome, run};
use zone_sim::{Serial, TickBatch, Zone, ZoneSpec};

const SECRET: &[u8] = b"test-secret";
const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs the demo zone for `ticks` real-time ticks with the game socket on `bind`, in a thread.
fn start_server(bind: SocketAddr, ticks: u64, journal: Option<&Path>) -> std::thread::JoinHandle<RunOutcome> {
    let mut net = NetConfig::new(bind, Some(SECRET.to_vec()), 200);
    net.handshake_rate_per_ip = 1000.0;
    let cfg = RunConfig {
        seed: 5,
        threads: 2,
        journal: journal.map(Path::to_path_buf),
        realtime: true,
        net: Some(net),
        ..RunConfig::headless(ticks)
    };
    let zone = zone_server::zone_load::load_zone(Path::new(DEMO)).unwrap();
    std::thread::spawn(move || run(&cfg, &zone, Hooks::default(), None).unwrap())
}

struct Bot {
    socket: UdpSocket,
    session: ClientSession,
}

impl Bot {
    fn new(server: SocketAddr, grant: JoinGrant, t0: Instant) -> Bot {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(server).unwrap();
        socket.set_nonblocking(true).unwrap();
        let session = ClientSession::new(ClientConfig::sealed(&grant), t0.elapsed().as_micros() as u64);
        Bot { socket, session }
    }

    /// One round: what is due goes out, what arrived comes in.
    fn step(&mut self, t0: Instant) {
        let now = t0.elapsed().as_micros() as u64;
        for d in self.session.poll(now) {
            let _ = self.socket.send(&d);
        }
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let now = t0.elapsed().as_micros() as u64;
            for d in self.session.receive(&buf[..n], now) {
                let _ = self.socket.send(&d);
            }
        }
    }
}

/// Runs `bots` for `rounds` rounds of about 2 ms.
fn drive(bots: &mut [Bot], t0: Instant, rounds: usize) {
    for _ in 0..rounds {
        for b in bots.iter_mut() {
            b.step(t0);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The zone objects at each of `ticks`, quantized as the server sends them, from the journal.
fn server_views(journal: &Path, ticks: &[u64]) -> BTreeMap<u64, BTreeMap<u64, QObject>> {
    let mut reader = JournalReader::open(journal).unwrap();
    let header = reader.header().clone();
    let spec = Arc::new(ZoneSpec::from_toml_str(&header.zone_name, &header.zone_toml).unwrap());
    let origin = (spec.bounds.min.x, spec.bounds.min.y);
    let mut zone = Zone::new(spec, header.seed).unwrap();
    let mut batches = BTreeMap::new();
    while let Some(r) = reader.next_record().unwrap() {
        if let Record::Tick(b) = r {
            batches.insert(b.tick, b);
        }
    }
    let mut out = BTreeMap::new();
    let last = *ticks.iter().max().unwrap();
    while zone.tick() < last {
        let next = zone.tick() + 1;
        let batch = batches.remove(&next).unwrap_or(TickBatch {
            tick: next,
            ..Default::default()
        });
        zone.step_batch(&batch, &Serial).unwrap();
        if ticks.contains(&next) {
            let objs = zone
                .objects()
                .into_iter()
                .map(|r| {
                    let q = QObject::quantize(r.obj.id, r.obj.kind, (r.pos.x, r.pos.y), (r.vel.x, r.vel.y), r.health.hp, origin);
                    (q.id, q)
                })
                .collect();
            out.insert(next, objs);
        }
    }
    out
}

#[test]
fn fifty_bots_join_receive_snapshots_and_see_what_the_server_simulated() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("e2e.zjnl");
    let bind = free_udp_port();
    // 7 s of zone time; the bots run for about 4 s of it.
    let server = start_server(bind, 420, Some(&journal));
    let t0 = Instant::now();
    let mut bots: Vec<Bot> = (0..50)
        .map(|i| Bot::new(bind, grant(1000 + i, "demo", SECRET, now_unix() + 600), t0))
        .collect();
    for (i, b) in bots.iter_mut().enumerate() {
        let a = (i as i32 * 37) % 200 - 100;
        b.session.set_input(a, 100 - a.abs(), false);
    }
    drive(&mut bots, t0, 2000);
    let views: Vec<View> = bots.iter().filter_map(|b| b.session.view().cloned()).collect();
    for b in &bots {
        assert!(b.session.player_id().is_some(), "every bot joined: {:?}", b.session.end_reason());
        // The Welcome asks for the server's default input interval, and the client follows it.
        assert_eq!(
            b.session.welcome().map(|w| w.input_batch_ticks),
            Some(zone_server::net::INPUT_BATCH_TICKS_DEFAULT)
        );
        assert_eq!(b.session.input_batch_ticks(), 3);
    }
    for b in &mut bots {
        let g = b.session.goodbye();
        let _ = b.socket.send(&g);
    }
    let outcome = server.join().unwrap();
    assert_eq!(outcome.ticks_run, 420);

    for b in &bots {
        let st = b.session.stats();
        assert!(st.snapshots_completed > 5, "every bot completed snapshots: {st:?}");
        assert_eq!(st.decode_errors, 0, "{st:?}");
    }
    assert_eq!(views.len(), 50, "every bot holds a view");

    // Every object a bot sees is where the server had it at that tick, to the quantization step:
    // the journal replays the server's run exactly.
    let ticks: Vec<u64> = views.iter().map(View::tick).collect();
    let truth = server_views(&journal, &ticks);
    let mut compared = 0;
    for v in &views {
        let server = &truth[&v.tick()];
        assert!(!v.is_empty(), "a bot's view at tick {} is empty", v.tick());
        for o in v.objects() {
            let s = server
                .get(&o.id)
                .unwrap_or_else(|| panic!("object {} seen at tick {} does not exist there", o.id, v.tick()));
            assert_eq!(o, s, "object {} at tick {}", o.id, v.tick());
            compared += 1;
        }
    }
    assert!(compared > 50 * 20, "compared {compared} objects");
}

/// The zone and the tick thread's end of the game socket, ticked by the test itself.
struct Harness {
    zone: Zone,
    link: zone_server::net::NetLink,
    replicas: zone_server::replica::Replicas,
    /// Clients stepped after every tick (players who carry on while a test does something else).
    bystanders: Vec<Bot>,
    t0: Instant,
}

impl Harness {
    fn start(bind: SocketAddr, max_clients: usize) -> Harness {
        Harness::start_with(bind, max_clients, |_| {})
    }

    fn start_with(bind: SocketAddr, max_clients: usize, tune: impl FnOnce(&mut NetConfig)) -> Harness {
        let loaded = zone_server::zone_load::load_zone(Path::new(DEMO)).unwrap();
        let mut net = NetConfig::new(bind, Some(SECRET.to_vec()), max_clients);
        net.handshake_rate_per_ip = 1000.0;
        tune(&mut net);
        let link = zone_server::net::NetLink::start(net, loaded.spec.clone()).unwrap();
        Harness {
            zone: Zone::new(loaded.spec, 3).unwrap(),
            link,
            replicas: Default::default(),
            bystanders: Vec::new(),
            t0: Instant::now(),
        }
    }

    fn tick(&mut self) {
        let want = self.link.before_step(&mut self.zone);
        self.replicas.request(&mut self.zone, want);
        let batch = self.zone.step(&Serial);
        let copies = self.replicas.take(&mut self.zone);
        self.link.after_step(&self.zone, &batch, copies);
        for b in &mut self.bystanders {
            b.step(self.t0);
        }
    }

    /// Ticks `n` times while `bots` run, about 16 ms apart.
    fn run(&mut self, n: usize, bots: &mut [Bot], t0: Instant) {
        for _ in 0..n {
            self.tick();
            for _ in 0..4 {
                for b in bots.iter_mut() {
                    b.step(t0);
                }
                std::thread::sleep(Duration::from_millis(4));
            }
        }
    }
}

/// A join grant; the entropy is fixed per player (tests only: real minters use OS randomness).
fn grant(player: u64, zone: &str, secret: &[u8], expires: u64) -> JoinGrant {
    zone_net::token::mint(secret, player, zone, expires, [player as u8; 32]).unwrap()
}

fn token(player: u64, zone: &str, secret: &[u8], expires: u64) -> String {
    grant(player, zone, secret, expires).token
}

fn hello(token: &str, version: u32) -> Vec<u8> {
    use zone_net::envelope::{Stamp, encode_client};
    use zone_net::proto::{Channel, Hello, client_envelope};
    let stamp = Stamp {
        channel: Channel::Reliable,
        sequence: 0,
    };
    let mut env = encode_client(
        stamp,
        client_envelope::Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            join_token: token.into(),
            cookie: Vec::new(),
        }),
    );
    if version != PROTOCOL_VERSION {
        // Rewrite the envelope's own version field (field 1, the first byte pair).
        assert_eq!(env[0], 0x08);
        env[1] = version as u8;
    }
    zone_net::wire::frame(&env)
}

/// Sends `d` from `s` and returns every reply that arrives within a short wait.
fn exchange(s: &UdpSocket, d: &[u8], h: &mut Harness) -> Vec<Vec<u8>> {
    s.send(d).unwrap();
    let mut out = Vec::new();
    for _ in 0..5 {
        h.tick();
        std::thread::sleep(Duration::from_millis(4));
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    }
    out
}

/// The reason of a plaintext Reject, whatever its protocol version.
fn reject_reason(d: &[u8]) -> Option<zone_net::proto::RejectReason> {
    use zone_net::proto::server_envelope::Body;
    let env: zone_net::proto::ServerEnvelope = prost::Message::decode(zone_net::wire::unframe(d)?).ok()?;
    match env.body? {
        Body::Reject(r) => zone_net::proto::RejectReason::try_from(r.reason).ok(),
        _ => None,
    }
}

#[test]
fn hostile_datagrams_are_dropped_counted_and_never_amplified() {
    use zone_net::proto::RejectReason;
    use zone_server::net::Rejection;
    let bind = free_udp_port();
    let mut h = Harness::start(bind, 8);
    let t0 = Instant::now();
    // A real player, to show the zone keeps serving while it is attacked.
    let mut good = vec![Bot::new(bind, grant(7, "demo", SECRET, now_unix() + 600), t0)];
    h.run(40, &mut good, t0);
    assert!(good[0].session.is_joined(), "{:?}", good[0].session.end_reason());

    let snapshots_before_attack = good[0].session.stats().snapshots_completed;
    // The real player carries on (inputs, acknowledgements) through the whole attack.
    h.t0 = t0;
    h.bystanders = std::mem::take(&mut good);
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker.connect(bind).unwrap();
    attacker.set_nonblocking(true).unwrap();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sent = 0usize;
    let mut replies = 0usize;
    let mut send = |d: &[u8], h: &mut Harness| {
        sent += d.len();
        let r = exchange(&attacker, d, h);
        let back: usize = r.iter().map(Vec::len).sum();
        assert!(back <= d.len(), "a stranger's {}-byte datagram drew {back} bytes", d.len());
        replies += back;
        r
    };
    // Random bytes, and random bytes in our frame.
    for i in 0..30 {
        let d: Vec<u8> = (0..(next() % 1300) as usize + i % 2).map(|_| next() as u8).collect();
        send(&d, &mut h);
        send(&zone_net::wire::frame(&d), &mut h);
    }
    // Oversized.
    send(&zone_net::wire::frame(&vec![0x55; 3000]), &mut h);
    // A truncated Hello.
    let good_hello = hello(&token(8, "demo", SECRET, now_unix() + 600), PROTOCOL_VERSION);
    send(&good_hello[..good_hello.len() / 2], &mut h);
    // Forged, expired and wrong-zone tokens, a missing token and another protocol version.
    let cases = [
        (
            hello(&token(9, "demo", b"not-the-secret", now_unix() + 600), PROTOCOL_VERSION),
            RejectReason::BadSignature,
        ),
        (
            hello(&token(9, "demo", SECRET, now_unix() - 3600), PROTOCOL_VERSION),
            RejectReason::Expired,
        ),
        (
            hello(&token(9, "elsewhere", SECRET, now_unix() + 600), PROTOCOL_VERSION),
            RejectReason::WrongZone,
        ),
        (hello("", PROTOCOL_VERSION), RejectReason::MissingToken),
        // An old client (protocol 1) is told why, in its own version.
        (hello(&token(9, "demo", SECRET, now_unix() + 600), 1), RejectReason::BadVersion),
    ];
    for (d, want) in &cases {
        let r = send(d, &mut h);
        assert_eq!(
            r.iter().filter_map(|d| reject_reason(d)).collect::<Vec<_>>(),
            vec![*want],
            "reply to a Hello expecting {want:?}"
        );
    }
    // Replayed datagrams: everything the real player sent, again, from its own address (counted
    // as replays: they are sealed) and from the attacker's (not joined).
    // 70 ms on, an input batch is due whatever the interval the Welcome asked for (at most 4 ticks).
    let replay: Vec<Vec<u8>> = (0..3)
        .flat_map(|_| h.bystanders[0].session.poll(t0.elapsed().as_micros() as u64 + 70_000))
        .collect();
    assert!(!replay.is_empty(), "the real player had something to send");
    for d in &replay {
        h.bystanders[0].socket.send(d).unwrap();
        h.bystanders[0].socket.send(d).unwrap();
        send(d, &mut h);
    }
    let mut good = std::mem::take(&mut h.bystanders);
    h.run(30, &mut good, t0);

    let c = h.link.counters();
    for r in [
        Rejection::NotOurProtocol,
        Rejection::Malformed,
        Rejection::Oversized,
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::WrongZone,
        Rejection::MissingToken,
        Rejection::BadVersion,
        Rejection::NotJoined,
        Rejection::Replayed,
    ] {
        assert!(c.rejected(r) > 0, "{} was counted: {:?}", r.label(), c);
    }
    assert!(replies <= sent);
    // The zone kept ticking and the real player kept receiving snapshots.
    // The real player kept receiving snapshots through the attack (the zone ticked about 400
    // times meanwhile: about 130 snapshot ticks at 20 Hz).
    let during = good[0].session.stats().snapshots_completed - snapshots_before_attack;
    assert!(during > 50, "{during} snapshots completed during the attack");
    assert!(good[0].session.is_joined());
    assert!(good[0].session.stats().snapshots_completed > 10, "{:?}", good[0].session.stats());
    assert_eq!(good[0].session.stats().decode_errors, 0);
    h.link.shutdown();
}

#[test]
fn a_second_join_as_the_same_player_replaces_the_first() {
    let bind = free_udp_port();
    let mut h = Harness::start(bind, 8);
    let t0 = Instant::now();
    let mut bots = vec![Bot::new(bind, grant(42, "demo", SECRET, now_unix() + 600), t0)];
    h.run(30, &mut bots, t0);
    assert!(bots[0].session.is_joined());
    bots.push(Bot::new(bind, grant(42, "demo", SECRET, now_unix() + 600), t0));
    h.run(30, &mut bots, t0);
    assert!(
        bots[1].session.is_joined(),
        "the newer connection wins: {:?}",
        bots[1].session.end_reason()
    );
    assert_eq!(
        bots[0].session.end_reason().map(|r| r.label()),
        Some("replaced"),
        "the older one is told why"
    );
    assert_eq!(h.zone.players().len(), 1, "the player is in the zone once");
    h.run(20, &mut bots, t0);
    assert!(bots[1].session.stats().snapshots_completed > 0);
    h.link.shutdown();
}

fn player_ids(zone: &Zone) -> Vec<u64> {
    zone.players().iter().map(|p| p.player).collect()
}

/// A harness whose zone holds `players` (as a restored zone would, with no session for any of
/// them), told to expect them back within `grace`.
fn restored_harness(players: &[u64], grace: Duration) -> (Harness, SocketAddr) {
    let bind = free_udp_port();
    let mut h = Harness::start_with(bind, 8, |n| n.restored_player_grace = grace);
    for &p in players {
        h.zone.join(p).unwrap();
    }
    h.zone.step(&Serial);
    assert_eq!(player_ids(&h.zone), players);
    let tick = h.zone.tick();
    h.link.expect_back(players.iter().copied(), tick);
    (h, bind)
}

#[test]
fn restored_players_that_do_not_join_again_leave_when_the_grace_is_over() {
    // One second: 60 ticks.
    let (mut h, addr) = restored_harness(&[11, 12, 13], Duration::from_secs(1));
    let leave_at = h.zone.tick() + 60;
    let t0 = Instant::now();
    let mut bots = vec![Bot::new(addr, grant(12, "demo", SECRET, now_unix() + 600), t0)];
    h.run(30, &mut bots, t0);
    assert!(
        bots[0].session.is_joined(),
        "player 12 joins again: {:?}",
        bots[0].session.end_reason()
    );
    assert_eq!(h.link.restored_players_waiting(), 2);
    while h.zone.tick() + 1 < leave_at {
        h.run(1, &mut bots, t0);
    }
    assert_eq!(player_ids(&h.zone), [11, 12, 13], "nobody leaves before the grace is over");
    h.run(2, &mut bots, t0);
    assert_eq!(player_ids(&h.zone), [12], "the two that did not come back left; 12 carries on");
    assert_eq!(h.link.restored_players_waiting(), 0);
    assert!(bots[0].session.is_joined());
    h.link.shutdown();
}

#[test]
fn a_join_refused_by_the_drain_does_not_count_as_coming_back() {
    let (mut h, addr) = restored_harness(&[31, 32], Duration::from_secs(60));
    let t0 = Instant::now();
    // Player 31's client gets through the handshake; its join waits for the next tick.
    let mut bot = Bot::new(addr, grant(31, "demo", SECRET, now_unix() + 600), t0);
    let until = Instant::now() + Duration::from_secs(5);
    // (The network thread counts the session, then queues its join, in one pass.)
    while h.link.counters().clients.load(std::sync::atomic::Ordering::Relaxed) == 0 && Instant::now() < until {
        bot.step(t0);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        h.link.counters().clients.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the client never got through the handshake"
    );
    std::thread::sleep(Duration::from_millis(50));
    // The drain starts before that tick: the join is refused, so 31 must leave with 32.
    h.zone.set_draining(true);
    h.tick();
    assert_eq!(
        h.zone.refusals().get(zone_sim::InputRefusal::Draining),
        1,
        "the join reached the zone in that tick, and was refused"
    );
    h.tick();
    assert_eq!(player_ids(&h.zone), Vec::<u64>::new());
    h.link.shutdown();
}

#[test]
fn a_drain_sends_restored_players_away_at_once() {
    let (mut h, _) = restored_harness(&[21, 22], Duration::from_secs(60));
    h.tick();
    assert_eq!(player_ids(&h.zone), [21, 22]);
    // No join is taken while draining, so nobody can come back: the drain need not wait for them.
    h.zone.set_draining(true);
    h.tick();
    assert_eq!(player_ids(&h.zone), Vec::<u64>::new());
    h.link.shutdown();
}

#[test]
fn a_valid_token_from_an_address_that_does_not_answer_the_challenge_joins_nobody() {
    use zone_net::envelope::{Stamp, decode_server, encode_client};
    use zone_net::proto::{Channel, Hello, client_envelope, server_envelope};
    let bind = free_udp_port();
    let mut h = Harness::start(bind, 8);
    let t0 = Instant::now();
    let mut owner = vec![Bot::new(bind, grant(77, "demo", SECRET, now_unix() + 600), t0)];
    h.run(30, &mut owner, t0);
    assert!(owner[0].session.is_joined());

    // Someone else holds player 77's token (sniffed) and sends its Hello from another address.
    let thief = UdpSocket::bind("127.0.0.1:0").unwrap();
    thief.connect(bind).unwrap();
    thief.set_nonblocking(true).unwrap();
    let tok = token(77, "demo", SECRET, now_unix() + 600);
    let first = hello(&tok, PROTOCOL_VERSION);
    let replies = exchange(&thief, &first, &mut h);
    assert_eq!(replies.len(), 1, "one challenge");
    assert!(replies[0].len() <= first.len(), "no amplification");
    let cookie = match decode_server(zone_net::wire::unframe(&replies[0]).unwrap()).unwrap().1 {
        server_envelope::Body::Challenge(c) => c.cookie,
        other => panic!("expected a challenge, got {other:?}"),
    };
    // A cookie made for one address is worthless from another (a spoofed source never sees its own).
    let elsewhere = UdpSocket::bind("127.0.0.1:0").unwrap();
    elsewhere.connect(bind).unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let with_cookie = zone_net::wire::frame(&encode_client(
        Stamp {
            channel: Channel::Reliable,
            sequence: 1,
        },
        client_envelope::Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            join_token: tok.clone(),
            cookie: cookie.clone(),
        }),
    ));
    let r = exchange(&elsewhere, &with_cookie, &mut h);
    assert!(r.iter().all(|d| matches!(
        decode_server(zone_net::wire::unframe(d).unwrap()).unwrap().1,
        server_envelope::Body::Challenge(_)
    )));
    h.run(20, &mut owner, t0);
    assert!(
        owner[0].session.is_joined(),
        "the owner keeps its session: {:?}",
        owner[0].session.end_reason()
    );
    assert_eq!(h.link.counters().replaced.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(h.link.counters().challenges.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    h.link.shutdown();
}
