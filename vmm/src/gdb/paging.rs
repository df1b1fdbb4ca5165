//! Guest-virtual to guest-physical translation for the debugger: a walk of the guest's own
//! x86-64 4-level page tables, read from guest memory (never through KVM_TRANSLATE, which
//! knows nothing of kvm_pvm's page-table pairs).
//!
//! On kvm_pvm an address space has a root *pair* (pvm.md §4.3, the kernel's
//! `arch/x86_64/paging.rs`): the even 4 KiB page is the kernel's view (user half and kernel
//! half), the odd page (`| 0x1000`) the user's view (user half and only the CPU tables), and
//! the host flips CR3 between them on entry and on SYSRET. So an upper-half address is
//! always looked up from the even page of the pair, whichever half CR3 holds at the stop
//! (in user mode it holds the odd one, which does not map the kernel); a lower-half address
//! is looked up from CR3 as it is (both halves map the same user tables). On hardware KVM
//! CR3 is used as it is for every address.

/// The registers that decide how the guest translates addresses (from KVM_GET_SREGS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

impl PagingRegs {
    pub fn from_sregs(s: &kvm_bindings::kvm_sregs) -> PagingRegs {
        PagingRegs {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        }
    }

    pub fn paging_enabled(&self) -> bool {
        self.cr0 & CR0_PG != 0
    }
}

/// Which root a lookup starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Roots {
    /// CR3 as it is (hardware KVM).
    Single,
    /// kvm_pvm's 8 KiB pairs: upper-half addresses from the even (kernel) page.
    KvmPvmPair,
}

/// Why an address has no translation. Shown to the gdb user through fluke-vmm's log and
/// as a memory error in gdb ("Cannot access memory at address ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("{0:#x} is not a canonical address")]
    NonCanonical(u64),
    #[error(
        "{addr:#x} is not mapped (no present entry at the {level} level, table at {table:#x})"
    )]
    NotPresent {
        addr: u64,
        level: &'static str,
        table: u64,
    },
    #[error("the page table at {0:#x} is outside guest memory")]
    TableOutsideMemory(u64),
    #[error("the guest uses a paging mode the debugger does not walk ({0})")]
    UnsupportedMode(&'static str),
}

/// What the walk needs of guest memory: one aligned 8-byte read at a guest-physical address.
pub trait PhysRead {
    fn read_u64(&self, gpa: u64) -> Option<u64>;
}

impl PhysRead for vm_memory::GuestMemoryMmap {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        use vm_memory::{Bytes, GuestAddress};
        self.read_obj::<u64>(GuestAddress(gpa)).ok()
    }
}

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

const PRESENT: u64 = 1 << 0;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 12..51 of an entry (or of CR3): the next table's or the page's physical address.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// The odd page of a kvm_pvm root pair.
pub const PAIR_USER_PAGE: u64 = 0x1000;

/// A translated address: where it is in guest-physical memory and how many bytes from it
/// lie in the same page (reads that cross a page boundary are translated page by page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translated {
    pub gpa: u64,
    pub bytes_left_in_page: u64,
}

/// Translates `gva` as the guest would now. With paging off, linear is physical.
pub fn translate(
    mem: &dyn PhysRead,
    regs: &PagingRegs,
    roots: Roots,
    gva: u64,
) -> Result<Translated, WalkError> {
    if !regs.paging_enabled() {
        return Ok(Translated {
            gpa: gva,
            bytes_left_in_page: 0x1000 - (gva & 0xfff),
        });
    }
    if regs.efer & EFER_LMA == 0 || regs.cr4 & CR4_PAE == 0 {
        return Err(WalkError::UnsupportedMode("32-bit paging"));
    }
    if regs.cr4 & CR4_LA57 != 0 {
        return Err(WalkError::UnsupportedMode("5-level paging"));
    }
    // Canonical: bits 63..47 all equal.
    let top = gva >> 47;
    if top != 0 && top != 0x1_ffff {
        return Err(WalkError::NonCanonical(gva));
    }
    let upper_half = top != 0;
    // CR3's low 12 bits are a PCID (CR4.PCIDE) or cache-control flags, bit 63 a no-flush
    // hint: neither is part of the root's address.
    let mut table = regs.cr3 & ADDR_MASK;
    if roots == Roots::KvmPvmPair && upper_half {
        table &= !PAIR_USER_PAGE;
    }
    const LEVELS: [(&str, u32); 4] = [("PML4", 39), ("PDPT", 30), ("PD", 21), ("PT", 12)];
    for (depth, &(level, shift)) in LEVELS.iter().enumerate() {
        let index = (gva >> shift) & 0x1ff;
        let entry_gpa = table + index * 8;
        let entry = mem
            .read_u64(entry_gpa)
            .ok_or(WalkError::TableOutsideMemory(table))?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent {
                addr: gva,
                level,
                table,
            });
        }
        // A large page: 1 GiB at the PDPT, 2 MiB at the PD (PS is reserved in a PML4E).
        let large = entry & PAGE_SIZE_BIT != 0 && (depth == 1 || depth == 2);
        if large || depth == 3 {
            let page_size = 1u64 << shift;
            let offset = gva & (page_size - 1);
            let base = entry & ADDR_MASK & !(page_size - 1);
            return Ok(Translated {
                gpa: base + offset,
                bytes_left_in_page: page_size - offset,
            });
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("the last level always returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CR4_PCIDE: u64 = 1 << 17;

    /// Guest memory as a sparse map of 8-byte words, `size` bytes long.
    struct FakeMemory {
        words: HashMap<u64, u64>,
        size: u64,
    }

    impl FakeMemory {
        fn new(size: u64) -> FakeMemory {
            FakeMemory {
                words: HashMap::new(),
                size,
            }
        }
        fn set(&mut self, table: u64, index: u64, entry: u64) {
            self.words.insert(table + index * 8, entry);
        }
    }

    impl PhysRead for FakeMemory {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            (gpa + 8 <= self.size).then(|| self.words.get(&gpa).copied().unwrap_or(0))
        }
    }

    const LONG_MODE: PagingRegs = PagingRegs {
        cr0: CR0_PG | 1,
        cr3: 0x10_0000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
    };
    const P: u64 = PRESENT | 2;
    const KERNEL_VA: u64 = 0xffff_ffff_8010_1ee0;

    fn idx(va: u64, shift: u32) -> u64 {
        (va >> shift) & 0x1ff
    }

    /// A tree mapping KERNEL_VA's 4 KiB page to 0x30_1000 from the root at 0x10_0000.
    fn kernel_tree(mem: &mut FakeMemory, root: u64) {
        mem.set(root, idx(KERNEL_VA, 39), 0x20_0000 | P);
        mem.set(0x20_0000, idx(KERNEL_VA, 30), 0x20_1000 | P);
        mem.set(0x20_1000, idx(KERNEL_VA, 21), 0x20_2000 | P);
        mem.set(0x20_2000, idx(KERNEL_VA, 12), 0x30_1000 | P | (1 << 63));
    }

    #[test]
    fn a_4k_page_is_found_through_four_levels() {
        let mut mem = FakeMemory::new(64 << 20);
        kernel_tree(&mut mem, 0x10_0000);
        let t = translate(&mem, &LONG_MODE, Roots::Single, KERNEL_VA).unwrap();
        assert_eq!(t.gpa, 0x30_1ee0);
        assert_eq!(t.bytes_left_in_page, 0x120);
    }

    #[test]
    fn large_pages_of_2m_and_1g_keep_their_offset() {
        let mut mem = FakeMemory::new(64 << 20);
        let va2m = 0xffff_ffff_8020_0000u64 + 0x1_2345;
        mem.set(0x10_0000, idx(va2m, 39), 0x20_0000 | P);
        mem.set(0x20_0000, idx(va2m, 30), 0x20_1000 | P);
        mem.set(0x20_1000, idx(va2m, 21), 0x40_0000 | P | PAGE_SIZE_BIT);
        let t = translate(&mem, &LONG_MODE, Roots::Single, va2m).unwrap();
        assert_eq!(t.gpa, 0x40_0000 + 0x1_2345);
        assert_eq!(t.bytes_left_in_page, (2 << 20) - 0x1_2345);

        let va1g = 0x0000_0040_0000_0000u64 + 0x123_4567;
        mem.set(0x10_0000, idx(va1g, 39), 0x20_3000 | P);
        mem.set(0x20_3000, idx(va1g, 30), 0x4000_0000 | P | PAGE_SIZE_BIT);
        let t = translate(&mem, &LONG_MODE, Roots::Single, va1g).unwrap();
        assert_eq!(t.gpa, 0x4000_0000 + 0x123_4567);
    }

    #[test]
    fn not_present_entries_and_bad_addresses_are_errors_not_panics() {
        let mut mem = FakeMemory::new(64 << 20);
        kernel_tree(&mut mem, 0x10_0000);
        // The next page of the same PT is not present.
        let e = translate(&mem, &LONG_MODE, Roots::Single, KERNEL_VA + 0x1000).unwrap_err();
        assert_eq!(
            e,
            WalkError::NotPresent {
                addr: KERNEL_VA + 0x1000,
                level: "PT",
                table: 0x20_2000
            }
        );
        assert!(e.to_string().contains("not mapped"));
        // Nothing in the lower half.
        assert!(matches!(
            translate(&mem, &LONG_MODE, Roots::Single, 0x40_0000),
            Err(WalkError::NotPresent { level: "PML4", .. })
        ));
        assert_eq!(
            translate(&mem, &LONG_MODE, Roots::Single, 0x0000_8000_0000_0000),
            Err(WalkError::NonCanonical(0x0000_8000_0000_0000))
        );
        // A table pointer beyond guest memory (a corrupt or hostile entry).
        mem.set(0x20_2000, idx(KERNEL_VA, 12), 0);
        mem.set(0x20_1000, idx(KERNEL_VA, 21), 0xdead_0000_0000 | P);
        assert_eq!(
            translate(&mem, &LONG_MODE, Roots::Single, KERNEL_VA),
            Err(WalkError::TableOutsideMemory(0xdead_0000_0000))
        );
        // A root outside memory.
        let regs = PagingRegs {
            cr3: 0xffff_ffff_f000,
            ..LONG_MODE
        };
        assert!(matches!(
            translate(&mem, &regs, Roots::Single, KERNEL_VA),
            Err(WalkError::TableOutsideMemory(_))
        ));
    }

    #[test]
    fn kvm_pvm_pairs_look_up_the_kernel_half_from_the_even_page() {
        let mut mem = FakeMemory::new(64 << 20);
        // The pair at 0x10_0000: the kernel page maps the kernel and a user page; the user
        // page (0x10_1000) maps only the same user page.
        kernel_tree(&mut mem, 0x10_0000);
        let user_va = 0x40_0123u64;
        for root in [0x10_0000, 0x10_1000] {
            mem.set(root, idx(user_va, 39), 0x50_0000 | P | 4);
        }
        mem.set(0x50_0000, idx(user_va, 30), 0x50_1000 | P | 4);
        mem.set(0x50_1000, idx(user_va, 21), 0x50_2000 | P | 4);
        mem.set(0x50_2000, idx(user_va, 12), 0x60_0000 | P | 4);
        // Stopped in user mode: CR3 holds the odd page.
        let user_mode = PagingRegs {
            cr3: 0x10_1000,
            ..LONG_MODE
        };
        let t = translate(&mem, &user_mode, Roots::KvmPvmPair, KERNEL_VA).unwrap();
        assert_eq!(t.gpa, 0x30_1ee0);
        let t = translate(&mem, &user_mode, Roots::KvmPvmPair, user_va).unwrap();
        assert_eq!(t.gpa, 0x60_0123);
        // Taken as it is (hardware KVM), the odd page does not map the kernel.
        assert!(translate(&mem, &user_mode, Roots::Single, KERNEL_VA).is_err());
        // Kernel mode (even page): both halves.
        let t = translate(&mem, &LONG_MODE, Roots::KvmPvmPair, user_va).unwrap();
        assert_eq!(t.gpa, 0x60_0123);
    }

    #[test]
    fn cr3_flag_and_pcid_bits_are_not_part_of_the_root() {
        let mut mem = FakeMemory::new(64 << 20);
        kernel_tree(&mut mem, 0x10_0000);
        let regs = PagingRegs {
            cr3: 0x10_0000 | 0x018 | (1 << 63),
            cr4: CR4_PAE | CR4_PCIDE,
            ..LONG_MODE
        };
        assert_eq!(
            translate(&mem, &regs, Roots::Single, KERNEL_VA)
                .unwrap()
                .gpa,
            0x30_1ee0
        );
    }

    #[test]
    fn paging_off_is_identity_and_other_modes_are_refused() {
        let mem = FakeMemory::new(64 << 20);
        let off = PagingRegs {
            cr0: 0x11,
            ..Default::default()
        };
        let t = translate(&mem, &off, Roots::KvmPvmPair, 0x10_0002).unwrap();
        assert_eq!((t.gpa, t.bytes_left_in_page), (0x10_0002, 0xffe));
        let legacy = PagingRegs {
            efer: 0,
            ..LONG_MODE
        };
        assert!(matches!(
            translate(&mem, &legacy, Roots::Single, 0x1000),
            Err(WalkError::UnsupportedMode(_))
        ));
        let la57 = PagingRegs {
            cr4: CR4_PAE | CR4_LA57,
            ..LONG_MODE
        };
        assert!(matches!(
            translate(&mem, &la57, Roots::Single, 0x1000),
            Err(WalkError::UnsupportedMode(_))
        ));
    }
}
