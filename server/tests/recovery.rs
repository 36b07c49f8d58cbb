//! Crash recovery and backend outages, against the real `zone-server` binary, Redis and PostgreSQL.
//!
//! Each test starts its own server with its own `--instance` name and `--data-dir`, so tests can
//! run in parallel. Every wait is bounded, every child process is killed by a guard even when an
//! assertion fails, and nothing but 127.0.0.1 is contacted. A test whose backend is unreachable
//! (Redis at `REDIS_URL`, PostgreSQL at `DATABASE_URL`, both defaulting to the standard local
//! addresses, or the `redis-server` and `psql` programs) is reported as ignored, with the reason
//! (`zone_tests::services`; hence `harness = false` for this file).
//!
//! No assertion depends on wall-clock numbers: RTO and ticks lost are printed, not checked.

mod common;
use common::{free_port, http};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zone_sim::Serial;
use zone_tests::services::{Need, ServiceTests, database_url, redis_url};

// ---------------------------------------------------------------------------------------------
// Small helpers (same style as tests/admin.rs).

/// Polls `f` every 100 ms until it returns `Some`, for at most `cap`.
fn poll<T>(cap: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + cap;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of every series of metric `name` whose line contains all `labels` (e.g.
/// `store="redis"`). An absent metric is 0.
fn metric(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn unique_instance(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("test-{name}-{}-{nanos}", std::process::id())
}

/// Copies the files of directory `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `key=value` from a line of `k=v` words.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

// ---------------------------------------------------------------------------------------------
// A zone-server child, killed on drop.

struct Server {
    child: Child,
    admin: SocketAddr,
    stdout: Receiver<String>,
    stderr_path: PathBuf,
    label: String,
}

impl Server {
    /// Starts `zone-server` from the repository root with `--admin` and `args`; stderr (logs at
    /// `RUST_LOG=info`) goes to `log_dir/<label>.stderr`.
    fn start(label: &str, admin: SocketAddr, log_dir: &Path, args: &[String]) -> Server {
        let stderr_path = log_dir.join(format!("{label}.stderr"));
        let stderr = File::create(&stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_zone-server"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("RUST_LOG", "info")
            .env("ZONE_BIND", "127.0.0.1:0")
            .args(["--admin", &admin.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("cannot start zone-server");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            admin,
            stdout: rx,
            stderr_path,
            label: label.to_string(),
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The last `n` lines of the server's log, for failure messages.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} stderr (last {n} lines of {}) ---\n{}",
            self.label,
            lines.len(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    fn next_line(&self, cap: Duration) -> Option<String> {
        self.stdout.recv_timeout(cap).ok()
    }

    fn scrape(&self) -> String {
        http(self.admin, "GET", "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    fn status_tick(&self) -> Option<u64> {
        let (code, body) = http(self.admin, "GET", "/status")?;
        if code != 200 {
            return None;
        }
        serde_json::from_str::<serde_json::Value>(&body).ok()?.get("tick")?.as_u64()
    }

    fn healthz(&self) -> Option<u16> {
        http(self.admin, "GET", "/healthz").map(|(c, _)| c)
    }

    fn signal(&self, sig: &str) {
        Command::new("kill").args([sig, &self.pid()]).status().unwrap();
    }

    /// Waits (at most `cap`) for the process to exit.
    fn wait_exit(&mut self, cap: Duration) -> ExitStatus {
        let deadline = Instant::now() + cap;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {cap:?}\n{}",
                self.label,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every stdout line not read yet (after exit: until the pipe closes, at most 5 s).
    fn rest_of_stdout(&self) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => out.push(l),
                Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Timeout) => return out,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}

/// Any child process, killed on drop (used for redis-server).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Crash drill.

/// Deletes a test's Redis keys (best effort, via redis-cli; they also carry a TTL).
struct RedisKeys {
    url: String,
    instance: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let full = format!("zone:{}:full", self.instance);
        let diffs = format!("zone:{}:diffs", self.instance);
        let ok = Command::new("redis-cli")
            .args(["-u", &self.url, "DEL", &full, &diffs])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: could not delete {full} / {diffs} with redis-cli; they expire with --redis-ttl");
        }
    }
}

fn crash_drill_restores_the_journal_hash() {
    let redis = redis_url();
    let instance = unique_instance("drill");
    let _keys = RedisKeys {
        url: redis.clone(),
        instance: instance.clone(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let args: Vec<String> = [
        "--sim-players",
        "20",
        "--threads",
        "1",
        "--redis",
        &redis,
        "--redis-ttl",
        "300",
        "--data-dir",
        data.to_str().unwrap(),
        "--instance",
        &instance,
        "--snapshot-full-interval",
        "1",
        "--snapshot-diff-interval",
        "0.25",
        "--stats-interval",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    // Run until tick 180, then crash.
    let first = Server::start("first", free_port(), tmp.path(), &args);
    let seen = poll(Duration::from_secs(30), || first.status_tick().filter(|&t| t >= 180));
    assert!(seen.is_some(), "the zone never reached tick 180\n{}", first.log_tail(40));
    let scrape = first.scrape();
    assert!(
        metric(&scrape, "zone_snapshots_total", &["store=\"redis\""]) > 0.0,
        "no Redis snapshot before the crash\n{}",
        first.log_tail(40)
    );
    // Housekeeping exports the data directory's disk use (for the DiskSpaceLow alert).
    assert!(
        metric(&scrape, "zone_data_dir_bytes", &[]) > 0.0,
        "no zone_data_dir_bytes\n{scrape}"
    );
    assert!(metric(&scrape, "zone_data_dir_filesystem_avail_bytes", &[]) > 0.0);
    assert!(metric(&scrape, "zone_journal_segments", &[]) >= 1.0);
    let last_tick = first.status_tick().or(seen).unwrap();
    let mut first = first;
    first.child.kill().unwrap();
    let st = first.wait_exit(Duration::from_secs(10));
    assert!(!st.success(), "SIGKILL must not look like a clean exit");

    let journal = data.join("journal");
    let copy = tmp.path().join("journal-at-crash");
    copy_dir(&journal, &copy);
    let at_crash = zone_server::replay::replay(&copy, &Serial, |_| {}).expect("the crashed journal replays");
    assert!(!at_crash.clean_end, "a killed server cannot have written an End record");
    let expected = at_crash.final_line();

    // Restart with the same flags plus --restore auto.
    let mut restart_args = args.clone();
    restart_args.extend(["--restore".to_string(), "auto".to_string()]);
    let mut second = Server::start("second", free_port(), tmp.path(), &restart_args);
    let line = second.next_line(Duration::from_secs(60));
    let line = line.unwrap_or_else(|| panic!("no restored_tick line within 60 s\n{}", second.log_tail(40)));
    assert!(line.starts_with("restored_tick="), "first stdout line: {line}");
    let restored_tick: u64 = field(&line, "restored_tick").unwrap().parse().unwrap();
    let rto_ms: u64 = field(&line, "rto_ms").expect("rto_ms").parse().unwrap();
    let source = field(&line, "source").unwrap().to_string();
    eprintln!(
        "crash drill: {line}\ncrash drill: RTO {rto_ms} ms; last /status tick before the kill {last_tick}, restored tick {restored_tick}, \
         ticks lost {} (relative to /status, which refreshes every 0.5 s); journal copy replays to `{expected}`",
        last_tick as i64 - restored_tick as i64
    );
    assert_eq!(
        format!("final_tick={} zone_hash={}", restored_tick, field(&line, "zone_hash").unwrap()),
        expected,
        "the restored state differs from a replay of the journal as the crash left it\n{}",
        second.log_tail(40)
    );
    // Redis is preferred. Diffs newer than the journal's end are left out (the journal reaches
    // the OS every 100 ms, a Redis diff within milliseconds); only when Redis's one full snapshot
    // is itself ahead of the journal (a kill within 100 ms of a full) may an older full from the
    // files win. The state is checked against the journal above either way.
    if source != "redis" {
        let log = std::fs::read_to_string(&second.stderr_path).unwrap_or_default();
        let redis_full_ahead = log
            .lines()
            .any(|l| l.contains("newest full is ahead of the journal") && l.contains("redis"));
        assert!(
            redis_full_ahead && (source == "file" || source == "journal"),
            "restored from {source}, not the hot store, and not because Redis's full was ahead of the journal\n{}",
            second.log_tail(40)
        );
        eprintln!("crash drill: NOTE: restored from {source}: Redis's only full snapshot was ahead of the journal");
    }
    assert!(
        poll(Duration::from_secs(20), || (second.healthz() == Some(200)).then_some(())).is_some(),
        "never live after the restore\n{}",
        second.log_tail(40)
    );
    assert!(
        poll(Duration::from_secs(20), || second.status_tick().filter(|&t| t > restored_tick + 30)).is_some(),
        "the restored zone does not tick on\n{}",
        second.log_tail(40)
    );

    // Drain; the journal continued across the crash, so a full replay is the final line.
    second.signal("-TERM");
    let st = second.wait_exit(Duration::from_secs(40));
    assert!(st.success(), "drain exit status {st}\n{}", second.log_tail(40));
    let rest = second.rest_of_stdout();
    let final_line = rest.last().cloned().unwrap_or_default();
    assert!(final_line.starts_with("final_tick="), "stdout after the restore line: {rest:?}");
    let full = zone_server::replay::replay(&journal, &Serial, |_| {}).expect("the continued journal replays");
    assert!(full.clean_end, "the continued journal ends with an End record");
    assert_eq!(
        full.final_line(),
        final_line,
        "replaying the whole (continued) journal must give the server's final line"
    );
    eprintln!(
        "crash drill: after restart {final_line}; full journal replay checked {} hashes",
        full.hashes_checked
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Redis outage.

/// Sends `PING` over RESP; true on `+PONG`.
fn redis_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn start_redis(port: u16, log_dir: &Path, n: u32) -> KillOnDrop {
    let log = File::create(log_dir.join(format!("redis-{n}.log"))).unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("cannot start redis-server");
    let guard = KillOnDrop(child);
    assert!(
        poll(Duration::from_secs(10), || redis_ping(port).then_some(())).is_some(),
        "redis-server on port {port} never answered PING"
    );
    guard
}

fn redis_outage_falls_back_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let mut redis = Some(start_redis(port, tmp.path(), 1));
    let instance = unique_instance("redis-outage");
    let args: Vec<String> = [
        "--sim-players",
        "5",
        "--threads",
        "1",
        "--redis",
        &format!("redis://127.0.0.1:{port}/"),
        "--data-dir",
        tmp.path().join("data").to_str().unwrap(),
        "--instance",
        &instance,
        "--breaker-failures",
        "2",
        "--breaker-open",
        "1",
        "--backend-timeout-ms",
        "300",
        "--snapshot-full-interval",
        "1",
        "--snapshot-diff-interval",
        "0.25",
        "--stats-interval",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut srv = Server::start("redis-outage", free_port(), tmp.path(), &args);
    let redis_snaps = |s: &str| metric(s, "zone_snapshots_total", &["store=\"redis\""]);
    let file_snaps = |s: &str| metric(s, "zone_snapshots_total", &["store=\"file\""]);
    let fallbacks = |s: &str| metric(s, "zone_snapshot_fallbacks_total", &["from=\"redis\""]);
    let breaker = |s: &str| metric(s, "zone_backend_breaker_state", &["backend=\"redis\""]);

    assert!(
        poll(Duration::from_secs(30), || (redis_snaps(&srv.scrape()) > 0.0).then_some(())).is_some(),
        "no Redis snapshot\n{}",
        srv.log_tail(40)
    );

    // Redis goes away.
    drop(redis.take());
    let down = srv.scrape();
    let t_down = Instant::now();
    let opened = poll(Duration::from_secs(20), || {
        let s = srv.scrape();
        (breaker(&s) == 2.0 && fallbacks(&s) > fallbacks(&down) && file_snaps(&s) > file_snaps(&down)).then_some(s)
    });
    let opened = opened.unwrap_or_else(|| {
        panic!(
            "breaker never opened with fallbacks and file snapshots growing\n{}\n{}",
            srv.scrape(),
            srv.log_tail(40)
        )
    });
    eprintln!(
        "redis outage: breaker open {} ms after Redis was killed",
        t_down.elapsed().as_millis()
    );
    assert!(metric(&opened, "zone_snapshot_failures_total", &["store=\"redis\""]) > 0.0);
    assert!(
        metric(
            &opened,
            "zone_backend_breaker_transitions_total",
            &["backend=\"redis\"", "to=\"open\""]
        ) > 0.0
    );
    let before = srv.scrape();
    std::thread::sleep(Duration::from_secs(1));
    let after = srv.scrape();
    assert!(
        metric(&after, "zone_ticks_total", &[]) > metric(&before, "zone_ticks_total", &[]),
        "the zone stalled while Redis was down"
    );
    assert_eq!(srv.healthz(), Some(200), "not live while Redis was down\n{}", srv.log_tail(40));
    assert!(file_snaps(&after) >= file_snaps(&opened));
    assert!(
        poll(Duration::from_secs(10), || (file_snaps(&srv.scrape()) > file_snaps(&opened))
            .then_some(()))
        .is_some(),
        "file snapshots stopped during the outage"
    );

    // Redis returns on the same port, empty.
    let _redis = start_redis(port, tmp.path(), 2);
    let back = srv.scrape();
    let t_up = Instant::now();
    let resumed = poll(Duration::from_secs(30), || {
        let s = srv.scrape();
        (redis_snaps(&s) > redis_snaps(&back) && breaker(&s) == 0.0).then_some(s)
    });
    let resumed = resumed.unwrap_or_else(|| {
        panic!(
            "Redis snapshots did not resume with the breaker closed\n{}\n{}",
            srv.scrape(),
            srv.log_tail(40)
        )
    });
    eprintln!(
        "redis outage: Redis snapshots resumed {} ms after Redis came back",
        t_up.elapsed().as_millis()
    );
    assert!(
        metric(
            &resumed,
            "zone_backend_breaker_transitions_total",
            &["backend=\"redis\"", "to=\"closed\""]
        ) > 0.0
    );
    assert_eq!(srv.healthz(), Some(200));

    assert_eq!(http(srv.admin, "POST", "/drain").map(|(c, _)| c), Some(202));
    let st = srv.wait_exit(Duration::from_secs(40));
    assert!(st.success(), "drain exit status {st}\n{}", srv.log_tail(40));
    assert!(srv.rest_of_stdout().last().is_some_and(|l| l.starts_with("final_tick=")));
}

// ---------------------------------------------------------------------------------------------
// 3. PostgreSQL outage, through a TCP proxy the test can cut.

/// A TCP proxy on 127.0.0.1 to `upstream`. While down it closes every live connection and closes
/// new ones at once.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, s, l) = (down.clone(), stop.clone(), live.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut live = l.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, down, stop, live }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.live.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_down(true);
    }
}

/// `(before host, host:port, after host)` of a `postgres://[user[:pw]@]host[:port]/db` URL.
fn split_pg_url(url: &str) -> (String, String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (userinfo, rest) = match rest.split_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let hostport = &rest[..end];
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    (format!("{scheme}://{userinfo}"), hostport, rest[end..].to_string())
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("psql must be installed for this test");
    assert!(
        out.status.success(),
        "psql failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Deletes a test instance's rows.
struct PgRows {
    url: String,
    instance: String,
}

impl Drop for PgRows {
    fn drop(&mut self) {
        for table in ["game_events", "zone_snapshots"] {
            let _ = Command::new("psql")
                .args([
                    &self.url,
                    "-tAc",
                    &format!("DELETE FROM {table} WHERE zone_id = '{}'", self.instance),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn postgres_outage_buffers_events_and_flushes_in_order() {
    let db = database_url();
    let (head, hostport, tail) = split_pg_url(&db);
    let upstream: SocketAddr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("DATABASE_URL must name 127.0.0.1/localhost and a port");
    assert!(upstream.ip().is_loopback(), "this test only talks to 127.0.0.1");
    let proxy = Proxy::start(upstream);
    let via_proxy = format!("{head}{}{tail}", proxy.addr);
    let instance = unique_instance("pg-outage");
    let _rows = PgRows {
        url: db.clone(),
        instance: instance.clone(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--postgres",
        &via_proxy,
        "--instance",
        &instance,
        "--sim-players",
        "30",
        "--threads",
        "1",
        "--data-dir",
        tmp.path().join("data").to_str().unwrap(),
        "--cold-snapshot-interval",
        "1",
        "--breaker-failures",
        "2",
        "--breaker-open",
        "1",
        "--backend-timeout-ms",
        "500",
        "--stats-interval",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut srv = Server::start("pg-outage", free_port(), tmp.path(), &args);
    let written = |s: &str| metric(s, "zone_events_written_total", &[]);
    let depth = |s: &str| metric(s, "zone_queue_depth", &["queue=\"events\""]);
    let ticks = |s: &str| metric(s, "zone_ticks_total", &[]);

    assert!(
        poll(Duration::from_secs(30), || (written(&srv.scrape()) > 0.0).then_some(())).is_some(),
        "no events written\n{}",
        srv.log_tail(40)
    );

    // PostgreSQL goes away for ~4 s.
    proxy.set_down(true);
    let start = srv.scrape();
    let t0 = Instant::now();
    let (mut max_depth, mut last) = (0.0f64, start.clone());
    while t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(200));
        let s = srv.scrape();
        max_depth = max_depth.max(depth(&s));
        assert_eq!(srv.healthz(), Some(200), "not live while PostgreSQL was down\n{}", srv.log_tail(40));
        last = s;
    }
    eprintln!(
        "postgres outage: written {} -> {} during the outage, events queue depth up to {max_depth}, breaker state {}",
        written(&start),
        written(&last),
        metric(&last, "zone_backend_breaker_state", &["backend=\"postgres\""])
    );
    assert!(ticks(&last) > ticks(&start), "the zone stalled while PostgreSQL was down");
    assert!(
        max_depth > 0.0 || written(&last) == written(&start),
        "events neither buffered nor stalled while PostgreSQL was down"
    );
    let buffered = max_depth.max(depth(&last));
    let written_down = written(&last);

    // PostgreSQL returns: the buffered events are flushed.
    proxy.set_down(false);
    let t_up = Instant::now();
    // The way back is open: a new connection through the proxy works.
    assert_eq!(
        psql(&via_proxy, "SELECT 1"),
        "1",
        "the proxy does not pass new connections after coming back up"
    );
    let flushed = poll(Duration::from_secs(30), || {
        let s = srv.scrape();
        (written(&s) > written_down
            && depth(&s) < buffered.max(1.0)
            && metric(&s, "zone_backend_breaker_state", &["backend=\"postgres\""]) == 0.0)
            .then_some(s)
    });
    let flushed = flushed.unwrap_or_else(|| {
        let s = srv.scrape();
        panic!(
            "events were not flushed within 30 s of PostgreSQL returning: written {} (was {written_down}), queue depth {} (was {buffered}), breaker {}\n{}",
            written(&s),
            depth(&s),
            metric(&s, "zone_backend_breaker_state", &["backend=\"postgres\""]),
            srv.log_tail(40)
        )
    });
    eprintln!(
        "postgres outage: flushed {} ms after PostgreSQL returned (written {})",
        t_up.elapsed().as_millis(),
        written(&flushed)
    );

    // Drain; the last scrape is a lower bound on what reached the table.
    let last_scrape = srv.scrape();
    assert_eq!(http(srv.admin, "POST", "/drain").map(|(c, _)| c), Some(202));
    let st = srv.wait_exit(Duration::from_secs(40));
    assert!(st.success(), "drain exit status {st}\n{}", srv.log_tail(40));
    assert_eq!(metric(&last_scrape, "zone_events_dropped_total", &[]), 0.0, "events were dropped");

    let rows: u64 = psql(&db, &format!("SELECT count(*) FROM game_events WHERE zone_id = '{instance}'"))
        .parse()
        .unwrap();
    let backwards: u64 = psql(
        &db,
        &format!("SELECT count(*) FROM (SELECT tick < lag(tick) OVER (ORDER BY id) AS back FROM game_events WHERE zone_id = '{instance}') s WHERE back"),
    )
    .parse()
    .unwrap();
    let dupes: u64 = psql(
        &db,
        &format!("SELECT count(*) FROM (SELECT 1 FROM game_events WHERE zone_id = '{instance}' GROUP BY tick, kind, player_id HAVING count(*) > 1) d"),
    )
    .parse()
    .unwrap();
    eprintln!(
        "postgres outage: {rows} rows for the instance; last scrape said {} written; {dupes} duplicated events",
        written(&last_scrape)
    );
    assert!(
        rows as f64 >= written(&last_scrape),
        "{rows} rows < {} events reported written",
        written(&last_scrape)
    );
    assert_eq!(backwards, 0, "rows ordered by id go back in tick: events were not flushed in order");
    assert_eq!(dupes, 0, "some events were written twice");
}

fn main() {
    ServiceTests::new()
        .needs(
            "crash_drill_restores_the_journal_hash",
            &[Need::Redis],
            crash_drill_restores_the_journal_hash,
        )
        .needs(
            "redis_outage_falls_back_and_resumes",
            &[Need::Program("redis-server")],
            redis_outage_falls_back_and_resumes,
        )
        .needs(
            "postgres_outage_buffers_events_and_flushes_in_order",
            // psql checks the rows the server wrote.
            &[Need::Postgres, Need::Program("psql")],
            postgres_outage_buffers_events_and_flushes_in_order,
        )
        .run()
}
