//! Joining a zone: the answer a player gets, and the one place join tokens are minted.
//!
//! [`mint_join_token`] is the only caller of `zone_net::token::mint` in the lobby: whatever the
//! zone servers come to verify (a per-session key next to the token, say), it changes here and in
//! [`JoinResponse`] only. Pure: time is passed in.

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
    /// The join token to send in the client's Hello (HS256 JWT; player id, zone id, expiry).
    pub join_token: String,
    /// When the join token (and the seat reservation) expires, Unix seconds.
    pub expires_at: u64,
}

/// Mints the join token for `player_id` on `zone_id`, valid until `expires_at_unix`.
pub fn mint_join_token(
    token_secret: &[u8],
    player_id: u64,
    zone_id: &str,
    expires_at_unix: u64,
) -> Result<String, zone_net::token::TokenError> {
    zone_net::token::mint(token_secret, player_id, zone_id, expires_at_unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_accepts_what_the_lobby_mints() {
        let t = mint_join_token(b"zone secret", 42, "demo", 1_000).unwrap();
        let c = zone_net::token::verify(b"zone secret", &t, "demo", 999).unwrap();
        assert_eq!((c.player_id, c.zone_id.as_str(), c.exp), (42, "demo", 1_000));
        assert!(zone_net::token::verify(b"zone secret", &t, "other", 999).is_err());
    }
}
