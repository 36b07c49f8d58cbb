//! Steps `assets/zones/large.toml` (100,000 NPCs, 16 shards) serially for a warm-up of 120 ticks,
//! then for N more ticks (first argument, default 0), and prints the final zone hash. A second
//! argument, P (default 0), adds P scripted players (`ScriptedPlayers`, seed 1) who join and
//! send input every tick, as `cargo bench`'s `step_serial_200_players` does. Made for
//! `valgrind --tool=callgrind`: the instructions of one tick are
//! `(Ir(N = 20) - Ir(N = 0)) / 20`, which are steady where wall time on a shared machine is not.
//! See `benchmarks/2026-11-29-tick.md`. The N ticks run inside `measured`, so that
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='step_large::measured' ...`
//! profiles them alone.
//!
//! Run: `cargo run --release -p zone-sim --example step_large -- 20 [200]`

use std::sync::Arc;

use zone_sim::{ScriptedPlayers, Serial, Zone, ZoneSpec};

// A harness, not the simulation: it may read the zone file.
#[allow(clippy::disallowed_methods)]
fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/large.toml");
    let text = std::fs::read_to_string(path).expect("assets/zones/large.toml");
    let spec = Arc::new(ZoneSpec::from_toml_str(path, &text).expect("large.toml is valid"));
    let n: u64 = std::env::args().nth(1).map_or(0, |a| a.parse().expect("N: a number of ticks"));
    let players: u32 = std::env::args().nth(2).map_or(0, |a| a.parse().expect("P: a number of players"));
    let mut bots = ScriptedPlayers::new(1, players);
    let mut zone = Zone::new(spec, 1).expect("zone");
    bots.play(&mut zone, 120);
    measured(&mut zone, &mut bots, n);
    println!("tick {} hash {}", zone.tick(), zone.hash(&Serial).hex());
}

/// The N measured ticks (a function of its own, for callgrind's `--toggle-collect`).
#[inline(never)]
fn measured(zone: &mut Zone, bots: &mut ScriptedPlayers, n: u64) {
    bots.play(zone, n);
}
