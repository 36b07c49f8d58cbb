//! The shard thread pool: runs a zone's shards in parallel and times each shard's step.
//!
//! It must not change results: the simulation is built so that any order and any thread count
//! give the same state. It only decides how fast a tick goes, and measures it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use zone_sim::{Phase, Shard, ShardExecutor};

/// Runs shards on a rayon pool of a fixed size and records how long each shard's step took.
pub struct PoolExecutor {
    pool: rayon::ThreadPool,
    threads: usize,
    step_nanos: Vec<AtomicU64>,
}

impl PoolExecutor {
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
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How long shard `i` took in the last step.
    pub fn step_duration(&self, i: usize) -> Duration {
        Duration::from_nanos(self.step_nanos.get(i).map_or(0, |a| a.load(Ordering::Relaxed)))
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
        if self.threads == 1 {
            shards.iter_mut().for_each(timed);
        } else {
            // One shard per task: shards are few and coarse, so let every idle thread steal.
            self.pool.install(|| shards.par_iter_mut().with_max_len(1).for_each(timed));
        }
    }
}
