//! The physical-memory primitives below everything that maps memory (the page-table code
//! in `arch` included): where RAM is reached (the direct map) and where the kernel image
//! and device memory sit.

use core::sync::atomic::{AtomicU64, Ordering};
use fluke_abi::boot::KERNEL_VIRT_BASE;

/// Where all RAM is mapped once the kernel's page tables are live: PML4 slot 273, in the
/// upper half and clear of slot 256, which kvm_pvm reserves (pvm.md §4.3 rule 2).
pub const PHYS_MAP_BASE: u64 = 0xffff_8880_0000_0000;
/// Device memory (the xAPIC page) is mapped here: PML4 slot 274.
pub const DEVICE_MAP_BASE: u64 = 0xffff_8900_0000_0000;
/// The boot page tables map the first GiB at the kernel base.
pub const BOOT_MAP_LIMIT: u64 = 1 << 30;
/// RAM above this is not used (the frame bitmap is static: 64 KiB per GiB).
pub const MAX_PHYS: u64 = 16 << 30;

/// Virtual base through which physical memory is reached: the kernel base while the boot
/// tables are live, then [`PHYS_MAP_BASE`].
static DIRECT_MAP: AtomicU64 = AtomicU64::new(KERNEL_VIRT_BASE);

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

/// The kernel's own page tables are live: RAM is reached at [`PHYS_MAP_BASE`] from now on.
pub fn switch_to_direct_map() {
    DIRECT_MAP.store(PHYS_MAP_BASE, Ordering::Relaxed);
}
