//! Bounds-checked little-endian field access. Every helper returns `None` instead of
//! panicking when the field does not lie entirely inside the slice.

pub(crate) fn array_at<const N: usize>(data: &[u8], offset: usize) -> Option<[u8; N]> {
    let end = offset.checked_add(N)?;
    data.get(offset..end)?.try_into().ok()
}

pub(crate) fn u16_at(data: &[u8], offset: usize) -> Option<u16> {
    array_at(data, offset).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(data: &[u8], offset: usize) -> Option<u32> {
    array_at(data, offset).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(data: &[u8], offset: usize) -> Option<u64> {
    array_at(data, offset).map(u64::from_le_bytes)
}

/// `data[offset..offset + len]` with both values taken from untrusted 64-bit fields.
pub(crate) fn range(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

/// Rounds `value` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) const fn align_up(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let d = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&d, 0), Some(0x0201));
        assert_eq!(u32_at(&d, 5), Some(0x0908_0706));
        assert_eq!(u32_at(&d, 6), None);
        assert_eq!(u64_at(&d, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(u64_at(&d, 2), None);
        assert_eq!(u64_at(&d, usize::MAX), None);
        assert_eq!(range(&d, 8, 1), Some(&d[8..]));
        assert_eq!(range(&d, 9, 0), Some(&d[9..]));
        assert_eq!(range(&d, 9, 1), None);
        assert_eq!(range(&d, u64::MAX, 2), None);
        assert_eq!(range(&d, 2, u64::MAX), None);
    }

    #[test]
    fn align_up_handles_overflow() {
        assert_eq!(align_up(0, 4096), Some(0));
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX - 4094, 4096), None);
        assert_eq!(align_up(u64::MAX - 4095, 4096), Some(u64::MAX - 4095));
    }
}
