//! The shard thread pool: runs a zone's shards in parallel and times each shard's step.
//!
//! It must not change results: the simulation is built so that any order and any thread count
//! give the same state. It only decides how fast a tick goes, and measures it.
//!
//! In real time ([`PoolExecutor::adaptive`]) a small step runs on the tick thread alone: handing
//! shards to the pool and waiting for it costs two thread wake-ups, and when the cores are busy
//! (the network encoding for a thousand clients) each can wait for a scheduler slice of a few
//! milliseconds, which is more than a small step takes. [`FanoutRule`] decides from the shards'
//! step times. The zone hash and the snapshot capture, once a second each, follow an
//! [`OccasionalRule`] each, from their own last run: under load, a hash that fanned out waited up
//! to 8 ms for the pool's threads, and at one tick in 60 that set the tick p99. A capture of
//! changes is as small (about 0.35 ms on the idle large zone). A whole capture
//! ([`Phase::CaptureWhole`]: the first, one after a reset, the last at shutdown) copies every
//! object, several times the work, and always fans out. Headless runs
//! ([`PoolExecutor::new`]: `--ticks` without `--realtime`) always fan out: there the ticks run
//! back to back, the pool never sleeps, and only throughput counts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use zone_sim::{Phase, Shard, ShardExecutor};

/// The step fans out when the shards' step times add up to this or more in every step of a
/// window (a quarter of a 60 Hz tick) ...
pub const FANOUT_ABOVE: Duration = Duration::from_millis(4);
/// ... and goes back to the tick thread alone when they add up to less than this in some step of
/// a window (half the above, so that a step near the line does not switch back and forth).
pub const INLINE_BELOW: Duration = Duration::from_millis(2);
/// One step this long (half a tick) fans out at once, without waiting for the window's end.
pub const FANOUT_AT_ONCE: Duration = Duration::from_millis(8);
/// Steps in a window (half a second at 60 Hz). A step's times are wall-clock: a shard the
/// scheduler set aside reads longer than its work, never shorter, so the window's smallest sum
/// is the work, and one slow step does not switch.
pub const WINDOW_STEPS: u32 = 30;

/// Whether the step runs on the calling thread alone, from the shards' step times. Pure, so the
/// rule is testable without clocks.
#[derive(Clone, Debug)]
pub struct FanoutRule {
    inline: bool,
    window_min: Duration,
    steps: u32,
}

impl Default for FanoutRule {
    fn default() -> Self {
        FanoutRule {
            inline: true,
            window_min: Duration::MAX,
            steps: 0,
        }
    }
}

impl FanoutRule {
    /// Whether the next step runs on the calling thread alone.
    pub fn inline(&self) -> bool {
        self.inline
    }

    /// Notes a step whose shards' step times add up to `serial`.
    pub fn observe(&mut self, serial: Duration) {
        if self.inline && serial >= FANOUT_AT_ONCE {
            *self = FanoutRule {
                inline: false,
                ..FanoutRule::default()
            };
            return;
        }
        self.window_min = self.window_min.min(serial);
        self.steps += 1;
        if self.steps >= WINDOW_STEPS {
            self.inline = if self.inline {
                self.window_min < FANOUT_ABOVE
            } else {
                self.window_min < INLINE_BELOW
            };
            self.window_min = Duration::MAX;
            self.steps = 0;
        }
    }
}

/// Whether an occasional phase (the zone hash, the snapshot capture) runs on the calling thread
/// alone, from its last run: too rare (once a second) for [`FanoutRule`]'s window. After a run
/// whose shards' times add up to under [`INLINE_BELOW`] the next one stays on the calling thread;
/// after one of [`FANOUT_ABOVE`] or more it fans out; in between it does as it did. The first run
/// fans out. Pure, so the rule is testable without clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct OccasionalRule {
    inline: bool,
}

impl OccasionalRule {
    pub fn inline(&self) -> bool {
        self.inline
    }

    /// Notes a run whose shards' times add up to `serial`.
    pub fn observe(&mut self, serial: Duration) {
        if serial < INLINE_BELOW {
            self.inline = true;
        } else if serial >= FANOUT_ABOVE {
            self.inline = false;
        }
    }
}

/// The real-time executor's rules. Only the thread that runs the zone's phases takes their lock,
/// so it is never contended.
#[derive(Clone, Debug, Default)]
struct Rules {
    step: FanoutRule,
    hash: OccasionalRule,
    capture: OccasionalRule,
}

/// Runs shards on a rayon pool of a fixed size and records how long each shard's step took.
pub struct PoolExecutor {
    pool: rayon::ThreadPool,
    threads: usize,
    step_nanos: Vec<AtomicU64>,
    /// Whether small steps, hashes and captures run on the calling thread
    /// ([`PoolExecutor::adaptive`] only), and the shard times of the hash or capture in
    /// progress, summed (phases run one at a time).
    rules: Option<Mutex<Rules>>,
    occasional_nanos: AtomicU64,
}

impl PoolExecutor {
    /// A pool of `threads` that every phase fans out to (headless runs, replay, tests).
    pub fn new(threads: usize, shards: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("shard-{i}"))
            .build()?;
        Ok(PoolExecutor {
            pool,
            threads,
            step_nanos: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            rules: None,
            occasional_nanos: AtomicU64::new(0),
        })
    }

    /// A pool for a server ticking in real time: the step runs on the calling thread while the
    /// shards' work is small ([`FanoutRule`]), and so do the hash and the capture of changes
    /// after a small run of their own ([`OccasionalRule`]); whole captures always fan out.
    pub fn adaptive(threads: usize, shards: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let mut exec = PoolExecutor::new(threads, shards)?;
        exec.rules = Some(Mutex::new(Rules::default()));
        Ok(exec)
    }

    /// The rules, when adaptive.
    fn rules(&self) -> Option<std::sync::MutexGuard<'_, Rules>> {
        Some(self.rules.as_ref()?.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How long shard `i` took in the last step.
    pub fn step_duration(&self, i: usize) -> Duration {
        Duration::from_nanos(self.step_nanos.get(i).map_or(0, |a| a.load(Ordering::Relaxed)))
    }

    /// Whether the next step runs on the calling thread alone (always with one thread, never
    /// when not adaptive).
    pub fn step_inline(&self) -> bool {
        self.threads == 1 || self.rules().is_some_and(|r| r.step.inline())
    }
}

impl ShardExecutor for PoolExecutor {
    fn run(&self, phase: Phase, shards: &mut [Shard], f: &(dyn Fn(&mut Shard) + Sync)) {
        let timed = |s: &mut Shard| {
            if phase == Phase::Step {
                let t0 = Instant::now();
                f(s);
                if let Some(slot) = self.step_nanos.get(s.index()) {
                    slot.store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            } else if self.rules.is_some() {
                let t0 = Instant::now();
                f(s);
                self.occasional_nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            } else {
                f(s);
            }
        };
        let inline = self.threads == 1
            || self.rules().is_some_and(|r| match phase {
                Phase::Step => r.step.inline(),
                Phase::Hash => r.hash.inline(),
                Phase::Capture => r.capture.inline(),
                Phase::CaptureWhole => false,
            });
        if inline {
            shards.iter_mut().for_each(timed);
        } else {
            // One shard per task: shards are few and coarse, so let every idle thread steal.
            self.pool.install(|| shards.par_iter_mut().with_max_len(1).for_each(timed));
        }
        if let Some(mut rules) = self.rules() {
            let occasional = || Duration::from_nanos(self.occasional_nanos.swap(0, Ordering::Relaxed));
            match phase {
                Phase::Step => rules.step.observe(shards.iter().map(|s| self.step_duration(s.index())).sum()),
                Phase::Hash => rules.hash.observe(occasional()),
                Phase::Capture => rules.capture.observe(occasional()),
                // Large by nature; it says nothing of the next capture of changes.
                Phase::CaptureWhole => {
                    occasional();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(rule: &mut FanoutRule, serial: impl Fn(u32) -> Duration) {
        for i in 0..WINDOW_STEPS {
            rule.observe(serial(i));
        }
    }

    #[test]
    fn a_step_fans_out_after_a_window_of_four_ms_steps_and_comes_back_after_one_under_two() {
        let ms = Duration::from_millis;
        let mut rule = FanoutRule::default();
        assert!(rule.inline());
        // One quick step in the window keeps it inline: the slow ones were the scheduler.
        window(&mut rule, |i| if i == 17 { ms(3) } else { ms(7) });
        assert!(rule.inline());
        // A whole window at or over the line fans out, at the window's end only.
        for _ in 0..WINDOW_STEPS - 1 {
            rule.observe(ms(4));
        }
        assert!(rule.inline());
        rule.observe(ms(4));
        assert!(!rule.inline());
        // Fanned out, 2 to 4 ms stays fanned out ...
        window(&mut rule, |_| ms(2));
        assert!(!rule.inline());
        // ... and one step under 2 ms in a window brings it back.
        window(&mut rule, |i| if i == 3 { Duration::from_micros(1_999) } else { ms(6) });
        assert!(rule.inline());
    }

    #[test]
    fn a_hash_or_capture_stays_on_the_calling_thread_after_a_small_one_and_fans_out_after_a_large_one() {
        let mut r = OccasionalRule::default();
        assert!(!r.inline(), "the first run fans out");
        r.observe(Duration::from_millis(3));
        assert!(!r.inline(), "between the lines: as it was");
        r.observe(Duration::from_micros(1_900));
        assert!(r.inline());
        r.observe(Duration::from_millis(3));
        assert!(r.inline(), "between the lines: as it was");
        r.observe(FANOUT_ABOVE);
        assert!(!r.inline());
    }

    #[test]
    fn one_step_of_half_a_tick_fans_out_at_once() {
        let mut rule = FanoutRule::default();
        rule.observe(Duration::from_millis(1));
        rule.observe(FANOUT_AT_ONCE);
        assert!(!rule.inline());
        // And it comes back only after a window that shows a small step.
        window(&mut rule, |_| Duration::from_millis(1));
        assert!(rule.inline());
    }
}
