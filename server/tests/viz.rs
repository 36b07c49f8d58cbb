//! The world visualizer's HTTP surface as a client sees it, without a browser: the stream's
//! frames decode and apply, the viewer limit refuses with 503, an idle viewer is told and
//! dropped, bad requests get 400, and the history ring serves rebuilt frames.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{free_port, http};
use zone_server::viz::frame;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server-sent-events client: (status, reader positioned after the headers).
fn open_stream(addr: SocketAddr, path: &str) -> (u16, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let code = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    (code, r)
}

/// The next event: (type, data). Skips keep-alive comments; undoes chunked framing crudely by
/// reading lines and ignoring the chunk-size lines.
fn next_event(r: &mut BufReader<TcpStream>) -> (String, String) {
    let (mut event, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data.push_str(d);
        } else if line.is_empty() && !event.is_empty() {
            return (event, data);
        }
    }
}

#[test]
fn stream_history_limits_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_zone-server"))
            .args(["--zone", demo, "--bind", "off", "--sim-players", "10", "--threads", "2"])
            .args([
                "--admin",
                &admin.to_string(),
                "--viz-max-viewers",
                "1",
                "--viz-idle-timeout",
                "2",
                "--viz-rate",
                "10",
            ])
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

    let (code, page) = http(admin, "GET", "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("/world/viz.js"));
    let (code, js) = http(admin, "GET", "/world/viz.js").unwrap();
    assert_eq!(code, 200);
    assert!(
        js.contains(&format!("const FORMAT_VERSION = {};", frame::FORMAT_VERSION)),
        "page and server agree on the format"
    );
    let (code, meta) = http(admin, "GET", "/world/meta").unwrap();
    assert_eq!(code, 200);
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["zone"], "demo");
    assert_eq!(meta["mode"], "live");
    assert_eq!(meta["kinds"][0]["name"], "player");

    for (method, path) in [
        ("GET", "/world/frame?tick=yesterday"),
        ("GET", "/world/frame"),
        ("GET", "/world/stream?format=json"),
        ("GET", "/world/meta?x=1"),
        ("POST", "/world/ping?viewer=me"),
        ("GET", "/world/frame?tick=1&tick=2"),
    ] {
        let (code, body) = http(admin, method, path).unwrap();
        assert_eq!(code, 400, "{method} {path}: {body}");
        assert!(!body.trim().is_empty(), "a 400 says why");
    }
    assert_eq!(
        http(admin, "POST", "/world/control?op=pause").unwrap().0,
        404,
        "no controls on a live zone"
    );
    assert_eq!(http(admin, "POST", "/world/ping?viewer=999").unwrap().0, 404);

    // One viewer: hello, a key frame, then diffs that apply to it.
    let (code, mut a) = open_stream(admin, "/world/stream");
    assert_eq!(code, 200);
    let (ev, hello) = next_event(&mut a);
    assert_eq!(ev, "hello");
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    let viewer = hello["viewer"].as_u64().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let (ev, key) = next_event(&mut a);
    assert_eq!(ev, "key");
    let mut f = frame::decode_key(&b64.decode(key).unwrap()).unwrap();
    assert!(f.objects.len() >= 10_000, "{} objects", f.objects.len());
    assert_eq!(f.objects.iter().filter(|o| o.kind == 0).count(), 10, "the scripted players");
    for _ in 0..5 {
        let (ev, diff) = next_event(&mut a);
        assert_eq!(ev, "diff");
        let next = frame::apply_diff(&f, &b64.decode(diff).unwrap()).unwrap();
        assert!(
            next.tick > f.tick && next.tick.is_multiple_of(6),
            "10 frames per second: every 6th tick ({})",
            next.tick
        );
        f = next;
    }
    assert_eq!(http(admin, "POST", &format!("/world/ping?viewer={viewer}")).unwrap().0, 204);

    // At most one viewer: the second is refused.
    let (code, _) = open_stream(admin, "/world/stream");
    assert_eq!(code, 503);

    // The first stops pinging: within the idle timeout (2 s) plus a sweep it is told and dropped.
    let t0 = Instant::now();
    loop {
        let (ev, data) = next_event(&mut a);
        if ev == "bye" {
            assert!(data.contains("idle"), "{data}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "an idle viewer is dropped");
    }
    assert_eq!(http(admin, "POST", &format!("/world/ping?viewer={viewer}")).unwrap().0, 404);

    // The history ring (fed by the persistence thread's snapshots, once a second).
    let t0 = Instant::now();
    let ticks: Vec<u64> = loop {
        let (_, h) = http(admin, "GET", "/world/history").unwrap();
        let h: serde_json::Value = serde_json::from_str(&h).unwrap();
        let t: Vec<u64> = h["ticks"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        if t.len() >= 3 {
            break t;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "history frames are stored");
        std::thread::sleep(Duration::from_millis(200));
    };
    for &t in &ticks {
        let mut s = TcpStream::connect(admin).unwrap();
        write!(s, "GET /world/frame?tick={t} HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut buf).unwrap();
        let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"));
        let f = frame::decode_key(&buf[at..]).unwrap();
        assert_eq!(f.tick, t);
        assert!(f.objects.len() >= 10_000);
    }
    assert_eq!(http(admin, "GET", &format!("/world/frame?tick={}", ticks[0] - 1)).unwrap().0, 404);
}
