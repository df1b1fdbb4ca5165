//! What happens when user code traps: timer interrupts, page faults (resolved through
//! mappings and demand-zero memory, or sent to a region keeper), and faults that go to the
//! thread's exception keeper or, without one, kill the process with a report.

use crate::arch::trap::{vector_name, VEC_PAGE_FAULT};
use crate::arch::user::UserRegs;
use crate::arch::{apic, platform};
use crate::kernel::sched::{self, Leave, Next};
use crate::kernel::thread::{ThreadId, ThreadState};
use crate::kernel::Kernel;
use crate::objects::mapping::{self, Resolution};
use crate::objects::{ipc, space};
use fluke_abi::syscall::fault;
use fluke_abi::syscall::layout::USER_END;
use fluke_kcore::user_regs;

/// An event from user mode, its registers saved in the current thread's block.
pub fn user_event(k: &mut Kernel, vector: u8, error_code: u64) -> Leave {
    charge_emulated_stretch(k);
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
        _ => match crate::arch::ioapic::line_of(vector) {
            Some(line) => crate::objects::interrupt::arrive(k, line, true),
            None => {
                apic::eoi();
                crate::kprintln!("fluke: unexpected interrupt vector {vector} in user mode");
                Next::Resume
            }
        },
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

/// The stack fault's vector.
const VEC_STACK_FAULT: u8 = 12;

/// Whether the running thread's stack pointer is non-canonical: it must not return to user
/// mode so (hole 7 of issue 13).
///
/// On kvm_pvm the host does not run user code with a non-canonical RSP natively: it
/// emulates it, about 1 µs an instruction where native code takes 0.3 ns (measured: a
/// 2-instruction loop, 1.4 µs an iteration), and holds the guest's interrupts off for as
/// long as one emulated instruction takes (`rep stosb` over 16 MiB: wake-ups of a sleeper
/// beside it ~80 ms late). A thread can load such an RSP itself, and the kernel cannot stop
/// the host from emulating it until its next kernel entry; from then on the kernel never
/// hands it back: the thread takes a stack fault instead (what the CPU raises for a stack
/// access through a non-canonical address), so it is stopped at its first event, on every
/// backend alike. No stack access through such an RSP could succeed anyway.
pub fn stack_unusable(k: &mut Kernel) -> bool {
    sched::current(k)
        .and_then(|tid| k.regs(tid))
        .is_some_and(|r| !user_regs::canonical(r.rsp))
}

/// The running thread's stack pointer is non-canonical ([`stack_unusable`]): it takes a
/// stack fault (#SS, error code 0) at its RIP, to its keeper, else its process is killed.
fn stack_fault(k: &mut Kernel) -> Next {
    let Some((tid, r)) = faulting(k) else {
        return Next::Schedule;
    };
    let vector = u64::from(VEC_STACK_FAULT);
    if let Some(next) = to_keeper(k, tid, [fault::EXCEPTION, vector, 0, r.rip]) {
        return next;
    }
    space::kill_process_of(
        k,
        tid,
        VEC_STACK_FAULT,
        format_args!(
            "{}: non-canonical stack pointer {:#x}",
            vector_name(vector),
            r.rsp
        ),
        &r,
    );
    Next::Schedule
}

/// Every entry from user mode starts here: a thread that comes back with a non-canonical
/// stack pointer ran emulated since its last return (on kvm_pvm; [`stack_unusable`]), and
/// that stretch is charged to its process ([`fluke_kcore::stall`]), whatever the entry then
/// does (the push through such an RSP raises its own #SS, an event like any other). So a
/// keeper that repairs RSP and resumes the thread, or a pool of threads taking turns, does
/// not buy the program the machine.
pub fn charge_emulated_stretch(k: &mut Kernel) {
    if !stack_unusable(k) {
        return;
    }
    let Some(tid) = sched::current(k) else {
        return;
    };
    let now = crate::time::now_ns();
    let Some(t) = k.threads.get_mut(tid) else {
        return;
    };
    let (pid, stretch) = (t.process, t.stretch.take_stretch(now));
    k.mark_offender(pid);
    if let (Some(stretch), Some(p)) = (stretch, k.processes.get_mut(pid)) {
        p.hold.charge(now, stretch);
    }
}

/// What the current thread may do at a return to user mode.
enum Return {
    /// Go back to user mode.
    Go,
    /// Its stack pointer is non-canonical ([`stack_unusable`]): it takes a stack fault.
    BadStack,
    /// Its process still owes for a stretch of emulated user code
    /// ([`charge_emulated_stretch`]): it sleeps until then.
    Held(ThreadId, u64),
}

/// One look at the current thread before it returns to user mode. Only a thread whose
/// process offended reads the clock (and gets its return time-stamped); for any other the
/// check is the canonical-RSP test on its registers.
fn return_check(k: &mut Kernel) -> Return {
    let Some(tid) = sched::current(k) else {
        return Return::Go;
    };
    let Some(t) = k.threads.get_mut(tid) else {
        return Return::Go;
    };
    if !user_regs::canonical(t.regs.rsp) {
        return Return::BadStack;
    }
    if !t.stamped {
        return Return::Go;
    }
    let pid = t.process;
    let now = crate::time::now_ns();
    if let Some(until) = k.processes.get_mut(pid).and_then(|p| p.hold.held_at(now)) {
        return Return::Held(tid, until);
    }
    if let Some(t) = k.threads.get_mut(tid) {
        t.stretch.resumed(now);
    }
    Return::Go
}

/// A kernel call made with a non-canonical stack pointer is not made: the thread takes the
/// stack fault on its `syscall` instruction (the call in restart form, as a blocked call
/// is), so a keeper that fixes RSP has it re-executed.
pub fn call_with_unusable_stack(k: &mut Kernel) -> Leave {
    charge_emulated_stretch(k);
    if let Some(r) = sched::current(k).and_then(|tid| k.regs(tid)) {
        user_regs::restart_call(r);
    }
    let next = stack_fault(k);
    sched::leave(k, next)
}

/// How every kernel entry from user mode ends: as it decided, unless that returns to user
/// mode in a thread whose stack pointer is non-canonical (that thread takes the stack fault
/// instead) or whose process is held for a stretch it ran so ([`return_check`]); then the
/// scheduler chooses.
pub fn checked_leave(k: &mut Kernel, leave: Leave) -> Leave {
    if !matches!(leave, Leave::User(_)) {
        return leave;
    }
    match return_check(k) {
        Return::Go => leave,
        Return::BadStack => {
            let next = stack_fault(k);
            match sched::leave(k, next) {
                // The faulting thread does not run again now, whatever `next` said.
                Leave::User(_) => Leave::Scheduler,
                other => other,
            }
        }
        Return::Held(tid, until) => {
            sched::block(k, tid, ThreadState::Sleeping(until));
            Leave::Scheduler
        }
    }
}

/// The scheduler's pick, with the same rules: a thread about to return to user mode with a
/// non-canonical stack pointer (its keeper resumed it as it was, or a parent set it) takes
/// the stack fault instead, and a held one sleeps; another is picked. Each pass ends the
/// picked thread's run (it waits for its keeper, is killed, or sleeps), so the loop ends.
pub fn pick(k: &mut Kernel) -> Option<u64> {
    loop {
        let slot = sched::pick(k)?;
        match return_check(k) {
            Return::Go => return Some(slot),
            Return::BadStack => {
                let next = stack_fault(k);
                // A hand-off to the keeper makes it current; nothing returns to user mode.
                let _ = sched::leave(k, next);
                // Reclaim a killed thread (we are on the idle stack, not on its kernel stack).
                sched::enter_scheduler(k);
            }
            Return::Held(tid, until) => sched::block(k, tid, ThreadState::Sleeping(until)),
        }
    }
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
    charge_emulated_stretch(k);
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
