//! Player events (join, leave, death, ...) on their way to the database: [`GameEvent`] and
//! [`EventQueue`], a bounded FIFO that sheds the oldest events when full.
//!
//! The queue never blocks and never grows past its capacity: when the database is slow or down,
//! the game goes on and the oldest events are dropped and counted ([`EventQueue::dropped_total`]).
//! It does no IO, owns no thread and reads no clock; the server drains it in batches and hands
//! each batch to [`crate::store::PostgresStore::insert_events`], putting a failed batch back with
//! [`EventQueue::requeue_front`].

use std::collections::VecDeque;

/// Capacity of [`EventQueue::default`].
pub const EVENT_QUEUE_CAPACITY_DEFAULT: usize = 10_000;

/// Something that happened to a player, for the `game_events` table.
#[derive(Clone, Debug, PartialEq)]
pub struct GameEvent {
    pub zone_id: String,
    /// Names this event uniquely within `zone_id` (e.g. `<run>:<tick>:<kind>:<player>`), so that a
    /// retried insert of it can never create a second row: the table has a unique index on
    /// `(zone_id, event_key)` and inserts skip keys already there.
    pub key: String,
    pub tick: u64,
    /// `join`, `leave`, `death`, ...
    pub kind: String,
    pub player_id: Option<u64>,
    /// Free-form details (stored as `jsonb`).
    pub detail: serde_json::Value,
}

/// A bounded FIFO of events. See the module doc.
#[derive(Debug)]
pub struct EventQueue {
    events: VecDeque<GameEvent>,
    capacity: usize,
    dropped_total: u64,
}

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue::new(EVENT_QUEUE_CAPACITY_DEFAULT)
    }
}

impl EventQueue {
    /// A queue holding at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> EventQueue {
        let capacity = capacity.max(1);
        EventQueue {
            events: VecDeque::with_capacity(capacity.min(EVENT_QUEUE_CAPACITY_DEFAULT)),
            capacity,
            dropped_total: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events dropped because the queue was full, since it was made.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Appends an event; if the queue is full, the oldest one is dropped (and counted) first.
    /// Returns how many were dropped (0 or 1).
    pub fn push(&mut self, event: GameEvent) -> usize {
        let dropped = self.make_room(1);
        self.events.push_back(event);
        dropped
    }

    /// Takes up to `max` of the oldest events, oldest first.
    pub fn drain_batch(&mut self, max: usize) -> Vec<GameEvent> {
        let n = max.min(self.events.len());
        self.events.drain(..n).collect()
    }

    /// Puts back a batch that could not be stored, ahead of everything queued since, in its
    /// original order. If that overfills the queue, the oldest events (the front of `batch`) are
    /// dropped and counted. Returns how many were dropped.
    pub fn requeue_front(&mut self, batch: Vec<GameEvent>) -> usize {
        let room = self.capacity - self.events.len();
        let skip = batch.len().saturating_sub(room);
        self.dropped_total += skip as u64;
        for e in batch.into_iter().skip(skip).rev() {
            self.events.push_front(e);
        }
        skip
    }

    /// Drops the oldest events until `n` more fit.
    fn make_room(&mut self, n: usize) -> usize {
        let excess = (self.events.len() + n).saturating_sub(self.capacity).min(self.events.len());
        self.events.drain(..excess);
        self.dropped_total += excess as u64;
        excess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(tick: u64) -> GameEvent {
        GameEvent {
            zone_id: "z".into(),
            key: format!("k{tick}"),
            tick,
            kind: "join".into(),
            player_id: Some(tick),
            detail: serde_json::json!({ "n": tick }),
        }
    }

    fn ticks(v: &[GameEvent]) -> Vec<u64> {
        v.iter().map(|e| e.tick).collect()
    }

    #[test]
    fn default_capacity_is_ten_thousand() {
        assert_eq!(EventQueue::default().capacity(), 10_000);
        assert_eq!(EventQueue::new(0).capacity(), 1);
    }

    #[test]
    fn drains_in_order_in_batches() {
        let mut q = EventQueue::new(10);
        for t in 0..5 {
            q.push(ev(t));
        }
        assert_eq!(ticks(&q.drain_batch(3)), [0, 1, 2]);
        assert_eq!(ticks(&q.drain_batch(3)), [3, 4]);
        assert!(q.drain_batch(3).is_empty());
        assert_eq!(q.dropped_total(), 0);
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts() {
        let mut q = EventQueue::new(3);
        for t in 0..3 {
            assert_eq!(q.push(ev(t)), 0);
        }
        assert_eq!(q.push(ev(3)), 1);
        assert_eq!(q.push(ev(4)), 1);
        assert_eq!(q.dropped_total(), 2);
        assert_eq!(ticks(&q.drain_batch(10)), [2, 3, 4]);
    }

    #[test]
    fn requeue_puts_the_batch_back_in_front_in_order() {
        let mut q = EventQueue::new(10);
        for t in 0..4 {
            q.push(ev(t));
        }
        let batch = q.drain_batch(3);
        q.push(ev(4));
        assert_eq!(q.requeue_front(batch), 0);
        assert_eq!(ticks(&q.drain_batch(10)), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn requeue_stays_bounded_and_drops_the_oldest() {
        let mut q = EventQueue::new(4);
        for t in 0..4 {
            q.push(ev(t));
        }
        let batch = q.drain_batch(3); // 0, 1, 2 out; 3 left
        q.push(ev(4));
        q.push(ev(5)); // 3, 4, 5 queued: room for one
        assert_eq!(q.requeue_front(batch), 2);
        assert_eq!(q.dropped_total(), 2);
        assert_eq!(ticks(&q.drain_batch(10)), [2, 3, 4, 5]);
        assert_eq!(q.len(), 0);
    }
}
