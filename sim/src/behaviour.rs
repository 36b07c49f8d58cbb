//! NPC behaviour: the `npc_ai` system, and [`Due`], the tick at which each NPC next has to decide.
//!
//! **An NPC decides only when its state asks for it.** A walking NPC (wander `Goto`, `Patrol`)
//! aims once and keeps that velocity for as many whole steps as fit towards its target on both
//! axes; then it aims again from where it is (at most a few times per leg, the last aim being the
//! exact remainder), and the tick after its position equals the target it arrives (pauses, or
//! turns to the next patrol corner). A paused NPC decides when its pause ends; an idle one never
//! does. So between decisions nothing about an NPC changes but its position, which `movement`
//! advances, and the decision tick can be computed from the state alone ([`due_tick`]): that is
//! what makes [`Due`] a cache and not state. It is rebuilt from the state for every newcomer
//! (spawned, migrated, restored: first field 0), so a restored or migrated NPC behaves exactly as if
//! nothing had happened, and it is never hashed, captured or sent.
//!
//! Players break the schedule: while a shard's watch area holds a living player, every NPC that can
//! aggro looks for one every tick (through the players grid), and a chasing NPC decides every tick.
//!
//! Must never: depend on the order NPCs are visited in (each decides from its own state, its own
//! generator and the read-only players view; attacks leave as mail, sorted at the boundary), or let
//! [`Due`] hold anything that [`due_tick`] would not give for the same state.

use bevy_ecs::prelude::*;

use crate::object::{Mind, Npc, Obj, Pos, Vel};
use crate::shard::{Clock, Inbox, Mail, Nearby, Outbox, PlayerGrid, PlayerView, Rules, ShardInfo, Stats};
use crate::units::{Rect, Vec2};
use crate::zone_file::{Behaviour, KindParams, ZoneSpec};

/// The tick at which an NPC next has to decide; a cache of [`due_tick`] of its state, not state.
/// A first field of 0 (what every NPC spawns with: `Due::arrived`) means "not known yet".
/// The second field is the NPC's **write note**: the last tick at which it arrived in its shard
/// (spawned, migrated in) or anything wrote it beyond its position (`npc_ai` its velocity or
/// `Npc`, `player_attacks` its health). The capture of changes (`crate::capture`) reads this one
/// number per NPC instead of four components' bevy change ticks, and `npc_ai` writes through
/// `bypass_change_detection`, which saves it a tick pointer per NPC visited (7% of the tick's
/// instructions). Every writer of an NPC must note it; debug builds check that every write bevy
/// marked was noted.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due(pub(crate) u64, pub(crate) u64);

impl Due {
    /// What an NPC arriving in a shard at `tick` carries: no decision tick known yet, and the
    /// arrival noted for the capture of changes.
    pub(crate) fn arrived(tick: u64) -> Due {
        Due(0, tick)
    }

    /// Whether the NPC arrived or was written after `tick` (see the type's doc).
    pub(crate) fn written_after(&self, tick: u64) -> bool {
        self.1 > tick
    }
}

/// No decision is ever due (an idle NPC standing at home).
const NEVER: u64 = u64::MAX;

/// How many whole steps of `vel` fit in `rem` on both axes (0 when `vel` is zero, points away from
/// `rem` on an axis, or is longer than it on one).
fn whole_steps(rem: Vec2, vel: Vec2) -> u64 {
    #[inline(always)]
    fn axis(r: i32, v: i32) -> u64 {
        if v == 0 {
            u64::MAX
        } else if r != 0 && (r > 0) == (v > 0) {
            (i64::from(r) / i64::from(v)) as u64
        } else {
            0
        }
    }
    if vel == Vec2::ZERO {
        return 0;
    }
    axis(rem.x, vel.x).min(axis(rem.y, vel.y))
}

/// Where a walking NPC is going: its `Goto` target or its patrol corner (inside the zone).
fn walk_target(k: &KindParams, bounds: Rect, npc: &Npc) -> Option<Vec2> {
    match npc.mind {
        Mind::Goto { to } => Some(bounds.clamp(to)),
        Mind::Patrol { leg } => Some(patrol_corner(k, bounds, npc.home, leg)),
        Mind::Pause { .. } | Mind::Chase { .. } => None,
    }
}

fn patrol_corner(k: &KindParams, bounds: Rect, home: Vec2, leg: u8) -> Vec2 {
    let r = k.wander_radius_mm;
    let (dx, dy) = [(-r, -r), (r, -r), (r, r), (-r, r)][usize::from(leg % 4)];
    bounds.clamp(Vec2::new(home.x.saturating_add(dx), home.y.saturating_add(dy)))
}

/// The first tick `>= from` at which an NPC in this state must decide, if no player interferes.
/// `now` is the tick whose movement has not been applied yet: `here` is the position before it.
/// A pure function of the state, so it gives the same answer for a newcomer mid-leg
/// (`from = now`) as it gave when the NPC last decided (`from = now + 1`).
pub(crate) fn due_tick(k: &KindParams, bounds: Rect, npc: &Npc, here: Vec2, vel: Vec2, now: u64, from: u64) -> u64 {
    match npc.mind {
        Mind::Chase { .. } => from,
        Mind::Pause { until } => {
            if vel != Vec2::ZERO {
                from
            } else if k.behaviour == Behaviour::Wander {
                until.max(from)
            } else {
                NEVER
            }
        }
        Mind::Goto { .. } | Mind::Patrol { .. } => {
            let to = walk_target(k, bounds, npc).unwrap_or(here);
            let rem = Vec2::new(to.x.wrapping_sub(here.x), to.y.wrapping_sub(here.y));
            now.saturating_add(whole_steps(rem, vel)).max(from)
        }
    }
}

/// A decision outside a chase, at tick `now` (a pause ends, a walker re-aims or arrives). Returns
/// the next due tick.
fn decide(k: &KindParams, bounds: Rect, npc: &mut Npc, here: Vec2, vel: &mut Vec2, now: u64) -> u64 {
    if let Mind::Pause { until } = npc.mind {
        *vel = Vec2::ZERO;
        if now >= until && k.behaviour == Behaviour::Wander {
            let r = k.wander_radius_mm;
            let to = Vec2::new(
                npc.home.x.saturating_add(npc.rng.range_i32(-r, r)),
                npc.home.y.saturating_add(npc.rng.range_i32(-r, r)),
            );
            npc.mind = Mind::Goto { to: bounds.clamp(to) };
        }
    }
    match npc.mind {
        Mind::Goto { to } => {
            let to = bounds.clamp(to);
            if here == to {
                let pause = match k.behaviour {
                    Behaviour::Idle => u64::MAX - 1,
                    _ => npc.rng.below(u64::from(k.pause_ticks_max) + 1),
                };
                npc.mind = Mind::Pause {
                    until: now.saturating_add(pause),
                };
                *vel = Vec2::ZERO;
            } else {
                *vel = here.step_towards(to, k.speed_mm_per_tick);
            }
        }
        Mind::Patrol { leg } => {
            let mut corner = patrol_corner(k, bounds, npc.home, leg);
            if here == corner {
                let next = (leg + 1) % 4;
                npc.mind = Mind::Patrol { leg: next };
                corner = patrol_corner(k, bounds, npc.home, next);
            }
            *vel = here.step_towards(corner, k.speed_mm_per_tick);
        }
        Mind::Pause { .. } | Mind::Chase { .. } => {}
    }
    due_tick(k, bounds, npc, here, *vel, now, now + 1)
}

/// The NPCs, for `npc_ai`'s narrow pass that only reads when each is due.
type NpcDue = Query<'static, 'static, (Entity, &'static Due), (With<Obj>, With<Pos>, With<Vel>, With<Npc>)>;

/// NPC behaviour: chase and attack a player in aggro range, else wander, patrol or stand, deciding
/// only at due ticks (see the module doc). Attacks go out as mail.
///
/// With no living player in the watch area, one narrow pass over `Due` alone finds the NPCs due
/// this tick (a walker decides a few times a leg, a paused NPC once a pause), and only those are
/// fetched whole: fetching every NPC's five components to compare one number cost the tick more
/// than the decisions did (`benchmarks/2026-11-29-tick.md`, "Third step"). Either way NPCs are
/// visited in storage order.
// A bevy system: its parameters are its data access (an alias for the full query would have to
// spell `&'static mut`, which `tests/tests/guard.rs` reads as a `static mut`).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn npc_ai(
    mut npcs: ParamSet<(NpcDue, Query<(&Obj, &Pos, &mut Vel, &mut Npc, &mut Due)>)>,
    mut due_now: Local<Vec<Entity>>,
    mut nearby: ResMut<Nearby>,
    inbox: Res<Inbox>,
    info: Res<ShardInfo>,
    rules: Res<Rules>,
    clock: Res<Clock>,
    mut out: ResMut<Outbox>,
    mut stats: ResMut<Stats>,
) {
    let spec = &rules.0;
    let tick = clock.tick;
    let nearby = &mut *nearby;
    nearby.players.clear();
    nearby
        .players
        .extend(inbox.players.iter().filter(|p| p.alive && info.watch.contains(p.pos)));
    if !nearby.players.is_empty() {
        nearby.grid.build(info.watch, spec.player_awareness_mm() / 2, &nearby.players);
    }
    let mut think = Think {
        spec,
        tick,
        players: &nearby.players,
        grid: &nearby.grid,
        out: &mut out,
        stats: &mut stats,
    };
    if think.players.is_empty() {
        due_now.clear();
        npcs.p0().iter().for_each(|(e, due)| {
            if due.0 <= tick {
                due_now.push(e);
            }
        });
        let mut q = npcs.p1();
        for &e in due_now.iter() {
            let Ok((obj, pos, vel, npc, due)) = q.get_mut(e) else {
                unreachable!("the narrow query holds only NPCs")
            };
            think.npc(obj, pos, vel, npc, due);
        }
    } else {
        for (obj, pos, vel, npc, due) in &mut npcs.p1() {
            think.npc(obj, pos, vel, npc, due);
        }
    }
}

/// What one `npc_ai` run decides with: the rules, the tick, the players nearby, and where attacks
/// and counts go.
struct Think<'a> {
    spec: &'a ZoneSpec,
    tick: u64,
    players: &'a [PlayerView],
    grid: &'a PlayerGrid,
    out: &'a mut Outbox,
    stats: &'a mut Stats,
}

impl Think<'_> {
    /// One NPC's turn: chase or attack a player in range, else decide if due.
    fn npc(&mut self, obj: &Obj, pos: &Pos, mut vel: Mut<Vel>, mut npc: Mut<Npc>, mut due: Mut<Due>) {
        let (spec, tick, players) = (self.spec, self.tick, self.players);
        let bounds = spec.bounds;
        let aggro_possible = !players.is_empty();
        // `Due` is a cache nobody watches. `Vel` and `Npc` are written through
        // `bypass_change_detection` too; wherever they may change, `due.1` notes the tick: the
        // capture of changes (`crate::capture`) relies on it.
        let due = due.bypass_change_detection();
        if due.0 > tick && !aggro_possible {
            return;
        }
        let k = &spec.kinds[usize::from(obj.kind)];
        let here = pos.0;
        if due.0 == 0 {
            due.0 = due_tick(k, bounds, &npc, here, vel.0, tick, tick);
        }
        if k.aggro_radius_mm > 0 && aggro_possible {
            let leash2 = i64::from(k.aggro_radius_mm).pow(2) * 4;
            let mut target = match npc.mind {
                Mind::Chase { player } => players
                    .binary_search_by_key(&player, |p| p.player)
                    .ok()
                    .map(|i| players[i])
                    .filter(|p| p.pos.dist2(here) <= leash2),
                _ => None,
            };
            if target.is_none() {
                target = self.grid.nearest(here, k.aggro_radius_mm);
            }
            if let Some(t) = target {
                due.1 = tick;
                let vel = &mut vel.bypass_change_detection().0;
                let npc = npc.bypass_change_detection();
                npc.mind = Mind::Chase { player: t.player };
                let range2 = i64::from(k.attack_range_mm).pow(2);
                if t.pos.dist2(here) <= range2 {
                    *vel = Vec2::ZERO;
                    if npc.ready_at <= tick && k.damage > 0 {
                        self.out.mail.push(Mail::Damage {
                            target: t.player,
                            source: obj.id,
                            amount: k.damage,
                        });
                        npc.ready_at = tick + u64::from(k.attack_cooldown_ticks);
                        self.stats.0.attacks += 1;
                    }
                } else {
                    *vel = here.step_towards(t.pos, k.speed_mm_per_tick);
                }
                due.0 = tick + 1;
                return;
            }
        }
        let chasing = matches!(npc.mind, Mind::Chase { .. });
        if !chasing && due.0 > tick {
            return;
        }
        due.1 = tick;
        let vel = &mut vel.bypass_change_detection().0;
        let npc = npc.bypass_change_detection();
        if chasing {
            // Lost the player: go home (wander and idle) or resume the round (patrol), now.
            npc.mind = match k.behaviour {
                Behaviour::Patrol => Mind::Patrol { leg: 0 },
                Behaviour::Wander | Behaviour::Idle => Mind::Goto { to: npc.home },
            };
        }
        due.0 = decide(k, bounds, npc, here, vel, tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::DetRng;

    fn kind(behaviour: Behaviour) -> KindParams {
        KindParams {
            name: "k".into(),
            behaviour,
            speed_mm_per_tick: 83,
            wander_radius_mm: 60_000,
            aggro_radius_mm: 0,
            attack_range_mm: 0,
            hit_points: 1,
            damage: 0,
            attack_cooldown_ticks: 0,
            pause_ticks_max: 120,
        }
    }

    fn npc(mind: Mind, home: Vec2) -> Npc {
        Npc {
            spawner: 0,
            home,
            mind,
            rng: DetRng::new(1, 2),
            ready_at: 0,
        }
    }

    const BOUNDS: Rect = Rect {
        min: Vec2::new(0, 0),
        max: Vec2::new(1_000_000, 1_000_000),
    };

    /// Walks an NPC tick by tick (at most `ticks`, or until `stop`), deciding only when due, and
    /// checks at every tick that a newcomer with the same state (a migrant, a restore) would get
    /// the same due tick.
    fn walk(k: &KindParams, mut n: Npc, mut here: Vec2, ticks: u64, stop: impl Fn(&Npc) -> bool) -> (Npc, Vec2, u32, u64) {
        let mut vel = Vec2::ZERO;
        let mut due = due_tick(k, BOUNDS, &n, here, vel, 1, 1);
        let mut decisions = 0;
        for t in 1..=ticks {
            assert_eq!(due_tick(k, BOUNDS, &n, here, vel, t, t), due.max(t), "newcomer at tick {t}");
            if due <= t {
                due = decide(k, BOUNDS, &mut n, here, &mut vel, t);
                decisions += 1;
                assert!(due > t);
                if stop(&n) {
                    return (n, here, decisions, t);
                }
            }
            assert!(vel.len2() <= i64::from(k.speed_mm_per_tick + 1).pow(2), "{vel:?}");
            here = BOUNDS.clamp(here.saturating_add(vel));
        }
        (n, here, decisions, ticks)
    }

    #[test]
    fn a_walker_reaches_its_exact_target_with_few_decisions() {
        let k = kind(Behaviour::Wander);
        let home = Vec2::new(500_000, 500_000);
        let to = Vec2::new(537_123, 451_777);
        let paused = |n: &Npc| matches!(n.mind, Mind::Pause { .. });
        let (_, here, decisions, t) = walk(&k, npc(Mind::Goto { to }, home), home, 2_000, paused);
        assert_eq!(here, to);
        // 60.9 m at 83 mm a tick: 734 ticks if every step were a full one.
        assert!((734..760).contains(&t), "arrived at tick {t}");
        assert!(decisions <= 6, "{decisions} decisions");
        // And it keeps going: pauses, walks again, never more than a handful of decisions a leg.
        let (_, _, decisions, _) = walk(&k, npc(Mind::Goto { to }, home), home, 20_000, |_| false);
        assert!(decisions < 20_000 / 100, "{decisions} decisions");
    }

    #[test]
    fn a_patrol_turns_at_each_corner() {
        let k = kind(Behaviour::Patrol);
        let home = Vec2::new(500_000, 500_000);
        let (n, _, decisions, _) = walk(&k, npc(Mind::Patrol { leg: 0 }, home), home, 20_000, |_| false);
        // 120 m a side at 83 mm a tick: ~1,446 ticks a side, 13 sides and a bit.
        assert!(matches!(n.mind, Mind::Patrol { .. }));
        assert!(decisions < 13 * 6, "{decisions} decisions");
    }

    #[test]
    fn an_idle_npc_never_decides_again() {
        let k = kind(Behaviour::Idle);
        let n = npc(Mind::Pause { until: u64::MAX - 1 }, Vec2::new(5, 5));
        assert_eq!(due_tick(&k, BOUNDS, &n, Vec2::new(5, 5), Vec2::ZERO, 7, 7), NEVER);
    }

    #[test]
    fn whole_steps_counts_only_steps_that_fit_on_both_axes() {
        assert_eq!(whole_steps(Vec2::new(100, 10), Vec2::new(10, 1)), 10);
        assert_eq!(whole_steps(Vec2::new(100, 5), Vec2::new(10, 1)), 5);
        assert_eq!(whole_steps(Vec2::new(-100, 0), Vec2::new(-10, 0)), 10);
        assert_eq!(whole_steps(Vec2::new(100, 0), Vec2::new(10, 1)), 0);
        assert_eq!(whole_steps(Vec2::new(100, -5), Vec2::new(10, 1)), 0);
        assert_eq!(whole_steps(Vec2::new(9, 9), Vec2::new(10, 1)), 0);
        assert_eq!(whole_steps(Vec2::new(9, 9), Vec2::ZERO), 0);
    }
}
