//! Replays load shapes (tests/fixtures/autoscale/shapes.json) through the FleetAutoscaler
//! webhook's arithmetic and prints its answers as Markdown tables, for
//! benchmarks/2026-11-29-autoscale.md:
//!
//!     cargo run -p zone-lobby --example autoscale_shapes
//!
//! Model of the Fleet between syncs: it starts at the size the first row needs; Agones applies
//! each answer before the next sync; a server holds `players-per-server` players; servers with
//! players are Allocated, the rest Ready.

use std::collections::BTreeMap;

use serde_json::Value;
use zone_lobby::autoscale::{
    ANNOTATION_PLAYERS_PER_SERVER, FleetAutoscaleRequest, FleetAutoscaleReview, FleetStatus, MatchDemand, Policy, answer,
};

fn main() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/autoscale/shapes.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let policy = Policy::default();
    for shape in doc["shapes"].as_array().into_iter().flatten() {
        let pps = shape["players_per_server"].as_u64().unwrap_or(policy.players_per_server);
        println!(
            "\n### {} ({}; sync every {} s; {} players/server, buffer {}, {}..{} servers)\n",
            shape["name"].as_str().unwrap_or("?"),
            shape["about"].as_str().unwrap_or(""),
            shape["sync_s"],
            pps,
            policy.buffer,
            policy.min_replicas,
            policy.max_replicas
        );
        println!("| t (s) | in game | waiting | no seat | fleet before | allocated | ready | answer | scale |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|:---|");
        let first_in_game = shape["rows"][0][1].as_u64().unwrap_or(0);
        let mut replicas = (first_in_game.div_ceil(pps) + policy.buffer).max(policy.min_replicas) as u32;
        for row in shape["rows"].as_array().into_iter().flatten() {
            let r: Vec<u64> = row.as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
            let (t, in_game, waiting, shortage) = (r[0], r[1], r[2], r[3]);
            let allocated = (in_game.div_ceil(pps) as u32).min(replicas);
            let status = FleetStatus {
                replicas,
                ready_replicas: replicas - allocated,
                reserved_replicas: 0,
                allocated_replicas: allocated,
            };
            let mut annotations = BTreeMap::new();
            annotations.insert(ANNOTATION_PLAYERS_PER_SERVER.to_string(), pps.to_string());
            let review = FleetAutoscaleReview {
                request: Some(FleetAutoscaleRequest {
                    uid: format!("t{t}"),
                    name: "zone-server".into(),
                    namespace: "zone".into(),
                    status,
                    annotations,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let demand = MatchDemand {
                waiting_players: waiting,
                shortage_players: shortage,
            };
            let (out, d) = answer(review, demand, &policy)?;
            let resp = out.response.expect("an answer");
            let limit = d.limited.map(|l| format!(" ({l:?} limit)")).unwrap_or_default();
            println!(
                "| {t} | {in_game} | {waiting} | {shortage} | {replicas} | {allocated} | {} | {}{limit} | {} |",
                replicas - allocated,
                resp.replicas,
                if resp.scale { "yes" } else { "no" }
            );
            replicas = resp.replicas;
        }
    }
    Ok(())
}
