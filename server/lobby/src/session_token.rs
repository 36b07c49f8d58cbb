//! Session tokens: HS256 JWTs signed with the lobby's session secret, naming the account, the
//! session and the expiry. A valid signature and expiry are necessary, not sufficient: the
//! session must also still exist in Redis (a logout or a takeover ends it before its expiry).
//!
//! Time is passed in (`now_unix`); nothing here reads a clock or does IO. Only HS256 is
//! accepted, the signature is checked before any claim is trusted, and expiry has no leeway.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest session token looked at.
pub const SESSION_TOKEN_BYTES_MAX: usize = 1024;

/// What a session token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Account id (also the player id on zone servers).
    pub aid: i64,
    /// Session id (the Redis hash's name).
    pub sid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Why a session token was refused; every one is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionTokenError {
    #[error("no session token: send `Authorization: Bearer <session_token>`")]
    Missing,
    #[error("the session token is malformed")]
    Malformed,
    #[error("the session token's signature does not verify")]
    BadSignature,
    #[error("the session token expired")]
    Expired,
}

/// Signs a session token.
pub fn mint(secret: &[u8], claims: &SessionClaims) -> String {
    // Serializing these plain fields cannot fail; an empty token would be refused anyway.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

/// Checks a session token's shape, signature and expiry against `now_unix`.
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<SessionClaims, SessionTokenError> {
    if token.is_empty() {
        return Err(SessionTokenError::Missing);
    }
    if token.len() > SESSION_TOKEN_BYTES_MAX {
        return Err(SessionTokenError::Malformed);
    }
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<SessionClaims>(token, &DecodingKey::from_secret(secret), &v).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => SessionTokenError::BadSignature,
        _ => SessionTokenError::Malformed,
    })?;
    if now_unix >= data.claims.exp {
        return Err(SessionTokenError::Expired);
    }
    Ok(data.claims)
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, SessionTokenError> {
    let h = header.ok_or(SessionTokenError::Missing)?.trim();
    let (scheme, token) = h.split_once(' ').ok_or(SessionTokenError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(SessionTokenError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &[u8] = b"a session secret of enough bytes";
    fn claims() -> SessionClaims {
        SessionClaims {
            aid: 7,
            sid: "s1".into(),
            iat: 100,
            exp: 1000,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let t = mint(S, &claims());
        assert_eq!(verify(S, &t, 999).unwrap(), claims());
        assert_eq!(verify(S, &t, 1000), Err(SessionTokenError::Expired));
        assert_eq!(verify(b"other secret", &t, 500), Err(SessionTokenError::BadSignature));
        assert_eq!(verify(S, "", 500), Err(SessionTokenError::Missing));
        assert_eq!(verify(S, "a.b.c", 500), Err(SessionTokenError::Malformed));
        // A join token (other claims) signed with the same secret is not a session token.
        let j = zone_net::token::mint(S, 7, "demo", 1000, [1; 32]).unwrap();
        assert_eq!(verify(S, &j.token, 500), Err(SessionTokenError::Malformed));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(SessionTokenError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(SessionTokenError::Malformed));
        assert_eq!(bearer(Some("abc")), Err(SessionTokenError::Malformed));
    }
}
