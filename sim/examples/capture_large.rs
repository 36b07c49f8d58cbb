//! Snapshot capture cost on the large zone (100,000 NPCs, 16 shards), serially: a whole capture
//! (`Zone::capture`) against a capture of changes only (`Zone::capture_changes`), both taken
//! every 60 ticks (a second of zone time, the server's diff cadence) after a 120-tick warm-up,
//! in alternating order. Prints p50/p99/max of each and what the captures copied.
//!
//! Each capture of changes is applied to a `ZoneMirror` (timed apart: the server does that on its
//! persistence thread), whose emptied lists go back to the zone for the next capture, as the
//! server's persistence worker does.
//!
//! Run: `cargo run --release -p zone-sim --example capture_large -- 60 2` (the number of captures,
//! then the threads the captures run on: 1, or 2 for the shards split in two halves, each on a
//! thread of its own, as the server's pool of two does). A third argument `0` drops the lists
//! instead of recycling them (every capture of changes then fills fresh memory).
//! With `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='capture_large::whole'`
//! (or `'capture_large::changes'`) it counts the instructions of one kind alone.
// A harness, not the simulation: it reads the zone file and the clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zone_sim::{Phase, Serial, Shard, ShardExecutor, SpareLists, Zone, ZoneCapture, ZoneMirror, ZoneSpec, ZoneState};

/// Two threads, half the shards each (threads started per call: a harness, not the server's pool).
struct Halves;

impl ShardExecutor for Halves {
    fn run(&self, _phase: Phase, shards: &mut [Shard], f: &(dyn Fn(&mut Shard) + Sync)) {
        let (a, b) = shards.split_at_mut(shards.len() / 2);
        std::thread::scope(|s| {
            s.spawn(|| a.iter_mut().for_each(f));
            b.iter_mut().for_each(f);
        });
    }
}

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/large.toml");
    let text = std::fs::read_to_string(path).expect("assets/zones/large.toml");
    let spec = Arc::new(ZoneSpec::from_toml_str(path, &text).expect("large.toml is valid"));
    let n: usize = std::env::args().nth(1).map_or(60, |a| a.parse().expect("N: a number of captures"));
    let threads: usize = std::env::args().nth(2).map_or(1, |a| a.parse().expect("threads: 1 or 2"));
    let recycle = std::env::args().nth(3).is_none_or(|a| a != "0");
    assert!(
        n > 0 && (threads == 1 || threads == 2),
        "usage: capture_large N (> 0) [THREADS (1 or 2)] [RECYCLE (1 or 0)]"
    );
    let exec: &dyn ShardExecutor = if threads == 2 { &Halves } else { &Serial };
    let mut zone = Zone::new(spec, 1).expect("zone");
    for _ in 0..120 {
        zone.step(&Serial);
    }
    // The first capture of changes is whole; take it before measuring, as a server does at start.
    let mut mirror = ZoneMirror::new();
    let mut ta = Vec::new();
    let mut apply = |zone: &mut Zone, c: ZoneCapture| {
        let mut spare = SpareLists::default();
        let t0 = Instant::now();
        mirror.apply_keeping_lists(c, &mut spare).expect("captures apply in order");
        ta.push(t0.elapsed());
        if recycle {
            zone.recycle_lists(spare);
        }
    };
    let first = changes(&mut zone, exec);
    apply(&mut zone, first);
    let (mut tw, mut tc) = (Vec::new(), Vec::new());
    let (mut records, mut moved) = (0, 0);
    for i in 0..n {
        for _ in 0..60 {
            zone.step(&Serial);
        }
        let mut time_whole = |zone: &mut Zone| {
            let t0 = Instant::now();
            let s = whole(zone, exec);
            tw.push(t0.elapsed());
            drop(black_box(s));
        };
        if i % 2 == 0 {
            time_whole(&mut zone);
        }
        let t0 = Instant::now();
        let c = changes(&mut zone, exec);
        tc.push(t0.elapsed());
        let (r, m) = c.copied();
        records += r;
        moved += m;
        apply(&mut zone, black_box(c));
        if i % 2 == 1 {
            time_whole(&mut zone);
        }
    }
    let objects = zone.object_count();
    let lists = if recycle { "recycled" } else { "fresh" };
    println!("large zone, {n} captures a second apart, {threads} thread(s), {objects} objects, {lists} lists");
    println!("whole:   {}", summary(&mut tw));
    println!("changes: {}", summary(&mut tc));
    // The first apply is of the whole first capture: leave it out.
    let mut ta = ta.split_off(1);
    println!(
        "mirror apply of a capture of changes (persistence thread, untimed above): {}",
        summary(&mut ta)
    );
    println!(
        "changes copied per capture: {:.0} whole records + {:.0} positions ({:.1}% and {:.1}% of the objects)",
        records as f64 / n as f64,
        moved as f64 / n as f64,
        100.0 * records as f64 / n as f64 / objects as f64,
        100.0 * moved as f64 / n as f64 / objects as f64
    );
}

#[inline(never)]
fn whole(zone: &mut Zone, exec: &dyn ShardExecutor) -> ZoneState {
    zone.capture(exec)
}

#[inline(never)]
fn changes(zone: &mut Zone, exec: &dyn ShardExecutor) -> ZoneCapture {
    zone.capture_changes(exec)
}

fn summary(t: &mut [Duration]) -> String {
    t.sort_unstable();
    let q = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize].as_micros();
    format!("p50 {} us, p99 {} us, max {} us ({} samples)", q(0.5), q(0.99), q(1.0), t.len())
}
