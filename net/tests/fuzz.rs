//! A proptest-driven fuzz harness for every decoder of `zone-net` that bytes from the network
//! reach: the laminar frame, both envelopes, the snapshot decoder (against a real baseline), the
//! join token, the sealed-datagram opener, the gate's screening, and the client and server state
//! machines fed whole datagrams. Each target gets arbitrary bytes and mutations (bit flips,
//! truncations, splices) of valid datagrams, and must return an error or a value, never panic,
//! within bounded memory.
//!
//! Bounded in CI (`FUZZ_CASES`, default 256 per target: about a second); longer on demand:
//! `FUZZ_CASES=200000 cargo test --release -p zone-net --test fuzz` (see `benchmarks/fuzz.sh`).
//! The journal and snapshot decoders of `zone-persistence` are not covered here.

use proptest::prelude::*;
use zone_net::client::{ClientConfig, ClientSession};
use zone_net::delta::{SnapshotFrame, decode_snapshot, encode_delta_all};
use zone_net::endpoint::{Admission, Endpoint, EndpointConfig};
use zone_net::envelope::{ServerDecoder, Stamp, decode_client, decode_server, encode_client};
use zone_net::interest::{PosMm, ShardGrid};
use zone_net::proto::{Channel, Hello, Input, InputBatch, Welcome, client_envelope, server_envelope};
use zone_net::seal::{Direction, Opener, Sealer};
use zone_net::view::{QObject, View};
use zone_net::wire;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}

const KEY: [u8; 32] = [3; 32];
const SECRET: &[u8] = b"fuzz secret";

fn base_view() -> View {
    let objects = (0..40u64)
        .map(|i| QObject {
            id: 1 + i * 3,
            kind: (i % 4) as u16,
            x: 1000 + i as u32 * 7,
            y: 2000 - i as u32 * 5,
            vx: (i as i16 % 7) - 3,
            vy: 2 - (i as i16 % 5),
            hp: 100,
        })
        .collect();
    View::new(30, objects).unwrap()
}

/// Valid datagrams of every kind, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let base = base_view();
    let mut next = base.objects().to_vec();
    next.retain(|o| o.id % 2 == 1);
    for o in &mut next {
        o.x += 3;
        o.hp -= 1;
    }
    next.push(QObject {
        id: 500,
        kind: 1,
        x: 9,
        y: 9,
        vx: 0,
        vy: 0,
        hp: 5,
    });
    let next = View::new(36, next).unwrap();
    let mut out = encode_delta_all(
        Some(&base),
        &next,
        SnapshotFrame {
            ack_input_tick: 3,
            sequence: 1,
        },
        300,
        (1000, 2000),
    )
    .unwrap()
    .0;
    out.extend(encode_delta_all(None, &base, SnapshotFrame::default(), 300, (0, 0)).unwrap().0);
    let token = zone_net::token::mint(SECRET, 5, "z", u64::MAX - 1, [1; 32]).unwrap().token;
    out.push(encode_client(
        Stamp {
            channel: Channel::Reliable,
            sequence: 0,
        },
        client_envelope::Body::Hello(Hello {
            protocol_version: zone_net::envelope::PROTOCOL_VERSION,
            join_token: token,
            cookie: vec![1; 16],
        }),
    ));
    let batch = encode_client(
        Stamp {
            channel: Channel::Unreliable,
            sequence: 4,
        },
        client_envelope::Body::Inputs(InputBatch {
            inputs: vec![
                Input {
                    tick: 9,
                    move_x: -5,
                    move_y: 7,
                    attack: true
                };
                4
            ],
            snapshot_ack: 30,
            events_received: 2,
        }),
    );
    out.push(Sealer::new(&KEY, Direction::ClientToServer).seal(&batch));
    out.push(batch);
    out
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    let n = seeds.len();
    let flip_seeds = seeds.clone();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1500),
        (0..n, prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)).prop_map(move |(i, flips)| {
            let mut d = flip_seeds[i].clone();
            for (at, bits) in flips {
                if !d.is_empty() {
                    let at = at % d.len();
                    d[at] ^= bits;
                }
            }
            d
        }),
        (0..n, any::<usize>(), any::<usize>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map({
            move |(i, cut, at, splice)| {
                let d = &seeds[i];
                let cut = cut % (d.len() + 1);
                let mut d = d[..cut].to_vec();
                let at = at % (d.len() + 1);
                d.splice(at..at, splice);
                d
            }
        }),
    ]
}

fn endpoint() -> Endpoint<u8> {
    Endpoint::new(EndpointConfig {
        max_clients: 4,
        idle_timeout_us: 5_000_000,
        snapshot_rate_hz: 20,
        interest_radius_mm: 100_000,
        interest_max: 64,
        interest_refresh_frames: 1,
        datagrams_per_snapshot_max: 4,
        welcome: Welcome::default(),
        grid: ShardGrid {
            min: PosMm { x_mm: 0, y_mm: 0 },
            max: PosMm {
                x_mm: 100_000,
                y_mm: 100_000,
            },
            cols: 1,
            rows: 1,
        },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn envelopes_frames_and_tokens(d in mutated()) {
        let _ = wire::unframe(&d);
        let _ = decode_client(&d);
        let _ = decode_server(&d);
        if let Ok(s) = std::str::from_utf8(&d) {
            let _ = zone_net::token::verify(SECRET, s, "z", 0);
        }
        let ok = |c: &[u8]| c == [1; 16];
        let mut take = || true;
        let mut cx = zone_net::gate::ScreenContext {
            token_secret: Some(SECRET),
            zone_id: "z",
            now_unix: 0,
            cookie_ok: &ok,
            cookie: [1; 16],
            take_handshake: &mut take,
            full: false,
        };
        for datagram in [wire::frame(&d), d.clone()] {
            match zone_net::gate::screen(&datagram, &mut cx) {
                zone_net::gate::Verdict::Challenge { reply } | zone_net::gate::Verdict::Refuse { reply: Some(reply), .. } => {
                    prop_assert!(reply.len() <= datagram.len(), "no amplification");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_reusing_decoder_reads_what_a_fresh_decode_reads(ds in prop::collection::vec(mutated(), 1..8)) {
        // One decoder for the whole sequence, as a client keeps it.
        let mut decoder = ServerDecoder::default();
        // Empty updates mean no updates (on either side: a datagram may carry empty ones).
        let normal = |mut r: Result<(Stamp, server_envelope::Body), zone_net::envelope::EnvelopeError>| {
            if let Ok((_, server_envelope::Body::Snapshot(s))) = &mut r
                && s.updates.as_ref().is_some_and(|u| u.id_gaps.is_empty() && u.masks.is_empty() && u.values.is_empty())
            {
                s.updates = None;
            }
            r
        };
        for d in &ds {
            let reused = decoder.decode(d);
            prop_assert_eq!(normal(reused.clone()), normal(decode_server(d)));
            if let Ok((_, body)) = reused {
                decoder.recycle(body);
            }
        }
    }

    #[test]
    fn snapshots_against_a_baseline(d in mutated()) {
        let base = base_view();
        for b in [None, Some(&base)] {
            if let Ok(s) = decode_snapshot(b, &d) {
                prop_assert!(s.view.len() <= zone_net::view::VIEW_OBJECTS_MAX);
            }
        }
    }

    #[test]
    fn sealed_datagrams_open_only_intact(d in mutated()) {
        let mut o = Opener::new(&KEY, Direction::ClientToServer);
        if let Ok(env) = o.open(&d) {
            // Only the untouched seed authenticates.
            prop_assert!(decode_client(&env).is_ok());
        }
    }

    #[test]
    fn the_state_machines_take_any_datagram(ds in prop::collection::vec(mutated(), 1..8)) {
        let mut ep = endpoint();
        let mut client = ClientSession::new(ClientConfig::new("t").with_key(KEY), 0);
        let admission = Admission { player: 5, key: KEY };
        for (i, d) in ds.iter().enumerate() {
            let now = i as u64 * 10_000;
            ep.handle_datagram(1, d, || Some(admission), now);
            ep.handle_timeout(now);
            while ep.poll_transmit().is_some() {}
            while ep.poll_event().is_some() {}
            let _ = client.receive(&wire::frame(d), now);
            let _ = client.poll(now);
        }
        prop_assert!(ep.sessions() <= 1);
    }
}
