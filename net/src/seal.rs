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
//! Envelopes of at most 192 bytes (input datagrams, acks, pings) are sealed and opened through a
//! shorter path over the same crates' ChaCha20 and Poly1305 (`ShortAead`); the bytes are the
//! same, which the RFC 8439 test vector and a property test against `chacha20poly1305` check.
//!
//! Pure functions over bytes: no socket, no clock, no randomness (the key comes in), never panics
//! (the one `assert!`, on the short path's length, cannot fail: its callers route by length).

use chacha20::cipher::consts::U10;
use chacha20::cipher::{KeyIvInit, StreamCipherCore};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use poly1305::Poly1305;
use poly1305::universal_hash::UniversalHash;
use zeroize::{Zeroize, Zeroizing};

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

/// ChaCha20 blocks one pass of its AVX2 backend computes.
const PASS_BLOCKS: usize = 4;
/// The longest envelope [`ShortAead`] seals and opens: three ChaCha20 blocks, so that the
/// Poly1305 key's block and the message's fit one pass (input datagrams, acks, pings). Longer
/// ones go through `chacha20poly1305` itself: with two passes, a 300-byte snapshot took longer
/// than there (`seal_cost`: seal 712-742 ns against 644-653).
const SHORT_BYTES_MAX: usize = (PASS_BLOCKS - 1) * 64;

/// ChaCha20-Poly1305 (RFC 8439 §2.8) of a message of at most [`SHORT_BYTES_MAX`] bytes, the same
/// bytes and tag as `chacha20poly1305`'s, from the same crates' ChaCha20 and Poly1305. That crate
/// makes the Poly1305 key and the message's keystream in calls of their own, through a stream
/// wrapper that buffers and seeks; here one call of ChaCha20's core writes four blocks: the key
/// (block 0) and the keystream (blocks 1 to 3), all wiped after use as that crate wipes its own.
/// The server's whole input path takes about a tenth more instructions per datagram (4,936 against
/// 4,492 in `endpoint_cost`, mostly the wipe), but a 100-byte datagram seals and opens in about a
/// fifth less time (`seal_cost`, three runs of each build in one sitting: seal
/// 384-403 ns against 479-493, open 401-418 against 512-519; before the keystream was wiped,
/// 344-384 and 365-409).
struct ShortAead {
    mac: Poly1305,
    blocks: Blocks,
}

type Blocks = [chacha20::cipher::Block<chacha20::ChaChaCore<U10>>; PASS_BLOCKS];

impl ShortAead {
    fn new(key: &Key, nonce: &Nonce) -> ShortAead {
        let mut blocks = Blocks::default();
        chacha20::ChaChaCore::<U10>::new(key, nonce).write_keystream_blocks(&mut blocks);
        let mac = Poly1305::new(poly1305::Key::from_slice(&blocks[0][..32]));
        blocks[0].zeroize();
        ShortAead { mac, blocks }
    }

    /// XORs `buf` (at most [`SHORT_BYTES_MAX`] bytes: the callers route longer ones elsewhere)
    /// with blocks 1 to 3 (the cipher's counter starts at 1 for the message).
    fn xor(&self, buf: &mut [u8]) {
        assert!(buf.len() <= SHORT_BYTES_MAX, "a {}-byte message on the short path", buf.len());
        for (b, k) in buf.iter_mut().zip(self.blocks[1..].iter().flatten()) {
            *b ^= k;
        }
    }

    /// MACs the associated data, the ciphertext and their lengths, as RFC 8439 §2.8 has it.
    fn authenticate(&mut self, aad: &[u8], ciphertext: &[u8]) {
        self.mac.update_padded(aad);
        self.mac.update_padded(ciphertext);
        let mut lengths = poly1305::Block::default();
        lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
        lengths[8..].copy_from_slice(&(ciphertext.len() as u64).to_le_bytes());
        self.mac.update(&[lengths]);
    }
}

impl Drop for ShortAead {
    fn drop(&mut self) {
        // Block 0 (the Poly1305 key) was wiped in `new`.
        self.blocks[1..].iter_mut().for_each(Zeroize::zeroize);
    }
}

/// Encrypts `buf` in place under `key` and `nonce`; returns the tag. A message of at most
/// [`SHORT_BYTES_MAX`] bytes takes the short path.
fn seal_detached(key: &[u8; 32], nonce: &Nonce, aad: &[u8], buf: &mut [u8]) -> Tag {
    let key = Key::from_slice(key);
    if buf.len() > SHORT_BYTES_MAX {
        // Encryption fails only past ChaCha20's 256 GiB per-message limit, far above a datagram.
        return ChaCha20Poly1305::new(key)
            .encrypt_in_place_detached(nonce, aad, buf)
            .unwrap_or_default();
    }
    let mut a = ShortAead::new(key, nonce);
    a.xor(buf);
    a.authenticate(aad, buf);
    a.mac.clone().finalize()
}

/// Checks the tag of `buf` in constant time (Poly1305's own `verify`), then decrypts it in place;
/// on a bad tag `buf` is left as it was. A message of at most [`SHORT_BYTES_MAX`] bytes takes the
/// short path.
fn open_detached(key: &[u8; 32], nonce: &Nonce, aad: &[u8], buf: &mut [u8], tag: &Tag) -> Result<(), SealError> {
    let key = Key::from_slice(key);
    if buf.len() > SHORT_BYTES_MAX {
        return ChaCha20Poly1305::new(key)
            .decrypt_in_place_detached(nonce, aad, buf, tag)
            .map_err(|_| SealError::Forged);
    }
    let mut a = ShortAead::new(key, nonce);
    a.authenticate(aad, buf);
    a.mac.clone().verify(tag).map_err(|_| SealError::Forged)?;
    a.xor(buf);
    Ok(())
}

/// Seals one direction of a session.
#[derive(Clone)]
pub struct Sealer {
    /// Wiped on drop, as `chacha20poly1305` wipes its copy.
    key: Zeroizing<[u8; 32]>,
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
            key: Zeroizing::new(*key),
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
        let tag = seal_detached(&self.key, &nonce(self.direction, counter), aad, body);
        out.extend_from_slice(&tag);
        out
    }
}

/// Opens the other direction of a session, with a replay window.
#[derive(Clone)]
pub struct Opener {
    /// Wiped on drop, as `Sealer`'s.
    key: Zeroizing<[u8; 32]>,
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
            key: Zeroizing::new(*key),
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
        open_detached(&self.key, &nonce(self.direction, counter), aad, body, Tag::from_slice(tag))?;
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

    /// RFC 8439 §2.8.2: the AEAD test vector (a 114-byte message: the short path).
    #[test]
    fn the_short_path_gives_rfc_8439s_test_vector() {
        let hex = |h: &str| -> Vec<u8> {
            let h: String = h.split_whitespace().collect();
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        let plaintext =
            b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let aad = hex("50 51 52 53 c0 c1 c2 c3 c4 c5 c6 c7");
        let key: [u8; 32] = hex("80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f 90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f")
            .try_into()
            .unwrap();
        let nonce = Nonce::clone_from_slice(&hex("07 00 00 00 40 41 42 43 44 45 46 47"));
        let ciphertext = hex(
            "d3 1a 8d 34 64 8e 60 db 7b 86 af bc 53 ef 7e c2 a4 ad ed 51 29 6e 08 fe a9 e2 b5 a7 36 ee 62 d6
             3d be a4 5e 8c a9 67 12 82 fa fb 69 da 92 72 8b 1a 71 de 0a 9e 06 0b 29 05 d6 a5 b6 7e cd 3b 36
             92 dd bd 7f 2d 77 8b 8c 98 03 ae e3 28 09 1b 58 fa b3 24 e4 fa d6 75 94 55 85 80 8b 48 31 d7 bc
             3f f4 de f0 8e 4b 7a 9d e5 76 d2 65 86 ce c6 4b 61 16",
        );
        let tag = hex("1a e1 0b 59 4f 09 e2 6a 7e 90 2e cb d0 60 06 91");
        let mut buf = plaintext.to_vec();
        assert!(buf.len() <= SHORT_BYTES_MAX);
        assert_eq!(seal_detached(&key, &nonce, &aad, &mut buf).as_slice(), tag);
        assert_eq!(buf, ciphertext);
        open_detached(&key, &nonce, &aad, &mut buf, Tag::from_slice(&tag)).unwrap();
        assert_eq!(buf, plaintext);
    }

    /// Either side of the short path's limit, and nothing: the same bytes as the crate's.
    #[test]
    fn the_paths_meet_at_the_limit() {
        let key = [0x42; 32];
        let reference = ChaCha20Poly1305::new(Key::from_slice(&key));
        for len in [0, 1, 63, 64, 65, SHORT_BYTES_MAX - 1, SHORT_BYTES_MAX, SHORT_BYTES_MAX + 1, 400] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let nonce = nonce(Direction::ClientToServer, len as u64);
            let mut expected = msg.clone();
            let expected_tag = reference.encrypt_in_place_detached(&nonce, b"aad", &mut expected).unwrap();
            let mut buf = msg.clone();
            assert_eq!(seal_detached(&key, &nonce, b"aad", &mut buf), expected_tag, "{len} bytes");
            assert_eq!(buf, expected, "{len} bytes");
            open_detached(&key, &nonce, b"aad", &mut buf, &expected_tag).unwrap();
            assert_eq!(buf, msg, "{len} bytes");
        }
    }

    proptest::proptest! {
        /// Both paths, against `chacha20poly1305` itself: the same ciphertext and tag, and a tag
        /// changed anywhere is refused (leaving the buffer as it was).
        #[test]
        fn sealing_matches_chacha20poly1305(
            key in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            counter in proptest::prelude::any::<u64>(),
            aad in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            flip in proptest::prelude::any::<(usize, u8)>(),
        ) {
            let nonce = nonce(Direction::ServerToClient, counter);
            let reference = ChaCha20Poly1305::new(Key::from_slice(&key));
            let mut expected = msg.clone();
            let expected_tag = reference.encrypt_in_place_detached(&nonce, &aad, &mut expected).unwrap();
            {
                let mut buf = msg.clone();
                let tag = seal_detached(&key, &nonce, &aad, &mut buf);
                proptest::prop_assert_eq!(&buf, &expected);
                proptest::prop_assert_eq!(tag, expected_tag);
                let mut bad = tag;
                bad[flip.0 % 16] ^= flip.1.max(1);
                proptest::prop_assert_eq!(open_detached(&key, &nonce, &aad, &mut buf, &bad), Err(SealError::Forged));
                proptest::prop_assert_eq!(&buf, &expected);
                open_detached(&key, &nonce, &aad, &mut buf, &tag).unwrap();
                proptest::prop_assert_eq!(&buf, &msg);
            }
            // Through Sealer and Opener (whichever path the length takes), against the reference.
            let mut sealer = Sealer::new(&key, Direction::ServerToClient);
            sealer.next = counter;
            let sealed = sealer.seal(&msg);
            let mut header = vec![SEAL_MAGIC];
            header.extend_from_slice(&counter.to_le_bytes());
            let mut expected = msg.clone();
            let expected_tag = reference.encrypt_in_place_detached(&nonce, &header, &mut expected).unwrap();
            proptest::prop_assert_eq!(&sealed[..9], &header[..]);
            proptest::prop_assert_eq!(&sealed[9..sealed.len() - 16], &expected[..]);
            proptest::prop_assert_eq!(&sealed[sealed.len() - 16..], expected_tag.as_slice());
            let mut opener = Opener::new(&key, Direction::ServerToClient);
            proptest::prop_assert_eq!(opener.open(&sealed), Ok(msg.clone()));
            let mut forged = sealed.clone();
            let at = 9 + flip.0 % (forged.len() - 9);
            forged[at] ^= flip.1.max(1);
            proptest::prop_assert_eq!(Opener::new(&key, Direction::ServerToClient).open(&forged), Err(SealError::Forged));
        }
    }
}
