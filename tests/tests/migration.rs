//! Shard migration conserves objects: nothing is lost or duplicated at a border, every object
//! lives in the shard whose cell holds it, and ids never change.

use std::collections::BTreeSet;

use zone_sim::object::Body;
use zone_sim::{Serial, ShardExecutor};
use zone_tests::{Reversed, busy_spec, busy_zone};

#[test]
fn migration_conserves_objects() {
    let spec = busy_spec();
    let mut zone = busy_zone(3);
    let mut bots = zone_sim::ScriptedPlayers::new(3, 20);
    bots.attack_per_mille = 0; // no deaths: the population must stay exactly the same
    let mut migrations = 0u64;
    let mut ids: Option<BTreeSet<u64>> = None;
    for tick in 1..=600u64 {
        bots.drive(&mut zone);
        let exec: &dyn ShardExecutor = if tick % 2 == 0 { &Serial } else { &Reversed };
        zone.step(exec);
        migrations += zone.shard_stats().map(|s| u64::from(s.migrations_out)).sum::<u64>();
        let ins: u64 = zone.shard_stats().map(|s| u64::from(s.migrations_in)).sum();
        let outs: u64 = zone.shard_stats().map(|s| u64::from(s.migrations_out)).sum();
        assert_eq!(ins, outs, "tick {tick}: migrations in and out differ");

        // Every object sits in the shard that owns its position.
        for (i, shard) in zone.shards_mut().iter_mut().enumerate() {
            for rec in shard.objects() {
                assert_eq!(
                    spec.shard_of(rec.pos),
                    i,
                    "tick {tick}: object {} at {:?} is in shard {i}",
                    rec.obj.id,
                    rec.pos
                );
            }
        }
        // NPC ids are conserved once no more players join (players come and go).
        let npc_ids: BTreeSet<u64> = zone
            .objects()
            .into_iter()
            .filter(|r| matches!(r.body, Body::Npc(_)))
            .map(|r| r.obj.id)
            .collect();
        let all = zone.objects();
        let unique: BTreeSet<u64> = all.iter().map(|r| r.obj.id).collect();
        assert_eq!(unique.len(), all.len(), "tick {tick}: duplicate ids");
        match &ids {
            None => ids = Some(npc_ids),
            Some(before) => assert_eq!(before, &npc_ids, "tick {tick}: NPC set changed without deaths"),
        }
    }
    assert!(
        migrations > 500,
        "only {migrations} migrations: the test zone no longer exercises borders"
    );
}

#[test]
fn populations_add_up_with_deaths_and_respawns() {
    let mut zone = busy_zone(11);
    let mut bots = zone_sim::ScriptedPlayers::new(11, 40);
    bots.attack_per_mille = 500;
    let start = zone.object_count() as i64;
    for _ in 0..900 {
        bots.drive(&mut zone);
        zone.step(&Serial);
    }
    let t = zone.totals();
    assert!(t.npc_deaths > 0);
    assert_eq!(zone.object_count() as i64, start + t.spawns as i64 - t.despawns as i64, "{t:?}");
    assert_eq!(zone.object_count(), zone.objects().len());
}
