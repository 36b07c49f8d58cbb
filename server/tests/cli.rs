//! The `zone-server` binary as a user runs it.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zone-server"));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c.env("RUST_LOG", "warn");
    // Tests run in parallel: none of them may take the default admin port.
    c.env("ZONE_TELEMETRY", "off");
    c.env("ZONE_PERSISTENCE", "off");
    // ... nor the default game port.
    c.env("ZONE_BIND", "127.0.0.1:0");
    c
}

#[test]
fn headless_run_prints_the_final_line_last() {
    let out = bin()
        .args(["--ticks", "120", "--sim-players", "5", "--threads", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let (tick, hash) = last.split_once(' ').unwrap();
    assert_eq!(tick, "final_tick=120");
    let hex = hash.strip_prefix("zone_hash=").unwrap();
    assert_eq!(hex.len(), 16);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{last}");

    // Same seed, other thread count: same line.
    let again = bin()
        .args(["--ticks", "120", "--sim-players", "5", "--threads", "1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().lines().last().unwrap(), last);
}

#[test]
fn a_bad_zone_file_fails_with_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml")).unwrap();
    std::fs::write(&p, demo.replace("shard_cols = 4", "shard_cols = 0")).unwrap();
    let out = bin().args(["--ticks", "1", "--zone"]).arg(&p).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml: zone.shard_cols: 0 is out of range"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--zone",
        "--seed",
        "--threads",
        "--sim-players",
        "--journal",
        "--ticks",
        "--realtime",
        "--hash-interval",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn sigterm_stops_a_realtime_run_with_the_final_line() {
    let child = bin()
        .args(["--sim-players", "3", "--stats-interval", "0.2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.lines().last().unwrap().starts_with("final_tick="), "{stdout}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_zone() {
    let out = bin()
        .env("RUST_LOG", "info")
        // Paced, so the 0.1 s statistics interval passes several times whatever the machine speed.
        .args([
            "--ticks",
            "30",
            "--realtime",
            "--sim-players",
            "2",
            "--log-format",
            "json",
            "--stats-interval",
            "0.1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{err}");
    for l in &lines {
        assert!(l.starts_with('{') && l.ends_with('}'), "not a JSON object: {l}");
        assert!(
            l.contains("\"level\":") && l.contains("\"zone\":\"demo\""),
            "missing level or zone: {l}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"shard\":") && l.contains("\"tick\":")),
        "no per-shard line with shard and tick"
    );
}
