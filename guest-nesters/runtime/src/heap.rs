//! A global allocator for programs that enable fluke-rt's `alloc` feature, so that
//! `alloc` (`Vec`, `Box`, `BTreeMap`, and crates built on them) works in the guest.
//!
//! The arena is `[ARENA_BASE, ARENA_BASE + ARENA_SIZE)`, reserved as demand-zero memory
//! with one `map_anon` on the first allocation: a page costs a frame (and, under a demand
//! pager, is paged like the rest of the program's memory window) only once touched. A
//! program with this feature must map nothing else there.
//!
//! Blocks come in power-of-two size classes (16 bytes up); a freed block goes on its
//! class's free list and is handed out again to a request of the same class whose
//! alignment it meets; otherwise memory comes from a bump pointer that never goes back.
//! That reuses memory well for programs that repeat the same work (the workloads), and
//! wastes at most half of each block. One spin lock guards the whole state; a waiter that
//! spins long yields its time slice, since the holder may be preempted.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use fluke_abi::syscall::layout::HEAP_BASE;

use crate::sys;

/// Where the arena starts: the bottom of the heap, inside the memory window.
pub const ARENA_BASE: u64 = HEAP_BASE;
/// How much address space the arena reserves (256 MiB).
pub const ARENA_SIZE: u64 = 0x1000_0000;

/// The smallest block: room for the free list's link, and 16-byte aligned.
const MIN_SHIFT: u32 = 4;
/// Classes `MIN_SHIFT..=MAX_SHIFT`: up to the whole arena.
const MAX_SHIFT: u32 = ARENA_SIZE.trailing_zeros();
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;

struct State {
    /// The next unused byte of the arena; 0 until the arena is reserved.
    next: u64,
    /// The first free block of each class (0: none); each free block's first 8 bytes hold
    /// the address of the next one in its list.
    free: [u64; CLASSES],
}

/// The allocator: its state behind a spin lock.
pub struct Heap {
    locked: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only reached through `Heap::with_state`, which holds `locked` (taken
// with Acquire, released with Release) for the whole access, so no two threads ever hold a
// reference to it at once.
unsafe impl Sync for Heap {}

impl Heap {
    pub const fn new() -> Heap {
        Heap {
            locked: AtomicBool::new(false),
            state: UnsafeCell::new(State {
                next: 0,
                free: [0; CLASSES],
            }),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                sys::yield_now();
            } else {
                core::hint::spin_loop();
            }
        }
        // SAFETY: we hold the lock (see `impl Sync`): this is the only reference to the
        // state until the lock is released below, after `f` returns.
        let r = f(unsafe { &mut *self.state.get() });
        self.locked.store(false, Ordering::Release);
        r
    }
}

impl Default for Heap {
    fn default() -> Self {
        Heap::new()
    }
}

/// The class of a block fitting `layout` (its size rounded up to a power of two, at least
/// its alignment and 16 bytes), or `None` if no block of the arena could.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = size.checked_next_power_of_two()?.trailing_zeros();
    (shift <= MAX_SHIFT).then(|| (shift - MIN_SHIFT) as usize)
}

const fn class_size(class: usize) -> u64 {
    1 << (class as u32 + MIN_SHIFT)
}

impl State {
    fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return core::ptr::null_mut();
        };
        let align = (layout.align() as u64).max(1 << MIN_SHIFT);
        let head = self.free[class];
        if head != 0 && head.is_multiple_of(align) {
            // SAFETY: `head` is a free block of this class in the arena (put there by
            // `dealloc`); its first word is its list link, and nothing else uses it while
            // it is on the list.
            self.free[class] = unsafe { core::ptr::read(head as *const u64) };
            return head as *mut u8;
        }
        if self.next == 0 {
            if sys::map_anon(ARENA_BASE, ARENA_SIZE).is_err() {
                return core::ptr::null_mut();
            }
            self.next = ARENA_BASE;
        }
        let start = self.next.next_multiple_of(align);
        let end = start + class_size(class);
        if end > ARENA_BASE + ARENA_SIZE {
            return core::ptr::null_mut();
        }
        self.next = end;
        start as *mut u8
    }

    /// # Safety
    /// `ptr` came from `alloc` with `layout` and is not used after this.
    unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return;
        };
        // SAFETY: the block is ours again (the caller's contract) and at least 16 bytes,
        // 16-byte aligned: its first word becomes its list link.
        unsafe { core::ptr::write(ptr as *mut u64, self.free[class]) };
        self.free[class] = ptr as u64;
    }
}

// SAFETY: blocks handed out are disjoint parts of the reserved arena (the bump pointer only
// grows; a block is on at most one free list, and leaves it when handed out), each at
// least `layout.size()` bytes and aligned to `layout.align()` (checked for reused blocks,
// made so for new ones).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with_state(|s| s.alloc(layout))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller's contract (GlobalAlloc::dealloc).
        self.with_state(|s| unsafe { s.dealloc(ptr, layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        if class_of(new_layout).is_some() && class_of(new_layout) == class_of(layout) {
            return ptr; // the block already fits
        }
        // SAFETY: as GlobalAlloc::realloc's default: a new block, the old one's bytes that
        // both hold copied into it (the two are disjoint), then the old one freed.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[global_allocator]
static HEAP: Heap = Heap::new();
