//! Quantization of object state for the wire: positions, velocities and hit points as the small
//! integers a snapshot carries, and back.
//!
//! | quantity | sim unit      | wire unit              | wire type | out of range      |
//! |----------|---------------|------------------------|-----------|-------------------|
//! | position | mm (i32)      | 100 mm from the origin | `u32`     | clamped to 0..max |
//! | velocity | mm/tick (i32) | 10 mm/tick (cm/tick)   | `i16`     | saturates         |
//! | hp       | points (i32)  | points                 | `u16`     | clamped to 0..max |
//!
//! Rounding is to nearest (halves away from zero, or up for positions), so the exact properties
//! below hold; the tests check them exhaustively at the edges and by proptest elsewhere:
//! - `quantize(dequantize(q)) == q` for every wire value `q` whose dequantized value is
//!   representable in the sim unit (for velocities and hp: every `q`);
//! - `|dequantize(quantize(x)) - x| <= step / 2` for every in-range `x`.
//!
//! Pure integer arithmetic: no floating point, no clock, nothing that can panic.

/// Millimetres per wire position unit (10 cm).
pub const POS_STEP_MM: i32 = 100;
/// Millimetres per tick per wire velocity unit (1 cm/tick).
pub const VEL_STEP_MM_PER_TICK: i32 = 10;

/// A position coordinate in mm to wire units relative to `origin_mm` (the zone's minimum corner
/// on that axis). Points below the origin clamp to 0.
pub fn quantize_pos(mm: i32, origin_mm: i32) -> u32 {
    let rel_mm = i64::from(mm) - i64::from(origin_mm);
    if rel_mm <= 0 {
        return 0;
    }
    let q = (rel_mm + i64::from(POS_STEP_MM / 2)) / i64::from(POS_STEP_MM);
    u32::try_from(q).unwrap_or(u32::MAX)
}

/// A wire position coordinate back to mm. Saturates at `i32::MAX` for values beyond the sim's
/// range (which a server never sends, but a hostile datagram may).
pub fn dequantize_pos(q: u32, origin_mm: i32) -> i32 {
    let mm = i64::from(origin_mm) + i64::from(q) * i64::from(POS_STEP_MM);
    i32::try_from(mm).unwrap_or(i32::MAX)
}

/// A velocity component in mm/tick to wire units (cm/tick), saturating at the `i16` range.
pub fn quantize_vel(mm_per_tick: i32) -> i16 {
    let v = i64::from(mm_per_tick);
    let half = i64::from(VEL_STEP_MM_PER_TICK / 2);
    let q = if v >= 0 { (v + half) / 10 } else { (v - half) / 10 };
    i16::try_from(q).unwrap_or(if q < 0 { i16::MIN } else { i16::MAX })
}

/// A wire velocity component back to mm/tick.
pub fn dequantize_vel(q: i16) -> i32 {
    i32::from(q) * VEL_STEP_MM_PER_TICK
}

/// Hit points to wire units, clamped to `0..=u16::MAX`.
pub fn quantize_hp(hp: i32) -> u16 {
    u16::try_from(hp.max(0)).unwrap_or(u16::MAX)
}

/// Wire hit points back to sim hit points.
pub fn dequantize_hp(q: u16) -> i32 {
    i32::from(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn edges() {
        assert_eq!(quantize_pos(-5, 0), 0);
        assert_eq!(quantize_pos(49, 0), 0);
        assert_eq!(quantize_pos(50, 0), 1);
        assert_eq!(quantize_pos(i32::MAX, i32::MIN), 42_949_673);
        assert_eq!(dequantize_pos(u32::MAX, 0), i32::MAX);
        assert_eq!(quantize_vel(4), 0);
        assert_eq!(quantize_vel(5), 1);
        assert_eq!(quantize_vel(-5), -1);
        assert_eq!(quantize_vel(-4), 0);
        assert_eq!(quantize_vel(i32::MAX), i16::MAX);
        assert_eq!(quantize_vel(i32::MIN), i16::MIN);
        assert_eq!(quantize_hp(-3), 0);
        assert_eq!(quantize_hp(70_000), u16::MAX);
        for q in i16::MIN..=i16::MAX {
            assert_eq!(quantize_vel(dequantize_vel(q)), q);
        }
        for q in 0..=u16::MAX {
            assert_eq!(quantize_hp(dequantize_hp(q)), q);
        }
    }

    proptest! {
        #[test]
        fn pos_round_trips(origin_mm in -1_000_000_000i32..1_000_000_000, q in any::<u32>()) {
            let mm = i64::from(origin_mm) + i64::from(q) * 100;
            if mm <= i64::from(i32::MAX) {
                prop_assert_eq!(quantize_pos(dequantize_pos(q, origin_mm), origin_mm), q);
            }
        }

        #[test]
        fn pos_error_is_at_most_half_a_step(origin_mm in -1_000_000_000i32..1_000_000_000, rel_mm in 0i64..2_000_000_000) {
            let mm = i64::from(origin_mm) + rel_mm;
            prop_assume!(mm <= i64::from(i32::MAX) - 100);
            let mm = mm as i32;
            let back = dequantize_pos(quantize_pos(mm, origin_mm), origin_mm);
            prop_assert!((i64::from(back) - i64::from(mm)).abs() <= 50, "{mm} -> {back}");
        }

        #[test]
        fn vel_error_is_at_most_half_a_step(v in -327_670i32..=327_670) {
            let back = dequantize_vel(quantize_vel(v));
            prop_assert!((back - v).abs() <= 5, "{v} -> {back}");
        }
    }
}
