//! Integer units and geometry for the simulation.
//!
//! Positions are `i32` millimetres, velocities are millimetres per tick, time is whole ticks at
//! [`TICK_RATE_HZ`]. Human units (metres, seconds) exist only in zone files and are converted once,
//! at load, by [`crate::zone_file`]. Nothing here may use floating point on the tick path.

/// The fixed simulation rate. Every duration inside `sim` is a count of these ticks.
pub const TICK_RATE_HZ: u32 = 60;

/// Millimetres per metre: positions are stored in millimetres.
pub const MM_PER_M: i64 = 1000;

/// A point in zone space, in millimetres.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vec2 {
    pub x: i32,
    pub y: i32,
}

impl Vec2 {
    pub const ZERO: Vec2 = Vec2 { x: 0, y: 0 };

    pub const fn new(x: i32, y: i32) -> Self {
        Vec2 { x, y }
    }

    /// Squared distance, in mm², computed in `i64` so it never overflows for in-zone points.
    pub fn dist2(self, other: Vec2) -> i64 {
        let dx = i64::from(other.x) - i64::from(self.x);
        let dy = i64::from(other.y) - i64::from(self.y);
        dx * dx + dy * dy
    }

    /// Squared length.
    pub fn len2(self) -> i64 {
        Vec2::ZERO.dist2(self)
    }

    /// The step from `self` towards `target` of at most `speed` mm (exact integer maths).
    /// Returns the target itself when it is within reach.
    pub fn step_towards(self, target: Vec2, speed: i32) -> Vec2 {
        let dx = i64::from(target.x) - i64::from(self.x);
        let dy = i64::from(target.y) - i64::from(self.y);
        let d2 = dx * dx + dy * dy;
        let speed = i64::from(speed.max(0));
        if d2 <= speed * speed {
            return Vec2::new((dx) as i32, (dy) as i32);
        }
        let d = isqrt(d2 as u64) as i64;
        Vec2::new((dx * speed / d) as i32, (dy * speed / d) as i32)
    }

    /// Scales `self` down so that its length is at most `max` (exact integer maths).
    /// Returns the vector and whether it was shortened.
    pub fn cap_length(self, max: i32) -> (Vec2, bool) {
        let max = i64::from(max.max(0));
        let l2 = self.len2();
        if l2 <= max * max {
            return (self, false);
        }
        let l = isqrt(l2 as u64) as i64;
        (
            Vec2::new((i64::from(self.x) * max / l) as i32, (i64::from(self.y) * max / l) as i32),
            true,
        )
    }

    pub fn saturating_add(self, d: Vec2) -> Vec2 {
        Vec2::new(self.x.saturating_add(d.x), self.y.saturating_add(d.y))
    }
}

/// Integer square root (floor), exact for every `u64`.
///
/// A float estimate (IEEE-754 square root is correctly rounded, so the estimate is the same on
/// every platform) corrected with integer arithmetic: the result is the exact floor whatever the
/// estimate, which makes it both fast and deterministic. (`u64::isqrt` is exact too but several
/// times slower, and this runs for every moving object every tick.)
#[inline]
pub fn isqrt(v: u64) -> u64 {
    let mut r = (v as f64).sqrt() as u64;
    while r > 0 && r.checked_mul(r).is_none_or(|sq| sq > v) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= v) {
        r += 1;
    }
    r
}

/// An axis-aligned rectangle in millimetres: `min` inclusive, `max` exclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    pub min: Vec2,
    pub max: Vec2,
}

impl Rect {
    pub fn contains(&self, p: Vec2) -> bool {
        // `&`, not `&&`: four compares and no branch (movement asks this of every object).
        (p.x >= self.min.x) & (p.x < self.max.x) & (p.y >= self.min.y) & (p.y < self.max.y)
    }

    /// The nearest point inside the rectangle (max is exclusive, so it clamps to `max - 1`).
    pub fn clamp(&self, p: Vec2) -> Vec2 {
        // `max` then `min` rather than `clamp`, whose check that min <= max costs movement a branch
        // per object; the same answer for any rectangle that holds a point.
        Vec2::new(p.x.max(self.min.x).min(self.max.x - 1), p.y.max(self.min.y).min(self.max.y - 1))
    }

    pub fn width(&self) -> i64 {
        i64::from(self.max.x) - i64::from(self.min.x)
    }

    pub fn height(&self) -> i64 {
        i64::from(self.max.y) - i64::from(self.min.y)
    }

    pub fn area(&self) -> i64 {
        self.width().max(0) * self.height().max(0)
    }

    pub fn intersect(&self, o: &Rect) -> Option<Rect> {
        let r = Rect {
            min: Vec2::new(self.min.x.max(o.min.x), self.min.y.max(o.min.y)),
            max: Vec2::new(self.max.x.min(o.max.x), self.max.y.min(o.max.y)),
        };
        (r.min.x < r.max.x && r.min.y < r.max.y).then_some(r)
    }

    /// Grows the rectangle by `by` mm on every side.
    pub fn expand(&self, by: i32) -> Rect {
        Rect {
            min: Vec2::new(self.min.x.saturating_sub(by), self.min.y.saturating_sub(by)),
            max: Vec2::new(self.max.x.saturating_add(by), self.max.y.saturating_add(by)),
        }
    }
}

/// Converts metres (as written in a zone file) to millimetres, rounding to nearest.
pub fn metres_to_mm(m: f64) -> i64 {
    (m * MM_PER_M as f64).round() as i64
}

/// Converts seconds to whole ticks, rounding to nearest.
pub fn secs_to_ticks(s: f64) -> u64 {
    (s * f64::from(TICK_RATE_HZ)).round().max(0.0) as u64
}

/// Converts metres per second to millimetres per tick, rounding to nearest.
pub fn speed_to_mm_per_tick(m_per_s: f64) -> i64 {
    (m_per_s * MM_PER_M as f64 / f64::from(TICK_RATE_HZ)).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_towards_reaches_and_caps() {
        let a = Vec2::new(0, 0);
        assert_eq!(a.step_towards(Vec2::new(30, 40), 100), Vec2::new(30, 40));
        assert_eq!(a.step_towards(Vec2::new(300, 400), 50), Vec2::new(30, 40));
        assert_eq!(a.step_towards(a, 50), Vec2::ZERO);
    }

    #[test]
    fn cap_length_is_exact() {
        assert_eq!(Vec2::new(300, 400).cap_length(50), (Vec2::new(30, 40), true));
        assert_eq!(Vec2::new(3, 4).cap_length(50), (Vec2::new(3, 4), false));
    }

    #[test]
    fn isqrt_is_exact() {
        for v in (0..100_000u64).chain([u64::MAX, u64::MAX - 1, (1 << 53) + 1, 4_000_000_000u64 * 4_000_000_000]) {
            assert_eq!(isqrt(v), v.isqrt(), "{v}");
        }
        let mut x = 1u64;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            assert_eq!(isqrt(x), x.isqrt(), "{x}");
            let sq = (x >> 32) * (x >> 32);
            assert_eq!(isqrt(sq), x >> 32);
            assert_eq!(isqrt(sq.saturating_sub(1)), sq.saturating_sub(1).isqrt());
        }
    }

    #[test]
    fn rect_clamp_keeps_inside() {
        let r = Rect {
            min: Vec2::new(0, 0),
            max: Vec2::new(10, 10),
        };
        assert_eq!(r.clamp(Vec2::new(-5, 20)), Vec2::new(0, 9));
        assert!(r.contains(r.clamp(Vec2::new(i32::MAX, i32::MIN))));
    }
}
