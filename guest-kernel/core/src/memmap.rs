//! Turning the boot memory map into free frames.

use crate::frame::FrameAllocator;
use fluke_abi::boot::{HvmMemmapEntry, E820_RAM, LOW_MEMORY_END};

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

/// The usable-RAM ranges of a memory map; entries whose end overflows are clipped, empty
/// ones skipped. Entries are not assumed to be sorted or disjoint.
pub fn ram_ranges(entries: &[HvmMemmapEntry]) -> impl Iterator<Item = PhysRange> + '_ {
    entries
        .iter()
        .filter(|e| e.type_ == E820_RAM && e.size != 0)
        .map(|e| PhysRange {
            start: e.addr,
            end: e.addr.saturating_add(e.size),
        })
}

/// The end of the highest RAM range, capped at `limit` (what the allocator can track).
pub fn ram_end(entries: &[HvmMemmapEntry], limit: u64) -> u64 {
    ram_ranges(entries)
        .map(|r| r.end)
        .max()
        .unwrap_or(0)
        .min(limit)
}

/// Frees every RAM frame of the map, then reserves the first MiB (boot structures, BIOS
/// areas) and each range in `reserved` (kernel image, bundle, boot info, ...). Reserved
/// memory-map entries are never freed, even where a RAM entry overlaps them.
pub fn populate(
    alloc: &mut FrameAllocator<'_>,
    entries: &[HvmMemmapEntry],
    reserved: &[PhysRange],
) {
    for r in ram_ranges(entries) {
        alloc.add_free_range(r.start, r.end);
    }
    for e in entries.iter().filter(|e| e.type_ != E820_RAM) {
        alloc.reserve_range(e.addr, e.addr.saturating_add(e.size));
    }
    alloc.reserve_range(0, LOW_MEMORY_END);
    for r in reserved {
        alloc.reserve_range(r.start, r.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluke_abi::boot::E820_RESERVED;
    use std::vec;

    fn e(addr: u64, size: u64, type_: u32) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            type_,
            reserved: 0,
        }
    }

    #[test]
    fn populates_ram_minus_reservations() {
        let map = [
            e(0, 0x9fc00, E820_RAM),
            e(0x10_0000, 0x70_0000, E820_RAM),   // 1 MiB .. 8 MiB
            e(0x30_0000, 0x1000, E820_RESERVED), // a hole inside RAM
            e(u64::MAX - 0xfff, 0x10_000, E820_RAM), // overflowing entry, beyond limit
        ];
        assert_eq!(ram_end(&map, 0x80_0000), 0x80_0000);
        let mut storage = vec![0u64; 32];
        let mut a = FrameAllocator::new(&mut storage, 0x80_0000 / 4096);
        let kernel = PhysRange {
            start: 0x10_0000,
            end: 0x12_3456,
        };
        populate(&mut a, &map, &[kernel]);
        assert!(!a.is_free(0)); // low memory
        assert!(!a.is_free(0x9f)); // low memory
        assert!(!a.is_free(0x123)); // kernel's partial last frame
        assert!(a.is_free(0x124));
        assert!(!a.is_free(0x300)); // reserved hole
        assert!(a.is_free(0x7ff));
        assert_eq!(a.free_frames(), 0x800 - 0x124 - 1);
    }

    #[test]
    fn empty_map_gives_nothing() {
        assert_eq!(ram_end(&[], u64::MAX), 0);
        assert_eq!(ram_ranges(&[e(0x1000, 0, E820_RAM)]).count(), 0);
    }
}
