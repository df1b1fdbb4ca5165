//! Per-CPU state shared with the entry code (entry.S reads it by fixed offsets). fluke runs
//! on one CPU, so there is exactly one; it is reached RIP-relatively, with no SWAPGS
//! (which costs ~5 µs on kvm_pvm and would load the user's GS base: pvm.md §11).

use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};

#[repr(C)]
pub struct PerCpu {
    /// The running thread's saved user registers (`UserRegs`).
    pub cur_regs: Word,
    /// Top of the running thread's kernel stack.
    pub kstack_top: Word,
    /// Scratch for the user RSP during SYSCALL entry.
    pub user_rsp: Word,
    /// RCX, R11 and RSP for the next SYSRETQ (see user::return_to_user).
    pub ret_rip: Word,
    pub ret_rflags: Word,
    pub ret_rsp: Word,
    /// Top of the stack the scheduler and the idle loop run on.
    pub idle_stack_top: Word,
    /// Index of the running thread (kernel/sched.rs), kept here so the floor switch can update it.
    pub cur_thread: Word,
    /// The bare-switch benchmark pair (platform.switch_floor), when active.
    pub floor_active: Word,
    pub floor_cur: Word,
    pub floor_regs: [Word; 2],
    pub floor_root: [Word; 2],
    pub floor_kstack: [Word; 2],
    pub floor_thread: [Word; 2],
    /// The address-space root CR3 holds (writes cost ~3.4 µs on kvm_pvm, so they are skipped
    /// when unchanged; the floor switch updates it too).
    pub cur_root: Word,
    /// The running thread's FPU/SSE save area (`FpuArea`), switched with the thread.
    pub cur_fpu: Word,
    /// The floor pair's FPU areas.
    pub floor_fpu: [Word; 2],
    /// Non-zero when the running thread has the floor call open (kernel::floor::allow_calls).
    pub floors_enabled: Word,
    /// Non-zero on kvm_pvm, where user code can change the FS base (the floor switch
    /// switches it then).
    pub pv: Word,
    /// The XSAVE components switched with a thread (fpu.rs; 0: FXSAVE).
    pub xsave_mask: Word,
}

const _: () = {
    assert!(offset_of!(PerCpu, cur_regs) == 0);
    assert!(offset_of!(PerCpu, kstack_top) == 8);
    assert!(offset_of!(PerCpu, user_rsp) == 16);
    assert!(offset_of!(PerCpu, ret_rip) == 24);
    assert!(offset_of!(PerCpu, ret_rflags) == 32);
    assert!(offset_of!(PerCpu, ret_rsp) == 40);
    assert!(offset_of!(PerCpu, idle_stack_top) == 48);
    assert!(offset_of!(PerCpu, cur_thread) == 56);
    assert!(offset_of!(PerCpu, floor_active) == 64);
    assert!(offset_of!(PerCpu, floor_cur) == 72);
    assert!(offset_of!(PerCpu, floor_regs) == 80);
    assert!(offset_of!(PerCpu, floor_root) == 96);
    assert!(offset_of!(PerCpu, floor_kstack) == 112);
    assert!(offset_of!(PerCpu, floor_thread) == 128);
    assert!(offset_of!(PerCpu, cur_root) == 144);
    assert!(offset_of!(PerCpu, cur_fpu) == 152);
    assert!(offset_of!(PerCpu, floor_fpu) == 160);
    assert!(offset_of!(PerCpu, floors_enabled) == 176);
    assert!(offset_of!(PerCpu, pv) == 184);
    assert!(offset_of!(PerCpu, xsave_mask) == 192);
};

#[no_mangle]
pub static PERCPU: PerCpu = PerCpu {
    cur_regs: Word::new(0),
    kstack_top: Word::new(0),
    user_rsp: Word::new(0),
    ret_rip: Word::new(0),
    ret_rflags: Word::new(0),
    ret_rsp: Word::new(0),
    idle_stack_top: Word::new(0),
    cur_thread: Word::new(0),
    floor_active: Word::new(0),
    floor_cur: Word::new(0),
    floor_regs: [Word::new(0), Word::new(0)],
    floor_root: [Word::new(0), Word::new(0)],
    floor_kstack: [Word::new(0), Word::new(0)],
    floor_thread: [Word::new(u64::MAX), Word::new(u64::MAX)], // kernel::floor::NO_FLOOR_THREAD
    cur_root: Word::new(0),
    cur_fpu: Word::new(0),
    floor_fpu: [Word::new(0), Word::new(0)],
    floors_enabled: Word::new(0),
    pv: Word::new(0),
    xsave_mask: Word::new(0),
};

/// The per-CPU state. Shared, never `&mut`: entry.S reads and writes these words behind
/// Rust's back (at trap entry, in the floor switch and on the return path), which interior
/// mutability allows, and no borrow of one can be invalidated by a call.
pub fn get() -> &'static PerCpu {
    &PERCPU
}

/// One word of the per-CPU state, at a fixed offset entry.S uses. Relaxed atomics: one CPU,
/// and entry.S writes these words only on kernel entry (before any Rust runs), in the floor
/// switch and on the return path (both reached by calls the compiler cannot see through);
/// the interrupts the idle loop takes write none of them.
#[repr(transparent)]
pub struct Word(AtomicU64);

impl Word {
    pub const fn new(value: u64) -> Word {
        Word(AtomicU64::new(value))
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed)
    }
}
