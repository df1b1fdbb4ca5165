//! Kernel stacks with guard pages. Each thread's 16 KiB kernel stack lives in its own 32 KiB
//! slot of PML4 slot 275, mapped at the top of the slot; the pages below it stay unmapped, so
//! a kernel stack overflow takes a page fault (delivered on an IST stack, reported as a
//! kernel fault) instead of running into another thread's stack or the heap.
//!
//! A freed slot keeps its frames mapped and is reused with them: no kernel mapping is ever
//! removed, so no TLB flush is ever needed (a flush costs 40-59 µs on kvm_pvm: pvm.md §6).

use crate::arch::paging::{self, MapError, Perm};
use core::sync::atomic::{AtomicU64, Ordering};

/// PML4 slot 275, in the upper half and clear of slot 256 (pvm.md §4.3 rule 2).
pub const KSTACK_BASE: u64 = 0xffff_8980_0000_0000;
const PAGE: u64 = 4096;
/// Pages of stack in each slot; the rest of the slot, below them, is the guard.
pub const STACK_PAGES: u64 = 4;
const SLOT_SIZE: u64 = 8 * PAGE;
/// As many slots as the kernel has threads (sched::MAX_THREADS), plus the boot reserve.
const SLOTS: usize = 1024 + 64;
const WORDS: usize = SLOTS.div_ceil(64);

/// Slots whose stack pages are mapped, and slots a thread uses. Bitmaps of atomics: the
/// allocator needs no `&mut` to shared state (kernel code runs on one CPU with interrupts
/// off, so the load/store pairs below never race).
static MAPPED: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];
static IN_USE: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];

fn test(map: &[AtomicU64; WORDS], slot: usize) -> bool {
    map[slot / 64].load(Ordering::Relaxed) & (1 << (slot % 64)) != 0
}

fn set(map: &[AtomicU64; WORDS], slot: usize, on: bool) {
    let w = &map[slot / 64];
    let bit = 1u64 << (slot % 64);
    let v = w.load(Ordering::Relaxed);
    w.store(if on { v | bit } else { v & !bit }, Ordering::Relaxed);
}

/// Bottom of the stack pages of `slot` (the guard is just below).
pub fn stack_bottom(slot: usize) -> u64 {
    KSTACK_BASE + slot as u64 * SLOT_SIZE + SLOT_SIZE - STACK_PAGES * PAGE
}

pub fn stack_top(slot: usize) -> u64 {
    KSTACK_BASE + (slot as u64 + 1) * SLOT_SIZE
}

/// Maps the first slot at boot, which also creates slot 275's top-level entry in the
/// kernel's root: every space copies the kernel half's top-level entries when it is made,
/// so the entry must exist before the first space (what is mapped below it later is shared).
pub fn init() -> Result<(), MapError> {
    map_slot(0)
}

fn map_slot(slot: usize) -> Result<(), MapError> {
    let root = super::kernel_root();
    let mut frames = [0u64; STACK_PAGES as usize];
    for i in 0..frames.len() {
        match super::frames::alloc_frame() {
            Some(f) => frames[i] = f,
            None => {
                frames[..i]
                    .iter()
                    .for_each(|&f| super::frames::free_frame(f));
                return Err(MapError::OutOfMemory);
            }
        }
    }
    for (i, &frame) in frames.iter().enumerate() {
        // Fails only for want of a page-table frame; the slot is then never used.
        paging::map_range(
            root,
            stack_bottom(slot) + i as u64 * PAGE,
            frame,
            PAGE,
            Perm::KERNEL_RW,
        )?;
    }
    set(&MAPPED, slot, true);
    Ok(())
}

/// A free slot with its stack mapped, preferring one mapped before.
pub fn alloc() -> Option<usize> {
    let free = |s: &usize| !test(&IN_USE, *s);
    let slot = (0..SLOTS)
        .filter(free)
        .find(|&s| test(&MAPPED, s))
        .or_else(|| (0..SLOTS).find(|s| free(s)))?;
    if !test(&MAPPED, slot) {
        map_slot(slot).ok()?;
    }
    set(&IN_USE, slot, true);
    Some(slot)
}

/// Gives a slot back (its pages stay mapped, for the next thread).
pub fn free(slot: usize) {
    set(&IN_USE, slot, false);
}
