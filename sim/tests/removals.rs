//! Memory that must not grow with time: bevy_ecs keeps a record of every removed component
//! (despawns, objects migrating to another shard) until `World::clear_trackers`, which a bare
//! `Schedule` never calls. A shard clears it every step, so what is held stays bounded however
//! long the zone runs. (Found by a one-hour soak whose RSS kept climbing.)

use std::sync::Arc;

use zone_sim::{ScriptedPlayers, Serial, Zone, ZoneSpec};

// A test harness, not the simulation: it may read the zone file.
#[allow(clippy::disallowed_methods)]
fn demo() -> Arc<ZoneSpec> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
    let text = std::fs::read_to_string(path).expect("assets/zones/demo.toml");
    Arc::new(ZoneSpec::from_toml_str(path, &text).expect("demo.toml is valid"))
}

fn held(zone: &Zone) -> usize {
    zone.shards().iter().map(|s| s.removals_held()).sum()
}

#[test]
fn removed_component_records_stay_bounded() {
    let mut zone = Zone::new(demo(), 5).unwrap();
    // Players join, fight, die, respawn and cross shard borders: plenty of despawns and migrations.
    let mut bots = ScriptedPlayers::new(5, 60);
    let mut peak_early = 0;
    for t in 0..1_200u64 {
        bots.drive(&mut zone);
        zone.step(&Serial);
        if t < 300 {
            peak_early = peak_early.max(held(&zone));
        }
    }
    let migrations = zone.totals().migrations;
    assert!(migrations > 500, "the run must move objects between shards (got {migrations})");
    let late = held(&zone);
    // Two ticks' worth at most, not the whole run's.
    assert!(
        late <= peak_early.max(64) * 2,
        "removal records grew: {late} held after 1,200 ticks (early peak {peak_early}, {migrations} migrations)"
    );
}
