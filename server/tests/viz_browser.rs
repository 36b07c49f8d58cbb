//! The world visualizer in a real browser (Debian's headless `chromium`), against a live
//! `zone-server`: the page loads, frames arrive, the console stays clean, the canvas is drawn,
//! objects move between two screenshots, and scrubbing the history to a tick shows that tick's
//! object count, checked against a replay of the server's own journal.
//!
//! Skipped (it says so) when no Chromium is installed; `.ci/run` installs it.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cdp::{self, Browser};
use common::{free_port, http};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn live_zone_in_headless_chromium() {
    let Some(chromium) = Browser::find() else {
        eprintln!("skipped: no Chromium (install Debian's `chromium`, or set CHROMIUM=/path/to/chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_zone-server"))
            .args(["--zone", demo, "--bind", "off", "--sim-players", "30", "--threads", "2"])
            .args(["--admin", &admin.to_string(), "--stats-interval", "60", "--log-format", "json"])
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while http(admin, "GET", "/readyz").is_none_or(|(c, _)| c != 200) {
        assert!(t0.elapsed() < Duration::from_secs(60), "zone-server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut b = Browser::launch(&chromium, 1280, 800);
    b.navigate(&format!("http://{admin}/"));
    b.wait_for("frames", Duration::from_secs(60), "window.viz.frames >= 10");
    assert_eq!(b.eval("window.viz.mode"), "live");
    assert_eq!(b.eval("document.getElementById('zone').textContent"), "demo");
    let painted = b.eval(cdp::PAINTED_PIXELS_JS).as_u64().unwrap();
    assert!(painted > 2000, "the canvas is nearly blank: {painted} painted pixels");

    let shots = cdp::screenshot_dir();
    let before = b.eval(cdp::POSITIONS_JS);
    let shot_a = b.screenshot();
    let frames_a = b.eval("window.viz.frames").as_u64().unwrap();
    b.wait_for(
        "more frames",
        Duration::from_secs(30),
        &format!("window.viz.frames >= {}", frames_a + 10),
    );
    let after = b.eval(cdp::POSITIONS_JS);
    let shot_b = b.screenshot();
    std::fs::write(shots.join("live-1.png"), &shot_a).unwrap();
    std::fs::write(shots.join("live-2.png"), &shot_b).unwrap();
    let moved = cdp::moved(&before, &after);
    assert!(moved > 100, "only {moved} objects moved between the two screenshots");
    assert_ne!(shot_a, shot_b, "the two screenshots are identical");
    assert!(
        b.eval("window.viz.fps").as_f64().unwrap() >= 1.5,
        "live frames arrive at 1.5/s or more (default --viz-rate 2)"
    );

    // The scrub bar: wait for a few stored seconds, then go back to one of them.
    b.wait_for(
        "history frames",
        Duration::from_secs(60),
        "(fetch('/world/history').then(r => r.json()).then(h => h.ticks.length >= 4))",
    );
    b.eval("(async () => { const r = await fetch('/world/history'); window.viz.history = (await r.json()).ticks; })()");
    let tick = b.eval("window.viz.history[1]").as_u64().unwrap();
    b.eval(
        "(() => { const s = document.getElementById('scrub'); s.max = window.viz.history.length; s.value = 1; \
         s.dispatchEvent(new Event('change')); })()",
    );
    b.wait_for(
        "the page to show the scrubbed tick",
        Duration::from_secs(30),
        &format!("document.getElementById('tick').textContent === '{tick}'"),
    );
    let shown: usize = b
        .eval("document.getElementById('count').textContent")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(shots.join("live-history.png"), b.screenshot()).unwrap();

    // What the server really had at that tick: its journal, replayed.
    let journal = zone_server::replay::load_journal(&dir.path().join("journal")).unwrap();
    assert!(journal.end_tick >= tick, "the journal reaches tick {tick}");
    let exec = zone_sim::Serial;
    let mut zone = journal.zone_at_start().unwrap();
    journal.advance(&mut zone, tick, &exec).unwrap();
    assert_eq!(zone.tick(), tick);
    assert_eq!(shown, zone.object_count(), "the page shows tick {tick}'s object count");

    // Back to live.
    b.eval("document.getElementById('live').click()");
    b.wait_for("following live again", Duration::from_secs(10), "window.viz.following === true");

    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    assert_eq!(b.eval("window.viz.errors.length"), 0);
    drop(b);

    // The server drains and exits cleanly with the page's stream gone.
    assert_eq!(http(admin, "POST", "/drain").unwrap().0, 202);
    let mut server = server;
    let t0 = Instant::now();
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "zone-server exited with {status}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "zone-server did not exit after the drain");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut rest = String::new();
    if let Some(mut e) = server.0.stderr.take() {
        let _ = e.read_to_string(&mut rest);
    }
}

/// Reads `zone_tick_duration_seconds` (sum, count) from `/metrics`.
fn tick_sum_count(admin: std::net::SocketAddr) -> (f64, f64) {
    let (_, text) = http(admin, "GET", "/metrics").unwrap();
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("zone_tick_duration_seconds_sum"), get("zone_tick_duration_seconds_count"))
}

/// A viewer that reads and discards the stream (the server's cost does not depend on what the
/// client does with the frames); it stops when `stop` is set.
fn raw_viewer(admin: std::net::SocketAddr, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        write!(s, "GET /world/stream HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
        }
        n
    })
}

/// Figures for the closing note, not a check: frames per second and bytes per frame in a real
/// page, what a frame costs the page, and the tick's mean duration with 0, 1 and 5 viewers in
/// the same run. `VIZ_ZONE=assets/zones/large.toml cargo test --release -p zone-server --test
/// viz_browser -- --ignored --nocapture` (default: the demo zone).
#[test]
#[ignore]
fn measure_viewers() {
    let Some(chromium) = Browser::find() else {
        eprintln!("skipped: no Chromium");
        return;
    };
    let zone = std::env::var("VIZ_ZONE").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml").into());
    let phase_s: u64 = std::env::var("VIZ_PHASE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_zone-server"))
            .args(["--zone", &zone, "--bind", "off", "--sim-players", "50", "--threads", "2"])
            .args(["--admin", &admin.to_string(), "--stats-interval", "600"])
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while http(admin, "GET", "/readyz").is_none_or(|(c, _)| c != 200) {
        assert!(t0.elapsed() < Duration::from_secs(120), "zone-server did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(5));

    // The tick's cost: phases of 0, 1 and 5 viewers, twice, in one run.
    let mut results: Vec<(usize, f64, f64)> = Vec::new();
    for round in 0..2 {
        for n in [0usize, 1, 5] {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let viewers: Vec<_> = (0..n).map(|_| raw_viewer(admin, stop.clone())).collect();
            std::thread::sleep(Duration::from_secs(2));
            let (s0, c0) = tick_sum_count(admin);
            std::thread::sleep(Duration::from_secs(phase_s));
            let (s1, c1) = tick_sum_count(admin);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let bytes: u64 = viewers.into_iter().map(|v| v.join().unwrap()).sum();
            let mean_us = (s1 - s0) / (c1 - c0).max(1.0) * 1e6;
            eprintln!(
                "round {round}: viewers={n} ticks={} tick_mean_us={mean_us:.1} stream_bytes={bytes}",
                c1 - c0
            );
            results.push((n, mean_us, c1 - c0));
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let mean = |n: usize| {
        let v: Vec<f64> = results.iter().filter(|r| r.0 == n).map(|r| r.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    for n in [0usize, 1, 5] {
        println!(
            "zone={} viewers={n} tick_mean_us={:.1} vs_no_viewer={:+.2}%",
            zone.rsplit('/').next().unwrap(),
            mean(n),
            (mean(n) / mean(0) - 1.0) * 100.0
        );
    }

    // One real page: frames per second, bytes per frame, the page's cost per frame.
    let mut b = Browser::launch(&chromium, 1280, 800);
    b.navigate(&format!("http://{admin}/"));
    b.wait_for("frames", Duration::from_secs(120), "window.viz.frames >= 5");
    let (f0, by0) = (
        b.eval("window.viz.frames").as_f64().unwrap(),
        b.eval("window.viz.bytes").as_f64().unwrap(),
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(phase_s));
    let (f1, by1) = (
        b.eval("window.viz.frames").as_f64().unwrap(),
        b.eval("window.viz.bytes").as_f64().unwrap(),
    );
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "zone={} page: frames_per_s={:.1} bytes_per_frame={:.0} decode_ms={:.1} draw_ms={:.1} aggregated={} objects={}",
        zone.rsplit('/').next().unwrap(),
        (f1 - f0) / secs,
        (by1 - by0) / (f1 - f0).max(1.0),
        b.eval("window.viz.decodeMs").as_f64().unwrap(),
        b.eval("window.viz.drawMs").as_f64().unwrap(),
        b.eval("window.viz.aggregated"),
        b.eval("window.viz.shown.n"),
    );
    let name = zone.rsplit('/').next().unwrap().trim_end_matches(".toml").to_string();
    std::fs::write(cdp::screenshot_dir().join(format!("page-{name}.png")), b.screenshot()).unwrap();
    std::fs::write(
        cdp::screenshot_dir().join(format!("page-{name}-small.png")),
        b.screenshot_scaled(1280, 800, 0.6),
    )
    .unwrap();
    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
