//! The lobby against the real PostgreSQL and Redis: accounts, refresh rotation and reuse
//! detection, expiry, single-session takeover, index repair, the directory's TTL, concurrent
//! seat reservation, a Redis outage, and bad input.
//!
//! Each test runs its own lobby in-process on a free port, with a unique PostgreSQL schema and
//! Redis key prefix, and removes both at the end. A missing service shows as ignored, with the
//! reason (`zone_tests::services`, hence `harness = false`).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zone_directory::{InstanceState, Keys, ZoneEvent, ZoneEventKind, ZoneRecord};
use zone_lobby::client::LobbyClient;
use zone_lobby::config::LobbyConfig;
use zone_lobby::server::Running;
use zone_lobby::verifier::DevVerifier;
use zone_tests::services::{Need, ServiceTests, database_url, redis_url};

const BOTH: &[Need] = &[Need::Redis, Need::Postgres];

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("t_{what}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn now_ms() -> u64 {
    zone_lobby::app::now_ms()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A lobby on a free port with its own schema and prefix; `tweak` adjusts the configuration.
async fn lobby_with(redis: &str, tweak: impl FnOnce(&mut LobbyConfig)) -> Running {
    let name = unique("lobby");
    let mut cfg = LobbyConfig::for_tests(&database_url(), &name, redis, &format!("{name}:"));
    tweak(&mut cfg);
    zone_lobby::server::start(cfg, None).await.unwrap()
}

async fn lobby(tweak: impl FnOnce(&mut LobbyConfig)) -> Running {
    lobby_with(&redis_url(), tweak).await
}

/// Drops the schema and every key under the prefix (a SCAN is fine in a test's cleanup; the
/// lobby itself never scans).
async fn cleanup(r: Running) {
    let prefix = r.app.cfg.redis_prefix.clone();
    let _ = r.app.accounts.drop_schema().await;
    if let Ok(client) = redis::Client::open(redis_url())
        && let Ok(mut c) = client.get_multiplexed_async_connection().await
    {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .unwrap_or((0, Vec::new()));
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    r.stop().await;
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn client(r: &Running) -> LobbyClient {
    LobbyClient::new(&format!("http://{}", r.addr)).unwrap()
}

fn record(zone: &str, instance: &str, capacity: u32) -> ZoneRecord {
    ZoneRecord {
        zone_id: zone.into(),
        instance_id: instance.into(),
        addr: "127.0.0.1:7777".into(),
        capacity,
        players: 0,
        tick_p99_us: 2_000,
        state: InstanceState::Ready,
        allocatable: true,
        updated_ms: now_ms(),
    }
}

async fn announce(r: &Running, rec: &ZoneRecord, ttl_ms: u64) {
    let mut c = redis_conn().await;
    zone_directory::announce(&mut c, &Keys::new(&r.app.cfg.redis_prefix), rec, now_ms(), ttl_ms)
        .await
        .unwrap();
}

async fn report(r: &Running, kind: ZoneEventKind, zone: &str, instance: &str, player_id: i64) {
    let mut c = redis_conn().await;
    let e = ZoneEvent {
        kind,
        zone_id: zone.into(),
        instance_id: instance.into(),
        addr: "127.0.0.1:7777".into(),
        player_id: player_id as u64,
        at_ms: now_ms(),
    };
    zone_directory::report_events(&mut c, &Keys::new(&r.app.cfg.redis_prefix), &[e])
        .await
        .unwrap();
}

async fn session(c: &mut LobbyClient, token: &str) -> (u16, Value) {
    let a = c.request("GET", "/v1/session", Some(token), None).await.unwrap();
    (a.status, a.json().unwrap_or(Value::Null))
}

/// Waits until the session says it is in `zone` (the lobby applies reports every 100 ms).
async fn wait_in_zone(c: &mut LobbyClient, token: &str, zone: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = session(c, token).await;
        if status == 200 && v["zone_id"] == zone {
            return;
        }
        assert!(Instant::now() < until, "the session never showed zone {zone}: {status} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn refresh(c: &mut LobbyClient, token: &str) -> (u16, Value) {
    let body = serde_json::json!({ "refresh_token": token }).to_string();
    let a = c.request("POST", "/v1/auth/refresh", None, Some(&body)).await.unwrap();
    (a.status, a.json().unwrap_or(Value::Null))
}

fn accounts_create_find_link() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let mut c = client(&r);
        let a = c.device_login("device-a").await.unwrap();
        assert!(a.created);
        let again = c.device_login("device-a").await.unwrap();
        assert_eq!(
            (again.account_id, again.created),
            (a.account_id, false),
            "the same device finds the same account"
        );
        let b = c.device_login("device-b").await.unwrap();
        assert_ne!(b.account_id, a.account_id);

        let proof = DevVerifier::proof(b"dev key", "alice");
        let link = |p: &str| serde_json::json!({ "platform": "dev", "platform_user_id": "alice", "proof": p }).to_string();
        let ans = c
            .request("POST", "/v1/auth/link", Some(&again.session_token), Some(&link(&proof)))
            .await
            .unwrap();
        assert_eq!(ans.status, 200, "{}", ans.text());
        let v: Value = ans.json().unwrap();
        assert_eq!(v["identities"].as_array().unwrap().len(), 2, "{v}");
        // Linking it again to the same account is fine; to another one is a conflict.
        let ans = c
            .request("POST", "/v1/auth/link", Some(&again.session_token), Some(&link(&proof)))
            .await
            .unwrap();
        assert_eq!(ans.status, 200);
        let ans = c
            .request("POST", "/v1/auth/link", Some(&b.session_token), Some(&link(&proof)))
            .await
            .unwrap();
        assert_eq!(ans.status, 409, "{}", ans.text());
        // A bad proof is refused.
        let ans = c
            .request("POST", "/v1/auth/link", Some(&b.session_token), Some(&link(&"0".repeat(64))))
            .await
            .unwrap();
        assert_eq!(ans.status, 401, "{}", ans.text());
        // Logging in with the linked identity finds the first account.
        let ans = c.request("POST", "/v1/auth/platform", None, Some(&link(&proof))).await.unwrap();
        assert_eq!(ans.status, 200, "{}", ans.text());
        assert_eq!(ans.json::<Value>().unwrap()["account_id"], a.account_id);
        cleanup(r).await;
    });
}

fn bad_input_is_refused_clearly() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let mut c = client(&r);
        let cases: [(&str, u16, &str); 5] = [
            (r#"{"device_id": 5}"#, 400, "device_id"),
            (r#"{}"#, 400, "device_id"),
            (r#"{"device_id": "a b"}"#, 400, "device_id"),
            (r#"{"device_id": "x""#, 400, "malformed"),
            (r#"{"device_id": "ok"} trailing"#, 400, "malformed"),
        ];
        for (body, status, needle) in cases {
            let a = c.request("POST", "/v1/auth/device", None, Some(body)).await.unwrap();
            assert_eq!(a.status, status, "{body}: {}", a.text());
            assert!(a.text().contains(needle), "{body}: {}", a.text());
        }
        let big = format!(r#"{{"device_id": "{}"}}"#, "a".repeat(20_000));
        let a = c.request("POST", "/v1/auth/device", None, Some(&big)).await.unwrap();
        assert_eq!(a.status, 413, "{}", a.text());
        let a = c
            .request(
                "POST",
                "/v1/auth/platform",
                None,
                Some(r#"{"platform":"steam","platform_user_id":"1","proof":"x"}"#),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 400, "{}", a.text());
        assert!(a.text().contains("platform"), "{}", a.text());
        // Sessions: missing, forged, expired-looking.
        for token in [None, Some("nonsense"), Some("eyJhbGciOiJIUzI1NiJ9.e30.AAAA")] {
            let a = c.request("GET", "/v1/session", token, None).await.unwrap();
            assert_eq!(a.status, 401, "{token:?}: {}", a.text());
        }
        let forged = zone_lobby::session_token::mint(
            b"another secret entirely",
            &zone_lobby::session_token::SessionClaims {
                aid: 1,
                sid: "x".into(),
                iat: 0,
                exp: u64::MAX / 2,
            },
        );
        assert_eq!(c.request("GET", "/v1/session", Some(&forged), None).await.unwrap().status, 401);
        // The document is there and names every endpoint.
        let doc: Value = c.call("GET", "/openapi.json", None, None).await.unwrap();
        for p in [
            "/v1/auth/device",
            "/v1/auth/link",
            "/v1/auth/refresh",
            "/v1/auth/logout",
            "/v1/session",
            "/v1/zones",
            "/v1/zones/{zone_id}/join",
        ] {
            assert!(doc["paths"][p].is_object(), "{p} missing from the OpenAPI document");
        }
        assert_eq!(c.request("GET", "/healthz", None, None).await.unwrap().status, 200);
        assert_eq!(c.request("GET", "/readyz", None, None).await.unwrap().status, 200);
        cleanup(r).await;
    });
}

fn rate_limits_answer_429_with_retry_after() {
    runtime().block_on(async {
        let r = lobby(|c| {
            c.rate_per_ip = 5.0;
            c.rate_per_account = 2.0;
        })
        .await;
        let mut c = client(&r);
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for _ in 0..15 {
            let a = c.request("GET", "/v1/zones", None, None).await.unwrap();
            if a.status == 429 {
                retry_after = a.retry_after.clone();
            }
            statuses.push(a.status);
        }
        assert!(statuses.contains(&429), "{statuses:?}");
        assert!(
            retry_after.as_deref().is_some_and(|s| s.parse::<u64>().is_ok_and(|v| v >= 1)),
            "{retry_after:?}"
        );
        cleanup(r).await;
    });
}

fn refresh_rotation_and_reuse_detection() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let mut c = client(&r);
        let a = c.device_login("device-r").await.unwrap();
        let (status, v) = refresh(&mut c, &a.refresh_token).await;
        assert_eq!(status, 200, "{v}");
        let (s2, r2) = (
            v["session_token"].as_str().unwrap().to_string(),
            v["refresh_token"].as_str().unwrap().to_string(),
        );
        assert_ne!(r2, a.refresh_token, "rotated");
        assert_eq!(session(&mut c, &s2).await.0, 200);
        // The old token again: 401, and the whole family goes, with the session.
        assert_eq!(refresh(&mut c, &a.refresh_token).await.0, 401);
        assert_eq!(refresh(&mut c, &r2).await.0, 401, "its successor is revoked too");
        assert_eq!(session(&mut c, &s2).await.0, 401, "the session ended");
        // Logout ends the session and its refresh token.
        let b = c.device_login("device-r").await.unwrap();
        let a = c.request("POST", "/v1/auth/logout", Some(&b.session_token), None).await.unwrap();
        assert_eq!(a.status, 204, "{}", a.text());
        assert_eq!(session(&mut c, &b.session_token).await.0, 401);
        assert_eq!(refresh(&mut c, &b.refresh_token).await.0, 401);
        assert_eq!(refresh(&mut c, "not-a-token").await.0, 401);
        cleanup(r).await;
    });
}

fn session_and_refresh_tokens_expire() {
    runtime().block_on(async {
        let r = lobby(|c| {
            c.session_ttl = 2;
            c.refresh_ttl = 3;
        })
        .await;
        let mut c = client(&r);
        let a = c.device_login("device-x").await.unwrap();
        assert_eq!(session(&mut c, &a.session_token).await.0, 200);
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        assert_eq!(session(&mut c, &a.session_token).await.0, 401, "session token expired");
        let (status, v) = refresh(&mut c, &a.refresh_token).await;
        assert_eq!(status, 401, "refresh token expired: {v}");
        assert!(v["message"].as_str().unwrap_or("").contains("expired"), "{v}");
        cleanup(r).await;
    });
}

fn single_session_takeover_kicks_the_old_one() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let mut c = client(&r);
        announce(&r, &record("tz", "i1", 10), 5_000).await;
        let first = c.device_login("device-t").await.unwrap();
        let j = c.join(&first.session_token, "tz").await.unwrap();
        assert_eq!((j.zone_id.as_str(), j.instance_id.as_str()), ("tz", "i1"));
        let claims = zone_net::token::verify(b"test token secret", &j.join_token, "tz", now_ms() / 1000).unwrap();
        assert_eq!(claims.player_id, first.account_id as u64, "the join token is for this player");
        assert_eq!(
            j.grant().expect("a 32-byte session key").key,
            claims.session_key,
            "the player's session key is the one sealed in the token for the zone server"
        );
        report(&r, ZoneEventKind::Join, "tz", "i1", first.account_id).await;
        wait_in_zone(&mut c, &first.session_token, "tz").await;
        let sid1: String = session(&mut c, &first.session_token).await.1["session_id"].as_str().unwrap().into();
        assert_eq!(r.app.sessions.in_zone("tz", now_ms()).await.unwrap(), vec![sid1.clone()]);

        let second = c.device_login("device-t").await.unwrap();
        assert_eq!(second.account_id, first.account_id);
        assert_eq!(session(&mut c, &first.session_token).await.0, 401, "the old session ended");
        assert_eq!(session(&mut c, &second.session_token).await.0, 200);
        assert_eq!(refresh(&mut c, &first.refresh_token).await.0, 401, "its refresh token is revoked");
        let mut rc = redis_conn().await;
        let kicks = zone_directory::pop_kicks(&mut rc, &Keys::new(&r.app.cfg.redis_prefix), "tz", "i1", 10)
            .await
            .unwrap();
        assert_eq!(kicks, vec![first.account_id as u64], "its zone was asked to drop the player");
        assert!(r.app.sessions.in_zone("tz", now_ms()).await.unwrap().is_empty());
        cleanup(r).await;
    });
}

fn indexes_stay_consistent_when_sessions_end() {
    runtime().block_on(async {
        let r = lobby(|c| c.session_ttl = 2).await;
        let mut c = client(&r);
        let prefix = r.app.cfg.redis_prefix.clone();
        let mut rc = redis_conn().await;
        // A session hash deleted behind the lobby's back: reads repair both indexes.
        let a = c.device_login("device-i1").await.unwrap();
        report(&r, ZoneEventKind::Join, "iz", "i1", a.account_id).await;
        wait_in_zone(&mut c, &a.session_token, "iz").await;
        let sid: String = session(&mut c, &a.session_token).await.1["session_id"].as_str().unwrap().into();
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}sess:{sid}"))
            .query_async(&mut rc)
            .await
            .unwrap();
        assert!(r.app.sessions.in_zone("iz", now_ms()).await.unwrap().is_empty());
        assert!(r.app.sessions.of_account(a.account_id, now_ms()).await.unwrap().is_empty());
        let zcard = |key: String| {
            let mut rc = rc.clone();
            async move { redis::cmd("ZCARD").arg(key).query_async::<u64>(&mut rc).await.unwrap() }
        };
        assert_eq!(zcard(format!("{prefix}zone:iz:sess")).await, 0);
        assert_eq!(zcard(format!("{prefix}acct:{}:sess", a.account_id)).await, 0);
        // A session that expires: gone from both indexes too.
        let b = c.device_login("device-i2").await.unwrap();
        report(&r, ZoneEventKind::Join, "iz", "i1", b.account_id).await;
        wait_in_zone(&mut c, &b.session_token, "iz").await;
        assert_eq!(r.app.sessions.in_zone("iz", now_ms()).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        assert!(r.app.sessions.in_zone("iz", now_ms()).await.unwrap().is_empty());
        assert!(r.app.sessions.of_account(b.account_id, now_ms()).await.unwrap().is_empty());
        assert_eq!(zcard(format!("{prefix}zone:iz:sess")).await, 0);
        assert_eq!(zcard(format!("{prefix}acct:{}:sess", b.account_id)).await, 0);
        // A leave report takes the session out of the zone.
        let d = c.device_login("device-i3").await.unwrap();
        report(&r, ZoneEventKind::Join, "iz", "i1", d.account_id).await;
        wait_in_zone(&mut c, &d.session_token, "iz").await;
        report(&r, ZoneEventKind::Leave, "iz", "i1", d.account_id).await;
        let until = Instant::now() + Duration::from_secs(5);
        while session(&mut c, &d.session_token).await.1["zone_id"] != Value::Null {
            assert!(Instant::now() < until, "the leave was never applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(r.app.sessions.in_zone("iz", now_ms()).await.unwrap().is_empty());
        cleanup(r).await;
    });
}

fn directory_forgets_a_dead_server_and_skips_slow_ones() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let mut c = client(&r);
        let zones = |v: &Value| v["zones"].as_array().cloned().unwrap_or_default();
        announce(&r, &record("dz", "dead", 10), 600).await;
        let slow = ZoneRecord {
            tick_p99_us: 40_000,
            ..record("sz", "slow", 10)
        };
        announce(&r, &slow, 5_000).await;
        let v: Value = c.call("GET", "/v1/zones", None, None).await.unwrap();
        assert_eq!(zones(&v).len(), 2, "{v}");
        let s = zones(&v).into_iter().find(|z| z["zone_id"] == "sz").unwrap();
        assert_eq!(
            (s["joinable"].clone(), s["instances"][0]["not_offered_because"].clone()),
            (Value::Bool(false), Value::from("tick_over_budget"))
        );
        let a = c.device_login("device-d").await.unwrap();
        let ans = c.request("POST", "/v1/zones/sz/join", Some(&a.session_token), None).await.unwrap();
        assert_eq!(ans.status, 409, "over budget: listed, not offered: {}", ans.text());
        let ans = c
            .request("POST", "/v1/zones/nowhere/join", Some(&a.session_token), None)
            .await
            .unwrap();
        assert_eq!(ans.status, 404, "{}", ans.text());
        // The dead server stops rewriting its record: it is gone once its TTL runs out.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let v: Value = c.call("GET", "/v1/zones", None, None).await.unwrap();
        assert!(zones(&v).iter().all(|z| z["zone_id"] != "dz"), "{v}");
        let mut rc = redis_conn().await;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(Keys::new(&r.app.cfg.redis_prefix).index())
            .arg(Keys::member("dz", "dead"))
            .query_async(&mut rc)
            .await
            .unwrap();
        assert_eq!(score, None, "the index entry was repaired");
        cleanup(r).await;
    });
}

fn concurrent_joins_never_overfill() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        announce(&r, &record("cz", "only", 50), 30_000).await;
        let addr = r.addr;
        let mut logins = Vec::new();
        for chunk in (0..200).collect::<Vec<u32>>().chunks(25) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|&k| {
                    tokio::spawn(async move {
                        let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
                        c.device_login(&format!("crowd-{k}")).await.unwrap().session_token
                    })
                })
                .collect();
            for t in tasks {
                logins.push(t.await.unwrap());
            }
        }
        let joins: Vec<_> = logins
            .into_iter()
            .map(|token| {
                tokio::spawn(async move {
                    let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
                    c.request("POST", "/v1/zones/cz/join", Some(&token), None).await.unwrap().status
                })
            })
            .collect();
        let mut ok = 0;
        let mut full = 0;
        for j in joins {
            match j.await.unwrap() {
                200 => ok += 1,
                409 => full += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!((ok, full), (50, 150));
        let mut rc = redis_conn().await;
        let keys = Keys::new(&r.app.cfg.redis_prefix);
        assert_eq!(
            zone_directory::seats_held(&mut rc, &keys, "cz", "only", now_ms()).await.unwrap(),
            50
        );
        cleanup(r).await;
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_redis(port: u16) -> std::process::Child {
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn redis_outage_gets_503_and_the_zone_keeps_ticking() {
    let port = free_port();
    let mut redis_child = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}/");
    let rt = runtime();
    let r = rt.block_on(lobby_with(&url, |c| c.backend_timeout_ms = 500));
    let mut c = client(&r);
    rt.block_on(async { c.device_login("device-o").await.unwrap() });
    let _ = redis_child.kill();
    let _ = redis_child.wait();
    rt.block_on(async {
        let a = c
            .request("POST", "/v1/auth/device", None, Some(r#"{"device_id":"device-o"}"#))
            .await
            .unwrap();
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.text().contains("redis_unavailable"), "{}", a.text());
        let a = c.request("GET", "/v1/zones", None, None).await.unwrap();
        assert_eq!(a.status, 503, "{}", a.text());
        let a = c.request("GET", "/readyz", None, None).await.unwrap();
        assert_eq!(a.status, 503, "{}", a.text());
    });
    // A zone server announcing into the dead Redis keeps its 60 ticks/s.
    let zone = zone_server::zone_load::load_zone(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/zones/demo.toml"))).unwrap();
    let announcer = zone_server::announce::Announcer::start(zone_server::announce::AnnounceConfig {
        redis_url: url.clone(),
        prefix: "outage:".into(),
        zone_id: zone.spec.id.clone(),
        instance_id: "outage".into(),
        public_addr: "127.0.0.1:1".into(),
        capacity: 10,
        ttl: Duration::from_secs(3),
        op_timeout: Duration::from_millis(200),
    })
    .unwrap();
    let cfg = zone_server::runner::RunConfig {
        realtime: true,
        ..zone_server::runner::RunConfig::headless(90)
    };
    let hooks = zone_server::runner::Hooks {
        announce: Some(std::sync::Arc::clone(&announcer.shared)),
        ..Default::default()
    };
    let outcome = zone_server::runner::run(&cfg, &zone, hooks, None).unwrap();
    assert_eq!(outcome.ticks_run, 90, "the zone ran every tick");
    assert!(
        announcer.shared.errors.load(Ordering::Relaxed) >= 1,
        "the announcer noticed the outage"
    );
    announcer.stop();
    // Redis comes back: so does the lobby.
    let mut redis_child = start_redis(port);
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let a = c
                .request("POST", "/v1/auth/device", None, Some(r#"{"device_id":"device-o"}"#))
                .await
                .unwrap();
            if a.status == 200 {
                break;
            }
            assert!(Instant::now() < until, "the lobby did not recover: {} {}", a.status, a.text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = r.app.accounts.drop_schema().await;
        r.stop().await;
    });
    let _ = redis_child.kill();
    let _ = redis_child.wait();
}

fn main() {
    ServiceTests::new()
        .needs("accounts_create_find_link", BOTH, accounts_create_find_link)
        .needs("bad_input_is_refused_clearly", BOTH, bad_input_is_refused_clearly)
        .needs(
            "rate_limits_answer_429_with_retry_after",
            BOTH,
            rate_limits_answer_429_with_retry_after,
        )
        .needs("refresh_rotation_and_reuse_detection", BOTH, refresh_rotation_and_reuse_detection)
        .needs("session_and_refresh_tokens_expire", BOTH, session_and_refresh_tokens_expire)
        .needs(
            "single_session_takeover_kicks_the_old_one",
            BOTH,
            single_session_takeover_kicks_the_old_one,
        )
        .needs(
            "indexes_stay_consistent_when_sessions_end",
            BOTH,
            indexes_stay_consistent_when_sessions_end,
        )
        .needs(
            "directory_forgets_a_dead_server_and_skips_slow_ones",
            BOTH,
            directory_forgets_a_dead_server_and_skips_slow_ones,
        )
        .needs("concurrent_joins_never_overfill", BOTH, concurrent_joins_never_overfill)
        .needs(
            "redis_outage_gets_503_and_the_zone_keeps_ticking",
            &[Need::Postgres, Need::Program("redis-server")],
            redis_outage_gets_503_and_the_zone_keeps_ticking,
        )
        .run()
}
