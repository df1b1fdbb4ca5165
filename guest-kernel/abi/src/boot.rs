//! Boot layout: where the kernel is linked and loaded, and the PVH start info that
//! fluke-vmm (and QEMU) hand it.
//!
//! The kernel is booted through PVH (the Xen `hvm_start_info` protocol): the loader enters
//! the kernel's 32-bit entry point (named by an ELF note of type 18, `"Xen"`) in flat
//! protected mode with paging off and `%ebx` = the guest-physical address of
//! [`HvmStartInfo`]. fluke-vmm places the structures at the fixed addresses below; QEMU
//! chooses its own, so the kernel only ever follows the pointers.
//!
//! Guest physical memory as fluke-vmm lays it out:
//!
//! | range                      | contents                                   |
//! |----------------------------|--------------------------------------------|
//! | `0x6000`                   | `hvm_start_info` ([`START_INFO_GPA`])      |
//! | `0x6040`                   | module list, one entry: the program bundle |
//! | `0x7000`                   | E820-style memory map                      |
//! | `0x20000`                  | kernel command line, NUL-terminated        |
//! | `0x100000` ..              | kernel image (PT_LOAD segments at p_paddr) |
//! | after the kernel, 4 KiB aligned | the program bundle (see `fluke-image`) |
//! | rest up to `--memory`      | free RAM                                   |

/// Virtual address the kernel is linked at (PML4 slot 511, never slot 256: pvm.md §4.3).
pub const KERNEL_VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
/// Physical address of the kernel's first loadable byte.
pub const KERNEL_PHYS_LOAD: u64 = 0x10_0000;
/// Memory below this is never handed to the kernel's allocator (BIOS/boot structures).
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// The first 640 KiB minus the EBDA is RAM; the rest of the first MiB is reserved.
pub const EBDA_START: u64 = 0x9_fc00;

pub const START_INFO_GPA: u64 = 0x6000;
pub const MODLIST_GPA: u64 = 0x6040;
pub const MEMMAP_GPA: u64 = 0x7000;
/// At most this many memory-map entries fit between [`MEMMAP_GPA`] and the next page.
pub const MEMMAP_MAX_ENTRIES: usize = 4096 / core::mem::size_of::<HvmMemmapEntry>();
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Maximum command line length, including its terminating NUL.
pub const CMDLINE_MAX: usize = 4096;

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// ELF note type whose descriptor is the 32-bit physical entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `struct hvm_start_info` (version 1), as defined by Xen's `arch-x86/hvm/start_info.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// `struct hvm_modlist_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmModlistEntry {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub type_: u32,
    pub reserved: u32,
}

// The fixed structures must not overlap each other or the kernel.
const _: () = {
    use core::mem::size_of;
    assert!(START_INFO_GPA + size_of::<HvmStartInfo>() as u64 <= MODLIST_GPA);
    assert!(MODLIST_GPA + size_of::<HvmModlistEntry>() as u64 <= MEMMAP_GPA);
    assert!(MEMMAP_GPA + (MEMMAP_MAX_ENTRIES * size_of::<HvmMemmapEntry>()) as u64 <= CMDLINE_GPA);
    assert!(CMDLINE_GPA + CMDLINE_MAX as u64 <= EBDA_START);
    assert!(EBDA_START < KERNEL_PHYS_LOAD);
};

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn start_info_layout_matches_xen() {
        assert_eq!(size_of::<HvmStartInfo>(), 56);
        assert_eq!(offset_of!(HvmStartInfo, modlist_paddr), 16);
        assert_eq!(offset_of!(HvmStartInfo, cmdline_paddr), 24);
        assert_eq!(offset_of!(HvmStartInfo, memmap_paddr), 40);
        assert_eq!(offset_of!(HvmStartInfo, memmap_entries), 48);
        assert_eq!(size_of::<HvmModlistEntry>(), 32);
        assert_eq!(size_of::<HvmMemmapEntry>(), 24);
    }
}
