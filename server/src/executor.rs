//! The shard thread pool: runs a zone's shards in parallel and times each shard's step.
//!
//! It must not change results: the simulation is built so that any order and any thread count
//! give the same state. It only decides how fast a tick goes, and measures it.
//!
//! In real time ([`PoolExecutor::adaptive`]) a small step runs on the tick thread alone: handing
//! shards to the pool and waiting for it costs two thread wake-ups, and when the cores are busy
//! (the network encoding for a thousand clients) each can wait for a scheduler slice of a few
//! milliseconds, which is more than a small step takes. The step fans out again once the shards'
//! work adds up to [`FANOUT_ABOVE`]. Headless runs ([`PoolExecutor::new`]) always fan out: there
//! the ticks run back to back, the pool never sleeps, and only throughput counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use zone_sim::{Phase, Shard, ShardExecutor};

/// In real time, the step fans out to the pool when the shards' step times of the last tick add
/// up to this or more (a quarter of a 60 Hz tick).
pub const FANOUT_ABOVE: Duration = Duration::from_millis(4);
/// ... and goes back to the tick thread alone when they add up to less than this (half of the
/// above, so that a step near the line does not switch every tick).
pub const INLINE_BELOW: Duration = Duration::from_millis(2);

/// Whether the next step runs on the calling thread alone, given whether this one did and the
/// sum of this step's shard times. Pure, so the rule is testable without clocks.
pub fn next_step_inline(inline: bool, serial: Duration) -> bool {
    if inline { serial < FANOUT_ABOVE } else { serial < INLINE_BELOW }
}

/// Runs shards on a rayon pool of a fixed size and records how long each shard's step took.
pub struct PoolExecutor {
    pool: rayon::ThreadPool,
    threads: usize,
    step_nanos: Vec<AtomicU64>,
    /// Whether small steps run on the calling thread ([`PoolExecutor::adaptive`]).
    adaptive: bool,
    /// Whether the next step runs on the calling thread alone (adaptive only).
    step_inline: AtomicBool,
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
            adaptive: false,
            step_inline: AtomicBool::new(false),
        })
    }

    /// A pool for a server ticking in real time: the step runs on the calling thread while the
    /// shards' work is small ([`next_step_inline`]); captures and hashes always fan out.
    pub fn adaptive(threads: usize, shards: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let mut exec = PoolExecutor::new(threads, shards)?;
        exec.adaptive = true;
        exec.step_inline = AtomicBool::new(true);
        Ok(exec)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How long shard `i` took in the last step.
    pub fn step_duration(&self, i: usize) -> Duration {
        Duration::from_nanos(self.step_nanos.get(i).map_or(0, |a| a.load(Ordering::Relaxed)))
    }

    /// Whether the next step runs on the calling thread alone (always true with one thread).
    pub fn step_inline(&self) -> bool {
        self.threads == 1 || self.step_inline.load(Ordering::Relaxed)
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
            } else {
                f(s);
            }
        };
        if self.threads == 1 || (phase == Phase::Step && self.step_inline()) {
            shards.iter_mut().for_each(timed);
        } else {
            // One shard per task: shards are few and coarse, so let every idle thread steal.
            self.pool.install(|| shards.par_iter_mut().with_max_len(1).for_each(timed));
        }
        if self.adaptive && phase == Phase::Step {
            let serial = shards.iter().map(|s| self.step_duration(s.index())).sum();
            self.step_inline
                .store(next_step_inline(self.step_inline(), serial), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_fans_out_from_four_ms_of_shard_work_and_comes_back_under_two() {
        let ms = Duration::from_millis;
        // Inline stays inline below the upper line, fans out at it.
        assert!(next_step_inline(true, ms(0)));
        assert!(next_step_inline(true, ms(3)));
        assert!(!next_step_inline(true, ms(4)));
        // Fanned out stays out down to the lower line, and comes back below it.
        assert!(!next_step_inline(false, ms(3)));
        assert!(!next_step_inline(false, ms(2)));
        assert!(next_step_inline(false, Duration::from_micros(1_999)));
    }
}
