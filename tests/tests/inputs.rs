//! Hostile and edge-case inputs through the input API: they are refused or capped, never panic,
//! and replay identically.

use zone_sim::{InputRefusal, PlayerInput, Serial};
use zone_tests::busy_zone;

#[test]
fn extreme_move_vectors_are_capped_not_overflowed() {
    let mut zone = busy_zone(2);
    zone.join(7).unwrap();
    zone.step(&Serial);
    let speed = i64::from(zone.spec().player.speed_mm_per_tick);
    for (mx, my) in [(i32::MIN, i32::MIN), (i32::MAX, i32::MIN), (i32::MAX, i32::MAX), (0, i32::MIN)] {
        let before = zone.players()[0].pos;
        zone.submit_input(PlayerInput {
            player: 7,
            tick: zone.tick() + 1,
            move_x: mx,
            move_y: my,
            attack: true,
        })
        .unwrap();
        zone.step(&Serial);
        let after = zone.players()[0].pos;
        assert!(
            after.dist2(before) <= speed * speed + 2,
            "moved {} mm with input ({mx}, {my})",
            after.dist2(before).isqrt()
        );
        let capped: u32 = zone.shard_stats().map(|s| s.inputs_speed_capped).sum();
        assert_eq!(capped, 1);
    }
}

#[test]
fn player_ids_must_be_in_range() {
    let mut zone = busy_zone(2);
    assert_eq!(zone.join(0), Err(InputRefusal::InvalidPlayerId));
    assert_eq!(zone.join(1 << 63), Err(InputRefusal::InvalidPlayerId));
    assert_eq!(zone.join(u64::MAX), Err(InputRefusal::InvalidPlayerId));
    assert_eq!(zone.join((1 << 63) - 1), Ok(()));
    zone.step(&Serial);
    assert_eq!(zone.players().len(), 1);
    assert_eq!(zone.refusals().get(InputRefusal::InvalidPlayerId), 3);
    // A replayed batch with an invalid join is ignored the same way.
    let mut b = zone_sim::TickBatch {
        tick: zone.tick() + 1,
        joins: vec![1 << 63],
        ..Default::default()
    };
    b.canonicalize();
    zone.step_batch(&b, &Serial).unwrap();
    assert_eq!(zone.players().len(), 1);
}

#[test]
fn leaving_and_rejoining_in_one_tick_keeps_the_player() {
    let mut zone = busy_zone(2);
    zone.join(9).unwrap();
    zone.step(&Serial);
    zone.leave(9).unwrap();
    zone.join(9).unwrap();
    let batch = zone.step(&Serial);
    assert_eq!((batch.leaves.as_slice(), batch.joins.as_slice()), (&[9][..], &[9][..]));
    assert_eq!(zone.players().len(), 1, "the rejoin was lost");
    assert_eq!(zone.object_count(), zone.objects().len());
}

#[test]
fn far_future_and_stale_ticks_are_refused() {
    let mut zone = busy_zone(2);
    zone.join(3).unwrap();
    zone.step(&Serial);
    let next = zone.tick() + 1;
    let i = |tick| PlayerInput {
        player: 3,
        tick,
        move_x: 1,
        move_y: 1,
        attack: false,
    };
    assert_eq!(zone.submit_input(i(u64::MAX)), Err(InputRefusal::FutureTick));
    assert_eq!(zone.submit_input(i(0)), Err(InputRefusal::StaleTick));
    assert_eq!(zone.submit_input(i(next)), Ok(()));
    assert!(
        zone.step_batch(
            &zone_sim::TickBatch {
                tick: u64::MAX,
                ..Default::default()
            },
            &Serial
        )
        .is_err()
    );
}
