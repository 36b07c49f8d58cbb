//! NPCs decide only when due (`sim/src/behaviour.rs`), from a cache rebuilt out of the state for
//! newcomers: a capture, restore and replay mid-walk must continue exactly like the uninterrupted
//! run, and the order shards are stepped in must not matter. (The workspace's `zone-tests`
//! determinism suite checks the same across thread counts; this runs with the sim crate alone.)

use std::sync::Arc;

use zone_sim::zone::Phase;
use zone_sim::{ScriptedPlayers, Serial, Shard, ShardExecutor, TickBatch, Zone, ZoneSpec};

// A test harness, not the simulation: it may read the zone file.
#[allow(clippy::disallowed_methods)]
fn demo() -> Arc<ZoneSpec> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
    let text = std::fs::read_to_string(path).expect("assets/zones/demo.toml");
    Arc::new(ZoneSpec::from_toml_str(path, &text).expect("demo.toml is valid"))
}

/// Steps the shards last to first.
struct Reversed;

impl ShardExecutor for Reversed {
    fn run(&self, _phase: Phase, shards: &mut [Shard], f: &(dyn Fn(&mut Shard) + Sync)) {
        for s in shards.iter_mut().rev() {
            f(s);
        }
    }
}

fn drive(zone: &mut Zone, bots: &mut ScriptedPlayers, ticks: u64, exec: &dyn ShardExecutor) -> (Vec<TickBatch>, Vec<u64>) {
    let mut batches = Vec::new();
    let mut hashes = Vec::new();
    for _ in 0..ticks {
        bots.drive(zone);
        batches.push(zone.step(exec));
        hashes.push(zone.hash(&Serial).zone);
    }
    (batches, hashes)
}

#[test]
fn restore_mid_walk_and_shard_order_change_nothing() {
    let spec = demo();
    for (seed, players) in [(3u64, 0u32), (4, 40)] {
        let mut zone = Zone::new(spec.clone(), seed).unwrap();
        let mut bots = ScriptedPlayers::new(seed, players);
        drive(&mut zone, &mut bots, 250, &Serial);
        let state = zone.capture(&Serial);
        let mut other = Zone::new(spec.clone(), seed).unwrap();
        let mut other_bots = ScriptedPlayers::new(seed, players);
        drive(&mut other, &mut other_bots, 250, &Reversed);
        assert_eq!(other.hash(&Serial), zone.hash(&Serial), "shard order changed the state");

        let (batches, hashes) = drive(&mut zone, &mut bots, 400, &Serial);
        let mut restored = Zone::restore(spec.clone(), state).unwrap();
        for (b, h) in batches.iter().zip(&hashes) {
            restored.step_batch(b, &Reversed).unwrap();
            assert_eq!(restored.hash(&Serial).zone, *h, "restored run differs at tick {}", b.tick);
        }
    }
}
