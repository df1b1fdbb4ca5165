//! User mode: the saved register frame, SYSCALL set-up and the one way back to user mode.

use super::{cpu, percpu, tables};
use core::mem::offset_of;
use fluke_abi::syscall::layout::{RETURN_PAGE, USER_END};

/// A thread's user registers: saved on every entry, restored by [`return_to_user`]. The field
/// order is the push order of entry.S. It is the ABI's `ThreadRegs`, the whole state a parent
/// reads and sets. The x87/SSE state is kept beside it, in the thread's [`FpuArea`].
pub type UserRegs = fluke_abi::syscall::ThreadRegs;

const _: () = {
    assert!(offset_of!(UserRegs, rip) == 120);
    assert!(offset_of!(UserRegs, rflags) == 128);
    assert!(offset_of!(UserRegs, rsp) == 136);
    assert!(offset_of!(UserRegs, fs_base) == 144);
};

/// RFLAGS bits user code may hold: CF PF AF ZF SF TF DF OF AC ID. IF is always set; IOPL,
/// NT, RF and VM never are (IOPL 3 would give user code port I/O natively).
const USER_RFLAGS_MASK: u64 = 0x0024_0dd5;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_FIXED1: u64 = 1 << 1;

pub fn sanitize_rflags(rflags: u64) -> u64 {
    (rflags & USER_RFLAGS_MASK) | RFLAGS_IF | RFLAGS_FIXED1
}

/// Checks and sanitises registers a user supplies for a thread (`thread_set_state`), on the
/// way in, so that nothing the kernel later loads from them can fault in kernel mode or give
/// user code a privilege: RIP must be a user-half address, the FS base canonical (a
/// non-canonical one makes the kernel's WRFSBASE take a #GP; any canonical value is one user
/// code could set itself on kvm_pvm), and RFLAGS keeps only the bits user code may hold. A
/// bad RSP only faults in user mode.
pub fn sanitize_regs(regs: &mut UserRegs) -> Result<(), fluke_abi::syscall::Error> {
    let canonical = |v: u64| (((v << 16) as i64) >> 16) as u64 == v;
    if regs.rip >= USER_END || !canonical(regs.fs_base) {
        return Err(fluke_abi::syscall::Error::InvalidArgument);
    }
    regs.rflags = sanitize_rflags(regs.rflags);
    Ok(())
}

/// Length of the SYSCALL instruction, to restart a call (the atomic API: a blocked call is
/// re-executed when the thread resumes).
pub const SYSCALL_INSN_LEN: u64 = 2;

/// The return page layout (entry.S: return_page_template).
pub const RETURN_SLOT_RCX: usize = 0;
pub const RETURN_SLOT_R11: usize = 1;
pub const RETURN_SLOT_RSP: usize = 2;
pub const RETURN_SLOT_RIP: usize = 3;

extern "C" {
    static return_page_template: [u8; 4096];
    static return_stub_start: u8;
    static return_stub_end: u8;
    fn return_to_user_asm() -> !;
    fn syscall_entry();
    fn syscall_compat_entry();
}

/// The template every space's return page is a copy of.
pub fn return_page_template_bytes() -> &'static [u8; 4096] {
    // SAFETY: a page of read-only data defined in entry.S.
    unsafe { &*core::ptr::addr_of!(return_page_template) }
}

/// The user-virtual range of the return stub.
pub fn return_stub_range() -> core::ops::Range<u64> {
    let (base, start, end) = (
        core::ptr::addr_of!(return_page_template) as u64,
        core::ptr::addr_of!(return_stub_start) as u64,
        core::ptr::addr_of!(return_stub_end) as u64,
    );
    RETURN_PAGE + (start - base)..RETURN_PAGE + (end - base)
}

/// Programs SYSCALL: Linux selectors in STAR (mandatory on kvm_pvm), the entry point, and
/// SFMASK clearing TF DF IF IOPL NT AC natively.
pub fn init_syscall() {
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SFMASK: u32 = 0xc000_0084;
    // SAFETY: these MSRs only define where SYSCALL enters; the entry code is ready.
    unsafe {
        cpu::wrmsr(cpu::MSR_EFER, cpu::rdmsr(cpu::MSR_EFER) | cpu::EFER_SCE);
        cpu::wrmsr(
            MSR_STAR,
            (u64::from(tables::USER32_CS - 3) << 48) | (u64::from(tables::KERNEL_CS) << 32),
        );
        cpu::wrmsr(MSR_LSTAR, syscall_entry as *const () as u64);
        // SYSCALL from 32-bit compatibility mode: refused (entry.S syscall_compat_entry).
        cpu::wrmsr(MSR_CSTAR, syscall_compat_entry as *const () as u64);
        cpu::wrmsr(MSR_SFMASK, 0x4_7700);
    }
}

/// Returns to user mode in the current thread (PERCPU.cur_regs), never coming back.
///
/// `return_slot` is the kernel (direct-map) address of the current space's return page. If
/// RCX and R11 hold the values SYSRETQ would give them anyway (after a kernel call), the
/// thread's RIP and RFLAGS go straight into SYSRETQ. Otherwise (after an interrupt, a fault,
/// or a state set by another thread) SYSRETQ goes to the return stub, which loads RCX, R11,
/// RSP and RIP from the slot. The stub path is also taken for any RIP outside the user half,
/// so a SYSRETQ never sees a non-canonical RCX (a ring-0 #GP on Intel).
pub fn return_to_user(return_slot: u64) -> ! {
    // SAFETY: single CPU, interrupts off; cur_regs points at the current thread's registers,
    // which stay allocated while it runs.
    unsafe {
        let pc = percpu::get();
        let regs = &mut *(pc.cur_regs as *mut UserRegs);
        regs.rflags = sanitize_rflags(regs.rflags);
        let direct = regs.rcx == regs.rip && regs.r11 == regs.rflags && regs.rip < USER_END;
        if direct {
            pc.ret_rip = regs.rip;
        } else {
            let slot = return_slot as *mut u64;
            slot.add(RETURN_SLOT_RCX).write_volatile(regs.rcx);
            slot.add(RETURN_SLOT_R11).write_volatile(regs.r11);
            slot.add(RETURN_SLOT_RSP).write_volatile(regs.rsp);
            slot.add(RETURN_SLOT_RIP).write_volatile(regs.rip);
            pc.ret_rip = return_stub_range().start;
        }
        pc.ret_rflags = regs.rflags;
        pc.ret_rsp = regs.rsp;
        return_to_user_asm()
    }
}

/// A thread's x87/SSE state in the FXSAVE layout. Natively that is all a program can use
/// (the kernel leaves CR4.OSXSAVE off). On kvm_pvm user code runs on the host's CR4 and XCR0
/// (0x600e7 seen: AVX, AVX-512 and AMX enabled), so the YMM upper halves, ZMM16-31 and the
/// opmask registers are NOT switched yet and do leak between threads there: switching them
/// needs XSAVE with the host's XCR0 (an open part of issue 9).
#[repr(C, align(16))]
pub struct FpuArea(pub [u8; 512]);

impl FpuArea {
    /// The state after FNINIT with SSE defaults: control word 0x37f, MXCSR 0x1f80 (all
    /// exceptions masked), every register zero.
    pub fn clean() -> FpuArea {
        let mut a = [0u8; 512];
        a[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        a[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        FpuArea(a)
    }

    /// An FXSAVE image a user supplied, made safe for FXRSTOR: MXCSR keeps only the bits
    /// the CPU supports (a reserved bit makes FXRSTOR #GP in the kernel), and the
    /// MXCSR_MASK field, which FXRSTOR ignores, is cleared. Every other field is loaded as
    /// given: no value of them can fault.
    pub fn sanitized(mut image: [u8; 512]) -> FpuArea {
        let mxcsr = u32::from_le_bytes([image[24], image[25], image[26], image[27]]);
        let masked = mxcsr & mxcsr_mask();
        image[24..28].copy_from_slice(&masked.to_le_bytes());
        image[28..32].fill(0);
        FpuArea(image)
    }
}

/// The MXCSR bits this CPU supports (FXSAVE's MXCSR_MASK field; 0 there means the
/// architectural default 0xffbf). Read once, by an FXSAVE into a scratch area.
fn mxcsr_mask() -> u32 {
    static MASK: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
    let known = MASK.load(core::sync::atomic::Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let mut scratch = FpuArea([0; 512]);
    // SAFETY: a 16-byte-aligned area we own; FXSAVE changes no register (the running
    // thread's state stays loaded).
    unsafe { fxsave(scratch.0.as_mut_ptr() as u64) };
    let mask =
        match u32::from_le_bytes([scratch.0[28], scratch.0[29], scratch.0[30], scratch.0[31]]) {
            0 => 0xffbf,
            m => m,
        };
    MASK.store(mask, core::sync::atomic::Ordering::Relaxed);
    mask
}

/// Saves the x87/SSE registers into the area at `from` (0: the thread that ran is gone) and
/// loads those at `to`. The kernel itself never touches x87 or SSE (it is built soft-float),
/// so the registers hold the running thread's state from its return to user mode until the
/// next switch.
pub fn switch_fpu(from: u64, to: u64) {
    if from == to {
        return;
    }
    // SAFETY: `from` (if non-zero) and `to` are the 16-byte-aligned FpuAreas of live threads
    // (PERCPU.cur_fpu is cleared when its thread is reaped), reached only here and by the
    // floor switch, never while a Rust reference to them is live. `to` holds either the clean
    // state or what FXSAVE wrote, so FXRSTOR cannot fault on a reserved MXCSR bit.
    unsafe {
        if from != 0 {
            fxsave(from);
        }
        core::arch::asm!("fxrstor64 [{}]", in(reg) to, options(nostack, preserves_flags));
    }
}

/// # Safety
/// `area` must be a 16-byte-aligned, writable 512-byte area no Rust reference points into.
unsafe fn fxsave(area: u64) {
    core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags));
}

/// Switches the user FS base from the thread whose registers are at `from` (0: none) to
/// `to`'s. Only on kvm_pvm, where user code can change it (pvm.md §4.3 rule 7); RDFSBASE and
/// WRFSBASE run natively there. (The user GS base is kept by the host and not switched yet.)
pub fn switch_fs_base(from: *mut UserRegs, to: &UserRegs) {
    if super::platform::backend() != super::platform::Backend::Pv || core::ptr::eq(from, to) {
        return;
    }
    // SAFETY: FSGSBASE instructions work in the kvm_pvm kernel (pvm.md §4.3 rule 7); the
    // kernel itself never uses FS. `from`, if non-null, is a live thread's register block.
    unsafe {
        if !from.is_null() {
            let fs: u64;
            core::arch::asm!("rdfsbase {}", out(reg) fs, options(nomem, nostack, preserves_flags));
            (*from).fs_base = fs;
        }
        core::arch::asm!("wrfsbase {}", in(reg) to.fs_base, options(nomem, nostack, preserves_flags));
    }
}
