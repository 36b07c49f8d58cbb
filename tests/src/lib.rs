//! Shared helpers for the cross-crate tests in `tests/tests/`: a small, busy test zone and
//! executors that run shards in unusual orders; and, for every crate's tests, [`services`]: the
//! harness for tests that need PostgreSQL, Redis or an outside program; and [`simulation`]: the
//! whole-system simulation (zone, endpoint, clients, a hostile network, a failing store, a crash)
//! driven by one seed.

pub mod services;
pub mod simulation;

use std::sync::Arc;

use zone_sim::{Phase, Shard, ShardExecutor, Zone, ZoneSpec};

/// A small zone built to make things happen: 16 shards of 50 m, fast NPCs with aggro, so that
/// migrations, chases, deaths and respawns all occur within a few hundred ticks.
pub const BUSY_ZONE: &str = r#"
[zone]
id = "busy"
width_m = 200
height_m = 200
shard_cols = 4
shard_rows = 4
max_players = 64
input_lead_ticks_max = 30

[player]
speed_m_per_s = 12
hit_points = 60
damage = 40
attack_range_m = 6
attack_cooldown_s = 0.1
respawn_delay_s = 0.5

[[npc_kind]]
name = "hare"
behaviour = "wander"
speed_m_per_s = 9
wander_radius_m = 60
hit_points = 30
pause_s_max = 0.3

[[npc_kind]]
name = "wolf"
behaviour = "wander"
speed_m_per_s = 8
wander_radius_m = 40
aggro_radius_m = 25
attack_range_m = 2
hit_points = 40
damage = 9
attack_cooldown_s = 0.3

[[npc_kind]]
name = "guard"
behaviour = "patrol"
speed_m_per_s = 6
wander_radius_m = 30
aggro_radius_m = 20
hit_points = 100
damage = 12

[[npc_kind]]
name = "tower"
behaviour = "idle"
speed_m_per_s = 2
aggro_radius_m = 15
attack_range_m = 15
hit_points = 500
damage = 3

[[spawner]]
kind = "hare"
count = 300
respawn_delay_s = 0.5

[[spawner]]
kind = "wolf"
count = 200
respawn_delay_s = 1
area = { x_m = 50, y_m = 50, width_m = 100, height_m = 100 }

[[spawner]]
kind = "guard"
count = 60
respawn_delay_s = 2

[[spawner]]
kind = "tower"
count = 20
respawn_delay_s = 2

[[player_spawn]]
x_m = 100
y_m = 100

[[player_spawn]]
x_m = 49
y_m = 151
"#;

pub fn busy_spec() -> Arc<ZoneSpec> {
    Arc::new(ZoneSpec::from_toml_str("busy.toml", BUSY_ZONE).expect("the busy test zone is valid"))
}

pub fn busy_zone(seed: u64) -> Zone {
    Zone::new(busy_spec(), seed).expect("zone builds")
}

/// Runs shards last to first.
pub struct Reversed;

impl ShardExecutor for Reversed {
    fn run(&self, _phase: Phase, shards: &mut [Shard], f: &(dyn Fn(&mut Shard) + Sync)) {
        shards.iter_mut().rev().for_each(f);
    }
}

/// Runs shards in an order that changes every call (a fixed permutation sequence).
pub struct Shuffled(pub std::sync::atomic::AtomicU64);

impl ShardExecutor for Shuffled {
    fn run(&self, _phase: Phase, shards: &mut [Shard], f: &(dyn Fn(&mut Shard) + Sync)) {
        let mut k = self
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut order: Vec<usize> = (0..shards.len()).collect();
        for i in (1..order.len()).rev() {
            k = k.rotate_left(17) ^ 0x2545_f491_4f6c_dd1d;
            order.swap(i, (k % (i as u64 + 1)) as usize);
        }
        for i in order {
            f(&mut shards[i]);
        }
    }
}
