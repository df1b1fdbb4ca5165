//! Which device windows and interrupt lines of the command line the kernel hands out
//! (issue 15): the checks of a `virtio_mmio.device` word against what the kernel knows the
//! physical address space holds, decided here so the host tests them. A window is rounded
//! out to whole pages (a mapping's unit), and refused, never handed out, if that overlaps
//! RAM or anything else the memory map lists, the kernel image, the program bundle, the
//! IOAPIC or LAPIC windows, or a window already accepted (two capabilities must never name
//! the same page), or if it lies beyond what the CPU can address, or its line is not an
//! IOAPIC input or is taken.

use crate::memmap::PhysRange;
use crate::{align_down, align_up, PAGE_SIZE};
use fluke_abi::devices::MmioDevice;

/// The largest window handed out: a mapping of it needs at most two page tables of each
/// level (`devmem_map` reserves them up front).
pub const MAX_WINDOW: u64 = 2 << 20;

/// A device-memory object: a window of device memory, and where parts of it are mapped (at
/// most [`MAX_DEVMEM_MAPPINGS`], which bounds its teardown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub window: PhysRange,
    /// The line of its command-line word (its interrupt is a separate object).
    pub line: u32,
    pub mappings: alloc::vec::Vec<DevmemMapping>,
}

/// One `devmem_map` of a part of a window: `[offset, offset + len)` of the window at `addr`
/// in `space`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevmemMapping {
    pub space: crate::slab::Id,
    pub addr: u64,
    pub offset: u64,
    pub len: u64,
    pub write: bool,
    pub cached: bool,
}

pub const MAX_DEVMEM_MAPPINGS: usize = 16;

/// Why a `devmem_map` of part of a window is refused (before anything is mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapRefusal {
    /// The offset or length is not page-aligned, or the part is not inside the window.
    OutsideWindow,
    /// A page of the part is mapped already, somewhere, with the other memory type: x86
    /// leaves a page mapped both uncached and write-back undefined (SDM vol. 3, 11.12.4),
    /// so each page of a window has one memory type at a time.
    OtherMemoryType,
}

/// The part `[offset, offset + len)` of a window of `size` bytes that a `devmem_map` asks
/// for (`len` 0: the rest of the window), checked against the object's `live` mappings:
/// the part's length, or why it is refused.
pub fn check_part(
    size: u64,
    offset: u64,
    len: u64,
    cached: bool,
    live: &[DevmemMapping],
) -> Result<u64, MapRefusal> {
    let page = PAGE_SIZE;
    if offset % page != 0 || len % page != 0 || offset >= size {
        return Err(MapRefusal::OutsideWindow);
    }
    let len = if len == 0 { size - offset } else { len };
    if len > size - offset {
        return Err(MapRefusal::OutsideWindow);
    }
    let end = offset + len;
    let clash = live
        .iter()
        .any(|m| m.cached != cached && m.offset < end && offset < m.offset + m.len);
    if clash {
        return Err(MapRefusal::OtherMemoryType);
    }
    Ok(len)
}

/// Why a word was refused (one console line names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It does not parse, is empty or wraps past the top of the address space.
    Malformed,
    /// Larger than [`MAX_WINDOW`].
    TooLarge,
    /// Beyond the CPU's physical address width.
    BeyondPhysical,
    /// Overlaps a range the kernel must keep (RAM, the image, ...): named.
    Overlaps(&'static str),
    /// Overlaps (after rounding to pages) an earlier accepted window.
    SharesPage,
    /// The line is not an input of the IOAPIC.
    NoSuchLine,
    /// The line is another accepted device's (or listed twice).
    LineTaken,
    /// More words than the kernel has names for.
    TooMany,
}

impl Refusal {
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed, empty or wrapping",
            Refusal::TooLarge => "larger than 2 MiB",
            Refusal::BeyondPhysical => "beyond the CPU's physical address width",
            Refusal::Overlaps(what) => what,
            Refusal::SharesPage => "shares a page with an earlier device",
            Refusal::NoSuchLine => "no such IOAPIC line",
            Refusal::LineTaken => "its interrupt line is taken",
            Refusal::TooMany => "too many device words",
        }
    }
}

/// What a window must not touch: `(range, what it is)`, e.g. `("overlaps RAM")`.
pub type Reserved<'a> = &'a [(PhysRange, &'static str)];

fn overlap(a: PhysRange, b: PhysRange) -> bool {
    a.start < b.end && b.start < a.end
}

/// The page-rounded window of `d`, if it is one the kernel may hand out: checked against
/// `reserved`, the windows already `accepted`, `phys_bits` of physical address, and an
/// IOAPIC with `lines` inputs whose lines `lines_taken` are someone's already.
pub fn check(
    d: &MmioDevice,
    reserved: Reserved,
    accepted: &[PhysRange],
    phys_bits: u32,
    lines: u32,
    lines_taken: &[u32],
) -> Result<PhysRange, Refusal> {
    let end = d.base.checked_add(d.size).ok_or(Refusal::Malformed)?;
    if d.size == 0 {
        return Err(Refusal::Malformed);
    }
    let window = PhysRange {
        start: align_down(d.base, PAGE_SIZE),
        end: align_up(end, PAGE_SIZE).ok_or(Refusal::Malformed)?,
    };
    if window.end - window.start > MAX_WINDOW {
        return Err(Refusal::TooLarge);
    }
    if phys_bits < 64 && window.end > 1u64 << phys_bits {
        return Err(Refusal::BeyondPhysical);
    }
    if let Some((_, what)) = reserved.iter().find(|(r, _)| overlap(*r, window)) {
        return Err(Refusal::Overlaps(what));
    }
    if accepted.iter().any(|a| overlap(*a, window)) {
        return Err(Refusal::SharesPage);
    }
    check_line(d.irq, lines, lines_taken)?;
    Ok(window)
}

/// Whether interrupt line `line` may be handed out (an IOAPIC input nobody has).
pub fn check_line(line: u32, lines: u32, lines_taken: &[u32]) -> Result<(), Refusal> {
    if line >= lines {
        return Err(Refusal::NoSuchLine);
    }
    if lines_taken.contains(&line) {
        return Err(Refusal::LineTaken);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn r(start: u64, end: u64) -> PhysRange {
        PhysRange { start, end }
    }

    const RESERVED: &[(PhysRange, &str)] = &[
        (r(0, 0x9fc00), "overlaps RAM"),
        (r(0x10_0000, 0x4000_0000), "overlaps RAM"),
        (r(0x20_0000, 0x30_0000), "overlaps the kernel image"),
        (r(0xfec0_0000, 0xfed0_0000), "overlaps the IOAPIC"),
        (r(0xfee0_0000, 0xfef0_0000), "overlaps the local APIC"),
    ];

    fn dev(base: u64, size: u64, irq: u32) -> MmioDevice {
        MmioDevice { base, size, irq }
    }

    fn chk(d: MmioDevice, accepted: &[PhysRange], taken: &[u32]) -> Result<PhysRange, Refusal> {
        check(&d, RESERVED, accepted, 40, 24, taken)
    }

    #[test]
    fn a_device_window_is_accepted_rounded_to_pages() {
        assert_eq!(
            chk(dev(0xd000_0000, 0x1000, 5), &[], &[]),
            Ok(r(0xd000_0000, 0xd000_1000))
        );
        assert_eq!(
            chk(dev(0xfeb0_0e00, 512, 12), &[], &[]),
            Ok(r(0xfeb0_0000, 0xfeb0_1000))
        );
        // Rounded out to its page, it reaches the RAM below it.
        assert_eq!(
            chk(dev(0x9fc00, 0x400, 5), &[], &[]),
            Err(Refusal::Overlaps("overlaps RAM"))
        );
    }

    #[test]
    fn every_forbidden_window_is_refused() {
        let ram = Err(Refusal::Overlaps("overlaps RAM"));
        assert_eq!(chk(dev(0x10_0000, 0x1000, 5), &[], &[]), ram);
        assert_eq!(chk(dev(0x3fff_ffff, 2, 5), &[], &[]), ram);
        assert_eq!(chk(dev(0, 0x1000, 5), &[], &[]), ram);
        assert_eq!(
            chk(dev(0xfec0_0000, 0x1000, 5), &[], &[]),
            Err(Refusal::Overlaps("overlaps the IOAPIC"))
        );
        assert_eq!(
            chk(dev(0xfedf_f000, 0x2000, 5), &[], &[]),
            Err(Refusal::Overlaps("overlaps the local APIC"))
        );
        assert_eq!(
            chk(dev(u64::MAX - 0xfff, 0x1000, 5), &[], &[]),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            chk(dev(u64::MAX - 0x7ff, 0x100, 5), &[], &[]),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            chk(dev(0xd000_0000, 0, 5), &[], &[]),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            chk(dev(1 << 40, 0x1000, 5), &[], &[]),
            Err(Refusal::BeyondPhysical)
        );
        assert_eq!(
            chk(dev(0xd000_0000, 4 << 20, 5), &[], &[]),
            Err(Refusal::TooLarge)
        );
        let first = [r(0xd000_0000, 0xd000_1000)];
        assert_eq!(
            chk(dev(0xd000_0800, 0x100, 6), &first, &[5]),
            Err(Refusal::SharesPage)
        );
        assert_eq!(
            chk(dev(0xd000_1000, 0x1000, 5), &first, &[5]),
            Err(Refusal::LineTaken)
        );
        assert_eq!(
            chk(dev(0xd000_1000, 0x1000, 24), &first, &[5]),
            Err(Refusal::NoSuchLine)
        );
        assert!(chk(dev(0xd000_1000, 0x1000, 6), &first, &[5]).is_ok());
    }

    fn mapped(offset: u64, len: u64, cached: bool) -> DevmemMapping {
        DevmemMapping {
            space: crate::slab::Id::from_u64(1),
            addr: 0x7000_0000 + offset,
            offset,
            len,
            write: true,
            cached,
        }
    }

    #[test]
    fn a_part_of_a_window_is_inside_it_and_page_aligned() {
        let size = 0x10_0000;
        assert_eq!(check_part(size, 0, 0, false, &[]), Ok(size));
        assert_eq!(check_part(size, 0x1000, 0, true, &[]), Ok(size - 0x1000));
        assert_eq!(check_part(size, 0, 0x1000, false, &[]), Ok(0x1000));
        assert_eq!(
            check_part(size, size - 0x1000, 0x1000, false, &[]),
            Ok(0x1000)
        );
        for (offset, len) in [
            (size, 0),
            (size, 0x1000),
            (0x800, 0x1000),
            (0, 0x800),
            (0x1000, size),
            (size - 0x1000, 0x2000),
            (u64::MAX & !0xfff, 0x1000),
            (0x1000, u64::MAX & !0xfff),
        ] {
            assert_eq!(
                check_part(size, offset, len, false, &[]),
                Err(MapRefusal::OutsideWindow),
                "{offset:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn a_page_of_a_window_has_one_memory_type_at_a_time() {
        let size = 0x10_0000;
        let regs = [mapped(0, 0x1000, false)];
        // The DMA area cached beside uncached registers, and the registers again uncached.
        assert_eq!(check_part(size, 0x1000, 0, true, &regs), Ok(size - 0x1000));
        assert_eq!(check_part(size, 0, 0x1000, false, &regs), Ok(0x1000));
        // Any page of the registers cached: refused, the whole window included.
        assert_eq!(
            check_part(size, 0, 0, true, &regs),
            Err(MapRefusal::OtherMemoryType)
        );
        assert_eq!(
            check_part(size, 0, 0x2000, true, &regs),
            Err(MapRefusal::OtherMemoryType)
        );
        let dma = [mapped(0x1000, size - 0x1000, true)];
        assert_eq!(
            check_part(size, size - 0x1000, 0, false, &dma),
            Err(MapRefusal::OtherMemoryType)
        );
        assert_eq!(check_part(size, 0x2000, 0x1000, true, &dma), Ok(0x1000));
    }
}
