//! Refresh tokens: opaque random strings, stored only as their SHA-256, rotated on every use.
//! Every token belongs to a family (one login); presenting a token that was already used or
//! revoked means it leaked, so the whole family is revoked (reuse detection).
//!
//! The decisions here are pure (time and randomness passed in); the rows live in PostgreSQL
//! (`accounts.rs`). Never log a token: only its hash prefix, if anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Random bytes in a refresh token.
pub const REFRESH_TOKEN_BYTES: usize = 32;
/// Longest refresh token looked at.
pub const REFRESH_TOKEN_CHARS_MAX: usize = 128;

/// A token as given to the client, from `REFRESH_TOKEN_BYTES` random bytes.
pub fn encode(random: &[u8; REFRESH_TOKEN_BYTES]) -> String {
    URL_SAFE_NO_PAD.encode(random)
}

/// What is stored: SHA-256 of the token's text.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A stored token's state, as read from the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    pub account_id: i64,
    pub family: Vec<u8>,
    pub session_id: String,
    pub expires_ms: i64,
    pub used: bool,
    pub revoked: bool,
}

/// What to do with a presented refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Valid: mark it used and issue its successor in the same family.
    Rotate,
    /// Already used or revoked: revoke the whole family and refuse (401).
    ReuseDetected,
    /// Past its expiry: refuse (401).
    Expired,
}

/// Decides on a token that exists (an unknown token is simply refused).
pub fn decide(t: &StoredToken, now_ms: i64) -> Decision {
    if t.used || t.revoked {
        Decision::ReuseDetected
    } else if now_ms >= t.expires_ms {
        Decision::Expired
    } else {
        Decision::Rotate
    }
}

/// Whether a presented string can be a refresh token at all (checked before any lookup).
pub fn plausible(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= REFRESH_TOKEN_CHARS_MAX
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> StoredToken {
        StoredToken {
            account_id: 1,
            family: vec![1; 16],
            session_id: "s".into(),
            expires_ms: 1000,
            used: false,
            revoked: false,
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&t(), 999), Decision::Rotate);
        assert_eq!(decide(&t(), 1000), Decision::Expired);
        assert_eq!(decide(&StoredToken { used: true, ..t() }, 0), Decision::ReuseDetected);
        assert_eq!(decide(&StoredToken { revoked: true, ..t() }, 0), Decision::ReuseDetected);
        // Reuse wins over expiry: a leaked old token still burns its family.
        assert_eq!(decide(&StoredToken { used: true, ..t() }, 5000), Decision::ReuseDetected);
    }

    #[test]
    fn encoding_and_hash() {
        let tok = encode(&[7; 32]);
        assert_eq!(tok.len(), 43);
        assert!(plausible(&tok));
        assert!(!plausible("") && !plausible("a b") && !plausible(&"a".repeat(200)));
        assert_eq!(hash(&tok), hash(&tok));
        assert_ne!(hash(&tok), hash(&encode(&[8; 32])));
    }
}
