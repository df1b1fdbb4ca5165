//! The kernel's entries, the top layer: a kernel call, a trap from user mode, an event in
//! kernel mode, the scheduler on the idle stack. Each takes the kernel state once
//! ([`with_kernel`]), passes it down to the code that handles the entry, and once that code
//! has said what runs next and the state is put down, leaves ([`sched::run`]): only here
//! are threads switched.

pub mod bench;
pub mod fault;
pub mod syscall;

use crate::arch::trap::{TrapFrame, EVENT_ESCALATION, EVENT_HANDLED};
use crate::arch::{apic, platform, user};
use crate::kernel::sched;
use crate::kernel::with_kernel;

/// entry.S, after SAVE_SYSCALL_FRAME: a kernel call of the current thread.
#[no_mangle]
extern "C" fn syscall_dispatch() -> ! {
    sched::run(with_kernel(|k| {
        let leave = if fault::stack_unusable(k) {
            fault::call_with_unusable_stack(k)
        } else {
            syscall::handle(k)
        };
        fault::checked_leave(k, leave)
    }))
}

/// entry.S, after `arch::trap::user_trap` saved the registers: an event from user mode.
#[no_mangle]
extern "C" fn user_event(vector: u64, error_code: u64) -> ! {
    sched::run(with_kernel(|k| {
        let leave = fault::user_event(k, vector as u8, error_code);
        fault::checked_leave(k, leave)
    }))
}

/// entry.S (CSTAR): SYSCALL from 32-bit compatibility mode.
#[no_mangle]
extern "C" fn compat_syscall_refused() -> ! {
    sched::run(with_kernel(|k| {
        let leave = fault::compat_syscall_refused(k);
        fault::checked_leave(k, leave)
    }))
}

/// entry.S, after `arch::trap::trap_dispatch`: what remains of a kernel-mode event (the
/// idle loop's interrupts, or the privilege-escalation tripwire). Returns to the
/// interrupted kernel code, except after the tripwire.
#[no_mangle]
extern "C" fn kernel_event(event: u64, frame: &TrapFrame) {
    match event {
        EVENT_HANDLED => {}
        EVENT_ESCALATION => sched::run(with_kernel(|k| fault::escalation(k, frame.rip))),
        vector => interrupt(vector as u8),
    }
}

/// An external interrupt (vector >= 32) taken in kernel mode (the idle loop, or the window
/// before a return to user mode).
fn interrupt(vector: u8) {
    match vector {
        apic::TIMER_VECTOR => {
            // In kernel mode nothing is preempted: the next scheduler pass decides.
            let _ = with_kernel(|k| sched::timer_interrupt(k, false));
        }
        apic::SPURIOUS_VECTOR => {}
        _ => match crate::arch::ioapic::line_of(vector) {
            // The idle loop then picks whoever the interrupt's message made runnable.
            Some(line) => {
                let _ = with_kernel(|k| crate::objects::interrupt::arrive(k, line, false));
            }
            None => {
                apic::eoi();
                crate::kprintln!("fluke: unexpected interrupt vector {vector}");
            }
        },
    }
}

/// entry.S's `schedule`, on the idle stack: picks the next runnable thread and returns to
/// user mode in it, idling (HLT with interrupts on, the kernel state put down) while there
/// is none. Every return to user mode goes through [`fault::checked_leave`] or
/// [`fault::pick`] (no thread returns with a non-canonical stack pointer), except the
/// benchmark floor paths of entry.S, which check it themselves.
#[no_mangle]
extern "C" fn schedule_on_idle_stack() -> ! {
    with_kernel(sched::enter_scheduler);
    loop {
        match with_kernel(fault::pick) {
            Some(slot) => user::return_to_user(slot),
            None => platform::idle(),
        }
    }
}
