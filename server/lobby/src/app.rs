//! The lobby's state and its flows (login, takeover, refresh, logout, link, join), independent of
//! HTTP: handlers in `http.rs` parse, call these, and answer.
//!
//! Every flow takes `now` from [`now_ms`] once and passes it down. One session per account: a
//! login ends the account's other sessions, revokes their refresh tokens and asks their zone to
//! drop the player. Never logs a token, a proof or a secret.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use zone_directory::{Keys, Reservation, ZoneRecord};

use crate::accounts::{Accounts, AccountsError, Identity};
use crate::config::LobbyConfig;
use crate::error::ApiError;
use crate::join::{JoinResponse, encode_session_key, mint_join_token};
use crate::matching::{MatchDemand, Matchmaking};
use crate::queue::Queue;
use crate::ratelimit::Limiter;
use crate::refresh::{self, Decision};
use crate::session_token::{self, SessionClaims};
use crate::sessions::{Session, Sessions, SessionsError};
use crate::verifier::Verifiers;

/// Distinct IPs / accounts the rate limiters remember at most.
const LIMITER_KEYS_MAX: usize = 100_000;

/// Wall-clock Unix milliseconds (the only clock read of a request).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(b)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a login or a refresh answers.
#[derive(Clone, Debug)]
pub struct Issued {
    pub account_id: i64,
    pub created: bool,
    pub session_token: String,
    pub session_expires_at: u64,
    pub refresh_token: String,
}

/// Everything the handlers share.
pub struct App {
    pub cfg: LobbyConfig,
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub keys: Keys,
    pub verifiers: Verifiers,
    pub per_ip: Mutex<Limiter<IpAddr>>,
    pub per_account: Mutex<Limiter<i64>>,
    pub metrics: Option<PrometheusHandle>,
    /// Matchmaking: the durable queue, the waiters, the leader's state (`matching.rs`).
    pub matching: Matchmaking,
}

impl From<SessionsError> for ApiError {
    fn from(e: SessionsError) -> ApiError {
        metrics::counter!("lobby_backend_errors_total", "backend" => "redis").increment(1);
        ApiError::unavailable("redis_unavailable", format!("sessions are unavailable: {e}"))
    }
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> ApiError {
        match e {
            AccountsError::IdentityTaken => ApiError::conflict("identity_taken", e.to_string()),
            _ => {
                metrics::counter!("lobby_backend_errors_total", "backend" => "postgres").increment(1);
                ApiError::unavailable("postgres_unavailable", format!("accounts are unavailable: {e}"))
            }
        }
    }
}

impl From<zone_directory::DirectoryError> for ApiError {
    fn from(e: zone_directory::DirectoryError) -> ApiError {
        metrics::counter!("lobby_backend_errors_total", "backend" => "redis").increment(1);
        ApiError::unavailable("redis_unavailable", format!("the zone directory is unavailable: {e}"))
    }
}

impl App {
    pub fn new(cfg: LobbyConfig, accounts: Accounts, sessions: Sessions, queue: Queue, metrics: Option<PrometheusHandle>) -> App {
        let matching = Matchmaking::new(cfg.match_modes.clone(), queue);
        let verifiers = Verifiers::standard(cfg.dev_verifier_key.as_deref().map(str::as_bytes));
        App {
            keys: Keys::new(&cfg.redis_prefix),
            per_ip: Mutex::new(Limiter::new(cfg.rate_per_ip, cfg.rate_per_ip * 2.0, LIMITER_KEYS_MAX)),
            per_account: Mutex::new(Limiter::new(cfg.rate_per_account, cfg.rate_per_account * 2.0, LIMITER_KEYS_MAX)),
            cfg,
            accounts,
            sessions,
            verifiers,
            metrics,
            matching,
        }
    }

    /// Queue demand for the autoscaler: players waiting, and players matched but waiting for a
    /// seat on a zone server (both refreshed every second; any instance answers).
    pub fn match_demand(&self) -> MatchDemand {
        self.matching.demand()
    }

    /// Per-IP rate limit: Err(retry after ms).
    pub fn limit_ip(&self, ip: IpAddr, now: u64) -> Result<(), ApiError> {
        let r = self.per_ip.lock().map_or(Ok(()), |mut l| l.check(&ip, now));
        r.map_err(|ms| {
            metrics::counter!("lobby_rate_limited_total", "scope" => "ip").increment(1);
            ApiError::rate_limited("too many requests from this address", ms)
        })
    }

    fn limit_account(&self, aid: i64, now: u64) -> Result<(), ApiError> {
        let r = self.per_account.lock().map_or(Ok(()), |mut l| l.check(&aid, now));
        r.map_err(|ms| {
            metrics::counter!("lobby_rate_limited_total", "scope" => "account").increment(1);
            ApiError::rate_limited("too many requests for this account", ms)
        })
    }

    /// The session behind an `Authorization` header: a valid token whose session still exists.
    pub async fn authenticate(&self, header: Option<&str>, now: u64) -> Result<(SessionClaims, Session), ApiError> {
        let token = session_token::bearer(header).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let claims = session_token::verify(self.cfg.session_secret.as_bytes(), token, now / 1000)
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        self.limit_account(claims.aid, now)?;
        let session = self
            .sessions
            .get(&claims.sid)
            .await?
            .filter(|s| s.account_id == claims.aid)
            .ok_or_else(|| ApiError::unauthorized("the session has ended (logged out, or replaced by a newer login)"))?;
        Ok((claims, session))
    }

    /// Logs in with a verified identity: finds or creates the account, ends its other sessions,
    /// and issues a new session with a new refresh-token family.
    pub async fn login(&self, id: &Identity, now: u64) -> Result<Issued, ApiError> {
        let (aid, created) = self.accounts.find_or_create(id, now as i64).await?;
        self.limit_account(aid, now)?;
        for old in self.sessions.of_account(aid, now).await? {
            self.end_session(&old.sid, true, "takeover").await?;
            metrics::counter!("lobby_sessions_taken_over_total").increment(1);
        }
        let sid = hex(&random::<16>()?);
        let family = random::<16>()?;
        let session = Session {
            sid,
            account_id: aid,
            created_ms: now,
            expires_ms: now + self.cfg.session_ttl * 1000,
            family: hex(&family),
            ..Session::default()
        };
        self.sessions.put(&session, now).await?;
        let refresh_token = refresh::encode(&random::<{ refresh::REFRESH_TOKEN_BYTES }>()?);
        self.accounts
            .insert_refresh(
                &refresh::hash(&refresh_token),
                &family,
                aid,
                &session.sid,
                (now + self.cfg.refresh_ttl * 1000) as i64,
                now as i64,
            )
            .await?;
        metrics::counter!("lobby_logins_total", "platform" => if id.platform == "device" { "device" } else { "other" }).increment(1);
        if created {
            metrics::counter!("lobby_accounts_created_total").increment(1);
        }
        Ok(self.issue(&session, created, refresh_token, now))
    }

    fn issue(&self, s: &Session, created: bool, refresh_token: String, now: u64) -> Issued {
        let claims = SessionClaims {
            aid: s.account_id,
            sid: s.sid.clone(),
            iat: now / 1000,
            // Rounded up: a token never expires before its session does.
            exp: s.expires_ms.div_ceil(1000),
        };
        Issued {
            account_id: s.account_id,
            created,
            session_token: session_token::mint(self.cfg.session_secret.as_bytes(), &claims),
            session_expires_at: claims.exp,
            refresh_token,
        }
    }

    /// Ends a session: deletes it from Redis, revokes its refresh tokens, and (`kick`) asks its
    /// zone server to drop the player.
    pub async fn end_session(&self, sid: &str, kick: bool, why: &'static str) -> Result<(), ApiError> {
        let old = self.sessions.end(sid).await?;
        self.accounts.revoke_session(sid).await?;
        if let (true, Some(s)) = (kick, &old)
            && let (Some(z), Some(i)) = (&s.zone_id, &s.instance_id)
        {
            let mut c = self.sessions.conn.clone();
            tokio::time::timeout(
                self.sessions.timeout,
                zone_directory::push_kick(&mut c, &self.keys, z, i, s.account_id as u64),
            )
            .await
            .map_err(|_| ApiError::unavailable("redis_unavailable", "the kick did not answer in time"))??;
            metrics::counter!("lobby_kicks_total").increment(1);
        }
        tracing::info!(account_id = old.as_ref().map(|s| s.account_id), why, "session ended");
        Ok(())
    }

    /// Rotates a refresh token: a new session token and a new refresh token; reuse of a used or
    /// revoked token revokes its family and ends its session.
    pub async fn refresh(&self, token: &str, now: u64) -> Result<Issued, ApiError> {
        let refused = || ApiError::unauthorized("the refresh token is not valid");
        if !refresh::plausible(token) {
            return Err(refused());
        }
        let h = refresh::hash(token);
        let stored = self.accounts.get_refresh(&h).await?.ok_or_else(refused)?;
        self.limit_account(stored.account_id, now)?;
        let mut decision = refresh::decide(&stored, now as i64);
        let new_token = refresh::encode(&random::<{ refresh::REFRESH_TOKEN_BYTES }>()?);
        if decision == Decision::Rotate
            && !self
                .accounts
                .rotate_refresh(
                    &h,
                    &refresh::hash(&new_token),
                    (now + self.cfg.refresh_ttl * 1000) as i64,
                    now as i64,
                )
                .await?
        {
            // Used or revoked between the read and the rotation: a concurrent use.
            decision = Decision::ReuseDetected;
        }
        match decision {
            Decision::Expired => Err(ApiError::unauthorized("the refresh token has expired: log in again")),
            Decision::ReuseDetected => {
                metrics::counter!("lobby_refresh_reuse_total").increment(1);
                let revoked = self.accounts.revoke_family(&stored.family).await?;
                self.end_session(&stored.session_id, true, "refresh token reuse").await?;
                tracing::warn!(account_id = stored.account_id, revoked, "refresh token reuse: family revoked");
                Err(ApiError::unauthorized(
                    "the refresh token was already used or revoked: every token of its login is now revoked",
                ))
            }
            Decision::Rotate => {
                let mut s = match self.sessions.get(&stored.session_id).await? {
                    Some(s) if s.account_id == stored.account_id => s,
                    _ => Session {
                        sid: stored.session_id.clone(),
                        account_id: stored.account_id,
                        created_ms: now,
                        family: hex(&stored.family),
                        ..Session::default()
                    },
                };
                s.expires_ms = now + self.cfg.session_ttl * 1000;
                self.sessions.put(&s, now).await?;
                metrics::counter!("lobby_refreshes_total").increment(1);
                Ok(self.issue(&s, false, new_token, now))
            }
        }
    }

    /// Every live instance in the directory.
    pub async fn directory(&self, now: u64) -> Result<Vec<ZoneRecord>, ApiError> {
        let mut c = self.sessions.conn.clone();
        let r = tokio::time::timeout(self.sessions.timeout, zone_directory::list(&mut c, &self.keys, now))
            .await
            .map_err(|_| ApiError::unavailable("redis_unavailable", "the zone directory did not answer in time"))??;
        Ok(r)
    }

    /// Picks an instance of `zone_id`, reserves a seat and mints the join token.
    pub async fn join(&self, session: &Session, zone_id: &str, now: u64) -> Result<JoinResponse, ApiError> {
        let records = self.directory(now).await?;
        if !records.iter().any(|r| r.zone_id == zone_id) {
            metrics::counter!("lobby_join_requests_total", "outcome" => "unknown_zone").increment(1);
            return Err(ApiError::not_found(
                "unknown_zone",
                format!("no running zone server has zone {zone_id:?}"),
            ));
        }
        let expires_at = now / 1000 + self.cfg.join_token_ttl;
        let player_id = session.account_id as u64;
        for r in crate::choose::candidates(&records, zone_id, self.cfg.tick_budget_us()) {
            let mut c = self.sessions.conn.clone();
            let res = tokio::time::timeout(
                self.sessions.timeout,
                zone_directory::reserve_seat(&mut c, &self.keys, zone_id, &r.instance_id, player_id, now, expires_at * 1000),
            )
            .await
            .map_err(|_| ApiError::unavailable("redis_unavailable", "seat reservation did not answer in time"))??;
            if res != Reservation::Reserved {
                continue;
            }
            let grant = mint_join_token(self.cfg.token_secret.as_bytes(), player_id, zone_id, expires_at, random()?)
                .map_err(|e| ApiError::internal(format!("cannot mint a join token: {e}")))?;
            metrics::counter!("lobby_join_requests_total", "outcome" => "ok").increment(1);
            return Ok(JoinResponse {
                addr: r.addr.clone(),
                zone_id: zone_id.to_string(),
                instance_id: r.instance_id.clone(),
                session_key: encode_session_key(&grant.key),
                join_token: grant.token,
                expires_at,
            });
        }
        metrics::counter!("lobby_join_requests_total", "outcome" => "no_room").increment(1);
        Err(ApiError::conflict(
            "no_room",
            format!("no instance of zone {zone_id:?} can take a player now (all full, starting, draining or over their tick budget)"),
        ))
    }

    /// Applies the zone servers' join and leave reports; returns how many were applied.
    pub async fn apply_zone_events(&self, max: usize) -> Result<usize, ApiError> {
        let mut c = self.sessions.conn.clone();
        let events = tokio::time::timeout(self.sessions.timeout, zone_directory::pop_events(&mut c, &self.keys, max))
            .await
            .map_err(|_| ApiError::unavailable("redis_unavailable", "events did not answer in time"))??;
        let now = now_ms();
        for e in &events {
            let aid = e.player_id as i64;
            match e.kind {
                zone_directory::ZoneEventKind::Join => self.sessions.joined(aid, &e.zone_id, &e.instance_id, &e.addr, now).await?,
                zone_directory::ZoneEventKind::Leave => self.sessions.left(aid, &e.instance_id, now).await?,
            }
            metrics::counter!("lobby_zone_events_total", "kind" => if e.kind == zone_directory::ZoneEventKind::Join { "join" } else { "leave" })
                .increment(1);
        }
        Ok(events.len())
    }
}
