//! The Agones FleetAutoscaler webhook: every sync, Agones POSTs a `FleetAutoscaleReview` (the
//! Fleet's status and annotations) to `POST /v1/fleet-autoscale`, and the lobby answers how many
//! zone servers the Fleet should have:
//!
//! ```text
//! replicas = allocated + reserved                      servers in use stay
//!          + ceil(max(waiting, shortage) / players_per_server)   servers for the matchmaking demand
//!          + buffer                                    Ready servers for the next burst
//! clamped to [min_replicas, max_replicas]
//! ```
//!
//! `waiting` is the players in the matchmaking queue, `shortage` the matched players still waiting
//! for a seat ([`MatchDemand`], from the queue). A match without a seat stays in the queue while
//! it waits (`matching.rs` parks it), so the shortage is part of the waiting players, not added
//! to them; the max covers the two being read a moment apart. The policy comes from the Fleet's
//! `autoscale.zone.dev/*` annotations (assets/k8s/fleet.yaml), each defaulting to
//! [`Policy::default`]. Scaling down is safe: Agones only removes servers that are not allocated.
//!
//! [`decide`] and [`answer`] are pure (no IO, no clock; tested on recorded review requests in
//! tests/fixtures/autoscale/); [`fleet_autoscale`] is the axum handler. A malformed review or
//! annotation is a 400 naming the field and the fix (Agones then keeps the Fleet's size and
//! records the error as an event on the FleetAutoscaler). Never answers more than `max_replicas`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::http::ApiJson;

/// The queue's demand (`App::match_demand()`, refreshed every second by the matching task).
pub use crate::matching::MatchDemand;

/// The scaling policy: how many players a server takes, the Ready buffer, the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub players_per_server: u64,
    pub buffer: u64,
    pub min_replicas: u64,
    pub max_replicas: u64,
}

impl Default for Policy {
    /// The values of assets/k8s/fleet.yaml: 1,000 players per server (the demo zone at 1 CPU,
    /// benchmarks/), 2 Ready servers, between 2 and 50 servers.
    fn default() -> Self {
        Policy {
            players_per_server: 1000,
            buffer: 2,
            min_replicas: 2,
            max_replicas: 50,
        }
    }
}

/// The annotations a Fleet sets its policy with.
pub const ANNOTATION_PLAYERS_PER_SERVER: &str = "autoscale.zone.dev/players-per-server";
pub const ANNOTATION_BUFFER: &str = "autoscale.zone.dev/buffer";
pub const ANNOTATION_MIN_REPLICAS: &str = "autoscale.zone.dev/min-replicas";
pub const ANNOTATION_MAX_REPLICAS: &str = "autoscale.zone.dev/max-replicas";

/// Most replicas the webhook ever answers, whatever the annotations say (Agones' replicas are
/// int32; no fleet is near this).
const REPLICAS_CEILING: u64 = 100_000;

/// Why a review cannot be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AutoscaleError {
    #[error("the review has no `request`: Agones sends {{\"request\": {{\"uid\", \"status\", ...}}}}")]
    NoRequest,
    #[error("the review's request has no `uid`: Agones matches the answer to the request by it")]
    NoUid,
    #[error("Fleet annotation {key}={value:?}: {why}; set it to {fix}")]
    BadAnnotation {
        key: &'static str,
        value: String,
        why: &'static str,
        fix: &'static str,
    },
}

impl Policy {
    /// This policy, overridden by the Fleet's `autoscale.zone.dev/*` annotations.
    pub fn with_annotations(self, annotations: &BTreeMap<String, String>) -> Result<Policy, AutoscaleError> {
        let get = |key: &'static str, default: u64, min: u64, fix: &'static str| -> Result<u64, AutoscaleError> {
            let Some(v) = annotations.get(key) else { return Ok(default) };
            let n: u64 = v.trim().parse().map_err(|_| AutoscaleError::BadAnnotation {
                key,
                value: v.clone(),
                why: "not a whole number",
                fix,
            })?;
            if n < min || n > REPLICAS_CEILING * 10_000 {
                return Err(AutoscaleError::BadAnnotation {
                    key,
                    value: v.clone(),
                    why: "out of range",
                    fix,
                });
            }
            Ok(n)
        };
        let p = Policy {
            players_per_server: get(
                ANNOTATION_PLAYERS_PER_SERVER,
                self.players_per_server,
                1,
                "the players one zone server takes, at least 1 (e.g. \"1000\")",
            )?,
            buffer: get(
                ANNOTATION_BUFFER,
                self.buffer,
                0,
                "the Ready servers to keep spare, 0 or more (e.g. \"2\")",
            )?,
            min_replicas: get(
                ANNOTATION_MIN_REPLICAS,
                self.min_replicas,
                0,
                "the fewest servers, 0 or more (e.g. \"2\")",
            )?,
            max_replicas: get(
                ANNOTATION_MAX_REPLICAS,
                self.max_replicas,
                1,
                "the most servers, at least 1 (e.g. \"50\")",
            )?,
        };
        if p.min_replicas > p.max_replicas {
            return Err(AutoscaleError::BadAnnotation {
                key: ANNOTATION_MIN_REPLICAS,
                value: p.min_replicas.to_string(),
                why: "above autoscale.zone.dev/max-replicas",
                fix: "a number no larger than max-replicas",
            });
        }
        Ok(p)
    }
}

/// `POST /v1/fleet-autoscale`: Agones' `FleetAutoscaleReview` (autoscaling.agones.dev/v1). Unknown
/// fields are ignored (Agones adds some over versions).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct FleetAutoscaleReview {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// What Agones asks about (sent by Agones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<FleetAutoscaleRequest>,
    /// The answer (sent by the lobby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<FleetAutoscaleResponse>,
}

/// The Fleet under review.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct FleetAutoscaleRequest {
    /// Identifies this review; the answer carries it back.
    #[serde(default)]
    pub uid: String,
    /// The Fleet's name.
    #[serde(default)]
    pub name: String,
    /// The Fleet's namespace.
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub status: FleetStatus,
    /// The Fleet's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The Fleet's annotations (the `autoscale.zone.dev/*` policy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Fleet's status: counts of its GameServers by state.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    #[serde(default)]
    pub replicas: u32,
    #[serde(default)]
    pub ready_replicas: u32,
    #[serde(default)]
    pub reserved_replicas: u32,
    #[serde(default)]
    pub allocated_replicas: u32,
}

/// The answer: whether to scale, and to how many.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FleetAutoscaleResponse {
    /// The request's uid.
    pub uid: String,
    /// True when `replicas` differs from the Fleet's current replicas.
    pub scale: bool,
    /// The replicas the Fleet should have.
    pub replicas: u32,
}

/// How an answer was reached (logged, and printed by the load-shape example).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u64,
    pub scale: bool,
    /// Allocated plus reserved servers (kept).
    pub in_use: u64,
    /// Servers for the queue's demand.
    pub for_demand: u64,
    /// The Ready buffer.
    pub buffer: u64,
    /// The limit applied, if the sum was outside [min, max].
    pub limited: Option<Limit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Min,
    Max,
}

/// The replicas for a Fleet's status and the queue's demand under a policy.
pub fn decide(status: &FleetStatus, demand: MatchDemand, policy: &Policy) -> Decision {
    let in_use = u64::from(status.allocated_replicas) + u64::from(status.reserved_replicas);
    // The shortage's players are still in the queue (parked): part of `waiting`, not extra.
    let players = demand.waiting_players.max(demand.shortage_players);
    let for_demand = players.div_ceil(policy.players_per_server.max(1));
    let want = in_use.saturating_add(for_demand).saturating_add(policy.buffer);
    let max = policy.max_replicas.min(REPLICAS_CEILING);
    let (replicas, limited) = if want > max {
        (max, Some(Limit::Max))
    } else if want < policy.min_replicas {
        (policy.min_replicas.min(max), Some(Limit::Min))
    } else {
        (want, None)
    };
    Decision {
        replicas,
        scale: replicas != u64::from(status.replicas),
        in_use,
        for_demand,
        buffer: policy.buffer,
        limited,
    }
}

/// Answers a review: the request echoed back with the response filled in.
pub fn answer(
    review: FleetAutoscaleReview,
    demand: MatchDemand,
    defaults: &Policy,
) -> Result<(FleetAutoscaleReview, Decision), AutoscaleError> {
    let request = review.request.ok_or(AutoscaleError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(AutoscaleError::NoUid);
    }
    let policy = defaults.with_annotations(&request.annotations)?;
    let d = decide(&request.status, demand, &policy);
    let response = FleetAutoscaleResponse {
        uid: request.uid.clone(),
        scale: d.scale,
        replicas: u32::try_from(d.replicas).unwrap_or(u32::MAX),
    };
    Ok((
        FleetAutoscaleReview {
            kind: Some("FleetAutoscaleReview".into()),
            api_version: Some("autoscaling.agones.dev/v1".into()),
            request: Some(request),
            response: Some(response),
        },
        d,
    ))
}

/// Registers the webhook's metric descriptions (called with the lobby's others).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "lobby_autoscale_reviews_total",
        "FleetAutoscaler reviews answered, by outcome (up, down, same, error)."
    );
    metrics::describe_gauge!(
        "lobby_autoscale_replicas",
        "Zone servers the last FleetAutoscaler answer asked for, by fleet (namespace/name)."
    );
}

/// Agones' FleetAutoscaler webhook: the zone servers the Fleet should have, from the queue's
/// demand plus a Ready buffer, within the Fleet's limits.
#[utoipa::path(post, path = "/v1/fleet-autoscale", request_body = FleetAutoscaleReview, tag = "ops",
    responses(
        (status = 200, description = "The review with `response` filled in", body = FleetAutoscaleReview),
        (status = 400, description = "No request, no uid, or a bad autoscale.zone.dev/* annotation", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    ))]
pub async fn fleet_autoscale(
    State(app): State<Arc<App>>,
    ApiJson(review): ApiJson<FleetAutoscaleReview>,
) -> Result<Json<FleetAutoscaleReview>, ApiError> {
    let demand = app.match_demand();
    let (fleet, replicas_now) = review
        .request
        .as_ref()
        .map(|r| (format!("{}/{}", r.namespace, r.name), r.status.replicas))
        .unwrap_or_default();
    match answer(review, demand, &Policy::default()) {
        Ok((review, d)) => {
            let outcome = match d.replicas.cmp(&u64::from(replicas_now)) {
                std::cmp::Ordering::Greater => "up",
                std::cmp::Ordering::Less => "down",
                std::cmp::Ordering::Equal => "same",
            };
            metrics::counter!("lobby_autoscale_reviews_total", "outcome" => outcome).increment(1);
            metrics::gauge!("lobby_autoscale_replicas", "fleet" => fleet.clone()).set(d.replicas as f64);
            if d.scale {
                tracing::info!(
                    %fleet, from = replicas_now, to = d.replicas, in_use = d.in_use, for_demand = d.for_demand,
                    buffer = d.buffer, limited = ?d.limited, waiting = demand.waiting_players,
                    shortage = demand.shortage_players, "fleet autoscale: scaling"
                );
            }
            Ok(Json(review))
        }
        Err(e) => {
            metrics::counter!("lobby_autoscale_reviews_total", "outcome" => "error").increment(1);
            tracing::warn!(%fleet, error = %e, "fleet autoscale: cannot answer the review");
            Err(ApiError::bad_request("bad_review", e.to_string()))
        }
    }
}

/// The webhook's part of the OpenAPI document (merged into the lobby's).
#[derive(OpenApi)]
#[openapi(
    paths(fleet_autoscale),
    components(schemas(FleetAutoscaleReview, FleetAutoscaleRequest, FleetStatus, FleetAutoscaleResponse, ErrorBody))
)]
pub struct AutoscaleDoc;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(replicas: u32, ready: u32, reserved: u32, allocated: u32) -> FleetStatus {
        FleetStatus {
            replicas,
            ready_replicas: ready,
            reserved_replicas: reserved,
            allocated_replicas: allocated,
        }
    }

    fn demand(waiting: u64, shortage: u64) -> MatchDemand {
        MatchDemand {
            waiting_players: waiting,
            shortage_players: shortage,
        }
    }

    #[test]
    fn idle_fleet_keeps_the_minimum() {
        let d = decide(&status(2, 2, 0, 0), demand(0, 0), &Policy::default());
        assert_eq!((d.replicas, d.scale, d.limited), (2, false, None));
        let d = decide(&status(5, 5, 0, 0), demand(0, 0), &Policy::default());
        assert_eq!((d.replicas, d.scale), (2, true), "scales down to in use + buffer");
        let p = Policy {
            min_replicas: 4,
            ..Policy::default()
        };
        let d = decide(&status(2, 2, 0, 0), demand(0, 0), &p);
        assert_eq!((d.replicas, d.limited), (4, Some(Limit::Min)));
    }

    #[test]
    fn demand_rounds_up_to_whole_servers_on_top_of_in_use_and_buffer() {
        let p = Policy::default();
        // 3 allocated + 1 reserved in use, 1 player waiting: one more server, plus 2 spare.
        let d = decide(&status(6, 2, 1, 3), demand(1, 0), &p);
        assert_eq!((d.in_use, d.for_demand, d.buffer, d.replicas, d.scale), (4, 1, 2, 7, true));
        // 1,001 waiting (one of them matched, without a seat): two servers.
        assert_eq!(decide(&status(6, 2, 1, 3), demand(1001, 1), &p).for_demand, 2);
        assert_eq!(decide(&status(6, 2, 1, 3), demand(1000, 0), &p).for_demand, 1);
        // The shortage is part of the waiting players, never added to them; a shortage read
        // before the queue's depth still counts.
        assert_eq!(decide(&status(6, 2, 1, 3), demand(1000, 1000), &p).for_demand, 1);
        assert_eq!(decide(&status(6, 2, 1, 3), demand(0, 40), &p).for_demand, 1);
    }

    #[test]
    fn never_above_the_maximum() {
        let d = decide(&status(40, 0, 0, 40), demand(u64::MAX, u64::MAX), &Policy::default());
        assert_eq!((d.replicas, d.limited), (50, Some(Limit::Max)));
        let p = Policy {
            min_replicas: 10,
            max_replicas: 10,
            ..Policy::default()
        };
        assert_eq!(decide(&status(3, 3, 0, 0), demand(0, 0), &p).replicas, 10);
        // Allocated beyond the maximum: the answer is the maximum (Agones keeps allocated servers).
        assert_eq!(decide(&status(60, 0, 0, 60), demand(0, 0), &Policy::default()).replicas, 50);
    }

    #[test]
    fn annotations_override_the_defaults_and_bad_ones_name_the_fix() {
        let a: BTreeMap<String, String> = [
            (ANNOTATION_PLAYERS_PER_SERVER, "200"),
            (ANNOTATION_BUFFER, "0"),
            (ANNOTATION_MIN_REPLICAS, "1"),
            (ANNOTATION_MAX_REPLICAS, "8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = Policy::default().with_annotations(&a).unwrap();
        assert_eq!(
            p,
            Policy {
                players_per_server: 200,
                buffer: 0,
                min_replicas: 1,
                max_replicas: 8
            }
        );
        let bad = |k: &str, v: &str| {
            let a: BTreeMap<String, String> = [(k.to_string(), v.to_string())].into_iter().collect();
            Policy::default().with_annotations(&a).unwrap_err().to_string()
        };
        let e = bad(ANNOTATION_PLAYERS_PER_SERVER, "lots");
        assert!(
            e.contains("autoscale.zone.dev/players-per-server") && e.contains("not a whole number") && e.contains("e.g. \"1000\""),
            "{e}"
        );
        assert!(bad(ANNOTATION_PLAYERS_PER_SERVER, "0").contains("out of range"));
        assert!(bad(ANNOTATION_MAX_REPLICAS, "0").contains("out of range"));
        assert!(bad(ANNOTATION_MIN_REPLICAS, "80").contains("above autoscale.zone.dev/max-replicas"));
    }

    #[test]
    fn answer_echoes_the_uid_and_refuses_reviews_without_one() {
        let review = FleetAutoscaleReview {
            request: Some(FleetAutoscaleRequest {
                uid: "u-1".into(),
                status: status(2, 2, 0, 0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (out, _) = answer(review.clone(), demand(2500, 0), &Policy::default()).unwrap();
        assert_eq!(
            out.response,
            Some(FleetAutoscaleResponse {
                uid: "u-1".into(),
                scale: true,
                replicas: 5
            })
        );
        assert_eq!(
            answer(FleetAutoscaleReview::default(), demand(0, 0), &Policy::default()).unwrap_err(),
            AutoscaleError::NoRequest
        );
        let mut no_uid = review;
        no_uid.request.as_mut().unwrap().uid.clear();
        assert_eq!(answer(no_uid, demand(0, 0), &Policy::default()).unwrap_err(), AutoscaleError::NoUid);
    }
}
