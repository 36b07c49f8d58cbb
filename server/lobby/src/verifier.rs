//! Platform verifiers: how the lobby checks that a caller owns a platform identity before it
//! binds it to an account or logs in with it.
//!
//! Two work offline and ship here: `device` (a device id is its own proof: whoever holds the id is
//! the device; ids are checked for shape only) and `dev` (the proof is the hex HMAC-SHA256 of the
//! user id under a configured key, compared in constant time; for development and tests). A real
//! platform plugs in by implementing [`Verifier`] and registering it in [`Verifiers`]: a Steam
//! verifier would call `ISteamUserAuth/AuthenticateUserTicket` with the session ticket as proof
//! and compare the returned SteamID with the claimed user id; an Epic verifier would check the
//! EOS ID token's signature against Epic's published JWKS and read its `sub`. Both are async
//! network calls, which is why [`Verifier::verify`] returns a future.
//!
//! Never logs a proof or a key.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest platform user id accepted.
pub const USER_ID_CHARS_MAX: usize = 128;

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("unknown platform {0:?}")]
    UnknownPlatform(String),
    #[error("the user id must be 1 to 128 characters of letters, digits and - _ . :")]
    BadUserId,
    #[error("the proof does not verify")]
    BadProof,
    #[error("the platform could not be asked: {0}")]
    Unavailable(String),
}

pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), VerifyError>> + Send + 'a>>;

/// Checks that whoever calls owns `user_id` on one platform.
pub trait Verifier: Send + Sync {
    /// The platform's name as clients send it (`device`, `dev`, `steam`, ...).
    fn platform(&self) -> &'static str;
    /// Checks `proof` for `user_id`.
    fn verify<'a>(&'a self, user_id: &'a str, proof: &'a str) -> VerifyFuture<'a>;
}

/// Whether a user id has an acceptable shape.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= USER_ID_CHARS_MAX && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// A device id is its own proof.
pub struct DeviceVerifier;

impl Verifier for DeviceVerifier {
    fn platform(&self) -> &'static str {
        "device"
    }
    fn verify<'a>(&'a self, user_id: &'a str, _proof: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            if valid_user_id(user_id) {
                Ok(())
            } else {
                Err(VerifyError::BadUserId)
            }
        })
    }
}

/// Proof = lowercase hex of HMAC-SHA256(key, user id).
pub struct DevVerifier {
    key: Vec<u8>,
}

impl DevVerifier {
    pub fn new(key: &[u8]) -> DevVerifier {
        DevVerifier { key: key.to_vec() }
    }

    /// The proof for `user_id` (what a dev client sends).
    pub fn proof(key: &[u8], user_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(user_id.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn check(&self, user_id: &str, proof: &str) -> Result<(), VerifyError> {
        if !valid_user_id(user_id) {
            return Err(VerifyError::BadUserId);
        }
        let bytes = decode_hex(proof).ok_or(VerifyError::BadProof)?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).map_err(|_| VerifyError::BadProof)?;
        mac.update(user_id.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&bytes).map_err(|_| VerifyError::BadProof)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Verifier for DevVerifier {
    fn platform(&self) -> &'static str {
        "dev"
    }
    fn verify<'a>(&'a self, user_id: &'a str, proof: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move { self.check(user_id, proof) })
    }
}

/// The verifiers a lobby knows, by platform name.
#[derive(Clone, Default)]
pub struct Verifiers {
    by_platform: BTreeMap<&'static str, Arc<dyn Verifier>>,
}

impl Verifiers {
    /// `device`, plus `dev` when a key is configured.
    pub fn standard(dev_key: Option<&[u8]>) -> Verifiers {
        let mut v = Verifiers::default();
        v.register(Arc::new(DeviceVerifier));
        if let Some(k) = dev_key {
            v.register(Arc::new(DevVerifier::new(k)));
        }
        v
    }
    pub fn register(&mut self, v: Arc<dyn Verifier>) {
        self.by_platform.insert(v.platform(), v);
    }
    pub fn platforms(&self) -> Vec<&'static str> {
        self.by_platform.keys().copied().collect()
    }
    pub async fn verify(&self, platform: &str, user_id: &str, proof: &str) -> Result<(), VerifyError> {
        let v = self
            .by_platform
            .get(platform)
            .ok_or_else(|| VerifyError::UnknownPlatform(platform.chars().take(32).collect()))?;
        v.verify(user_id, proof).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn dev_proofs() {
        let v = Verifiers::standard(Some(b"k"));
        let p = DevVerifier::proof(b"k", "alice");
        assert_eq!(p.len(), 64);
        assert_eq!(block(v.verify("dev", "alice", &p)), Ok(()));
        assert_eq!(block(v.verify("dev", "bob", &p)), Err(VerifyError::BadProof));
        assert_eq!(block(v.verify("dev", "alice", &p[..62])), Err(VerifyError::BadProof));
        assert_eq!(block(v.verify("dev", "alice", "zz")), Err(VerifyError::BadProof));
        assert_eq!(block(v.verify("dev", "", &p)), Err(VerifyError::BadUserId));
        assert!(matches!(block(v.verify("steam", "1", "x")), Err(VerifyError::UnknownPlatform(_))));
        assert_eq!(block(v.verify("device", "dev-123", "")), Ok(()));
        assert_eq!(block(v.verify("device", "has space", "")), Err(VerifyError::BadUserId));
        // Without a key, `dev` is not offered at all.
        assert!(Verifiers::standard(None).platforms() == vec!["device"]);
    }
}
