//! Round trips through each snapshot store, retention, and bounded failure when a backend is not
//! there.
//!
//! The Redis and PostgreSQL tests need the services, at `REDIS_URL` and `DATABASE_URL` or the
//! standard local addresses; when one is unreachable its tests are reported as ignored, with the
//! reason (`zone_tests::services`, which is why this file has `harness = false`).
//! Each test uses its own zone id, so concurrent runs against one server do not collide, and
//! deletes its keys and rows at the end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use zone_persistence::snapshot::{self, SnapshotKind, SnapshotMeta};
use zone_persistence::{EventQueue, FileStore, GameEvent, PostgresStore, RedisStore, SnapshotStore, StoreError};
use zone_sim::object::{Body, Health, Mind, Npc, Obj, Player, player_object_id};
use zone_sim::rng::DetRng;
use zone_sim::shard::Mail;
use zone_sim::state::SpawnerPending;
use zone_sim::units::Vec2;
use zone_sim::{ObjectRecord, ShardState, ZoneState};
use zone_tests::services::{Need, ServiceTests, block_on, database_url, redis_url};

const DIGEST: [u8; 32] = [9; 32];
const OP_TIMEOUT: Duration = Duration::from_secs(5);

fn unique_zone_id(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("test-{what}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A small two-shard state that changes with `tick`: NPCs come and go, a player moves.
fn state(tick: u64) -> ZoneState {
    let npc = |id: u64| ObjectRecord {
        obj: Obj { id, kind: 1 },
        pos: Vec2 {
            x: id as i32 * 1000 + tick as i32,
            y: 5,
        },
        vel: Vec2 { x: 1, y: 0 },
        health: Health { hp: 10, max: 10 },
        body: Body::Npc(Npc {
            spawner: 0,
            home: Vec2 { x: 0, y: 0 },
            mind: Mind::Patrol { leg: (id % 4) as u8 },
            rng: DetRng::new(1, id),
            ready_at: 0,
        }),
    };
    let player = ObjectRecord {
        obj: Obj {
            id: player_object_id(7),
            kind: 0,
        },
        pos: Vec2 {
            x: tick as i32,
            y: -(tick as i32),
        },
        vel: Vec2::default(),
        health: Health { hp: 100, max: 100 },
        body: Body::Player(Player {
            player: 7,
            wish: Vec2 { x: 1, y: 1 },
            attack: tick.is_multiple_of(2),
            ready_at: tick,
            respawn_at: None,
        }),
    };
    // NPC ids present depend on the tick, so diffs create and remove objects.
    let npcs: Vec<ObjectRecord> = (1..20u64).filter(|id| !(id + tick / 10).is_multiple_of(3)).map(npc).collect();
    let (a, b): (Vec<_>, Vec<_>) = npcs.into_iter().partition(|o| o.obj.id < 10);
    let mut b = b;
    b.push(player);
    ZoneState {
        tick,
        seed: 42,
        shards: vec![
            ShardState {
                index: 0,
                rng_state: tick,
                last_npc_id: 19,
                spawners: vec![SpawnerPending {
                    id: 0,
                    due: vec![tick + 60],
                }],
                mail: vec![Mail::Died { spawner: 0 }],
                objects: a,
            },
            ShardState {
                index: 1,
                rng_state: tick * 3,
                last_npc_id: 0,
                spawners: vec![],
                mail: vec![Mail::Damage {
                    target: 7,
                    source: 3,
                    amount: 2,
                }],
                objects: b,
            },
        ],
    }
}

/// Puts full 100, diffs 110 and 120, full 200, diffs 210 and 220, full 300, diff 310 (each diff
/// against the full before it). Returns every (tick, kind) stored.
async fn put_history(store: &dyn SnapshotStore) -> Vec<(u64, SnapshotKind)> {
    let mut stored = Vec::new();
    for full_tick in [100u64, 200, 300] {
        let base = state(full_tick);
        let bytes = snapshot::encode_full(&base, DIGEST);
        store
            .put(&snapshot::decode_meta(&bytes).expect("meta"), &bytes)
            .await
            .expect("put full");
        stored.push((full_tick, SnapshotKind::Full));
        let diffs: &[u64] = if full_tick == 300 {
            &[310]
        } else {
            &[full_tick + 10, full_tick + 20]
        };
        for &t in diffs {
            let bytes = snapshot::encode_diff(&base, &state(t), DIGEST);
            store
                .put(&snapshot::decode_meta(&bytes).expect("meta"), &bytes)
                .await
                .expect("put diff");
            stored.push((t, SnapshotKind::Diff));
        }
    }
    stored
}

/// The common round trip: history in, newest state out, retention as `expect` says (newest first).
async fn round_trip(store: &dyn SnapshotStore, expect: &[(u64, SnapshotKind)]) {
    assert!(
        store.latest_chain().await.expect("empty chain").is_none(),
        "{} store is not empty at the start",
        store.name()
    );
    put_history(store).await;

    let chain = store.latest_chain().await.expect("latest chain").expect("a chain");
    let recovered = snapshot::recover(&chain.full, &chain.diffs, &DIGEST).expect("recover");
    assert_eq!(recovered.state, state(310));
    assert_eq!(recovered.full.tick, 300);
    assert_eq!(recovered.diff.map(|m| m.tick), Some(310));
    assert!(recovered.skipped.is_empty());

    let listed = store.list().await.expect("list");
    let got: Vec<(u64, SnapshotKind)> = listed.iter().map(|s| (s.meta.tick, s.meta.kind)).collect();
    assert_eq!(got, expect, "{} store retention", store.name());
    for s in &listed {
        let bytes = store.get(&s.key).await.expect("get");
        assert_eq!(bytes.len() as u64, s.bytes_len);
        assert_eq!(snapshot::decode_meta(&bytes).expect("meta"), s.meta);
        snapshot::decode(&bytes).expect("stored bytes decode");
    }
    assert!(matches!(store.get("no-such-key").await, Err(StoreError::NotFound { .. })));

    // A meta that does not match the bytes is refused.
    let bytes = snapshot::encode_full(&state(400), DIGEST);
    let wrong = SnapshotMeta {
        tick: 401,
        ..snapshot::decode_meta(&bytes).expect("meta")
    };
    assert!(matches!(store.put(&wrong, &bytes).await, Err(StoreError::MetaMismatch { .. })));
    assert!(matches!(store.put(&wrong, b"junk").await, Err(StoreError::BadSnapshot { .. })));
}

const FULL: SnapshotKind = SnapshotKind::Full;
const DIFF: SnapshotKind = SnapshotKind::Diff;

async fn file_store_round_trip_and_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".tmp-snap-1-1"), b"left by a crash").expect("write");
    std::fs::write(dir.path().join("notes.txt"), b"not ours").expect("write");
    let store = FileStore::new(dir.path(), 2).expect("file store");
    assert!(!dir.path().join(".tmp-snap-1-1").exists(), "stale temp file removed");
    round_trip(&store, &[(310, DIFF), (300, FULL), (220, DIFF), (210, DIFF), (200, FULL)]).await;
    assert!(dir.path().join("notes.txt").exists(), "foreign files are left alone");
    assert!(dir.path().join("snap-00000000000000000300-full.zsnap").exists());
    // Path traversal through a key is not possible.
    assert!(matches!(store.get("../notes.txt").await, Err(StoreError::NotFound { .. })));
    // No temporary files remain.
    let temps = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".tmp")))
        .count();
    assert_eq!(temps, 0);
}

async fn file_store_keep_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::new(dir.path().join("nested/snapshots"), 1).expect("file store");
    round_trip(&store, &[(310, DIFF), (300, FULL)]).await;
}

async fn redis_store_round_trip() {
    let url = redis_url();
    let store = RedisStore::connect(&url, &unique_zone_id("redis"), Duration::from_secs(600), OP_TIMEOUT)
        .await
        .expect("connect");
    round_trip(&store, &[(310, DIFF), (300, FULL)]).await;
    store.delete_zone().await.expect("cleanup");
    assert!(store.latest_chain().await.expect("chain").is_none());
}

async fn redis_keys_expire() {
    let url = redis_url();
    let store = RedisStore::connect(&url, &unique_zone_id("redis-ttl"), Duration::from_millis(200), OP_TIMEOUT)
        .await
        .expect("connect");
    let bytes = snapshot::encode_full(&state(1), DIGEST);
    store.put(&snapshot::decode_meta(&bytes).expect("meta"), &bytes).await.expect("put");
    assert!(store.latest_chain().await.expect("chain").is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.latest_chain().await.expect("chain").is_none(),
        "the full snapshot outlived its TTL"
    );
}

async fn postgres_store_round_trip_retention_and_events() {
    let url = database_url();
    let zone = unique_zone_id("pg");
    // Two stores connecting at once both migrate safely.
    let (a, b) = tokio::join!(
        PostgresStore::connect(&url, &zone, 2, OP_TIMEOUT),
        PostgresStore::connect(&url, &zone, 2, OP_TIMEOUT)
    );
    let store = a.expect("connect");
    drop(b.expect("concurrent connect"));
    round_trip(&store, &[(310, DIFF), (300, FULL), (220, DIFF), (210, DIFF), (200, FULL)]).await;

    let mut queue = EventQueue::new(100);
    for (i, kind) in ["join", "death", "leave"].into_iter().enumerate() {
        queue.push(GameEvent {
            zone_id: zone.clone(),
            key: format!("run1:{}:{kind}", 10 + i),
            tick: 10 + i as u64,
            kind: kind.into(),
            player_id: if kind == "death" { None } else { Some(7) },
            detail: serde_json::json!({ "i": i, "quote": "it's \"fine\"" }),
        });
    }
    let batch = queue.drain_batch(10);
    assert_eq!(store.insert_events(&batch).await.expect("insert events"), 3);
    assert_eq!(store.insert_events(&[]).await.expect("empty batch"), 0);
    assert_eq!(store.count_events().await.expect("count"), 3);
    // The same batch again (a retry): nothing added.
    assert_eq!(store.insert_events(&batch).await.expect("retry"), 0);
    assert_eq!(store.count_events().await.expect("count"), 3);

    store.delete_zone().await.expect("cleanup");
    assert!(store.latest_chain().await.expect("chain").is_none());
    assert_eq!(store.count_events().await.expect("count"), 0);
}

/// A closed port fails fast; an unroutable address fails at the timeout: never a hang.
async fn unreachable_backends_fail_within_the_timeout() {
    for (url, timeout) in [
        ("127.0.0.1:1", Duration::from_secs(2)),
        ("10.255.255.1:5432", Duration::from_millis(500)),
    ] {
        let started = Instant::now();
        let pg = PostgresStore::connect(&format!("postgres://postgres@{url}/test"), "z", 1, timeout).await;
        assert!(pg.is_err(), "postgres at {url} connected?");
        assert!(
            started.elapsed() < timeout + Duration::from_secs(1),
            "postgres at {url} took {:?}",
            started.elapsed()
        );

        let started = Instant::now();
        let redis = RedisStore::connect(&format!("redis://{url}/"), "z", Duration::from_secs(1), timeout).await;
        assert!(redis.is_err(), "redis at {url} connected?");
        assert!(
            started.elapsed() < timeout + Duration::from_secs(1),
            "redis at {url} took {:?}",
            started.elapsed()
        );
    }
}

async fn bad_urls_are_errors() {
    assert!(matches!(
        PostgresStore::connect("not a url", "z", 1, OP_TIMEOUT).await,
        Err(StoreError::Postgres { .. })
    ));
    assert!(matches!(
        RedisStore::connect("nope://x", "z", Duration::from_secs(1), OP_TIMEOUT).await,
        Err(StoreError::Redis { .. })
    ));
}

/// A TCP proxy to PostgreSQL that, once armed, swallows every server reply after the client's
/// next Execute message: the statement then commits on the server while its client waits for an
/// answer that never comes. (The Parse round trip before it still passes, so the Execute is sent.)
struct ReplyHoldingProxy {
    addr: std::net::SocketAddr,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// An Execute message for the unnamed portal with no row limit: 'E', length 9, "", 0.
const PG_EXECUTE: &[u8] = &[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0];

impl ReplyHoldingProxy {
    async fn start(upstream: std::net::SocketAddr) -> ReplyHoldingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = hold.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let swallow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (armed, sw_flag) = (h.clone(), swallow.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if armed.load(Ordering::SeqCst) && buf[..n].windows(PG_EXECUTE.len()).any(|w| w == PG_EXECUTE) {
                            sw_flag.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let h = swallow;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // Held: the reply is swallowed (this connection is dead to its client).
                        if h.load(Ordering::SeqCst) {
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        ReplyHoldingProxy { addr, hold, task }
    }
}

impl Drop for ReplyHoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An insert whose reply is lost after PostgreSQL committed it times out; the retry (on a new
/// connection, as the server does) finds the keys stored and adds nothing: exactly one row per
/// event.
async fn an_insert_that_timed_out_after_its_commit_leaves_one_row() {
    let url = database_url();
    let zone = unique_zone_id("pg-idem");
    let direct = PostgresStore::connect(&url, &zone, 2, OP_TIMEOUT).await.expect("connect");
    let (head, rest) = url.split_once("://").expect("a postgres:// URL");
    let (user, rest) = match rest.split_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let hostport = rest[..end].replace("localhost", "127.0.0.1");
    let hostport = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:5432")
    };
    let upstream: std::net::SocketAddr = hostport.parse().expect("DATABASE_URL names 127.0.0.1 and a port");
    let proxy = ReplyHoldingProxy::start(upstream).await;
    let via_proxy = format!("{head}://{user}{}{}", proxy.addr, &rest[end..]);
    let store = PostgresStore::connect(&via_proxy, &zone, 2, Duration::from_millis(800))
        .await
        .expect("connect through the proxy");
    let batch: Vec<GameEvent> = (0..5)
        .map(|i| GameEvent {
            zone_id: zone.clone(),
            key: format!("run7:{i}:join:{i}"),
            tick: i,
            kind: "join".into(),
            player_id: Some(i),
            detail: serde_json::json!({}),
        })
        .collect();
    proxy.hold.store(true, Ordering::SeqCst);
    let err = store.insert_events(&batch).await.expect_err("the reply was held back");
    assert!(matches!(err, StoreError::Timeout { .. }), "{err}");
    drop(store);
    // The insert committed although its client never heard so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while direct.count_events().await.expect("count") < 5 {
        assert!(Instant::now() < deadline, "the held insert never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The retry, on a new connection.
    proxy.hold.store(false, Ordering::SeqCst);
    let retry = PostgresStore::connect(&via_proxy, &zone, 2, OP_TIMEOUT).await.expect("reconnect");
    assert_eq!(retry.insert_events(&batch).await.expect("retry"), 0, "the retry added rows");
    assert_eq!(direct.count_events().await.expect("count"), 5, "exactly one row per event");
    direct.delete_zone().await.expect("cleanup");
}

fn main() {
    ServiceTests::new()
        .test("file_store_round_trip_and_retention", || {
            block_on(file_store_round_trip_and_retention())
        })
        .test("file_store_keep_one", || block_on(file_store_keep_one()))
        .needs("redis_store_round_trip", &[Need::Redis], || block_on(redis_store_round_trip()))
        .needs("redis_keys_expire", &[Need::Redis], || block_on(redis_keys_expire()))
        .needs("postgres_store_round_trip_retention_and_events", &[Need::Postgres], || {
            block_on(postgres_store_round_trip_retention_and_events())
        })
        .needs(
            "an_insert_that_timed_out_after_its_commit_leaves_one_row",
            &[Need::Postgres],
            || block_on(an_insert_that_timed_out_after_its_commit_leaves_one_row()),
        )
        .test("unreachable_backends_fail_within_the_timeout", || {
            block_on(unreachable_backends_fail_within_the_timeout())
        })
        .test("bad_urls_are_errors", || block_on(bad_urls_are_errors()))
        .run()
}
