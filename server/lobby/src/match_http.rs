//! The matchmaking API (axum handlers and their OpenAPI entries): tickets for session players,
//! the seed's shape for trusted backends, results, ratings.
//!
//! The player and the rating always come from the session and the rating store, never from the
//! body; only a trusted backend (the service key) may give a rating. Every refusal is counted in
//! `lobby_match_refused_total{reason}`. Handlers parse and answer; the flows are in `matching.rs`.
//! Never logs a token, a key or a body.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::{App, now_ms};
use crate::error::{ApiError, ErrorBody};
use crate::http::{ApiJson, auth_header};
use crate::matching::{MAX_WAIT_MS, TicketAnswer, check_region, party_members};

fn refused(reason: &'static str) {
    metrics::counter!("lobby_match_refused_total", "reason" => reason).increment(1);
}

/// `POST /v1/match/request`.
#[derive(Deserialize, ToSchema)]
pub struct MatchRequest {
    /// A mode of the lobby's modes file (e.g. `duel`, `team3`).
    #[schema(min_length = 1, max_length = 64)]
    pub mode: String,
    /// Players of the same region are matched together (see the mode's region rule).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9_-]{1,32}$")]
    pub region: Option<String>,
    /// Account ids queued with the caller as one unit, always on the same team (the caller may be
    /// listed or not).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub party: Vec<i64>,
    /// How long to wait for a match before answering 202, milliseconds (0 to 30000). [default: 0]
    #[serde(default)]
    #[schema(maximum = 30000)]
    pub wait_ms: u64,
    /// Makes retries idempotent: the same id from the same player finds the same ticket.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub request_id: Option<String>,
}

/// A match, as one player sees it. The join fields are those of `POST /v1/zones/{zone_id}/join`.
#[derive(Serialize, ToSchema)]
pub struct MatchedResponse {
    /// `matched`.
    pub status: String,
    pub ticket_id: i64,
    pub match_id: i64,
    /// The room in Redis (`{prefix}room:{room_id}`).
    pub room_id: String,
    /// UDP address of the zone server, `HOST:PORT`.
    pub game_server: String,
    /// The opponent in a 1v1 mode (as seed 002 asks).
    pub opponent_id: Option<i64>,
    /// Every player of the other teams.
    pub opponent_ids: Vec<i64>,
    /// The caller's team, 0-based index into `teams`.
    pub team: usize,
    pub teams: Vec<Vec<i64>>,
    /// Send in the client's Hello, like a join's token.
    pub join_token: String,
    /// The session key (standard base64 of 32 bytes) to seal datagrams with.
    pub session_key: String,
    pub zone_id: String,
    pub instance_id: String,
    /// When the join token and the seat reservation expire, Unix seconds.
    pub expires_at: u64,
}

/// A ticket that still waits.
#[derive(Serialize, ToSchema)]
pub struct WaitingResponse {
    /// `waiting`.
    pub status: String,
    pub ticket_id: i64,
    /// The ticket's rating window now (it widens with waiting, up to the mode's cap).
    pub window: f64,
    /// How long the ticket has waited, milliseconds.
    pub waited_ms: u64,
}

/// A ticket that ended without a match.
#[derive(Serialize, ToSchema)]
pub struct TicketEnded {
    /// `cancelled` or `refused`.
    pub status: String,
    pub ticket_id: i64,
    /// Why the matcher refused it.
    pub reason: Option<String>,
}

/// What a ticket answers with 200: a match, or the end of the ticket.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // a short-lived answer
pub enum TicketDone {
    Matched(MatchedResponse),
    Ended(TicketEnded),
}

/// `POST /match/request` (trusted backends): seed 002's shape.
#[derive(Deserialize, ToSchema)]
pub struct SeedRequest {
    /// The backend's player id (the same id space as the lobby's accounts).
    pub player_id: i64,
    /// The rating the backend keeps for this player (Glicko-2 scale: 1500 is a new player).
    pub rating: f64,
    /// [default: duel]
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub mode: Option<String>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9_-]{1,32}$")]
    pub region: Option<String>,
    /// How long to wait for a match, milliseconds (0 to 30000). [default: 30000]
    #[serde(default)]
    #[schema(maximum = 30000)]
    pub wait_ms: Option<u64>,
}

/// What the seed route answers with 200.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SeedDone {
    Matched(SeedMatchResponse),
    Ended(TicketEnded),
}

/// Seed 002's answer.
#[derive(Serialize, ToSchema)]
pub struct SeedMatchResponse {
    pub match_id: i64,
    pub room_id: String,
    pub game_server: String,
    pub opponent_id: Option<i64>,
}

/// `POST /v1/match/{match_id}/result`.
#[derive(Deserialize, ToSchema)]
pub struct ResultRequest {
    /// One rank per team, in the match's team order: 1 = winner; ties allowed.
    #[schema(min_items = 2, max_items = 64)]
    pub ranks: Vec<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct ResultResponse {
    pub match_id: i64,
    /// False when this match's result had been applied already (nothing changed).
    pub applied: bool,
}

/// `GET /v1/match/rating`.
#[derive(Serialize, ToSchema)]
pub struct RatingResponse {
    pub player_id: i64,
    /// Glicko-2 rating (1500 for a new player).
    pub rating: f64,
    pub deviation: f64,
    /// Rated matches played.
    pub games: i32,
}

fn answer(a: TicketAnswer) -> Response {
    match a {
        TicketAnswer::Matched(m) => (
            StatusCode::OK,
            Json(MatchedResponse {
                status: "matched".into(),
                ticket_id: m.ticket_id,
                match_id: m.match_id,
                room_id: m.room_id,
                game_server: m.game_server,
                opponent_id: m.opponent_id,
                opponent_ids: m.opponent_ids,
                team: m.team,
                teams: m.teams,
                join_token: m.join_token,
                session_key: m.session_key,
                zone_id: m.zone_id,
                instance_id: m.instance_id,
                expires_at: m.expires_at,
            }),
        )
            .into_response(),
        TicketAnswer::Waiting {
            ticket_id,
            window,
            waited_ms,
        } => (
            StatusCode::ACCEPTED,
            Json(WaitingResponse {
                status: "waiting".into(),
                ticket_id,
                window,
                waited_ms,
            }),
        )
            .into_response(),
        TicketAnswer::Cancelled { ticket_id } => Json(TicketEnded {
            status: "cancelled".into(),
            ticket_id,
            reason: None,
        })
        .into_response(),
        TicketAnswer::Refused { ticket_id, reason } => Json(TicketEnded {
            status: "refused".into(),
            ticket_id,
            reason: Some(reason),
        })
        .into_response(),
    }
}

fn check_wait(wait_ms: u64) -> Result<u64, ApiError> {
    if wait_ms > MAX_WAIT_MS {
        refused("bad_wait");
        return Err(ApiError::bad_request(
            "bad_wait",
            format!("field `wait_ms`: {wait_ms} is over the {MAX_WAIT_MS} ms a request may wait"),
        ));
    }
    Ok(wait_ms)
}

fn region(r: Option<&str>) -> Result<(), ApiError> {
    check_region(r).map_err(|e| {
        refused("bad_region");
        ApiError::bad_request("bad_region", e)
    })
}

fn ticket_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::not_found("unknown_ticket", "no ticket has that id"))
}

fn wait_param(q: Option<&str>) -> Result<u64, ApiError> {
    let Some(q) = q else {
        return Ok(0);
    };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("wait_ms=") {
            let ms = v.parse::<u64>().map_err(|_| {
                refused("bad_wait");
                ApiError::bad_request("bad_wait", "query `wait_ms`: use a number of milliseconds, 0 to 30000")
            })?;
            return check_wait(ms);
        }
    }
    Ok(0)
}

/// The trusted backend's key, compared in constant time.
fn service(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = app.cfg.service_key.as_deref() else {
        return Err(ApiError::not_found(
            "service_routes_off",
            "this lobby has no service key: start it with --service-key (ZONE_LOBBY_SERVICE_KEY) to enable backend routes",
        ));
    };
    let given = crate::session_token::bearer(auth_header(headers)).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let same = given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err(ApiError::unauthorized("the service key is not valid"));
    }
    Ok(())
}

/// Queues the caller (and its party) for a match, and waits up to `wait_ms` for one.
#[utoipa::path(post, path = "/v1/match/request", request_body = MatchRequest, tag = "match", security(("session" = [])),
    responses(
        (status = 200, description = "Matched within wait_ms: connect to game_server with the join token (or, for a retried request_id, the ticket's end: cancelled or refused)", body = TicketDone),
        (status = 202, description = "Queued (durable); wait on GET /v1/match/tickets/{ticket_id}", body = WaitingResponse),
        (status = 400, description = "Unknown mode (the message lists the modes), bad party, region or wait_ms, malformed body", body = ErrorBody),
        (status = 401, description = "Missing, expired or forged session", body = ErrorBody),
        (status = 409, description = "A player of this request already waits in another ticket", body = ErrorBody),
        (status = 410, description = "Matched, but the room has expired", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited, or the mode's queue is full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
pub async fn match_request(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MatchRequest>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let (claims, _) = app.authenticate(auth_header(&headers), now).await?;
    let mm = &app.matching;
    let mode = mm.mode(&body.mode)?;
    let wait_ms = check_wait(body.wait_ms)?;
    region(body.region.as_deref())?;
    if body.request_id.as_ref().is_some_and(|r| r.is_empty() || r.len() > 64) {
        refused("bad_request_id");
        return Err(ApiError::bad_request("bad_request_id", "field `request_id`: 1 to 64 characters"));
    }
    let members = party_members(mode, claims.aid, &body.party).map_err(|e| {
        refused("bad_party");
        ApiError::bad_request("bad_party", e)
    })?;
    mm.check_room(mode, members.len())?;
    let inserted = mm
        .queue
        .insert_session(
            claims.aid,
            &members,
            &mode.name,
            body.region.as_deref(),
            body.request_id.as_deref(),
            now as i64,
        )
        .await?;
    let fresh = matches!(inserted, crate::queue::Inserted::New { .. });
    let id = mm.inserted(mode, members.len(), inserted)?;
    if fresh && wait_ms == 0 {
        // Just written, so waiting: no need to read it back.
        return Ok(answer(TicketAnswer::Waiting {
            ticket_id: id,
            window: zone_matchmaker::window(mode, 0),
            waited_ms: 0,
        }));
    }
    Ok(answer(mm.wait(&app, id, claims.aid, wait_ms).await?))
}

/// Waits up to `wait_ms` on a ticket of the caller's (or of its party's).
#[utoipa::path(get, path = "/v1/match/tickets/{ticket_id}", tag = "match", security(("session" = [])),
    params(
        ("ticket_id" = i64, Path, description = "The ticket"),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for a match, 0 to 30000 ms [default: 0]"),
    ),
    responses(
        (status = 200, description = "Matched (MatchedResponse), or ended (TicketEnded: cancelled or refused)", body = TicketDone),
        (status = 202, description = "Still waiting", body = WaitingResponse),
        (status = 400, description = "Bad wait_ms", body = ErrorBody),
        (status = 401, description = "Missing, expired or forged session", body = ErrorBody),
        (status = 404, description = "No such ticket of the caller's", body = ErrorBody),
        (status = 410, description = "Matched, but the room has expired", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
pub async fn get_ticket(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let (claims, _) = app.authenticate(auth_header(&headers), now).await?;
    let wait_ms = wait_param(q.as_deref())?;
    let id = ticket_id(&id)?;
    Ok(answer(app.matching.wait(&app, id, claims.aid, wait_ms).await?))
}

/// Cancels a waiting ticket. A cancel racing a match has exactly one outcome: cancelled (200)
/// or matched (409).
#[utoipa::path(delete, path = "/v1/match/tickets/{ticket_id}", tag = "match", security(("session" = [])),
    params(("ticket_id" = i64, Path, description = "The ticket")),
    responses(
        (status = 200, description = "Cancelled (or was already)", body = TicketEnded),
        (status = 401, description = "Missing, expired or forged session", body = ErrorBody),
        (status = 404, description = "No such ticket of the caller's", body = ErrorBody),
        (status = 409, description = "Already matched (or refused)", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    ))]
pub async fn cancel_ticket(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let now = now_ms();
    let (claims, _) = app.authenticate(auth_header(&headers), now).await?;
    let id = ticket_id(&id)?;
    app.matching.cancel(id, claims.aid).await?;
    Ok(answer(TicketAnswer::Cancelled { ticket_id: id }))
}

/// The caller's rating (what matchmaking uses; the body of a request never sets it).
#[utoipa::path(get, path = "/v1/match/rating", tag = "match", security(("session" = [])),
    responses(
        (status = 200, description = "The rating", body = RatingResponse),
        (status = 401, description = "Missing, expired or forged session", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    ))]
pub async fn get_rating(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<RatingResponse>, ApiError> {
    let (claims, _) = app.authenticate(auth_header(&headers), now_ms()).await?;
    let r = app.matching.queue.rating(claims.aid).await?;
    Ok(Json(RatingResponse {
        player_id: claims.aid,
        rating: r.rating,
        deviation: r.deviation,
        games: r.games,
    }))
}

/// Seed 002's shape for trusted backends that keep ratings elsewhere: queues `player_id` with
/// the given rating and long-polls (30 s by default). Asking again for a waiting player waits on
/// its ticket.
#[utoipa::path(post, path = "/match/request", request_body = SeedRequest, tag = "match", security(("service" = [])),
    responses(
        (status = 200, description = "Matched (or the waiting ticket's end: cancelled or refused)", body = SeedDone),
        (status = 202, description = "Still waiting after wait_ms: ask again", body = WaitingResponse),
        (status = 400, description = "Unknown mode, bad rating, region or wait_ms, malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong service key", body = ErrorBody),
        (status = 404, description = "Service routes are off (no --service-key)", body = ErrorBody),
        (status = 410, description = "Matched, but the room has expired", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited, or the mode's queue is full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
pub async fn seed_request(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SeedRequest>,
) -> Result<Response, ApiError> {
    service(&app, &headers)?;
    let now = now_ms();
    let mm = &app.matching;
    let mode = mm.mode(body.mode.as_deref().unwrap_or("duel"))?;
    let wait_ms = check_wait(body.wait_ms.unwrap_or(MAX_WAIT_MS))?;
    region(body.region.as_deref())?;
    if body.player_id <= 0 {
        refused("bad_player");
        return Err(ApiError::bad_request("bad_player", "field `player_id`: a positive id"));
    }
    if !(body.rating.is_finite() && (0.0..=10_000.0).contains(&body.rating)) {
        refused("bad_rating");
        return Err(ApiError::bad_request("bad_rating", "field `rating`: a number from 0 to 10000"));
    }
    mm.check_room(mode, 1)?;
    let inserted = mm
        .queue
        .insert_service(body.player_id, body.rating, &mode.name, body.region.as_deref(), now as i64)
        .await?;
    let fresh = matches!(inserted, crate::queue::Inserted::New { .. });
    let id = match inserted {
        crate::queue::Inserted::AlreadyWaiting(id) if id > 0 => id,
        other => mm.inserted(mode, 1, other)?,
    };
    if fresh && wait_ms == 0 {
        return Ok(answer(TicketAnswer::Waiting {
            ticket_id: id,
            window: zone_matchmaker::window(mode, 0),
            waited_ms: 0,
        }));
    }
    Ok(match mm.wait(&app, id, body.player_id, wait_ms).await? {
        TicketAnswer::Matched(m) => Json(SeedMatchResponse {
            match_id: m.match_id,
            room_id: m.room_id,
            game_server: m.game_server,
            opponent_id: m.opponent_id.or_else(|| m.opponent_ids.first().copied()),
        })
        .into_response(),
        other => answer(other),
    })
}

/// Reports a match's result (a zone server or a trusted backend): ratings are updated once per
/// match (Glicko-2); reporting it again changes nothing.
#[utoipa::path(post, path = "/v1/match/{match_id}/result", request_body = ResultRequest, tag = "match", security(("service" = [])),
    params(("match_id" = i64, Path, description = "The match")),
    responses(
        (status = 200, description = "Applied, or had been (applied = false)", body = ResultResponse),
        (status = 400, description = "Not one rank per team, or a rank out of range", body = ErrorBody),
        (status = 401, description = "Missing or wrong service key", body = ErrorBody),
        (status = 404, description = "No such match, or service routes are off", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorBody),
    ))]
pub async fn match_result(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ResultRequest>,
) -> Result<Json<ResultResponse>, ApiError> {
    service(&app, &headers)?;
    let match_id = id
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::not_found("unknown_match", "no match has that id"))?;
    let applied = app
        .matching
        .queue
        .apply_result(match_id, &body.ranks, now_ms() as i64, crate::ratings::update)
        .await
        .map_err(|e| match e {
            crate::queue::ResultError::UnknownMatch(_) => ApiError::not_found("unknown_match", e.to_string()),
            crate::queue::ResultError::Invalid(m) => {
                refused("bad_result");
                ApiError::bad_request("bad_result", m)
            }
            crate::queue::ResultError::Store(s) => s.into(),
        })?;
    if applied {
        metrics::counter!("lobby_match_results_total").increment(1);
    }
    Ok(Json(ResultResponse { match_id, applied }))
}
