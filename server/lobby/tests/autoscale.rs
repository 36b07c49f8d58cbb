//! The FleetAutoscaler webhook on review requests shaped exactly as Agones sends them
//! (tests/fixtures/autoscale/NAME.review.json: the JSON of Agones' Go types, with the fields a
//! newer Agones adds) and the answers expected for a given queue demand (NAME.expect.json).
//!
//! The pure answers run without services; the HTTP round trip (POST /v1/fleet-autoscale on a real
//! lobby, its answer growing with players queued through POST /v1/match/request, and the route in
//! /openapi.json) needs PostgreSQL and Redis and shows as ignored, with the reason, without them.

use std::path::{Path, PathBuf};

use serde_json::Value;
use zone_lobby::autoscale::{FleetAutoscaleResponse, FleetAutoscaleReview, MatchDemand, Policy, answer};
use zone_lobby::client::LobbyClient;
use zone_lobby::config::LobbyConfig;
use zone_tests::services::{Need, ServiceTests, block_on, database_url, redis_url};

fn fixtures() -> Vec<(String, String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/autoscale");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".review.json"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "fixtures missing in {}", dir.display());
    names
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".review.json")
                .to_string();
            let review = std::fs::read_to_string(&p).unwrap();
            let expect: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.expect.json"))).unwrap()).unwrap();
            (name, review, expect)
        })
        .collect()
}

fn recorded_reviews_get_the_expected_answers() {
    for (name, review, expect) in fixtures() {
        let review: FleetAutoscaleReview = serde_json::from_str(&review).unwrap_or_else(|e| panic!("{name}: {e}"));
        let demand = MatchDemand {
            waiting_players: expect["demand"]["waiting_players"].as_u64().unwrap(),
            shortage_players: expect["demand"]["shortage_players"].as_u64().unwrap(),
        };
        match (answer(review, demand, &Policy::default()), expect.get("response")) {
            (Ok((out, _)), Some(want)) => {
                let want: FleetAutoscaleResponse = serde_json::from_value(want.clone()).unwrap();
                assert_eq!(out.response.as_ref(), Some(&want), "{name}");
                // The answer is a whole review, as Agones expects it back.
                let v = serde_json::to_value(&out).unwrap();
                assert_eq!(v["kind"], "FleetAutoscaleReview", "{name}");
                assert_eq!(v["apiVersion"], "autoscaling.agones.dev/v1", "{name}");
                assert_eq!(v["response"]["uid"], v["request"]["uid"], "{name}");
            }
            (Err(e), None) => {
                let needle = expect["error"].as_str().unwrap();
                assert!(e.to_string().contains(needle), "{name}: {e} should mention {needle}");
            }
            (got, _) => panic!("{name}: unexpected {got:?}"),
        }
    }
}

fn webhook_answers_over_http() {
    block_on(async {
        let name = format!("t_autoscale_{}", std::process::id());
        let cfg = LobbyConfig::for_tests(&database_url(), &name, &redis_url(), &format!("{name}:"));
        let r = zone_lobby::server::start(cfg, None).await.unwrap();
        let mut c = LobbyClient::new(&format!("http://{}", r.addr)).unwrap();
        // The lobby's queue is empty at first: the fixtures recorded with no demand.
        for (name, review, expect) in fixtures() {
            if expect["demand"] != serde_json::json!({"waiting_players": 0, "shortage_players": 0}) {
                continue;
            }
            let a = c.request("POST", "/v1/fleet-autoscale", None, Some(&review)).await.unwrap();
            match expect.get("response") {
                Some(want) => {
                    assert_eq!(a.status, 200, "{name}: {}", a.text());
                    let v: Value = serde_json::from_str(&a.text()).unwrap();
                    assert_eq!(&v["response"], want, "{name}");
                }
                None => {
                    assert_eq!(a.status, 400, "{name}: {}", a.text());
                    assert!(a.text().contains("bad_review"), "{name}: {}", a.text());
                }
            }
        }
        // Players queue (no zone server exists, so they wait, or are matched without a seat): with
        // 1 player per server, the answer grows by one server per player on top of the buffer.
        for i in 0..3 {
            let login = c.device_login(&format!("autoscale-{name}-{i}")).await.unwrap();
            let body = r#"{"mode":"duel","wait_ms":0}"#;
            let a = c
                .request("POST", "/v1/match/request", Some(&login.session_token), Some(body))
                .await
                .unwrap();
            assert!(a.status == 202 || a.status == 200, "{}", a.text());
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/autoscale/idle.review.json");
        let mut review: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        review["request"]["annotations"]["autoscale.zone.dev/players-per-server"] = "1".into();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let a = c
                .request("POST", "/v1/fleet-autoscale", None, Some(&review.to_string()))
                .await
                .unwrap();
            assert_eq!(a.status, 200, "{}", a.text());
            let v: Value = serde_json::from_str(&a.text()).unwrap();
            if v["response"]["replicas"] == 5 {
                assert_eq!(v["response"]["scale"], true);
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "the queue's 3 players never showed in the answer: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let a = c
            .request("POST", "/v1/fleet-autoscale", None, Some("{\"request\": 5}"))
            .await
            .unwrap();
        assert_eq!(a.status, 400, "{}", a.text());
        let a = c.request("GET", "/openapi.json", None, None).await.unwrap();
        assert!(a.text().contains("/v1/fleet-autoscale"), "the webhook is in the OpenAPI document");
        let _ = r.app.accounts.drop_schema().await;
        r.stop().await;
    });
}

fn main() {
    ServiceTests::new()
        .test(
            "recorded_reviews_get_the_expected_answers",
            recorded_reviews_get_the_expected_answers,
        )
        .needs(
            "webhook_answers_over_http",
            &[Need::Redis, Need::Postgres],
            webhook_answers_over_http,
        )
        .run()
}
