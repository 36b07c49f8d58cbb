//! The viewers: who is watching, what each has been sent, and who gets dropped.
//!
//! Each viewer is one server-sent-events stream fed from a small bounded queue. The visualizer
//! thread broadcasts every frame once: a key to viewers that need one (new, or after a seek in a
//! replay), the shared diff to the others. A viewer whose queue is full (it is not reading: slow
//! link, stalled tab) is dropped at once and counted; one that has not pinged for the idle timeout
//! (a page pings every few seconds while it is visible) is told why and dropped. At most
//! `max_viewers` watch at a time; the next one is refused.
//!
//! Never blocks: every send is a `try_send`, and the lock is held only to walk the list.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::sync::mpsc;

use super::frame::{self, Frame};

/// Messages one viewer may have queued before it counts as slow.
pub const VIEWER_QUEUE_MAX: usize = 8;

/// One server-sent event: its type and its data line.
#[derive(Clone, Debug)]
pub struct Message {
    pub event: &'static str,
    pub data: Arc<str>,
}

impl Message {
    fn json(event: &'static str, v: &serde_json::Value) -> Message {
        Message {
            event,
            data: v.to_string().into(),
        }
    }
}

struct Viewer {
    id: u64,
    tx: mpsc::Sender<Message>,
    last_seen: Instant,
    /// The next frame must be a key (nothing sent yet, or the stream jumped).
    needs_key: bool,
}

/// Why a viewer left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    Closed,
    Slow,
    Idle,
    Shutdown,
}

impl Gone {
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::Closed => "closed",
            Gone::Slow => "slow",
            Gone::Idle => "idle",
            Gone::Shutdown => "shutdown",
        }
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    viewers: Vec<Viewer>,
    /// The last frame broadcast: new viewers start from it, diffs are coded against it.
    latest: Option<Frame>,
    closed: bool,
}

/// Traffic counters (also exported as metrics).
#[derive(Debug, Default)]
pub struct HubCounters {
    pub key_frames: AtomicU64,
    pub key_bytes: AtomicU64,
    pub diff_frames: AtomicU64,
    pub diff_bytes: AtomicU64,
    pub refused_full: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub dropped_idle: AtomicU64,
}

/// The set of viewers.
pub struct Hub {
    inner: Mutex<Inner>,
    /// Viewers connected now (read by the tick thread: one relaxed load).
    pub count: AtomicUsize,
    pub max_viewers: usize,
    pub idle_timeout: Duration,
    pub counters: HubCounters,
}

/// The hub is full.
#[derive(Debug)]
pub struct Full;

fn b64(bytes: &[u8]) -> Arc<str> {
    base64::engine::general_purpose::STANDARD.encode(bytes).into()
}

impl Hub {
    pub fn new(max_viewers: usize, idle_timeout: Duration) -> Hub {
        Hub {
            inner: Mutex::new(Inner::default()),
            count: AtomicUsize::new(0),
            max_viewers,
            idle_timeout,
            counters: HubCounters::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_count(&self, inner: &Inner) {
        self.count.store(inner.viewers.len(), Ordering::Relaxed);
        metrics::gauge!("zone_viz_viewers").set(inner.viewers.len() as f64);
    }

    /// Adds a viewer. Its first messages are `hello` (its id) and, if a frame exists, a key.
    pub fn join(&self, hello: serde_json::Value) -> Result<(u64, mpsc::Receiver<Message>), Full> {
        let mut inner = self.lock();
        if inner.closed || inner.viewers.len() >= self.max_viewers {
            self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("zone_viz_viewers_refused_total").increment(1);
            return Err(Full);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE_MAX);
        let mut hello = hello;
        if let Some(o) = hello.as_object_mut() {
            o.insert("viewer".into(), serde_json::json!(id));
        }
        let _ = tx.try_send(Message::json("hello", &hello));
        let mut needs_key = true;
        if let Some(f) = &inner.latest {
            let bytes = frame::encode_key(f);
            self.count_frame(true, bytes.len());
            needs_key = tx
                .try_send(Message {
                    event: "key",
                    data: b64(&bytes),
                })
                .is_err();
        }
        inner.viewers.push(Viewer {
            id,
            tx,
            last_seen: Instant::now(),
            needs_key,
        });
        self.set_count(&inner);
        tracing::info!(viewer = id, viewers = inner.viewers.len(), "visualizer viewer connected");
        Ok((id, rx))
    }

    /// Removes a viewer (its stream ended).
    pub fn leave(&self, id: u64) {
        let mut inner = self.lock();
        let before = inner.viewers.len();
        inner.viewers.retain(|v| v.id != id);
        if inner.viewers.len() != before {
            tracing::info!(viewer = id, viewers = inner.viewers.len(), "visualizer viewer disconnected");
        }
        self.set_count(&inner);
    }

    /// A page says it is still watching. False if the viewer is unknown (dropped).
    pub fn ping(&self, id: u64) -> bool {
        let mut inner = self.lock();
        match inner.viewers.iter_mut().find(|v| v.id == id) {
            Some(v) => {
                v.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    fn count_frame(&self, key: bool, bytes: usize) {
        let c = &self.counters;
        let (frames, total, ty) = if key {
            (&c.key_frames, &c.key_bytes, "key")
        } else {
            (&c.diff_frames, &c.diff_bytes, "diff")
        };
        frames.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes as u64, Ordering::Relaxed);
        metrics::counter!("zone_viz_frames_sent_total", "type" => ty).increment(1);
        metrics::counter!("zone_viz_frame_bytes_total", "type" => ty).increment(bytes as u64);
    }

    /// Sends `frame` to every viewer: a key to those that need one (all of them if `reset`: the
    /// stream jumped), otherwise the diff against the last frame sent. Drops the slow.
    pub fn broadcast(&self, frame: Frame, reset: bool) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        if reset || inner.latest.is_none() {
            for v in &mut inner.viewers {
                v.needs_key = true;
            }
        }
        if inner.latest.as_ref().is_some_and(|l| l.tick == frame.tick && *l == frame) {
            return;
        }
        let any_key = inner.viewers.iter().any(|v| v.needs_key);
        let any_diff = inner.viewers.iter().any(|v| !v.needs_key);
        let key = any_key.then(|| {
            let b = frame::encode_key(&frame);
            (b.len(), b64(&b))
        });
        let diff = match (&inner.latest, any_diff) {
            (Some(base), true) => {
                let b = frame::encode_diff(base, &frame);
                Some((b.len(), b64(&b)))
            }
            _ => None,
        };
        if let Some((n, _)) = &key {
            self.count_frame(true, *n);
        }
        if let Some((n, _)) = &diff {
            self.count_frame(false, *n);
        }
        let mut gone = Vec::new();
        for v in &mut inner.viewers {
            let msg = match (v.needs_key, &key, &diff) {
                (true, Some((_, k)), _) => Message {
                    event: "key",
                    data: Arc::clone(k),
                },
                (false, _, Some((_, d))) => Message {
                    event: "diff",
                    data: Arc::clone(d),
                },
                _ => continue,
            };
            match v.tx.try_send(msg) {
                Ok(()) => v.needs_key = false,
                Err(mpsc::error::TrySendError::Full(_)) => gone.push((v.id, Gone::Slow)),
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push((v.id, Gone::Closed)),
            }
        }
        inner.latest = Some(frame);
        self.drop_viewers(&mut inner, &gone);
    }

    /// Sends a JSON event (e.g. the replay's playhead) to every viewer; never drops anyone for it.
    pub fn announce(&self, event: &'static str, v: &serde_json::Value) {
        let inner = self.lock();
        let msg = Message::json(event, v);
        for viewer in &inner.viewers {
            let _ = viewer.tx.try_send(msg.clone());
        }
    }

    /// Drops viewers that have not pinged within the idle timeout, telling them why.
    pub fn sweep_idle(&self, now: Instant) {
        let mut inner = self.lock();
        let gone: Vec<(u64, Gone)> = inner
            .viewers
            .iter()
            .filter(|v| now.saturating_duration_since(v.last_seen) > self.idle_timeout)
            .map(|v| (v.id, Gone::Idle))
            .collect();
        self.drop_viewers(&mut inner, &gone);
    }

    /// Tells every viewer the server is going away and ends their streams; refuses new ones.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let gone: Vec<(u64, Gone)> = inner.viewers.iter().map(|v| (v.id, Gone::Shutdown)).collect();
        self.drop_viewers(&mut inner, &gone);
    }

    fn drop_viewers(&self, inner: &mut Inner, gone: &[(u64, Gone)]) {
        if gone.is_empty() {
            return;
        }
        for &(id, why) in gone {
            if let Some(i) = inner.viewers.iter().position(|v| v.id == id) {
                let v = inner.viewers.swap_remove(i);
                if why != Gone::Slow && why != Gone::Closed {
                    let _ = v.tx.try_send(Message::json("bye", &serde_json::json!({ "reason": why.as_str() })));
                }
                match why {
                    Gone::Slow => {
                        self.counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                    }
                    Gone::Idle => {
                        self.counters.dropped_idle.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if why != Gone::Closed {
                    metrics::counter!("zone_viz_viewers_dropped_total", "reason" => why.as_str()).increment(1);
                    tracing::info!(viewer = id, reason = why.as_str(), "visualizer viewer dropped");
                }
            }
        }
        inner.viewers.sort_unstable_by_key(|v| v.id);
        self.set_count(inner);
    }

    /// The last frame broadcast (for tests and the history of a replay).
    pub fn latest_tick(&self) -> Option<u64> {
        self.lock().latest.as_ref().map(|f| f.tick)
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{FrameMeta, VizObject, apply_diff, decode_key};
    use super::*;

    fn frame(tick: u64) -> Frame {
        Frame {
            tick,
            meta: FrameMeta::default(),
            objects: (0..20)
                .map(|i| VizObject {
                    id: i + 1,
                    x: (tick + i) as i32,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn decode(m: &Message) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(m.data.as_bytes()).unwrap()
    }

    #[test]
    fn viewers_get_a_key_then_diffs_and_the_slow_are_dropped() {
        let hub = Hub::new(2, Duration::from_secs(30));
        let (_, mut a) = hub.join(serde_json::json!({})).unwrap();
        hub.broadcast(frame(1), false);
        let (_, mut b) = hub.join(serde_json::json!({})).unwrap();
        assert!(hub.join(serde_json::json!({})).is_err(), "at most 2");
        hub.broadcast(frame(2), false);
        assert_eq!(a.try_recv().unwrap().event, "hello");
        let k = a.try_recv().unwrap();
        assert_eq!(k.event, "key");
        let d = a.try_recv().unwrap();
        assert_eq!(d.event, "diff");
        let f1 = decode_key(&decode(&k)).unwrap();
        assert_eq!(apply_diff(&f1, &decode(&d)).unwrap(), frame(2));
        // b joined after frame 1: its key is frame 1, then the same diff.
        assert_eq!(b.try_recv().unwrap().event, "hello");
        assert_eq!(decode_key(&decode(&b.try_recv().unwrap())).unwrap(), frame(1));
        assert_eq!(b.try_recv().unwrap().event, "diff");
        // b stops reading; a keeps up. b is dropped once its queue is full.
        for t in 3..(3 + VIEWER_QUEUE_MAX as u64 + 2) {
            hub.broadcast(frame(t), false);
            while a.try_recv().is_ok() {}
        }
        assert_eq!(hub.count.load(Ordering::Relaxed), 1);
        assert_eq!(hub.counters.dropped_slow.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn idle_viewers_are_told_and_dropped() {
        let hub = Hub::new(4, Duration::from_millis(0));
        let (id, mut a) = hub.join(serde_json::json!({})).unwrap();
        assert!(hub.ping(id));
        hub.sweep_idle(Instant::now() + Duration::from_millis(5));
        assert!(!hub.ping(id));
        let mut last = None;
        while let Ok(m) = a.try_recv() {
            last = Some(m);
        }
        let last = last.unwrap();
        assert_eq!(last.event, "bye");
        assert!(last.data.contains("idle"));
    }
}
