//! The snapshot codec against a model: for random views and random successive views, decoding
//! what was encoded gives back exactly the server's view, across any number of datagrams, each
//! within the budget, nearest changes first; and hostile bytes never panic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;
use zone_net::delta::*;
use zone_net::envelope::{Stamp, encode_server};
use zone_net::proto::{Channel, ObjectDeltas, ObjectState, Snapshot, server_envelope};
use zone_net::view::{QObject, VIEW_OBJECTS_MAX, View};

const FRAME: SnapshotFrame = SnapshotFrame {
    ack_input_tick: 77,
    sequence: 1_000,
};

fn arb_id() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..3_000, 2 => (1u64 << 40)..(1u64 << 40) + 3_000, 1 => (1u64 << 63)..(1u64 << 63) + 100, 1 => any::<u64>()]
}

fn arb_coord() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..40_000, 1 => Just(0u32), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn arb_obj() -> impl Strategy<Value = QObject> {
    (
        arb_id(),
        0u16..8,
        arb_coord(),
        arb_coord(),
        any::<i16>(),
        any::<i16>(),
        any::<u16>(),
    )
        .prop_map(|(id, kind, x, y, vx, vy, hp)| QObject {
            id,
            kind,
            x,
            y,
            vx,
            vy,
            hp,
        })
}

fn view_of(tick: u64, objects: Vec<QObject>) -> View {
    let unique: BTreeMap<u64, QObject> = objects.into_iter().map(|o| (o.id, o)).collect();
    View::new(tick, unique.into_values().collect()).expect("unique ids")
}

fn arb_view(tick: u64, n_max: usize) -> impl Strategy<Value = View> {
    proptest::collection::vec(arb_obj(), 0..n_max).prop_map(move |v| view_of(tick, v))
}

#[derive(Clone, Debug)]
enum Edit {
    Keep,
    Move(i16, i16),
    Hp(u16),
    Vel(i16, i16),
    Replace(QObject),
    Remove,
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => Just(Edit::Keep),
        4 => (any::<i16>(), any::<i16>()).prop_map(|(dx, dy)| Edit::Move(dx, dy)),
        1 => any::<u16>().prop_map(Edit::Hp),
        1 => (any::<i16>(), any::<i16>()).prop_map(|(a, b)| Edit::Vel(a, b)),
        1 => arb_obj().prop_map(Edit::Replace),
        2 => Just(Edit::Remove),
    ]
}

/// A baseline view at tick 10 and a next view at tick 13 made from it by random edits.
fn arb_pair(n_max: usize) -> impl Strategy<Value = (View, View)> {
    arb_view(10, n_max)
        .prop_flat_map(move |base| {
            let n = base.len();
            (
                Just(base),
                proptest::collection::vec(arb_edit(), n),
                proptest::collection::vec(arb_obj(), 0..n_max / 2 + 1),
            )
        })
        .prop_map(|(base, edits, creates)| {
            let mut next = Vec::new();
            for (o, e) in base.objects().iter().zip(edits) {
                let mut o = *o;
                match e {
                    Edit::Keep => {}
                    Edit::Move(dx, dy) => {
                        o.x = o.x.saturating_add_signed(dx.into());
                        o.y = o.y.saturating_add_signed(dy.into());
                    }
                    Edit::Hp(hp) => o.hp = hp,
                    Edit::Vel(vx, vy) => (o.vx, o.vy) = (vx, vy),
                    Edit::Replace(r) => o = QObject { id: o.id, ..r },
                    Edit::Remove => continue,
                }
                next.push(o);
            }
            let existing: std::collections::BTreeSet<u64> = next.iter().map(|o| o.id).collect();
            next.extend(creates.into_iter().filter(|c| !existing.contains(&c.id)));
            (base, view_of(13, next))
        })
}

fn dist2(o: &QObject, focus: (u32, u32)) -> u128 {
    u128::from(o.x.abs_diff(focus.0)).pow(2) + u128::from(o.y.abs_diff(focus.1)).pow(2)
}

/// Encodes, checks the datagram invariants, decodes part by part, and returns the final view.
fn round_trip(base: Option<&View>, next: &View, budget_bytes: usize, focus: (u32, u32)) -> Result<View, TestCaseError> {
    let (datagrams, stats) = encode_delta_all(base, next, FRAME, budget_bytes, focus).expect("encode");
    prop_assert_eq!(stats.datagrams, datagrams.len());
    prop_assert_eq!(stats.bytes, datagrams.iter().map(Vec::len).sum::<usize>());
    let mut view: Option<View> = base.cloned();
    let mut prev_far: Option<u128> = None;
    for (k, d) in datagrams.iter().enumerate() {
        prop_assert!(d.len() <= budget_bytes, "datagram {k} is {} > {budget_bytes}", d.len());
        let got = decode_snapshot(view.as_ref(), d).map_err(|e| TestCaseError::fail(format!("part {k}: {e}")))?;
        prop_assert_eq!(got.part as usize, k);
        prop_assert_eq!(got.more_follow, k + 1 < datagrams.len());
        prop_assert_eq!(got.sequence, FRAME.sequence + k as u32);
        prop_assert_eq!(got.tick, next.tick());
        prop_assert_eq!(got.baseline_tick, base.map_or(0, View::tick));
        prop_assert_eq!(got.ack_input_tick, FRAME.ack_input_tick);
        // Nearest first: everything this part touched is no nearer than what earlier parts did.
        // What the client would hold with no datagram at all: its view, dead-reckoned to `tick`.
        let before = view.as_ref().map(|v| predicted(v, got.tick)).unwrap_or_default();
        let touched = touched(&before, &got.view);
        let (near, far) = touched
            .iter()
            .fold((u128::MAX, 0u128), |(lo, hi), o| (lo.min(dist2(o, focus)), hi.max(dist2(o, focus))));
        if let (Some(pf), false) = (prev_far, touched.is_empty()) {
            prop_assert!(near >= pf, "part {k} sends a change at distance² {near} after one at {pf}");
        }
        if !touched.is_empty() {
            prev_far = Some(far);
        }
        prop_assert!(k + 1 == datagrams.len() || !touched.is_empty(), "an empty part before the last");
        view = Some(got.view);
    }
    Ok(view.unwrap_or_default())
}

/// Every object of `v` moved on to `tick` by its velocity, as the decoder does for objects a
/// datagram does not mention.
fn predicted(v: &View, tick: u64) -> View {
    let dt = tick.saturating_sub(v.tick());
    View::new(tick.max(v.tick()), v.objects().iter().map(|o| predict(o, dt)).collect()).unwrap()
}

/// The objects a part changed: updated and created ones as they are now, removed ones as they were.
fn touched(before: &View, after: &View) -> Vec<QObject> {
    let mut out: Vec<QObject> = after.objects().iter().filter(|o| before.get(o.id) != Some(o)).copied().collect();
    out.extend(before.objects().iter().filter(|o| after.get(o.id).is_none()));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn full_snapshots_round_trip(next in arb_view(5, 300), budget_bytes in BUDGET_BYTES_MIN..2_000, fx in 0u32..40_000, fy in 0u32..40_000) {
        let got = round_trip(None, &next, budget_bytes, (fx, fy))?;
        prop_assert_eq!(got, next);
    }

    #[test]
    fn deltas_round_trip((base, next) in arb_pair(300), budget_bytes in BUDGET_BYTES_MIN..2_000, fx in 0u32..40_000, fy in 0u32..40_000) {
        let got = round_trip(Some(&base), &next, budget_bytes, (fx, fy))?;
        prop_assert_eq!(got, next);
    }

    #[test]
    fn parts_apply_in_any_order((base, next) in arb_pair(300)) {
        let (datagrams, _) = encode_delta_all(Some(&base), &next, FRAME, 300, (0, 0)).expect("encode");
        let mut view = base.clone();
        for d in datagrams.iter().rev() {
            view = decode_delta(Some(&view), d).expect("decode");
        }
        prop_assert_eq!(view, next);
    }

    #[test]
    fn hostile_bytes_never_panic((base, next) in arb_pair(12), flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..4)) {
        let (datagrams, _) = encode_delta_all(Some(&base), &next, FRAME, BUDGET_BYTES_DEFAULT, (0, 0)).expect("encode");
        let d = &datagrams[0];
        let valid = |r: Result<View, DecodeError>| match r {
            Ok(v) => View::new(v.tick(), v.objects().to_vec()).as_ref() == Ok(&v),
            Err(_) => true,
        };
        for cut in 0..d.len() {
            prop_assert!(valid(decode_delta(Some(&base), &d[..cut])));
            prop_assert!(valid(decode_delta(None, &d[..cut])));
        }
        let mut b = d.clone();
        for (at, bit) in flips {
            let at = at % b.len();
            b[at] ^= 1 << bit;
        }
        prop_assert!(valid(decode_delta(Some(&base), &b)));
        prop_assert!(valid(decode_delta(Some(&next), &b)));
        prop_assert!(valid(decode_delta(None, &b)));
    }

    #[test]
    fn capped_changes_hold_what_was_sent_and_converge(
        (base, next) in arb_pair(300), max in 1usize..4, budget_bytes in BUDGET_BYTES_MIN..1_200, fx in 0u32..40_000, fy in 0u32..40_000,
    ) {
        // A send capped at `max` datagrams leaves the client holding exactly `held`; sending again
        // against what it holds (a later tick of the same objects) reaches `next` in the end.
        let mut holding = Some(base.clone());
        let mut target = next.clone();
        for round in 0..2_000u64 {
            let (datagrams, stats, held) = encode_delta_capped(holding.as_ref(), &target, FRAME, budget_bytes, (fx, fy), max).expect("encode");
            prop_assert!(datagrams.len() <= max && stats.datagrams == datagrams.len());
            let mut view = holding.clone();
            for (k, d) in datagrams.iter().enumerate() {
                prop_assert!(d.len() <= budget_bytes, "datagram {k} is {} > {budget_bytes}", d.len());
                let got = decode_snapshot(view.as_ref(), d).map_err(|e| TestCaseError::fail(format!("round {round} part {k}: {e}")))?;
                prop_assert_eq!(got.more_follow, k + 1 < datagrams.len(), "only the last part says no more follow");
                view = Some(got.view);
            }
            prop_assert_eq!(view.as_ref(), Some(&held));
            if held.objects() == target.objects() {
                return Ok(());
            }
            holding = Some(held);
            // The world goes on: every object moves by its velocity.
            target = predicted(&target, target.tick() + 1);
        }
        prop_assert!(false, "never converged");
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), base in arb_view(3, 20)) {
        let _ = decode_delta(Some(&base), &bytes);
        let _ = decode_delta(None, &bytes);
    }
}

fn obj(id: u64, x: u32) -> QObject {
    QObject {
        id,
        kind: 1,
        x,
        y: 100,
        vx: 3,
        vy: -3,
        hp: 50,
    }
}

#[test]
fn every_single_bit_flip_and_truncation_of_a_small_delta() {
    let base = View::new(10, (0..20).map(|i| obj(i * 3, 100 + i as u32)).collect()).unwrap();
    let mut next: Vec<QObject> = base.objects().iter().filter(|o| o.id % 2 == 0).copied().collect();
    next.iter_mut().for_each(|o| o.x += 7);
    next.push(obj(1 << 63, 5));
    let next = View::new(12, next).unwrap();
    let (ds, _) = encode_delta_all(Some(&base), &next, FRAME, BUDGET_BYTES_DEFAULT, (0, 0)).unwrap();
    assert_eq!(ds.len(), 1);
    let d = &ds[0];
    let (mut errors, mut same, mut different) = (0, 0, 0);
    for at in 0..d.len() {
        for bit in 0..8 {
            let mut b = d.clone();
            b[at] ^= 1 << bit;
            match decode_delta(Some(&base), &b) {
                Err(_) => errors += 1,
                Ok(v) if v == next => same += 1, // a flip in the sequence number or the input ack
                Ok(_) => different += 1,
            }
        }
    }
    // A cut at a field boundary is still a well-formed (shorter) message: count, never panic.
    let cut_errors = (0..d.len()).filter(|&cut| decode_delta(Some(&base), &d[..cut]).is_err()).count();
    println!(
        "{} flips: {errors} errors, {same} same view, {different} different valid views",
        d.len() * 8
    );
    println!("{} truncations: {cut_errors} errors", d.len());
    assert!(errors > 0 && different > 0);
}

#[test]
fn a_big_view_splits_nearest_first_within_budget() {
    let next = View::new(1, (0..500).map(|i| obj(i, (i as u32 * 37) % 2_000)).collect()).unwrap();
    let (first, stats, mut leftover) = encode_delta(None, &next, FRAME, BUDGET_BYTES_DEFAULT, (1_000, 100)).unwrap();
    assert!(
        first.len() <= BUDGET_BYTES_DEFAULT && first.len() > BUDGET_BYTES_DEFAULT - 60,
        "{} bytes",
        first.len()
    );
    assert!(!leftover.is_empty());
    assert_eq!(stats.creates + leftover.len(), 500);
    let part0 = decode_snapshot(None, &first).unwrap();
    assert!(part0.more_follow);
    // The object nearest the focus went first.
    let nearest = next.objects().iter().min_by_key(|o| (o.x.abs_diff(1_000), o.id)).unwrap();
    assert_eq!(part0.view.get(nearest.id), Some(nearest));
    let mut n = 1;
    while let Some((d, _)) = encode_leftover(&mut leftover, BUDGET_BYTES_DEFAULT).unwrap() {
        assert!(d.len() <= BUDGET_BYTES_DEFAULT);
        n += 1;
    }
    assert!(n >= 5, "{n} datagrams");
    assert_eq!(encode_leftover(&mut leftover, BUDGET_BYTES_DEFAULT), Ok(None));
}

#[test]
fn an_unchanged_view_is_one_small_datagram() {
    // Unchanged means every object is where its velocity takes it (dead reckoning).
    let v = View::new(10, (0..100).map(|i| obj(i, i as u32)).collect()).unwrap();
    let next = predicted(&v, 13);
    let (ds, stats) = encode_delta_all(Some(&v), &next, FRAME, BUDGET_BYTES_DEFAULT, (0, 0)).unwrap();
    assert_eq!(ds.len(), 1);
    assert!(ds[0].len() < 20, "{} bytes", ds[0].len());
    assert_eq!((stats.creates, stats.updates, stats.removes), (0, 0, 0));
    assert_eq!(decode_delta(Some(&v), &ds[0]).unwrap(), next);
}

#[test]
fn encode_errors() {
    let v = View::new(10, vec![obj(1, 1)]).unwrap();
    assert_eq!(
        encode_delta_all(None, &v, FRAME, 100, (0, 0)).unwrap_err(),
        EncodeError::BudgetTooSmall { budget_bytes: 100 }
    );
    assert_eq!(
        encode_delta_all(Some(&v), &v, FRAME, 1200, (0, 0)).unwrap_err(),
        EncodeError::TickNotAfterBaseline {
            baseline_tick: 10,
            next_tick: 10
        }
    );
    let zero = View::empty(0);
    assert_eq!(
        encode_delta_all(Some(&zero), &v, FRAME, 1200, (0, 0)).unwrap_err(),
        EncodeError::BaselineAtTickZero
    );
}

fn datagram(snap: Snapshot) -> Vec<u8> {
    encode_server(
        Stamp {
            channel: Channel::Unreliable,
            sequence: 0,
        },
        server_envelope::Body::Snapshot(snap),
    )
}

#[test]
fn decode_errors() {
    let base = View::new(10, vec![obj(1, 1), obj(5, 5)]).unwrap();
    let (full, _) = encode_delta_all(None, &base, FRAME, 1200, (0, 0)).unwrap();
    assert_eq!(decode_delta(Some(&base), &full[0]), Err(DecodeError::DuplicateObject { id: 1 }));
    let next = View::new(11, vec![obj(1, 2)]).unwrap();
    let (delta, _) = encode_delta_all(Some(&base), &next, FRAME, 1200, (0, 0)).unwrap();
    assert_eq!(
        decode_delta(None, &delta[0]),
        Err(DecodeError::MissingBaseline { baseline_tick: 10 })
    );
    assert_eq!(
        decode_delta(Some(&View::empty(10)), &delta[0]),
        Err(DecodeError::UnknownObject { id: 5 })
    );

    let snap = |f: &dyn Fn(&mut Snapshot)| {
        let mut s = Snapshot {
            tick: 11,
            baseline_tick: 10,
            ..Snapshot::default()
        };
        f(&mut s);
        datagram(s)
    };
    let cols = |id_gaps: &[u64], masks: &[u32], values: &[i64]| {
        Some(ObjectDeltas {
            id_gaps: id_gaps.to_vec(),
            masks: masks.to_vec(),
            values: values.to_vec(),
        })
    };
    let bad = |c: Option<ObjectDeltas>| decode_delta(Some(&base), &snap(&|s| s.updates = c.clone()));
    assert_eq!(bad(cols(&[1], &[1], &[-2])), Err(DecodeError::OutOfRange { id: 1, field: "x" }));
    assert_eq!(
        bad(cols(&[1], &[1], &[i64::MAX])),
        Err(DecodeError::OutOfRange { id: 1, field: "x" })
    );
    assert_eq!(bad(cols(&[1], &[16], &[-100])), Err(DecodeError::OutOfRange { id: 1, field: "hp" }));
    assert_eq!(bad(cols(&[1, 0], &[0, 0], &[])), Err(DecodeError::BadIds { list: "updated" }));
    assert_eq!(bad(cols(&[1, 4], &[1], &[1])), Err(DecodeError::BadColumns));
    assert_eq!(bad(cols(&[1], &[3], &[1])), Err(DecodeError::BadColumns));
    assert_eq!(bad(cols(&[1], &[1], &[1, 1])), Err(DecodeError::BadColumns));
    assert_eq!(bad(cols(&[1], &[64], &[1])), Err(DecodeError::BadColumns));
    assert_eq!(
        bad(cols(&[1, 4], &[2, 1], &[3, 4])).unwrap().objects(),
        &[QObject { y: 103, ..obj(1, 1) }, QObject { x: 9, ..obj(5, 5) }]
    );
    assert_eq!(
        decode_delta(Some(&base), &snap(&|s| s.remove_id_gaps = vec![5, u64::MAX])),
        Err(DecodeError::BadIds { list: "removed" })
    );
    assert_eq!(
        decode_delta(Some(&base), &snap(&|s| s.remove_id_gaps = vec![2])),
        Err(DecodeError::UnknownObject { id: 2 })
    );
    let create = ObjectState {
        id_gap: 9,
        vx: 40_000,
        ..ObjectState::default()
    };
    assert_eq!(
        decode_delta(Some(&base), &snap(&|s| s.creates = vec![create])),
        Err(DecodeError::OutOfRange { id: 9, field: "vx" })
    );
    // A removed object may not be updated in the same datagram; it may be created again.
    assert_eq!(
        decode_delta(
            Some(&base),
            &snap(&|s| {
                s.remove_id_gaps = vec![1];
                s.updates = cols(&[1], &[1], &[1]);
            })
        ),
        Err(DecodeError::UnknownObject { id: 1 })
    );
    let again = decode_delta(
        Some(&base),
        &snap(&|s| {
            s.remove_id_gaps = vec![1];
            s.creates = vec![ObjectState {
                id_gap: 1,
                hp: 7,
                ..ObjectState::default()
            }];
        }),
    )
    .unwrap();
    assert_eq!(again.get(1).map(|o| o.hp), Some(7));

    let big = View::new(10, (0..VIEW_OBJECTS_MAX as u64).map(|i| obj(i, 0)).collect()).unwrap();
    let one_more = snap(&|s| {
        s.creates = vec![ObjectState {
            id_gap: u64::MAX,
            ..ObjectState::default()
        }]
    });
    assert_eq!(decode_delta(Some(&big), &one_more), Err(DecodeError::TooManyObjects));

    let not_snapshot = encode_server(
        Stamp {
            channel: Channel::Reliable,
            sequence: 0,
        },
        server_envelope::Body::Event(Default::default()),
    );
    assert_eq!(decode_delta(None, &not_snapshot), Err(DecodeError::NotASnapshot));
    let mut env = zone_net::proto::ServerEnvelope::decode(&full[0][..]).unwrap();
    env.protocol_version = 1;
    assert!(matches!(
        decode_delta(None, &env.encode_to_vec()),
        Err(DecodeError::Envelope(zone_net::envelope::EnvelopeError::BadVersion { found: 1 }))
    ));
}

#[test]
fn worst_case_objects_fit_the_minimum_budget() {
    let frame = SnapshotFrame {
        ack_input_tick: u64::MAX,
        sequence: u32::MAX,
    };
    let big = |id: u64, x: u32| QObject {
        id,
        kind: u16::MAX,
        x,
        y: x,
        vx: i16::MIN,
        vy: i16::MIN,
        hp: u16::MAX,
    };
    let base = View::new(u64::MAX - 1, (0..20).map(|i| big(u64::MAX - 100 + i, 0)).collect()).unwrap();
    let mut next: Vec<QObject> = (0..10)
        .map(|i| QObject {
            kind: 0,
            vx: i16::MAX,
            vy: i16::MAX,
            hp: 0,
            ..big(u64::MAX - 100 + i, u32::MAX)
        })
        .collect();
    next.extend((0..10).map(|i| big(u64::MAX - 10 + i, u32::MAX / 2)));
    let next = View::new(u64::MAX, next).unwrap();
    for base in [None, Some(&base)] {
        let (ds, _) = encode_delta_all(base, &next, frame, BUDGET_BYTES_MIN, (u32::MAX, 0)).unwrap();
        assert!(ds.iter().all(|d| d.len() <= BUDGET_BYTES_MIN));
        let mut v = base.cloned();
        for d in &ds {
            v = Some(decode_delta(v.as_ref(), d).unwrap());
        }
        assert_eq!(v.as_ref(), Some(&next));
    }
}
