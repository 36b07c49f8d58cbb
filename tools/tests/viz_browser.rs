//! `zone-replay --serve` in a real browser (Debian's headless `chromium`): the page loads over a
//! recorded journal, frames arrive, the console stays clean, the canvas is drawn, objects move
//! while it plays, and seeking or stepping to a tick shows exactly that tick's object count
//! (checked against an in-process replay). Also the controls' 400s.
//!
//! Skipped (it says so) when no Chromium is installed; `.ci/run` installs it.

#[path = "../../server/tests/common/cdp.rs"]
mod cdp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cdp::Browser;
use zone_server::runner::{Hooks, RunConfig, run};

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn record(dir: &std::path::Path, ticks: u64) -> std::path::PathBuf {
    let journal = dir.join("demo.journal");
    let cfg = RunConfig {
        seed: 5,
        threads: 2,
        sim_players: 20,
        journal: Some(journal.clone()),
        ..RunConfig::headless(ticks)
    };
    let zone = zone_server::zone_load::load_zone(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml").as_ref()).unwrap();
    run(&cfg, &zone, Hooks::default(), None).unwrap();
    journal
}

/// Starts `zone-replay --serve 127.0.0.1:0 JOURNAL` and reads the address it serves on.
fn serve(journal: &std::path::Path) -> (Served, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zone-replay"))
        .args(["--serve", "127.0.0.1:0", "--threads", "2", "--checkpoint-interval", "5"])
        .arg(journal)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "zone-replay --serve exited before serving");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().unwrap().parse::<SocketAddr>().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    (Served(child), addr)
}

fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "POST {path} HTTP/1.0\r\nHost: t\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn objects_at(journal: &std::path::Path, tick: u64) -> usize {
    let j = zone_server::replay::load_journal(journal).unwrap();
    let mut zone = j.zone_at_start().unwrap();
    j.advance(&mut zone, tick, &zone_sim::Serial).unwrap();
    zone.object_count()
}

#[test]
fn replayed_journal_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let journal = record(dir.path(), 1800);
    let (_served, addr) = serve(&journal);

    // Bad requests get 400 and say what to send; this works without a browser.
    assert_eq!(post(addr, "/world/control?op=fly").0, 400);
    assert_eq!(post(addr, "/world/control?op=seek&tick=soon").0, 400);
    assert_eq!(post(addr, "/world/control?op=play&speed=80").0, 400);
    assert_eq!(post(addr, "/world/control?op=seek&tick=1&color=red").0, 400);
    let (code, body) = post(addr, "/world/control?op=seek&tick=1234");
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["tick"], 1234);
    assert_eq!(state["objects"].as_u64().unwrap() as usize, objects_at(&journal, 1234));

    let Some(chromium) = Browser::find() else {
        eprintln!("skipped the browser part: no Chromium (install Debian's `chromium`, or set CHROMIUM=/path/to/chromium)");
        return;
    };
    let mut b = Browser::launch(&chromium, 1280, 800);
    b.navigate(&format!("http://{addr}/"));
    b.wait_for(
        "a frame",
        Duration::from_secs(60),
        "window.viz.frames >= 1 && window.viz.replay !== null",
    );
    assert_eq!(b.eval("window.viz.mode"), "replay");
    let painted = b.eval(cdp::PAINTED_PIXELS_JS).as_u64().unwrap();
    assert!(painted > 2000, "the canvas is nearly blank: {painted} painted pixels");

    // Play at 2× (the 30 s journal lasts 15 s), as a user would: pick the speed, press play.
    b.eval("document.getElementById('speed').value = '2'; document.getElementById('play').click()");
    b.wait_for("playing", Duration::from_secs(30), "window.viz.replay.playing === true");
    let frames = b.eval("window.viz.frames").as_u64().unwrap();
    b.wait_for(
        "frames while playing",
        Duration::from_secs(30),
        &format!("window.viz.frames >= {}", frames + 3),
    );
    let before = b.eval(cdp::POSITIONS_JS);
    let shot_a = b.screenshot();
    let frames = b.eval("window.viz.frames").as_u64().unwrap();
    b.wait_for(
        "more frames",
        Duration::from_secs(30),
        &format!("window.viz.frames >= {}", frames + 5),
    );
    let after = b.eval(cdp::POSITIONS_JS);
    let shot_b = b.screenshot();
    let shots = cdp::screenshot_dir();
    std::fs::write(shots.join("replay-1.png"), &shot_a).unwrap();
    std::fs::write(shots.join("replay-2.png"), &shot_b).unwrap();
    assert!(cdp::moved(&before, &after) > 100, "objects move while the replay plays");
    assert_ne!(shot_a, shot_b);
    assert_eq!(
        b.eval("window.viz.replay.playing"),
        true,
        "still playing (the machine is not that slow)"
    );
    b.eval("document.getElementById('play').click()");
    b.wait_for("paused", Duration::from_secs(30), "window.viz.replay.playing === false");
    assert!(b.eval("window.viz.replay.tick").as_u64().unwrap() < 1800);

    // Scrub to a tick, then step one forward: each shows exactly that tick's object count.
    for (tick, how) in [
        (
            700u64,
            "(() => { const s = document.getElementById('scrub'); s.value = 700; s.dispatchEvent(new Event('change')); })()",
        ),
        (701, "document.getElementById('fwd').click()"),
        (
            1799,
            "(() => { const s = document.getElementById('scrub'); s.value = 1799; s.dispatchEvent(new Event('change')); })()",
        ),
    ] {
        b.eval(how);
        b.wait_for(
            "the page to show the tick",
            Duration::from_secs(60),
            &format!("document.getElementById('tick').textContent === '{tick}'"),
        );
        let shown: usize = b
            .eval("document.getElementById('count').textContent")
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(shown, objects_at(&journal, tick), "tick {tick}");
    }
    std::fs::write(shots.join("replay-seek.png"), b.screenshot()).unwrap();
    let errors = b.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    assert_eq!(b.eval("window.viz.errors.length"), 0);
}
