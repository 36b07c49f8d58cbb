//! The operator surface of a running `zone-server`: metrics, health, readiness, status and drain.

mod common;
use common::{free_port, http};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn wait_for(addr: SocketAddr, path: &str, code: u16) -> bool {
    for _ in 0..100 {
        if http(addr, "GET", path).is_some_and(|(c, _)| c == code) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn start(admin: SocketAddr, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zone-server"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("RUST_LOG", "warn")
        // Snapshots and the journal are tested in recovery.rs; keep these runs from writing ./data.
        .env("ZONE_PERSISTENCE", "off")
        .env("ZONE_BIND", "127.0.0.1:0")
        .args(["--admin", &admin.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A value of a metric line in an exposition (the first series matching all `parts`).
fn value(scrape: &str, parts: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn metrics_health_readiness_and_drain_go_through_their_transitions() {
    let admin = free_port();
    let child = start(admin, &["--drain-timeout", "20", "--sim-players", "8"]);
    assert!(wait_for(admin, "/healthz", 200), "never became live");
    assert!(wait_for(admin, "/readyz", 200), "never became ready");

    let (_, first) = http(admin, "GET", "/metrics").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let (code, second) = http(admin, "GET", "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "zone_tick_duration_seconds_bucket",
        "zone_shard_tick_duration_seconds_bucket",
        "zone_stage_duration_seconds_bucket",
        "zone_shard_objects",
        "zone_shard_spawns_total",
        "zone_shard_migrations_in_total",
        "zone_shard_tick_rate_hz",
        "zone_players",
        "zone_input_refusals_total",
        "zone_queue_depth",
        "zone_reliable_retries_total",
        "zone_reliable_timeouts_total",
        "zone_dropped_duplicates_total",
        "zone_process_resident_memory_bytes",
        "zone_process_open_fds",
        "zone_process_cpu_seconds_total",
    ] {
        assert!(second.contains(name), "{name} missing from /metrics");
    }
    for edge in ["0.005", "0.01", "0.015", "0.0167", "0.025", "0.05", "0.07", "0.1", "0.25"] {
        assert!(
            second.contains(&format!("zone_tick_duration_seconds_bucket{{zone=\"demo\",le=\"{edge}\"}}")),
            "bucket {edge} missing"
        );
    }
    for stage in ["input", "simulate", "replicate", "persist", "telemetry"] {
        assert!(second.contains(&format!("stage=\"{stage}\"")), "stage {stage} missing");
    }
    assert!(second.contains("shard=\"15\""));
    assert!(!second.contains("player=\""), "no label may carry a player id");
    let ticks = |s: &str| value(s, &["zone_ticks_total"]).unwrap();
    assert!(ticks(&second) > ticks(&first), "zone_ticks_total does not move");
    assert!(value(&second, &["zone_players{"]).unwrap() > 0.0);

    // promtool, when installed (CI installs it), must accept a live scrape.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin.take().unwrap().write_all(second.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "promtool check metrics failed:\n{text}");
        }
        Err(_) => eprintln!("skipped: promtool check metrics (promtool is not installed; CI installs it via assets/prometheus/check.sh)"),
    }

    let (code, status) = http(admin, "GET", "/status").unwrap();
    assert_eq!(code, 200);
    for field in [
        "\"tick\"",
        "\"players\"",
        "\"shards\"",
        "\"uptime_s\"",
        "\"version\"",
        "\"objects_by_kind\"",
    ] {
        assert!(status.contains(field), "/status lacks {field}: {status}");
    }

    // Drain: readiness fails at once, liveness holds, and the process exits 0 once players leave.
    let (code, _) = http(admin, "POST", "/drain").unwrap();
    assert_eq!(code, 202);
    assert!(wait_for(admin, "/readyz", 503), "readyz did not fail while draining");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .starts_with("final_tick=")
    );
    assert!(http(admin, "GET", "/healthz").is_none(), "still listening after exit");
}

#[test]
fn second_signal_exits_at_once() {
    let admin = free_port();
    let child = start(admin, &["--drain-timeout", "600", "--sim-players", "50"]);
    assert!(wait_for(admin, "/readyz", 200));
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(wait_for(admin, "/readyz", 503));
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "a second signal exits promptly with 130");
}

#[test]
fn print_config_masks_secrets_and_shows_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("server.toml");
    std::fs::write(&f, "seed = 9\nhash_interval = 30\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zone-server"))
        .args(["--config", f.to_str().unwrap(), "--print-config", "--seed", "4"])
        .env("ZONE_STATS_INTERVAL", "2.5")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("seed = 4"), "{text}");
    assert!(text.contains("hash_interval = 30"), "{text}");
    assert!(text.contains("stats_interval = 2.5"), "{text}");

    std::fs::write(&f, "sead = 9\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zone-server"))
        .args(["--config", f.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.toml") && err.contains("sead"), "{err}");
}
