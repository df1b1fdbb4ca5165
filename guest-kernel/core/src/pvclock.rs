//! kvmclock's scaling of a TSC delta to nanoseconds (KVM's `pvclock_scale_delta`): the
//! delta shifted by `shift` (left if positive), times `mul` as a 32.32 fixed-point fraction.

pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let shifted = if shift >= 0 {
        delta.checked_shl(shift as u32).unwrap_or(0)
    } else {
        delta
            .checked_shr(u32::from(shift.unsigned_abs()))
            .unwrap_or(0)
    };
    ((u128::from(shifted) * u128::from(mul)) >> 32) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_as_kvm_does() {
        // mul 2^31, shift 0: half a nanosecond per tick (a 2 GHz TSC).
        assert_eq!(scale_delta(2_000, 1 << 31, 0), 1_000);
        // A 2.6 GHz TSC as KVM encodes it: shift -1, mul = 2^32 * 2 / 2.6.
        let mul = ((1u64 << 33) as f64 / 2.6) as u32;
        let ns = scale_delta(2_600_000_000, mul, -1);
        assert!((999_999_000..=1_000_000_000).contains(&ns), "{ns}");
        assert_eq!(scale_delta(1, 1, 2), 0);
        assert_eq!(
            scale_delta(1 << 40, u32::MAX, 0),
            ((1u128 << 40) * u128::from(u32::MAX) >> 32) as u64
        );
        // Out-of-range shifts give 0, never a panic.
        assert_eq!(scale_delta(5, 7, 127), 0);
        assert_eq!(scale_delta(5, 7, -128), 0);
    }
}
