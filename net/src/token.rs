//! Join tokens: JWTs signed with HS256 (a secret shared by the login service and the zone), naming
//! the player, the zone it may join and when it expires. The server checks one on `Hello`.
//!
//! Time is passed in (`now_unix`, seconds): nothing here reads a clock. The `jsonwebtoken` crate's
//! own expiry check (which does read the clock) is switched off and done here instead, with no
//! leeway: a token is expired from the second `now_unix >= exp`. The signature is checked before
//! any claim is trusted, and only HS256 is accepted (no `none`, no algorithm confusion).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest token accepted; anything longer is malformed without being parsed.
pub const TOKEN_BYTES_MAX: usize = crate::envelope::JOIN_TOKEN_BYTES_MAX;

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The player id the session will act as.
    #[serde(rename = "pid")]
    pub player_id: u64,
    /// The zone (instance) id the token is for.
    #[serde(rename = "zone")]
    pub zone_id: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Why a token was refused. Each maps to one `RejectReason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no join token was given")]
    Missing,
    #[error("the join token is not a well-formed HS256 JWT with our claims: {reason}")]
    Malformed { reason: String },
    #[error("the join token's signature does not verify")]
    BadSignature,
    #[error("the join token expired at {exp} (now {now_unix})")]
    Expired { exp: u64, now_unix: u64 },
    #[error("the join token is for zone {found:?}, not this one")]
    WrongZone { found: String },
}

impl TokenError {
    /// The `Reject` reason the server sends for this error.
    pub fn reject_reason(&self) -> crate::proto::RejectReason {
        use crate::proto::RejectReason as R;
        match self {
            TokenError::Missing => R::MissingToken,
            TokenError::Malformed { .. } | TokenError::BadSignature => R::BadSignature,
            TokenError::Expired { .. } => R::Expired,
            TokenError::WrongZone { .. } => R::WrongZone,
        }
    }
}

/// Signs a join token. Fails only if the claims cannot be serialized, which cannot happen for
/// these types; the error is reported rather than unwrapped all the same.
pub fn mint(secret: &[u8], player_id: u64, zone_id: &str, expires_at_unix: u64) -> Result<String, TokenError> {
    let claims = Claims {
        player_id,
        zone_id: zone_id.to_owned(),
        exp: expires_at_unix,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| TokenError::Malformed { reason: e.to_string() })
}

/// Checks a join token: shape, signature, then expiry against `now_unix`, then the zone.
pub fn verify(secret: &[u8], token: &str, expected_zone: &str, now_unix: u64) -> Result<Claims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed {
            reason: format!("{} bytes is over the {TOKEN_BYTES_MAX}-byte limit", token.len()),
        });
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false; // checked below against the time passed in
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        _ => TokenError::Malformed { reason: e.to_string() },
    })?;
    let claims = data.claims;
    if now_unix >= claims.exp {
        return Err(TokenError::Expired { exp: claims.exp, now_unix });
    }
    if claims.zone_id != expected_zone {
        return Err(TokenError::WrongZone { found: claims.zone_id });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test secret, 32 bytes or more!!!";
    const NOW: u64 = 1_800_000_000;

    fn token() -> String {
        mint(SECRET, 42, "zone-a", NOW + 60).unwrap()
    }

    #[test]
    fn round_trip() {
        let c = verify(SECRET, &token(), "zone-a", NOW).unwrap();
        assert_eq!(
            c,
            Claims {
                player_id: 42,
                zone_id: "zone-a".into(),
                exp: NOW + 60
            }
        );
        assert_eq!(verify(SECRET, &token(), "zone-a", NOW + 59).unwrap().player_id, 42);
    }

    #[test]
    fn missing() {
        assert_eq!(verify(SECRET, "", "zone-a", NOW), Err(TokenError::Missing));
        assert_eq!(TokenError::Missing.reject_reason(), crate::proto::RejectReason::MissingToken);
    }

    #[test]
    fn malformed() {
        for bad in ["x", "a.b.c", "....", &"a".repeat(TOKEN_BYTES_MAX + 1)] {
            assert!(
                matches!(verify(SECRET, bad, "zone-a", NOW), Err(TokenError::Malformed { .. })),
                "{bad}"
            );
        }
        // Validly signed, but missing our claims.
        #[derive(Serialize)]
        struct Other {
            exp: u64,
        }
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Other { exp: NOW + 60 },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(verify(SECRET, &t, "zone-a", NOW), Err(TokenError::Malformed { .. })));
        // Another algorithm, even with the same secret, is refused.
        let claims = Claims {
            player_id: 1,
            zone_id: "zone-a".into(),
            exp: NOW + 60,
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        assert!(verify(SECRET, &t, "zone-a", NOW).is_err());
        // alg "none" with no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJwaWQiOjEsInpvbmUiOiJ6b25lLWEiLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(verify(SECRET, none, "zone-a", NOW).is_err());
    }

    #[test]
    fn bad_signature() {
        assert_eq!(verify(b"another secret", &token(), "zone-a", NOW), Err(TokenError::BadSignature));
        // Well-formed header and claims, no signature.
        assert_eq!(
            verify(SECRET, "eyJhbGciOiJIUzI1NiJ9.e30.", "zone-a", NOW),
            Err(TokenError::BadSignature)
        );
        // A tampered payload (player 43 instead of 42) with the original signature.
        let t = token();
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = Claims {
            player_id: 43,
            zone_id: "zone-a".into(),
            exp: NOW + 60,
        };
        let forged = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &forged_claims, &EncodingKey::from_secret(b"x")).unwrap();
        let forged_payload = forged.split('.').nth(1).unwrap();
        let spliced = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verify(SECRET, &spliced, "zone-a", NOW), Err(TokenError::BadSignature));
        // An expired token with a bad signature reports the signature: claims are not trusted first.
        let old = mint(b"x", 42, "zone-a", NOW - 10).unwrap();
        assert_eq!(verify(SECRET, &old, "zone-a", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired() {
        assert_eq!(
            verify(SECRET, &token(), "zone-a", NOW + 60),
            Err(TokenError::Expired {
                exp: NOW + 60,
                now_unix: NOW + 60
            })
        );
        assert!(matches!(
            verify(SECRET, &token(), "zone-a", u64::MAX),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn wrong_zone() {
        assert_eq!(
            verify(SECRET, &token(), "zone-b", NOW),
            Err(TokenError::WrongZone { found: "zone-a".into() })
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let t = token();
        for at in 0..t.len() {
            for bit in 0..7 {
                let mut b = t.clone().into_bytes();
                b[at] ^= 1 << bit;
                let Ok(s) = String::from_utf8(b) else { continue };
                if let Ok(c) = verify(SECRET, &s, "zone-a", NOW) {
                    // Base64 has a few bits that decode to the same bytes; the claims must be unchanged.
                    assert_eq!(c.player_id, 42, "flip at {at} bit {bit}");
                }
            }
        }
    }
}
