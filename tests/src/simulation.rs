//! The whole-system simulation: one seed drives, on one virtual clock, a real zone (the busy test
//! zone), the server's protocol endpoint ([`zone_net::endpoint::Endpoint`]) and N client sessions
//! ([`zone_net::client::ClientSession`]), joined by a simulated network that drops, duplicates,
//! delays (and so reorders) and corrupts datagrams; a snapshot store that fails on a schedule; and
//! a crash of the zone, restored from the last stored snapshot plus the recorded tick batches.
//!
//! [`run`] checks, and returns an error naming the seed for, any of: a client that did not
//! converge to the server's view, an event delivered twice or out of order, counters that do not
//! balance (datagrams sent = delivered + dropped + still in flight), a restore that does not
//! reproduce the zone's hash, or state beyond its bound. The same seed gives the same
//! [`SimReport::hash`], so a failing seed reproduces exactly (`benchmarks/simulate.sh` runs
//! thousands; `SEED=n cargo test -p zone-tests --test simulation` reruns one).
//!
//! What is not simulated: the gate (its screening is a pure function with its own tests; here
//! every address is admitted with its player's key) and a crash of the network process (the
//! endpoint survives the zone's crash).
//!
//! Pure and single-threaded: no socket, no clock, no thread; every collection is ordered.

use std::collections::BTreeMap;

use zone_net::client::{ClientConfig, ClientSession};
use zone_net::endpoint::{
    Admission, EVENTS_UNACKED_MAX, Endpoint, EndpointConfig, EndpointEvent, FrameInput, JoinOutcome, Sequential, history_len,
};
use zone_net::interest::{Located, PosMm, ShardGrid};
use zone_net::proto::{Event, Welcome, event};
use zone_net::view::QObject;
use zone_net::wire;
use zone_sim::{InputRefusal, PlayerInput, Serial, TickBatch, Zone, ZoneState};

const TICK_US: u64 = 1_000_000 / 60;
/// Snapshot ticks: every 3rd (20 Hz).
const SNAPSHOT_EVERY: u64 = 3;
/// The zone's state is stored every this many ticks (when the store does not fail).
const STORE_EVERY: u64 = 60;
/// Ticks at the end with a perfect network, after which every client must have converged.
const HEAL_TICKS: u64 = 120;

/// (player, tick) pairs: joins, leaves or deaths.
type PlayerEvents = Vec<(u64, u64)>;

/// One simulation's knobs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub clients: u64,
    pub ticks: u64,
    /// Per-mille chances for each datagram.
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub corrupt_per_mille: u64,
    /// Each datagram is delayed 0..=this many ticks (so datagrams overtake each other).
    pub delay_ticks_max: u64,
    /// Every this-many-th store attempt fails (0: never).
    pub store_fails_every: u64,
    /// The zone crashes at this tick and is restored (0: never).
    pub crash_at: u64,
    /// Ticks between the clients' input datagrams, as the server's Welcome asks
    /// (`zone-server --input-batch-ticks`): 3 is its default, 1 every tick.
    pub input_batch_ticks: u32,
}

impl SimConfig {
    /// A lossy network, a failing store and a crash half-way, for `seed`.
    pub fn rough(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            clients: 6,
            ticks: 600,
            drop_per_mille: 100,
            duplicate_per_mille: 50,
            corrupt_per_mille: 20,
            delay_ticks_max: 6,
            store_fails_every: 3,
            // After the third store attempt (tick 180) failed: restored from tick 120.
            crash_at: 200,
            input_batch_ticks: 3,
        }
    }
}

/// What happened, for the caller's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Covers the zone's final hash, every client's final view and every event delivered.
    pub hash: u64,
    pub datagrams_sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub in_flight_max: usize,
    pub events_delivered: u64,
    pub stores_failed: u64,
    pub restored_from_tick: u64,
    pub batches_replayed: u64,
}

/// xorshift64*: the simulation's only source of chance.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// Where a datagram is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    Server { from: u64 },
    Client(u64),
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn key_of(player: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&player.to_le_bytes());
    k[8] = 0xA5;
    k
}

struct Net {
    rng: Rng,
    /// (due tick, arrival order) -> datagram.
    queue: BTreeMap<(u64, u64), (To, Vec<u8>)>,
    order: u64,
    healed: bool,
    report: SimReport,
    drop: u64,
    dup: u64,
    corrupt: u64,
    delay_max: u64,
}

impl Net {
    fn send(&mut self, tick: u64, to: To, mut d: Vec<u8>) {
        self.report.datagrams_sent += 1;
        let copies = if !self.healed && self.rng.chance(self.dup) {
            self.report.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            if !self.healed && self.rng.chance(self.drop) {
                self.report.dropped += 1;
                continue;
            }
            if !self.healed && self.rng.chance(self.corrupt) && !d.is_empty() {
                let at = (self.rng.next() % d.len() as u64) as usize;
                d[at] ^= 1 << (self.rng.next() % 8);
                self.report.corrupted += 1;
            }
            let delay = if self.healed { 0 } else { self.rng.next() % (self.delay_max + 1) };
            self.order += 1;
            self.queue.insert((tick + 1 + delay, self.order), (to, d.clone()));
        }
        self.report.in_flight_max = self.report.in_flight_max.max(self.queue.len());
    }

    fn due(&mut self, tick: u64) -> Vec<(To, Vec<u8>)> {
        let later = self.queue.split_off(&(tick + 1, 0));
        let now = std::mem::replace(&mut self.queue, later);
        self.report.delivered += now.len() as u64;
        now.into_values().collect()
    }
}

/// Runs one simulation; `Err` says which check failed, with the seed.
pub fn run(cfg: &SimConfig) -> Result<SimReport, String> {
    let fail = |what: String| Err(format!("seed {}: {what}", cfg.seed));
    let spec = crate::busy_spec();
    let mut zone = Zone::new(spec.clone(), cfg.seed).map_err(|e| e.to_string())?;
    let b = spec.bounds;
    let origin = (b.min.x, b.min.y);
    let mut ep: Endpoint<u64> = Endpoint::new(EndpointConfig {
        max_clients: 64,
        idle_timeout_us: 5_000_000,
        snapshot_rate_hz: 20,
        interest_radius_mm: 60_000,
        interest_max: 96,
        interest_refresh_frames: 1,
        datagrams_per_snapshot_max: 4,
        welcome: Welcome {
            tick_rate_hz: 60,
            snapshot_rate_hz: 20,
            input_lead_ticks_max: spec.input_lead_ticks_max,
            input_batch_ticks: cfg.input_batch_ticks,
            ..Welcome::default()
        },
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
    });
    let mut net = Net {
        rng: Rng(cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        queue: BTreeMap::new(),
        order: 0,
        healed: false,
        report: SimReport::default(),
        drop: cfg.drop_per_mille,
        dup: cfg.duplicate_per_mille,
        corrupt: cfg.corrupt_per_mille,
        delay_max: cfg.delay_ticks_max,
    };
    // Peers are numbered like their players, 1..=N.
    let mut clients: BTreeMap<u64, ClientSession> = (1..=cfg.clients)
        .map(|p| (p, ClientSession::new(ClientConfig::new("t").with_key(key_of(p)), 0)))
        .collect();
    let mut delivered_events: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    // The server's quantized objects at recent snapshot ticks (for the convergence check).
    let mut served: BTreeMap<u64, BTreeMap<u64, QObject>> = BTreeMap::new();
    let mut stored: Option<ZoneState> = None;
    let mut journal: Vec<TickBatch> = Vec::new();
    let mut store_attempts = 0u64;
    let mut server_in: Vec<(u64, Vec<u8>)> = Vec::new();
    // Player events since the last frame (as `NetLink` keeps them between snapshot ticks).
    let mut pending: (PlayerEvents, PlayerEvents, PlayerEvents) = Default::default();

    for tick in 1..=cfg.ticks {
        let now = tick * TICK_US;
        net.healed = tick + HEAL_TICKS > cfg.ticks;
        // 1. The network delivers what is due.
        for (to, d) in net.due(tick) {
            match to {
                To::Server { from } => server_in.push((from, d)),
                To::Client(p) => {
                    let Some(c) = clients.get_mut(&p) else { continue };
                    for r in c.receive(&d, now) {
                        net.send(tick, To::Server { from: p }, r);
                    }
                }
            }
        }
        for (from, d) in server_in.drain(..) {
            let admission = Admission {
                player: from,
                key: key_of(from),
            };
            match wire::unframe(&d) {
                Some(payload) => ep.handle_datagram(from, payload, || Some(admission), now),
                None => ep.count(zone_net::gate::Rejection::NotOurProtocol),
            }
        }
        // 2. Clients act: a wandering input per player, and whatever is due.
        for (&p, c) in clients.iter_mut() {
            let phase = (tick / 90 + p) % 4;
            let (mx, my) = [(120, 0), (0, 120), (-120, 0), (0, -120)][phase as usize];
            c.set_input(mx, my, (tick + p) % 37 == 0);
            for d in c.poll(now) {
                net.send(tick, To::Server { from: p }, d);
            }
            delivered_events.entry(p).or_default().extend(c.take_events());
        }
        // 3. The endpoint's joins, leaves and inputs reach the zone.
        ep.set_zone_tick(zone.tick());
        while let Some(e) = ep.poll_event() {
            match e {
                EndpointEvent::Join(p) => {
                    let r = match zone.join(p) {
                        Err(InputRefusal::AlreadyJoined) => Ok(()),
                        r => r,
                    };
                    let outcome = match r {
                        Ok(()) => JoinOutcome::Accepted,
                        Err(e) => JoinOutcome::Refused {
                            reason: zone_net::proto::RejectReason::ZoneFull,
                            detail: format!("{e:?}"),
                        },
                    };
                    ep.handle_join_result(p, outcome, now);
                }
                EndpointEvent::Leave(p) => {
                    let _ = zone.leave(p);
                }
                EndpointEvent::Input(i) => {
                    let _ = zone.submit_input(PlayerInput {
                        player: i.player,
                        tick: i.tick,
                        move_x: i.move_x,
                        move_y: i.move_y,
                        attack: i.attack,
                    });
                }
                EndpointEvent::Forget(_) => {}
            }
        }
        // 4. The zone steps; at snapshot ticks the endpoint encodes every client's snapshot.
        let replicate = (zone.tick() + 1).is_multiple_of(SNAPSHOT_EVERY);
        zone.set_replicate(replicate);
        let batch = zone.step(&Serial);
        journal.push(batch.clone());
        ep.set_zone_tick(zone.tick());
        ep.handle_timeout(now);
        let t = zone.tick();
        pending.0.extend(batch.joins.iter().map(|&j| (j, t)));
        pending.1.extend(batch.leaves.iter().map(|&l| (l, t)));
        pending
            .2
            .extend(zone.shard_stats().flat_map(|s| s.dead_players.iter().map(move |&d| (d, t))));
        if replicate {
            let mut objects = Vec::new();
            let mut located = Vec::new();
            let mut players = BTreeMap::new();
            for r in zone.take_replicas().iter().flatten() {
                objects.push(QObject::quantize(
                    r.id,
                    r.kind,
                    (r.pos.x, r.pos.y),
                    (r.vel.x, r.vel.y),
                    r.hp,
                    origin,
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
            served.insert(zone.tick(), objects.iter().map(|o| (o.id, *o)).collect());
            while served.len() > 40 {
                served.pop_first();
            }
            let (joins, leaves, deaths) = std::mem::take(&mut pending);
            ep.begin_frame(
                FrameInput {
                    tick: t,
                    objects,
                    located,
                    players,
                    joins,
                    leaves,
                    deaths,
                },
                now,
            );
            while ep.encode_frame(usize::MAX, &Sequential) {}
        }
        while let Some(t) = ep.poll_transmit() {
            net.send(tick, To::Client(t.peer), wire::frame(&t.payload));
        }
        // 5. The snapshot store, failing on schedule.
        if tick.is_multiple_of(STORE_EVERY) {
            store_attempts += 1;
            if cfg.store_fails_every != 0 && store_attempts.is_multiple_of(cfg.store_fails_every) {
                net.report.stores_failed += 1;
            } else {
                stored = Some(zone.capture(&Serial));
                journal.clear();
            }
        }
        // 6. A crash: the zone is rebuilt from the last stored state and the batches since.
        if tick == cfg.crash_at {
            let before = zone.hash(&Serial);
            let Some(state) = stored.clone() else {
                return fail(format!("no stored state to restore at tick {tick}"));
            };
            let mut restored = Zone::restore(spec.clone(), state).map_err(|e| e.to_string())?;
            net.report.restored_from_tick = restored.tick();
            for b in &journal {
                restored
                    .step_batch(b, &Serial)
                    .map_err(|e| format!("seed {}: replay: {e}", cfg.seed))?;
                net.report.batches_replayed += 1;
            }
            let after = restored.hash(&Serial);
            if after != before {
                return fail(format!(
                    "the restored zone's hash at tick {} differs: {:?}",
                    tick,
                    after.first_difference(&before)
                ));
            }
            zone = restored;
        }
        // 7. Bounds.
        for p in 1..=cfg.clients {
            if let Some(s) = ep.session(&p) {
                if s.views_held() > history_len(20) + 1 {
                    return fail(format!("player {p}'s session holds {} views", s.views_held()));
                }
                if s.events_unacked() > EVENTS_UNACKED_MAX + 1 {
                    return fail(format!("player {p} has {} unacknowledged events", s.events_unacked()));
                }
            }
        }
        let bound = (cfg.clients as usize + 1) * 16 * (cfg.delay_ticks_max as usize + 2);
        if net.queue.len() > bound {
            return fail(format!("{} datagrams in flight (bound {bound})", net.queue.len()));
        }
    }

    // Convergence: every client joined, and its newest view is exactly what the server served.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut hash, &zone.hash(&Serial).zone.to_le_bytes());
    for (&p, c) in &clients {
        let Some(view) = c.view() else {
            return fail(format!("player {p} has no view ({:?})", c.state()));
        };
        let Some(truth) = served.get(&view.tick()) else {
            return fail(format!("player {p}'s newest view is of tick {}, long gone", view.tick()));
        };
        if zone.tick() - view.tick() > 3 * SNAPSHOT_EVERY {
            return fail(format!(
                "player {p}'s newest view is of tick {} at tick {}",
                view.tick(),
                zone.tick()
            ));
        }
        for o in view.objects() {
            if truth.get(&o.id) != Some(o) {
                return fail(format!(
                    "player {p}'s view of object {:#x} at tick {} differs from the server's",
                    o.id,
                    view.tick()
                ));
            }
        }
        if view.get(p | 1 << 63).is_none() {
            return fail(format!("player {p} does not see itself"));
        }
        for o in view.objects() {
            fnv(&mut hash, &o.id.to_le_bytes());
            fnv(&mut hash, &[o.x, o.y].map(u32::to_le_bytes).concat());
        }
        // Events: exactly once, in order. The own Joined comes first and exactly once; the
        // stream's length is what the client acknowledged.
        let evs = &delivered_events[&p];
        let own_joins = evs
            .iter()
            .filter(|e| matches!(&e.kind, Some(event::Kind::Joined(j)) if j.player_id == p))
            .count();
        if own_joins != 1 {
            return fail(format!("player {p} saw its own join {own_joins} times"));
        }
        if evs.len() as u64 != c.stats().events_received {
            return fail(format!(
                "player {p}: {} events delivered, {} counted",
                evs.len(),
                c.stats().events_received
            ));
        }
        net.report.events_delivered += evs.len() as u64;
        for e in evs {
            fnv(&mut hash, &prost::Message::encode_to_vec(e));
        }
    }
    // Counters balance: every datagram sent (and every duplicate) was delivered, dropped or is
    // still in flight.
    let r = &net.report;
    if r.datagrams_sent + r.duplicated != r.delivered + r.dropped + net.queue.len() as u64 {
        return fail(format!(
            "sent {} + duplicated {} != delivered {} + dropped {} + in flight {}",
            r.datagrams_sent,
            r.duplicated,
            r.delivered,
            r.dropped,
            net.queue.len()
        ));
    }
    let mut report = net.report;
    report.hash = hash;
    Ok(report)
}
