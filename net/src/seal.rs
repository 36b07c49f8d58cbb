//! Sealed datagrams: once a session has joined, every envelope travels encrypted and
//! authenticated with ChaCha20-Poly1305 (RFC 8439) under the session's 32-byte key, which the join
//! token carries sealed for the zone (see [`crate::token`]) and the client receives beside its
//! token.
//!
//! A sealed payload (what follows laminar's 5-byte header) is
//! `0x5A ‖ counter (u64, little-endian) ‖ ciphertext ‖ tag (16 bytes)`, where the ciphertext is
//! the envelope, the associated data is the first 9 bytes, and the 12-byte nonce is
//! `direction (0 client→server, 1 server→client) ‖ 00 00 00 ‖ counter (LE)`. Each direction counts
//! from 0 and never reuses a counter under one key. The receiver ([`Opener`]) drops a payload that
//! does not authenticate, or whose counter it has already accepted or is 64 or more behind the
//! newest it accepted (a sliding replay window), and says why ([`SealError`]) so the caller counts
//! it.
//!
//! Pure functions over bytes: no socket, no clock, no randomness (the key comes in), never panics.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

/// The first byte of a sealed payload (a plaintext envelope starts with 0x08).
pub const SEAL_MAGIC: u8 = 0x5A;
/// Bytes a sealed payload adds to the envelope: magic, counter, tag.
pub const SEAL_OVERHEAD: usize = 1 + 8 + 16;
/// Counters at most this far behind the newest accepted one are still accepted once.
pub const REPLAY_WINDOW: u64 = 64;

/// Which way a datagram travels (part of the nonce, so the two directions never share one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToServer = 0,
    ServerToClient = 1,
}

/// Why a payload was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the payload is not sealed")]
    NotSealed,
    #[error("the payload does not authenticate (forged, altered or under another key)")]
    Forged,
    #[error("the payload's counter was already accepted or is too old (a replay)")]
    Replayed,
}

/// Whether a payload (after laminar's header) is sealed.
pub fn is_sealed(payload: &[u8]) -> bool {
    payload.len() >= SEAL_OVERHEAD && payload[0] == SEAL_MAGIC
}

fn nonce(direction: Direction, counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = direction as u8;
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

/// Seals one direction of a session.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    direction: Direction,
    next: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("direction", &self.direction)
            .field("next", &self.next)
            .finish()
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32], direction: Direction) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
            direction,
            next: 0,
        }
    }

    /// The counter the next sealed payload will carry.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Seals an envelope into a payload (laminar's header not included).
    pub fn seal(&mut self, envelope: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(envelope.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&[0; 9]);
        out.extend_from_slice(envelope);
        self.seal_after_header(out)
    }

    /// [`Sealer::seal`] in the envelope's own buffer: it moves up 9 bytes and gains the tag, so
    /// no new buffer is needed when its capacity has room for [`SEAL_OVERHEAD`] more bytes (the
    /// snapshot encoder leaves that room).
    pub fn seal_vec(&mut self, mut envelope: Vec<u8>) -> Vec<u8> {
        let len = envelope.len();
        envelope.reserve(SEAL_OVERHEAD);
        envelope.resize(len + 9, 0);
        envelope.copy_within(..len, 9);
        self.seal_after_header(envelope)
    }

    /// Seals `out`, whose first 9 bytes are room for the magic and the counter.
    fn seal_after_header(&mut self, mut out: Vec<u8>) -> Vec<u8> {
        let counter = self.next;
        self.next = self.next.wrapping_add(1);
        out[0] = SEAL_MAGIC;
        out[1..9].copy_from_slice(&counter.to_le_bytes());
        let (aad, body) = out.split_at_mut(9);
        // Encryption fails only past ChaCha20's 256 GiB per-message limit, far above a datagram.
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.direction, counter), aad, body)
            .unwrap_or_default();
        out.extend_from_slice(&tag);
        out
    }
}

/// Opens the other direction of a session, with a replay window.
#[derive(Clone)]
pub struct Opener {
    cipher: ChaCha20Poly1305,
    direction: Direction,
    newest: Option<u64>,
    /// Bit `i`: counter `newest - i` was accepted.
    seen: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("direction", &self.direction)
            .field("newest", &self.newest)
            .finish()
    }
}

impl Opener {
    /// Opens payloads sealed in `direction` under `key`.
    pub fn new(key: &[u8; 32], direction: Direction) -> Opener {
        Opener {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
            direction,
            newest: None,
            seen: 0,
        }
    }

    fn is_fresh(&self, counter: u64) -> bool {
        match self.newest {
            None => true,
            Some(n) if counter > n => true,
            Some(n) => {
                let behind = n - counter;
                behind < REPLAY_WINDOW && self.seen & (1 << behind) == 0
            }
        }
    }

    fn mark(&mut self, counter: u64) {
        match self.newest {
            Some(n) if counter <= n => self.seen |= 1 << (n - counter),
            Some(n) => {
                let ahead = counter - n;
                self.seen = if ahead >= REPLAY_WINDOW { 0 } else { self.seen << ahead };
                self.seen |= 1;
                self.newest = Some(counter);
            }
            None => {
                self.seen = 1;
                self.newest = Some(counter);
            }
        }
    }

    /// The envelope inside a sealed payload. The replay window moves only for payloads that
    /// authenticate, so forgeries cannot push genuine datagrams out of it.
    pub fn open(&mut self, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut body = Vec::new();
        self.open_into(payload, &mut body)?;
        Ok(body)
    }

    /// [`Opener::open`] into `body` (cleared first; its room is reused, so a caller that keeps
    /// one buffer allocates nothing per datagram). On an error `body` holds nothing to trust.
    pub fn open_into(&mut self, payload: &[u8], body: &mut Vec<u8>) -> Result<(), SealError> {
        body.clear();
        if !is_sealed(payload) {
            return Err(SealError::NotSealed);
        }
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&payload[1..9]);
        let counter = u64::from_le_bytes(counter);
        if !self.is_fresh(counter) {
            return Err(SealError::Replayed);
        }
        let (aad, rest) = payload.split_at(9);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        body.extend_from_slice(ct);
        self.cipher
            .decrypt_in_place_detached(&nonce(self.direction, counter), aad, body, Tag::from_slice(tag))
            .map_err(|_| SealError::Forged)?;
        self.mark(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [9; 32];

    #[test]
    fn sealing_in_the_envelopes_buffer_gives_the_same_bytes() {
        let (mut a, mut b) = (
            Sealer::new(&KEY, Direction::ServerToClient),
            Sealer::new(&KEY, Direction::ServerToClient),
        );
        for len in [0usize, 1, 9, 10, 300, 1_200] {
            let envelope: Vec<u8> = (0..len).map(|i| i as u8).collect();
            // With the room the snapshot encoder leaves, and with none.
            let mut roomy = Vec::with_capacity(len + SEAL_OVERHEAD);
            roomy.extend_from_slice(&envelope);
            let room = roomy.as_ptr();
            let sealed = b.seal_vec(roomy);
            assert_eq!(sealed.as_ptr(), room, "sealed in place");
            assert_eq!(sealed, a.seal(&envelope));
            assert_eq!(b.seal_vec(envelope.clone()), a.seal(&envelope));
        }
    }

    #[test]
    fn round_trip_replay_and_forgery() {
        let mut s = Sealer::new(&KEY, Direction::ClientToServer);
        let mut o = Opener::new(&KEY, Direction::ClientToServer);
        let a = s.seal(b"hello");
        let b = s.seal(b"world");
        assert_eq!(a.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(o.open(&b).unwrap(), b"world");
        assert_eq!(o.open(&a).unwrap(), b"hello", "late but new");
        assert_eq!(o.open(&a), Err(SealError::Replayed));
        assert_eq!(o.open(&b), Err(SealError::Replayed));
        // A replayed counter is refused before any decryption.
        let mut early = Sealer::new(&[1; 32], Direction::ClientToServer);
        assert_eq!(o.open(&early.seal(b"x")), Err(SealError::Replayed));
        // Every flipped bit is refused, and does not disturb the window.
        let c = s.seal(b"third");
        for at in 0..c.len() {
            let mut x = c.clone();
            x[at] ^= 1;
            assert!(o.open(&x).is_err(), "flip at {at}");
        }
        assert_eq!(o.open(&c).unwrap(), b"third");
        // The other direction and another key do not open.
        let mut back = Sealer::new(&KEY, Direction::ServerToClient);
        for _ in 0..10 {
            back.seal(b"skip");
        }
        assert_eq!(o.open(&back.seal(b"x")), Err(SealError::Forged));
        let mut other = Sealer::new(&[1; 32], Direction::ClientToServer);
        for _ in 0..5 {
            other.seal(b"skip");
        }
        assert_eq!(o.open(&other.seal(b"x")), Err(SealError::Forged));
        assert_eq!(o.open(b"\x08\x01"), Err(SealError::NotSealed));
        assert_eq!(o.open(&[]), Err(SealError::NotSealed));
    }

    #[test]
    fn the_window_slides() {
        let mut s = Sealer::new(&KEY, Direction::ServerToClient);
        let mut o = Opener::new(&KEY, Direction::ServerToClient);
        let all: Vec<Vec<u8>> = (0..200).map(|i| s.seal(&[i as u8])).collect();
        assert!(o.open(&all[150]).is_ok());
        assert_eq!(o.open(&all[86]), Err(SealError::Replayed), "64 behind: too old");
        assert!(o.open(&all[87]).is_ok(), "63 behind: still in the window");
        assert!(o.open(&all[199]).is_ok());
        assert_eq!(o.open(&all[150]), Err(SealError::Replayed));
    }
}
