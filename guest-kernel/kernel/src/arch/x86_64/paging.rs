//! 4-level x86-64 page tables.
//!
//! Every address space has a root *pair*: two physically contiguous, 8 KiB-aligned pages.
//! The even page is the kernel's view (user half + kernel half); on kvm_pvm the odd page is
//! the user's view (user half + only the CPU tables, supervisor-only), and the host flips
//! between them on SYSRET and on entry (pvm.md §4.3 rule 3). The native backend uses only
//! the even page, with U=0 kernel mappings.

use super::{cpu, platform};
use crate::mm::frames::{alloc_frame, alloc_frames_contiguous, free_frame};
use crate::mm::physmap::{kernel_virt_to_phys, phys_to_virt};
use core::sync::atomic::{AtomicBool, Ordering};

pub const PAGE_SIZE: u64 = 4096;
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const ACCESSED: u64 = 1 << 5;
pub const HUGE: u64 = 1 << 7;
pub const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

static NX_ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns on EFER.NXE if the CPU has it (read CPUID in the boot phase: pvm.md §4.3 rule 7).
pub fn init_nx() {
    if cpu::cpuid(0x8000_0000, 0).eax >= 0x8000_0001
        && cpu::cpuid(0x8000_0001, 0).edx & (1 << 20) != 0
    {
        // SAFETY: NXE only makes the NX bit meaningful; no NX bits are set before this.
        unsafe { cpu::wrmsr(cpu::MSR_EFER, cpu::rdmsr(cpu::MSR_EFER) | cpu::EFER_NXE) };
        NX_ENABLED.store(true, Ordering::Relaxed);
    }
}

/// Leaf permissions, translated to PTE bits for the running backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub write: bool,
    pub exec: bool,
    /// A kernel mapping (U=0 natively, U=1 on kvm_pvm where the kernel runs at CPL 3).
    pub kernel: bool,
}

impl Perm {
    pub const KERNEL_RX: Perm = Perm {
        write: false,
        exec: true,
        kernel: true,
    };
    pub const KERNEL_RO: Perm = Perm {
        write: false,
        exec: false,
        kernel: true,
    };
    pub const KERNEL_RW: Perm = Perm {
        write: true,
        exec: false,
        kernel: true,
    };

    fn bits(self) -> u64 {
        let mut b = PRESENT;
        if self.write {
            b |= WRITABLE;
        }
        if !self.exec && NX_ENABLED.load(Ordering::Relaxed) {
            b |= NO_EXECUTE;
        }
        if !self.kernel || platform::kernel_pages_user_accessible() {
            b |= USER;
        }
        b
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    /// A mapping already covers the address (huge page in the way, or remapping).
    AlreadyMapped(u64),
    Misaligned(u64),
}

fn table(phys: u64) -> *mut u64 {
    phys_to_virt(phys) as *mut u64
}

fn alloc_table() -> Result<u64, MapError> {
    let frame = alloc_frame().ok_or(MapError::OutOfMemory)?;
    // SAFETY: the frame was just allocated to us and the direct map covers it.
    unsafe { core::ptr::write_bytes(table(frame), 0, 512) };
    Ok(frame)
}

/// Allocates a zeroed root pair and returns the physical address of its even page.
pub fn new_root_pair() -> Result<u64, MapError> {
    let pair = alloc_frames_contiguous(2, 2).ok_or(MapError::OutOfMemory)?;
    // SAFETY: both frames were just allocated to us and the direct map covers them.
    unsafe { core::ptr::write_bytes(table(pair), 0, 1024) };
    Ok(pair)
}

/// Maps `[virt, virt + len)` to `[phys, phys + len)` in the tree rooted at `root`,
/// using 2 MiB pages where both addresses are aligned and enough length remains.
pub fn map_range(root: u64, virt: u64, phys: u64, len: u64, perm: Perm) -> Result<(), MapError> {
    if !virt.is_multiple_of(PAGE_SIZE)
        || !phys.is_multiple_of(PAGE_SIZE)
        || !len.is_multiple_of(PAGE_SIZE)
    {
        return Err(MapError::Misaligned(virt));
    }
    let leaf = perm.bits();
    let mut off = 0;
    while off < len {
        let (v, p) = (virt + off, phys + off);
        let huge =
            v % HUGE_PAGE_SIZE == 0 && p % HUGE_PAGE_SIZE == 0 && len - off >= HUGE_PAGE_SIZE;
        map_one(root, v, p, leaf, huge)?;
        off += if huge { HUGE_PAGE_SIZE } else { PAGE_SIZE };
    }
    Ok(())
}

fn map_one(root: u64, virt: u64, phys: u64, leaf: u64, huge: bool) -> Result<(), MapError> {
    // Intermediate entries are as permissive as the leaf; the leaf decides.
    let inter = PRESENT | WRITABLE | (leaf & USER);
    let levels: &[u32] = if huge { &[39, 30] } else { &[39, 30, 21] };
    let mut t = root;
    for &shift in levels {
        let idx = ((virt >> shift) & 511) as usize;
        // SAFETY: `t` is a page-table frame owned by this tree, reachable via the direct map.
        let entry = unsafe { &mut *table(t).add(idx) };
        if *entry & PRESENT == 0 {
            let next = alloc_table()?;
            *entry = next | inter;
        } else if *entry & HUGE != 0 {
            return Err(MapError::AlreadyMapped(virt));
        } else {
            *entry |= inter & USER;
        }
        t = *entry & ADDR_MASK;
    }
    let idx = ((virt >> if huge { 21 } else { 12 }) & 511) as usize;
    // SAFETY: as above.
    let entry = unsafe { &mut *table(t).add(idx) };
    if *entry & PRESENT != 0 {
        return Err(MapError::AlreadyMapped(virt));
    }
    *entry = phys | leaf | if huge { HUGE } else { 0 };
    Ok(())
}

/// Switches to the address space whose root pair starts at `root` (the kernel's even page).
///
/// # Safety
/// The tree must map the running kernel: its code, stacks, data and the CPU tables.
pub unsafe fn activate(root: u64) {
    cpu::write_cr3(root);
}

/// Maps one page of device memory, uncached, kernel read-write.
pub fn map_device(root: u64, virt: u64, phys: u64) -> Result<(), MapError> {
    let leaf = Perm::KERNEL_RW.bits() | PCD | PWT;
    map_one(root, virt, phys, leaf, false)
}

/// Software PTE bit: the leaf frame belongs to the address space and is freed with it.
pub const OWNED: u64 = 1 << 9;
/// Software PTE bit: the leaf is device memory (a device-memory object's page), not RAM.
/// The kernel never touches such a page itself (it is not in the direct map, and reading
/// a device register can have effects): `Space::frame_for` refuses it, so do a pager's
/// save and a region passing it on (`mapping::fault_in`).
pub const DEVICE: u64 = 1 << 10;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;

/// Maps one page of device memory into user space at `virt`: uncached (PCD and PWT, which
/// select PAT entry 3: UC in the power-on PAT, which the kernel keeps, and in Linux's, which
/// a kvm_pvm host may apply) unless `cached` (write-back: the driver uses the page as
/// memory, a DMA area or a region shared with another VM), never executable,
/// writable if `write`, marked [`DEVICE`] and not owned (the space's teardown does not free
/// it). The caller vouches that `phys` is a device-memory object's page: no RAM frame,
/// nothing the kernel maps itself (the boot checks of `fluke_kcore::devices`), so the user
/// mapping aliases no memory the kernel or another space uses as RAM.
pub fn map_user_device(root: u64, virt: u64, phys: u64, write: bool, cached: bool) -> Result<(), MapError> {
    map_user(
        root,
        virt,
        phys,
        UserPerm { write, exec: false },
        false,
    )?;
    let p = leaf_entry(root, virt).ok_or(MapError::OutOfMemory)?;
    // SAFETY: the leaf entry just written for `virt` in this tree: only its cache and
    // software bits change, before anything can have used the new (not yet flushed, since
    // it was not present) translation.
    let cache = if cached { 0 } else { PCD | PWT };
    unsafe { *p |= cache | DEVICE | if NX_ENABLED.load(Ordering::Relaxed) { NO_EXECUTE } else { 0 } };
    Ok(())
}

pub fn pte_device(bits: u64) -> bool {
    bits & DEVICE != 0
}

/// User leaf permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserPerm {
    pub write: bool,
    pub exec: bool,
}

impl UserPerm {
    fn bits(self) -> u64 {
        let mut b = PRESENT | USER;
        if self.write {
            b |= WRITABLE;
        }
        if !self.exec && NX_ENABLED.load(Ordering::Relaxed) {
            b |= NO_EXECUTE;
        }
        b
    }
}

fn entry_ptr(t: u64, idx: usize) -> *mut u64 {
    // SAFETY (of the pointer arithmetic): idx < 512 within a page-table frame.
    unsafe { table(t).add(idx) }
}

/// Copies the kernel half of `kernel_root` (PML4 entries 256..512) into the even page of a
/// new pair and, on kvm_pvm, points the odd (user) page's kernel half at `entry_tree_pdpt`
/// only (the CPU tables, supervisor-only: pvm.md §4.3 rule 3).
pub fn init_space_root(pair: u64, kernel_root: u64, entry_tree_pml4e: Option<(usize, u64)>) {
    for idx in 256..512 {
        // SAFETY: both are page-table frames reachable through the direct map.
        unsafe { *entry_ptr(pair, idx) = *entry_ptr(kernel_root, idx) };
    }
    if let Some((idx, e)) = entry_tree_pml4e {
        // SAFETY: as above; the odd page is the second frame of the pair.
        unsafe { *entry_ptr(pair + PAGE_SIZE, idx) = e };
    }
}

/// Maps one user page at `virt` (lower half) to `frame` in the pair rooted at `root`.
/// New top-level entries are mirrored into the user page of the pair, so both views share
/// the user half. Every entry on the path gets U=1: a present U=0 entry in the lower half
/// makes kvm_pvm loop forever on access (pvm.md §11 H3).
pub fn map_user(
    root: u64,
    virt: u64,
    frame: u64,
    perm: UserPerm,
    owned: bool,
) -> Result<(), MapError> {
    assert!(
        virt < 0x0000_8000_0000_0000,
        "user mapping in the upper half"
    );
    let inter = PRESENT | WRITABLE | USER;
    let mut t = root;
    for (level, shift) in [39u32, 30, 21].into_iter().enumerate() {
        let idx = ((virt >> shift) & 511) as usize;
        // SAFETY: `t` is a page-table frame of this tree, reachable via the direct map.
        let entry = unsafe { &mut *entry_ptr(t, idx) };
        if *entry & PRESENT == 0 {
            let next = alloc_table()?;
            *entry = next | inter;
            if level == 0 {
                // SAFETY: the odd page of the pair.
                unsafe { *entry_ptr(root + PAGE_SIZE, idx) = next | inter };
            }
        } else if *entry & HUGE != 0 {
            return Err(MapError::AlreadyMapped(virt));
        }
        t = *entry & ADDR_MASK;
    }
    let idx = ((virt >> 12) & 511) as usize;
    // SAFETY: as above.
    let entry = unsafe { &mut *entry_ptr(t, idx) };
    if *entry & PRESENT != 0 {
        return Err(MapError::AlreadyMapped(virt));
    }
    // Mapped because of an access (a fault) or about to be used: marked accessed already,
    // so a pager's clock sees a page just brought in as used.
    *entry = frame | perm.bits() | ACCESSED | if owned { OWNED } else { 0 };
    Ok(())
}

/// The first present user page in `[va, end)`, skipping absent tables whole (so that a
/// sweep over a large, sparsely used range costs what is mapped, not its size).
pub fn next_present(root: u64, mut va: u64, end: u64) -> Option<u64> {
    'outer: while va < end && va < 0x0000_8000_0000_0000 {
        let mut t = root;
        for shift in [39u32, 30, 21, 12] {
            // SAFETY: `t` is a page-table frame of this tree.
            let e = unsafe { *entry_ptr(t, ((va >> shift) & 511) as usize) };
            if e & PRESENT == 0 || (shift != 12 && e & HUGE != 0) {
                // Nothing below this entry: go to the next one at this level.
                let span = 1u64 << shift;
                va = (va & !(span - 1)).checked_add(span)?;
                continue 'outer;
            }
            t = e & ADDR_MASK;
        }
        return Some(va);
    }
    None
}

/// The leaf entry of a user address in a 4 KiB-page tree, if every table above it is
/// present (a huge mapping has none).
fn leaf_entry(root: u64, virt: u64) -> Option<*mut u64> {
    let mut t = root;
    for shift in [39u32, 30, 21] {
        // SAFETY: `t` is a page-table frame of this tree.
        let e = unsafe { *entry_ptr(t, ((virt >> shift) & 511) as usize) };
        if e & PRESENT == 0 || e & HUGE != 0 {
            return None;
        }
        t = e & ADDR_MASK;
    }
    Some(entry_ptr(t, ((virt >> 12) & 511) as usize))
}

/// Whether the user page at `virt` was accessed since the last call (its PTE's accessed
/// bit, which is cleared). The caller flushes nothing: the TLB of another space is flushed
/// by its next address-space switch, and the current space's entry here.
pub fn take_accessed(root: u64, virt: u64) -> bool {
    let Some(p) = leaf_entry(root, virt) else {
        return false;
    };
    // SAFETY: a leaf entry of this tree; the CPU sets A concurrently only on another CPU
    // (there is none).
    unsafe {
        let e = *p;
        if e & PRESENT == 0 || e & ACCESSED == 0 {
            return false;
        }
        *p = e & !ACCESSED;
        core::arch::asm!("invlpg [{}]", in(reg) virt, options(nostack, preserves_flags));
    }
    true
}

/// The leaf entry for a user address: `(frame, pte bits)`, if present.
pub fn translate_user(root: u64, virt: u64) -> Option<(u64, u64)> {
    if virt >= 0x0000_8000_0000_0000 {
        return None;
    }
    // SAFETY: a leaf entry of this tree.
    let e = unsafe { *leaf_entry(root, virt)? };
    (e & PRESENT != 0).then_some((e & ADDR_MASK, e))
}

pub fn pte_writable(bits: u64) -> bool {
    bits & WRITABLE != 0
}

pub fn pte_user(bits: u64) -> bool {
    bits & USER != 0
}

/// Frees the user half of a pair (its page tables and the leaf frames marked OWNED) and the
/// pair itself. The pair must not be the active address space.
pub fn destroy_space(root: u64) {
    fn free_level(t: u64, level: u32) {
        for idx in 0..512 {
            // SAFETY: `t` is a page-table frame of the tree being destroyed.
            let e = unsafe { *entry_ptr(t, idx) };
            if e & PRESENT == 0 {
                continue;
            }
            let next = e & ADDR_MASK;
            if level == 3 {
                if e & OWNED != 0 {
                    free_frame(next);
                }
            } else {
                free_level(next, level + 1);
                free_frame(next);
            }
        }
    }
    for idx in 0..256 {
        // SAFETY: the even page of the pair.
        let e = unsafe { *entry_ptr(root, idx) };
        if e & PRESENT != 0 {
            free_level(e & ADDR_MASK, 1);
            free_frame(e & ADDR_MASK);
        }
    }
    free_frame(root);
    free_frame(root + PAGE_SIZE);
}

/// Builds the tree of the upper-half pages that kvm_pvm reads and writes through the user
/// page table during event delivery (IDT, GDT, TSS, IST stacks), mapped supervisor-only.
/// Returns the PML4 index and entry to install in every user page.
pub fn build_entry_tree(pages: &[(u64, usize)]) -> Result<(usize, u64), MapError> {
    let pdpt = alloc_table()?;
    let mut pml4_idx = None;
    for &(virt, len) in pages {
        let idx = ((virt >> 39) & 511) as usize;
        assert!(
            pml4_idx.is_none_or(|i| i == idx),
            "CPU tables span two PML4 slots"
        );
        pml4_idx = Some(idx);
        let mut off = 0;
        while off < len as u64 {
            let v = virt + off;
            let p = kernel_virt_to_phys(v);
            // A walk from the PDPT down, creating PD/PT levels as needed.
            let mut t = pdpt;
            for shift in [30u32, 21] {
                let i = ((v >> shift) & 511) as usize;
                // SAFETY: `t` is a frame of the entry tree.
                let e = unsafe { &mut *entry_ptr(t, i) };
                if *e & PRESENT == 0 {
                    *e = alloc_table()? | PRESENT | WRITABLE;
                }
                t = *e & ADDR_MASK;
            }
            // SAFETY: as above.
            unsafe { *entry_ptr(t, ((v >> 12) & 511) as usize) = p | PRESENT | WRITABLE };
            off += PAGE_SIZE;
        }
    }
    Ok((pml4_idx.unwrap_or(511), pdpt | PRESENT | WRITABLE))
}

/// Removes a user mapping and flushes it from the TLB before the frame can be reused
/// (pvm.md §11 H5). Returns the frame and whether it was owned.
pub fn unmap_user(root: u64, virt: u64) -> Option<(u64, bool)> {
    let p = leaf_entry(root, virt)?;
    // SAFETY: a leaf entry of this tree.
    let e = unsafe { *p };
    if e & PRESENT == 0 {
        return None;
    }
    // SAFETY: clearing the PTE, then invalidating it in this CPU's TLB.
    unsafe {
        *p = 0;
        core::arch::asm!("invlpg [{}]", in(reg) virt, options(nostack, preserves_flags));
    }
    Some((e & ADDR_MASK, e & OWNED != 0))
}
