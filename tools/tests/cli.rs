//! `zone-replay` as a user runs it: exit 0 with the final line, 1 on divergence, 2 on a damaged
//! journal.

use std::process::Command;

use zone_server::runner::{Hooks, RunConfig, run};

fn record(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let journal = dir.join("demo.journal");
    let cfg = RunConfig { seed: 8, threads: 2, sim_players: 10, journal: Some(journal.clone()), hash_interval: 10, ..RunConfig::headless(150) };
    let zone = zone_server::zone_load::load_zone(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml").as_ref()).unwrap();
    let out = run(&cfg, &zone, Hooks::default()).unwrap();
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
}

#[test]
fn damaged_journals_exit_2_with_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = record(dir.path());
    let mut bytes = std::fs::read(&journal).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0xff;
    std::fs::write(&journal, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zone-replay")).arg(&journal).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt at byte"));

    let out = Command::new(env!("CARGO_BIN_EXE_zone-replay")).arg(dir.path().join("missing.journal")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
