//! `zone-replay` as a user runs it: exit 0 with the final line, 1 on divergence, 2 on a damaged
//! journal.

use std::process::Command;

use zone_server::runner::{Hooks, RunConfig, run};

fn record(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let journal = dir.join("demo.journal");
    let cfg = RunConfig {
        seed: 8,
        threads: 2,
        sim_players: 10,
        journal: Some(journal.clone()),
        hash_interval: 10,
        ..RunConfig::headless(150)
    };
    let zone = zone_server::zone_load::load_zone(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml").as_ref()).unwrap();
    let out = run(&cfg, &zone, Hooks::default(), None).unwrap();
    (journal, out.final_line())
}

#[test]
fn replay_prints_the_recorded_final_line() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, line) = record(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_zone-replay")).arg(&journal).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().last().unwrap(), line);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ticks/s"), "{err}");

    // --list: one line per segment (a headless run without snapshots has one, from tick 0).
    let out = Command::new(env!("CARGO_BIN_EXE_zone-replay"))
        .arg("--list")
        .arg(&journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8(out.stdout).unwrap();
    let seg = list
        .lines()
        .find(|l| l.starts_with("seg-00000000000000000000.zjnl"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        seg.contains("genesis") && seg.contains("clean end") && seg.contains(" 150 "),
        "{seg}"
    );
    // --stats: bytes per player-second, now and in format 1.
    let out = Command::new(env!("CARGO_BIN_EXE_zone-replay"))
        .arg("--stats")
        .arg(&journal)
        .output()
        .unwrap();
    let stats = String::from_utf8(out.stdout).unwrap();
    assert!(
        stats.contains("bytes_per_player_second=") && stats.contains("format1_bytes_per_player_second="),
        "{stats}"
    );
    // zone-snapshot list --journal names the segments.
    let snaps = dir.path().join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zone-snapshot"))
        .args(["list"])
        .arg(&snaps)
        .arg("--journal")
        .arg(&journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("1 segments") && text.contains("seg-00000000000000000000.zjnl"),
        "{text}"
    );
}

#[test]
fn damaged_journals_exit_2_with_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = record(dir.path());
    // A headless run without snapshots writes one segment.
    let segment = journal.join(zone_persistence::segments::segment_name(0));
    let mut bytes = std::fs::read(&segment).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zone-replay")).arg(&journal).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt at byte"));

    let out = Command::new(env!("CARGO_BIN_EXE_zone-replay"))
        .arg(dir.path().join("missing.journal"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// zone-snapshot: verify, inspect, export from one store and import into another, and a damaged
/// file is named with what is wrong.
#[test]
fn snapshot_tool_round_trips_between_stores_and_flags_damage() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let zone_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
    let text = std::fs::read_to_string(zone_path).unwrap();
    let spec = Arc::new(zone_sim::ZoneSpec::from_toml_str("demo.toml", &text).unwrap());
    let mut zone = zone_sim::Zone::new(spec.clone(), 3).unwrap();
    for _ in 0..10 {
        zone.step(&zone_sim::Serial);
    }
    let bytes = zone_persistence::snapshot::encode_full(&zone.capture(&zone_sim::Serial), spec.digest);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("snap-00000000000000000010-full.zsnap"), &bytes).unwrap();

    let tool = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_zone-snapshot")).args(args).output().unwrap();
    let out = tool(&["list", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("full"));

    let exported = dir.path().join("backup.zsnap");
    let out = tool(&["export", src.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&exported).unwrap(), bytes);

    let dst = dir.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    let out = tool(&["import", exported.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tool(&["inspect", exported.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tick 10"));

    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x10;
    let bad = dir.path().join("bad.zsnap");
    std::fs::write(&bad, &damaged).unwrap();
    let out = tool(&["verify", exported.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok: ") && text.contains("DAMAGED") && text.contains("checksum"),
        "{text}"
    );
}
