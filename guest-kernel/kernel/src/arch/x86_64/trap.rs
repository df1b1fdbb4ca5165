//! Trap dispatch: every interrupt and exception arrives in [`trap_dispatch`] with the
//! registers saved in a [`TrapFrame`] on the IST stack (entry.S).

use super::user::{self, UserRegs};
use super::{percpu, platform, tables};
use crate::kprintln;

/// The register frame built by entry.S; the layout is fixed by the push order there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // pushed by the CPU
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

pub const VEC_NMI: u64 = 2;
pub const VEC_PAGE_FAULT: u64 = 14;

pub fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating point (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating point (#XM)",
        32..=255 => "interrupt",
        _ => "reserved exception",
    }
}

#[repr(C)]
struct ExtableEntry {
    insn: u64,
    fixup: u64,
}

extern "C" {
    static __extable_start: ExtableEntry;
    static __extable_end: ExtableEntry;
    static __kernel_start: u8;
    static __text_end: u8;
}

/// The fixup address registered for a faulting kernel instruction, if any.
fn fixup_for(rip: u64) -> Option<u64> {
    // SAFETY: the linker script bounds the .extable section with these symbols and every
    // entry in it is an ExtableEntry emitted by an `asm!` block (cpu::rdmsr_safe, cpu::wrmsr_safe).
    let table = unsafe {
        let start = core::ptr::addr_of!(__extable_start);
        let end = core::ptr::addr_of!(__extable_end);
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    };
    table.iter().find(|e| e.insn == rip).map(|e| e.fixup)
}

fn in_kernel_text(rip: u64) -> bool {
    let (start, end) = (
        core::ptr::addr_of!(__kernel_start) as u64,
        core::ptr::addr_of!(__text_end) as u64,
    );
    (start..end).contains(&rip)
}

/// What [`trap_dispatch`] found a kernel-mode event to be, for the layer above
/// (`dispatch::kernel_event`, which entry.S calls next): handled here, the
/// privilege-escalation tripwire, or else the external interrupt's vector.
pub const EVENT_HANDLED: u64 = 0x100;
pub const EVENT_ESCALATION: u64 = 0x101;

/// Kernel-mode events (entry.S sends user-mode ones to [`user_trap`]): an exception with a
/// fixup is handled, any other is a kernel fault; what is left is reported to the caller.
#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) -> u64 {
    if !in_kernel_text(frame.rip) {
        // pvm.md §11 H1 tripwire: a "kernel-mode" frame outside kernel text means user code
        // runs with kernel privilege. Whoever runs is killed, and the kernel leaves by SYSRET.
        return EVENT_ESCALATION;
    }
    if frame.vector == VEC_NMI {
        platform::nmi();
        return EVENT_HANDLED;
    }
    if frame.vector < 32 {
        match fixup_for(frame.rip) {
            Some(fixup) => frame.rip = fixup,
            None => kernel_fault(frame, vector_name(frame.vector)),
        }
        return EVENT_HANDLED;
    }
    frame.vector
}

/// entry.S, before the kernel's only IRETQ: the frame must return to kernel mode, to
/// kernel text (pvm.md §11 H1).
#[no_mangle]
extern "C" fn trap_return_check(frame: &TrapFrame) {
    if frame.cs != u64::from(tables::KERNEL_CS) || !in_kernel_text(frame.rip) {
        kernel_fault(
            frame,
            "refusing to return from an event to a non-kernel context",
        );
    }
    platform::restore_irq_state_for_return(frame.rflags);
}

/// What a user-mode event was, for `dispatch::user_event` (entry.S passes it on).
#[repr(C)]
pub struct UserEvent {
    pub vector: u64,
    pub error_code: u64,
}

/// An event from user mode, on the IST stack: the registers go to the current thread's
/// UserRegs; entry.S then continues on the thread's kernel stack in
/// `dispatch::user_event`, which leaves by `return_to_user`. An event that hit the return
/// stub keeps the saved registers: the stub was restoring exactly them, so the return
/// simply starts over (pvm.md §11 H2).
#[no_mangle]
extern "C" fn user_trap(frame: &TrapFrame) -> UserEvent {
    let cur_regs = percpu::get().cur_regs.get();
    if cur_regs == 0 {
        kernel_fault(frame, "event from user mode with no current thread");
    }
    if !user::return_stub_range().contains(&frame.rip) {
        // SAFETY: single CPU, interrupts off, no kernel code running on the thread's behalf:
        // cur_regs is the running thread's register block (thread::RegBlock), which no Rust
        // reference points into now (the kernel state is not taken during this trap).
        let r = unsafe { &mut *(cur_regs as *mut UserRegs) };
        *r = UserRegs {
            r15: frame.r15,
            r14: frame.r14,
            r13: frame.r13,
            r12: frame.r12,
            r11: frame.r11,
            r10: frame.r10,
            r9: frame.r9,
            r8: frame.r8,
            rbp: frame.rbp,
            rdi: frame.rdi,
            rsi: frame.rsi,
            rdx: frame.rdx,
            rcx: frame.rcx,
            rbx: frame.rbx,
            rax: frame.rax,
            rip: frame.rip,
            rflags: frame.rflags,
            rsp: frame.rsp,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
        };
    }
    UserEvent {
        vector: frame.vector,
        error_code: frame.error_code,
    }
}

/// Reports an unexpected kernel-mode event with the registers and stops the VM.
fn kernel_fault(frame: &TrapFrame, reason: &str) -> ! {
    platform::irq_disable();
    kprintln!(
        "fluke: KERNEL FAULT: {} (vector {}, error code {:#x})",
        reason,
        frame.vector,
        frame.error_code
    );
    if frame.vector == VEC_PAGE_FAULT {
        kprintln!("fluke:   fault address {:#018x}", platform::fault_address());
    }
    dump_frame(frame);
    platform::exit(fluke_abi::status::KERNEL_FAULT);
}

pub fn dump_frame(f: &TrapFrame) {
    kprintln!(
        "fluke:   rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}",
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss
    );
    print_gprs([
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13,
        f.r14, f.r15,
    ]);
}

/// Prints the general registers, in the order rax rbx rcx rdx rsi rdi rbp r8 .. r15 (kernel
/// faults and killed processes report them the same way).
pub fn print_gprs(g: [u64; 15]) {
    kprintln!(
        "fluke:   rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        g[0],
        g[1],
        g[2],
        g[3]
    );
    kprintln!(
        "fluke:   rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}",
        g[4],
        g[5],
        g[6],
        g[7]
    );
    kprintln!(
        "fluke:   r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}",
        g[8],
        g[9],
        g[10],
        g[11]
    );
    kprintln!(
        "fluke:   r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        g[12],
        g[13],
        g[14]
    );
}
