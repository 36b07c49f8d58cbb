//! Captures of changes only (`Zone::capture_changes`), applied in order to a `ZoneMirror`, give
//! exactly the state a whole capture gives, whatever the interval between captures, through
//! joins, fights, deaths, respawns and migrations, with the lists of applied captures recycled
//! into the next ones; and capturing never alters the simulation.

use std::sync::Arc;

use zone_sim::{ScriptedPlayers, Serial, ShardCapture, SpareLists, Zone, ZoneMirror, ZoneSpec, ZoneState};

// A test harness, not the simulation: it may read the zone file.
#[allow(clippy::disallowed_methods)]
fn demo() -> Arc<ZoneSpec> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
    let text = std::fs::read_to_string(path).expect("assets/zones/demo.toml");
    Arc::new(ZoneSpec::from_toml_str(path, &text).expect("demo.toml is valid"))
}

fn whole(zone: &mut Zone) -> ZoneState {
    let mut s = zone.capture(&Serial);
    s.normalize();
    s
}

/// Runs `ticks` ticks with scripted players, capturing changes every `every` ticks into a
/// mirror and checking it against a whole capture each time. Returns the zone and the copies
/// made by the last capture (whole records, positions).
fn run_checked(seed: u64, ticks: u64, every: u64) -> (Zone, (usize, usize)) {
    let mut zone = Zone::new(demo(), seed).unwrap();
    let mut bots = ScriptedPlayers::new(seed, 60);
    let mut mirror = ZoneMirror::new();
    let mut last = (0, 0);
    for t in 1..=ticks {
        bots.drive(&mut zone);
        zone.step(&Serial);
        if t % every == 0 {
            let c = zone.capture_changes(&Serial);
            last = c.copied();
            // As the server does: the applied capture's emptied lists go back to the zone.
            let mut spare = SpareLists::default();
            mirror
                .apply_keeping_lists(c, &mut spare)
                .expect("the mirror applies every capture in order");
            zone.recycle_lists(spare);
            assert_eq!(
                mirror.state().as_ref(),
                Some(&whole(&mut zone)),
                "mirror differs at tick {t} (every {every})"
            );
        }
    }
    (zone, last)
}

#[test]
fn the_mirror_equals_a_whole_capture_at_every_interval() {
    for every in [1, 7, 60] {
        let (zone, _) = run_checked(11, 900, every);
        let totals = zone.totals();
        assert!(
            totals.migrations > 50,
            "the run must move objects between shards (got {})",
            totals.migrations
        );
        assert!(totals.despawns > 0, "the run must despawn objects");
    }
}

#[test]
fn a_capture_of_changes_copies_less_than_a_whole_one() {
    let (mut zone, (records, moved)) = run_checked(3, 600, 60);
    let objects = whole(&mut zone).object_count();
    // Moving NPCs cost nothing (the mirror moves them); only arrivals and changed minds or
    // velocities are whole, and only players that moved unwritten would cost a position.
    assert!(records * 2 < objects, "{records} whole records of {objects} objects");
    assert!(moved <= 60, "{moved} positions: only players may be copied as a position");
}

#[test]
fn capturing_does_not_change_the_simulation() {
    let (mut captured, _) = run_checked(7, 600, 13);
    let mut plain = Zone::new(demo(), 7).unwrap();
    let mut bots = ScriptedPlayers::new(7, 60);
    for _ in 0..600 {
        bots.drive(&mut plain);
        plain.step(&Serial);
    }
    assert_eq!(captured.hash(&Serial), plain.hash(&Serial));
}

#[test]
fn a_lost_capture_is_recovered_by_a_reset() {
    let mut zone = Zone::new(demo(), 9).unwrap();
    let mut bots = ScriptedPlayers::new(9, 60);
    let mut mirror = ZoneMirror::new();
    assert!(mirror.state().is_none(), "an empty mirror has no state");
    for t in 1..=600u64 {
        bots.drive(&mut zone);
        zone.step(&Serial);
        if t % 30 == 0 {
            let c = zone.capture_changes(&Serial);
            if t == 300 {
                // Dropped on the way (a full queue): the sender resets instead.
                drop(c);
                zone.reset_capture();
                continue;
            }
            if t == 330 {
                assert!(c.is_full(), "the capture after a reset is whole");
            } else if t > 30 {
                assert!(c.shards.iter().all(|s| matches!(s, ShardCapture::Changes(_))));
            }
            mirror.apply(c).unwrap();
            assert_eq!(mirror.state().as_ref(), Some(&whole(&mut zone)), "tick {t}");
        }
    }
}

#[test]
fn changes_without_a_base_are_refused() {
    let mut zone = Zone::new(demo(), 1).unwrap();
    zone.step(&Serial);
    let _first = zone.capture_changes(&Serial);
    zone.step(&Serial);
    let second = zone.capture_changes(&Serial);
    let mut mirror = ZoneMirror::new();
    assert!(
        mirror.apply(second).is_err(),
        "a mirror that missed the whole capture must refuse changes"
    );
    assert!(!mirror.is_complete());
}

#[test]
fn a_player_who_leaves_and_rejoins_between_two_captures_is_in_both_lists_and_the_mirror_agrees() {
    let mut zone = Zone::new(demo(), 2).unwrap();
    let mut mirror = ZoneMirror::new();
    zone.join(7).unwrap();
    zone.step(&Serial);
    mirror.apply(zone.capture_changes(&Serial)).unwrap();
    // Leave, then rejoin the next tick: one interval between captures holds both.
    zone.leave(7).unwrap();
    zone.step(&Serial);
    zone.join(7).unwrap();
    zone.step(&Serial);
    zone.step(&Serial);
    let c = zone.capture_changes(&Serial);
    let id = zone_sim::object::player_object_id(7);
    let departed = c
        .shards
        .iter()
        .any(|s| matches!(s, ShardCapture::Changes(ch) if ch.departed.contains(&id)));
    let arrived = c
        .shards
        .iter()
        .any(|s| matches!(s, ShardCapture::Changes(ch) if ch.records.iter().any(|r| r.obj.id == id)));
    assert!(
        departed && arrived,
        "the capture must hold the player as departed ({departed}) and arrived ({arrived})"
    );
    mirror.apply(c).unwrap();
    assert_eq!(mirror.state().as_ref(), Some(&whole(&mut zone)));
    // And one who joins and leaves between two captures leaves no trace.
    zone.join(8).unwrap();
    zone.step(&Serial);
    zone.leave(8).unwrap();
    zone.step(&Serial);
    mirror.apply(zone.capture_changes(&Serial)).unwrap();
    let state = mirror.state().unwrap();
    assert!(
        state
            .shards
            .iter()
            .all(|s| s.objects.iter().all(|r| r.obj.id != zone_sim::object::player_object_id(8)))
    );
    assert_eq!(Some(state), Some(whole(&mut zone)));
}

/// A restored zone captured before its first step: the mirror starts from that whole capture, and
/// the captures of changes after it move the NPCs by the ticks stepped since, not since tick 0.
#[test]
fn a_zone_captured_right_after_a_restore_moves_its_npcs_from_the_restored_tick() {
    let (mut original, _) = run_checked(5, 240, 60);
    let mut state = whole(&mut original);
    state.tick = original.tick();
    let mut zone = Zone::restore(demo(), state).unwrap();
    let mut mirror = ZoneMirror::new();
    let first = zone.capture_changes(&Serial);
    assert!(first.is_full(), "a restored zone's first capture is whole");
    mirror.apply(first).unwrap();
    for t in 1..=120u64 {
        zone.step(&Serial);
        if t % 30 == 0 {
            let c = zone.capture_changes(&Serial);
            assert!(!c.is_full());
            mirror.apply(c).unwrap();
            assert_eq!(mirror.state().as_ref(), Some(&whole(&mut zone)), "{t} ticks after the restore");
        }
    }
}
