//! The scheduler: the thread and process tables, a round-robin run queue, one-shot timer
//! preemption and the idle loop.
//!
//! Timer choice: a timer interrupt taken in user mode costs ~30 µs on kvm_pvm (pvm.md §6), so
//! there is no periodic tick. The LAPIC timer is armed one-shot only when something needs it:
//! a quantum of [`QUANTUM_NS`] while another thread is runnable, or the earliest sleeper's
//! deadline. A single runnable thread or an idle guest takes no timer interrupts at all.

use crate::arch::user::{self, UserRegs};
use crate::arch::{apic, paging, percpu, platform};
use crate::process::Process;
use crate::space;
use crate::sync::BootCell;
use crate::thread::{Thread, ThreadId, ThreadState};
use crate::time;
use fluke_kcore::runq::{Arm, RunQueue};
use fluke_kcore::slab::{Id, Slab};

/// Round-robin time slice: 10 ms keeps the cost of preemption on kvm_pvm (~30 µs per timer
/// interrupt in user mode) at 0.3% of a CPU-bound thread's time.
pub const QUANTUM_NS: u64 = 10_000_000;

pub const MAX_THREADS: usize = 1024;
pub const MAX_PROCESSES: usize = 256;
/// Per object type; what a space can actually make is bounded by its budget (a frame each).
pub const MAX_PORTS: usize = 65536;

pub struct Kernel {
    pub threads: Slab<Thread>,
    pub processes: Slab<Process>,
    pub ports: Slab<crate::ipc::Port>,
    pub port_sets: Slab<crate::ipc::PortSet>,
    pub mutexes: Slab<crate::mutex::Mutex>,
    pub conditions: Slab<crate::mutex::Condition>,
    pub regions: Slab<crate::memory::Region>,
    pub mappings: Slab<crate::memory::Mapping>,
    pub references: Slab<Option<crate::object::ObjCap>>,
    /// Which space created each object (its budget pays for it; it dies with it).
    pub creators: alloc::collections::BTreeMap<crate::object::ObjRef, Id>,
    /// The running thread, the run queue, the sleepers and the timer's deadline: the
    /// decisions are `fluke_kcore::runq` (host-tested), the hardware is programmed here.
    pub queue: RunQueue<ThreadId>,
    /// Threads that ended, reclaimed on the idle stack.
    pub dead: alloc::vec::Vec<ThreadId>,
    pub init: Option<Id>,
    /// A page the current kernel call needs that only a keeper can provide (set by
    /// `memory::fault_in_for_kernel`, taken by the dispatcher).
    pub keeper_fault: Option<crate::memory::KeeperFault>,
    /// Counters for the boot report and tests.
    pub stats: Stats,
}

#[derive(Default, Clone, Copy)]
pub struct Stats {
    pub timer_irqs: u64,
    pub preemptions: u64,
    pub user_faults_resolved: u64,
    pub processes_killed: u64,
}

static KERNEL: BootCell<Kernel> = BootCell::new(Kernel {
    threads: Slab::new(MAX_THREADS),
    processes: Slab::new(MAX_PROCESSES),
    ports: Slab::new(MAX_PORTS),
    port_sets: Slab::new(MAX_PORTS),
    mutexes: Slab::new(MAX_PORTS),
    conditions: Slab::new(MAX_PORTS),
    regions: Slab::new(MAX_PORTS),
    mappings: Slab::new(MAX_PORTS),
    references: Slab::new(MAX_PORTS),
    creators: alloc::collections::BTreeMap::new(),
    queue: RunQueue::new(QUANTUM_NS),
    dead: alloc::vec::Vec::new(),
    init: None,
    keeper_fault: None,
    stats: Stats {
        timer_irqs: 0,
        preemptions: 0,
        user_faults_resolved: 0,
        processes_killed: 0,
    },
});

/// The kernel's tables.
///
/// Kernel code runs on one CPU with interrupts off (the idle loop excepted, which does not
/// call this while interrupts are on), so there is never a second live reference across a
/// call that could re-enter. Callers keep the borrow short.
#[allow(clippy::mut_from_ref)]
pub fn kernel() -> &'static mut Kernel {
    // SAFETY: see above.
    unsafe { KERNEL.get_mut() }
}

extern "C" {
    /// entry.S: switch to the idle stack and run `schedule_on_idle_stack`.
    pub fn schedule() -> !;
}

pub fn init(kernel_root: u64, idle_stack_top: u64) {
    percpu::get().cur_root.set(kernel_root);
    percpu::get().idle_stack_top.set(idle_stack_top);
}

/// Loads `root` into CR3 unless it is already there.
fn activate_root(root: u64) {
    let pc = percpu::get();
    if pc.cur_root.get() != root {
        // SAFETY: every root maps the kernel half, so the switch is safe anywhere in the
        // kernel.
        unsafe { paging::activate(root) };
        pc.cur_root.set(root);
    }
}

pub fn current() -> Option<ThreadId> {
    sync_current_from_percpu();
    kernel().queue.current()
}

/// Makes a thread runnable (at the back of the queue).
pub fn make_runnable(tid: ThreadId) {
    let k = kernel();
    if let Some(t) = k.threads.get_mut(tid) {
        if !matches!(t.state, ThreadState::Dead | ThreadState::Stopped) {
            t.state = ThreadState::Runnable;
            enqueue(tid);
        }
    }
}

/// Puts a thread that is already `Runnable` at the back of the run queue (a new thread, a
/// resumed one) and makes sure the running thread will be preempted for it.
///
/// A thread that became runnable while another runs must get the CPU within a quantum even
/// if the running one never enters the kernel again (`spawn(child); loop {}`), so the
/// quantum timer is armed unless a timer is already armed. (switch_to arms it too, but only
/// when it switches; an idle CPU needs nothing: the scheduler picks the thread at once.)
pub fn enqueue(tid: ThreadId) {
    program_timer(kernel().queue.enqueue(tid, time::now_ns));
}

/// Programs the one-shot timer as the run queue decided.
fn program_timer(arm: Option<Arm>) {
    if let Some(Arm { deadline, now }) = arm {
        apic::arm_oneshot(deadline.saturating_sub(now));
    }
}

/// Called before an address space is freed: CR3 must not keep pointing at it.
pub fn leave_space(root: u64) {
    if percpu::get().cur_root.get() == root {
        activate_root(space::kernel_root());
    }
}

fn wake_sleepers(now: u64) {
    while let Some(tid) = kernel().queue.take_due(now) {
        make_runnable(tid);
    }
}

/// Takes a thread out of every queue it may wait in (run queue, sleepers, IPC).
pub fn unqueue(tid: ThreadId) {
    crate::selftest::floor_leave(tid);
    crate::ipc::forget_thread(tid);
    if let Some(t) = kernel().threads.get_mut(tid) {
        t.pending_fault = None;
    }
    crate::mutex::forget_thread(tid);
    kernel().queue.forget(tid);
}

/// Marks a thread dead and drops it from every queue; it is reclaimed on the idle stack.
pub fn kill_thread(tid: ThreadId) {
    unqueue(tid);
    let k = kernel();
    if let Some(t) = k.threads.get_mut(tid) {
        if t.state != ThreadState::Dead {
            t.state = ThreadState::Dead;
            k.dead.push(tid);
        }
    }
}

/// Reclaims dead threads (never the one whose stack we could be on: we are on the idle stack).
fn reap_dead_threads() {
    let k = kernel();
    while let Some(id) = k.dead.pop() {
        if k.queue.current() == Some(id) {
            k.queue.set_current(None);
        }
        if let Some(t) = k.threads.get_mut(id) {
            // A register block or FPU area about to be freed must not stay current.
            let pc = percpu::get();
            if pc.cur_regs.get() == &mut *t.regs as *mut UserRegs as u64 {
                pc.cur_regs.set(0);
                pc.cur_fpu.set(0);
            }
        }
        k.threads.remove(id);
    }
}

/// The scheduler proper, on the idle stack: picks the next runnable thread and returns to
/// user mode in it, idling (HLT with interrupts on) while there is none.
#[no_mangle]
extern "C" fn schedule_on_idle_stack() -> ! {
    sync_current_from_percpu();
    crate::selftest::floor_end_active();
    reap_dead_threads();
    loop {
        // Reading the clock only when someone sleeps keeps the yield path short.
        let k = kernel();
        let now = if !k.queue.has_sleepers() {
            0
        } else {
            time::now_ns()
        };
        wake_sleepers(now);
        // The current thread keeps the CPU if it is still runnable and was not preempted.
        let next = match k.queue.current() {
            Some(c)
                if k.threads
                    .get(c)
                    .is_some_and(|t| t.state == ThreadState::Runnable) =>
            {
                Some(c)
            }
            _ => k.queue.pop_ready(),
        };
        if let Some(tid) = next {
            switch_to(tid, now);
        }
        k.queue.set_current(None);
        if let Some(d) = k.queue.earliest_sleeper() {
            program_timer(k.queue.ensure_timer(d, time::now_ns()));
        }
        platform::idle();
    }
}

/// The floor benchmark switches threads without the scheduler (entry.S floor_switch): adopt
/// PERCPU's view, keeping each thread either current or queued, never both.
pub fn sync_current_from_percpu() {
    let k = kernel();
    let real = Id::from_u64(percpu::get().cur_thread.get());
    let threads = &k.threads;
    k.queue.adopt_current(real, |old| {
        threads
            .get(old)
            .is_some_and(|t| t.state == ThreadState::Runnable)
    });
}

/// Puts the current thread at the back of the run queue and schedules.
pub fn yield_current() -> ! {
    sync_current_from_percpu();
    let k = kernel();
    if let Some(c) = k.queue.take_current() {
        if k.threads
            .get(c)
            .is_some_and(|t| t.state == ThreadState::Runnable)
        {
            k.queue.push_ready(c);
        }
    }
    // SAFETY: entry.S's schedule switches stacks and never returns.
    unsafe { schedule() }
}

/// Blocks the current thread in `state` and schedules another.
pub fn block_current(state: ThreadState) -> ! {
    sync_current_from_percpu();
    let k = kernel();
    if let Some(c) = k.queue.current() {
        crate::selftest::floor_leave(c);
        if let Some(t) = k.threads.get_mut(c) {
            t.state = state;
            if let ThreadState::Sleeping(d) = state {
                k.queue.sleep(c, d);
            }
        }
    }
    // SAFETY: as above.
    unsafe { schedule() }
}

fn switch_to(tid: ThreadId, now: u64) -> ! {
    crate::selftest::floor_resumed(tid);
    let k = kernel();
    let Some(t) = k.threads.get_mut(tid) else {
        panic!("scheduled a missing thread");
    };
    let regs: *mut UserRegs = &mut *t.regs;
    let fpu = t.fpu_ptr();
    let kstack = t.kstack.top();
    let Some(p) = k.processes.get(t.process) else {
        panic!("thread without a process");
    };
    let Some(space) = p.space.as_ref() else {
        panic!("running thread of an exited process");
    };
    let root = space.root;
    let slot = space.return_slot();
    activate_root(root);
    // SAFETY: single CPU; the thread's registers and stack live until it is reaped, which
    // only happens on the idle stack after it stopped running.
    unsafe {
        let pc = percpu::get();
        user::switch_segment_bases(pc.cur_regs.get() as *mut UserRegs, &*regs);
        crate::arch::fpu::switch(pc.cur_fpu.get(), fpu);
        pc.cur_regs.set(regs as u64);
        pc.cur_fpu.set(fpu);
        pc.kstack_top.set(kstack);
        pc.cur_thread.set(tid.to_u64());
    }
    // Preemption needs a timer if another thread waits; a sleeper's deadline always gets
    // one (whichever is earlier, so a quantum never delays a wake-up). `now` 0: not read.
    let arm = k
        .queue
        .switched_to(tid, || if now == 0 { time::now_ns() } else { now });
    program_timer(arm);
    user::return_to_user(slot)
}

/// Returns to the current thread after a kernel call or an event that did not switch.
pub fn resume_current() -> ! {
    let k = kernel();
    let Some(cur) = current() else {
        unsafe { schedule() }
    };
    // A call may have ended the caller (destroying an ancestor space, say): then schedule.
    let slot = k
        .threads
        .get(cur)
        .filter(|t| t.state == ThreadState::Runnable)
        .and_then(|t| k.processes.get(t.process))
        .and_then(|p| p.space.as_ref())
        .map(|s| s.return_slot());
    match slot {
        Some(slot) => user::return_to_user(slot),
        // SAFETY: as above.
        None => unsafe { schedule() },
    }
}

/// The timer interrupt: wakes sleepers and, if another thread is waiting and the interrupted
/// one ran in user mode, preempts it.
pub fn timer_interrupt(from_user: bool) {
    apic::eoi();
    let k = kernel();
    k.stats.timer_irqs += 1;
    k.queue.timer_fired();
    let now = time::now_ns();
    wake_sleepers(now);
    // Preemption holds for the floor pair too (the scheduler then dissolves it), but the
    // pair's other thread, queued while its partner runs, is no reason to preempt.
    sync_current_from_percpu();
    let others_wait = kernel()
        .queue
        .ready()
        .any(|t| !crate::selftest::in_active_floor_pair(t));
    if from_user && others_wait {
        kernel().stats.preemptions += 1;
        yield_current();
    }
    program_timer(kernel().queue.rearm_after_timer(now));
}

/// The process (space) of the running thread.
pub fn current_pid() -> Result<Id, fluke_abi::syscall::Error> {
    let tid = current().ok_or(fluke_abi::syscall::Error::InvalidArgument)?;
    kernel()
        .threads
        .get(tid)
        .map(|t| t.process)
        .ok_or(fluke_abi::syscall::Error::InvalidArgument)
}

/// The address space (with its capability table and budget) of the running thread.
pub fn current_space() -> Result<&'static mut crate::space::Space, fluke_abi::syscall::Error> {
    let pid = current_pid()?;
    kernel()
        .processes
        .get_mut(pid)
        .and_then(|p| p.space.as_mut())
        .ok_or(fluke_abi::syscall::Error::InvalidArgument)
}
