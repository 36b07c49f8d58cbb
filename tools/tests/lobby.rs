//! End to end through the front door: a zone-lobby, two zone servers announcing themselves to it,
//! and `zone-bots --lobby` with 200 bots that log in, ask to join, and connect with the tokens
//! they were given. Every bot must join, and both servers must get players. Then matchmaking:
//! `zone-bots --match team3` with 12 bots, which must all be matched (two 3v3 matches), join the
//! zone server their match is placed on, and report one result per match. And `--join-wait`:
//! bots started before their zone's server wait for it and join.
//!
//! The lobby and the zone servers run in this process (the servers on their own threads, as
//! `zone-server` runs them); the bots are the real binary. Needs PostgreSQL and Redis: a missing
//! one shows as ignored, with the reason. About 10 s each (the wait, about 17 s).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zone_lobby::client::LobbyClient;
use zone_lobby::config::LobbyConfig;
use zone_server::announce::{AnnounceConfig, Announcer};
use zone_server::net::NetConfig;
use zone_server::runner::{Hooks, RunConfig, run};
use zone_tests::services::{Need, ServiceTests, database_url, redis_url};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/zones/demo.toml");
const BOTS: u32 = 200;

fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Zone {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn start_zone(instance: &str, prefix: &str, secret: &str, capacity: usize) -> Zone {
    let bind = free_udp();
    let mut net = NetConfig::new(bind, Some(secret.as_bytes().to_vec()), capacity);
    net.handshake_rate_per_ip = 10_000.0;
    let cfg = RunConfig {
        threads: 1,
        ticks: None,
        drain_timeout: Duration::from_secs(2),
        net: Some(net),
        // A debug build on a shared machine must not call itself overloaded (10 s over its own
        // budget): the lobby would stop offering it whatever the lobby's tick budget says.
        overload: zone_server::lifecycle::overload::OverloadConfig {
            budget_us: 1_000_000,
            ..Default::default()
        },
        ..RunConfig::headless(0)
    };
    let zone = zone_server::zone_load::load_zone(Path::new(DEMO)).unwrap();
    let announcer = Announcer::start(AnnounceConfig {
        redis_url: redis_url(),
        prefix: prefix.into(),
        zone_id: zone.spec.id.clone(),
        instance_id: instance.into(),
        public_addr: bind.to_string(),
        capacity: capacity as u32,
        ttl: Duration::from_secs(3),
        op_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hooks = Hooks {
        stop_signal: Arc::clone(&stop),
        announce: Some(Arc::clone(&announcer.shared)),
        ..Default::default()
    };
    let thread = std::thread::spawn(move || {
        run(&cfg, &zone, hooks, None).unwrap();
        announcer.stop();
    });
    Zone { stop, thread }
}

/// A zone-lobby for one test: its own runtime, database schema and Redis prefix, stopped (and
/// its schema dropped) by [`TestLobby::stop`]. Its tick budget is 1 s: a debug zone server on a
/// shared machine has seconds over the default 16.7 ms, and a bot's join in such a second gets
/// `no_room`. These tests are about the lobby's routing, not the budget (server/lobby's tests
/// cover that).
struct TestLobby {
    rt: tokio::runtime::Runtime,
    lobby: zone_lobby::server::Running,
    url: String,
    /// The schema's name, also the Redis prefix (with a colon) and the bots' report file's name.
    name: String,
    secret: String,
}

impl TestLobby {
    fn start(tag: &str, tune: impl FnOnce(&mut LobbyConfig)) -> TestLobby {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let name = format!("t_{tag}_{}_{}", std::process::id(), zone_lobby::app::now_ms() % 1_000_000);
        let mut cfg = LobbyConfig::for_tests(&database_url(), &name, &redis_url(), &format!("{name}:"));
        cfg.log_filter = "warn".into();
        cfg.tick_budget_ms = 1_000.0;
        tune(&mut cfg);
        let secret = cfg.token_secret.clone();
        let lobby = rt.block_on(zone_lobby::server::start(cfg, None)).unwrap();
        let url = format!("http://{}", lobby.addr);
        TestLobby {
            rt,
            lobby,
            url,
            name,
            secret,
        }
    }

    /// The Redis key prefix the lobby and its zone servers share.
    fn prefix(&self) -> String {
        format!("{}:", self.name)
    }

    /// `zone-bots --lobby` against this lobby, `count` bots for `duration`, with `args` besides;
    /// their report goes to [`TestLobby::report`].
    fn bots(&self, count: u32, duration: &str, args: &[&str]) -> Command {
        let mut bots = Command::new(env!("CARGO_BIN_EXE_zone-bots"));
        bots.args(["--lobby", &self.url, "--count", &count.to_string(), "--duration", duration])
            .args(args)
            .arg("--report")
            .arg(self.report_path());
        bots
    }

    fn report_path(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}.json", self.name))
    }

    /// The bots' report (the file is removed). Without one (zone-bots died), a JSON string saying
    /// why: the test still stops its zone servers and the lobby before its asserts fail on it.
    fn report(&self) -> Value {
        let path = self.report_path();
        let r = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&path);
        r.unwrap_or_else(|e| Value::String(format!("no report from zone-bots at {}: {e}", path.display())))
    }

    fn stop(self) {
        let lobby = self.lobby;
        self.rt.block_on(async {
            let _ = lobby.app.accounts.drop_schema().await;
            lobby.stop().await;
        });
    }
}

fn bots_join_two_zone_servers_through_the_lobby() {
    let t = TestLobby::start("e2e", |_| {});
    let (rt, prefix) = (&t.rt, t.prefix());
    // 150 seats each: 200 bots need both.
    let zones = [
        start_zone("e2e-a", &prefix, &t.secret, 150),
        start_zone("e2e-b", &prefix, &t.secret, 150),
    ];
    let mut c = LobbyClient::new(&t.url).unwrap();
    let ready = |v: &Value| {
        v["zones"][0]["instances"]
            .as_array()
            .map_or(0, |i| i.iter().filter(|x| x["offered"] == Value::Bool(true)).count())
    };
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = rt.block_on(c.call("GET", "/v1/zones", None, None)).unwrap();
        if ready(&v) == 2 {
            break;
        }
        assert!(Instant::now() < until, "the zone servers never showed up in the directory: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut child = t.bots(BOTS, "6s", &["--zone-id", "demo", "--ramp-per-s", "400"]).spawn().unwrap();
    // While they play, both servers report players.
    let mut most = [0u64; 2];
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let v: Value = rt.block_on(c.call("GET", "/v1/zones", None, None)).unwrap();
        for (k, id) in ["e2e-a", "e2e-b"].iter().enumerate() {
            if let Some(i) = v["zones"][0]["instances"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["instance_id"] == *id))
            {
                most[k] = most[k].max(i["players"].as_u64().unwrap_or(0));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = child.wait().unwrap();
    let r = t.report();
    for z in &zones {
        z.stop.store(true, Ordering::Relaxed);
    }
    for z in zones {
        z.thread.join().unwrap();
    }
    t.stop();
    assert!(status.success(), "zone-bots failed: {r}");
    assert_eq!(r["joined"], BOTS, "{r}");
    assert!(r["lobby_login_ms_p99"].is_number() && r["lobby_join_ms_p99"].is_number(), "{r}");
    assert!(
        most[0] > 0 && most[1] > 0 && most[0] + most[1] >= u64::from(BOTS),
        "players per server {most:?}"
    );
}

/// `zone-bots --join-wait`: bots started before any zone server of their zone has announced
/// itself get `unknown_zone` from the lobby and ask again (their progress line counts it); only
/// then a zone server starts, and every bot must join it.
fn bots_wait_for_a_zone_server_through_the_lobby() {
    const WAITERS: u32 = 5;
    let t = TestLobby::start("wait", |_| {});
    // A debug zone server on a loaded machine takes seconds to be offered: a long wait.
    let mut child = t
        .bots(WAITERS, "16s", &["--zone-id", "demo", "--join-wait", "15s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The bots' progress lines, passed on to this test's output; the first one that counts
    // every bot among those that asked again says they are all waiting.
    let (asked_tx, asked_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            // "... | join retries N by M bots"
            let bots = line
                .split_once("| join retries ")
                .and_then(|(_, rest)| rest.split_once(" by "))
                .and_then(|(_, m)| m.trim_end_matches(" bots").trim().parse::<u64>().ok());
            if bots.is_some_and(|m| m >= u64::from(WAITERS)) {
                let _ = asked_tx.send(());
            }
        }
    });
    let asked = asked_rx.recv_timeout(Duration::from_secs(20));
    let zone = start_zone("wait-a", &t.prefix(), &t.secret, 50);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let r = t.report();
    zone.stop.store(true, Ordering::Relaxed);
    zone.thread.join().unwrap();
    t.stop();
    assert!(
        asked.is_ok(),
        "the bots never reported asking again before the zone server started: {r}"
    );
    assert!(status.success(), "zone-bots failed: {r}");
    assert_eq!(r["joined"], WAITERS, "{r}");
    assert_eq!(r["lobby_join_retried_bots"], WAITERS, "every bot asked again: {r}");
}

fn bots_play_matches_through_the_lobby() {
    const MATCH_BOTS: u32 = 12;
    let t = TestLobby::start("e2e_match", |cfg| cfg.service_key = Some("e2e-service-key".into()));
    let rt = &t.rt;
    let zone = start_zone("e2e-match", &t.prefix(), &t.secret, 50);
    let mut c = LobbyClient::new(&t.url).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = rt.block_on(c.call("GET", "/v1/zones", None, None)).unwrap();
        let offered = v["zones"][0]["instances"]
            .as_array()
            .is_some_and(|i| i.iter().any(|x| x["offered"] == Value::Bool(true)));
        if offered {
            break;
        }
        assert!(Instant::now() < until, "the zone server never showed up in the directory: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let device_prefix = format!("{}-", t.name);
    let status = t
        .bots(
            MATCH_BOTS,
            "4s",
            &[
                "--match",
                "team3",
                "--match-wait",
                "3s",
                "--ramp-per-s",
                "100",
                "--device-prefix",
                &device_prefix,
            ],
        )
        .env("ZONE_LOBBY_SERVICE_KEY", "e2e-service-key")
        .status()
        .unwrap();
    let r = t.report();
    zone.stop.store(true, Ordering::Relaxed);
    zone.thread.join().unwrap();
    t.stop();
    assert!(status.success(), "zone-bots failed: {r}");
    assert_eq!(r["joined"], MATCH_BOTS, "{r}");
    let m = &r["matching"];
    assert_eq!(m["mode"], "team3", "{r}");
    assert_eq!(m["matched"], MATCH_BOTS, "{r}");
    assert!(m["match_wait_ms_p99"].is_number(), "{r}");
    assert_eq!(
        (m["results_reported"].as_u64(), m["result_errors"].as_u64()),
        (Some(2), Some(0)),
        "{r}"
    );
}

fn main() {
    ServiceTests::new()
        .needs(
            "bots_join_two_zone_servers_through_the_lobby",
            &[Need::Redis, Need::Postgres],
            bots_join_two_zone_servers_through_the_lobby,
        )
        .needs(
            "bots_wait_for_a_zone_server_through_the_lobby",
            &[Need::Redis, Need::Postgres],
            bots_wait_for_a_zone_server_through_the_lobby,
        )
        .needs(
            "bots_play_matches_through_the_lobby",
            &[Need::Redis, Need::Postgres],
            bots_play_matches_through_the_lobby,
        )
        .run()
}
