//! A small HTTP/1.1 client for the lobby's API (one keep-alive connection, reopened when it
//! breaks), used by `zone-bots --lobby`, the tests and the load benchmark.
//!
//! Never logs tokens; errors carry the status and the lobby's error code, not the request.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an http://HOST:PORT URL")]
    BadUrl(String),
    #[error("cannot reach the lobby at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the lobby answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot read the lobby's answer: {0}")]
    Decode(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// The HTTP status, when the lobby answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A login's answer.
#[derive(Clone, Debug, Deserialize)]
pub struct LoginAnswer {
    pub account_id: i64,
    pub created: bool,
    pub session_token: String,
    pub session_expires_at: u64,
    pub refresh_token: String,
}

/// A join's answer.
#[derive(Clone, Debug, Deserialize)]
pub struct JoinAnswer {
    pub addr: String,
    pub zone_id: String,
    pub instance_id: String,
    pub join_token: String,
    /// The session key, standard base64 of 32 bytes ([`JoinAnswer::grant`] decodes it).
    pub session_key: String,
    pub expires_at: u64,
}

impl JoinAnswer {
    /// The token and key to connect with, or `None` if the key is not 32 bytes of base64.
    pub fn grant(&self) -> Option<zone_net::token::JoinGrant> {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.decode(&self.session_key).ok()?;
        Some(zone_net::token::JoinGrant {
            token: self.join_token.clone(),
            key: key.try_into().ok()?,
        })
    }
}

/// A match request's or a ticket's answer: matched, still waiting, or ended.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // a short-lived answer
pub enum MatchAnswer {
    Matched(MatchedAnswer),
    Waiting {
        ticket_id: i64,
        window: f64,
        waited_ms: u64,
    },
    Cancelled {
        ticket_id: i64,
    },
    Refused {
        ticket_id: i64,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl MatchAnswer {
    pub fn ticket_id(&self) -> i64 {
        match self {
            MatchAnswer::Matched(m) => m.ticket_id,
            MatchAnswer::Waiting { ticket_id, .. } | MatchAnswer::Cancelled { ticket_id } | MatchAnswer::Refused { ticket_id, .. } => {
                *ticket_id
            }
        }
    }
}

/// A match, as one player sees it.
#[derive(Clone, Debug, Deserialize)]
pub struct MatchedAnswer {
    pub ticket_id: i64,
    pub match_id: i64,
    pub room_id: String,
    pub game_server: String,
    pub opponent_id: Option<i64>,
    pub opponent_ids: Vec<i64>,
    pub team: usize,
    pub teams: Vec<Vec<i64>>,
    pub join_token: String,
    pub session_key: String,
    pub zone_id: String,
    pub instance_id: String,
    pub expires_at: u64,
}

impl MatchedAnswer {
    /// The same fields as a join's answer, to connect the same way ([`JoinAnswer::grant`]).
    pub fn join(&self) -> JoinAnswer {
        JoinAnswer {
            addr: self.game_server.clone(),
            zone_id: self.zone_id.clone(),
            instance_id: self.instance_id.clone(),
            join_token: self.join_token.clone(),
            session_key: self.session_key.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// What to ask `POST /v1/match/request` for.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MatchOptions {
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub party: Vec<i64>,
    pub wait_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One connection to a lobby.
pub struct LobbyClient {
    host_port: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

/// A raw answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Bytes,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl LobbyClient {
    /// `http://HOST:PORT` (a trailing slash is fine). Connects on first use.
    pub fn new(base_url: &str) -> Result<LobbyClient, ClientError> {
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadUrl(base_url.into()))?;
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains('/') {
            return Err(ClientError::BadUrl(base_url.into()));
        }
        Ok(LobbyClient {
            host_port: host_port.to_string(),
            sender: None,
            timeout: Duration::from_secs(10),
        })
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        let usable = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if !usable {
            let stream = tokio::net::TcpStream::connect(&self.host_port)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.host_port.clone(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let s = self.sender.as_mut().ok_or(ClientError::Timeout(Duration::ZERO))?;
        s.ready().await?;
        Ok(s)
    }

    /// Sends one request; `body` is JSON text. Any status is returned (see [`Self::call`]).
    pub async fn request(&mut self, method: &str, path: &str, bearer: Option<&str>, body: Option<&str>) -> Result<Answer, ClientError> {
        let timeout = self.timeout;
        let host = self.host_port.clone();
        let fut = async {
            let mut b = hyper::Request::builder().method(method).uri(path).header("host", host);
            if let Some(t) = bearer {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            if body.is_some() {
                b = b.header("content-type", "application/json");
            }
            let req = b
                .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            let s = self.sender().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
            let body = resp.into_body().collect().await?.to_bytes();
            Ok(Answer { status, retry_after, body })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => {
                if r.is_err() {
                    self.sender = None;
                }
                r
            }
            Err(_) => {
                self.sender = None;
                Err(ClientError::Timeout(timeout))
            }
        }
    }

    /// Sends one request and decodes a 2xx answer; any other status is an error.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> Result<T, ClientError> {
        let a = self.request(method, path, bearer, body).await?;
        if !(200..300).contains(&a.status) {
            return Err(ClientError::Status {
                status: a.status,
                body: a.text().chars().take(300).collect(),
            });
        }
        a.json()
    }

    /// `POST /v1/auth/device`.
    pub async fn device_login(&mut self, device_id: &str) -> Result<LoginAnswer, ClientError> {
        let body = serde_json::json!({ "device_id": device_id }).to_string();
        self.call("POST", "/v1/auth/device", None, Some(&body)).await
    }

    /// Sets how long one call may take (long-polls wait up to 30 s; the default is 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    async fn match_call(
        &mut self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&str>,
        wait_ms: u64,
    ) -> Result<MatchAnswer, ClientError> {
        let saved = self.timeout;
        self.timeout = self.timeout.max(Duration::from_millis(wait_ms) + Duration::from_secs(5));
        let a = self.request(method, path, Some(bearer), body).await;
        self.timeout = saved;
        let a = a?;
        if !(200..300).contains(&a.status) {
            return Err(ClientError::Status {
                status: a.status,
                body: a.text().chars().take(300).collect(),
            });
        }
        a.json()
    }

    /// `POST /v1/match/request`: queues the session's player (and party); 200 matched or 202 waiting.
    pub async fn match_request(&mut self, session_token: &str, opts: &MatchOptions) -> Result<MatchAnswer, ClientError> {
        let body = serde_json::to_string(opts).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.match_call("POST", "/v1/match/request", session_token, Some(&body), opts.wait_ms)
            .await
    }

    /// `GET /v1/match/tickets/{id}?wait_ms=`: waits on a ticket.
    pub async fn wait_ticket(&mut self, session_token: &str, ticket_id: i64, wait_ms: u64) -> Result<MatchAnswer, ClientError> {
        self.match_call(
            "GET",
            &format!("/v1/match/tickets/{ticket_id}?wait_ms={wait_ms}"),
            session_token,
            None,
            wait_ms,
        )
        .await
    }

    /// `DELETE /v1/match/tickets/{id}`: cancels; a 409 error means it was matched first.
    pub async fn cancel_ticket(&mut self, session_token: &str, ticket_id: i64) -> Result<MatchAnswer, ClientError> {
        self.match_call("DELETE", &format!("/v1/match/tickets/{ticket_id}"), session_token, None, 0)
            .await
    }

    /// `POST /v1/match/{match_id}/result` with the service key: `ranks` has one rank per team
    /// (1 = winner). Returns whether it was applied now (false: it had been already).
    pub async fn report_result(&mut self, service_key: &str, match_id: i64, ranks: &[u32]) -> Result<bool, ClientError> {
        let body = serde_json::json!({ "ranks": ranks }).to_string();
        let v: serde_json::Value = self
            .call("POST", &format!("/v1/match/{match_id}/result"), Some(service_key), Some(&body))
            .await?;
        Ok(v["applied"].as_bool().unwrap_or(false))
    }

    /// `POST /v1/zones/{zone_id}/join`.
    pub async fn join(&mut self, session_token: &str, zone_id: &str) -> Result<JoinAnswer, ClientError> {
        self.call("POST", &format!("/v1/zones/{zone_id}/join"), Some(session_token), None)
            .await
    }
}
