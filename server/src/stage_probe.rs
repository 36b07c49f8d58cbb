//! Per-stage timing: probe systems the server adds between a shard's stages.
//!
//! The simulation has no clock, so it cannot time itself; instead the server adds six tiny systems
//! to each shard's schedule, one before Input, one between each pair of stages and one after
//! Telemetry. Each reads the clock and, from the second on, records how long the stage before it
//! took. They touch only their own resource, so they cannot change game state (and replay, which
//! adds no probes, reproduces the same hashes).

use std::time::Instant;

use bevy_ecs::prelude::*;
use zone_sim::{Shard, Stage};
use zone_telemetry::StageHistograms;

#[derive(Resource)]
struct StageClock {
    last: Instant,
    histograms: StageHistograms,
}

fn mark<const N: usize>(mut c: ResMut<StageClock>) {
    let now = Instant::now();
    if N > 0 {
        let took = now - c.last;
        c.histograms.record(N - 1, took);
    }
    c.last = now;
}

/// Adds the probes to a shard. Call once, before the first step.
pub fn install(shard: &mut Shard, histograms: StageHistograms) {
    shard.world_mut().insert_resource(StageClock {
        last: Instant::now(),
        histograms,
    });
    let s = shard.schedule_mut();
    s.add_systems(mark::<0>.before(Stage::Input));
    s.add_systems(mark::<1>.after(Stage::Input).before(Stage::Simulate));
    s.add_systems(mark::<2>.after(Stage::Simulate).before(Stage::Replicate));
    s.add_systems(mark::<3>.after(Stage::Replicate).before(Stage::Persist));
    s.add_systems(mark::<4>.after(Stage::Persist).before(Stage::Telemetry));
    s.add_systems(mark::<5>.after(Stage::Telemetry));
}
