//! Matchmaking against the real PostgreSQL and Redis: 100 concurrent requests all answered, the
//! refusals (400, 409, 429) and idempotent retries, a cancel racing a match, a zone server that
//! dies between the match and the join, results and ratings, the seed's shape for trusted
//! backends, and a `kill -9` of the leader (a real `zone-lobby` process) with 10,000 tickets
//! queued.
//!
//! Each test uses its own PostgreSQL schema and Redis key prefix and removes both at the end. A
//! missing service shows as ignored, with the reason (`zone_tests::services`). No test fails on
//! wall-clock time: the waits below are bounds on something that must happen, generous enough
//! for a loaded machine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zone_directory::{InstanceState, Keys, ZoneRecord};
use zone_lobby::client::{LobbyClient, MatchAnswer, MatchOptions};
use zone_lobby::config::LobbyConfig;
use zone_lobby::server::Running;
use zone_tests::services::{Need, ServiceTests, database_url, redis_url};

const BOTH: &[Need] = &[Need::Redis, Need::Postgres];
const SERVICE_KEY: &str = "test service key";

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

async fn lobby(tweak: impl FnOnce(&mut LobbyConfig)) -> Running {
    let name = unique("match");
    let mut cfg = LobbyConfig::for_tests(&database_url(), &name, &redis_url(), &format!("{name}:"));
    tweak(&mut cfg);
    zone_lobby::server::start(cfg, None).await.unwrap()
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn drop_prefix(prefix: &str) {
    let mut c = redis_conn().await;
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

async fn cleanup(r: Running) {
    let prefix = r.app.cfg.redis_prefix.clone();
    let schema = r.app.cfg.postgres_schema.clone();
    r.stop().await;
    let _ = r_drop_schema(&schema).await;
    drop_prefix(&prefix).await;
}

async fn pg() -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

async fn r_drop_schema(schema: &str) -> Result<(), tokio_postgres::Error> {
    pg().await.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
}

fn client(r: &Running) -> LobbyClient {
    LobbyClient::new(&format!("http://{}", r.addr)).unwrap()
}

fn record(zone: &str, instance: &str, capacity: u32) -> ZoneRecord {
    ZoneRecord {
        zone_id: zone.into(),
        instance_id: instance.into(),
        addr: format!("127.0.0.1:{}", 7000 + instance.len()),
        capacity,
        players: 0,
        tick_p99_us: 2_000,
        state: InstanceState::Ready,
        allocatable: true,
        updated_ms: now_ms(),
    }
}

async fn announce(prefix: &str, rec: &ZoneRecord, ttl_ms: u64) {
    let mut c = redis_conn().await;
    zone_directory::announce(&mut c, &Keys::new(prefix), rec, now_ms(), ttl_ms)
        .await
        .unwrap();
}

fn duel(wait_ms: u64) -> MatchOptions {
    MatchOptions {
        mode: "duel".into(),
        wait_ms,
        ..MatchOptions::default()
    }
}

async fn logins(r: &Running, what: &str, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut c = client(r);
    for k in 0..n {
        let a = c.device_login(&format!("{what}-{k}")).await.unwrap();
        out.push((a.account_id, a.session_token));
    }
    out
}

async fn ticket_states(schema: &str) -> BTreeMap<String, i64> {
    pg().await
        .query(&format!("SELECT state, count(*) FROM {schema}.match_tickets GROUP BY state"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect()
}

/// No ticket is in two matches, and every matched ticket's match lists it.
async fn check_no_ticket_twice(schema: &str) {
    let c = pg().await;
    let r = c
        .query_one(
            &format!("SELECT count(*), count(DISTINCT t) FROM {schema}.matches m, unnest(m.tickets) t WHERE m.state = 'allocated'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), r.get::<_, i64>(1), "a ticket is in two live matches");
    let bad: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {schema}.match_tickets t LEFT JOIN {schema}.matches m ON m.id = t.match_id
                 WHERE t.state = 'matched' AND (m.id IS NULL OR NOT t.id = ANY(m.tickets))"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "a matched ticket points at a match that does not list it");
}

fn hundred_concurrent_requests_all_answered() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let prefix = r.app.cfg.redis_prefix.clone();
        announce(&prefix, &record("arena", "a1", 500), 60_000).await;
        let players = logins(&r, "crowd", 100).await;
        let addr = r.addr;
        let tasks: Vec<_> = players
            .iter()
            .cloned()
            .map(|(aid, token)| {
                tokio::spawn(async move {
                    let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
                    (aid, c.match_request(&token, &duel(20_000)).await)
                })
            })
            .collect();
        let mut by_match: BTreeMap<i64, Vec<(i64, Option<i64>)>> = BTreeMap::new();
        for t in tasks {
            let (aid, a) = t.await.unwrap();
            match a.unwrap_or_else(|e| panic!("request of {aid} failed: {e}")) {
                MatchAnswer::Matched(m) => {
                    let claims = zone_net::token::verify(b"test token secret", &m.join_token, &m.zone_id, now_ms() / 1000).unwrap();
                    assert_eq!(claims.player_id, aid as u64, "the join token is this player's");
                    assert_eq!((m.zone_id.as_str(), m.game_server.as_str()), ("arena", "127.0.0.1:7002"));
                    assert!(m.join().grant().is_some());
                    by_match.entry(m.match_id).or_default().push((aid, m.opponent_id));
                }
                other => panic!("{aid}: not matched within 20 s: {other:?}"),
            }
        }
        assert_eq!(by_match.len(), 50, "100 players, 50 duels");
        for (id, ps) in &by_match {
            assert_eq!(ps.len(), 2, "match {id}: {ps:?}");
            assert_eq!(ps[0].1, Some(ps[1].0), "match {id}: opponents are each other");
            assert_eq!(ps[1].1, Some(ps[0].0));
        }
        let mut c = redis_conn().await;
        let held = zone_directory::seats_held(&mut c, &Keys::new(&prefix), "arena", "a1", now_ms())
            .await
            .unwrap();
        assert_eq!(held, 100, "one seat per matched player");
        check_no_ticket_twice(&r.app.cfg.postgres_schema).await;
        cleanup(r).await;
    });
}

fn refusals_and_idempotent_retries() {
    runtime().block_on(async {
        let r = lobby(|c| {
            if let Some(m) = c.match_modes.modes.get_mut("duel") {
                m.queue_limit = 2;
            }
        })
        .await;
        let ps = logins(&r, "refuse", 4).await;
        let mut c = client(&r);
        let post = |token: String, body: String| {
            let mut c = client(&r);
            async move {
                let a = c.request("POST", "/v1/match/request", Some(&token), Some(&body)).await.unwrap();
                (a.status, a.json::<Value>().unwrap_or(Value::Null), a.retry_after)
            }
        };
        let t0 = ps[0].1.clone();
        // Unknown mode: 400 listing the modes.
        let (s, v, _) = post(t0.clone(), r#"{"mode":"chess"}"#.into()).await;
        assert_eq!(s, 400, "{v}");
        let msg = v["message"].as_str().unwrap_or("");
        assert!(v["error"] == "unknown_mode" && msg.contains("duel") && msg.contains("team3"), "{v}");
        // Absurd parties: too big for the mode, or a player listed twice.
        let (s, v, _) = post(t0.clone(), format!(r#"{{"mode":"duel","party":[{}]}}"#, ps[1].0)).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_party")), "{v}");
        let (s, v, _) = post(t0.clone(), format!(r#"{{"mode":"team3","party":[{0},{0}]}}"#, ps[1].0)).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_party")), "{v}");
        let (s, v, _) = post(t0.clone(), r#"{"mode":"team3","party":[1,2,3,4,5,6,7]}"#.into()).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_party")), "{v}");
        // A wait over 30 s, a bad region, a client-supplied rating field.
        let (s, v, _) = post(t0.clone(), r#"{"mode":"duel","wait_ms":40000}"#.into()).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_wait")), "{v}");
        let (s, v, _) = post(t0.clone(), r#"{"mode":"duel","region":"eu west"}"#.into()).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_region")), "{v}");
        // No zone server: tickets wait. The same request_id twice is the same ticket.
        let first = c
            .match_request(
                &t0,
                &MatchOptions {
                    request_id: Some("r-1".into()),
                    ..duel(0)
                },
            )
            .await
            .unwrap();
        let again = c
            .match_request(
                &t0,
                &MatchOptions {
                    request_id: Some("r-1".into()),
                    ..duel(0)
                },
            )
            .await
            .unwrap();
        assert!(matches!(first, MatchAnswer::Waiting { .. }), "{first:?}");
        assert_eq!(first.ticket_id(), again.ticket_id(), "a retry finds its ticket");
        // A second open ticket for the same player: 409.
        let (s, v, _) = post(t0.clone(), r#"{"mode":"duel","request_id":"r-2"}"#.into()).await;
        assert_eq!((s, v["error"].as_str()), (409, Some("already_queued")), "{v}");
        // The queue is bounded: with 2 waiting (after a refresh), the third gets 429.
        c.match_request(&ps[1].1, &duel(0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let (s, v, retry) = post(ps[2].1.clone(), r#"{"mode":"duel"}"#.into()).await;
        assert_eq!((s, v["error"].as_str()), (429, Some("rate_limited")), "{v}");
        assert!(v["message"].as_str().unwrap_or("").contains("queue_limit"), "{v}");
        assert!(retry.is_some());
        // Cancel: 200, and again 200; the ticket answers cancelled; someone else's: 404.
        let id = first.ticket_id();
        assert!(matches!(c.cancel_ticket(&t0, id).await.unwrap(), MatchAnswer::Cancelled { .. }));
        assert!(matches!(c.cancel_ticket(&t0, id).await.unwrap(), MatchAnswer::Cancelled { .. }));
        assert!(matches!(c.wait_ticket(&t0, id, 0).await.unwrap(), MatchAnswer::Cancelled { .. }));
        let e = c.wait_ticket(&ps[3].1, id, 0).await.unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        // The document names the new routes.
        let doc: Value = c.call("GET", "/openapi.json", None, None).await.unwrap();
        for p in [
            "/v1/match/request",
            "/v1/match/tickets/{ticket_id}",
            "/v1/match/rating",
            "/match/request",
            "/v1/match/{match_id}/result",
        ] {
            assert!(doc["paths"][p].is_object(), "{p} missing from the OpenAPI document");
        }
        cleanup(r).await;
    });
}

fn cancel_racing_a_match_has_one_outcome() {
    runtime().block_on(async {
        let r = lobby(|c| c.match_pass_ms = 1).await;
        let prefix = r.app.cfg.redis_prefix.clone();
        announce(&prefix, &record("arena", "race", 10_000), 120_000).await;
        let ps = logins(&r, "race", 40).await;
        let addr = r.addr;
        let (mut cancelled, mut matched) = (0, 0);
        for (i, pair) in ps.chunks(2).enumerate() {
            let (a, b) = (pair[0].clone(), pair[1].clone());
            let mut ca = LobbyClient::new(&format!("http://{addr}")).unwrap();
            let ta = ca.match_request(&a.1, &duel(0)).await.unwrap().ticket_id();
            let tb = tokio::spawn(async move {
                let mut cb = LobbyClient::new(&format!("http://{addr}")).unwrap();
                cb.match_request(&b.1, &duel(0)).await.unwrap().ticket_id()
            });
            let a_token = a.1.clone();
            // The cancel goes out 0 to 38 ms after the second request, so both orders happen.
            let delay = Duration::from_millis((i as u64 * 7) % 40);
            let cancel = tokio::spawn(async move {
                let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
                tokio::time::sleep(delay).await;
                c.cancel_ticket(&a_token, ta).await
            });
            let tb = tb.await.unwrap();
            let outcome = cancel.await.unwrap();
            let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
            let final_a = c.wait_ticket(&a.1, ta, 0).await.unwrap();
            match outcome {
                Ok(MatchAnswer::Cancelled { .. }) => {
                    cancelled += 1;
                    assert!(matches!(final_a, MatchAnswer::Cancelled { .. }), "cancelled, yet {final_a:?}");
                    // B was not matched with A; cancel it so the next pair starts clean.
                    let _ = c.cancel_ticket(&pair[1].1, tb).await;
                }
                Err(e) if e.status() == Some(409) => {
                    matched += 1;
                    assert!(matches!(final_a, MatchAnswer::Matched(_)), "409, yet {final_a:?}");
                }
                other => panic!("unexpected cancel outcome {other:?}"),
            }
        }
        eprintln!("cancel vs match over HTTP: {cancelled} cancelled, {matched} matched");
        assert_eq!(cancelled + matched, 20);
        check_no_ticket_twice(&r.app.cfg.postgres_schema).await;
        cleanup(r).await;
        // The statements themselves, raced head to head 100 times (no zone server here, so the
        // leader commits nothing of its own): exactly one of the commit and the cancel wins.
        let r = lobby(|_| {}).await;
        let q = &r.app.matching.queue;
        let (mut commits, mut cancels) = (0, 0);
        for k in 0..100i64 {
            let ids: Vec<i64> = futures_ids(q, 800_000 + 2 * k).await;
            let nm = zone_lobby::queue::NewMatch {
                tickets: &ids,
                mode: "duel",
                region: None,
                teams_json: "[[1],[2]]",
                spread: 0.0,
                made_ms: now_ms() as i64,
                room_id: "race",
                zone_id: "z",
                instance_id: "i",
                addr: "127.0.0.1:1",
                join_expires_ms: 0,
            };
            let (committed, cancelled) = tokio::join!(q.commit_match(&nm), q.cancel(ids[0], 800_000 + 2 * k, now_ms() as i64));
            let (committed, cancelled) = (committed.unwrap().is_some(), cancelled.unwrap());
            assert!(committed != cancelled, "round {k}: committed={committed} cancelled={cancelled}");
            if committed {
                commits += 1;
            } else {
                cancels += 1;
                // The other ticket is untouched and still waits.
                assert_eq!(q.waiting_by_ids(&ids).await.unwrap().len(), 1);
            }
        }
        eprintln!("cancel vs commit statements: {commits} commits, {cancels} cancels");
        check_no_ticket_twice(&r.app.cfg.postgres_schema).await;
        cleanup(r).await;
    });
}

/// Two fresh waiting tickets (service tickets of players `first` and `first + 1`).
async fn futures_ids(q: &zone_lobby::queue::Queue, first: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for p in [first, first + 1] {
        match q.insert_service(p, 1500.0, "duel", None, now_ms() as i64).await.unwrap() {
            zone_lobby::queue::Inserted::New { id, .. } => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    ids
}

fn zone_server_dying_before_the_join_requeues_its_players() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let prefix = r.app.cfg.redis_prefix.clone();
        announce(&prefix, &record("arena", "dying", 100), 1_500).await;
        let ps = logins(&r, "die", 2).await;
        let addr = r.addr;
        let other = ps[1].1.clone();
        let b = tokio::spawn(async move {
            let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
            c.match_request(&other, &duel(10_000)).await.unwrap()
        });
        let mut c = client(&r);
        let a = c.match_request(&ps[0].1, &duel(10_000)).await.unwrap();
        let b = b.await.unwrap();
        let (MatchAnswer::Matched(ma), MatchAnswer::Matched(mb)) = (&a, &b) else {
            panic!("not matched: {a:?} {b:?}");
        };
        assert_eq!((ma.match_id, ma.instance_id.as_str()), (mb.match_id, "dying"));
        // The server stops announcing (it died); another one comes up.
        announce(&prefix, &record("arena", "alive", 100), 60_000).await;
        let until = Instant::now() + Duration::from_secs(30);
        let again = loop {
            match c.wait_ticket(&ps[0].1, ma.ticket_id, 5_000).await.unwrap() {
                MatchAnswer::Matched(m) if m.match_id != ma.match_id => break m,
                _ => {
                    assert!(Instant::now() < until, "the players were never matched again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(again.instance_id, "alive");
        assert_eq!(again.ticket_id, ma.ticket_id, "the same ticket, back in the queue");
        assert_eq!(again.opponent_id, Some(ps[1].0));
        let states = ticket_states(&r.app.cfg.postgres_schema).await;
        assert_eq!(states.get("matched"), Some(&2), "{states:?}");
        let c2 = pg().await;
        let st: String = c2
            .query_one(
                &format!("SELECT state FROM {}.matches WHERE id = $1", r.app.cfg.postgres_schema),
                &[&ma.match_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(st, "requeued");
        // Players already in the game are not queued again when the record lapses: one of this
        // match's players has joined (its seat is held at +inf).
        let ps = logins(&r, "joined", 2).await;
        let other = ps[1].1.clone();
        let b = tokio::spawn(async move {
            let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
            c.match_request(&other, &duel(10_000)).await.unwrap()
        });
        let a = c.match_request(&ps[0].1, &duel(10_000)).await.unwrap();
        b.await.unwrap();
        let MatchAnswer::Matched(m) = &a else { panic!("{a:?}") };
        assert_eq!(m.instance_id, "alive");
        let mut rc = redis_conn().await;
        let joined = zone_directory::ZoneEvent {
            kind: zone_directory::ZoneEventKind::Join,
            zone_id: "arena".into(),
            instance_id: "alive".into(),
            addr: m.game_server.clone(),
            player_id: ps[0].0 as u64,
            at_ms: now_ms(),
        };
        zone_directory::report_events(&mut rc, &Keys::new(&prefix), &[joined])
            .await
            .unwrap();
        zone_directory::withdraw(&mut rc, &Keys::new(&prefix), "arena", "alive")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let st: String = c2
            .query_one(
                &format!("SELECT state FROM {}.matches WHERE id = $1", r.app.cfg.postgres_schema),
                &[&m.match_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(st, "allocated", "a match with a joined player stays");
        cleanup(r).await;
    });
}

fn results_update_ratings_once_and_the_seed_shape_works() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let prefix = r.app.cfg.redis_prefix.clone();
        announce(&prefix, &record("arena", "res", 100), 60_000).await;
        let mut c = client(&r);
        // The seed's shape, for trusted backends: a wrong key is refused.
        let body = |p: i64, rating: f64| format!(r#"{{"player_id":{p},"rating":{rating},"wait_ms":10000}}"#);
        let a = c
            .request("POST", "/match/request", Some("wrong key, sixteen+"), Some(&body(900_001, 1500.0)))
            .await
            .unwrap();
        assert_eq!(a.status, 401, "{}", a.text());
        let addr = r.addr;
        let p2 = tokio::spawn(async move {
            let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
            c.call::<Value>("POST", "/match/request", Some(SERVICE_KEY), Some(&body(900_002, 1550.0)))
                .await
                .unwrap()
        });
        let v1: Value = c
            .call("POST", "/match/request", Some(SERVICE_KEY), Some(&body(900_001, 1500.0)))
            .await
            .unwrap();
        let v2 = p2.await.unwrap();
        for k in ["match_id", "room_id", "game_server", "opponent_id"] {
            assert!(!v1[k].is_null(), "{k} missing: {v1}");
        }
        assert_eq!(
            (v1["opponent_id"].as_i64(), v2["opponent_id"].as_i64()),
            (Some(900_002), Some(900_001))
        );
        assert_eq!(v1["match_id"], v2["match_id"]);
        // Ratings come from the store for session players, and results move them once.
        let ps = logins(&r, "rated", 2).await;
        let t1 = ps[1].1.clone();
        let other = tokio::spawn(async move {
            let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
            c.match_request(&t1, &duel(10_000)).await.unwrap()
        });
        let mine = c.match_request(&ps[0].1, &duel(10_000)).await.unwrap();
        other.await.unwrap();
        let MatchAnswer::Matched(m) = &mine else { panic!("{mine:?}") };
        let my_team = m.team;
        let ranks: Vec<u32> = (0..2).map(|t| if t == my_team { 1 } else { 2 }).collect();
        assert!(c.report_result(SERVICE_KEY, m.match_id, &ranks).await.unwrap(), "applied");
        assert!(!c.report_result(SERVICE_KEY, m.match_id, &ranks).await.unwrap(), "idempotent");
        let bad = c.report_result(SERVICE_KEY, m.match_id, &[1]).await;
        assert!(bad.is_ok(), "an applied result is not re-validated: {bad:?}");
        let e = c.report_result(SERVICE_KEY, 987_654_321, &[1, 2]).await.unwrap_err();
        assert_eq!(e.status(), Some(404));
        let mine: Value = c.call("GET", "/v1/match/rating", Some(&ps[0].1), None).await.unwrap();
        let theirs: Value = c.call("GET", "/v1/match/rating", Some(&ps[1].1), None).await.unwrap();
        assert!(
            mine["rating"].as_f64().unwrap() > 1500.0 && theirs["rating"].as_f64().unwrap() < 1500.0,
            "{mine} {theirs}"
        );
        assert_eq!(mine["games"], 1);
        // The next ticket carries the stored rating, not one from the body.
        let (_, tok) = &ps[0];
        let n = c.match_request(tok, &duel(0)).await.unwrap();
        let stored: Vec<f64> = pg()
            .await
            .query_one(
                &format!("SELECT ratings FROM {}.match_tickets WHERE id = $1", r.app.cfg.postgres_schema),
                &[&n.ticket_id()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored[0], mine["rating"].as_f64().unwrap());
        cleanup(r).await;
    });
}

fn party_of_three_is_matched_as_a_unit() {
    runtime().block_on(async {
        let r = lobby(|_| {}).await;
        let prefix = r.app.cfg.redis_prefix.clone();
        announce(&prefix, &record("arena", "team", 100), 60_000).await;
        let ps = logins(&r, "party", 6).await;
        let addr = r.addr;
        let leader = ps[0].clone();
        let party = vec![ps[1].0, ps[2].0];
        let mut tasks = vec![tokio::spawn(async move {
            let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
            let opts = MatchOptions {
                mode: "team3".into(),
                party,
                wait_ms: 15_000,
                ..MatchOptions::default()
            };
            c.match_request(&leader.1, &opts).await.unwrap()
        })];
        for (_, tok) in &ps[3..] {
            let tok = tok.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = LobbyClient::new(&format!("http://{addr}")).unwrap();
                let opts = MatchOptions {
                    mode: "team3".into(),
                    wait_ms: 15_000,
                    ..MatchOptions::default()
                };
                c.match_request(&tok, &opts).await.unwrap()
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let MatchAnswer::Matched(m) = &answers[0] else {
            panic!("{:?}", answers[0])
        };
        let party_team: BTreeSet<i64> = m.teams[m.team].iter().copied().collect();
        assert_eq!(
            party_team,
            [ps[0].0, ps[1].0, ps[2].0].into_iter().collect(),
            "the party is one team"
        );
        assert_eq!(m.opponent_id, None, "3v3 has no single opponent");
        assert_eq!(m.opponent_ids.len(), 3);
        // A party member waits on the same ticket and gets its own join token.
        let mut c = client(&r);
        let MatchAnswer::Matched(pm) = c.wait_ticket(&ps[1].1, m.ticket_id, 0).await.unwrap() else {
            panic!("the party member sees no match")
        };
        let claims = zone_net::token::verify(b"test token secret", &pm.join_token, &pm.zone_id, now_ms() / 1000).unwrap();
        assert_eq!(claims.player_id, ps[1].0 as u64);
        cleanup(r).await;
    });
}

// --- kill -9 of the leader, with real zone-lobby processes ---

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_lobby(port: u16, schema: &str) -> Proc {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_zone-lobby"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--postgres", &database_url(), "--redis", &redis_url()])
        .args(["--postgres-schema", schema, "--redis-prefix", &format!("{schema}:")])
        .args(["--service-key", SERVICE_KEY, "--rate-per-ip", "10000000", "--match-pass-ms", "20"])
        .args(["--log-format", "text", "--log-filter", "warn"])
        .env("ZONE_TOKEN_SECRET", "test token secret")
        .env("ZONE_LOBBY_SESSION_SECRET", "test session secret, 32 bytes..")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

async fn metric(c: &mut LobbyClient, name: &str) -> Option<f64> {
    let a = c.request("GET", "/metrics", None, None).await.ok()?;
    a.text()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_leader(c: &mut LobbyClient, what: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    while metric(c, "lobby_match_leader").await != Some(1.0) {
        assert!(Instant::now() < until, "{what} never became the leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn leader_killed_with_10000_tickets_loses_none() {
    const TICKETS: i64 = 10_000;
    let schema = unique("kill");
    let (pa, pb) = (free_port(), free_port());
    let mut a = spawn_lobby(pa, &schema);
    let rt = runtime();
    rt.block_on(async {
        let mut ca = LobbyClient::new(&format!("http://127.0.0.1:{pa}")).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while ca.request("GET", "/readyz", None, None).await.ok().map(|a| a.status) != Some(200) {
            assert!(Instant::now() < until, "lobby A never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_leader(&mut ca, "lobby A").await;
    });
    let _b = spawn_lobby(pb, &schema);
    rt.block_on(async {
        let mut cb = LobbyClient::new(&format!("http://127.0.0.1:{pb}")).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while cb.request("GET", "/readyz", None, None).await.ok().map(|a| a.status) != Some(200) {
            assert!(Instant::now() < until, "lobby B never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(metric(&mut cb, "lobby_match_leader").await, Some(0.0), "one leader at a time");
        // 10,000 tickets through both instances (all accept tickets); no zone server yet, so
        // nothing can be placed and every ticket waits.
        let workers: Vec<_> = (0..50i64)
            .map(|w| {
                let port = if w % 2 == 0 { pa } else { pb };
                tokio::spawn(async move {
                    let mut c = LobbyClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
                    let mut k = w + 1;
                    while k <= TICKETS {
                        // Ratings spread over 1000..2000, deterministic.
                        let rating = 1000.0 + ((k * 7919) % 1000) as f64;
                        let body = format!(r#"{{"player_id":{k},"rating":{rating},"wait_ms":0}}"#);
                        // A 503 (PostgreSQL slower than the lobby's 2 s backend timeout on a
                        // loaded machine) is retried, as a client would: asking again for the
                        // same player finds its ticket if the first insert did commit.
                        let mut tries = 0;
                        let a = loop {
                            let a = c.request("POST", "/match/request", Some(SERVICE_KEY), Some(&body)).await.unwrap();
                            tries += 1;
                            if a.status != 503 || tries == 10 {
                                break a;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        };
                        assert_eq!(a.status, 202, "ticket {k}: {}", a.text());
                        k += 50;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let states = ticket_states(&schema).await;
        assert_eq!(states.get("waiting"), Some(&TICKETS), "{states:?}");
    });
    // kill -9 of the leader.
    let killed = Instant::now();
    let _ = a.0.kill();
    let _ = a.0.wait();
    rt.block_on(async {
        let mut cb = LobbyClient::new(&format!("http://127.0.0.1:{pb}")).unwrap();
        wait_leader(&mut cb, "lobby B, after the leader was killed,").await;
        eprintln!("lobby B took over {:?} after the kill", killed.elapsed());
        let states = ticket_states(&schema).await;
        assert_eq!(states.get("waiting"), Some(&TICKETS), "no ticket lost: {states:?}");
        // A zone server comes up: the new leader matches the whole queue.
        announce(&format!("{schema}:"), &record("arena", "big", 20_000), 600_000).await;
        let until = Instant::now() + Duration::from_secs(300);
        loop {
            let states = ticket_states(&schema).await;
            if states.get("matched") == Some(&TICKETS) {
                break;
            }
            assert!(Instant::now() < until, "matching did not resume: {states:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!("all {TICKETS} tickets matched {:?} after the kill", killed.elapsed());
        check_no_ticket_twice(&schema).await;
        assert!(metric(&mut cb, "lobby_match_leader_changes_total").await >= Some(1.0));
    });
    drop(_b);
    rt.block_on(async {
        let _ = r_drop_schema(&schema).await;
        drop_prefix(&format!("{schema}:")).await;
    });
}

fn main() {
    ServiceTests::new()
        .needs(
            "hundred_concurrent_requests_all_answered",
            BOTH,
            hundred_concurrent_requests_all_answered,
        )
        .needs("refusals_and_idempotent_retries", BOTH, refusals_and_idempotent_retries)
        .needs("cancel_racing_a_match_has_one_outcome", BOTH, cancel_racing_a_match_has_one_outcome)
        .needs(
            "zone_server_dying_before_the_join_requeues_its_players",
            BOTH,
            zone_server_dying_before_the_join_requeues_its_players,
        )
        .needs(
            "results_update_ratings_once_and_the_seed_shape_works",
            BOTH,
            results_update_ratings_once_and_the_seed_shape_works,
        )
        .needs("party_of_three_is_matched_as_a_unit", BOTH, party_of_three_is_matched_as_a_unit)
        .needs(
            "leader_killed_with_10000_tickets_loses_none",
            BOTH,
            leader_killed_with_10000_tickets_loses_none,
        )
        .run()
}
