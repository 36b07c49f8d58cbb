//! The outer frame every datagram travels in: laminar 0.5's header for an unreliable, unordered
//! packet (5 bytes: the protocol-id CRC-16, packet type 0, delivery 0, ordering 0), then one
//! envelope (see [`crate::envelope`]).
//!
//! The server's stateless gate reads a stranger's first datagram with [`unframe`] before laminar
//! sees it, and writes its refusals with [`frame`] without creating a laminar connection; the bot
//! swarm speaks the same frame from plain sockets. Everything we send is unreliable and unordered
//! at the laminar level: ordering, duplicates and the reliable event stream are ours (sequence
//! numbers in the envelope, `EventBatch`), because laminar 0.5 acknowledges only on reliable
//! packets and has no retransmit timer (see `net/vendor/laminar/PATCHES.md`).
//!
//! Pure byte functions: no socket, no clock, never panics.

/// laminar's protocol id: CRC-16/X-25 of its version string `"laminar-0.1.0"` (a test in
/// `server/tests/net.rs` checks it against what laminar itself sends).
pub const LAMINAR_PROTOCOL_CRC16: u16 = crc16_x25(b"laminar-0.1.0");
/// Bytes laminar puts in front of an unreliable, unordered payload.
pub const HEADER_BYTES: usize = 5;

/// CRC-16/X-25 (reflected 0x1021, init and xorout 0xFFFF), as laminar's `crc` dependency computes it.
pub const fn crc16_x25(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    let mut i = 0;
    while i < data.len() {
        crc ^= data[i] as u16;
        let mut b = 0;
        while b < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x8408 } else { crc >> 1 };
            b += 1;
        }
        i += 1;
    }
    !crc
}

/// The header of every datagram we send: laminar's, for an unreliable, unordered packet.
pub fn header() -> [u8; HEADER_BYTES] {
    let id = LAMINAR_PROTOCOL_CRC16.to_be_bytes();
    [id[0], id[1], 0, 0, 0]
}

/// One payload as a laminar unreliable datagram.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&header());
    out.extend_from_slice(payload);
    out
}

/// The payload of a laminar unreliable, unordered datagram; `None` for anything else (another
/// protocol id, a reliable, sequenced, fragmented or heartbeat packet, or too short).
pub fn unframe(datagram: &[u8]) -> Option<&[u8]> {
    if datagram.len() < HEADER_BYTES || datagram[..HEADER_BYTES] != header() {
        return None;
    }
    Some(&datagram[HEADER_BYTES..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_published_check_value() {
        // The CRC-16/X-25 check value for "123456789".
        assert_eq!(crc16_x25(b"123456789"), 0x906E);
    }

    #[test]
    fn frame_round_trips_and_rejects_others() {
        let d = frame(b"abc");
        assert_eq!(unframe(&d), Some(&b"abc"[..]));
        let mut reliable = d.clone();
        reliable[3] = 1;
        assert_eq!(unframe(&reliable), None);
        assert_eq!(unframe(&d[..4]), None);
        assert_eq!(unframe(&[]), None);
    }
}
