//! The HTTP API (axum): routes, the JSON extractor that names the bad field, the per-IP rate
//! limit, request metrics, and the OpenAPI document generated from the handlers (`utoipa`).
//!
//! Handlers parse and answer; the flows are in `app.rs`. Nothing here panics on input, and no
//! header, token or body is logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::accounts::Identity;
use crate::app::{App, Issued, now_ms};
use crate::error::{ApiError, ErrorBody};
use crate::join::JoinResponse;
use crate::match_http as m;

/// A JSON body whose errors are 400 with the path of the bad field, 413 past the body limit, and
/// 415 without a JSON content type.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<App>) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(state.cfg.body_limit)
            } else {
                ApiError::bad_request("bad_body", "cannot read the request body")
            }
        })?;
        if !json_type {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ..ApiError::bad_request("not_json", "send the body as JSON with `Content-Type: application/json`")
            });
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let at = if path == "." { String::new() } else { format!("field `{path}`: ") };
            ApiError::bad_request("malformed_json", format!("malformed JSON body: {at}{inner}"))
        })?;
        de.end()
            .map_err(|e| ApiError::bad_request("malformed_json", format!("malformed JSON body: {e}")))?;
        Ok(ApiJson(value))
    }
}

/// `POST /v1/auth/device`.
#[derive(Deserialize, ToSchema)]
pub struct DeviceLogin {
    /// The device's id: 1 to 128 letters, digits and `- _ . :`.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub device_id: String,
}

/// `POST /v1/auth/platform` and `POST /v1/auth/link`.
#[derive(Deserialize, ToSchema)]
pub struct PlatformIdentity {
    /// The platform (`device`, `dev`, or another configured verifier).
    #[schema(min_length = 1, max_length = 32)]
    pub platform: String,
    /// The user's id on that platform.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub platform_user_id: String,
    /// The platform's proof (for `dev`: hex HMAC-SHA256 of the user id).
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub proof: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    #[schema(min_length = 1, max_length = 128)]
    pub refresh_token: String,
}

/// A login or refresh answer.
#[derive(Serialize, ToSchema)]
pub struct AuthResponse {
    pub account_id: i64,
    /// Whether this login created the account.
    pub created: bool,
    /// Send as `Authorization: Bearer <session_token>`.
    pub session_token: String,
    /// Unix seconds.
    pub session_expires_at: u64,
    /// Opaque; single use: each refresh returns the next one.
    pub refresh_token: String,
}

impl From<Issued> for AuthResponse {
    fn from(i: Issued) -> AuthResponse {
        AuthResponse {
            account_id: i.account_id,
            created: i.created,
            session_token: i.session_token,
            session_expires_at: i.session_expires_at,
            refresh_token: i.refresh_token,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IdentityView {
    pub platform: String,
    pub platform_user_id: String,
}

/// `POST /v1/auth/link`'s answer.
#[derive(Serialize, ToSchema)]
pub struct LinkResponse {
    pub account_id: i64,
    pub identities: Vec<IdentityView>,
}

/// `GET /v1/session`.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub account_id: i64,
    pub session_id: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The zone the player is in, once a zone server reported the join.
    pub zone_id: Option<String>,
    pub instance_id: Option<String>,
    pub addr: Option<String>,
}

/// One instance in `GET /v1/zones`.
#[derive(Serialize, ToSchema)]
pub struct InstanceView {
    pub instance_id: String,
    pub addr: String,
    /// starting, ready or draining.
    pub state: String,
    pub players: u32,
    pub capacity: u32,
    /// The server's tick p99 over its last ten seconds, as it last announced it.
    pub tick_p99_ms: f64,
    /// Whether a join may be sent here now.
    pub offered: bool,
    /// Why not, when not offered: starting, draining, full, tick_over_budget.
    pub not_offered_because: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ZoneView {
    pub zone_id: String,
    /// Whether any instance is offered.
    pub joinable: bool,
    pub instances: Vec<InstanceView>,
}

/// `GET /v1/zones`.
#[derive(Serialize, ToSchema)]
pub struct ZonesResponse {
    pub zones: Vec<ZoneView>,
}

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
    pub postgres: String,
    pub redis: String,
}

pub(crate) fn auth_header(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// Logs in with a device id, creating the account on first use.
#[utoipa::path(post, path = "/v1/auth/device", request_body = DeviceLogin, tag = "auth",
    responses(
        (status = 200, description = "Logged in; any other session of the account was ended", body = AuthResponse),
        (status = 400, description = "Malformed body or device id", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
async fn auth_device(State(app): State<Arc<App>>, ApiJson(body): ApiJson<DeviceLogin>) -> Result<Json<AuthResponse>, ApiError> {
    let now = now_ms();
    app.verifiers
        .verify("device", &body.device_id, "")
        .await
        .map_err(|e| ApiError::bad_request("bad_device_id", format!("field `device_id`: {e}")))?;
    let id = Identity {
        platform: "device".into(),
        user_id: body.device_id,
    };
    Ok(Json(app.login(&id, now).await?.into()))
}

/// Logs in with a platform identity and its proof, creating the account on first use.
#[utoipa::path(post, path = "/v1/auth/platform", request_body = PlatformIdentity, tag = "auth",
    responses(
        (status = 200, description = "Logged in", body = AuthResponse),
        (status = 400, description = "Malformed body or unknown platform", body = ErrorBody),
        (status = 401, description = "The proof does not verify", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
async fn auth_platform(State(app): State<Arc<App>>, ApiJson(body): ApiJson<PlatformIdentity>) -> Result<Json<AuthResponse>, ApiError> {
    let now = now_ms();
    let id = verified(&app, &body).await?;
    Ok(Json(app.login(&id, now).await?.into()))
}

async fn verified(app: &App, body: &PlatformIdentity) -> Result<Identity, ApiError> {
    use crate::verifier::VerifyError as V;
    app.verifiers
        .verify(&body.platform, &body.platform_user_id, &body.proof)
        .await
        .map_err(|e| match e {
            V::UnknownPlatform(_) => ApiError::bad_request(
                "unknown_platform",
                format!("field `platform`: {e}; this lobby knows {:?}", app.verifiers.platforms()),
            ),
            V::BadUserId => ApiError::bad_request("bad_user_id", format!("field `platform_user_id`: {e}")),
            V::BadProof => ApiError::unauthorized(format!("field `proof`: {e}")),
            V::Unavailable(_) => ApiError::unavailable("verifier_unavailable", e.to_string()),
        })?;
    Ok(Identity {
        platform: body.platform.clone(),
        user_id: body.platform_user_id.clone(),
    })
}

/// Binds another platform identity to the caller's account.
#[utoipa::path(post, path = "/v1/auth/link", request_body = PlatformIdentity, tag = "auth", security(("session" = [])),
    responses(
        (status = 200, description = "Linked (or already linked to this account)", body = LinkResponse),
        (status = 400, description = "Malformed body or unknown platform", body = ErrorBody),
        (status = 401, description = "Missing, expired or forged session, or a bad proof", body = ErrorBody),
        (status = 409, description = "The identity belongs to another account", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
async fn auth_link(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlatformIdentity>,
) -> Result<Json<LinkResponse>, ApiError> {
    let now = now_ms();
    let (claims, _) = app.authenticate(auth_header(&headers), now).await?;
    let id = verified(&app, &body).await?;
    app.accounts.link(claims.aid, &id, now as i64).await?;
    let identities = app
        .accounts
        .identities(claims.aid)
        .await?
        .into_iter()
        .map(|i| IdentityView {
            platform: i.platform,
            platform_user_id: i.user_id,
        })
        .collect();
    Ok(Json(LinkResponse {
        account_id: claims.aid,
        identities,
    }))
}

/// Trades a refresh token for a new session token and the next refresh token.
#[utoipa::path(post, path = "/v1/auth/refresh", request_body = RefreshRequest, tag = "auth",
    responses(
        (status = 200, description = "Rotated", body = AuthResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Unknown, expired, used or revoked token (reuse revokes the whole family)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
async fn auth_refresh(State(app): State<Arc<App>>, ApiJson(body): ApiJson<RefreshRequest>) -> Result<Json<AuthResponse>, ApiError> {
    Ok(Json(app.refresh(&body.refresh_token, now_ms()).await?.into()))
}

/// Ends the caller's session and revokes its refresh tokens.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("session" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Missing, expired or forged session", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Redis unavailable", body = ErrorBody),
    ))]
async fn auth_logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let now = now_ms();
    let (claims, _) = app.authenticate(auth_header(&headers), now).await?;
    app.end_session(&claims.sid, false, "logout").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the caller is, and which zone it is in.
#[utoipa::path(get, path = "/v1/session", tag = "session", security(("session" = [])),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 401, description = "Missing, expired or forged session", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
async fn get_session(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<SessionView>, ApiError> {
    let (_, s) = app.authenticate(auth_header(&headers), now_ms()).await?;
    Ok(Json(SessionView {
        account_id: s.account_id,
        session_id: s.sid,
        expires_at: s.expires_ms / 1000,
        zone_id: s.zone_id,
        instance_id: s.instance_id,
        addr: s.addr,
    }))
}

/// The zones with a running zone server, and which instances a player may join.
#[utoipa::path(get, path = "/v1/zones", tag = "zones",
    responses(
        (status = 200, description = "The directory", body = ZonesResponse),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
async fn get_zones(State(app): State<Arc<App>>) -> Result<Json<ZonesResponse>, ApiError> {
    let mut records = app.directory(now_ms()).await?;
    records.sort_by(|a, b| (&a.zone_id, &a.instance_id).cmp(&(&b.zone_id, &b.instance_id)));
    let budget = app.cfg.tick_budget_us();
    let mut zones: Vec<ZoneView> = Vec::new();
    for r in records {
        let offer = crate::choose::offer(&r, budget);
        let view = InstanceView {
            instance_id: r.instance_id,
            addr: r.addr,
            state: serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            players: r.players,
            capacity: r.capacity,
            tick_p99_ms: f64::from(r.tick_p99_us) / 1000.0,
            offered: offer.is_ok(),
            not_offered_because: offer.err().map(|w| w.as_str().to_string()),
        };
        match zones.last_mut() {
            Some(z) if z.zone_id == r.zone_id => {
                z.joinable |= view.offered;
                z.instances.push(view);
            }
            _ => zones.push(ZoneView {
                zone_id: r.zone_id,
                joinable: view.offered,
                instances: vec![view],
            }),
        }
    }
    Ok(Json(ZonesResponse { zones }))
}

/// Picks a ready instance of the zone with room, reserves a seat, and returns a join token for it.
#[utoipa::path(post, path = "/v1/zones/{zone_id}/join", tag = "zones", security(("session" = [])),
    params(("zone_id" = String, Path, description = "The zone to join")),
    responses(
        (status = 200, description = "A seat is reserved until expires_at; connect with the join token", body = JoinResponse),
        (status = 401, description = "Missing, expired or forged session", body = ErrorBody),
        (status = 404, description = "No running zone server has this zone", body = ErrorBody),
        (status = 409, description = "No instance can take a player now", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
async fn join_zone(State(app): State<Arc<App>>, headers: HeaderMap, Path(zone_id): Path<String>) -> Result<Json<JoinResponse>, ApiError> {
    let now = now_ms();
    let (_, s) = app.authenticate(auth_header(&headers), now).await?;
    if zone_id.is_empty() || zone_id.len() > 128 {
        return Err(ApiError::not_found("unknown_zone", "no zone has that id"));
    }
    Ok(Json(app.join(&s, &zone_id, now).await?))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: PostgreSQL and Redis both answer.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = HealthResponse),
        (status = 503, description = "A backend is unreachable", body = HealthResponse),
    ))]
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let (pg, redis) = tokio::join!(app.accounts.ping(), app.sessions.ping());
    let show = |r: Result<(), String>| r.map_or_else(|e| e, |()| "ok".to_string());
    let ok = pg.is_ok() && redis.is_ok();
    let body = HealthResponse {
        status: if ok { "ready" } else { "not ready" }.into(),
        postgres: show(pg.map_err(|e| e.to_string())),
        redis: show(redis.map_err(|e| e.to_string())),
    };
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Prometheus metrics (every name starts with `lobby_`).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    match &app.metrics {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], String::new()).into_response(),
    }
}

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components.add_security_scheme(
            "service",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "zone-lobby", description = "The front door of the zone servers: accounts, sessions, the zone directory, join tokens and matchmaking."),
    paths(auth_device, auth_platform, auth_link, auth_refresh, auth_logout, get_session, get_zones, join_zone,
        m::match_request, m::get_ticket, m::cancel_ticket, m::get_rating, m::seed_request, m::match_result,
        healthz, readyz, metrics_text),
    components(schemas(ErrorBody, DeviceLogin, PlatformIdentity, RefreshRequest, AuthResponse, LinkResponse, IdentityView, SessionView, ZonesResponse, ZoneView, InstanceView, JoinResponse, HealthResponse,
        m::MatchRequest, m::MatchedResponse, m::WaitingResponse, m::TicketEnded, m::TicketDone, m::SeedDone, m::SeedRequest, m::SeedMatchResponse, m::ResultRequest, m::ResultResponse, m::RatingResponse)),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi()
            .merge_from(crate::autoscale::AutoscaleDoc::openapi())
            .to_pretty_json()
            .unwrap_or_default(),
    )
        .into_response()
}

/// The route template of a path, for metric labels (never the raw path: zone ids are unbounded).
fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 10] = [
        "/v1/auth/device",
        "/v1/auth/platform",
        "/v1/auth/link",
        "/v1/auth/refresh",
        "/v1/auth/logout",
        "/v1/session",
        "/v1/zones",
        "/v1/match/request",
        "/v1/match/rating",
        "/match/request",
    ];
    if let Some(r) = ROUTES.iter().find(|r| **r == path) {
        return r;
    }
    if path.starts_with("/v1/match/tickets/") {
        return "/v1/match/tickets/{ticket_id}";
    }
    if path.starts_with("/v1/match/") && path.ends_with("/result") {
        return "/v1/match/{match_id}/result";
    }
    if path.starts_with("/v1/zones/") && path.ends_with("/join") {
        return "/v1/zones/{zone_id}/join";
    }
    "other"
}

/// Per-IP rate limit and request metrics for the API routes.
async fn per_ip_limit(State(app): State<Arc<App>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let started = Instant::now();
    let response = match app.limit_ip(peer.ip(), now_ms()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("lobby_http_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("lobby_http_request_duration_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// The whole router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.cfg.body_limit;
    let api = Router::new()
        .route("/v1/auth/device", post(auth_device))
        .route("/v1/auth/platform", post(auth_platform))
        .route("/v1/auth/link", post(auth_link))
        .route("/v1/auth/refresh", post(auth_refresh))
        .route("/v1/auth/logout", post(auth_logout))
        .route("/v1/session", get(get_session))
        .route("/v1/zones", get(get_zones))
        .route("/v1/zones/{zone_id}/join", post(join_zone))
        .route("/v1/match/request", post(m::match_request))
        .route("/v1/match/tickets/{ticket_id}", get(m::get_ticket).delete(m::cancel_ticket))
        .route("/v1/match/rating", get(m::get_rating))
        .route("/v1/match/{match_id}/result", post(m::match_result))
        .route("/match/request", post(m::seed_request))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), per_ip_limit));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/fleet-autoscale", post(crate::autoscale::fleet_autoscale))
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint: see GET /openapi.json") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}
