//! The gate's screening of a stranger's datagram, as a pure function: is it a well-formed `Hello`
//! of our protocol whose join token verifies and which returns our cookie? [`screen`] answers with
//! a [`Verdict`] (admit, challenge, refuse with a reply, or drop) and the reason it is counted
//! under ([`Rejection`]); the cookie itself ([`cookie`]) is a keyed hash of the source address and
//! the time period, also pure.
//!
//! The server's socket wrapper (`server/src/net/gate.rs`) owns the state around it (which
//! addresses are admitted, per-IP token buckets, the process's cookie key) and sends the replies;
//! this module never sees a socket, a clock or an address type: the caller passes the address as
//! bytes and the time as numbers. Never panics on any bytes.

use sha2::{Digest, Sha256};

use crate::envelope::{EnvelopeError, PROTOCOL_VERSION, Stamp, decode_client, encode_server, reject};
use crate::proto::{Challenge, Channel, Hello, RejectReason, client_envelope, server_envelope};
use crate::wire;

/// Seconds per cookie period; a cookie is accepted in its period and the next (10 to 20 s).
pub const COOKIE_PERIOD_S: u64 = 10;
/// Bytes in the server's cookies.
pub const COOKIE_BYTES: usize = 16;

/// Why a datagram, join or input was refused. The label is the `reason` of
/// `zone_net_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    Oversized,
    NotOurProtocol,
    Malformed,
    NotJoined,
    BadVersion,
    HandshakeRate,
    NoSecret,
    MissingToken,
    BadSignature,
    Expired,
    WrongZone,
    ZoneFull,
    Draining,
    PeerRate,
    InputTooOld,
    InputTooFar,
    InputQueueFull,
    ControlQueueFull,
    /// A joined session's datagram in plaintext (only the Hello may be).
    Unsealed,
    /// A sealed datagram that does not authenticate.
    Forged,
    /// A sealed datagram whose counter was already accepted, or is too old.
    Replayed,
}

impl Rejection {
    /// Every reason, in declaration order (so `ALL[r as usize] == r`).
    pub const ALL: [Rejection; 21] = [
        Rejection::Oversized,
        Rejection::NotOurProtocol,
        Rejection::Malformed,
        Rejection::NotJoined,
        Rejection::BadVersion,
        Rejection::HandshakeRate,
        Rejection::NoSecret,
        Rejection::MissingToken,
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::WrongZone,
        Rejection::ZoneFull,
        Rejection::Draining,
        Rejection::PeerRate,
        Rejection::InputTooOld,
        Rejection::InputTooFar,
        Rejection::InputQueueFull,
        Rejection::ControlQueueFull,
        Rejection::Unsealed,
        Rejection::Forged,
        Rejection::Replayed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::Oversized => "oversized",
            Rejection::NotOurProtocol => "not_our_protocol",
            Rejection::Malformed => "malformed",
            Rejection::NotJoined => "not_joined",
            Rejection::BadVersion => "bad_version",
            Rejection::HandshakeRate => "handshake_rate",
            Rejection::NoSecret => "no_token_secret",
            Rejection::MissingToken => "missing_token",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::WrongZone => "wrong_zone",
            Rejection::ZoneFull => "zone_full",
            Rejection::Draining => "draining",
            Rejection::PeerRate => "peer_rate",
            Rejection::InputTooOld => "input_too_old",
            Rejection::InputTooFar => "input_too_far",
            Rejection::InputQueueFull => "input_queue_full",
            Rejection::ControlQueueFull => "control_queue_full",
            Rejection::Unsealed => "unsealed",
            Rejection::Forged => "forged",
            Rejection::Replayed => "replayed",
        }
    }

    pub fn from_reject_reason(r: RejectReason) -> Rejection {
        use RejectReason as R;
        match r {
            R::MissingToken => Rejection::MissingToken,
            R::Expired => Rejection::Expired,
            R::WrongZone => Rejection::WrongZone,
            R::BadVersion => Rejection::BadVersion,
            R::ZoneFull => Rejection::ZoneFull,
            R::Draining => Rejection::Draining,
            R::RateLimited => Rejection::HandshakeRate,
            _ => Rejection::BadSignature,
        }
    }
}

/// What the gate decided about one datagram from an address that has not joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A Hello with a valid token and cookie: admit the address as this player, whose datagrams
    /// are sealed with `key` (from the token).
    Admit { player_id: u64, key: [u8; 32] },
    /// A valid token without a valid cookie: send `reply` (a framed `Challenge`), admit nothing.
    Challenge { reply: Vec<u8> },
    /// Refused and counted; `reply` (a framed `Reject`) is sent if present. It is never larger
    /// than the datagram it answers (no amplification), so it may be absent or lack its detail.
    Refuse { why: Rejection, reply: Option<Vec<u8>> },
}

/// What [`screen`] checks a Hello against, and the state it consults (passed in, so the function
/// stays pure).
pub struct ScreenContext<'a> {
    /// The join-token secret; `None` refuses every Hello (`NoSecret`).
    pub token_secret: Option<&'a [u8]>,
    pub zone_id: &'a str,
    /// The wall clock, Unix seconds, for the token's expiry.
    pub now_unix: u64,
    /// Whether the Hello's cookie is ours for this address (see [`cookie_ok`]).
    pub cookie_ok: &'a dyn Fn(&[u8]) -> bool,
    /// The cookie to challenge with (for this address, this period).
    pub cookie: [u8; COOKIE_BYTES],
    /// Takes one Hello from the source IP's budget; false when it is spent.
    pub take_handshake: &'a mut dyn FnMut() -> bool,
    /// No room for another admitted address.
    pub full: bool,
}

/// A framed server message with reliable sequence 0, if it is at most `max_len` bytes.
fn reply(body: server_envelope::Body, max_len: usize) -> Option<Vec<u8>> {
    let d = wire::frame(&encode_server(
        Stamp {
            channel: Channel::Reliable,
            sequence: 0,
        },
        body,
    ));
    (d.len() <= max_len).then_some(d)
}

/// A framed Reject no larger than `max_len`: with the detail if it fits, else without.
pub fn reject_reply(reason: RejectReason, detail: &str, max_len: usize) -> Option<Vec<u8>> {
    reply(reject(reason, detail), max_len).or_else(|| reply(reject(reason, ""), max_len))
}

/// Screens one datagram (laminar header included) from an address that has not joined.
pub fn screen(datagram: &[u8], cx: &mut ScreenContext<'_>) -> Verdict {
    let len = datagram.len();
    let refuse = |why: Rejection| Verdict::Refuse { why, reply: None };
    let Some(payload) = wire::unframe(datagram) else {
        return refuse(Rejection::NotOurProtocol);
    };
    if crate::seal::is_sealed(payload) {
        // A session's datagram from an address without one (a replay, or one that ended).
        return refuse(Rejection::NotJoined);
    }
    let hello: Hello = match decode_client(payload) {
        Ok((_, client_envelope::Body::Hello(h))) => h,
        Ok(_) => return refuse(Rejection::NotJoined),
        Err(EnvelopeError::BadVersion { found }) => {
            // Said in the client's own version, so that an old client can read why.
            let detail = format!("protocol {found} is not supported; this server speaks {PROTOCOL_VERSION}: update the client");
            let reply = [detail.as_str(), ""].into_iter().find_map(|detail| {
                let d = wire::frame(&prost::Message::encode_to_vec(&crate::proto::ServerEnvelope {
                    protocol_version: found,
                    channel: Channel::Reliable as i32,
                    sequence: 0,
                    body: Some(reject(RejectReason::BadVersion, detail)),
                }));
                (d.len() <= len).then_some(d)
            });
            return Verdict::Refuse {
                why: Rejection::BadVersion,
                reply,
            };
        }
        Err(_) => return refuse(Rejection::Malformed),
    };
    if !(cx.take_handshake)() {
        return Verdict::Refuse {
            why: Rejection::HandshakeRate,
            reply: reject_reply(RejectReason::RateLimited, "too many join attempts; retry shortly", len),
        };
    }
    if cx.full {
        return Verdict::Refuse {
            why: Rejection::ZoneFull,
            reply: reject_reply(RejectReason::ZoneFull, "the zone is full", len),
        };
    }
    let Some(secret) = cx.token_secret else {
        return Verdict::Refuse {
            why: Rejection::NoSecret,
            reply: reject_reply(RejectReason::BadSignature, "this server has no token secret", len),
        };
    };
    match crate::token::verify(secret, &hello.join_token, cx.zone_id, cx.now_unix) {
        Ok(_) if !(cx.cookie_ok)(&hello.cookie) => {
            // Prove the source address first: a spoofed one never sees the cookie.
            match reply(
                server_envelope::Body::Challenge(Challenge {
                    cookie: cx.cookie.to_vec(),
                }),
                len,
            ) {
                Some(reply) => Verdict::Challenge { reply },
                None => refuse(Rejection::Malformed),
            }
        }
        Ok(claims) => Verdict::Admit {
            player_id: claims.player_id,
            key: claims.session_key,
        },
        Err(e) => {
            let reason = e.reject_reason();
            Verdict::Refuse {
                why: Rejection::from_reject_reason(reason),
                reply: reject_reply(reason, &e.to_string(), len),
            }
        }
    }
}

/// The cookie period `elapsed_s` (seconds since the cookie key was made) falls in.
pub fn cookie_period(elapsed_s: u64) -> u64 {
    elapsed_s / COOKIE_PERIOD_S
}

/// A stateless cookie for the address `addr` (its bytes, e.g. IP octets then port) in `period`:
/// the first 16 bytes of SHA-256(key ‖ address ‖ period). Only the key's owner can make it, and
/// only someone who receives at the address can learn it.
pub fn cookie(key: &[u8; 32], addr: &[u8], period: u64) -> [u8; COOKIE_BYTES] {
    let mut h = Sha256::new();
    h.update(key);
    h.update(addr);
    h.update(period.to_le_bytes());
    let mut out = [0u8; COOKIE_BYTES];
    out.copy_from_slice(&h.finalize()[..COOKIE_BYTES]);
    out
}

/// Whether `given` is our cookie for `addr` in `period` or the one before.
pub fn cookie_ok(key: &[u8; 32], addr: &[u8], period: u64, given: &[u8]) -> bool {
    given.len() == COOKIE_BYTES && (given == cookie(key, addr, period) || (period > 0 && given == cookie(key, addr, period - 1)))
}

/// A token bucket: `rate` per second, up to `burst`, on a clock in microseconds passed in.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at_us: u64,
}

impl Bucket {
    pub fn full(burst: f64, now_us: u64) -> Bucket {
        Bucket {
            tokens: burst,
            at_us: now_us,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: f64, burst: f64, now_us: u64) -> bool {
        self.refill(rate, burst, now_us);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now_us` (it can then be forgotten).
    pub fn is_full(&self, rate: f64, burst: f64, now_us: u64) -> bool {
        self.tokens + now_us.saturating_sub(self.at_us) as f64 / 1e6 * rate >= burst
    }

    fn refill(&mut self, rate: f64, burst: f64, now_us: u64) {
        let dt_s = now_us.saturating_sub(self.at_us) as f64 / 1e6;
        self.tokens = (self.tokens + dt_s * rate).min(burst);
        self.at_us = self.at_us.max(now_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode_server, encode_client};

    const SECRET: &[u8] = b"gate test secret, long enough...";
    const NOW: u64 = 1_800_000_000;
    const KEY: [u8; 32] = [7; 32];
    const ADDR: &[u8] = &[127, 0, 0, 1, 0x1f, 0x90];

    fn grant() -> crate::token::JoinGrant {
        crate::token::mint(SECRET, 9, "z", NOW + 60, [1; 32]).unwrap()
    }

    fn hello(token: &str, cookie: &[u8], version: u32) -> Vec<u8> {
        let env = crate::proto::ClientEnvelope {
            protocol_version: version,
            channel: Channel::Reliable as i32,
            sequence: 0,
            body: Some(client_envelope::Body::Hello(Hello {
                protocol_version: version,
                join_token: token.into(),
                cookie: cookie.to_vec(),
            })),
        };
        wire::frame(&prost::Message::encode_to_vec(&env))
    }

    fn run(datagram: &[u8], rate_ok: bool, full: bool, secret: Option<&[u8]>) -> Verdict {
        let ok = |c: &[u8]| cookie_ok(&KEY, ADDR, 5, c);
        let mut take = move || rate_ok;
        let mut cx = ScreenContext {
            token_secret: secret,
            zone_id: "z",
            now_unix: NOW,
            cookie_ok: &ok,
            cookie: cookie(&KEY, ADDR, 5),
            take_handshake: &mut take,
            full,
        };
        screen(datagram, &mut cx)
    }

    fn reason(v: &Verdict) -> Option<RejectReason> {
        let Verdict::Refuse { reply: Some(r), .. } = v else { return None };
        match decode_server(wire::unframe(r)?).ok()?.1 {
            server_envelope::Body::Reject(r) => RejectReason::try_from(r.reason).ok(),
            _ => None,
        }
    }

    #[test]
    fn the_handshake_in_order() {
        let t = grant().token;
        let first = run(&hello(&t, &[], PROTOCOL_VERSION), true, false, Some(SECRET));
        let Verdict::Challenge { reply } = &first else {
            panic!("{first:?}")
        };
        let server_envelope::Body::Challenge(c) = decode_server(wire::unframe(reply).unwrap()).unwrap().1 else {
            panic!()
        };
        assert!(reply.len() <= hello(&t, &[], PROTOCOL_VERSION).len());
        assert_eq!(
            run(&hello(&t, &c.cookie, PROTOCOL_VERSION), true, false, Some(SECRET)),
            Verdict::Admit {
                player_id: 9,
                key: grant().key
            }
        );
        // The previous period's cookie still works, an older one does not.
        assert!(cookie_ok(&KEY, ADDR, 6, &c.cookie));
        assert!(!cookie_ok(&KEY, ADDR, 7, &c.cookie));
        assert!(!cookie_ok(&KEY, &[127, 0, 0, 2, 0x1f, 0x90], 5, &c.cookie));
    }

    #[test]
    fn every_refusal_is_counted_and_never_amplifies() {
        let t = grant().token;
        // An old client is told, in its own version, so that it can read it.
        let old = hello(&t, &[], 1);
        let v = run(&old, true, false, Some(SECRET));
        let Verdict::Refuse { reply: Some(r), .. } = &v else {
            panic!("{v:?}")
        };
        let env: crate::proto::ServerEnvelope = prost::Message::decode(wire::unframe(r).unwrap()).unwrap();
        assert_eq!(env.protocol_version, 1);
        let Some(server_envelope::Body::Reject(rj)) = env.body else {
            panic!()
        };
        assert_eq!(rj.reason, RejectReason::BadVersion as i32);
        assert!(rj.detail.contains("update the client"), "{}", rj.detail);
        let v = run(&hello(&t, &[], PROTOCOL_VERSION), false, false, Some(SECRET));
        assert_eq!(reason(&v), Some(RejectReason::RateLimited));
        let v = run(&hello(&t, &[], PROTOCOL_VERSION), true, true, Some(SECRET));
        assert_eq!(reason(&v), Some(RejectReason::ZoneFull));
        let v = run(&hello(&t, &[], PROTOCOL_VERSION), true, false, None);
        assert!(matches!(
            v,
            Verdict::Refuse {
                why: Rejection::NoSecret,
                ..
            }
        ));
        let expired = crate::token::mint(SECRET, 9, "z", NOW, [0; 32]).unwrap().token;
        assert_eq!(
            reason(&run(&hello(&expired, &[], PROTOCOL_VERSION), true, false, Some(SECRET))),
            Some(RejectReason::Expired)
        );
        let other = crate::token::mint(SECRET, 9, "y", NOW + 60, [0; 32]).unwrap().token;
        assert_eq!(
            reason(&run(&hello(&other, &[], PROTOCOL_VERSION), true, false, Some(SECRET))),
            Some(RejectReason::WrongZone)
        );
        assert_eq!(
            reason(&run(&hello("", &[], PROTOCOL_VERSION), true, false, Some(SECRET))),
            Some(RejectReason::MissingToken)
        );
        assert_eq!(
            run(b"\x54\x09\x00\x01\x00xx", true, false, Some(SECRET)),
            Verdict::Refuse {
                why: Rejection::NotOurProtocol,
                reply: None
            }
        );
        let ping = wire::frame(&encode_client(
            Stamp {
                channel: Channel::Unreliable,
                sequence: 0,
            },
            client_envelope::Body::Ping(crate::proto::Ping { sent_us: 1 }),
        ));
        assert_eq!(
            run(&ping, true, false, Some(SECRET)),
            Verdict::Refuse {
                why: Rejection::NotJoined,
                reply: None
            }
        );
        // A tiny Hello gets no reply at all rather than a bigger one.
        for d in [hello("x", &[], PROTOCOL_VERSION), hello("", &[], 1)] {
            if let Verdict::Refuse { reply: Some(r), .. } | Verdict::Challenge { reply: r } = run(&d, true, false, Some(SECRET)) {
                assert!(r.len() <= d.len());
            }
        }
        // Random bytes never panic.
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = run(&junk, true, false, Some(SECRET));
            let _ = run(&wire::frame(&junk), true, false, Some(SECRET));
        }
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut b = Bucket::full(2.0, 0);
        assert!(b.take(1.0, 2.0, 0));
        assert!(b.take(1.0, 2.0, 0));
        assert!(!b.take(1.0, 2.0, 0));
        assert!(!b.take(1.0, 2.0, 500_000));
        assert!(b.take(1.0, 2.0, 1_000_000));
        assert!(b.is_full(1.0, 2.0, 10_000_000));
    }
}
