//! The `agones` lifecycle against an SDK gateway stand-in.
//!
//! The real Agones SDK server (the `sdk-server` sidecar) needs a Kubernetes API server and cannot
//! run here, so these tests run a small HTTP server of their own that speaks the REST contract in
//! `sdk.swagger.json`/`alpha.swagger.json` (every call answered `200 {}`) and records each call:
//! method, path, body and when it came. They check what the server does, not what Agones does
//! with it:
//!
//! - the binary: labels then Ready only after the game socket is bound; Health every 2 s; on
//!   SIGTERM the label `allocatable=false` and annotation `draining=true`, the drain, the final
//!   snapshot, Shutdown, exit status 0;
//! - the binary with the gateway down at start: the zone ticks (`/healthz` 200), the failures are
//!   logged with a backoff, and Ready and Health arrive once the gateway comes up;
//! - in process (the runner's stall hook): Health stops while the tick is stalled and resumes
//!   after; a sustained overload turns the label `allocatable` false.
//!
//! No assertion depends on how fast the machine is: waits are generous upper bounds, and the only
//! timing checked is a lower bound the server itself enforces (Health at most every ~2 s).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, free_udp_port, http};
use zone_server::lifecycle::Lifecycle;
use zone_server::lifecycle::agones::{AgonesConfig, AgonesLifecycle};
use zone_server::lifecycle::overload::OverloadConfig;
use zone_server::net::NetConfig;
use zone_server::runner::{Hooks, RunConfig, run};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");

/// One recorded SDK call.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    body: String,
    at: Instant,
    /// For `/ready`: whether the game's UDP port was bound at that moment.
    udp_bound: Option<bool>,
}

/// The SDK gateway stand-in: records every call, answers `200 {}`.
struct Gateway {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Arc<AtomicBool>,
}

impl Gateway {
    /// Listens on `addr` (127.0.0.1:0 for any port). `game` is the zone's UDP address, checked at Ready.
    fn start(addr: SocketAddr, game: Option<SocketAddr>) -> Gateway {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&calls), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        if let Some(call) = serve(conn, game) {
                            c.lock().unwrap().push(call);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Gateway { addr, calls, stop }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.calls().iter().filter(|c| c.path == path).count()
    }

    /// Waits (at most `secs`) until `pred` holds over the calls.
    fn wait(&self, secs: u64, what: &str, pred: impl Fn(&[Call]) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !pred(&self.calls()) {
            assert!(Instant::now() < until, "{what}: never happened; calls: {:#?}", self.summary());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn summary(&self) -> Vec<String> {
        self.calls().iter().map(|c| format!("{} {} {}", c.method, c.path, c.body)).collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one HTTP/1.1 request and answers it.
fn serve(conn: std::net::TcpStream, game: Option<SocketAddr>) -> Option<Call> {
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let udp_bound = (path == "/ready").then(|| game.is_some_and(|g| std::net::UdpSocket::bind(g).is_err()));
    let mut w = conn;
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    Some(Call {
        method,
        path,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
        udp_bound,
    })
}

fn has(calls: &[Call], path: &str, body_part: &str) -> bool {
    calls.iter().any(|c| c.path == path && c.body.contains(body_part))
}

fn start_server(sdk_port: u16, game: SocketAddr, admin: SocketAddr, data: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zone-server"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("RUST_LOG", "info")
        .env("AGONES_SDK_HTTP_PORT", sdk_port.to_string())
        .args([
            "--lifecycle",
            "agones",
            "--viz",
            "off",
            "--drain-timeout",
            "10",
            "--sim-players",
            "4",
        ])
        // A debug build on a shared machine must not look overloaded: this test is about the lifecycle.
        .args(["--overload-budget-ms", "1000"])
        .args(["--bind", &game.to_string(), "--admin", &admin.to_string()])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Waits for the child to exit (at most `secs`), killing it otherwise.
fn wait_exit(child: &mut Child, secs: u64) -> (std::process::ExitStatus, String) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status, err);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the server did not exit in {secs} s; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_after_bind_health_every_2s_labels_then_sigterm_drains_and_shuts_down_with_exit_0() {
    let game = free_udp_port();
    let admin = free_port();
    let gw = Gateway::start("127.0.0.1:0".parse().unwrap(), Some(game));
    let data = tempfile::tempdir().unwrap();
    let mut child = start_server(gw.addr.port(), game, admin, data.path());

    gw.wait(60, "Ready", |c| c.iter().any(|c| c.path == "/ready"));
    gw.wait(60, "three Health calls", |c| c.iter().filter(|c| c.path == "/health").count() >= 3);
    let calls = gw.calls();
    let ready = calls.iter().position(|c| c.path == "/ready").unwrap();
    assert_eq!(calls[ready].method, "POST");
    assert_eq!(calls[ready].udp_bound, Some(true), "Ready came before the game socket was bound");
    // The allocatable label is set before Ready, so an allocation never sees a server without it.
    let label = calls
        .iter()
        .position(|c| c.path == "/metadata/label" && c.body.contains("\"allocatable\"") && c.body.contains("\"true\""))
        .expect("label allocatable=true");
    assert!(label < ready, "{:#?}", gw.summary());
    assert_eq!(calls[label].method, "PUT");
    assert!(has(&calls, "/metadata/annotation", "\"players\""), "{:#?}", gw.summary());
    assert!(has(&calls, "/metadata/annotation", "\"tick-p99-ms\""), "{:#?}", gw.summary());
    assert!(has(&calls, "/alpha/player/capacity", "\"count\""), "{:#?}", gw.summary());
    // Cadence: Health at most every ~2 s (a lower bound the server enforces; no upper bound is
    // asserted on a shared machine).
    let beats: Vec<Instant> = calls.iter().filter(|c| c.path == "/health").map(|c| c.at).collect();
    for w in beats.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(1_500), "Health twice within {:?}", w[1] - w[0]);
    }
    assert_eq!(http(admin, "GET", "/healthz").map(|r| r.0), Some(200));

    let before = gw.calls().len();
    sigterm(&child);
    let (status, stderr) = wait_exit(&mut child, 60);
    assert!(status.success(), "exit status {status:?}; stderr:\n{stderr}");
    let calls = gw.calls();
    let after = &calls[before..];
    let unalloc = after
        .iter()
        .position(|c| c.path == "/metadata/label" && c.body.contains("\"false\""))
        .unwrap_or_else(|| panic!("no allocatable=false after SIGTERM: {:#?}", gw.summary()));
    assert!(
        has(after, "/metadata/annotation", "\"draining\",\"value\":\"true\""),
        "{:#?}",
        gw.summary()
    );
    let shutdown = after.iter().position(|c| c.path == "/shutdown").expect("Shutdown");
    assert!(unalloc < shutdown);
    assert_eq!(after.iter().filter(|c| c.path == "/shutdown").count(), 1);
    // The final snapshot is stored before Shutdown is sent (the log says so, in that order).
    let snap = stderr
        .find("final snapshot stored")
        .unwrap_or_else(|| panic!("no final snapshot:\n{stderr}"));
    let sent = stderr
        .find("Shutdown sent")
        .unwrap_or_else(|| panic!("no Shutdown log line:\n{stderr}"));
    assert!(snap < sent, "{stderr}");
}

#[test]
fn an_sdk_gateway_down_at_start_is_retried_with_backoff_and_never_blocks_the_tick() {
    let game = free_udp_port();
    let admin = free_port();
    // A port nothing listens on yet: the sidecar "starts later".
    let sdk = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut child = start_server(sdk.port(), game, admin, data.path());
    // The zone runs and is live without the gateway.
    let until = Instant::now() + Duration::from_secs(60);
    while http(admin, "GET", "/healthz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < until, "never live");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = http(admin, "GET", "/status").unwrap();
    assert_eq!(code, 200);
    let t1: serde_json::Value = serde_json::from_str(&body).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let (_, body) = http(admin, "GET", "/status").unwrap();
    let t2: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        t2["tick"].as_u64() > t1["tick"].as_u64(),
        "the tick stopped while the gateway was down"
    );

    let gw = Gateway::start(sdk, Some(game));
    gw.wait(60, "Ready once the gateway is up", |c| c.iter().any(|c| c.path == "/ready"));
    gw.wait(60, "Health once the gateway is up", |c| c.iter().any(|c| c.path == "/health"));
    sigterm(&child);
    let (status, stderr) = wait_exit(&mut child, 60);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("retrying with backoff"), "the outage was not logged:\n{stderr}");
    assert!(stderr.contains("answers again"), "the recovery was not logged:\n{stderr}");
    assert_eq!(gw.count("/shutdown"), 1);
}

#[test]
fn a_stalled_tick_stops_health_and_a_sustained_overload_turns_allocatable_false() {
    let gw = Gateway::start("127.0.0.1:0".parse().unwrap(), None);
    let lifecycle = Arc::new(
        AgonesLifecycle::start(AgonesConfig {
            op_timeout: Duration::from_secs(2),
            ..AgonesConfig::local(gw.addr.port(), 100)
        })
        .unwrap(),
    );
    let stall = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let zone = zone_server::zone_load::load_zone(Path::new(DEMO)).unwrap();
    let net = NetConfig::new("127.0.0.1:0".parse().unwrap(), Some(b"secret".to_vec()), 100);
    let cfg = RunConfig {
        ticks: None,
        threads: 1,
        drain_timeout: Duration::from_secs(2),
        net: Some(net),
        // Every tick takes more than 1 µs: overloaded after 2 s of it.
        overload: OverloadConfig {
            budget_us: 1,
            after: Duration::from_secs(2),
            recover_after: Duration::from_secs(2),
        },
        ..RunConfig::headless(0)
    };
    let admin = zone_server::admin::AdminShared::new(None);
    let hooks = Hooks {
        stop_signal: Arc::clone(&stop),
        admin: Some(Arc::clone(&admin)),
        lifecycle: Some(Arc::clone(&lifecycle) as Arc<dyn Lifecycle>),
        stall: Some(Arc::clone(&stall)),
        ..Default::default()
    };
    let runner = std::thread::spawn(move || run(&cfg, &zone, hooks, None).unwrap());

    gw.wait(60, "two Health calls", |c| c.iter().filter(|c| c.path == "/health").count() >= 2);
    gw.wait(60, "allocatable=false after a sustained overload", |c| {
        has(c, "/metadata/label", "\"value\":\"false\"")
    });
    // Overloaded is alive but not ready (`/healthz` 200, `/readyz` 503).
    assert!(admin.is_live() && !admin.is_ready());
    assert!(!admin.allocatable.load(Ordering::Relaxed));
    stall.store(true, Ordering::Relaxed);
    // Within 2 s of the last tick one more Health may still go; after that, none.
    std::thread::sleep(Duration::from_secs(3));
    let during = gw.count("/health");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(gw.count("/health"), during, "Health was sent while the tick was stalled");
    assert!(!admin.is_live(), "/healthz must fail while the tick is stalled");
    stall.store(false, Ordering::Relaxed);
    gw.wait(60, "Health again after the stall", |c| {
        c.iter().filter(|c| c.path == "/health").count() > during
    });

    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    lifecycle.shutdown(Duration::from_secs(5));
    assert_eq!(gw.count("/shutdown"), 1, "{:#?}", gw.summary());
}
