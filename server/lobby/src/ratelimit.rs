//! Token buckets for the per-IP and per-account rate limits: pure arithmetic with time passed in
//! ([`Bucket`]), and a bounded map of them ([`Limiter`]) that forgets idle keys.
//!
//! A refused request learns how long to wait (`Retry-After`). Never blocks, never reads a clock.

use std::collections::HashMap;
use std::hash::Hash;

/// One key's bucket: `burst` tokens at most, refilled at `rate` per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    pub fn full(burst: f64, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst,
            at_ms: now_ms,
        }
    }

    /// Takes one token, or says how many milliseconds until one is there.
    pub fn take(&mut self, now_ms: u64, rate_per_s: f64, burst: f64) -> Result<(), u64> {
        let elapsed_s = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed_s * rate_per_s).min(burst);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait_s = (1.0 - self.tokens) / rate_per_s.max(f64::MIN_POSITIVE);
            Err((wait_s * 1000.0).ceil().max(1.0) as u64)
        }
    }

    fn is_full(&self, now_ms: u64, rate_per_s: f64, burst: f64) -> bool {
        self.tokens + now_ms.saturating_sub(self.at_ms) as f64 / 1000.0 * rate_per_s >= burst
    }
}

/// Buckets by key, at most `max_keys` of them (full buckets are forgotten first; past that the
/// oldest half goes, which only ever errs towards letting a request through).
#[derive(Debug)]
pub struct Limiter<K> {
    pub rate_per_s: f64,
    pub burst: f64,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate_per_s: f64, burst: f64, max_keys: usize) -> Limiter<K> {
        Limiter {
            rate_per_s,
            burst,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `key`, or returns the wait in milliseconds.
    pub fn check(&mut self, key: &K, now_ms: u64) -> Result<(), u64> {
        if self.buckets.len() >= self.max_keys && !self.buckets.contains_key(key) {
            self.prune(now_ms);
        }
        let (rate, burst) = (self.rate_per_s, self.burst);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(burst, now_ms))
            .take(now_ms, rate, burst)
    }

    fn prune(&mut self, now_ms: u64) {
        let (rate, burst) = (self.rate_per_s, self.burst);
        self.buckets.retain(|_, b| !b.is_full(now_ms, rate, burst));
        if self.buckets.len() >= self.max_keys {
            let mut ages: Vec<u64> = self.buckets.values().map(|b| b.at_ms).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.buckets.retain(|_, b| b.at_ms > cut);
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_with_retry_after() {
        let mut b = Bucket::full(2.0, 0);
        assert_eq!(b.take(0, 1.0, 2.0), Ok(()));
        assert_eq!(b.take(0, 1.0, 2.0), Ok(()));
        assert_eq!(b.take(0, 1.0, 2.0), Err(1000));
        assert_eq!(b.take(500, 1.0, 2.0), Err(500));
        assert_eq!(b.take(1000, 1.0, 2.0), Ok(()));
        // Time going backwards takes nothing and adds nothing.
        assert!(b.take(10, 1.0, 2.0).is_err());
    }

    #[test]
    fn limiter_is_per_key_and_bounded() {
        let mut l: Limiter<u32> = Limiter::new(1.0, 1.0, 4);
        assert!(l.check(&1, 0).is_ok());
        assert!(l.check(&1, 0).is_err());
        assert!(l.check(&2, 0).is_ok());
        for k in 3..100 {
            let _ = l.check(&k, 0);
            assert!(l.len() <= 4, "{}", l.len());
        }
        // Idle keys refill and are forgotten first.
        for k in 100..200 {
            let _ = l.check(&k, 10_000 + u64::from(k));
        }
        assert!(l.len() <= 4);
    }
}
