//! One tick of `assets/zones/large.toml` (100,000 NPCs, 16 shards), serial and on the caller's
//! thread only: the sim crate owns no threads, so the parallel figure comes from
//! `zone-server --ticks N --threads 2` (see README, "Benchmarks").
//!
//! Beside the tick it measures a bare baseline: a plain bevy_ecs `Query<(&mut Pos, &Vel)>` pass
//! that moves the same number of entities, split over the same 16 worlds, so that the tick can be
//! judged against what this machine does in one run (issue 14 aims at tick ≤ 5× bare). At the end
//! it prints `tick/bare` from its own interleaved timing (medians), which does not depend on
//! criterion's output format.
//!
//! Run: `cargo bench -p zone-sim --bench tick`

// A benchmark harness, not the simulation: it times with the clock (sim/clippy.toml's rule is for
// the library).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy_ecs::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use zone_sim::object::{Pos, Vel};
use zone_sim::units::Vec2;
use zone_sim::{ScriptedPlayers, Serial, Zone, ZoneSpec};

// The benchmark harness, not the simulation: it may read the zone file (sim/clippy.toml's rule
// is for the library).
#[allow(clippy::disallowed_methods)]
fn large() -> Arc<ZoneSpec> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/large.toml");
    let text = std::fs::read_to_string(path).expect("assets/zones/large.toml");
    Arc::new(ZoneSpec::from_toml_str(path, &text).expect("large.toml is valid"))
}

/// The bare pass: the zone's own objects' positions and velocities copied into plain worlds (one
/// per shard, nothing but `Pos` and `Vel`), moved by one system each.
struct Bare {
    worlds: Vec<(World, Schedule)>,
    entities: usize,
}

fn bare_move(mut q: Query<(&mut Pos, &Vel)>) {
    for (mut pos, vel) in &mut q {
        pos.0 = pos.0.saturating_add(vel.0);
    }
}

impl Bare {
    fn like(zone: &mut Zone) -> Bare {
        let mut entities = 0;
        let worlds = zone
            .shards_mut()
            .iter_mut()
            .map(|s| {
                let mut w = World::new();
                let objs = s.objects();
                entities += objs.len();
                w.spawn_batch(
                    objs.into_iter()
                        .map(|o| (Pos(o.pos), Vel(if o.vel == Vec2::ZERO { Vec2::new(1, -1) } else { o.vel }))),
                );
                let mut sched = Schedule::default();
                sched.add_systems(bare_move);
                sched.initialize(&mut w).expect("bare schedule");
                (w, sched)
            })
            .collect();
        Bare { worlds, entities }
    }

    fn entities(&self) -> usize {
        self.entities
    }

    fn step(&mut self) {
        for (w, s) in &mut self.worlds {
            s.run(w);
        }
    }
}

fn warmed_zone(spec: &Arc<ZoneSpec>) -> Zone {
    let mut zone = Zone::new(spec.clone(), 1).unwrap();
    // Warm up past the initial pauses so that most NPCs are moving.
    for _ in 0..120 {
        zone.step(&Serial);
    }
    zone
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn tick_large(c: &mut Criterion) {
    let spec = large();
    let mut g = c.benchmark_group("tick_large");
    g.sample_size(30);

    let mut zone = warmed_zone(&spec);
    let mut bare = Bare::like(&mut zone);
    g.bench_function("step_serial_no_players", |b| b.iter(|| black_box(zone.step(&Serial))));
    g.bench_function("bare_move_same_entities", |b| b.iter(|| bare.step()));

    let mut zone = Zone::new(spec.clone(), 1).unwrap();
    let mut bots = ScriptedPlayers::new(1, 200);
    for _ in 0..120 {
        bots.drive(&mut zone);
        zone.step(&Serial);
    }
    g.bench_function("step_serial_200_players", |b| {
        b.iter(|| {
            bots.drive(&mut zone);
            black_box(zone.step(&Serial))
        })
    });

    g.bench_function("hash", |b| b.iter(|| black_box(zone.hash(&Serial))));
    g.finish();

    // The ratio, from interleaved runs on a fresh warmed zone, so that a noisy neighbour hits
    // both sides alike.
    let mut zone = warmed_zone(&spec);
    let mut bare = Bare::like(&mut zone);
    let (mut ticks, mut bares) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        black_box(zone.step(&Serial));
        ticks.push(t.elapsed());
        let t = Instant::now();
        bare.step();
        bares.push(t.elapsed());
    }
    let (t, b) = (median(ticks), median(bares));
    println!(
        "tick_large ratio: tick {:.3} ms (serial, no players) / bare pass {:.3} ms ({} entities, 16 worlds) = {:.1}x  [median of 200 interleaved runs]",
        t.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        bare.entities(),
        t.as_secs_f64() / b.as_secs_f64()
    );
}

criterion_group!(benches, tick_large);
criterion_main!(benches);
