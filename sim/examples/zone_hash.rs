//! Steps a zone file for N ticks with K scripted players (seed 1), serially, and prints the final
//! zone hash: the same figure as `zone-server --zone Z --ticks N --sim-players K` prints (the
//! thread count does not change it), without building the server. Used to check the shipped
//! zones' hashes before and after a change to the simulation (see `benchmarks/2026-11-29-tick.md`).
//!
//! Run: `cargo run --release -p zone-sim --example zone_hash -- assets/zones/demo.toml 600 300`

use std::sync::Arc;

use zone_sim::{ScriptedPlayers, Serial, Zone, ZoneSpec};

// A harness, not the simulation: it may read the zone file.
#[allow(clippy::disallowed_methods)]
fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: zone_hash ZONE.toml TICKS PLAYERS");
    let ticks: u64 = args.next().map_or(600, |a| a.parse().expect("TICKS: a number"));
    let players: u32 = args.next().map_or(0, |a| a.parse().expect("PLAYERS: a number"));
    let text = std::fs::read_to_string(&path).expect("zone file");
    let spec = Arc::new(ZoneSpec::from_toml_str(&path, &text).expect("valid zone file"));
    let mut zone = Zone::new(spec, 1).expect("zone");
    let mut bots = ScriptedPlayers::new(1, players);
    bots.adopt(&zone);
    bots.play(&mut zone, ticks);
    println!("{path} ticks {ticks} players {players} hash {}", zone.hash(&Serial).hex());
}
