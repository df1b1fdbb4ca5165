//! What happens when user code traps: timer interrupts, page faults (resolved through
//! mappings and demand-zero memory, or sent to a region keeper), and faults that go to the
//! thread's exception keeper or, without one, kill the process with a report.

use crate::arch::trap::{vector_name, VEC_PAGE_FAULT};
use crate::arch::user::UserRegs;
use crate::arch::{apic, platform};
use crate::kernel::sched::{self, Leave, Next};
use crate::kernel::thread::ThreadId;
use crate::kernel::Kernel;
use crate::objects::mapping::{self, Resolution};
use crate::objects::{ipc, space};
use fluke_abi::syscall::fault;
use fluke_abi::syscall::layout::USER_END;

/// An event from user mode, its registers saved in the current thread's block.
pub fn user_event(k: &mut Kernel, vector: u8, error_code: u64) -> Leave {
    let next = match vector {
        apic::TIMER_VECTOR => sched::timer_interrupt(k, true),
        apic::SPURIOUS_VECTOR => Next::Resume,
        // The VMM's after a restore (platform::nmi); nothing for the thread.
        2 => {
            crate::arch::platform::nmi();
            Next::Resume
        }
        14 => page_fault(k, error_code),
        0..=31 => exception(k, vector, error_code),
        _ => {
            apic::eoi();
            crate::kprintln!("fluke: unexpected interrupt vector {vector} in user mode");
            Next::Resume
        }
    };
    sched::leave(k, next)
}

/// The running thread and a copy of its saved registers.
fn faulting(k: &mut Kernel) -> Option<(ThreadId, UserRegs)> {
    let tid = sched::current(k)?;
    let regs = *k.regs(tid)?;
    Some((tid, regs))
}

fn exception(k: &mut Kernel, vector: u8, error_code: u64) -> Next {
    let Some((tid, r)) = faulting(k) else {
        return Next::Schedule;
    };
    if let Some(next) = to_keeper(
        k,
        tid,
        [fault::EXCEPTION, u64::from(vector), error_code, r.rip],
    ) {
        return next;
    }
    space::kill_process_of(
        k,
        tid,
        vector,
        format_args!(
            "{} (error code {:#x})",
            vector_name(u64::from(vector)),
            error_code
        ),
        &r,
    );
    Next::Schedule
}

fn page_fault(k: &mut Kernel, error_code: u64) -> Next {
    let addr = platform::fault_address();
    let Some((tid, r)) = faulting(k) else {
        return Next::Schedule;
    };
    // The memory a mapping provides (the owner's page, or a message to the region's
    // keeper), else the space's own demand-zero memory.
    if let Some(pid) = k.pid_of(tid) {
        match mapping::resolve_fault(k, pid, addr, error_code) {
            Resolution::Mapped => return Next::Resume,
            Resolution::Keeper(port, words) => {
                if let Some(next) = ipc::send_fault(k, tid, port, words) {
                    return next;
                }
            }
            Resolution::NotMapped => {}
        }
    }
    if let Some(next) = to_keeper(k, tid, [fault::EXCEPTION, VEC_PAGE_FAULT, error_code, addr]) {
        return next;
    }
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
    let exhausted = k.thread_space(tid).is_some_and(|s| s.budget_exhausted());
    let region = if addr >= USER_END {
        ", kernel address"
    } else if exhausted {
        ", memory budget exhausted"
    } else {
        ""
    };
    space::kill_process_of(
        k,
        tid,
        VEC_PAGE_FAULT as u8,
        format_args!("page fault at {addr:#x} ({access}, {cause}{region})"),
        &r,
    );
    Next::Schedule
}

/// Hands the fault to the thread's exception keeper, if it has one: the thread then waits
/// for the keeper's reply.
fn to_keeper(k: &mut Kernel, tid: ThreadId, words: [u64; 4]) -> Option<Next> {
    let port = k.threads.get(tid)?.keeper?;
    ipc::send_fault(k, tid, port, words)
}

/// The kvm_pvm privilege-escalation tripwire (pvm.md §11 H1): whoever runs is killed.
pub fn escalation(k: &mut Kernel, rip: u64) -> Leave {
    if let Some((tid, r)) = faulting(k) {
        space::kill_process_of(
            k,
            tid,
            0,
            format_args!("privilege escalation tripwire: kernel-mode event at {rip:#x}"),
            &r,
        );
    }
    Leave::Scheduler
}

/// SYSCALL from 32-bit compatibility mode (entry.S syscall_compat_entry): 32-bit code has no
/// kernel calls, so the thread takes a general-protection fault (to its keeper, else the
/// process is killed). Resuming it returns in 64-bit mode at the saved RIP.
pub fn compat_syscall_refused(k: &mut Kernel) -> Leave {
    let next = match faulting(k) {
        Some((tid, r)) => match to_keeper(k, tid, [fault::EXCEPTION, 13, 0, r.rip]) {
            Some(next) => next,
            None => {
                space::kill_process_of(
                    k,
                    tid,
                    13,
                    format_args!(
                        "general protection (#GP): SYSCALL from 32-bit compatibility mode refused"
                    ),
                    &r,
                );
                Next::Schedule
            }
        },
        None => Next::Schedule,
    };
    sched::leave(k, next)
}
