//! Fuzz harness for the decoders that read what is on disk: snapshots (`snapshot::decode`,
//! `decode_meta`, `decode_full`) and journal segments (`SegmentReader`, header then records).
//! Hostile or damaged bytes must give an error, never a panic, a hang or an unbounded allocation.
//! The protocol's decoders have theirs in net/tests/fuzz.rs.
//!
//! Bounded in CI (`FUZZ_CASES`, default 256 per target); longer on demand:
//! `FUZZ_CASES=200000 cargo test --release -p zone-persistence --test fuzz`.

use proptest::prelude::*;
use zone_persistence::journal::{JournalHeader, SegmentReader, encode_header};
use zone_persistence::snapshot;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}

/// A valid segment header, so that the fuzzer's bytes reach the record decoder.
fn header_bytes() -> Vec<u8> {
    let h = JournalHeader::genesis(7, 60, [3; 32], "demo".into(), "name = \"demo\"\n".into(), 42);
    encode_header(&h)
}

/// Reads a whole segment from memory; the number of records is bounded by the input's size.
fn read_all(bytes: &[u8]) {
    let Ok(mut r) = SegmentReader::new(bytes) else { return };
    for _ in 0..=bytes.len() {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("more records than bytes: the reader does not advance");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn snapshot_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = snapshot::decode(&bytes);
        let _ = snapshot::decode_meta(&bytes);
        let _ = snapshot::decode_full(&bytes);
    }

    #[test]
    fn segment_reader_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        read_all(&bytes);
    }

    #[test]
    fn segment_reader_never_panics_on_records_after_a_valid_header(
        tail in proptest::collection::vec(any::<u8>(), 0..4096),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = header_bytes();
        bytes.extend_from_slice(&tail);
        read_all(&bytes);
        // And the same with the header itself cut short anywhere.
        let n = cut.index(bytes.len().max(1));
        read_all(&bytes[..n.min(bytes.len())]);
    }
}
