//! Joining a zone: the answer a player gets, and the one place join tokens are minted.
//!
//! [`mint_join_token`] is the only caller of `zone_net::token::mint` in the lobby: whatever the
//! zone servers come to verify changes here and in [`JoinResponse`] only. The token carries the
//! session's key sealed for the zone servers; the player gets the same key beside it
//! (`session_key`), to seal every datagram after the Hello (docs/PROTOCOL.md). Pure: time and
//! randomness are passed in.

use serde::Serialize;
use utoipa::ToSchema;

/// `POST /v1/zones/{zone_id}/join`'s answer. Adding a field is one line.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JoinResponse {
    /// UDP address of the zone server, `HOST:PORT`.
    pub addr: String,
    pub zone_id: String,
    /// The instance the seat was reserved on.
    pub instance_id: String,
    /// The join token to send in the client's Hello (player id, zone id, expiry, and the session
    /// key sealed for the zone servers; docs/PROTOCOL.md).
    pub join_token: String,
    /// The session's key, 32 bytes in standard base64: the client seals its datagrams with it
    /// after the Hello and opens the server's. Keep it secret, like the token.
    pub session_key: String,
    /// When the join token (and the seat reservation) expires, Unix seconds.
    pub expires_at: u64,
}

/// Mints the join token and session key for `player_id` on `zone_id`, valid until
/// `expires_at_unix`; `entropy` must come from a CSPRNG (it makes the session key).
pub fn mint_join_token(
    token_secret: &[u8],
    player_id: u64,
    zone_id: &str,
    expires_at_unix: u64,
    entropy: [u8; 32],
) -> Result<zone_net::token::JoinGrant, zone_net::token::TokenError> {
    zone_net::token::mint(token_secret, player_id, zone_id, expires_at_unix, entropy)
}

/// The session key as [`JoinResponse::session_key`] carries it.
pub fn encode_session_key(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_accepts_what_the_lobby_mints() {
        let g = mint_join_token(b"zone secret", 42, "demo", 1_000, [7; 32]).unwrap();
        let c = zone_net::token::verify(b"zone secret", &g.token, "demo", 999).unwrap();
        assert_eq!((c.player_id, c.zone_id.as_str(), c.exp), (42, "demo", 1_000));
        assert!(zone_net::token::verify(b"zone secret", &g.token, "other", 999).is_err());
        assert_eq!(encode_session_key(&g.key).len(), 44);
    }
}
