//! Bot behaviours: the input a bot intends, from the time, its decoded view and a seeded
//! generator. `wander` holds a random heading for 1–3 s at full speed; `chase` walks to the
//! nearest non-player object and attacks within 3 m (wandering when there is none); `idle` stands
//! still (its bot still sends input batches).
//!
//! Pure: never touches a socket or reads a clock (time is passed in), and its randomness comes
//! only from the seed, so a seed replays the same choices for the same views.

use zone_net::quantize::POS_STEP_MM;
use zone_net::view::{QObject, View};

/// Move speed, mm per tick (the demo zone's player speed; the server caps to it anyway).
pub const SPEED_MM_PER_TICK: i32 = 100;
/// Attack range in quantized position units (3 m).
pub const ATTACK_RANGE_UNITS: u64 = (3_000 / POS_STEP_MM) as u64;
/// Closer than this (1 m, quantized) a chasing bot stops walking and just attacks.
pub const STOP_RANGE_UNITS: u64 = (1_000 / POS_STEP_MM) as u64;
/// How long a wander heading is held: uniformly in this range, microseconds.
const WANDER_HOLD_US: (u64, u64) = (1_000_000, 3_000_000);
/// Players' kind in views (kind 0 in every zone file); every other kind is a target for `chase`.
const PLAYER_KIND: u16 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// A random heading held for 1–3 s, at 100 mm/tick.
    Wander,
    /// Toward the nearest non-player object, attacking within 3 m; wander when none is seen.
    Chase,
    /// No movement, no attack (input batches are still sent).
    Idle,
}

impl Behavior {
    /// The name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Behavior::Wander => "wander",
            Behavior::Chase => "chase",
            Behavior::Idle => "idle",
        }
    }
}

/// SplitMix64: a tiny, fast, seedable generator; plenty for behaviour choices.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` if the range is empty).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One tick's intended input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Move {
    pub x: i32,
    pub y: i32,
    pub attack: bool,
}

/// One bot's decision state.
#[derive(Clone, Debug)]
pub struct Brain {
    behavior: Behavior,
    rng: SplitMix64,
    heading: Move,
    /// When the wander heading changes next.
    change_at_us: u64,
    /// The view tick the current decision was made for (to skip recomputing).
    decided_for: Option<u64>,
    /// Whether the current decision is a wander heading (which expires at `change_at_us`).
    wandering: bool,
    current: Move,
}

impl Brain {
    /// A brain whose choices depend only on `seed` and `player_id`.
    pub fn new(behavior: Behavior, seed: u64, player_id: u64) -> Brain {
        let mut mix = SplitMix64::new(seed ^ player_id.rotate_left(32));
        let rng = SplitMix64::new(mix.next_u64());
        Brain {
            behavior,
            rng,
            heading: Move::default(),
            change_at_us: 0,
            decided_for: None,
            wandering: false,
            current: Move::default(),
        }
    }

    /// Whether a wander heading has expired: [`Brain::decide`] would choose anew even on the same
    /// view.
    pub fn heading_due(&self, now_us: u64) -> bool {
        self.wandering && now_us >= self.change_at_us
    }

    /// The input to send now. `me` is the bot's own object id in the view. Recomputes only when
    /// the view's tick changed or the wander heading is due to change.
    pub fn decide(&mut self, now_us: u64, view: Option<&View>, me: Option<u64>) -> Move {
        let tick = view.map_or(0, View::tick);
        let heading_due = self.heading_due(now_us);
        if self.decided_for == Some(tick) && !heading_due {
            return self.current;
        }
        let target = match self.behavior {
            Behavior::Chase => view.zip(me).and_then(|(v, me)| nearest_target(v, me)),
            Behavior::Wander | Behavior::Idle => None,
        };
        self.wandering = self.behavior != Behavior::Idle && target.is_none();
        self.current = match (self.behavior, target) {
            (Behavior::Idle, _) => Move::default(),
            (_, Some((own, target, dist2))) => chase(&own, &target, dist2),
            (_, None) => self.wander(now_us),
        };
        self.decided_for = Some(tick);
        self.current
    }

    fn wander(&mut self, now_us: u64) -> Move {
        if now_us >= self.change_at_us {
            let angle = self.rng.unit() * std::f64::consts::TAU;
            let speed = f64::from(SPEED_MM_PER_TICK);
            self.heading = Move {
                x: (angle.cos() * speed).round() as i32,
                y: (angle.sin() * speed).round() as i32,
                attack: false,
            };
            self.change_at_us = now_us.saturating_add(self.rng.between(WANDER_HOLD_US.0, WANDER_HOLD_US.1));
        }
        self.heading
    }
}

/// Squared distance between two objects, in quantized units².
fn dist2(a: &QObject, b: &QObject) -> u64 {
    let dx = u64::from(a.x.abs_diff(b.x));
    let dy = u64::from(a.y.abs_diff(b.y));
    dx.saturating_mul(dx).saturating_add(dy.saturating_mul(dy))
}

/// The bot's own object, the nearest non-player object (ties by id) and its squared distance.
pub fn nearest_target(view: &View, me: u64) -> Option<(QObject, QObject, u64)> {
    let own = *view.get(me)?;
    view.objects()
        .iter()
        .filter(|o| o.kind != PLAYER_KIND && o.id != me)
        .map(|o| (dist2(&own, o), o))
        .min_by_key(|(d, o)| (*d, o.id))
        .map(|(d, o)| (own, *o, d))
}

/// Walk toward `target` at full speed (stopping within [`STOP_RANGE_UNITS`]), attacking within
/// [`ATTACK_RANGE_UNITS`].
fn chase(own: &QObject, target: &QObject, dist2: u64) -> Move {
    let attack = dist2 <= ATTACK_RANGE_UNITS * ATTACK_RANGE_UNITS;
    if dist2 <= STOP_RANGE_UNITS * STOP_RANGE_UNITS {
        return Move { x: 0, y: 0, attack };
    }
    let dx = f64::from(target.x) - f64::from(own.x);
    let dy = f64::from(target.y) - f64::from(own.y);
    let len = dx.hypot(dy);
    let speed = f64::from(SPEED_MM_PER_TICK);
    Move {
        x: (dx / len * speed).round() as i32,
        y: (dy / len * speed).round() as i32,
        attack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: u64, kind: u16, x: u32, y: u32) -> QObject {
        QObject {
            id,
            kind,
            x,
            y,
            vx: 0,
            vy: 0,
            hp: 10,
        }
    }

    const ME: u64 = 5 | 1 << 63;

    #[test]
    fn chase_walks_to_the_nearest_npc_and_attacks_in_range() {
        let view = View::new(
            10,
            vec![
                obj(ME, PLAYER_KIND, 1_000, 1_000),
                obj(6 | 1 << 63, PLAYER_KIND, 1_001, 1_000), // another player: not a target
                obj(1, 2, 1_100, 1_000),
                obj(2, 3, 1_000, 1_050), // nearest: 50 units (5 m) north
            ],
        )
        .unwrap();
        let mut b = Brain::new(Behavior::Chase, 1, 5);
        let m = b.decide(0, Some(&view), Some(ME));
        assert_eq!(
            m,
            Move {
                x: 0,
                y: 100,
                attack: false
            }
        );

        let close = View::new(11, vec![obj(ME, PLAYER_KIND, 1_000, 1_000), obj(2, 3, 1_020, 1_000)]).unwrap();
        assert_eq!(
            b.decide(1, Some(&close), Some(ME)),
            Move {
                x: 100,
                y: 0,
                attack: true
            }
        );
        let touching = View::new(12, vec![obj(ME, PLAYER_KIND, 1_000, 1_000), obj(2, 3, 1_005, 1_000)]).unwrap();
        assert_eq!(b.decide(2, Some(&touching), Some(ME)), Move { x: 0, y: 0, attack: true });
    }

    #[test]
    fn wander_holds_a_full_speed_heading_and_is_seeded() {
        let mut a = Brain::new(Behavior::Wander, 42, 7);
        let mut b = Brain::new(Behavior::Wander, 42, 7);
        let first = a.decide(0, None, None);
        assert_eq!(first, b.decide(0, None, None));
        let speed = f64::from(first.x).hypot(f64::from(first.y));
        assert!((speed - 100.0).abs() <= 1.0, "{first:?}");
        assert_eq!(a.decide(999_999, None, None), first, "held for at least 1 s");
        let mut changes = 0;
        let mut last = first;
        for s in 1..=30u64 {
            let m = a.decide(s * 1_000_000, None, None);
            changes += usize::from(m != last);
            last = m;
        }
        assert!((10..=30).contains(&changes), "{changes} heading changes in 30 s");
        assert_ne!(Brain::new(Behavior::Wander, 43, 7).decide(0, None, None), first);
    }

    #[test]
    fn idle_and_chase_without_a_view() {
        assert_eq!(Brain::new(Behavior::Idle, 1, 1).decide(0, None, None), Move::default());
        let m = Brain::new(Behavior::Chase, 1, 1).decide(0, None, Some(ME));
        assert_ne!((m.x, m.y), (0, 0), "wanders");
    }
}
