//! One tick of `assets/zones/large.toml` (100,000 NPCs, 16 shards), serial and on the caller's
//! thread only: the sim crate owns no threads, so the parallel figure comes from
//! `zone-server --ticks N --threads 2` (see README, "Benchmarks").
//!
//! Run: `cargo bench -p zone-sim --bench tick`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use zone_sim::{ScriptedPlayers, Serial, Zone, ZoneSpec};

// The benchmark harness, not the simulation: it may read the zone file (sim/clippy.toml's rule
// is for the library).
#[allow(clippy::disallowed_methods)]
fn large() -> Arc<ZoneSpec> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/large.toml");
    let text = std::fs::read_to_string(path).expect("assets/zones/large.toml");
    Arc::new(ZoneSpec::from_toml_str(path, &text).expect("large.toml is valid"))
}

fn tick_large(c: &mut Criterion) {
    let spec = large();
    let mut g = c.benchmark_group("tick_large");
    g.sample_size(30);

    let mut zone = Zone::new(spec.clone(), 1).unwrap();
    // Warm up past the initial pauses so that most NPCs are moving.
    for _ in 0..120 {
        zone.step(&Serial);
    }
    g.bench_function("step_serial_no_players", |b| b.iter(|| black_box(zone.step(&Serial))));

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
}

criterion_group!(benches, tick_large);
criterion_main!(benches);
