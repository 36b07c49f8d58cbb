//! Join tokens: JWTs signed with HS256 (a secret shared by the login service and the zone), naming
//! the player, the zone it may join and when it expires, and carrying the session's 32-byte
//! sealing key (see [`crate::seal`]) encrypted so that only zone servers can read it. The server
//! checks one on `Hello`; [`mint`] gives the token and, beside it, the same key for the client
//! ([`JoinGrant`]).
//!
//! The key travels as the `key` claim: base64url (no padding) of `nonce (24 bytes) ‖ XChaCha20-
//! Poly1305(token key, nonce, session key, aad = "pid|zone|exp")`, where the token key is
//! SHA-256("zone-net join-token key v2" ‖ secret). The session key and the nonce are derived from
//! the 32 bytes of entropy the caller passes (SHA-256 with distinct labels), so this module needs no
//! randomness of its own: pass fresh OS randomness for every token.
//!
//! Time is passed in (`now_unix`, seconds): nothing here reads a clock. The `jsonwebtoken` crate's
//! own expiry check (which does read the clock) is switched off and done here instead, with no
//! leeway: a token is expired from the second `now_unix >= exp`. The signature is checked before
//! any claim is trusted, and only HS256 is accepted (no `none`, no algorithm confusion).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest token accepted; anything longer is malformed without being parsed.
pub const TOKEN_BYTES_MAX: usize = crate::envelope::JOIN_TOKEN_BYTES_MAX;

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The player id the session will act as.
    pub player_id: u64,
    /// The zone (instance) id the token is for.
    pub zone_id: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// The session's sealing key (see [`crate::seal`]).
    pub session_key: [u8; 32],
}

/// The claims as the JWT carries them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WireClaims {
    pid: u64,
    zone: String,
    exp: u64,
    /// The sealed session key, base64url.
    key: String,
}

/// What a token minter hands out: the token for the client to present, and the session key the
/// client seals its datagrams with (sent to the client beside the token, over the lobby's TLS).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinGrant {
    pub token: String,
    pub key: [u8; 32],
}

impl std::fmt::Debug for JoinGrant {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinGrant")
            .field("token", &self.token)
            .field("key", &"<32 bytes>")
            .finish()
    }
}

fn labelled(label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(data);
    h.finalize().into()
}

fn token_cipher(secret: &[u8]) -> XChaCha20Poly1305 {
    let key = labelled(b"zone-net join-token key v2", secret);
    XChaCha20Poly1305::new(&key.into())
}

fn key_aad(player_id: u64, zone_id: &str, exp: u64) -> Vec<u8> {
    format!("{player_id}|{zone_id}|{exp}").into_bytes()
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

/// Mints a join token and its session key from 32 bytes of fresh `entropy` (OS randomness: the
/// key is derived from it). Fails only if the claims cannot be serialized or sealed, which cannot
/// happen for these types; the error is reported rather than unwrapped all the same.
pub fn mint(secret: &[u8], player_id: u64, zone_id: &str, exp: u64, entropy: [u8; 32]) -> Result<JoinGrant, TokenError> {
    let session_key = labelled(b"zone-net session key", &entropy);
    let nonce_bytes = labelled(b"zone-net join-token nonce", &entropy);
    let nonce = XNonce::from_slice(&nonce_bytes[..24]);
    let aad = key_aad(player_id, zone_id, exp);
    let sealed = token_cipher(secret)
        .encrypt(
            nonce,
            Payload {
                msg: &session_key,
                aad: &aad,
            },
        )
        .map_err(|_| TokenError::Malformed {
            reason: "cannot seal the session key".into(),
        })?;
    let mut carried = nonce_bytes[..24].to_vec();
    carried.extend_from_slice(&sealed);
    let claims = WireClaims {
        pid: player_id,
        zone: zone_id.to_owned(),
        exp,
        key: URL_SAFE_NO_PAD.encode(carried),
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| TokenError::Malformed { reason: e.to_string() })?;
    Ok(JoinGrant { token, key: session_key })
}

/// The session key a token carries, opened with the zone's secret.
fn open_key(secret: &[u8], c: &WireClaims) -> Result<[u8; 32], TokenError> {
    let malformed = |reason: &str| TokenError::Malformed { reason: reason.into() };
    let carried = URL_SAFE_NO_PAD
        .decode(&c.key)
        .map_err(|_| malformed("the key claim is not base64url"))?;
    if carried.len() != 24 + 32 + 16 {
        return Err(malformed("the key claim has the wrong length"));
    }
    let (nonce, sealed) = carried.split_at(24);
    let aad = key_aad(c.pid, &c.zone, c.exp);
    let key = token_cipher(secret)
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
        .map_err(|_| TokenError::BadSignature)?;
    <[u8; 32]>::try_from(key.as_slice()).map_err(|_| malformed("the session key has the wrong length"))
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
    let data = jsonwebtoken::decode::<WireClaims>(token, &DecodingKey::from_secret(secret), &validation).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        _ => TokenError::Malformed { reason: e.to_string() },
    })?;
    let claims = data.claims;
    if now_unix >= claims.exp {
        return Err(TokenError::Expired { exp: claims.exp, now_unix });
    }
    if claims.zone != expected_zone {
        return Err(TokenError::WrongZone { found: claims.zone });
    }
    let session_key = open_key(secret, &claims)?;
    Ok(Claims {
        player_id: claims.pid,
        zone_id: claims.zone,
        exp: claims.exp,
        session_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test secret, 32 bytes or more!!!";
    const NOW: u64 = 1_800_000_000;

    fn grant() -> JoinGrant {
        mint(SECRET, 42, "zone-a", NOW + 60, [3; 32]).unwrap()
    }

    fn token() -> String {
        grant().token
    }

    #[test]
    fn round_trip() {
        let g = grant();
        let c = verify(SECRET, &g.token, "zone-a", NOW).unwrap();
        assert_eq!(
            c,
            Claims {
                player_id: 42,
                zone_id: "zone-a".into(),
                exp: NOW + 60,
                session_key: g.key,
            }
        );
        assert_eq!(verify(SECRET, &token(), "zone-a", NOW + 59).unwrap().player_id, 42);
        // Other entropy, another key; the key never appears in the token in clear.
        let other = mint(SECRET, 42, "zone-a", NOW + 60, [4; 32]).unwrap();
        assert_ne!(other.key, g.key);
        assert!(!g.token.contains(&URL_SAFE_NO_PAD.encode(g.key)));
        assert!(!format!("{g:?}").contains(&format!("{:?}", g.key)));
    }

    #[test]
    fn a_key_sealed_under_another_secret_or_for_other_claims_does_not_open() {
        // A token signed with our secret but carrying a key sealed for another player.
        let theirs = mint(SECRET, 43, "zone-a", NOW + 60, [5; 32]).unwrap();
        let data = jsonwebtoken::dangerous::insecure_decode::<WireClaims>(&theirs.token).unwrap();
        let spliced = WireClaims { pid: 42, ..data.claims };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &spliced, &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(verify(SECRET, &t, "zone-a", NOW), Err(TokenError::BadSignature));
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
        let claims = WireClaims {
            pid: 1,
            zone: "zone-a".into(),
            exp: NOW + 60,
            key: String::new(),
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
        let forged_claims = WireClaims {
            pid: 43,
            zone: "zone-a".into(),
            exp: NOW + 60,
            key: String::new(),
        };
        let forged = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &forged_claims, &EncodingKey::from_secret(b"x")).unwrap();
        let forged_payload = forged.split('.').nth(1).unwrap();
        let spliced = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verify(SECRET, &spliced, "zone-a", NOW), Err(TokenError::BadSignature));
        // An expired token with a bad signature reports the signature: claims are not trusted first.
        let old = mint(b"x", 42, "zone-a", NOW - 10, [1; 32]).unwrap().token;
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
