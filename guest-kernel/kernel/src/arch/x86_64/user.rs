//! User mode: the saved register frame, SYSCALL set-up and the one way back to user mode.

use super::{cpu, percpu, tables};
use core::mem::offset_of;
use fluke_abi::syscall::layout::{RETURN_PAGE, USER_END};

/// A thread's user registers: saved on every entry, restored by [`return_to_user`]. The field
/// order is the push order of entry.S. It is the ABI's `ThreadRegs`, the whole state a parent
/// reads and sets. The x87/SSE/AVX state is kept beside it, in the thread's
/// [`super::fpu::FpuArea`].
pub type UserRegs = fluke_abi::syscall::ThreadRegs;

const _: () = {
    assert!(offset_of!(UserRegs, rip) == 120);
    assert!(offset_of!(UserRegs, rflags) == 128);
    assert!(offset_of!(UserRegs, rsp) == 136);
    assert!(offset_of!(UserRegs, fs_base) == 144);
    assert!(offset_of!(UserRegs, gs_base) == 152);
};

// The checks themselves are pure and host-tested (`fluke_kcore::user_regs`).
pub use fluke_kcore::user_regs::{sanitize_regs, sanitize_rflags};

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
    let pc = percpu::get();
    // SAFETY: single CPU, interrupts off; cur_regs points at the current thread's registers,
    // which stay allocated while it runs and which nothing else references during the
    // return; the return slot is the current space's return page in the direct map.
    unsafe {
        let regs = &mut *(pc.cur_regs.get() as *mut UserRegs);
        regs.rflags = sanitize_rflags(regs.rflags);
        let direct = regs.rcx == regs.rip && regs.r11 == regs.rflags && regs.rip < USER_END;
        if direct {
            pc.ret_rip.set(regs.rip);
        } else {
            let slot = return_slot as *mut u64;
            slot.add(RETURN_SLOT_RCX).write_volatile(regs.rcx);
            slot.add(RETURN_SLOT_R11).write_volatile(regs.r11);
            slot.add(RETURN_SLOT_RSP).write_volatile(regs.rsp);
            slot.add(RETURN_SLOT_RIP).write_volatile(regs.rip);
            pc.ret_rip.set(return_stub_range().start);
        }
        pc.ret_rflags.set(regs.rflags);
        pc.ret_rsp.set(regs.rsp);
        return_to_user_asm()
    }
}

/// On kvm_pvm the user GS base is reached as MSR_KERNEL_GS_BASE ([`switch_segment_bases`]
/// and entry.S's floor switch), a behaviour of this host's PVM fork probed by us, not an
/// architectural rule: check at boot (the IDT loaded) that the MSR reads and takes a write,
/// so a host without it stops here with the reason instead of at a kernel #GP on the first
/// switch.
pub fn check_segment_base_access() {
    if super::platform::backend() != super::platform::Backend::Pv {
        return;
    }
    // A different canonical value must read back (a host that drops the write without a
    // #GP fails too), then the old one is restored.
    let usable = cpu::rdmsr_safe(MSR_KERNEL_GS_BASE).is_some_and(|gs| {
        let probe = (gs ^ 0x1000) & 0x7fff_ffff_ffff;
        // SAFETY: no thread runs yet and the kernel does not use the user GS base; both
        // values written are canonical.
        unsafe {
            cpu::wrmsr_safe(MSR_KERNEL_GS_BASE, probe)
                && cpu::rdmsr_safe(MSR_KERNEL_GS_BASE) == Some(probe)
                && cpu::wrmsr_safe(MSR_KERNEL_GS_BASE, gs)
        }
    });
    if !usable {
        panic!("kvm_pvm: MSR_KERNEL_GS_BASE (the user GS base) cannot be read and written, so threads' GS bases cannot be switched");
    }
}

/// Switches the user FS and GS bases from the thread whose registers are at `from` (null:
/// the thread that ran is gone) to `to`'s.
///
/// On kvm_pvm user code changes them itself (RD/WRFSBASE and RD/WRGSBASE run natively
/// there: pvm.md §4.3 rule 7), so the leaving thread's are read back first. The FS base is
/// the hardware one; the user GS base is held by the host while the kernel runs on its own
/// GS base, and the kernel reaches it as MSR_KERNEL_GS_BASE (probed: a user WRGSBASE value
/// reads back there, and writing it sets the user's GS base). Those accesses trap: on the
/// host measured the RDMSR added ~25 µs to each switch (`fluke-vmm bench`, interleaved
/// builds), a SWAPGS pair around RDGSBASE/WRGSBASE ~40 µs, so it is MSR, and the write is
/// made only when the base changes.
///
/// Natively user code cannot choose either (CR4.FSGSBASE is off and the MSRs are
/// privileged), but a selector load into FS or GS resets the base, so both are written on
/// every switch. The kernel itself uses neither FS nor GS.
pub fn switch_segment_bases(from: *mut UserRegs, to: &UserRegs) {
    if core::ptr::eq(from, to) {
        return;
    }
    // SAFETY: `from`, if non-null, is a live thread's register block no Rust reference
    // points into (it is not `to`); the instructions and MSRs only change the user
    // segment bases, which the kernel does not use, and every value written is canonical
    // (`sanitize_regs`, or read back from the CPU).
    unsafe {
        if super::platform::backend() == super::platform::Backend::Pv {
            let fs: u64;
            core::arch::asm!("rdfsbase {}", out(reg) fs, options(nomem, nostack, preserves_flags));
            let gs = cpu::rdmsr(MSR_KERNEL_GS_BASE);
            if !from.is_null() {
                (*from).fs_base = fs;
                (*from).gs_base = gs;
            }
            core::arch::asm!("wrfsbase {}", in(reg) to.fs_base, options(nomem, nostack, preserves_flags));
            if gs != to.gs_base {
                cpu::wrmsr(MSR_KERNEL_GS_BASE, to.gs_base);
            }
            return;
        }
        // Natively user code cannot set a base to a value of its choice, but loading a
        // selector into FS or GS resets the base, so what is loaded is not known: write both.
        let _ = from;
        cpu::wrmsr(MSR_FS_BASE, to.fs_base);
        cpu::wrmsr(MSR_GS_BASE, to.gs_base);
    }
}

const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
