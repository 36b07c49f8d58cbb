//! The game socket end to end on loopback: real UDP through laminar and the gate, real join
//! tokens, the tick thread and the network thread, against clients built from `zone-net`'s
//! client session.
//!
//! No assertion depends on timing: the server runs a fixed number of ticks in real time, the
//! clients run for a fixed number of rounds, and the checks are about what arrived, not when.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zone_net::client::{ClientConfig, ClientSession};
use zone_net::view::{QObject, View};
use zone_persistence::{JournalReader, Record};
use zone_server::net::NetConfig;
use zone_server::runner::{Hooks, RunConfig, RunOutcome, run};
use zone_sim::{Serial, TickBatch, Zone, ZoneSpec};

const SECRET: &[u8] = b"test-secret";
const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");

fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

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
    fn new(server: SocketAddr, token: String, t0: Instant) -> Bot {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(server).unwrap();
        socket.set_nonblocking(true).unwrap();
        let session = ClientSession::new(ClientConfig::new(token), t0.elapsed().as_micros() as u64);
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
        .map(|i| {
            let token = zone_net::token::mint(SECRET, 1000 + i, "demo", now_unix() + 600).unwrap();
            Bot::new(bind, token, t0)
        })
        .collect();
    for (i, b) in bots.iter_mut().enumerate() {
        let a = (i as i32 * 37) % 200 - 100;
        b.session.set_input(a, 100 - a.abs(), false);
    }
    drive(&mut bots, t0, 2000);
    let views: Vec<View> = bots.iter().filter_map(|b| b.session.view().cloned()).collect();
    for b in &bots {
        assert!(b.session.player_id().is_some(), "every bot joined: {:?}", b.session.end_reason());
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
