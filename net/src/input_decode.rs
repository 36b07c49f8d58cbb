//! A hand-written reader for the one client datagram that arrives 20 times a second per player
//! (60 with `--input-batch-ticks 1`): a `ClientEnvelope` whose body is an `InputBatch`. prost's
//! generic decoder spent about 1,600 of the 5,129 instructions the endpoint spends per input
//! datagram; with this reader the datagram takes 4,490 (`endpoint_cost` under callgrind, `benchmarks/2026-11-30-input-path.md`).
//!
//! It reads only the plain shape our clients send: the envelope's fields 1–3 and 5, the batch's
//! fields 1–3 and the input's fields 1–4, each singular field at most once, with the wire types
//! the schema gives. On anything else (another body, an unknown or repeated field, a bad varint,
//! a length past the end) it returns `None` and [`crate::envelope::decode_client`] hands the
//! bytes to prost, which decides. So whatever this returns is exactly what prost would: the
//! property tests below hold it to that on prost's encodings, on batches written by hand (any
//! field order, zeros written out, padded varints) and on mutations of both.
//!
//! Never panics and never reads past the slice; allocates only the batch's input list.

use crate::proto::{ClientEnvelope, Input, InputBatch, client_envelope};

/// Wire types of the protobuf encoding.
const VARINT: u64 = 0;
const LEN: u64 = 2;

const fn key(field: u64, wire_type: u64) -> u64 {
    field << 3 | wire_type
}

/// A cursor over a message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// A varint as prost reads one: at most 10 bytes, the tenth at most 1. Not prost's own
    /// `encoding::decode_varint`: called through its `Buf` on this reader's bytes, that made the
    /// datagram 5,237 instructions against this one's 4,490 (`endpoint_cost`, callgrind).
    fn varint(&mut self) -> Option<u64> {
        // Keys and most values are a single byte.
        let b = *self.bytes.get(self.at)?;
        if b < 0x80 {
            self.at += 1;
            return Some(u64::from(b));
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            if i == 9 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// The bytes of a length-delimited field.
    fn sub(&mut self) -> Option<Reader<'a>> {
        let len = usize::try_from(self.varint()?).ok()?;
        let end = self.at.checked_add(len)?;
        let bytes = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(Reader::new(bytes))
    }
}

/// Marks field `bit` as seen; false if it already was (a repeated singular field: prost's rules
/// for that are left to prost).
fn first(seen: &mut u8, bit: u8) -> bool {
    let fresh = *seen & bit == 0;
    *seen |= bit;
    fresh
}

/// `sint32` as prost reads it: the low 32 bits, zigzag-decoded.
fn sint32(v: u64) -> i32 {
    let v = v as u32;
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// The envelope, if `bytes` is an `InputBatch` envelope of the plain shape (see the module doc).
pub fn decode_input_envelope(bytes: &[u8]) -> Option<ClientEnvelope> {
    let mut r = Reader::new(bytes);
    let mut env = ClientEnvelope::default();
    let mut batch = None;
    let mut seen = 0u8;
    while !r.done() {
        match r.varint()? {
            k if k == key(1, VARINT) && first(&mut seen, 1) => env.protocol_version = r.varint()? as u32,
            k if k == key(2, VARINT) && first(&mut seen, 2) => env.channel = r.varint()? as i32,
            k if k == key(3, VARINT) && first(&mut seen, 4) => env.sequence = r.varint()? as u32,
            k if k == key(5, LEN) && first(&mut seen, 8) => batch = Some(input_batch(r.sub()?)?),
            _ => return None,
        }
    }
    env.body = Some(client_envelope::Body::Inputs(batch?));
    Some(env)
}

fn input_batch(mut r: Reader<'_>) -> Option<InputBatch> {
    let mut b = InputBatch::default();
    let mut seen = 0u8;
    while !r.done() {
        match r.varint()? {
            k if k == key(1, LEN) => {
                if b.inputs.len() >= crate::envelope::INPUTS_PER_BATCH_MAX {
                    // Over the limit: prost reads it and the caller refuses it.
                    return None;
                }
                b.inputs.push(input(r.sub()?)?);
            }
            k if k == key(2, VARINT) && first(&mut seen, 1) => b.snapshot_ack = r.varint()?,
            k if k == key(3, VARINT) && first(&mut seen, 2) => b.events_received = r.varint()?,
            _ => return None,
        }
    }
    Some(b)
}

fn input(mut r: Reader<'_>) -> Option<Input> {
    let mut i = Input::default();
    let mut seen = 0u8;
    while !r.done() {
        match r.varint()? {
            k if k == key(1, VARINT) && first(&mut seen, 1) => i.tick = r.varint()?,
            k if k == key(2, VARINT) && first(&mut seen, 2) => i.move_x = sint32(r.varint()?),
            k if k == key(3, VARINT) && first(&mut seen, 4) => i.move_y = sint32(r.varint()?),
            k if k == key(4, VARINT) && first(&mut seen, 8) => i.attack = r.varint()? != 0,
            _ => return None,
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    fn arb_input() -> impl Strategy<Value = Input> {
        (any::<u64>(), any::<i32>(), any::<i32>(), any::<bool>()).prop_map(|(tick, move_x, move_y, attack)| Input {
            tick,
            move_x,
            move_y,
            attack,
        })
    }

    fn arb_envelope() -> impl Strategy<Value = ClientEnvelope> {
        (
            any::<u32>(),
            any::<i32>(),
            any::<u32>(),
            prop::collection::vec(arb_input(), 0..=crate::envelope::INPUTS_PER_BATCH_MAX),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(protocol_version, channel, sequence, inputs, snapshot_ack, events_received)| ClientEnvelope {
                    protocol_version,
                    channel,
                    sequence,
                    body: Some(client_envelope::Body::Inputs(InputBatch {
                        inputs,
                        snapshot_ack,
                        events_received,
                    })),
                },
            )
    }

    /// Whatever the reader accepts, prost reads the same.
    fn agrees_with_prost(bytes: &[u8]) {
        if let Some(fast) = decode_input_envelope(bytes) {
            assert_eq!(ClientEnvelope::decode(bytes).ok(), Some(fast), "bytes {bytes:?}");
        }
    }

    /// `v` as a varint of at least `min_len` bytes (padded with continuation bytes, which
    /// prost accepts as the same value).
    fn varint(v: u64, min_len: usize, out: &mut Vec<u8>) {
        let mut bytes = Vec::new();
        let mut v = v;
        loop {
            bytes.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        while bytes.len() < min_len.min(10) {
            bytes.push(0x80);
        }
        *bytes.last_mut().unwrap() &= 0x7f;
        out.extend_from_slice(&bytes);
    }

    /// One field as written by hand: its number, and a varint value or nested bytes.
    #[derive(Clone, Debug)]
    enum Field {
        Varint(u64, u64),
        Nested(u64, Vec<u8>),
    }

    /// A message from `fields` in the order given, every varint padded to `pad` bytes.
    fn write(fields: &[Field], pad: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            match f {
                Field::Varint(n, v) => {
                    varint(key(*n, VARINT), pad, &mut out);
                    varint(*v, pad, &mut out);
                }
                Field::Nested(n, b) => {
                    varint(key(*n, LEN), pad, &mut out);
                    varint(b.len() as u64, pad, &mut out);
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    /// Any value, with small ones (and zero, written out) as likely as large ones.
    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), 0u64..300, any::<u64>()]
    }

    /// Fields `1..=n` of a message of varints, each present or not, in any order.
    fn varint_fields(n: u64) -> impl Strategy<Value = Vec<Field>> {
        prop::collection::vec((any::<bool>(), value()), n as usize)
            .prop_map(|vs| {
                vs.into_iter()
                    .zip(1u64..)
                    .filter(|((present, _), _)| *present)
                    .map(|((_, v), n)| Field::Varint(n, v))
                    .collect::<Vec<_>>()
            })
            .prop_shuffle()
    }

    /// An `InputBatch` envelope written by hand, in the shapes the reader takes: fields in any
    /// order, present or absent (zero written out), padded varints, empty inputs.
    fn hand_written() -> impl Strategy<Value = Vec<u8>> {
        let input = varint_fields(4);
        let batch = (
            varint_fields(3).prop_map(|mut f| {
                // The batch has fields 2 and 3 only (field 1 is the inputs).
                f.retain(|f| !matches!(f, Field::Varint(1, _)));
                f
            }),
            prop::collection::vec(input, 0..=crate::envelope::INPUTS_PER_BATCH_MAX),
            1usize..4,
        )
            .prop_map(|(mut fields, inputs, pad)| {
                fields.extend(inputs.iter().map(|i| Field::Nested(1, write(i, pad))));
                fields
            })
            .prop_shuffle();
        (varint_fields(3), batch, 1usize..4).prop_flat_map(|(mut env, batch, pad)| {
            env.push(Field::Nested(5, write(&batch, pad)));
            Just(env).prop_shuffle().prop_map(move |env| write(&env, pad))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn reads_every_encoded_batch_as_prost_does(env in arb_envelope()) {
            let bytes = env.encode_to_vec();
            let fast = decode_input_envelope(&bytes);
            prop_assert_eq!(&fast, &Some(env));
            prop_assert_eq!(fast, ClientEnvelope::decode(&bytes[..]).ok());
        }

        #[test]
        fn reads_every_hand_written_batch_as_prost_does(bytes in hand_written()) {
            let fast = decode_input_envelope(&bytes);
            prop_assert!(fast.is_some(), "bytes {:?}", bytes);
            prop_assert_eq!(fast, ClientEnvelope::decode(&bytes[..]).ok());
        }

        #[test]
        fn what_it_accepts_of_mutated_batches_prost_reads_the_same(
            bytes in prop_oneof![arb_envelope().prop_map(|e| e.encode_to_vec()), hand_written()],
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..4),
        ) {
            let mut bytes = bytes;
            for (at, byte, how) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    2 => { bytes.remove(i); }
                    _ => bytes.truncate(i),
                }
            }
            agrees_with_prost(&bytes);
        }

        /// Arbitrary bytes are almost never accepted (the mutated and hand-written batches above
        /// are where the comparisons happen); this holds the reader to never panicking on them.
        #[test]
        fn arbitrary_bytes_never_panic_and_what_is_accepted_prost_reads_the_same(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            agrees_with_prost(&bytes);
        }
    }

    /// A ten-byte varint is valid only if its last byte is 0 or 1 (prost's rule).
    #[test]
    fn ten_byte_varints_follow_prost() {
        for last in 0u8..=255 {
            let mut bytes = vec![key(3, VARINT) as u8];
            bytes.extend_from_slice(&[0xff; 9]);
            bytes.push(last);
            // A body, so that only the varint decides.
            bytes.extend_from_slice(&[key(5, LEN) as u8, 0]);
            let prost = ClientEnvelope::decode(&bytes[..]).ok();
            assert_eq!(decode_input_envelope(&bytes), prost, "tenth byte {last:#x}");
        }
    }

    #[test]
    fn leaves_other_shapes_to_prost() {
        let env = |body| ClientEnvelope {
            protocol_version: 2,
            channel: 1,
            sequence: 7,
            body: Some(body),
        };
        // Another body.
        let ping = env(client_envelope::Body::Ping(crate::proto::Ping { sent_us: 5 })).encode_to_vec();
        assert_eq!(decode_input_envelope(&ping), None);
        let batch = env(client_envelope::Body::Inputs(InputBatch {
            inputs: vec![Input {
                tick: 9,
                move_x: -3,
                move_y: 4,
                attack: true,
            }],
            snapshot_ack: 8,
            events_received: 1,
        }));
        let bytes = batch.encode_to_vec();
        assert_eq!(decode_input_envelope(&bytes), Some(batch.clone()));
        // A field repeated (prost's last-one-wins is left to prost), an unknown field, no body.
        let mut twice = bytes.clone();
        twice.extend_from_slice(&[key(3, VARINT) as u8, 9]);
        assert_eq!(decode_input_envelope(&twice), None);
        assert_eq!(ClientEnvelope::decode(&twice[..]).unwrap().sequence, 9);
        let mut unknown = bytes.clone();
        unknown.extend_from_slice(&[key(15, VARINT) as u8, 1]);
        assert_eq!(decode_input_envelope(&unknown), None);
        assert_eq!(decode_input_envelope(&[key(1, VARINT) as u8, 2]), None);
        // Over the input limit: prost reads it, and `decode_client` refuses it.
        let mut over = batch;
        if let Some(client_envelope::Body::Inputs(b)) = over.body.as_mut() {
            b.inputs = vec![Input::default(); crate::envelope::INPUTS_PER_BATCH_MAX + 1];
        }
        assert_eq!(decode_input_envelope(&over.encode_to_vec()), None);
    }
}
