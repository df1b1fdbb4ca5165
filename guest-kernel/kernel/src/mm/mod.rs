//! Physical memory: the frame allocator built from the boot memory map, the direct map of
//! all RAM, and the kernel's own page tables. `frames` and `physmap` are the primitives the
//! page-table code (`arch`) stands on; the rest of this module stands on `arch`.

pub mod frames;
pub mod heap;
pub mod kstack;
pub mod physmap;

pub use frames::{alloc_frame, free_frame, free_frames};
pub use physmap::{kernel_virt_to_phys, phys_to_virt, BOOT_MAP_LIMIT, MAX_PHYS};

use crate::arch::paging::{self, MapError, Perm};
use crate::bootinfo::BootInfo;
use core::sync::atomic::{AtomicU64, Ordering};
use fluke_abi::boot::KERNEL_VIRT_BASE;
use fluke_kcore::memmap::{self, PhysRange};
use physmap::PHYS_MAP_BASE;

static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __kernel_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __kernel_end: u8;
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

/// Builds the frame allocator from the boot memory map; `reserved` lists what is in use
/// (the kernel image, the bundle); the loader's structures are reserved too.
pub fn init_frames(boot: &BootInfo, reserved: &[PhysRange]) -> MemStats {
    MemStats {
        ram_end: frames::init(boot.memmap(), reserved, &boot.loader_ranges),
    }
}

/// The kernel's own page-table root (its upper half is every space's upper half).
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Relaxed)
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
    physmap::switch_to_direct_map();
    KERNEL_ROOT.store(root, Ordering::Relaxed);
    Ok(root)
}
