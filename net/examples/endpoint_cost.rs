//! The server endpoint's own work per client, without sockets: N real client sessions
//! (`zone_net::client`) and a zone like `assets/zones/demo.toml` (2 km × 2 km, 4 × 4 shards,
//! 10,000 wandering NPCs, 150 m / 128-object interest, 20 Hz snapshots) on a virtual clock. The
//! server's side (what the network thread does besides the socket) runs in three functions that
//! callgrind can count on their own:
//!
//! - `server_inputs`: every datagram a client sends, through `Endpoint::handle_datagram`
//!   (open, decode, acknowledgements, inputs);
//! - `server_frame`: one frame, as the network thread builds it from the Replicate stage's copies
//!   (quantize, sort, locate) and encodes it for every client (interest, delta, protobuf, seal);
//! - `server_timers`: `Endpoint::handle_timeout` (pings, event resends).
//!
//! ```text
//! cargo build --release -p zone-net --example endpoint_cost
//! target/release/examples/endpoint_cost 200 3        # clients, simulated seconds; wall time
//! target/release/examples/endpoint_cost 200 3 4      # ... and the interest refresh (frames; 1 by default)
//! for s in 2 4; do valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*server_frame*' \
//!   --callgrind-out-file=/tmp/cg.frame.$s target/release/examples/endpoint_cost 200 $s; done
//! ```
//!
//! The difference between two durations, divided by the client-frames (or datagrams) in between,
//! is the cost per client-frame (or per datagram), independent of machine load. The output also
//! prints the counts needed for that division.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use zone_net::client::{ClientConfig, ClientSession};
use zone_net::endpoint::{
    Admission, Endpoint, EndpointConfig, EndpointEvent, FrameInput, JoinOutcome, PLAYER_OBJECT_BIT, PlayerId, Sequential,
};
use zone_net::interest::{Located, PosMm, ShardGrid};
use zone_net::proto::Welcome;
use zone_net::view::QObject;
use zone_net::wire;

const TICK_US: u64 = 1_000_000 / 60;
const ZONE_MM: i32 = 2_000_000;
const NPCS: u64 = 10_000;
/// Clients encoded between two reads of the socket, as the server's network thread does.
const ENCODE_CHUNK: usize = 200;

/// A small deterministic generator (the run must be the same every time).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A sim object as the Replicate stage copies it (mm, mm per tick).
#[derive(Clone, Copy)]
struct Obj {
    id: u64,
    kind: u16,
    pos: (i32, i32),
    vel: (i32, i32),
    hp: i32,
}

/// Wandering: a new random velocity now and then (speed up to about 5 m/s), bounced at the edges.
fn step(o: &mut Obj, rng: &mut Lcg) {
    if rng.below(120) == 0 {
        let v = |r: &mut Lcg| r.below(167) as i32 - 83;
        o.vel = (v(rng), v(rng));
    }
    for (p, v) in [(&mut o.pos.0, &mut o.vel.0), (&mut o.pos.1, &mut o.vel.1)] {
        *p += *v;
        if *p < 0 || *p >= ZONE_MM {
            *v = -*v;
            *p = (*p).clamp(0, ZONE_MM - 1);
        }
    }
}

/// The shard (of the 4 × 4 grid in [`config`]) that holds a position.
fn shard_of(pos: (i32, i32)) -> (i32, i32) {
    let cell = ZONE_MM / 4;
    (pos.1.clamp(0, ZONE_MM - 1) / cell, pos.0.clamp(0, ZONE_MM - 1) / cell)
}

fn config(clients: usize, interest_refresh_frames: u32) -> EndpointConfig {
    EndpointConfig {
        max_clients: clients + 16,
        idle_timeout_us: 5_000_000,
        snapshot_rate_hz: 20,
        interest_radius_mm: 150_000,
        interest_max: 128,
        interest_refresh_frames,
        datagrams_per_snapshot_max: 4,
        welcome: Welcome {
            tick_rate_hz: 60,
            snapshot_rate_hz: 20,
            input_lead_ticks_max: 120,
            ..Welcome::default()
        },
        grid: ShardGrid {
            min: PosMm { x_mm: 0, y_mm: 0 },
            max: PosMm {
                x_mm: ZONE_MM,
                y_mm: ZONE_MM,
            },
            cols: 4,
            rows: 4,
        },
    }
}

fn key_of(player: PlayerId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&player.to_le_bytes());
    k
}

#[derive(Default)]
struct Tally {
    datagrams_in: u64,
    client_frames: u64,
    frames: u64,
    inputs: u64,
    in_time: Duration,
    frame_time: Duration,
    timer_time: Duration,
}

#[inline(never)]
fn server_inputs(ep: &mut Endpoint<u32>, peer: u32, datagrams: &[Vec<u8>], admission: Admission, now: u64) {
    for d in datagrams {
        let payload = wire::unframe(d).expect("framed");
        ep.handle_datagram(peer, black_box(payload), || Some(admission), now);
    }
}

/// What the network thread does with one frame (see `server/src/net/worker.rs`).
#[inline(never)]
fn server_frame(ep: &mut Endpoint<u32>, tick: u64, shards: &[Obj], joins: Vec<(PlayerId, u64)>, now: u64) {
    let mut objects: Vec<QObject> = Vec::with_capacity(shards.len());
    let mut located: Vec<Located> = Vec::with_capacity(shards.len());
    let mut players: BTreeMap<u64, PosMm> = BTreeMap::new();
    let mut order: Vec<(u64, u32)> = shards.iter().enumerate().map(|(i, r)| (r.id, i as u32)).collect();
    zone_net::order::sort_by_id(&mut order, &mut Vec::new());
    for r in order.iter().map(|&(_, i)| &shards[i as usize]) {
        objects.push(QObject::quantize(r.id, r.kind, r.pos, r.vel, r.hp, (0, 0)));
        let pos = PosMm {
            x_mm: r.pos.0,
            y_mm: r.pos.1,
        };
        located.push(Located { id: r.id, pos });
        if r.kind == 0 {
            players.insert(r.id, pos);
        }
    }
    let input = FrameInput {
        tick,
        objects,
        located,
        players,
        joins,
        leaves: Vec::new(),
        deaths: Vec::new(),
    };
    ep.begin_frame(input, now);
    while ep.encode_frame(ENCODE_CHUNK, &Sequential) {}
}

#[inline(never)]
fn server_timers(ep: &mut Endpoint<u32>, now: u64) {
    ep.handle_timeout(now);
}

fn main() {
    let clients: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: u64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let mut rng = Lcg(7);
    let refresh: u32 = std::env::args().nth(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let mut ep: Endpoint<u32> = Endpoint::new(config(clients as usize, refresh));
    let mut objs: Vec<Obj> = (1..=NPCS)
        .map(|id| Obj {
            id,
            kind: 1 + (id % 3) as u16,
            pos: (rng.below(ZONE_MM as u64) as i32, rng.below(ZONE_MM as u64) as i32),
            vel: (0, 0),
            hp: 50,
        })
        .collect();
    let mut now = 1_000_000u64;
    let mut sessions: Vec<(PlayerId, ClientSession)> = (0..clients)
        .map(|k| {
            let p = 1 + PlayerId::from(k);
            (p, ClientSession::new(ClientConfig::new("token").with_key(key_of(p)), now))
        })
        .collect();
    let mut in_zone: BTreeMap<PlayerId, usize> = BTreeMap::new();
    let mut joins: Vec<(PlayerId, u64)> = Vec::new();
    let mut t = Tally::default();
    let end = now + seconds * 1_000_000;
    while now < end {
        now += TICK_US;
        let tick = now / TICK_US;
        ep.set_zone_tick(tick);
        for o in &mut objs {
            step(o, &mut rng);
        }
        for (k, (p, s)) in sessions.iter_mut().enumerate() {
            s.set_input(1, 0, false);
            let out = s.poll(now);
            let admission = Admission {
                player: *p,
                key: key_of(*p),
            };
            t.datagrams_in += out.len() as u64;
            let t0 = Instant::now();
            server_inputs(&mut ep, k as u32, &out, admission, now);
            t.in_time += t0.elapsed();
        }
        let t0 = Instant::now();
        server_timers(&mut ep, now);
        t.timer_time += t0.elapsed();
        if tick.is_multiple_of(3) {
            // The Replicate stage hands over its copies shard by shard, so do these (by 4 × 4
            // cell, outside the count). Within a shard they are in id order here; the server's
            // are in bevy's storage order (spawn order, disturbed by despawns and migrations),
            // so its sort has less order to find than this one.
            let mut copies = objs.clone();
            copies.sort_by_key(|o| (shard_of(o.pos), o.id));
            let t0 = Instant::now();
            server_frame(&mut ep, tick, &copies, std::mem::take(&mut joins), now);
            t.frame_time += t0.elapsed();
            t.frames += 1;
            t.client_frames += ep.joined() as u64;
        }
        // Deliver what the endpoint produced; the clients' replies go straight back.
        loop {
            let mut progress = false;
            while let Some(e) = ep.poll_event() {
                progress = true;
                match e {
                    EndpointEvent::Join(p) => {
                        let o = Obj {
                            id: p | PLAYER_OBJECT_BIT,
                            kind: 0,
                            pos: (rng.below(ZONE_MM as u64) as i32, rng.below(ZONE_MM as u64) as i32),
                            vel: (50, 20),
                            hp: 200,
                        };
                        in_zone.insert(p, objs.len());
                        objs.push(o);
                        joins.push((p, tick + 1));
                        ep.handle_join_result(p, JoinOutcome::Accepted, now);
                    }
                    EndpointEvent::Input(_) => t.inputs += 1,
                    EndpointEvent::Leave(_) | EndpointEvent::Forget(_) => {}
                }
            }
            while let Some(tr) = ep.poll_transmit() {
                progress = true;
                let (p, s) = &mut sessions[tr.peer as usize];
                let replies = s.receive(&wire::frame(&tr.payload), now);
                let admission = Admission {
                    player: *p,
                    key: key_of(*p),
                };
                t.datagrams_in += replies.len() as u64;
                let t0 = Instant::now();
                server_inputs(&mut ep, tr.peer, &replies, admission, now);
                t.in_time += t0.elapsed();
            }
            if !progress {
                break;
            }
        }
    }
    let c = ep.take_counts();
    let per = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "clients={clients} joined={} seconds={seconds} frames={} client_frames={} datagrams_in={} inputs={} snapshots_full={} snapshots_delta={} snapshot_bytes={}",
        ep.joined(),
        t.frames,
        t.client_frames,
        t.datagrams_in,
        t.inputs,
        c.snapshots_full,
        c.snapshots_delta,
        c.snapshot_bytes
    );
    println!(
        "wall: frame_us_per_client_frame={:.2} input_us_per_datagram={:.2} timers_us_per_client_second={:.2}",
        per(t.frame_time, t.client_frames),
        per(t.in_time, t.datagrams_in),
        per(t.timer_time, u64::from(clients) * seconds),
    );
}
