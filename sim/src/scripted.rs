//! Scripted players: a seeded source of joins, leaves and inputs, so the player path can be driven
//! without a network (`zone-server --sim-players K`, tests, benchmarks).
//!
//! Given the same seed and count it produces the same stream, tick for tick. It goes through the
//! same input API as real players; what the zone accepts is what the journal records, so replay
//! never needs this generator.

use crate::input::{PlayerId, PlayerInput};
use crate::rng::DetRng;
use crate::zone::{Serial, Zone};

/// Scripted player ids start here, far from ids a token service would hand out in tests.
pub const SCRIPTED_PLAYER_ID_BASE: PlayerId = 1_000_000;

#[derive(Clone, Debug)]
struct Bot {
    id: PlayerId,
    online: bool,
    /// Tick at which the bot next changes its mind (direction, or comes back online).
    next_change: u64,
    dir: (i32, i32),
    rng: DetRng,
}

/// K scripted players.
#[derive(Clone, Debug)]
pub struct ScriptedPlayers {
    bots: Vec<Bot>,
    /// Per mille chance per tick that an online bot attacks.
    pub attack_per_mille: u32,
    /// Per 100,000 chance per tick that an online bot disconnects for a while.
    pub leave_per_100k: u32,
}

impl ScriptedPlayers {
    pub fn new(seed: u64, count: u32) -> Self {
        let bots = (0..u64::from(count))
            .map(|i| Bot {
                id: SCRIPTED_PLAYER_ID_BASE + i,
                online: false,
                next_change: 0,
                dir: (0, 0),
                rng: DetRng::new(seed ^ 0x5c21_97ed, i),
            })
            .collect();
        ScriptedPlayers {
            bots,
            attack_per_mille: 50,
            leave_per_100k: 20,
        }
    }

    /// After a restore: bots whose player is already in the zone are online again.
    pub fn adopt(&mut self, zone: &Zone) {
        for b in &mut self.bots {
            b.online = zone.players().binary_search_by_key(&b.id, |p| p.player).is_ok();
        }
    }

    pub fn len(&self) -> usize {
        self.bots.len()
    }

    /// Whether `player` is one of these scripted players (their ids ascend from
    /// [`SCRIPTED_PLAYER_ID_BASE`]).
    pub fn contains(&self, player: PlayerId) -> bool {
        player
            .checked_sub(SCRIPTED_PLAYER_ID_BASE)
            .is_some_and(|i| i < self.bots.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.bots.is_empty()
    }

    /// Drives and steps the zone `ticks` times, serially: what a harness that wants "this zone
    /// with these players after N ticks" does.
    pub fn play(&mut self, zone: &mut Zone, ticks: u64) {
        for _ in 0..ticks {
            self.drive(zone);
            zone.step(&Serial);
        }
    }

    /// Submits this tick's joins, leaves and inputs for the zone's next tick. Refusals (a full
    /// zone, say) are counted by the zone like any other.
    pub fn drive(&mut self, zone: &mut Zone) {
        let tick = zone.tick() + 1;
        let speed = zone.spec().player.speed_mm_per_tick;
        let draining = zone.is_draining();
        for b in &mut self.bots {
            if draining && b.online && b.rng.chance_per_mille(30) {
                // Told the server is going away, a client leaves within a second or so.
                let _ = zone.leave(b.id);
                b.online = false;
                b.next_change = u64::MAX;
                continue;
            }
            if !b.online {
                if tick >= b.next_change && zone.join(b.id).is_ok() {
                    b.online = true;
                    b.next_change = tick;
                }
                continue;
            }
            if b.rng.below(100_000) < u64::from(self.leave_per_100k) {
                let _ = zone.leave(b.id);
                b.online = false;
                b.next_change = tick + 60 + b.rng.below(240);
                continue;
            }
            if tick >= b.next_change {
                // Occasionally ask for more than the speed limit, to exercise capping.
                let reach = if b.rng.chance_per_mille(100) { speed * 3 } else { speed };
                b.dir = (b.rng.range_i32(-reach, reach), b.rng.range_i32(-reach, reach));
                b.next_change = tick + 30 + b.rng.below(150);
            }
            let attack = b.rng.chance_per_mille(self.attack_per_mille);
            let _ = zone.submit_input(PlayerInput {
                player: b.id,
                tick,
                move_x: b.dir.0,
                move_y: b.dir.1,
                attack,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_names_exactly_the_scripted_ids() {
        let s = ScriptedPlayers::new(1, 3);
        assert!(!s.contains(SCRIPTED_PLAYER_ID_BASE - 1));
        assert!(s.contains(SCRIPTED_PLAYER_ID_BASE));
        assert!(s.contains(SCRIPTED_PLAYER_ID_BASE + 2));
        assert!(!s.contains(SCRIPTED_PLAYER_ID_BASE + 3));
        assert!(!ScriptedPlayers::new(1, 0).contains(SCRIPTED_PLAYER_ID_BASE));
    }
}
