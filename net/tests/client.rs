//! The client session against a scripted fake server built from the crate's own encoders: the
//! join handshake and its retries, input batches and their ticks, Ping/Pong, snapshots split in
//! parts and delivered out of order, deltas against the acked tick, the ordered event stream, and
//! the end of a session; and hostile bytes never panic. No wall clock: time is a number here.

use proptest::prelude::*;
use zone_net::client::*;
use zone_net::delta::{BUDGET_BYTES_MIN, SnapshotFrame, encode_delta_all};
use zone_net::envelope::{Stamp, decode_client, encode_server};
use zone_net::proto::{
    Channel, Event, EventBatch, Input, InputBatch, Joined, Notice, NoticeKind, ObjectDeltas, ObjectState, Ping, Pong, Reject, RejectReason,
    Snapshot, Welcome, client_envelope, event, server_envelope,
};
use zone_net::view::{QObject, View};
use zone_net::wire;

const MS: u64 = 1_000;
const TICK_US: u64 = 16_667;
const PLAYER: u64 = 7;
const WELCOME_TICK: u64 = 1_000;

fn server(channel: Channel, body: server_envelope::Body) -> Vec<u8> {
    wire::frame(&encode_server(Stamp { channel, sequence: 0 }, body))
}

fn client(datagram: &[u8]) -> (Stamp, client_envelope::Body) {
    decode_client(wire::unframe(datagram).expect("framed")).expect("a client envelope")
}

fn welcome() -> Vec<u8> {
    welcome_asking(0)
}

/// A Welcome asking for input batches every `k` ticks (0: naming no interval, as an older server).
fn welcome_asking(k: u32) -> Vec<u8> {
    server(
        Channel::Reliable,
        server_envelope::Body::Welcome(Welcome {
            player_id: PLAYER,
            tick: WELCOME_TICK,
            tick_rate_hz: 60,
            snapshot_rate_hz: 20,
            object_id: PLAYER | 1 << 63,
            input_batch_ticks: k,
            ..Welcome::default()
        }),
    )
}

fn reject(reason: RejectReason) -> Vec<u8> {
    server(
        Channel::Reliable,
        server_envelope::Body::Reject(Reject {
            reason: reason as i32,
            detail: "test".into(),
        }),
    )
}

fn batch(datagram: &[u8]) -> InputBatch {
    match client(datagram) {
        (
            Stamp {
                channel: Channel::Unreliable,
                ..
            },
            client_envelope::Body::Inputs(b),
        ) => b,
        other => panic!("not an input batch: {other:?}"),
    }
}

/// The input batches among `datagrams`.
fn batches(datagrams: &[Vec<u8>]) -> Vec<InputBatch> {
    datagrams
        .iter()
        .filter(|d| matches!(client(d).1, client_envelope::Body::Inputs(_)))
        .map(|d| batch(d))
        .collect()
}

/// A session joined at time 0.
fn joined() -> ClientSession {
    joined_with(ClientConfig::new("tok"))
}

/// A session with `config` joined at time 0.
fn joined_with(config: ClientConfig) -> ClientSession {
    joined_to_server_asking(config, 0)
}

fn obj(id: u64, x: u32, y: u32) -> QObject {
    QObject {
        id,
        kind: (id % 3) as u16,
        x,
        y,
        vx: 1,
        vy: -1,
        hp: 50,
    }
}

/// 60 objects around (1000, 1000), and the player's own object.
fn world(tick: u64) -> View {
    let mut objects: Vec<QObject> = (1..=60)
        .map(|i| obj(i * 3, 1_000 + (i as u32 % 8) * 7, 1_000 + (i as u32 / 8) * 9))
        .collect();
    objects.push(QObject {
        kind: u16::MAX,
        ..obj(PLAYER | 1 << 63, 1_000, 1_000)
    });
    View::new(tick, objects).expect("unique ids")
}

fn snapshot_parts(base: Option<&View>, next: &View, ack_input_tick: u64) -> Vec<Vec<u8>> {
    let frame = SnapshotFrame {
        ack_input_tick,
        sequence: 0,
    };
    let (datagrams, _) = encode_delta_all(base, next, frame, BUDGET_BYTES_MIN, (1_000, 1_000)).expect("encode");
    datagrams.iter().map(|d| wire::frame(d)).collect()
}

#[test]
fn hello_retries_back_off_when_rate_limited_and_welcome_joins() {
    let mut s = ClientSession::new(ClientConfig::new("tok"), 0);
    assert_eq!(s.state(), &SessionState::Joining);
    let first = s.poll(0);
    assert_eq!(first.len(), 1);
    match client(&first[0]) {
        (stamp, client_envelope::Body::Hello(h)) => {
            assert_eq!(
                stamp,
                Stamp {
                    channel: Channel::Reliable,
                    sequence: 0
                }
            );
            assert_eq!(h.join_token, "tok");
            assert_eq!(h.protocol_version, zone_net::envelope::PROTOCOL_VERSION);
        }
        other => panic!("{other:?}"),
    }
    assert!(s.poll(100 * MS).is_empty());
    let second = s.poll(250 * MS);
    assert_eq!(client(&second[0]).0.sequence, 1);
    assert_eq!(s.next_poll_us(), Some(500 * MS));

    s.receive(&reject(RejectReason::RateLimited), 300 * MS);
    assert_eq!(s.state(), &SessionState::Joining);
    assert!(s.poll(550 * MS).is_empty(), "backed off to 500 ms");
    assert_eq!(s.poll(800 * MS).len(), 1);
    assert_eq!(s.stats().hellos_sent, 3);

    s.receive(&welcome(), 900 * MS);
    assert_eq!(s.state(), &SessionState::Joined { player_id: PLAYER });
    assert_eq!(s.player_object_id(), Some(PLAYER | 1 << 63));
    assert_eq!(s.rates_hz(), (60, 20));
    // A duplicate Welcome (the answer to a retry) changes nothing.
    s.receive(&welcome(), 950 * MS);
    assert_eq!(s.stats().hellos_sent, 3);
}

#[test]
fn join_timeout_and_rejects_end_the_session() {
    let mut s = ClientSession::new(ClientConfig::new("tok"), 5);
    s.poll(5);
    assert!(s.poll(5 + JOIN_TIMEOUT_US_DEFAULT - 1).len() <= 1);
    assert!(s.poll(5 + JOIN_TIMEOUT_US_DEFAULT).is_empty());
    assert_eq!(s.end_reason(), Some(&EndReason::JoinTimeout));
    assert_eq!(s.end_reason().unwrap().label(), "join_timeout");

    let mut s = ClientSession::new(ClientConfig::new("tok"), 0);
    s.poll(0);
    s.receive(&reject(RejectReason::ZoneFull), 10 * MS);
    assert!(matches!(
        s.end_reason(),
        Some(EndReason::Rejected {
            reason: RejectReason::ZoneFull,
            ..
        })
    ));
    assert!(s.poll(1_000 * MS).is_empty());
    assert_eq!(s.next_poll_us(), None);
}

#[test]
fn inputs_are_redundant_consecutive_and_lead_the_server() {
    let mut s = joined();
    s.set_input(100, -50, true);
    let out = s.poll(0);
    assert_eq!(out.len(), 2, "an input batch and a ping");
    let b = &batches(&out)[0];
    assert_eq!(
        b.inputs,
        vec![Input {
            tick: WELCOME_TICK + INPUT_LEAD_TICKS_MIN,
            move_x: 100,
            move_y: -50,
            attack: true
        }]
    );
    assert_eq!((b.snapshot_ack, b.events_received), (0, 0));
    // Nothing more until the next tick is due.
    assert!(s.poll(TICK_US - 100).is_empty());

    // An RTT sample of 40 ms: lead = 2 + ceil(40 ms in ticks) = 5 (the estimate is half a round
    // trip old and the input needs the other half).
    let pong = server(Channel::Unreliable, server_envelope::Body::Pong(Pong { echo_us: 0 }));
    s.receive(&pong, 40 * MS);
    assert_eq!(s.take_rtt_samples_us(), vec![40 * MS]);
    assert_eq!(s.smoothed_rtt_us(), Some(40 * MS));
    assert!(s.take_rtt_samples_us().is_empty());
    // A Pong from the future is no sample.
    s.receive(
        &server(Channel::Unreliable, server_envelope::Body::Pong(Pong { echo_us: 999 * MS })),
        41 * MS,
    );
    assert_eq!(s.stats().rtt_samples, 1);

    s.set_input(0, 0, false);
    let mut last = Vec::new();
    for k in 1..=5u64 {
        last = batches(&s.poll(k * TICK_US));
        assert_eq!(last.len(), 1, "one batch per tick");
    }
    let ticks: Vec<u64> = last[0].inputs.iter().map(|i| i.tick).collect();
    // At tick 5 the estimate is 1005, plus a lead of 5.
    assert_eq!(ticks, vec![1_007, 1_008, 1_009, 1_010]);
    assert!(last[0].inputs.iter().all(|i| (i.move_x, i.move_y, i.attack) == (0, 0, false)));
    assert_eq!(s.last_input_tick(), Some(1_010));

    // After a stall, one batch carries an input per missed tick (at most four), and the schedule
    // restarts from now.
    let now = 20 * TICK_US;
    let after = batches(&s.poll(now));
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].inputs.len(), INPUTS_PER_BATCH);
    assert!(after[0].inputs.windows(2).all(|w| w[1].tick == w[0].tick + 1));
    assert!(batches(&s.poll(now + 1)).is_empty());
    assert_eq!(batches(&s.poll(now + TICK_US)).len(), 1);
}

#[test]
fn batches_of_two_ticks_go_every_other_tick_and_cover_every_tick_once_with_redundancy() {
    let mut config = ClientConfig::new("tok");
    config.input_batch_ticks = Some(2);
    let mut s = joined_with(config);
    s.set_input(100, -50, true);
    let first = batches(&s.poll(0));
    assert_eq!(first.len(), 1);
    let ticks: Vec<u64> = first[0].inputs.iter().map(|i| i.tick).collect();
    // The first input is for the same tick as with one tick per batch; the second plans ahead.
    assert_eq!(
        ticks,
        vec![WELCOME_TICK + INPUT_LEAD_TICKS_MIN, WELCOME_TICK + INPUT_LEAD_TICKS_MIN + 1]
    );
    assert!(first[0].inputs.iter().all(|i| (i.move_x, i.move_y, i.attack) == (100, -50, true)));
    assert_eq!(s.next_poll_us(), Some(2_000_000 / 60), "the next batch is two ticks later");
    // One second: 30 batches (the first above and 29 more), each with the previous one's inputs.
    let mut sent = Vec::new();
    for k in 1..60u64 {
        let b = batches(&s.poll(k * TICK_US));
        assert_eq!(b.len(), usize::from(k % 2 == 0), "tick {k}");
        sent.extend(b);
    }
    assert_eq!(sent.len(), 29);
    for b in &sent {
        assert_eq!(b.inputs.len(), 4, "two new inputs and the previous batch's two");
        assert!(b.inputs.windows(2).all(|w| w[1].tick == w[0].tick + 1), "{:?}", b.inputs);
    }
    let mut covered: Vec<u64> = first.iter().chain(&sent).flat_map(|b| b.inputs.iter().map(|i| i.tick)).collect();
    covered.sort_unstable();
    covered.dedup();
    assert!(covered.windows(2).all(|w| w[1] == w[0] + 1), "every tick has an input");
    assert_eq!(covered.len(), 60);
    assert_eq!(s.stats().input_batches_sent, 30);
}

/// A session joined at time 0 to a server whose Welcome asks for batches every `k` ticks.
fn joined_to_server_asking(config: ClientConfig, k: u32) -> ClientSession {
    let mut s = ClientSession::new(config, 0);
    assert_eq!(s.poll(0).len(), 1);
    assert!(s.receive(&welcome_asking(k), 0).is_empty());
    s
}

/// Input batches sent in the first second (ticks 0..60).
fn batches_in_one_second(s: &mut ClientSession) -> Vec<InputBatch> {
    (0..60u64).flat_map(|k| batches(&s.poll(k * TICK_US))).collect()
}

#[test]
fn the_client_sends_batches_as_far_apart_as_the_welcome_asks_unless_its_config_says_otherwise() {
    // Before the Welcome, and from a server that names no interval (an older one): every tick.
    assert_eq!(ClientSession::new(ClientConfig::new("tok"), 0).input_batch_ticks(), 1);
    let mut s = joined_to_server_asking(ClientConfig::new("tok"), 0);
    assert_eq!((s.input_batch_ticks(), batches_in_one_second(&mut s).len()), (1, 60));

    // The server asks for every third tick: 20 batches, each with its 3 new inputs and the
    // previous batch's 3, covering every tick once.
    let mut s = joined_to_server_asking(ClientConfig::new("tok"), 3);
    let sent = batches_in_one_second(&mut s);
    assert_eq!((s.input_batch_ticks(), sent.len()), (3, 20));
    assert!(sent[1..].iter().all(|b| b.inputs.len() == 6), "{:?}", sent[1].inputs);
    let mut covered: Vec<u64> = sent.iter().flat_map(|b| b.inputs.iter().map(|i| i.tick)).collect();
    covered.sort_unstable();
    covered.dedup();
    assert!(covered.windows(2).all(|w| w[1] == w[0] + 1), "every tick has an input");
    assert_eq!(covered.len(), 60);

    // The client's own setting wins, and an out-of-range request is clamped to 1..=4.
    let mut config = ClientConfig::new("tok");
    config.input_batch_ticks = Some(1);
    let mut s = joined_to_server_asking(config, 3);
    assert_eq!((s.input_batch_ticks(), batches_in_one_second(&mut s).len()), (1, 60));
    let s = joined_to_server_asking(ClientConfig::new("tok"), 1_000);
    assert_eq!(s.input_batch_ticks(), zone_net::client::INPUT_BATCH_TICKS_MAX);
}

#[test]
fn server_ping_is_answered_at_once_and_client_pings_every_250_ms() {
    let mut s = joined();
    let ping = server(Channel::Unreliable, server_envelope::Body::Ping(Ping { sent_us: 123_456 }));
    let reply = s.receive(&ping, 5 * MS);
    assert_eq!(reply.len(), 1);
    match client(&reply[0]) {
        (
            Stamp {
                channel: Channel::Unreliable,
                ..
            },
            client_envelope::Body::Pong(p),
        ) => assert_eq!(p.echo_us, 123_456),
        other => panic!("{other:?}"),
    }
    let pings = |out: Vec<Vec<u8>>| out.iter().filter(|d| matches!(client(d).1, client_envelope::Body::Ping(_))).count();
    let mut sent = 0;
    let mut t = 0;
    while t <= 1_000 * MS {
        sent += pings(s.poll(t));
        t += 4 * MS;
    }
    assert_eq!(sent, 5, "at 0, 250, 500, 750 and 1000 ms");
    assert_eq!(s.stats().pings_sent, 5);
}

#[test]
fn snapshots_reassemble_out_of_order_then_deltas_apply_to_the_acked_tick() {
    let mut s = joined();
    let full = world(1_010);
    let parts = snapshot_parts(None, &full, 1_003);
    assert!(parts.len() >= 3, "the small budget splits the view ({} parts)", parts.len());

    // Every part but the first, newest first; then a duplicate; then part 0.
    for p in parts[1..].iter().rev() {
        s.receive(p, 10 * MS);
        assert_eq!(s.view(), None);
        assert_eq!(s.snapshot_ack(), 0);
    }
    s.receive(&parts[1], 11 * MS);
    assert_eq!(s.stats().duplicate_snapshot_parts, 1);
    s.receive(&parts[0], 12 * MS);
    assert_eq!(s.view(), Some(&full));
    assert_eq!(s.snapshot_ack(), 1_010);
    assert_eq!(s.ack_input_tick(), 1_003);
    assert_eq!(s.stats().snapshots_completed, 1);
    assert_eq!(s.stats().snapshot_datagrams, parts.len() as u64 + 1);
    let b = batches(&s.poll(12 * MS));
    assert_eq!(b[0].snapshot_ack, 1_010);
    // The server tick is now estimated from the snapshot, not the Welcome.
    assert_eq!(s.estimated_server_tick(12 * MS + 2 * TICK_US), 1_012);

    // A late part of the completed tick is stale.
    s.receive(&parts[2], 13 * MS);
    assert_eq!(s.stats().stale_snapshot_parts, 1);

    // A delta against the acked tick.
    let mut moved: Vec<QObject> = full.objects().to_vec();
    moved.retain(|o| o.id != 9);
    for o in moved.iter_mut().filter(|o| o.id % 2 == 0) {
        o.x += 3;
        o.hp -= 1;
    }
    moved.push(obj(1_000, 1_001, 1_001));
    let next = View::new(1_013, moved).unwrap();
    for p in snapshot_parts(Some(&full), &next, 1_006) {
        s.receive(&p, 60 * MS);
    }
    assert_eq!(s.view(), Some(&next));
    assert_eq!(s.snapshot_ack(), 1_013);
    assert_eq!(s.ack_input_tick(), 1_006);

    // A delta against a tick this client never completed is a missing baseline, not an error.
    let unknown_base = world(1_011);
    for p in snapshot_parts(Some(&unknown_base), &world(1_020), 1_010) {
        s.receive(&p, 70 * MS);
    }
    assert!(s.stats().missing_baselines >= 1);
    assert_eq!(s.stats().decode_errors, 0);
    assert_eq!(s.snapshot_ack(), 1_013);

    // A datagram that updates an object the baseline lacks is a decode error; the view is kept.
    let bad = server(
        Channel::Unreliable,
        server_envelope::Body::Snapshot(Snapshot {
            tick: 1_021,
            baseline_tick: 1_013,
            updates: Some(ObjectDeltas {
                id_gaps: vec![2],
                masks: vec![1],
                values: vec![5],
            }),
            ..Snapshot::default()
        }),
    );
    s.receive(&bad, 80 * MS);
    assert_eq!(s.stats().decode_errors, 1);
    assert_eq!(s.view(), Some(&next));

    // Parts of two ticks interleaved: both complete, the newest wins.
    let t30 = world(1_030);
    let mut t31_objects = t30.objects().to_vec();
    t31_objects[0].x += 1;
    let t31 = View::new(1_031, t31_objects.clone()).unwrap();
    let a = snapshot_parts(Some(&next), &t30, 1_020);
    let b = snapshot_parts(Some(&next), &t31, 1_021);
    for (x, y) in a.iter().zip(&b) {
        s.receive(x, 90 * MS);
        s.receive(y, 90 * MS);
    }
    for rest in a.iter().skip(b.len()).chain(b.iter().skip(a.len())) {
        s.receive(rest, 90 * MS);
    }
    assert_eq!(s.view(), Some(&t31));
    assert_eq!(s.snapshot_ack(), 1_031);
    assert_eq!(s.stats().decode_errors, 1);
}

#[test]
fn events_are_delivered_once_in_order() {
    let mut s = joined();
    let joined_ev = Event {
        kind: Some(event::Kind::Joined(Joined { player_id: 3, tick: 9 })),
    };
    let draining = Event {
        kind: Some(event::Kind::Notice(Notice {
            kind: NoticeKind::Draining as i32,
            text: "bye".into(),
        })),
    };
    let batch_of =
        |first_seq: u64, events: Vec<Event>| server(Channel::Unreliable, server_envelope::Body::Events(EventBatch { first_seq, events }));

    let b = batch_of(0, vec![joined_ev.clone(), draining.clone()]);
    s.receive(&b, MS);
    s.receive(&b, 2 * MS);
    assert_eq!(s.take_events(), vec![joined_ev.clone(), draining.clone()]);
    assert_eq!(s.stats().duplicate_events, 2);
    assert_eq!(s.leave_notice(), Some(NoticeKind::Draining));

    // A gap: nothing is delivered until the missing sequence arrives.
    s.receive(&batch_of(3, vec![joined_ev.clone()]), 3 * MS);
    assert!(s.take_events().is_empty());
    s.receive(&batch_of(1, vec![draining.clone(), joined_ev.clone(), draining.clone()]), 4 * MS);
    assert_eq!(s.take_events(), vec![joined_ev.clone(), draining.clone()]);
    assert_eq!(s.stats().events_received, 4);
    assert_eq!(s.stats().duplicate_events, 3);
    assert_eq!(batches(&s.poll(5 * MS))[0].events_received, 4);

    // A single (non-batch) event is ignored.
    s.receive(&server(Channel::Reliable, server_envelope::Body::Event(joined_ev)), 6 * MS);
    assert!(s.take_events().is_empty());
}

#[test]
fn replaced_after_join_ends_the_session_and_goodbye_is_reliable() {
    let mut s = joined();
    s.poll(0);
    s.receive(&reject(RejectReason::RateLimited), MS);
    assert!(s.is_joined(), "a late RATE_LIMITED does not end a joined session");
    s.receive(&reject(RejectReason::Replaced), 2 * MS);
    assert_eq!(s.end_reason().map(EndReason::label), Some("replaced"));
    assert!(s.poll(100 * MS).is_empty());
    let ping = server(Channel::Unreliable, server_envelope::Body::Ping(Ping { sent_us: 1 }));
    assert!(s.receive(&ping, 100 * MS).is_empty());

    let mut s = joined();
    let g1 = s.goodbye();
    let g2 = s.goodbye();
    assert_eq!(s.end_reason(), Some(&EndReason::Left));
    for (k, g) in [g1, g2].iter().enumerate() {
        let (stamp, body) = client(g);
        assert_eq!(stamp.channel, Channel::Reliable);
        assert_eq!(stamp.sequence, 1 + k as u32, "after the Hello");
        assert!(matches!(body, client_envelope::Body::Goodbye(_)));
    }
    let st = s.stats();
    assert_eq!(st.datagrams_out, 3);
    assert_eq!(st.datagrams_in, 1);
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let state = (
        0u64..40,
        0u32..5,
        any::<u32>(),
        any::<u32>(),
        any::<i32>(),
        any::<i32>(),
        any::<u32>(),
    )
        .prop_map(|(id_gap, kind, x, y, vx, vy, hp)| ObjectState {
            id_gap,
            kind,
            x,
            y,
            vx,
            vy,
            hp,
        });
    (
        0u64..12,
        prop_oneof![Just(0u64), 0u64..12],
        0u64..30,
        proptest::collection::vec(state, 0..6),
        proptest::collection::vec(0u64..40, 0..4),
        proptest::collection::vec(0u32..64, 0..4),
        proptest::collection::vec(-5i64..5, 0..8),
        proptest::collection::vec(0u64..40, 0..4),
        prop_oneof![0u32..4, Just(u32::MAX)],
        any::<bool>(),
    )
        .prop_map(
            |(tick, baseline_tick, ack_input_tick, creates, id_gaps, masks, values, remove_id_gaps, part, more_follow)| Snapshot {
                tick,
                baseline_tick,
                ack_input_tick,
                creates,
                updates: Some(ObjectDeltas { id_gaps, masks, values }),
                remove_id_gaps,
                part,
                more_follow,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20), framed in any::<bool>()) {
        let mut s = joined();
        let mut fresh = ClientSession::new(ClientConfig::new("t"), 0);
        for (k, d) in datagrams.iter().enumerate() {
            let d = if framed { wire::frame(d) } else { d.clone() };
            let now = k as u64 * TICK_US;
            s.receive(&d, now);
            s.poll(now);
            fresh.receive(&d, now);
            fresh.poll(now);
        }
        prop_assert_eq!(s.stats().datagrams_in, 1 + datagrams.len() as u64, "the Welcome and these");
    }

    #[test]
    fn hostile_snapshots_and_truncations_never_panic(snaps in proptest::collection::vec(arb_snapshot(), 1..30), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
        let mut s = joined();
        for (k, snap) in snaps.into_iter().enumerate() {
            let now = k as u64 * MS;
            let d = server(Channel::Unreliable, server_envelope::Body::Snapshot(snap));
            s.receive(&d, now);
            s.receive(&d[..cut % (d.len() + 1)], now);
            let mut flipped = d.clone();
            let at = flip.0 % flipped.len();
            flipped[at] ^= 1 << (flip.1 % 8);
            s.receive(&flipped, now);
            s.poll(now);
            if let Some(v) = s.view() {
                let rebuilt = View::new(v.tick(), v.objects().to_vec());
                prop_assert_eq!(rebuilt.as_ref(), Ok(v));
                prop_assert_eq!(v.tick(), s.snapshot_ack());
            }
        }
    }

    #[test]
    fn hostile_control_messages_never_panic(first_seq in any::<u64>(), n in 0usize..5, tick in any::<u64>(), rate in any::<u32>(), echo in any::<u64>(), now in any::<u64>()) {
        let mut s = ClientSession::new(ClientConfig::new("t"), 0);
        s.poll(0);
        let w = server(Channel::Reliable, server_envelope::Body::Welcome(Welcome { player_id: u64::MAX, tick, tick_rate_hz: rate, snapshot_rate_hz: rate, ..Welcome::default() }));
        s.receive(&w, 1);
        let ev = Event { kind: None };
        s.receive(&server(Channel::Unreliable, server_envelope::Body::Events(EventBatch { first_seq, events: vec![ev; n] })), now);
        s.receive(&server(Channel::Unreliable, server_envelope::Body::Pong(Pong { echo_us: echo })), now);
        s.receive(&server(Channel::Reliable, server_envelope::Body::Reject(Reject { reason: rate as i32, detail: String::new() })), now);
        s.poll(now);
        s.poll(now.saturating_add(TICK_US));
        let _ = s.goodbye();
    }
}
