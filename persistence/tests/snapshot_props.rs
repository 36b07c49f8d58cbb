//! Properties of the snapshot codec over random zone states: full and diff round trips, and every
//! truncation and every single-bit flip of an encoding is an error (never a panic, never a quietly
//! different state).

use proptest::prelude::*;
use zone_persistence::snapshot::{self, ObjectPatch, SnapshotBody, SnapshotKind};
use zone_sim::object::{Body, Health, Mind, Npc, Obj, PLAYER_OBJECT_BIT, Player};
use zone_sim::rng::DetRng;
use zone_sim::shard::Mail;
use zone_sim::state::SpawnerPending;
use zone_sim::units::Vec2;
use zone_sim::{ObjectRecord, ShardState, ZoneState};

const DIGEST: [u8; 32] = [7; 32];

fn vec2() -> impl Strategy<Value = Vec2> {
    (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Vec2 { x, y })
}

fn mind() -> impl Strategy<Value = Mind> {
    prop_oneof![
        any::<u64>().prop_map(|until| Mind::Pause { until }),
        vec2().prop_map(|to| Mind::Goto { to }),
        any::<u8>().prop_map(|leg| Mind::Patrol { leg }),
        any::<u64>().prop_map(|player| Mind::Chase { player }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u32>(), vec2(), mind(), any::<u64>(), any::<u64>()).prop_map(|(spawner, home, mind, rng, ready_at)| Body::Npc(Npc {
            spawner,
            home,
            mind,
            rng: DetRng { state: rng },
            ready_at
        })),
        (
            any::<u64>(),
            vec2(),
            any::<bool>(),
            any::<u64>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(player, wish, attack, ready_at, respawn_at)| Body::Player(Player {
                player,
                wish,
                attack,
                ready_at,
                respawn_at
            })),
    ]
}

/// Object ids from a small range (so that two random states share many), some with the player
/// bit set.
fn object_id() -> impl Strategy<Value = u64> {
    (0u64..40, any::<bool>()).prop_map(|(id, player)| if player { id | PLAYER_OBJECT_BIT } else { id })
}

fn record(id: u64) -> impl Strategy<Value = ObjectRecord> {
    (any::<u16>(), vec2(), vec2(), any::<i32>(), any::<i32>(), body()).prop_map(move |(kind, pos, vel, hp, max, body)| ObjectRecord {
        obj: Obj { id, kind },
        pos,
        vel,
        health: Health { hp, max },
        body,
    })
}

fn objects() -> impl Strategy<Value = Vec<ObjectRecord>> {
    proptest::collection::btree_set(object_id(), 0..10).prop_flat_map(|ids| ids.into_iter().map(record).collect::<Vec<_>>())
}

fn mail() -> impl Strategy<Value = Mail> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<i32>()).prop_map(|(target, source, amount)| Mail::Damage { target, source, amount }),
        any::<u32>().prop_map(|spawner| Mail::Died { spawner }),
    ]
}

fn spawner() -> impl Strategy<Value = SpawnerPending> {
    (any::<u32>(), proptest::collection::vec(any::<u64>(), 0..4)).prop_map(|(id, due)| SpawnerPending { id, due })
}

fn shard(index: u16) -> impl Strategy<Value = ShardState> {
    (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(spawner(), 0..3),
        proptest::collection::vec(mail(), 0..4),
        objects(),
    )
        .prop_map(move |(rng_state, last_npc_id, spawners, mail, objects)| ShardState {
            index,
            rng_state,
            last_npc_id,
            spawners,
            mail,
            objects,
        })
}

fn zone_state(shards: usize) -> impl Strategy<Value = ZoneState> {
    (any::<u64>(), any::<u64>(), (0..shards as u16).map(shard).collect::<Vec<_>>()).prop_map(|(tick, seed, shards)| ZoneState {
        tick,
        seed,
        shards,
    })
}

fn any_state() -> impl Strategy<Value = ZoneState> {
    (1usize..5).prop_flat_map(zone_state)
}

/// A base state and a later one that keeps some of its objects unchanged, changes some, drops
/// some, adds some and moves some between shards (and sometimes has a different shard count).
fn base_and_next() -> impl Strategy<Value = (ZoneState, ZoneState)> {
    (1usize..5, 1usize..5)
        .prop_flat_map(|(a, b)| (zone_state(a), zone_state(b), any::<u64>(), 0u64..1000))
        .prop_map(|(base, other, pick_seed, dt)| {
            let mut next = other;
            next.tick = base.tick.saturating_add(dt);
            next.seed = base.seed;
            for (i, shard) in next.shards.iter_mut().enumerate() {
                let mut merged = std::collections::BTreeMap::new();
                let from_base = base.shards.get(i).map_or(&[][..], |s| &s.objects[..]);
                // For each id in either shard: keep the base version, take the other, or drop it.
                for o in from_base.iter().chain(&shard.objects) {
                    let choice = zone_sim::rng::mix64(pick_seed ^ o.obj.id) % 3;
                    let base_version = from_base.iter().find(|b| b.obj.id == o.obj.id);
                    let other_version = shard.objects.iter().find(|b| b.obj.id == o.obj.id);
                    let pick = match choice {
                        0 => base_version.or(other_version),
                        1 => other_version,
                        _ => None,
                    };
                    if let Some(p) = pick {
                        merged.insert(o.obj.id, *p);
                    }
                }
                shard.objects = merged.into_values().collect();
            }
            (base, next)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn full_round_trips(s in any_state()) {
        let bytes = snapshot::encode_full(&s, DIGEST);
        let snap = snapshot::decode(&bytes).expect("decodes");
        prop_assert_eq!(snap.meta.kind, SnapshotKind::Full);
        prop_assert_eq!(snap.meta.tick, s.tick);
        prop_assert_eq!(snap.meta.base_tick, s.tick);
        prop_assert_eq!(snap.meta.seed, s.seed);
        prop_assert_eq!(snap.meta.zone_digest, DIGEST);
        prop_assert_eq!(snapshot::decode_meta(&bytes).expect("header"), snap.meta);
        prop_assert_eq!(snap.body, SnapshotBody::Full(s));
    }

    #[test]
    fn diff_applied_to_its_base_gives_the_next_state((base, next) in base_and_next()) {
        let bytes = snapshot::encode_diff(&base, &next, DIGEST);
        let snap = snapshot::decode(&bytes).expect("decodes");
        prop_assert_eq!(snap.meta.kind, SnapshotKind::Diff);
        prop_assert_eq!(snap.meta.base_tick, base.tick);
        prop_assert_eq!(snap.meta.tick, next.tick);
        let SnapshotBody::Diff(d) = snap.body else { return Err(TestCaseError::fail("not a diff")) };
        prop_assert_eq!(snapshot::apply_diff(&base, &d).expect("applies"), next.clone());
        // An unchanged state diffs to no object changes.
        let same = snapshot::diff(&base, &base);
        prop_assert!(same.shards.iter().all(|s| s.removed.is_empty() && s.upserted.is_empty()));
        // And recovery through the chain gives the same.
        let full = snapshot::encode_full(&base, DIGEST);
        prop_assert_eq!(snapshot::recover(&full, &[bytes], &DIGEST).expect("recovers").state, next);
    }
}

/// An NPC and a later version of it: some of its fields changed the way the simulation changes
/// them (a move, a new velocity, a new mind, generator draws, a new attack time, damage), the
/// others as in the base.
fn npc_and_later() -> impl Strategy<Value = (ObjectRecord, ObjectRecord, u64)> {
    let npc = (any::<u32>(), vec2(), mind(), any::<u64>(), any::<u64>()).prop_map(|(spawner, home, mind, rng, ready_at)| Npc {
        spawner,
        home,
        mind,
        rng: DetRng { state: rng },
        ready_at,
    });
    (
        (0u64..1 << 40, any::<u16>(), vec2(), vec2(), any::<i32>(), npc),
        (
            proptest::option::of((-100_000i32..100_000, -100_000i32..100_000)),
            proptest::option::of(vec2()),
            proptest::option::of(mind()),
            proptest::option::of(0u32..100),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<i32>()),
        ),
        any::<u64>(),
    )
        .prop_map(|((id, kind, pos, vel, hp, n), (dpos, nvel, nmind, draws, ready, nhp), tick)| {
            let base = ObjectRecord {
                obj: Obj { id, kind },
                pos,
                vel,
                health: Health { hp, max: hp },
                body: Body::Npc(n),
            };
            let mut next = base;
            let Body::Npc(nn) = &mut next.body else { unreachable!() };
            if let Some((dx, dy)) = dpos {
                next.pos = Vec2 {
                    x: pos.x.wrapping_add(dx),
                    y: pos.y.wrapping_add(dy),
                };
            }
            if let Some(v) = nvel {
                next.vel = v;
            }
            if let Some(m) = nmind {
                nn.mind = m;
            }
            for _ in 0..draws.unwrap_or(0) {
                nn.rng.next_u64();
            }
            if let Some(r) = ready {
                nn.ready_at = r;
            }
            if let Some(h) = nhp {
                next.health.hp = h;
            }
            (base, next, tick)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// apply(base, between(base, new)) == new for any two objects with the same id (any bodies,
    /// any values: the relative encodings wrap, so they are exact everywhere).
    #[test]
    fn object_patches_round_trip((a, b, tick) in object_id().prop_flat_map(|id| (record(id), record(id), any::<u64>()))) {
        match ObjectPatch::between(&a, &b, tick) {
            None => prop_assert_eq!(a, b),
            Some(p) => prop_assert_eq!(p.apply(&a, tick).expect("applies"), b),
        }
        prop_assert_eq!(ObjectPatch::between(&a, &a, tick), None);
    }

    /// The same for an NPC changed the way the simulation changes NPCs, and through the codec:
    /// the diff holds a patch (not the whole object) and rebuilds the later state exactly.
    #[test]
    fn npc_patches_round_trip_through_the_codec((a, b, tick) in npc_and_later()) {
        if let Some(p) = ObjectPatch::between(&a, &b, tick) {
            prop_assert_eq!(p.body, None, "an NPC whose spawner and home did not change is patched field by field");
            prop_assert_eq!(p.apply(&a, tick).expect("applies"), b);
        } else {
            prop_assert_eq!(a, b);
        }
        let shard = |o: ObjectRecord| ShardState { index: 0, rng_state: 1, last_npc_id: 2, spawners: vec![], mail: vec![], objects: vec![o] };
        let base = ZoneState { tick: tick / 2, seed: 3, shards: vec![shard(a)] };
        let next = ZoneState { tick, seed: 3, shards: vec![shard(b)] };
        let bytes = snapshot::encode_diff(&base, &next, DIGEST);
        let SnapshotBody::Diff(d) = snapshot::decode(&bytes).expect("decodes").body else { return Err(TestCaseError::fail("not a diff")) };
        prop_assert!(d.shards[0].upserted.is_empty());
        prop_assert_eq!(d.shards[0].changed.len(), usize::from(a != b));
        prop_assert_eq!(snapshot::apply_diff(&base, &d).expect("applies"), next);
    }
}

/// Decoding every prefix and every single-bit flip of `bytes` is an error.
fn every_truncation_and_bit_flip_is_an_error(bytes: &[u8]) -> Result<(), TestCaseError> {
    for cut in 0..bytes.len() {
        prop_assert!(
            snapshot::decode(&bytes[..cut]).is_err(),
            "a cut at {} of {} decoded",
            cut,
            bytes.len()
        );
    }
    let mut b = bytes.to_vec();
    for at in 0..b.len() {
        for bit in 0..8 {
            b[at] ^= 1 << bit;
            prop_assert!(snapshot::decode(&b).is_err(), "flipping bit {} of byte {} went unnoticed", bit, at);
            b[at] ^= 1 << bit;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn damaged_full_snapshots_are_errors(s in any_state()) {
        every_truncation_and_bit_flip_is_an_error(&snapshot::encode_full(&s, DIGEST))?;
    }

    #[test]
    fn damaged_diffs_are_errors((base, next) in base_and_next()) {
        every_truncation_and_bit_flip_is_an_error(&snapshot::encode_diff(&base, &next, DIGEST))?;
    }
}

#[test]
fn diff_against_the_wrong_base_is_refused() {
    let base = ZoneState {
        tick: 10,
        seed: 1,
        shards: vec![],
    };
    let next = ZoneState {
        tick: 20,
        seed: 1,
        shards: vec![],
    };
    let SnapshotBody::Diff(d) = snapshot::decode(&snapshot::encode_diff(&base, &next, DIGEST))
        .expect("decodes")
        .body
    else {
        panic!("not a diff")
    };
    let other = ZoneState { tick: 11, ..base };
    assert_eq!(
        snapshot::apply_diff(&other, &d),
        Err(snapshot::SnapshotError::BaseMismatch {
            diff_base_tick: 10,
            base_tick: 11
        })
    );
}
