//! The input journal: record a run, replay it, get the same hash; and every way a journal can be
//! damaged gives a clear answer, never a panic. Segments: a journal split at snapshot ticks
//! replays from tick 0 and from any snapshot; every truncation of a segment, a crash in the middle
//! of a segment switch, a restore without a journal followed by another crash; and a long run
//! whose disk use stays flat under retention while every kept segment still replays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zone_persistence::breaker::BreakerConfig;
use zone_persistence::segments::{list_segments, segment_name};
use zone_persistence::{JournalError, JournalHeader, JournalReader, JournalWriter, Record, Retention};
use zone_server::executor::PoolExecutor;
use zone_server::persist::PersistConfig;
use zone_server::replay::{ReplayError, replay, replay_from_snapshot};
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
    let bytes = std::fs::read(journal.join(segment_name(0))).unwrap();
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
    let segment = journal.join(segment_name(0));
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte inside the payload of the record in the middle of the file (a flipped length byte
    // could read as a torn tail instead).
    let mut r = zone_persistence::SegmentReader::open(&segment).unwrap();
    let mut at = 0;
    while r.offset() < bytes.len() as u64 / 2 {
        at = r.offset() as usize + 6;
        r.next_record().unwrap();
    }
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
    let header = JournalHeader::genesis(4, 1, spec.digest, "busy.toml".into(), BUSY_ZONE.into(), 1);
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
    let header = JournalHeader::genesis(
        1,
        1,
        spec.digest,
        "busy.toml".into(),
        BUSY_ZONE.replace("count = 300", "count = 301"),
        1,
    );
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

// ---------------------------------------------------------------------------------------------
// Segments

/// File persistence in `data` (no Redis, no PostgreSQL).
fn files_only(data: &Path, keep_full: usize) -> PersistConfig {
    PersistConfig {
        data_dir: data.to_path_buf(),
        keep_full,
        redis: None,
        postgres: None,
        instance: "busy-test".into(),
        redis_ttl: Duration::from_secs(60),
        op_timeout: Duration::from_secs(2),
        breaker: BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(1),
        },
        event_queue: 100,
        observer: None,
        journal_notes: None,
    }
}

/// A headless run with file snapshots (a full every `full_every` ticks, so a segment each) and
/// the journal in `data/journal`, continuing `restored` when given.
fn run_with_segments(
    data: &Path,
    ticks: u64,
    full_every: u64,
    keep_full: usize,
    retention: Retention,
    restored: Option<zone_server::recovery::Restored>,
) -> RunOutcome {
    let cfg = RunConfig {
        seed: 17,
        threads: 1,
        sim_players: 20,
        journal: Some(data.join("journal")),
        hash_interval: 30,
        persist: Some(files_only(data, keep_full)),
        snapshot_full_every: full_every,
        snapshot_diff_every: full_every,
        cold_snapshot_every: u64::MAX,
        journal_retention: retention,
        ..RunConfig::headless(ticks)
    };
    let zone = zone_server::zone_load::load_zone(&write_zone(data)).unwrap();
    run(&cfg, &zone, Hooks::default(), restored).unwrap()
}

fn restore(data: &Path) -> Option<zone_server::recovery::Restored> {
    let zone = zone_server::zone_load::load_zone(&write_zone(data)).unwrap();
    zone_server::recovery::restore(&zone, 17, Some(&data.join("journal")), &files_only(data, 5), &zone_sim::Serial).unwrap()
}

fn segment_files(journal: &Path) -> Vec<PathBuf> {
    list_segments(journal).unwrap().into_iter().map(|(_, p)| p).collect()
}

/// Every record of a journal, read without simulating.
fn records(journal: &Path) -> Result<Vec<Record>, JournalError> {
    let mut r = JournalReader::open(journal)?;
    let mut v = Vec::new();
    while let Some(rec) = r.next_record()? {
        v.push(rec);
    }
    Ok(v)
}

#[test]
fn a_segmented_journal_replays_from_tick_0_and_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let live = run_with_segments(data, 900, 200, 10, Retention::default(), None);
    let journal = data.join("journal");
    let segs = segment_files(&journal);
    assert_eq!(
        segs.len(),
        5,
        "a segment at 0 and at every full snapshot tick (200, 400, 600, 800): {segs:?}"
    );
    let from_0 = replay(&journal, &zone_sim::Serial, |_| {}).unwrap();
    assert_eq!(from_0.final_hash, live.final_hash);
    assert!(from_0.clean_end);
    // From the newest full snapshot (the final one, at tick 900) and from each older one.
    let snaps = data.join("snapshots");
    let newest = replay_from_snapshot(&journal, &snaps, &zone_sim::Serial, |_| {}).unwrap();
    assert_eq!(newest.final_hash, live.final_hash);
    for tick in [200u64, 400, 600, 800] {
        let file = snaps.join(format!("snap-{tick:020}-full.zsnap"));
        if !file.exists() {
            continue; // skipped by the worker (headless runs flat out)
        }
        let out = replay_from_snapshot(&journal, &file, &zone_sim::Serial, |_| {}).unwrap();
        assert_eq!(out.from_tick, tick);
        assert_eq!(out.final_hash, live.final_hash, "from the snapshot at {tick}");
    }
}

#[test]
fn segment_boundaries_under_every_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    run_with_segments(data, 450, 150, 10, Retention::default(), None);
    let journal = data.join("journal");
    let segs = segment_files(&journal);
    assert_eq!(segs.len(), 4);
    let all = records(&journal).unwrap();
    let scratch = data.join("cut");
    let copy_with = |i: usize, bytes: &[u8]| {
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        for (k, s) in segs.iter().enumerate() {
            let to = scratch.join(s.file_name().unwrap());
            if k == i {
                std::fs::write(&to, bytes).unwrap();
            } else {
                std::fs::copy(s, &to).unwrap();
            }
        }
    };
    // What must never be lost: the tick batches and the end. (A segment's last hash repeats the
    // next segment's start hash, and snapshot notes are informative: losing them loses nothing.)
    let strip = |v: Vec<Record>| {
        v.into_iter()
            .filter(|r| matches!(r, Record::Tick(_) | Record::End(_)))
            .collect::<Vec<_>>()
    };
    let all_kept = strip(all.clone());
    // A middle segment cut anywhere: the reader stops with an error naming the gap (or, cut
    // inside the header, the damaged segment); never a panic, never a silent skip.
    let middle = std::fs::read(&segs[1]).unwrap();
    for cut in 0..middle.len() {
        copy_with(1, &middle[..cut]);
        match records(&scratch) {
            // Only a cut after the segment's last batch loses nothing.
            Ok(got) => assert!(strip(got) == all_kept, "cut at {cut} of a middle segment lost records unnoticed"),
            Err(JournalError::Chain { reason, .. }) => assert!(reason.contains("gap"), "cut {cut}: {reason}"),
            Err(JournalError::InSegment { source, .. }) => {
                assert!(
                    matches!(*source, JournalError::TruncatedHeader { .. } | JournalError::BadMagic),
                    "cut {cut}: {source}"
                )
            }
            Err(e) => panic!("cut {cut}: {e}"),
        }
    }
    // The last segment cut anywhere after its header: a prefix of the records, no error.
    let last = std::fs::read(segs.last().unwrap()).unwrap();
    let mut prev = 0;
    for cut in 0..=last.len() {
        copy_with(segs.len() - 1, &last[..cut]);
        match records(&scratch) {
            Ok(got) => {
                assert!(all.starts_with(&got), "cut {cut}: not a prefix");
                assert!(got.len() >= prev, "cut {cut}: fewer records than a shorter cut");
                prev = got.len();
            }
            Err(JournalError::InSegment { source, .. }) => {
                assert!(
                    matches!(*source, JournalError::TruncatedHeader { .. } | JournalError::BadMagic),
                    "cut {cut}: {source}"
                )
            }
            Err(e) => panic!("cut {cut}: {e}"),
        }
    }
    assert_eq!(prev, all.len());
}

/// A crash while switching segments leaves a temporary file, or (on a filesystem that lost the
/// rename's data) a newest segment with a torn header: recovery removes them, restores, and the
/// journal it goes on with replays from tick 0.
#[test]
fn a_crash_in_the_middle_of_a_segment_switch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let first = run_with_segments(data, 400, 100, 10, Retention::default(), None);
    let journal = data.join("journal");
    let segs = segment_files(&journal);
    // The switch at 400 did not happen (the run ended there): fake an interrupted one at 400.
    std::fs::write(journal.join(format!(".tmp-{}", segment_name(400))), b"ZJNL\x02\x00").unwrap();
    let torn = journal.join(segment_name(400));
    let header_bytes = std::fs::read(segs.last().unwrap()).unwrap();
    std::fs::write(&torn, &header_bytes[..17]).unwrap();
    let r = restore(data).expect("something to restore");
    assert_eq!(r.zone.tick(), first.final_hash.tick, "recovery reaches the journal's last tick");
    assert!(!torn.exists(), "the torn segment was removed");
    assert!(
        std::fs::read_dir(&journal)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp-"))
    );
    let second = run_with_segments(data, 200, 100, 10, Retention::default(), Some(r));
    let all = replay(&journal, &zone_sim::Serial, |_| {}).unwrap();
    assert_eq!(all.final_hash, second.final_hash);
}

/// A restore from a snapshot with no journal starts a new segment there; after another crash,
/// recovery goes from that snapshot through the new segments to the latest tick.
#[test]
fn restore_without_a_journal_then_crash_again_reaches_the_latest_tick() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let first = run_with_segments(data, 300, 100, 10, Retention::default(), None);
    std::fs::remove_dir_all(data.join("journal")).unwrap();
    let r = restore(data).expect("the snapshots are still there");
    assert_eq!(r.zone.tick(), first.final_hash.tick, "restored from the final snapshot");
    assert_eq!(r.replayed_ticks, 0);
    let second = run_with_segments(data, 250, 100, 10, Retention::default(), Some(r));
    let segs = segment_files(&data.join("journal"));
    let h = zone_persistence::SegmentReader::open(&segs[0]).unwrap().header().clone();
    assert_eq!(h.start_tick, 300);
    assert_eq!(h.origin, zone_persistence::Origin::Restore);
    assert_ne!(h.snapshot_sha256, [0; 32], "the new segment names the snapshot it continues");
    // "Crash": drop the End record and every snapshot after the restore point.
    for e in std::fs::read_dir(data.join("snapshots")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let tick: u64 = name[5..25].parse().unwrap();
        if tick > 300 {
            std::fs::remove_file(p).unwrap();
        }
    }
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let info = zone_persistence::scan_segment(last).unwrap();
    assert!(info.clean_end);
    let end_record = 4 + 1 + 8 + 8 + 2 + 8 * 16 + 4;
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - end_record)
        .unwrap();
    let mut again = restore(data).expect("restorable");
    assert_eq!(again.snapshot_tick, Some(300));
    assert_eq!(again.zone.tick(), second.final_hash.tick, "recovery reaches the latest tick");
    assert_eq!(again.zone.hash(&zone_sim::Serial), second.final_hash);
    // And the journal still replays from the snapshot.
    let out = replay_from_snapshot(&data.join("journal"), &data.join("snapshots"), &zone_sim::Serial, |_| {}).unwrap();
    assert_eq!(out.final_hash, second.final_hash);
}

fn dir_size(p: &Path) -> u64 {
    zone_server::housekeeping::dir_bytes(p)
}

/// Many restarts of a small zone at full speed with retention on: the data directory stops
/// growing, retention never deletes what the newest snapshot needs (the journal replays from it
/// after every round), and every kept segment that has a kept snapshot at its start replays from
/// it to the end. LONG_RUN_ROUNDS=N runs more rounds (benchmarks/journal.sh).
#[test]
fn disk_use_stays_flat_over_a_long_run_and_every_kept_segment_replays() {
    let rounds: usize = std::env::var("LONG_RUN_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    // Keep 1,200 ticks of journal; 6 fulls, one every 240 ticks, cover it.
    let retention = Retention {
        keep_ticks: Some(1200),
        keep_bytes: None,
    };
    let mut sizes = Vec::new();
    let mut restored = None;
    let mut last = None;
    for _ in 0..rounds {
        let out = run_with_segments(data, 1500, 240, 6, retention, restored.take());
        sizes.push(dir_size(data));
        restored = Some(restore(data).expect("restorable"));
        assert_eq!(restored.as_ref().unwrap().zone.tick(), out.final_hash.tick);
        last = Some(out);
    }
    let last = last.unwrap();
    eprintln!("data dir bytes after each round of 1,500 ticks: {sizes:?}");
    let steady = &sizes[2..];
    let (lo, hi) = (steady.iter().min().unwrap(), steady.iter().max().unwrap());
    assert!(*hi <= lo + lo / 2, "disk use keeps growing: {sizes:?}");
    let journal = data.join("journal");
    let segs = segment_files(&journal);
    assert!(segs.len() <= 9, "{} segments kept", segs.len());
    let first_start = list_segments(&journal).unwrap()[0].0;
    assert!(first_start > 0, "retention deleted nothing");
    // Every kept segment whose start has a kept snapshot replays from it to the end.
    let mut replayed = 0;
    for (start, _) in list_segments(&journal).unwrap() {
        let snap = data.join("snapshots").join(format!("snap-{start:020}-full.zsnap"));
        if snap.exists() {
            let out = replay_from_snapshot(&journal, &snap, &zone_sim::Serial, |_| {}).unwrap();
            assert_eq!(out.final_hash, last.final_hash, "from {start}");
            replayed += 1;
        }
    }
    assert!(replayed >= 2, "only {replayed} kept segments had a snapshot at their start");
}

/// A journal that no kept snapshot fits (its first segments deleted, the snapshots within it
/// lost): recovery restores the newest snapshot anyway, moves that journal aside (never deletes
/// it) and the run goes on recording a new one from the snapshot.
#[test]
fn a_journal_no_snapshot_fits_is_moved_aside_and_a_new_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    run_with_segments(data, 400, 100, 10, Retention::default(), None);
    let journal = data.join("journal");
    for t in [0u64, 100, 200] {
        std::fs::remove_file(journal.join(segment_name(t))).unwrap();
    }
    for t in [300u64, 400] {
        let _ = std::fs::remove_file(data.join("snapshots").join(format!("snap-{t:020}-full.zsnap")));
    }
    let newest_left = (0..300u64)
        .rev()
        .find(|t| data.join("snapshots").join(format!("snap-{t:020}-full.zsnap")).exists())
        .expect("a snapshot before the journal");
    let r = restore(data).expect("the older snapshot is restored");
    assert_eq!(r.zone.tick(), newest_left);
    assert_eq!(r.run_id, None, "a new run");
    assert!(!journal.exists(), "the old journal was moved aside");
    let aside: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("journal."))
        .collect();
    assert_eq!(aside.len(), 1, "the old journal is kept aside");
    let out = run_with_segments(data, 100, 100, 10, Retention::default(), Some(r));
    let again = replay_from_snapshot(
        &journal,
        &data.join("snapshots").join(format!("snap-{newest_left:020}-full.zsnap")),
        &zone_sim::Serial,
        |_| {},
    )
    .unwrap();
    assert_eq!(again.final_hash, out.final_hash);
}
