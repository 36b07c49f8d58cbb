//! Envelopes: turning one message into one datagram payload and back, with the protocol version,
//! the channel and the per-channel sequence number, and with the size and count limits checked
//! before anything else looks at the message.
//!
//! Never panics on bad bytes; allocation is bounded by the datagram size. Knows nothing about
//! sockets, sessions or time: the caller owns the sequence counters (one per channel and
//! direction) and decides what to do with a message.

use prost::Message;

use crate::proto::{Channel, ClientEnvelope, Reject, RejectReason, ServerEnvelope, Snapshot, client_envelope, server_envelope};

/// The protocol version this build speaks. 2: every datagram after the handshake is sealed
/// ([`crate::seal`]) and the join token carries the session key. A version-1 client's Hello is
/// answered with `Reject{BAD_VERSION}` in version 1.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest datagram payload accepted (the UDP maximum over IPv4).
pub const DATAGRAM_BYTES_MAX: usize = 65_507;
/// Largest join token accepted in a `Hello`.
pub const JOIN_TOKEN_BYTES_MAX: usize = 2_048;
/// Largest cookie accepted in a `Hello` (the server's are 16 bytes).
pub const COOKIE_BYTES_MAX: usize = 64;
/// Most inputs accepted in one `InputBatch` (a client resends its last few, not its history).
pub const INPUTS_PER_BATCH_MAX: usize = 16;

/// A datagram that is not a message this build accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("datagram of {len_bytes} bytes is over the {DATAGRAM_BYTES_MAX}-byte limit")]
    TooLarge { len_bytes: usize },
    #[error("datagram is not a protobuf envelope: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("protocol version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    BadVersion { found: u32 },
    #[error("channel {found} is unknown")]
    BadChannel { found: i32 },
    #[error("envelope carries no message")]
    Empty,
    #[error("{what}: {found} is over the limit of {max}")]
    OverLimit { what: &'static str, found: usize, max: usize },
}

/// Where a decoded message came from on the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub channel: Channel,
    pub sequence: u32,
}

/// One server→client message as a datagram payload.
pub fn encode_server(stamp: Stamp, body: server_envelope::Body) -> Vec<u8> {
    ServerEnvelope {
        protocol_version: PROTOCOL_VERSION,
        channel: stamp.channel as i32,
        sequence: stamp.sequence,
        body: Some(body),
    }
    .encode_to_vec()
}

/// A `Reject` body: the reason, and a detail for humans and logs.
pub fn reject(reason: RejectReason, detail: impl Into<String>) -> server_envelope::Body {
    server_envelope::Body::Reject(Reject {
        reason: reason as i32,
        detail: detail.into(),
    })
}

/// One client→server message as a datagram payload.
pub fn encode_client(stamp: Stamp, body: client_envelope::Body) -> Vec<u8> {
    ClientEnvelope {
        protocol_version: PROTOCOL_VERSION,
        channel: stamp.channel as i32,
        sequence: stamp.sequence,
        body: Some(body),
    }
    .encode_to_vec()
}

fn check_common(len_bytes: usize) -> Result<(), EnvelopeError> {
    if len_bytes > DATAGRAM_BYTES_MAX {
        return Err(EnvelopeError::TooLarge { len_bytes });
    }
    Ok(())
}

fn stamp(version: u32, channel: i32, sequence: u32) -> Result<Stamp, EnvelopeError> {
    if version != PROTOCOL_VERSION {
        return Err(EnvelopeError::BadVersion { found: version });
    }
    let channel = Channel::try_from(channel).map_err(|_| EnvelopeError::BadChannel { found: channel })?;
    Ok(Stamp { channel, sequence })
}

/// Reads a server→client datagram.
pub fn decode_server(bytes: &[u8]) -> Result<(Stamp, server_envelope::Body), EnvelopeError> {
    check_common(bytes.len())?;
    let env = ServerEnvelope::decode(bytes)?;
    let stamp = stamp(env.protocol_version, env.channel, env.sequence)?;
    Ok((stamp, env.body.ok_or(EnvelopeError::Empty)?))
}

/// The `ServerEnvelope` field that holds a `Snapshot` body.
const SNAPSHOT_BODY_TAG: u32 = 6;

/// [`decode_server`] for a client that keeps one: a snapshot is decoded into the vectors of the
/// last one handed back with [`ServerDecoder::recycle`], so once they have grown to the size of
/// the snapshots a client gets, decoding one allocates nothing. (prost appends a packed column's
/// values one at a time: a fresh decode grew each column's vector several times, the largest
/// share of a client's allocations.)
///
/// It is prost's decoding all the same, with the same results as [`decode_server`] but for one
/// thing: a snapshot without `updates` may come with empty ones, which mean the same. Before a
/// datagram with a snapshot body, the kept snapshot is cleared to its defaults (keeping the room)
/// and put in the envelope as its body; prost then merges the datagram into the envelope as into a
/// new one, a snapshot body into the body of the same kind.
#[derive(Debug, Default)]
pub struct ServerDecoder {
    spare: Option<Snapshot>,
}

impl ServerDecoder {
    pub fn decode(&mut self, bytes: &[u8]) -> Result<(Stamp, server_envelope::Body), EnvelopeError> {
        check_common(bytes.len())?;
        let mut env = ServerEnvelope::default();
        // Only a datagram with a snapshot body takes the kept one (another body would replace it).
        if has_field(bytes, SNAPSHOT_BODY_TAG)
            && let Some(mut s) = self.spare.take()
        {
            clear_snapshot(&mut s);
            env.body = Some(server_envelope::Body::Snapshot(s));
        }
        env.merge(bytes)?;
        let stamp = stamp(env.protocol_version, env.channel, env.sequence)?;
        Ok((stamp, env.body.ok_or(EnvelopeError::Empty)?))
    }

    /// Hands a decoded body back once read: a snapshot's vectors serve the next one.
    pub fn recycle(&mut self, body: server_envelope::Body) {
        if let server_envelope::Body::Snapshot(s) = body {
            self.spare = Some(s);
        }
    }
}

/// `s` as prost's `Snapshot::default()`, but for the room of its vectors (and empty `updates`
/// for none).
fn clear_snapshot(s: &mut Snapshot) {
    // Every field named, so that a field added to the message cannot be left out here.
    let Snapshot {
        tick,
        baseline_tick,
        ack_input_tick,
        creates,
        updates,
        remove_id_gaps,
        part,
        more_follow,
    } = s;
    *tick = 0;
    *baseline_tick = 0;
    *ack_input_tick = 0;
    creates.clear();
    if let Some(crate::proto::ObjectDeltas { id_gaps, masks, values }) = updates {
        id_gaps.clear();
        masks.clear();
        values.clear();
    }
    remove_id_gaps.clear();
    *part = 0;
    *more_follow = false;
}

/// Whether the top level of the message in `bytes` has field `tag` (each field read with prost's
/// own key reader and skipped whole); false on bytes that are not a message, which prost's decode
/// then refuses.
fn has_field(mut bytes: &[u8], tag: u32) -> bool {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    while !bytes.is_empty() {
        let Ok((t, wire_type)) = decode_key(&mut bytes) else {
            return false;
        };
        if t == tag {
            return true;
        }
        if skip_field(wire_type, t, &mut bytes, DecodeContext::default()).is_err() {
            return false;
        }
    }
    false
}

/// Reads a client→server datagram, enforcing the token and input-batch limits. A `Hello` whose
/// own version differs from this build's is a [`EnvelopeError::BadVersion`] too, so the server
/// can answer `Reject { BAD_VERSION }`.
pub fn decode_client(bytes: &[u8]) -> Result<(Stamp, client_envelope::Body), EnvelopeError> {
    check_common(bytes.len())?;
    // Input batches, most of what arrives, are read by hand; anything else by prost.
    let env = match crate::input_decode::decode_input_envelope(bytes) {
        Some(env) => env,
        None => ClientEnvelope::decode(bytes)?,
    };
    let stamp = stamp(env.protocol_version, env.channel, env.sequence)?;
    let body = env.body.ok_or(EnvelopeError::Empty)?;
    match &body {
        client_envelope::Body::Hello(h) => {
            if h.protocol_version != PROTOCOL_VERSION {
                return Err(EnvelopeError::BadVersion { found: h.protocol_version });
            }
            if h.cookie.len() > COOKIE_BYTES_MAX {
                return Err(EnvelopeError::OverLimit {
                    what: "cookie bytes",
                    found: h.cookie.len(),
                    max: COOKIE_BYTES_MAX,
                });
            }
            if h.join_token.len() > JOIN_TOKEN_BYTES_MAX {
                return Err(EnvelopeError::OverLimit {
                    what: "join token bytes",
                    found: h.join_token.len(),
                    max: JOIN_TOKEN_BYTES_MAX,
                });
            }
        }
        client_envelope::Body::Inputs(b) => {
            if b.inputs.len() > INPUTS_PER_BATCH_MAX {
                return Err(EnvelopeError::OverLimit {
                    what: "inputs per batch",
                    found: b.inputs.len(),
                    max: INPUTS_PER_BATCH_MAX,
                });
            }
        }
        client_envelope::Body::SnapshotAck(_)
        | client_envelope::Body::Ping(_)
        | client_envelope::Body::Pong(_)
        | client_envelope::Body::Goodbye(_) => {}
    }
    Ok((stamp, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Event, Hello, Input, InputBatch, Notice, NoticeKind, Reject, RejectReason, event};

    fn reliable(sequence: u32) -> Stamp {
        Stamp {
            channel: Channel::Reliable,
            sequence,
        }
    }

    #[test]
    fn client_round_trip_and_limits() {
        let hello = client_envelope::Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            join_token: "abc".into(),
            ..Default::default()
        });
        let b = encode_client(reliable(7), hello.clone());
        assert_eq!(decode_client(&b), Ok((reliable(7), hello)));

        let old = encode_client(
            reliable(0),
            client_envelope::Body::Hello(Hello {
                protocol_version: 0,
                join_token: "t".into(),
                ..Default::default()
            }),
        );
        assert_eq!(decode_client(&old), Err(EnvelopeError::BadVersion { found: 0 }));

        let long = client_envelope::Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            join_token: "x".repeat(JOIN_TOKEN_BYTES_MAX + 1),
            ..Default::default()
        });
        assert!(matches!(
            decode_client(&encode_client(reliable(0), long)),
            Err(EnvelopeError::OverLimit { .. })
        ));

        let input = Input {
            tick: 3,
            move_x: -4,
            move_y: 5,
            attack: true,
        };
        let many = client_envelope::Body::Inputs(InputBatch {
            inputs: vec![input; INPUTS_PER_BATCH_MAX + 1],
            ..Default::default()
        });
        let unreliable = Stamp {
            channel: Channel::Unreliable,
            sequence: 1,
        };
        assert!(matches!(
            decode_client(&encode_client(unreliable, many)),
            Err(EnvelopeError::OverLimit { .. })
        ));

        let mut future = ClientEnvelope {
            protocol_version: 3,
            channel: 1,
            sequence: 0,
            body: None,
        }
        .encode_to_vec();
        assert_eq!(decode_client(&future), Err(EnvelopeError::BadVersion { found: 3 }));
        future = ClientEnvelope {
            protocol_version: PROTOCOL_VERSION,
            channel: 1,
            sequence: 0,
            body: None,
        }
        .encode_to_vec();
        assert_eq!(decode_client(&future), Err(EnvelopeError::Empty));
        future = ClientEnvelope {
            protocol_version: PROTOCOL_VERSION,
            channel: 9,
            sequence: 0,
            body: None,
        }
        .encode_to_vec();
        assert_eq!(decode_client(&future), Err(EnvelopeError::BadChannel { found: 9 }));
        assert!(matches!(
            decode_client(&vec![0u8; DATAGRAM_BYTES_MAX + 1]),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn server_round_trip() {
        for body in [
            server_envelope::Body::Reject(Reject {
                reason: RejectReason::Draining as i32,
                detail: "bye".into(),
            }),
            server_envelope::Body::Event(Event {
                kind: Some(event::Kind::Notice(Notice {
                    kind: NoticeKind::Draining as i32,
                    text: "draining".into(),
                })),
            }),
        ] {
            let b = encode_server(reliable(u32::MAX), body.clone());
            assert_eq!(decode_server(&b), Ok((reliable(u32::MAX), body)));
        }
    }

    /// A snapshot decoded with empty `updates` is the one decoded without any.
    fn updates_none_if_empty(
        r: Result<(Stamp, server_envelope::Body), EnvelopeError>,
    ) -> Result<(Stamp, server_envelope::Body), EnvelopeError> {
        r.map(|(stamp, mut body)| {
            if let server_envelope::Body::Snapshot(s) = &mut body
                && s.updates
                    .as_ref()
                    .is_some_and(|u| u.id_gaps.is_empty() && u.masks.is_empty() && u.values.is_empty())
            {
                s.updates = None;
            }
            (stamp, body)
        })
    }

    #[test]
    fn the_reusing_decoder_reads_what_a_fresh_decode_reads() {
        let snapshot = |tick: u64, updates: bool, removes: Vec<u64>| {
            server_envelope::Body::Snapshot(Snapshot {
                tick,
                baseline_tick: tick - 3,
                ack_input_tick: 7,
                creates: vec![crate::proto::ObjectState {
                    id_gap: 5,
                    kind: 1,
                    x: 10,
                    y: 20,
                    vx: -1,
                    vy: 2,
                    hp: 100,
                }],
                updates: updates.then(|| crate::proto::ObjectDeltas {
                    id_gaps: vec![1, 2, 3],
                    masks: vec![3, 1, 2],
                    values: vec![4, -4, 1, 9],
                }),
                remove_id_gaps: removes,
                part: 1,
                more_follow: true,
            })
        };
        let unreliable = |sequence| Stamp {
            channel: Channel::Unreliable,
            sequence,
        };
        let datagrams = [
            encode_server(unreliable(1), snapshot(10, true, vec![4, 1])),
            // No updates and no removes: nothing of the last one's may be left.
            encode_server(unreliable(2), snapshot(13, false, vec![])),
            encode_server(reliable(3), reject(RejectReason::Draining, "bye")),
            encode_server(unreliable(4), snapshot(16, true, vec![9])),
            // An envelope with no body at all, then bytes that are not one.
            ServerEnvelope {
                protocol_version: PROTOCOL_VERSION,
                channel: Channel::Unreliable as i32,
                sequence: 5,
                body: None,
            }
            .encode_to_vec(),
            vec![0x32, 0x05, 0x08],
            encode_server(unreliable(6), snapshot(19, true, vec![])),
            // Two envelopes in one: prost merges the second into the first (two snapshots make
            // one), or the second body replaces the first.
            [
                encode_server(unreliable(7), snapshot(22, true, vec![1])),
                encode_server(unreliable(8), snapshot(25, false, vec![2])),
            ]
            .concat(),
            [
                encode_server(unreliable(9), snapshot(28, true, vec![])),
                encode_server(reliable(10), reject(RejectReason::Draining, "bye")),
            ]
            .concat(),
            [
                encode_server(reliable(11), reject(RejectReason::Draining, "bye")),
                encode_server(unreliable(12), snapshot(31, true, vec![3])),
            ]
            .concat(),
            // Updates present but empty.
            encode_server(
                unreliable(13),
                server_envelope::Body::Snapshot(Snapshot {
                    tick: 34,
                    updates: Some(crate::proto::ObjectDeltas::default()),
                    ..Snapshot::default()
                }),
            ),
        ];
        let mut decoder = ServerDecoder::default();
        for d in &datagrams {
            let reused = decoder.decode(d);
            assert_eq!(
                updates_none_if_empty(reused.clone()),
                updates_none_if_empty(decode_server(d)),
                "{d:?}"
            );
            if let Ok((_, body)) = reused {
                decoder.recycle(body);
            }
        }
        assert_eq!(decoder.decode(&datagrams[4]), Err(EnvelopeError::Empty));
    }

    #[test]
    fn every_truncation_and_flip_is_an_error_or_a_message() {
        let hello = client_envelope::Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            join_token: "a.b.c".into(),
            cookie: vec![7; 16],
        });
        let full = encode_client(reliable(300), hello);
        for cut in 0..full.len() {
            let _ = decode_client(&full[..cut]);
        }
        for at in 0..full.len() {
            for bit in 0..8 {
                let mut b = full.clone();
                b[at] ^= 1 << bit;
                let _ = decode_client(&b);
            }
        }
    }
}
