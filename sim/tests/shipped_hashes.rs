//! The shipped zones' hashes, pinned. The determinism tests compare runs of the same build with
//! each other, so a change that alters what the simulation does (a skipped NPC, a clamp in the
//! wrong place) passes them; this test does not. The figures are what `zone_hash` and
//! `zone-server --ticks N [--sim-players K]` print (seed 1); fe99b93, before `npc_ai`'s narrow pass,
//! gave the same.
//!
//! A change that alters behaviour on purpose updates them here, with a note in `benchmarks/`
//! saying why (issue 14). A change made for speed must leave them as they are.

use std::sync::Arc;

use zone_sim::{ScriptedPlayers, Serial, Zone, ZoneSpec};

// A test harness, not the simulation: it may read the zone file.
#[allow(clippy::disallowed_methods)]
fn zone_hash(file: &str, ticks: u64, players: u32) -> String {
    let path = format!("{}/../assets/zones/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("a shipped zone file");
    let spec = Arc::new(ZoneSpec::from_toml_str(&path, &text).expect("a valid zone file"));
    let mut zone = Zone::new(spec, 1).expect("zone");
    ScriptedPlayers::new(1, players).play(&mut zone, ticks);
    zone.hash(&Serial).hex()
}

/// NPCs alone: every shard takes `npc_ai`'s narrow pass (only the NPCs due are fetched).
#[test]
fn the_demo_zone_without_players_keeps_its_hash() {
    assert_eq!(zone_hash("demo.toml", 600, 0), "1fc3ccc0f61a8593");
}

/// Scripted players: shards with a player near take the full pass, the others the narrow one.
#[test]
fn the_demo_zone_with_300_players_keeps_its_hash() {
    assert_eq!(zone_hash("demo.toml", 600, 300), "20a8b1738f58d465");
}

/// 100,000 NPCs over 16 shards, many crossing from one shard to another.
#[test]
fn the_large_zone_keeps_its_hash() {
    assert_eq!(zone_hash("large.toml", 240, 0), "148f04629cfa2170");
}
