//! Sessions in Redis: one hash per session with a TTL, and two secondary indexes kept in step
//! with it:
//! - `{prefix}sess:{sid}`: hash (aid, created_ms, expires_ms, family, zone_id, instance_id, addr),
//!   expiring with the session;
//! - `{prefix}acct:{aid}:sess`: sorted set of the account's session ids, scored with each
//!   session's expiry (ms), expiring with the newest session;
//! - `{prefix}zone:{zone_id}:sess`: sorted set of the sessions in that zone, scored the same way.
//!
//! An index entry can outlive its session (a crash between two writes, an expiry): every read
//! drops entries whose score has passed and entries whose hash is gone (read repair), so callers
//! never see a dangling session. No `KEYS` or `SCAN` anywhere.
//!
//! Time is passed in. Never logs a token.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;

/// One session as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    pub sid: String,
    pub account_id: i64,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The refresh-token family issued with this session (hex).
    pub family: String,
    pub zone_id: Option<String>,
    pub instance_id: Option<String>,
    pub addr: Option<String>,
}

/// Why a session operation failed: Redis is down or slow (the caller answers 503).
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error("Redis {op}: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis {op}: no answer within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
}

/// The session store (and the Redis connection the directory shares).
#[derive(Clone)]
pub struct Sessions {
    pub conn: ConnectionManager,
    prefix: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("prefix", &self.prefix).finish()
    }
}

pub(crate) async fn bounded<T>(
    op: &'static str,
    timeout: Duration,
    f: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, SessionsError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|source| SessionsError::Redis { op, source }),
        Err(_) => Err(SessionsError::Timeout { op, timeout }),
    }
}

impl Sessions {
    /// A lazy connection: the lobby starts while Redis is down, and answers 503 until it is back.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Sessions, SessionsError> {
        let client = redis::Client::open(url).map_err(|source| SessionsError::Redis { op: "parse url", source })?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(|source| SessionsError::Redis { op: "connect", source })?;
        Ok(Sessions {
            conn,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    fn sess_key(&self, sid: &str) -> String {
        format!("{}sess:{sid}", self.prefix)
    }
    fn acct_key(&self, aid: i64) -> String {
        format!("{}acct:{aid}:sess", self.prefix)
    }
    fn zone_key(&self, zone_id: &str) -> String {
        format!("{}zone:{zone_id}:sess", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), SessionsError> {
        let mut c = self.conn.clone();
        bounded("ping", self.timeout, redis::cmd("PING").query_async::<String>(&mut c)).await?;
        Ok(())
    }

    /// Writes a session (new, or refreshed with a later expiry) and its index entries.
    pub async fn put(&self, s: &Session, now_ms: u64) -> Result<(), SessionsError> {
        let ttl_ms = s.expires_ms.saturating_sub(now_ms).max(1);
        let key = self.sess_key(&s.sid);
        let acct = self.acct_key(s.account_id);
        let mut p = redis::pipe();
        p.cmd("DEL").arg(&key).ignore();
        p.cmd("HSET")
            .arg(&key)
            .arg("aid")
            .arg(s.account_id)
            .arg("created_ms")
            .arg(s.created_ms)
            .arg("expires_ms")
            .arg(s.expires_ms)
            .arg("family")
            .arg(&s.family)
            .ignore();
        if let (Some(z), Some(i), Some(a)) = (&s.zone_id, &s.instance_id, &s.addr) {
            p.cmd("HSET")
                .arg(&key)
                .arg("zone_id")
                .arg(z)
                .arg("instance_id")
                .arg(i)
                .arg("addr")
                .arg(a)
                .ignore();
            let zk = self.zone_key(z);
            p.cmd("ZADD").arg(&zk).arg(s.expires_ms).arg(&s.sid).ignore();
            p.cmd("PEXPIRE").arg(&zk).arg(ttl_ms).arg("GT").ignore();
            p.cmd("PEXPIRE").arg(&zk).arg(ttl_ms).arg("NX").ignore();
        }
        p.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        p.cmd("ZADD").arg(&acct).arg(s.expires_ms).arg(&s.sid).ignore();
        // The index lives as long as its longest-lived session.
        p.cmd("PEXPIRE").arg(&acct).arg(ttl_ms).arg("GT").ignore();
        p.cmd("PEXPIRE").arg(&acct).arg(ttl_ms).arg("NX").ignore();
        let mut c = self.conn.clone();
        bounded("put session", self.timeout, p.query_async::<()>(&mut c)).await
    }

    /// A session, if it still exists.
    pub async fn get(&self, sid: &str) -> Result<Option<Session>, SessionsError> {
        let mut c = self.conn.clone();
        let h: HashMap<String, String> = bounded(
            "get session",
            self.timeout,
            redis::cmd("HGETALL").arg(self.sess_key(sid)).query_async(&mut c),
        )
        .await?;
        Ok(parse(sid, &h))
    }

    /// Ends a session: deletes it and its index entries. Returns what it was.
    pub async fn end(&self, sid: &str) -> Result<Option<Session>, SessionsError> {
        let old = self.get(sid).await?;
        let mut p = redis::pipe();
        p.cmd("DEL").arg(self.sess_key(sid)).ignore();
        if let Some(s) = &old {
            p.cmd("ZREM").arg(self.acct_key(s.account_id)).arg(sid).ignore();
            if let Some(z) = &s.zone_id {
                p.cmd("ZREM").arg(self.zone_key(z)).arg(sid).ignore();
            }
        }
        let mut c = self.conn.clone();
        bounded("end session", self.timeout, p.query_async::<()>(&mut c)).await?;
        Ok(old)
    }

    /// The live sessions of an account; dangling index entries are removed on the way.
    pub async fn of_account(&self, account_id: i64, now_ms: u64) -> Result<Vec<Session>, SessionsError> {
        let key = self.acct_key(account_id);
        let sids = self.live_members(&key, now_ms).await?;
        let mut out = Vec::with_capacity(sids.len());
        let mut dangling = Vec::new();
        if !sids.is_empty() {
            let mut p = redis::pipe();
            for sid in &sids {
                p.cmd("HGETALL").arg(self.sess_key(sid));
            }
            let mut c = self.conn.clone();
            let hs: Vec<HashMap<String, String>> = bounded("read sessions", self.timeout, p.query_async(&mut c)).await?;
            for (sid, h) in sids.iter().zip(hs) {
                match parse(sid, &h) {
                    Some(s) if s.account_id == account_id => out.push(s),
                    _ => dangling.push(sid.clone()),
                }
            }
        }
        self.repair(&key, &dangling).await?;
        Ok(out)
    }

    /// The sessions in a zone (ids); dangling index entries are removed on the way.
    pub async fn in_zone(&self, zone_id: &str, now_ms: u64) -> Result<Vec<String>, SessionsError> {
        let key = self.zone_key(zone_id);
        let sids = self.live_members(&key, now_ms).await?;
        let mut live = Vec::with_capacity(sids.len());
        let mut dangling = Vec::new();
        if !sids.is_empty() {
            let mut p = redis::pipe();
            for sid in &sids {
                p.cmd("HGET").arg(self.sess_key(sid)).arg("zone_id");
            }
            let mut c = self.conn.clone();
            let zones: Vec<Option<String>> = bounded("read session zones", self.timeout, p.query_async(&mut c)).await?;
            for (sid, z) in sids.into_iter().zip(zones) {
                if z.as_deref() == Some(zone_id) {
                    live.push(sid);
                } else {
                    dangling.push(sid);
                }
            }
        }
        self.repair(&key, &dangling).await?;
        Ok(live)
    }

    /// Members whose score (expiry) has not passed, after dropping those that have.
    async fn live_members(&self, key: &str, now_ms: u64) -> Result<Vec<String>, SessionsError> {
        let mut c = self.conn.clone();
        let (sids,): (Vec<String>,) = bounded(
            "read index",
            self.timeout,
            redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(key)
                .arg("-inf")
                .arg(format!("({now_ms}"))
                .ignore()
                .cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c),
        )
        .await?;
        Ok(sids)
    }

    async fn repair(&self, key: &str, dangling: &[String]) -> Result<(), SessionsError> {
        if dangling.is_empty() {
            return Ok(());
        }
        metrics::counter!("lobby_index_repairs_total").increment(dangling.len() as u64);
        let mut c = self.conn.clone();
        bounded(
            "repair index",
            self.timeout,
            redis::cmd("ZREM").arg(key).arg(dangling).query_async::<()>(&mut c),
        )
        .await
    }

    /// A join reported by a zone server: the account's sessions now are in that zone.
    pub async fn joined(&self, account_id: i64, zone_id: &str, instance_id: &str, addr: &str, now_ms: u64) -> Result<(), SessionsError> {
        for mut s in self.of_account(account_id, now_ms).await? {
            if let Some(old) = s.zone_id.as_deref().filter(|z| *z != zone_id) {
                let mut c = self.conn.clone();
                bounded(
                    "leave old zone",
                    self.timeout,
                    redis::cmd("ZREM").arg(self.zone_key(old)).arg(&s.sid).query_async::<()>(&mut c),
                )
                .await?;
            }
            s.zone_id = Some(zone_id.to_string());
            s.instance_id = Some(instance_id.to_string());
            s.addr = Some(addr.to_string());
            self.put(&s, now_ms).await?;
        }
        Ok(())
    }

    /// A leave reported by a zone server: sessions on that instance are in no zone now.
    pub async fn left(&self, account_id: i64, instance_id: &str, now_ms: u64) -> Result<(), SessionsError> {
        for s in self.of_account(account_id, now_ms).await? {
            if s.instance_id.as_deref() != Some(instance_id) {
                continue;
            }
            let mut p = redis::pipe();
            p.cmd("HDEL")
                .arg(self.sess_key(&s.sid))
                .arg("zone_id")
                .arg("instance_id")
                .arg("addr")
                .ignore();
            if let Some(z) = &s.zone_id {
                p.cmd("ZREM").arg(self.zone_key(z)).arg(&s.sid).ignore();
            }
            let mut c = self.conn.clone();
            bounded("leave zone", self.timeout, p.query_async::<()>(&mut c)).await?;
        }
        Ok(())
    }
}

fn parse(sid: &str, h: &HashMap<String, String>) -> Option<Session> {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(Session {
        sid: sid.to_string(),
        account_id: h.get("aid")?.parse().ok()?,
        created_ms: num("created_ms").unwrap_or(0),
        expires_ms: num("expires_ms").unwrap_or(0),
        family: h.get("family").cloned().unwrap_or_default(),
        zone_id: h.get("zone_id").cloned(),
        instance_id: h.get("instance_id").cloned(),
        addr: h.get("addr").cloned(),
    })
}
