//! The worked examples of `docs/PROTOCOL.md`, checked against the real codec: every ```` ```hex
//! NAME ```` block of the document is parsed out, compared byte for byte with what this build
//! encodes for the example's message, and decoded back with the same functions the client and
//! server use. A document that drifts from the code fails here.
//!
//! `DOC_HEX_PRINT=1 cargo test -p zone-net --test protocol_doc -- --nocapture` prints the current
//! encoding of every example (to refresh the document after a deliberate protocol change).

use std::collections::BTreeMap;
use std::path::Path;

use zone_net::delta::{SnapshotFrame, decode_snapshot, encode_delta_all, predict};
use zone_net::envelope::{Stamp, decode_client, decode_server, encode_client, encode_server};
use zone_net::proto::{
    Challenge, Channel, Event, EventBatch, Hello, Input, InputBatch, Joined, KindInfo, Notice, NoticeKind, Ping, Pong, Reject,
    RejectReason, Welcome, ZoneBounds, client_envelope, event, server_envelope,
};
use zone_net::seal::{Direction, Opener, Sealer};
use zone_net::view::{QObject, View};
use zone_net::wire;

/// The secret and claims of the document's join token.
const SECRET: &[u8] = b"docs/PROTOCOL.md example secret";
const PLAYER: u64 = 42;
const ZONE: &str = "demo";
const EXP: u64 = 2_000_000_000;
const PLAYER_OBJECT: u64 = PLAYER | 1 << 63;
const NPC: u64 = 1 << 40;

/// The `hex NAME` blocks of the document, by name, as bytes.
fn doc_blocks() -> BTreeMap<String, Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    let text = std::fs::read_to_string(&path).expect("read docs/PROTOCOL.md");
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```hex ") else { continue };
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            // Anything after `#` is a comment.
            let data = l.split('#').next().unwrap_or("");
            for tok in data.split_whitespace() {
                bytes.push(u8::from_str_radix(tok, 16).unwrap_or_else(|_| panic!("{name}: `{tok}` is not a hex byte")));
            }
        }
        assert!(out.insert(name.trim().to_owned(), bytes).is_none(), "example {name} appears twice");
    }
    out
}

fn server(channel: Channel, sequence: u32, body: server_envelope::Body) -> Vec<u8> {
    wire::frame(&encode_server(Stamp { channel, sequence }, body))
}

fn client(channel: Channel, sequence: u32, body: client_envelope::Body) -> Vec<u8> {
    wire::frame(&encode_client(Stamp { channel, sequence }, body))
}

/// The example's entropy (a real minter passes 32 fresh random bytes).
const ENTROPY: [u8; 32] = [0x11; 32];

fn grant() -> zone_net::token::JoinGrant {
    zone_net::token::mint(SECRET, PLAYER, ZONE, EXP, ENTROPY).expect("mint")
}

fn token() -> String {
    grant().token
}

fn sealed(direction: Direction, envelope_datagram: &[u8]) -> Vec<u8> {
    let mut s = Sealer::new(&grant().key, direction);
    wire::frame(&s.seal(wire::unframe(envelope_datagram).expect("framed")))
}

fn baseline() -> View {
    View::new(
        30,
        vec![
            QObject {
                id: PLAYER_OBJECT,
                kind: 0,
                x: 1234,
                y: 567,
                vx: -3,
                vy: 0,
                hp: 100,
            },
            QObject {
                id: NPC | 1,
                kind: 1,
                x: 100,
                y: 200,
                vx: 0,
                vy: 0,
                hp: 30,
            },
            QObject {
                id: NPC | 2,
                kind: 1,
                x: 300,
                y: 300,
                vx: 0,
                vy: 2,
                hp: 30,
            },
        ],
    )
    .expect("view")
}

fn next() -> View {
    View::new(
        33,
        vec![
            // Predicted x: 1234 + floor((-3 * 10 * 3 + 50) / 100) = 1234 - 1 = 1233; it is at 1232.
            QObject {
                id: PLAYER_OBJECT,
                kind: 0,
                x: 1232,
                y: 567,
                vx: -3,
                vy: 0,
                hp: 100,
            },
            // Predicted y: 300 + floor((2 * 10 * 3 + 50) / 100) = 301, and it is there: only hp changed.
            QObject {
                id: NPC | 2,
                kind: 1,
                x: 300,
                y: 301,
                vx: 0,
                vy: 2,
                hp: 25,
            },
            QObject {
                id: NPC | 3,
                kind: 2,
                x: 1250,
                y: 580,
                vx: 0,
                vy: 0,
                hp: 50,
            },
        ],
    )
    .expect("view")
}

/// Every example: its name and the bytes this build produces for it.
fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let hello = client_envelope::Body::Hello(Hello {
        protocol_version: zone_net::envelope::PROTOCOL_VERSION,
        join_token: token(),
        cookie: Vec::new(),
    });
    let cookie: Vec<u8> = (0xA0..0xB0).collect();
    let hello_cookie = client_envelope::Body::Hello(Hello {
        protocol_version: zone_net::envelope::PROTOCOL_VERSION,
        join_token: token(),
        cookie: cookie.clone(),
    });
    let welcome = server_envelope::Body::Welcome(Welcome {
        player_id: PLAYER,
        tick: 1200,
        tick_rate_hz: 60,
        snapshot_rate_hz: 20,
        object_id: PLAYER_OBJECT,
        bounds: Some(ZoneBounds {
            min_x_mm: -100_000,
            min_y_mm: 0,
            max_x_mm: 100_000,
            max_y_mm: 200_000,
        }),
        kinds: vec![
            KindInfo {
                kind: 0,
                name: "player".into(),
                hit_points: 100,
            },
            KindInfo {
                kind: 1,
                name: "wolf".into(),
                hit_points: 30,
            },
        ],
        input_lead_ticks_max: 30,
        zone_id: ZONE.into(),
        input_batch_ticks: 3,
    });
    let inputs = client_envelope::Body::Inputs(InputBatch {
        inputs: vec![
            Input {
                tick: 1210,
                move_x: 80,
                move_y: 0,
                attack: false,
            },
            Input {
                tick: 1211,
                move_x: 80,
                move_y: -80,
                attack: false,
            },
            Input {
                tick: 1212,
                move_x: -80,
                move_y: 0,
                attack: true,
            },
        ],
        snapshot_ack: 1206,
        events_received: 2,
    });
    let events = server_envelope::Body::Events(EventBatch {
        first_seq: 2,
        events: vec![
            Event {
                kind: Some(event::Kind::Joined(Joined { player_id: 43, tick: 1203 })),
            },
            Event {
                kind: Some(event::Kind::Notice(Notice {
                    kind: NoticeKind::Draining as i32,
                    text: "bye".into(),
                })),
            },
        ],
    });
    let full = encode_delta_all(
        None,
        &baseline(),
        SnapshotFrame {
            ack_input_tick: 31,
            sequence: 6,
        },
        1195,
        (1234, 567),
    )
    .expect("full")
    .0;
    let delta = encode_delta_all(
        Some(&baseline()),
        &next(),
        SnapshotFrame {
            ack_input_tick: 35,
            sequence: 7,
        },
        1195,
        (1232, 567),
    )
    .expect("delta")
    .0;
    assert_eq!((full.len(), delta.len()), (1, 1), "each example snapshot is one datagram");
    let welcome = server(Channel::Reliable, 0, welcome);
    let inputs = client(Channel::Unreliable, 17, inputs);
    vec![
        ("session-key", grant().key.to_vec()),
        ("hello", client(Channel::Reliable, 0, hello)),
        (
            "challenge",
            server(Channel::Reliable, 0, server_envelope::Body::Challenge(Challenge { cookie })),
        ),
        ("hello-with-cookie", client(Channel::Reliable, 1, hello_cookie)),
        ("welcome-sealed", sealed(Direction::ServerToClient, &welcome)),
        ("welcome", welcome),
        ("input-batch-sealed", sealed(Direction::ClientToServer, &inputs)),
        ("input-batch", inputs),
        ("snapshot-full", wire::frame(&full[0])),
        ("snapshot-delta", wire::frame(&delta[0])),
        ("event-batch", server(Channel::Unreliable, 9, events)),
        (
            "ping",
            server(Channel::Unreliable, 10, server_envelope::Body::Ping(Ping { sent_us: 5_000_000 })),
        ),
        (
            "pong",
            client(Channel::Unreliable, 18, client_envelope::Body::Pong(Pong { echo_us: 5_000_000 })),
        ),
        // What an old (protocol 1) client gets: a Reject in its own version (here without the
        // detail text, which is dropped when it would make the reply larger than the Hello).
        (
            "reject-bad-version",
            wire::frame(&prost::Message::encode_to_vec(&zone_net::proto::ServerEnvelope {
                protocol_version: 1,
                channel: Channel::Reliable as i32,
                sequence: 0,
                body: Some(server_envelope::Body::Reject(Reject {
                    reason: RejectReason::BadVersion as i32,
                    detail: String::new(),
                })),
            })),
        ),
        (
            "goodbye",
            client(Channel::Reliable, 2, client_envelope::Body::Goodbye(Default::default())),
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_example_in_the_document_is_what_the_codec_produces() {
    let doc = doc_blocks();
    let examples = examples();
    if std::env::var_os("DOC_HEX_PRINT").is_some() {
        for (name, bytes) in &examples {
            println!("```hex {name}\n{}\n```\n", hex(bytes));
        }
    }
    for (name, bytes) in &examples {
        let Some(in_doc) = doc.get(*name) else {
            panic!("docs/PROTOCOL.md has no ```hex {name} block; it should be:\n{}", hex(bytes));
        };
        assert_eq!(
            in_doc,
            bytes,
            "example {name} differs from the codec; the codec says:\n{}",
            hex(bytes)
        );
    }
    let names: Vec<&str> = examples.iter().map(|(n, _)| *n).collect();
    for name in doc.keys() {
        assert!(
            names.contains(&name.as_str()),
            "docs/PROTOCOL.md has an example {name} that no test checks"
        );
    }
}

#[test]
fn the_documents_examples_decode_to_what_the_document_says() {
    let doc = doc_blocks();
    let get = |n: &str| doc.get(n).unwrap_or_else(|| panic!("no example {n}")).clone();
    // Every datagram starts with laminar's header.
    for (name, b) in doc.iter().filter(|(n, _)| n.as_str() != "session-key") {
        assert_eq!(&b[..5], &[0x54, 0x09, 0, 0, 0], "{name}");
    }
    let (stamp, body) = decode_client(wire::unframe(&get("hello")).unwrap()).unwrap();
    assert_eq!(
        stamp,
        Stamp {
            channel: Channel::Reliable,
            sequence: 0
        }
    );
    let client_envelope::Body::Hello(h) = body else {
        panic!("not a Hello")
    };
    let claims = zone_net::token::verify(SECRET, &h.join_token, ZONE, EXP - 1).expect("the example token verifies");
    assert_eq!((claims.player_id, claims.exp), (PLAYER, EXP));
    assert_eq!(claims.session_key, grant().key, "the token carries the grant's key");

    // The sealed forms open, with the grant's key, to the plaintext examples.
    let mut from_server = Opener::new(&grant().key, Direction::ServerToClient);
    let opened = from_server.open(wire::unframe(&get("welcome-sealed")).unwrap()).expect("opens");
    assert_eq!(opened, wire::unframe(&get("welcome")).unwrap());
    let mut from_client = Opener::new(&grant().key, Direction::ClientToServer);
    let opened = from_client.open(wire::unframe(&get("input-batch-sealed")).unwrap()).expect("opens");
    assert_eq!(opened, wire::unframe(&get("input-batch")).unwrap());

    let (_, body) = decode_server(wire::unframe(&get("welcome")).unwrap()).unwrap();
    let server_envelope::Body::Welcome(w) = body else {
        panic!("not a Welcome")
    };
    assert_eq!(w.object_id, PLAYER_OBJECT);
    assert_eq!(w.kinds[1].name, "wolf");

    // The delta applies to the full snapshot's view and gives the next view, exactly.
    let full = decode_snapshot(None, wire::unframe(&get("snapshot-full")).unwrap()).unwrap();
    assert_eq!(full.view, baseline());
    let delta = decode_snapshot(Some(&full.view), wire::unframe(&get("snapshot-delta")).unwrap()).unwrap();
    assert_eq!(delta.view, next());
    assert_eq!((delta.tick, delta.baseline_tick, delta.ack_input_tick), (33, 30, 35));
    // The floor division the document insists on: -90 mm + 50 rounds to -1 unit, not 0.
    assert_eq!(predict(&baseline().objects()[2], 3).x, 1233);
    assert_eq!(baseline().objects()[2].id, PLAYER_OBJECT);
}
