//! Per-CPU state shared with the entry code (entry.S reads it by fixed offsets). fluke runs
//! on one CPU, so there is exactly one; it is reached RIP-relatively, with no SWAPGS
//! (which costs ~5 µs on kvm_pvm and would load the user's GS base: pvm.md §11).

use core::mem::offset_of;

#[repr(C)]
pub struct PerCpu {
    /// The running thread's saved user registers (`UserRegs`).
    pub cur_regs: u64,
    /// Top of the running thread's kernel stack.
    pub kstack_top: u64,
    /// Scratch for the user RSP during SYSCALL entry.
    pub user_rsp: u64,
    /// RCX, R11 and RSP for the next SYSRETQ (see user::return_to_user).
    pub ret_rip: u64,
    pub ret_rflags: u64,
    pub ret_rsp: u64,
    /// Top of the stack the scheduler and the idle loop run on.
    pub idle_stack_top: u64,
    /// Index of the running thread (sched.rs), kept here so the floor switch can update it.
    pub cur_thread: u64,
    /// The bare-switch benchmark pair (platform.switch_floor), when active.
    pub floor_active: u64,
    pub floor_cur: u64,
    pub floor_regs: [u64; 2],
    pub floor_root: [u64; 2],
    pub floor_kstack: [u64; 2],
    pub floor_thread: [u64; 2],
    /// The address-space root CR3 holds (writes cost ~3.4 µs on kvm_pvm, so they are skipped
    /// when unchanged; the floor switch updates it too).
    pub cur_root: u64,
    /// The running thread's FPU/SSE save area (`FpuArea`), switched with the thread.
    pub cur_fpu: u64,
    /// The floor pair's FPU areas.
    pub floor_fpu: [u64; 2],
    /// Non-zero when the boot asked for the floor paths (`fluke.floors=on`).
    pub floors_enabled: u64,
    /// Non-zero on kvm_pvm, where user code can change the FS base (the floor switch
    /// switches it then).
    pub pv: u64,
    /// The XSAVE components switched with a thread (fpu.rs; 0: FXSAVE).
    pub xsave_mask: u64,
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
pub static mut PERCPU: PerCpu = PerCpu {
    cur_regs: 0,
    kstack_top: 0,
    user_rsp: 0,
    ret_rip: 0,
    ret_rflags: 0,
    ret_rsp: 0,
    idle_stack_top: 0,
    cur_thread: 0,
    floor_active: 0,
    floor_cur: 0,
    floor_regs: [0; 2],
    floor_root: [0; 2],
    floor_kstack: [0; 2],
    floor_thread: [u64::MAX; 2], // selftest::NO_FLOOR_THREAD
    cur_root: 0,
    cur_fpu: 0,
    floor_fpu: [0; 2],
    floors_enabled: 0,
    pv: 0,
    xsave_mask: 0,
};

/// The per-CPU state.
///
/// # Safety
/// Single CPU and interrupts off (all kernel code but the idle loop): no concurrent access.
#[allow(static_mut_refs)]
pub unsafe fn get() -> &'static mut PerCpu {
    &mut *core::ptr::addr_of_mut!(PERCPU)
}
