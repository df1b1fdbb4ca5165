//! Threads: the saved user registers, a kernel stack, and what the thread waits for.
//!
//! A thread that waits inside a kernel call keeps no kernel state for it: its registers are
//! left so that re-executing the `syscall` instruction continues the call (the atomic API),
//! and [`ThreadState`] only says what wakes it.

use crate::arch::fpu::FpuArea;
use crate::arch::user::UserRegs;
use crate::mm;
use alloc::boxed::Box;
use core::ptr::NonNull;
use fluke_kcore::slab::Id;

pub type ThreadId = Id;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    Runnable,
    /// Waiting for a child process to exit (re-runs `wait` when woken).
    WaitChild,
    /// Sleeping until the TSC-based deadline, in ns since boot.
    Sleeping(u64),
    /// In `ipc_wait` on a port set.
    IpcWait(Id),
    /// In `ipc_call`, queued on a port set until a server waits.
    IpcCallQueued(Id),
    /// In `ipc_call`, delivered to this server thread, waiting for its reply.
    WaitReply(Id),
    /// Faulted; the fault message was delivered to this keeper thread, waiting for its reply.
    FaultWait(Id),
    /// In `mutex_lock`, waiting for the mutex.
    MutexWait(Id),
    /// In `cond_wait`, waiting for a signal.
    CondWait(Id),
    /// Stopped by a `thread_stop` (or created stopped); runs again on `thread_resume`.
    Stopped,
    /// Finished; its resources are reclaimed by the scheduler once off its stack.
    Dead,
}

/// A kernel stack: 16 KiB used while the thread is in the kernel, with unmapped guard pages
/// below it (mm::kstack).
pub struct KernelStack {
    slot: usize,
}

impl KernelStack {
    pub fn new() -> Option<KernelStack> {
        mm::kstack::alloc().map(|slot| KernelStack { slot })
    }

    pub fn top(&self) -> u64 {
        mm::kstack::stack_top(self.slot)
    }

    /// The lowest address of the stack; the page below it is a guard.
    pub fn bottom(&self) -> u64 {
        mm::kstack::stack_bottom(self.slot)
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        mm::kstack::free(self.slot);
    }
}

/// A thread's saved user registers, at a heap address that stays put: the entry code saves
/// into it and the return path loads from it by address (PERCPU.cur_regs).
///
/// Owned through a raw pointer, not a `Box`: a `Box` claims unique access to its contents
/// whenever it is moved or used, which those accesses by address would contradict. Rust
/// reaches the registers only through `&self`/`&mut self` (kernel code, with the kernel
/// state taken), and the entry and return code touch them only outside such borrows.
pub struct RegBlock(NonNull<UserRegs>);

// SAFETY: the block is owned by its RegBlock alone (as a Box would own it).
unsafe impl Send for RegBlock {}

impl RegBlock {
    pub fn new(regs: UserRegs) -> RegBlock {
        RegBlock(NonNull::from(Box::leak(Box::new(regs))))
    }

    /// The address the entry code saves into.
    pub fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }
}

impl core::ops::Deref for RegBlock {
    type Target = UserRegs;
    fn deref(&self) -> &UserRegs {
        // SAFETY: allocated in `new`, freed only in `drop`; see the type's invariant.
        unsafe { self.0.as_ref() }
    }
}

impl core::ops::DerefMut for RegBlock {
    fn deref_mut(&mut self) -> &mut UserRegs {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { self.0.as_mut() }
    }
}

impl Drop for RegBlock {
    fn drop(&mut self) {
        // SAFETY: the box `new` leaked, freed once; PERCPU.cur_regs no longer names it (the
        // scheduler clears it before a thread is reaped).
        unsafe { drop(Box::from_raw(self.0.as_ptr())) };
    }
}

pub struct Thread {
    pub regs: RegBlock,
    pub kstack: KernelStack,
    pub state: ThreadState,
    pub process: Id,
    /// The client whose call this (server) thread received and has not answered yet.
    pub reply_to: Option<ThreadId>,
    /// The exception keeper: a port that gets this thread's faults.
    pub keeper: Option<Id>,
    /// A fault message queued for a keeper that was not waiting: `(badge, words)`. Only a
    /// cache: if the thread is stopped it is dropped and the re-executed access faults again.
    pub pending_fault: Option<(u64, [u64; 4])>,
    /// The x87/SSE/AVX state, saved and restored on every switch between threads so no
    /// thread sees another's registers (on the heap: the entry code saves into it by address).
    pub fpu: FpuArea,
    /// Whether the entry code's bare floor call is open to this thread: set for good by a
    /// `bench` call that presents the benchmark capability.
    pub floor_calls: bool,
    /// Whether its returns to user mode are time-stamped (its process has run user code
    /// with a non-canonical stack pointer, or was created by one that had: `dispatch/fault.rs`).
    pub stamped: bool,
    /// When its current stretch in user mode began (kept while `stamped`).
    pub stretch: fluke_kcore::stall::StretchClock,
}

impl Thread {
    /// Whether the thread can run now.
    pub fn runnable(&self) -> bool {
        self.state == ThreadState::Runnable
    }
}
