//! Physical memory: the frame allocator built from the boot memory map, the direct map of
//! all RAM, and the kernel's own page tables.

pub mod heap;
pub mod kstack;

use crate::arch::paging::{self, MapError, Perm};
use crate::bootinfo::BootInfo;
use crate::sync::BootCell;
use core::sync::atomic::{AtomicU64, Ordering};
use fluke_abi::boot::KERNEL_VIRT_BASE;
use fluke_kcore::frame::FrameAllocator;
use fluke_kcore::memmap::{self, PhysRange};

/// Where all RAM is mapped once the kernel's page tables are live: PML4 slot 273, in the
/// upper half and clear of slot 256, which kvm_pvm reserves (pvm.md §4.3 rule 2).
pub const PHYS_MAP_BASE: u64 = 0xffff_8880_0000_0000;
/// Device memory (the xAPIC page) is mapped here: PML4 slot 274.
pub const DEVICE_MAP_BASE: u64 = 0xffff_8900_0000_0000;
/// The boot page tables map the first GiB at the kernel base.
pub const BOOT_MAP_LIMIT: u64 = 1 << 30;
/// RAM above this is not used (the frame bitmap is static: 64 KiB per GiB).
pub const MAX_PHYS: u64 = 16 << 30;

const BITMAP_WORDS: usize = (MAX_PHYS / 4096 / 64) as usize;
static FRAME_BITMAP: BootCell<[u64; BITMAP_WORDS]> = BootCell::new([0; BITMAP_WORDS]);
static FRAMES: BootCell<Option<FrameAllocator<'static>>> = BootCell::new(None);
/// Virtual base through which physical memory is reached: the kernel base while the boot
/// tables are live, then [`PHYS_MAP_BASE`].
static DIRECT_MAP: AtomicU64 = AtomicU64::new(KERNEL_VIRT_BASE);
static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __kernel_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __kernel_end: u8;
}

pub fn kernel_virt_to_phys(v: u64) -> u64 {
    v - KERNEL_VIRT_BASE
}

pub fn phys_to_virt(p: u64) -> u64 {
    DIRECT_MAP.load(Ordering::Relaxed) + p
}

/// The physical address of a direct-map address (heap memory, page tables).
pub fn virt_to_phys(v: u64) -> u64 {
    v - DIRECT_MAP.load(Ordering::Relaxed)
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// The kernel image's physical extent and the first byte after it (where a bundle may sit).
pub fn kernel_image_range() -> PhysRange {
    // SAFETY: only the addresses of linker symbols are taken.
    unsafe {
        PhysRange {
            start: kernel_virt_to_phys(sym(&__kernel_start)),
            end: kernel_virt_to_phys(sym(&__kernel_end)),
        }
    }
}

pub struct MemStats {
    pub ram_end: u64,
}

/// Builds the frame allocator from the memory map; `reserved` lists what is in use (the
/// kernel image, the bundle, the loader's structures).
pub fn init_frames(boot: &BootInfo, reserved: &[PhysRange]) -> MemStats {
    let ram_end = memmap::ram_end(boot.memmap(), MAX_PHYS);
    // SAFETY: boot, single CPU, interrupts off: nothing else references the allocator.
    let frames = unsafe {
        let alloc = FrameAllocator::new(&mut FRAME_BITMAP.get_mut()[..], ram_end / 4096);
        FRAMES.get_mut().insert(alloc)
    };
    memmap::populate(frames, boot.memmap(), reserved);
    for r in &boot.loader_ranges {
        frames.reserve_range(r.start, r.end);
    }
    MemStats { ram_end }
}

fn with_frames<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> Option<R> {
    // SAFETY: single CPU; the allocator is only used with interrupts off (boot, kernel calls).
    unsafe { FRAMES.get_mut().as_mut().map(f) }
}

pub fn alloc_frame() -> Option<u64> {
    with_frames(|a| a.alloc()).flatten()
}

pub fn alloc_frames_contiguous(count: u64, align: u64) -> Option<u64> {
    with_frames(|a| a.alloc_contiguous(count, align)).flatten()
}

/// Returns a frame to the allocator. A double or foreign free is a kernel bug.
pub fn free_frame(frame: u64) {
    if let Some(Err(e)) = with_frames(|a| a.free(frame)) {
        panic!("freeing frame {frame:#x}: {e:?}");
    }
}

/// The kernel's own page-table root (its upper half is every space's upper half).
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Relaxed)
}

pub fn free_frames() -> u64 {
    with_frames(|a| a.free_frames()).unwrap_or(0)
}

/// Builds the kernel's page tables and switches to them: the kernel image at its link
/// address with per-section permissions, `extra` ranges (the bundle) read-only at the kernel
/// base, and all RAM at [`PHYS_MAP_BASE`].
pub fn init_kernel_space(boot: &BootInfo, extra_ro: PhysRange) -> Result<u64, MapError> {
    let root = paging::new_root_pair()?;
    // SAFETY: only the addresses of linker symbols are taken.
    let (start, text_end, rodata_end, end) = unsafe {
        (
            sym(&__kernel_start),
            sym(&__text_end),
            sym(&__rodata_end),
            sym(&__kernel_end),
        )
    };
    let map_image = |from: u64, to: u64, perm: Perm| {
        paging::map_range(root, from, kernel_virt_to_phys(from), to - from, perm)
    };
    map_image(start, text_end, Perm::KERNEL_RX)?;
    map_image(text_end, rodata_end, Perm::KERNEL_RO)?;
    map_image(rodata_end, end, Perm::KERNEL_RW)?;
    if extra_ro.end > extra_ro.start {
        let s = extra_ro.start & !0xfff;
        let e = (extra_ro.end + 0xfff) & !0xfff;
        paging::map_range(root, KERNEL_VIRT_BASE + s, s, e - s, Perm::KERNEL_RO)?;
    }
    let limit = memmap::ram_end(boot.memmap(), MAX_PHYS);
    for r in memmap::ram_ranges(boot.memmap()) {
        let s = r.start & !0xfff;
        let e = (r.end.min(limit)) & !0xfff;
        if e > s {
            paging::map_range(root, PHYS_MAP_BASE + s, s, e - s, Perm::KERNEL_RW)?;
        }
    }
    // SAFETY: the new tree maps the kernel image (code, data, stacks, CPU tables: all in the
    // image) exactly as the boot tables did, and all RAM at PHYS_MAP_BASE.
    unsafe { paging::activate(root) };
    DIRECT_MAP.store(PHYS_MAP_BASE, Ordering::Relaxed);
    KERNEL_ROOT.store(root, Ordering::Relaxed);
    Ok(root)
}
