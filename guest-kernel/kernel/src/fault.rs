//! What happens when user code traps: timer interrupts, demand-zero page faults, and faults
//! that kill the process (the object-model issue turns these into messages to a keeper).

use crate::arch::trap::{vector_name, VEC_PAGE_FAULT};
use crate::arch::user::UserRegs;
use crate::arch::{apic, percpu, platform};
use crate::process;
use crate::sched::{self, kernel};
use crate::{ipc, memory};
use fluke_abi::syscall::fault;
use fluke_abi::syscall::layout::USER_END;

fn regs() -> UserRegs {
    // SAFETY: user_trap checked cur_regs is the running thread's register block.
    unsafe { *(percpu::get().cur_regs.get() as *const UserRegs) }
}

pub fn user_event(vector: u8, error_code: u64) -> ! {
    match vector {
        apic::TIMER_VECTOR => sched::timer_interrupt(true),
        apic::SPURIOUS_VECTOR => {}
        14 => page_fault(error_code),
        0..=31 => {
            let r = regs();
            to_keeper([fault::EXCEPTION, u64::from(vector), error_code, r.rip]);
            process::kill_current(
                vector,
                format_args!(
                    "{} (error code {:#x})",
                    vector_name(u64::from(vector)),
                    error_code
                ),
                &r,
            );
            // SAFETY: entry.S's schedule switches stacks and never returns.
            unsafe { sched::schedule() }
        }
        _ => {
            apic::eoi();
            crate::kprintln!("fluke: unexpected interrupt vector {vector} in user mode");
        }
    }
    sched::resume_current()
}

fn page_fault(error_code: u64) {
    let addr = platform::fault_address();
    // The memory a mapping provides (the owner's page, or a message to the region's
    // keeper), else the space's own demand-zero memory.
    if let Ok(pid) = sched::current_pid() {
        match memory::resolve_fault(pid, addr, error_code) {
            memory::Resolution::Mapped => return,
            memory::Resolution::Keeper(port, words) => ipc::send_fault(port, words),
            memory::Resolution::NotMapped => {}
        }
    }
    to_keeper([fault::EXCEPTION, VEC_PAGE_FAULT, error_code, addr]);
    let access = if error_code & 0x10 != 0 {
        "execute"
    } else if error_code & 2 != 0 {
        "write"
    } else {
        "read"
    };
    let cause = if error_code & 1 != 0 {
        "protection violation"
    } else {
        "not mapped"
    };
    let exhausted = sched::current()
        .and_then(|t| kernel().threads.get(t))
        .and_then(|t| kernel().processes.get(t.process))
        .and_then(|p| p.space.as_ref())
        .is_some_and(|s| s.budget_exhausted());
    let region = if addr >= USER_END {
        ", kernel address"
    } else if exhausted {
        ", memory budget exhausted"
    } else {
        ""
    };
    let r = regs();
    process::kill_current(
        VEC_PAGE_FAULT as u8,
        format_args!("page fault at {addr:#x} ({access}, {cause}{region})"),
        &r,
    );
    // SAFETY: as above.
    unsafe { sched::schedule() }
}

/// Hands the fault to the current thread's exception keeper, if it has one (does not return
/// then: the thread waits for the keeper's reply).
fn to_keeper(words: [u64; 4]) {
    let keeper = sched::current()
        .and_then(|t| kernel().threads.get(t))
        .and_then(|t| t.keeper);
    if let Some(port) = keeper {
        ipc::send_fault(port, words);
    }
}

/// The kvm_pvm privilege-escalation tripwire (pvm.md §11 H1).
pub fn escalation(rip: u64) -> ! {
    let r = regs();
    process::kill_current(
        0,
        format_args!("privilege escalation tripwire: kernel-mode event at {rip:#x}"),
        &r,
    );
    // SAFETY: as above.
    unsafe { sched::schedule() }
}

/// SYSCALL from 32-bit compatibility mode (entry.S syscall_compat_entry): 32-bit code has no
/// kernel calls, so the thread takes a general-protection fault (to its keeper, else the
/// process is killed). Resuming it returns in 64-bit mode at the saved RIP.
#[no_mangle]
extern "C" fn compat_syscall_refused() -> ! {
    let r = regs();
    to_keeper([fault::EXCEPTION, 13, 0, r.rip]);
    process::kill_current(
        13,
        format_args!("general protection (#GP): SYSCALL from 32-bit compatibility mode refused"),
        &r,
    );
    // SAFETY: entry.S's schedule switches stacks and never returns.
    unsafe { sched::schedule() }
}
