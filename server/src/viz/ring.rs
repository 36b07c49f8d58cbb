//! The history ring: the recent past of the zone as diff-coded frames, turned back into whole
//! frames on demand.
//!
//! Frames are stored at most one per [`Ring::spacing_ticks`] (1 s by default): every
//! [`KEY_EVERY`]th as a key frame, the others as diffs against the frame before. A frame at any
//! stored tick is rebuilt from the key at or before it plus the diffs up to it, so a seek costs at
//! most `KEY_EVERY - 1` diff applications. The oldest frames go when the history is longer than
//! its span or larger than its byte budget (both flags); whole key-led groups go together, so the
//! ring always starts with a key, and a group ends early once it holds a quarter of the budget or
//! of the span, so the newest group (never dropped) overshoots either by a quarter at most.
//!
//! Never decodes under its owner's lock: [`Ring::chain_for`] hands out the encoded frames (shared
//! buffers) and [`rebuild`] runs wherever the caller is.

use std::collections::VecDeque;
use std::sync::Arc;

use super::frame::{self, Frame, FrameError};

/// One key frame per this many stored frames.
pub const KEY_EVERY: usize = 30;

struct Entry {
    /// Position in the stream of frames ever stored (stable across evictions).
    seq: u64,
    tick: u64,
    key: bool,
    bytes: Arc<[u8]>,
}

/// The stored history. Not thread-safe by itself: its owner wraps it in a lock.
pub struct Ring {
    entries: VecDeque<Entry>,
    next_seq: u64,
    bytes: usize,
    bytes_max: usize,
    span_ticks: u64,
    spacing_ticks: u64,
    since_key: usize,
    /// Bytes of the newest group (its key and the diffs after it).
    group_bytes: usize,
    /// Key frames held (= groups).
    keys: usize,
    /// The tick of the newest group's key.
    group_tick: u64,
    /// The newest stored frame, whole: the base of the next diff.
    last: Option<Frame>,
}

/// What [`Ring::chain_for`] returns: the frames to decode, key first, with their sequence numbers.
pub struct Chain {
    pub frames: Vec<(u64, Arc<[u8]>)>,
}

impl Ring {
    /// A ring that keeps about `span_ticks` of history in at most `bytes_max` bytes of encoded
    /// frames, one frame per `spacing_ticks` at most.
    pub fn new(span_ticks: u64, bytes_max: usize, spacing_ticks: u64) -> Ring {
        Ring {
            entries: VecDeque::new(),
            next_seq: 0,
            bytes: 0,
            bytes_max,
            span_ticks,
            spacing_ticks: spacing_ticks.max(1),
            since_key: KEY_EVERY,
            group_bytes: 0,
            keys: 0,
            group_tick: 0,
            last: None,
        }
    }

    /// Whether a frame at `tick` would be stored (it is far enough past the newest).
    pub fn wants(&self, tick: u64) -> bool {
        self.entries.back().is_none_or(|e| tick >= e.tick + self.spacing_ticks)
    }

    /// Stores `frame` if [`Ring::wants`] it; returns whether it did.
    pub fn offer(&mut self, frame: Frame) -> bool {
        if !self.wants(frame.tick) || self.span_ticks == 0 || self.bytes_max == 0 {
            return false;
        }
        // A group also ends early when it grows past a quarter of the budget, so eviction (which
        // drops whole groups, never the newest) always has an older group to drop.
        let key = self.since_key >= KEY_EVERY
            || self.group_bytes > self.bytes_max / 4
            || frame.tick.saturating_sub(self.group_tick) > self.span_ticks / 4
            || self.entries.is_empty()
            || self.last.is_none();
        let bytes: Arc<[u8]> = match (&self.last, key) {
            (Some(base), false) => frame::encode_diff(base, &frame).into(),
            _ => frame::encode_key(&frame).into(),
        };
        self.since_key = if key { 1 } else { self.since_key + 1 };
        self.group_bytes = if key { bytes.len() } else { self.group_bytes + bytes.len() };
        self.keys += usize::from(key);
        if key {
            self.group_tick = frame.tick;
        }
        self.bytes += bytes.len();
        self.entries.push_back(Entry {
            seq: self.next_seq,
            tick: frame.tick,
            key,
            bytes,
        });
        self.next_seq += 1;
        self.last = Some(frame);
        self.evict();
        true
    }

    fn evict(&mut self) {
        let newest = self.entries.back().map_or(0, |e| e.tick);
        let too_old = |e: &Entry, span: u64| newest.saturating_sub(e.tick) > span;
        // The newest group always stays: it holds the newest frame.
        while let Some(front) = self.entries.front() {
            if self.keys > 1 && (self.bytes > self.bytes_max || too_old(front, self.span_ticks)) {
                self.pop_group();
            } else {
                break;
            }
        }
    }

    /// Removes the oldest key and the diffs that depend on it.
    fn pop_group(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.bytes.len();
            self.keys -= usize::from(e.key);
        }
        while self.entries.front().is_some_and(|e| !e.key) {
            let e = self.entries.pop_front().expect("front exists");
            self.bytes -= e.bytes.len();
        }
    }

    /// Ticks of the stored frames, oldest first.
    pub fn ticks(&self) -> Vec<u64> {
        self.entries.iter().map(|e| e.tick).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of encoded frames held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest and newest stored ticks.
    pub fn span(&self) -> Option<(u64, u64)> {
        Some((self.entries.front()?.tick, self.entries.back()?.tick))
    }

    /// The encoded frames needed to rebuild the newest stored frame at or before `tick`: its key
    /// and the diffs after it. `None` if nothing is stored that early.
    pub fn chain_for(&self, tick: u64) -> Option<Chain> {
        let end = self.entries.partition_point(|e| e.tick <= tick);
        if end == 0 {
            return None;
        }
        let target = end - 1;
        let start = (0..=target).rev().find(|&i| self.entries[i].key)?;
        Some(Chain {
            frames: (start..=target)
                .map(|i| (self.entries[i].seq, Arc::clone(&self.entries[i].bytes)))
                .collect(),
        })
    }
}

/// Rebuilds the last frame of `chain`. `cached` (a frame rebuilt earlier, with its sequence
/// number) is used as a starting point when it lies inside the chain, so stepping forward through
/// history applies one diff per step.
pub fn rebuild(chain: &Chain, cached: Option<(u64, &Frame)>) -> Result<Frame, FrameError> {
    let Some(((first_seq, _), (last_seq, _))) = chain.frames.first().zip(chain.frames.last()) else {
        return Err(FrameError::Truncated);
    };
    let (mut frame, from) = match cached {
        Some((seq, f)) if seq >= *first_seq && seq <= *last_seq => (f.clone(), (seq - first_seq) as usize + 1),
        _ => (frame::decode_key(&chain.frames[0].1)?, 1),
    };
    for (_, bytes) in &chain.frames[from..] {
        frame = frame::apply_diff(&frame, bytes)?;
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::super::frame::{FrameMeta, VizObject};
    use super::*;

    fn frame(tick: u64, n: u64) -> Frame {
        Frame {
            tick,
            meta: FrameMeta::default(),
            objects: (0..n)
                .map(|i| VizObject {
                    id: 10 + i,
                    kind: 1,
                    shard: 0,
                    x: (tick as i32) * 3 + i as i32,
                    y: 0,
                    hp: 5,
                })
                .collect(),
        }
    }

    #[test]
    fn rebuilds_every_stored_tick_exactly() {
        let mut r = Ring::new(10_000, 1 << 30, 60);
        let mut stored = Vec::new();
        for k in 0..100u64 {
            // Populations change as well as positions.
            let f = frame(60 * k, 50 + (k % 7));
            if r.offer(f.clone()) {
                stored.push(f);
            }
            assert!(!r.offer(frame(60 * k + 1, 3)), "closer than the spacing: refused");
        }
        assert_eq!(stored.len(), 100);
        let mut cached: Option<(u64, Frame)> = None;
        for f in &stored {
            let chain = r.chain_for(f.tick).unwrap();
            assert!(chain.frames.len() <= KEY_EVERY);
            let seq = chain.frames.last().unwrap().0;
            let got = rebuild(&chain, cached.as_ref().map(|(s, f)| (*s, f))).unwrap();
            assert_eq!(&got, f);
            cached = Some((seq, got));
        }
        // Between stored ticks: the one before.
        assert_eq!(rebuild(&r.chain_for(60 * 5 + 30).unwrap(), None).unwrap().tick, 300);
        assert!(r.chain_for(0).is_some());
    }

    #[test]
    fn stays_within_its_span_and_budget_and_starts_with_a_key() {
        let mut r = Ring::new(600, 1 << 30, 60);
        for k in 0..200u64 {
            r.offer(frame(60 * k, 20));
        }
        let (oldest, newest) = r.span().unwrap();
        assert!(newest - oldest <= 600 + 600 / 4 + 60, "{oldest}..{newest}");
        assert!(newest - oldest >= 600 - 600 / 4 - 60, "{oldest}..{newest}");
        assert!(rebuild(&r.chain_for(oldest).unwrap(), None).is_ok());

        let mut r = Ring::new(u64::MAX, 20_000, 60);
        for k in 0..500u64 {
            r.offer(frame(60 * k, 200));
            // Within the budget, give or take the newest group (a quarter of it at most, plus a frame).
            assert!(r.bytes() <= 20_000 + 5_000 + 2_000, "{}", r.bytes());
            if let Some((oldest, _)) = r.span() {
                assert!(rebuild(&r.chain_for(oldest).unwrap(), None).is_ok());
            }
        }
        assert!(!r.is_empty());
    }
}
