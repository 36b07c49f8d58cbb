//! The input journal: record a run, replay it, get the same hash; and every way a journal can be
//! damaged gives a clear answer, never a panic.

use std::path::{Path, PathBuf};

use zone_persistence::{JournalHeader, JournalWriter, Record};
use zone_server::executor::PoolExecutor;
use zone_server::replay::{ReplayError, replay};
use zone_server::runner::{Hooks, RunConfig, RunOutcome, run};
use zone_sim::{Serial, TickBatch, ZoneHash};
use zone_tests::{BUSY_ZONE, busy_spec};

fn write_zone(dir: &Path) -> PathBuf {
    let p = dir.join("busy.toml");
    std::fs::write(&p, BUSY_ZONE).unwrap();
    p
}

fn record(dir: &Path, ticks: u64, hash_interval: u32, threads: usize) -> (PathBuf, RunOutcome) {
    let journal = dir.join(format!("run-{ticks}-{hash_interval}-{threads}.journal"));
    let cfg = RunConfig {
        seed: 17,
        threads,
        sim_players: 25,
        journal: Some(journal.clone()),
        hash_interval,
        ..RunConfig::headless(ticks)
    };
    let zone = zone_server::zone_load::load_zone(&write_zone(dir)).unwrap();
    let out = run(&cfg, &zone, Hooks::default(), None).unwrap();
    (journal, out)
}

#[test]
fn record_then_replay_gives_the_same_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, live) = record(dir.path(), 500, 1, 2);
    assert_eq!(live.final_hash.tick, 500);
    for threads in [1, 2, 8] {
        let exec = PoolExecutor::new(threads, 16).unwrap();
        let out = replay(&journal, &exec, |_| {}).unwrap();
        assert_eq!(out.final_hash, live.final_hash, "{threads} threads");
        assert_eq!(out.final_line(), live.final_line());
        assert_eq!(out.hashes_checked, 501, "every tick plus the end record");
        assert!(out.clean_end);
        assert_eq!(out.torn_tail_at, None);
    }
}

#[test]
fn a_torn_tail_replays_up_to_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = record(dir.path(), 300, 1, 1);
    let bytes = std::fs::read(&journal).unwrap();
    let mut last_tick = u64::MAX;
    // Cut at many points through the file: each replays cleanly to an earlier tick.
    for cut in (bytes.len() / 3..bytes.len() - 1).step_by(bytes.len() / 17) {
        let torn = dir.path().join("torn.journal");
        std::fs::write(&torn, &bytes[..cut]).unwrap();
        let out = replay(&torn, &Serial, |_| {}).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(!out.clean_end);
        assert!(out.final_hash.tick < 300);
        assert!(last_tick == u64::MAX || out.final_hash.tick >= last_tick);
        last_tick = out.final_hash.tick;
    }
}

#[test]
fn a_corrupt_journal_names_the_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = record(dir.path(), 200, 10, 1);
    let mut bytes = std::fs::read(&journal).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    let bad = dir.path().join("bad.journal");
    std::fs::write(&bad, &bytes).unwrap();
    let err = replay(&bad, &Serial, |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ReplayError::Journal(zone_persistence::JournalError::Corrupt { offset, .. }) if offset as usize <= at),
        "{msg}"
    );
    assert!(msg.contains("corrupt at byte"), "{msg}");

    std::fs::write(&bad, b"this is not a journal").unwrap();
    assert!(
        replay(&bad, &Serial, |_| {})
            .unwrap_err()
            .to_string()
            .contains("not a zone journal")
    );
    std::fs::write(&bad, &bytes[..20]).unwrap();
    assert!(replay(&bad, &Serial, |_| {}).unwrap_err().to_string().contains("truncated"));
}

/// A journal whose recorded hash does not match what the zone computes: replay names the tick and
/// the shard.
#[test]
fn divergence_names_the_tick_and_shard() {
    let dir = tempfile::tempdir().unwrap();
    let spec = busy_spec();
    let mut zone = zone_sim::Zone::new(spec.clone(), 4).unwrap();
    let path = dir.path().join("div.journal");
    let header = JournalHeader {
        seed: 4,
        hash_interval: 1,
        zone_digest: spec.digest,
        zone_name: "busy.toml".into(),
        zone_toml: BUSY_ZONE.into(),
    };
    let mut w = JournalWriter::create(&path, &header).unwrap();
    for tick in 1..=8 {
        zone.step_batch(
            &TickBatch {
                tick,
                ..Default::default()
            },
            &Serial,
        )
        .unwrap();
        let mut h = zone.hash(&Serial);
        if tick == 6 {
            h.shards[5] ^= 1;
            h = ZoneHash::combine(h.tick, h.shards);
        }
        w.append(&Record::Hash(h)).unwrap();
    }
    w.flush().unwrap();
    match replay(&path, &Serial, |_| {}).unwrap_err() {
        ReplayError::Divergence { tick, shard, .. } => assert_eq!((tick, shard), (6, 5)),
        e => panic!("{e}"),
    }
}

#[test]
fn a_journal_with_a_tampered_zone_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = busy_spec();
    let path = dir.path().join("z.journal");
    let header = JournalHeader {
        seed: 1,
        hash_interval: 1,
        zone_digest: spec.digest,
        zone_name: "busy.toml".into(),
        zone_toml: BUSY_ZONE.replace("count = 300", "count = 301"),
    };
    JournalWriter::create(&path, &header).unwrap().flush().unwrap();
    assert!(matches!(replay(&path, &Serial, |_| {}), Err(ReplayError::DigestMismatch)));
}

#[test]
fn a_bad_zone_file_names_file_field_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.toml");
    std::fs::write(&p, BUSY_ZONE.replace("speed_m_per_s = 9", "speed_m_per_s = -9")).unwrap();
    let err = zone_server::zone_load::load_zone(&p).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("broken.toml"), "{msg}");
    assert!(msg.contains("npc_kind[0].speed_m_per_s"), "{msg}");
    assert!(msg.contains("use 0 to 1000 m/s"), "{msg}");

    let missing = zone_server::zone_load::load_zone(&dir.path().join("nope.toml")).err().unwrap();
    assert!(format!("{missing:#}").contains("nope.toml"));
}
