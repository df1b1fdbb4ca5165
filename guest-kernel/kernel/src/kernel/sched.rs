//! The scheduler: a round-robin run queue, one-shot timer preemption, the idle loop, and
//! the one place a thread is switched to ([`leave`], called by the dispatcher).
//!
//! Timer choice: a timer interrupt taken in user mode costs ~30 µs on kvm_pvm (pvm.md §6), so
//! there is no periodic tick. The LAPIC timer is armed one-shot only when something needs it:
//! a quantum of [`QUANTUM_NS`] while another thread is runnable, or the earliest sleeper's
//! deadline. A single runnable thread or an idle guest takes no timer interrupts at all.
//!
//! Object code never switches: it changes thread states (blocks the caller, makes others
//! runnable) and returns a [`Next`], which the dispatcher hands to [`leave`].

use super::floor;
use super::space::activate_root;
use super::state::{Caller, Kernel};
use super::thread::{ThreadId, ThreadState};
use crate::arch::user::{self, UserRegs};
use crate::arch::{apic, percpu};
use crate::time;
use fluke_kcore::runq::Arm;
use fluke_kcore::slab::Id;

/// What runs after a kernel call or event, as the code that handled it decided.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The running thread continues (if it still can; else the scheduler chooses).
    Resume,
    /// The running thread blocked or ended: the scheduler chooses.
    Schedule,
    /// The running thread, still runnable, goes to the back of the run queue.
    Yield,
    /// `to` runs at once; the running thread goes to the back of the run queue if
    /// `requeue` (it is still runnable), else it has blocked.
    HandOff { to: ThreadId, requeue: bool },
}

/// How a kernel entry ends, once the kernel state is put down: [`run`] does it.
#[must_use]
pub enum Leave {
    /// Return to user mode in the current thread (PERCPU.cur_regs) through the return
    /// slot at this kernel address.
    User(u64),
    /// Switch to the idle stack and run the scheduler.
    Scheduler,
}

extern "C" {
    /// entry.S: switch to the idle stack and run `dispatch::schedule_on_idle_stack`.
    fn schedule() -> !;
}

/// Ends a kernel entry: the kernel state is no longer borrowed here.
pub fn run(leave: Leave) -> ! {
    match leave {
        Leave::User(slot) => user::return_to_user(slot),
        // SAFETY: entry.S's schedule switches to the idle stack and never returns; nothing on
        // this kernel stack is needed again (a kernel call keeps no state across a block).
        Leave::Scheduler => unsafe { schedule() },
    }
}

pub fn init(kernel_root: u64, idle_stack_top: u64) {
    percpu::get().cur_root.set(kernel_root);
    percpu::get().idle_stack_top.set(idle_stack_top);
}

pub fn current(k: &mut Kernel) -> Option<ThreadId> {
    sync_current_from_percpu(k);
    k.queue.current()
}

/// The running thread and its process, for a kernel call it makes.
pub fn caller(k: &mut Kernel) -> Option<Caller> {
    let tid = current(k)?;
    let pid = k.pid_of(tid)?;
    Some(Caller { tid, pid })
}

/// The floor benchmark switches threads without the scheduler (entry.S floor_switch): adopt
/// PERCPU's view, keeping each thread either current or queued, never both.
pub fn sync_current_from_percpu(k: &mut Kernel) {
    let real = Id::from_u64(percpu::get().cur_thread.get());
    let threads = &k.threads;
    k.queue
        .adopt_current(real, |old| threads.get(old).is_some_and(|t| t.runnable()));
}

/// Makes a thread runnable (at the back of the queue), unless it is stopped or dead.
pub fn make_runnable(k: &mut Kernel, tid: ThreadId) {
    if let Some(t) = k.threads.get_mut(tid) {
        if !matches!(t.state, ThreadState::Dead | ThreadState::Stopped) {
            t.state = ThreadState::Runnable;
            enqueue(k, tid);
        }
    }
}

/// Puts a thread that is already `Runnable` at the back of the run queue (a new thread, a
/// resumed one) and makes sure the running thread will be preempted for it.
///
/// A thread that became runnable while another runs must get the CPU within a quantum even
/// if the running one never enters the kernel again (`spawn(child); loop {}`), so the
/// quantum timer is armed unless a timer is already armed. (A switch arms it too, but only
/// when it switches; an idle CPU needs nothing: the scheduler picks the thread at once.)
pub fn enqueue(k: &mut Kernel, tid: ThreadId) {
    program_timer(k.queue.enqueue(tid, time::now_ns));
}

/// Programs the one-shot timer as the run queue decided.
fn program_timer(arm: Option<Arm>) {
    if let Some(Arm { deadline, now }) = arm {
        apic::arm_oneshot(deadline.saturating_sub(now));
    }
}

pub fn wake_sleepers(k: &mut Kernel, now: u64) {
    while let Some(tid) = k.queue.take_due(now) {
        make_runnable(k, tid);
    }
}

/// Blocks the running thread `tid` in `state` (the caller returns [`Next::Schedule`]).
pub fn block(k: &mut Kernel, tid: ThreadId, state: ThreadState) {
    floor::leave(tid);
    if let Some(t) = k.threads.get_mut(tid) {
        t.state = state;
        if let ThreadState::Sleeping(d) = state {
            k.queue.sleep(tid, d);
        }
    }
}

/// Blocks the running thread `tid` with its call in restart form: RIP back on its
/// `syscall`, re-executed when it is woken or restarted (the caller then returns
/// [`Next::Schedule`] or hands off).
pub fn block_in_call(k: &mut Kernel, tid: ThreadId, state: ThreadState) {
    if let Some(r) = k.regs(tid) {
        fluke_kcore::user_regs::restart_call(r);
    }
    block(k, tid, state);
}

/// Marks a thread dead, to be reclaimed on the idle stack (it has been taken out of every
/// queue already: `objects::thread::kill`).
pub fn bury(k: &mut Kernel, tid: ThreadId) {
    k.queue.forget(tid);
    if let Some(t) = k.threads.get_mut(tid) {
        if t.state != ThreadState::Dead {
            t.state = ThreadState::Dead;
            k.dead.push(tid);
        }
    }
}

/// Does what `next` says, up to the point where only the switch itself is left: that is
/// [`run`]'s, after the kernel state is put down.
pub fn leave(k: &mut Kernel, next: Next) -> Leave {
    match next {
        Next::Resume => resume_current(k),
        Next::Schedule => Leave::Scheduler,
        Next::Yield => {
            sync_current_from_percpu(k);
            if let Some(c) = k.queue.take_current() {
                if k.threads.get(c).is_some_and(|t| t.runnable()) {
                    k.queue.push_ready(c);
                }
            }
            Leave::Scheduler
        }
        Next::HandOff { to, requeue } => {
            if let Some(t) = k.threads.get_mut(to) {
                t.state = ThreadState::Runnable;
            }
            k.queue.hand_off(to, requeue);
            // The scheduler reads the current thread from PERCPU as well.
            percpu::get().cur_thread.set(to.to_u64());
            Leave::Scheduler
        }
    }
}

/// Returns to the current thread after a kernel call or an event that did not switch.
fn resume_current(k: &mut Kernel) -> Leave {
    let Some(cur) = current(k) else {
        return Leave::Scheduler;
    };
    // A call may have ended the caller (destroying an ancestor space, say): then schedule.
    let slot = k
        .threads
        .get(cur)
        .filter(|t| t.runnable())
        .and_then(|t| k.processes.get(t.process))
        .and_then(|p| p.space.as_ref())
        .map(|s| s.return_slot());
    match slot {
        Some(slot) => Leave::User(slot),
        None => Leave::Scheduler,
    }
}

/// The scheduler's first step on the idle stack: adopt the floor switch's view, end the
/// floor pair, reclaim dead threads (never the one whose stack we could be on: we are on
/// the idle stack).
pub fn enter_scheduler(k: &mut Kernel) {
    sync_current_from_percpu(k);
    floor::end_active();
    while let Some(id) = k.dead.pop() {
        if k.queue.current() == Some(id) {
            k.queue.set_current(None);
        }
        if let Some(t) = k.threads.get(id) {
            // A register block or FPU area about to be freed must not stay current.
            let pc = percpu::get();
            if pc.cur_regs.get() == t.regs.addr() {
                pc.cur_regs.set(0);
                pc.cur_fpu.set(0);
            }
        }
        k.threads.remove(id);
    }
}

/// One pass of the scheduler: the thread to return to (its return slot), or `None` if
/// none is runnable (the idle loop then halts until an interrupt).
pub fn pick(k: &mut Kernel) -> Option<u64> {
    // Reading the clock only when someone sleeps keeps the yield path short.
    let now = if !k.queue.has_sleepers() {
        0
    } else {
        time::now_ns()
    };
    wake_sleepers(k, now);
    // The current thread keeps the CPU if it is still runnable and was not preempted.
    let next = match k.queue.current() {
        Some(c) if k.threads.get(c).is_some_and(|t| t.runnable()) => Some(c),
        _ => k.queue.pop_ready(),
    };
    if let Some(tid) = next {
        return Some(switch_to(k, tid, now));
    }
    k.queue.set_current(None);
    if let Some(d) = k.queue.earliest_sleeper() {
        program_timer(k.queue.ensure_timer(d, time::now_ns()));
    }
    None
}

/// Makes `tid` the running thread (CR3, segment bases, FPU, PERCPU) and returns its
/// space's return slot.
fn switch_to(k: &mut Kernel, tid: ThreadId, now: u64) -> u64 {
    floor::resumed(tid);
    let Some(t) = k.threads.get(tid) else {
        panic!("scheduled a missing thread");
    };
    let regs: &UserRegs = &t.regs;
    let (regs_addr, fpu, kstack) = (t.regs.addr(), t.fpu.addr(), t.kstack.top());
    floor::allow_calls(t.floor_calls);
    let Some(space) = k.processes.get(t.process).and_then(|p| p.space.as_ref()) else {
        panic!("running thread of an exited process");
    };
    let (root, slot) = (space.root, space.return_slot());
    activate_root(root);
    let pc = percpu::get();
    user::switch_segment_bases(pc.cur_regs.get() as *mut UserRegs, regs);
    crate::arch::fpu::switch(pc.cur_fpu.get(), fpu);
    pc.cur_regs.set(regs_addr);
    pc.cur_fpu.set(fpu);
    pc.kstack_top.set(kstack);
    pc.cur_thread.set(tid.to_u64());
    // Preemption needs a timer if another thread waits; a sleeper's deadline always gets
    // one (whichever is earlier, so a quantum never delays a wake-up). `now` 0: not read.
    let arm = k
        .queue
        .switched_to(tid, || if now == 0 { time::now_ns() } else { now });
    program_timer(arm);
    slot
}

/// The timer interrupt: wakes sleepers and, if another thread is waiting and the interrupted
/// one ran in user mode, preempts it.
pub fn timer_interrupt(k: &mut Kernel, from_user: bool) -> Next {
    apic::eoi();
    k.stats.timer_irqs += 1;
    k.queue.timer_fired();
    let now = time::now_ns();
    wake_sleepers(k, now);
    // Preemption holds for the floor pair too (the scheduler then dissolves it), but the
    // pair's other thread, queued while its partner runs, is no reason to preempt.
    sync_current_from_percpu(k);
    let others_wait = k.queue.ready().any(|t| !floor::in_active_pair(t));
    if from_user && others_wait {
        k.stats.preemptions += 1;
        return Next::Yield;
    }
    program_timer(k.queue.rearm_after_timer(now));
    Next::Resume
}
