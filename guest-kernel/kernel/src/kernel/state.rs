//! The kernel's state: the object tables, the run queue, and [`with_kernel`], the one way
//! to reach them.

use super::objref::{ObjCap, ObjRef};
use super::process::{Pid, Process};
use super::space::Space;
use super::thread::{Thread, ThreadId};
use crate::sync::KernelCell;
use fluke_abi::syscall::Error;
use fluke_kcore::cap::{CapTable, Rights};
use fluke_kcore::runq::RunQueue;
use fluke_kcore::slab::{Id, Slab};

pub const MAX_THREADS: usize = 1024;
pub const MAX_PROCESSES: usize = 256;
/// Per object type; what a space can actually make is bounded by its budget (a frame each).
pub const MAX_PORTS: usize = 65536;

/// Round-robin time slice: 10 ms keeps the cost of preemption on kvm_pvm (~30 µs per timer
/// interrupt in user mode) at 0.3% of a CPU-bound thread's time.
pub const QUANTUM_NS: u64 = 10_000_000;

pub struct Kernel {
    pub threads: Slab<Thread>,
    pub processes: Slab<Process>,
    pub ports: Slab<fluke_kcore::ipc::Port>,
    pub port_sets: Slab<fluke_kcore::ipc::PortSet<ThreadId>>,
    pub mutexes: Slab<fluke_kcore::sync_objects::Mutex<ThreadId>>,
    pub conditions: Slab<fluke_kcore::sync_objects::Condition<ThreadId>>,
    /// Regions and mappings, with their indexes by owner, target and region.
    pub graph: fluke_kcore::mapping::Graph,
    pub references: Slab<Option<ObjCap>>,
    /// Device-memory windows and interrupt lines, made at boot for the first process.
    pub devmems: Slab<fluke_kcore::devices::DeviceMemory>,
    pub irqs: Slab<fluke_kcore::irq::Line<Id>>,
    /// The interrupt object of each IOAPIC line, if there is one.
    pub irq_of_line: [Option<Id>; crate::arch::ioapic::MAX_LINES as usize],
    /// Which space created each object (its budget pays for it; it dies with it).
    pub creators: alloc::collections::BTreeMap<ObjRef, Id>,
    /// The running thread, the run queue, the sleepers and the timer's deadline: the
    /// decisions are `fluke_kcore::runq` (host-tested), the hardware is programmed in
    /// `sched`.
    pub queue: RunQueue<ThreadId>,
    /// Threads that ended, reclaimed on the idle stack.
    pub dead: alloc::vec::Vec<ThreadId>,
    pub init: Option<Id>,
    /// A page the current kernel call needs that only a keeper can provide (set when a copy
    /// to or from user memory meets one, taken by the dispatcher).
    pub keeper_fault: Option<KeeperFault>,
    /// Counters for the boot report and tests.
    pub stats: Stats,
}

/// A fault the kernel met while copying from or to a space's memory that only a keeper
/// can resolve: the thread whose kernel call it was sends it to the keeper and re-executes
/// the call once the keeper replies.
#[derive(Clone, Copy)]
pub struct KeeperFault {
    pub pid: Pid,
    pub port: Id,
    pub words: [u64; 4],
}

#[derive(Default, Clone, Copy)]
pub struct Stats {
    pub timer_irqs: u64,
    pub preemptions: u64,
    pub user_faults_resolved: u64,
    pub processes_killed: u64,
}

static KERNEL: KernelCell<Kernel> = KernelCell::new(Kernel {
    threads: Slab::new(MAX_THREADS),
    processes: Slab::new(MAX_PROCESSES),
    ports: Slab::new(MAX_PORTS),
    port_sets: Slab::new(MAX_PORTS),
    mutexes: Slab::new(MAX_PORTS),
    conditions: Slab::new(MAX_PORTS),
    graph: fluke_kcore::mapping::Graph::new(MAX_PORTS),
    references: Slab::new(MAX_PORTS),
    devmems: Slab::new(fluke_abi::devices::MAX_DEVICE_WORDS),
    irqs: Slab::new(crate::arch::ioapic::MAX_LINES as usize),
    irq_of_line: [None; crate::arch::ioapic::MAX_LINES as usize],
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

/// Runs one kernel entry's work with the kernel's state. Called once per entry (kernel
/// call, trap, scheduler pass, boot), never from inside another: a nested call panics.
pub fn with_kernel<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    KERNEL.with(f)
}

/// The thread making a kernel call, and its process (space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tid: ThreadId,
    pub pid: Pid,
}

impl Kernel {
    /// The space of process `pid`, if it still has one.
    pub fn space(&mut self, pid: Pid) -> Option<&mut Space> {
        self.processes.get_mut(pid)?.space.as_mut()
    }

    pub fn space_ref(&self, pid: Pid) -> Option<&Space> {
        self.processes.get(pid)?.space.as_ref()
    }

    /// The caller's own space (a call from a thread whose space has gone fails).
    pub fn caller_space(&mut self, c: Caller) -> Result<&mut Space, Error> {
        self.space(c.pid).ok_or(Error::InvalidArgument)
    }

    /// The capability table of the caller's space.
    pub fn caller_caps(&mut self, c: Caller) -> Result<&mut CapTable<ObjRef>, Error> {
        Ok(&mut self.caller_space(c)?.caps)
    }

    /// The object the caller's capability `name` refers to, if it carries `rights`.
    pub fn lookup(&mut self, c: Caller, name: u64, rights: Rights) -> Result<ObjCap, Error> {
        Ok(self.caller_caps(c)?.check(name, rights)?)
    }

    /// The process a thread belongs to.
    pub fn pid_of(&self, tid: ThreadId) -> Option<Pid> {
        self.threads.get(tid).map(|t| t.process)
    }

    /// The space of the process a thread belongs to.
    pub fn thread_space(&mut self, tid: ThreadId) -> Option<&mut Space> {
        let pid = self.pid_of(tid)?;
        self.space(pid)
    }

    /// A thread's saved user registers.
    pub fn regs(&mut self, tid: ThreadId) -> Option<&mut crate::arch::user::UserRegs> {
        self.threads.get_mut(tid).map(|t| &mut *t.regs)
    }

    /// Process `pid` ran user code with a non-canonical stack pointer (or takes on such a
    /// child's debt): from now on its threads' returns to user mode are time-stamped, and
    /// those of the processes it creates (`fluke_kcore::stall`).
    pub fn mark_offender(&mut self, pid: Pid) {
        let Some(p) = self.processes.get_mut(pid) else {
            return;
        };
        if p.offender {
            return;
        }
        p.offender = true;
        for &tid in &p.threads {
            if let Some(t) = self.threads.get_mut(tid) {
                t.stamped = true;
            }
        }
    }
}
