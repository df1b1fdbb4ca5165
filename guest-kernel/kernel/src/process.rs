//! Processes: an address space with its threads, a parent, children and an exit status.
//! (The object-model issue replaces this fixed structure with Spaces, Threads and
//! capabilities that a user-level parent manipulates directly.)

use crate::arch::paging::UserPerm;
use crate::arch::user::UserRegs;
use crate::sched::{self, kernel};
use crate::space::Space;
use crate::thread::{ThreadId, ThreadState};
use crate::{image, kprintln, loader};
use alloc::vec::Vec;
use fluke_abi::syscall::layout::{STACK_SIZE, STACK_TOP};
use fluke_abi::syscall::Error;
use fluke_kcore::slab::Id;

pub type Pid = Id;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    Alive,
    Exited(i32),
}

pub struct Process {
    pub name: heapless_name::Name,
    pub parent: Option<Pid>,
    /// `None` once the process has exited (its memory is freed at exit).
    pub space: Option<Space>,
    pub threads: Vec<ThreadId>,
    pub children: Vec<Pid>,
    pub state: ProcessState,
}

/// A short copy of the program name for reports.
pub mod heapless_name {
    #[derive(Clone, Copy)]
    pub struct Name {
        bytes: [u8; 32],
        len: usize,
    }

    impl Name {
        pub fn new(s: &str) -> Name {
            let mut bytes = [0; 32];
            let len = s.len().min(32);
            bytes[..len].copy_from_slice(&s.as_bytes()[..len]);
            Name { bytes, len }
        }

        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
        }
    }
}

/// Starts program `name` of the image with `args` (NUL-separated) as a child of `parent`.
/// `caps` are copied into the child's capability table as names 0, 1, ...: border control,
/// the child can reach nothing else.
pub fn spawn(
    name: &str,
    args: &[u8],
    parent: Option<Pid>,
    caps: &[crate::object::ObjCap],
) -> Result<Pid, Error> {
    let bundle = image::loaded_bundle().ok_or(Error::NoSuchProgram)?;
    let program = bundle.program(name).ok_or(Error::NoSuchProgram)?;
    let quota = lend_quota(parent, 0)?;
    let result = build_child(name, program.data, args, parent, caps, quota);
    if result.is_err() {
        repay_parent(parent, quota);
    }
    result
}

/// A new child's budget, lent out of the parent's (init gets what the kernel has); how much
/// is `fluke_kcore::budget::child_quota`.
fn lend_quota(parent: Option<Pid>, keep: u64) -> Result<u64, Error> {
    let Some(pp) = parent else {
        return Ok(crate::mm::free_frames() * 9 / 10);
    };
    let budget = kernel()
        .processes
        .get_mut(pp)
        .and_then(|p| p.space.as_mut())
        .map(|s| &mut s.budget)
        .ok_or(Error::InvalidArgument)?;
    let quota = fluke_kcore::budget::child_quota(budget.available(), keep).ok_or(Error::NoMemory)?;
    budget.lend(quota).map_err(|_| Error::NoMemory)?;
    Ok(quota)
}

/// An empty space (no program, no thread) as a child of `parent`: a user-level parent
/// fills it with mappings, capabilities and threads itself.
pub fn create_space(parent: Pid, keep: u64, name: &str) -> Result<Pid, Error> {
    let quota = lend_quota(Some(parent), keep)?;
    let result = Space::new(quota).and_then(|space| insert_process(name, Some(parent), space));
    if result.is_err() {
        repay_parent(Some(parent), quota);
    }
    result
}

/// Ends a child space and forgets it (no exit status is kept).
pub fn destroy_space(pid: Pid) {
    let parent = kernel().processes.get(pid).and_then(|p| p.parent);
    exit(pid, fluke_abi::syscall::KILLED_WITH_PARENT);
    kernel().processes.remove(pid);
    if let Some(p) = parent.and_then(|pp| kernel().processes.get_mut(pp)) {
        p.children.retain(|&c| c != pid);
    }
}

fn insert_process(name: &str, parent: Option<Pid>, space: Space) -> Result<Pid, Error> {
    let k = kernel();
    let pid = k
        .processes
        .insert(Process {
            name: heapless_name::Name::new(name),
            parent,
            space: Some(space),
            threads: Vec::new(),
            children: Vec::new(),
            state: ProcessState::Alive,
        })
        .ok_or(Error::Exhausted)?;
    if let Some(p) = parent.and_then(|pp| k.processes.get_mut(pp)) {
        p.children.push(pid);
    }
    Ok(pid)
}


fn repay_parent(parent: Option<Pid>, quota: u64) {
    if let Some(b) = parent
        .and_then(|pp| kernel().processes.get_mut(pp))
        .and_then(|p| p.space.as_mut())
    {
        b.budget.repay(quota);
    }
}

fn build_child(
    name: &str,
    elf: &[u8],
    args: &[u8],
    parent: Option<Pid>,
    caps: &[crate::object::ObjCap],
    quota: u64,
) -> Result<Pid, Error> {
    let mut space = Space::new(quota)?;
    for (i, c) in caps.iter().enumerate() {
        space.caps.insert_at(i as u32, *c)?;
    }
    let entry = loader::load_elf(&mut space, elf)?;
    // Stack: the top pages eagerly (the arguments go there), the rest demand-zero.
    const EAGER: u64 = 2 * 4096;
    space.map_anon(STACK_TOP - STACK_SIZE, STACK_SIZE - EAGER)?;
    space.map_zeroed(
        STACK_TOP - EAGER,
        EAGER,
        UserPerm {
            write: true,
            exec: false,
        },
    )?;
    let (argc, argv, sp) = loader::push_args(&mut space, STACK_TOP, args)?;

    let regs = UserRegs {
        rip: entry,
        rsp: sp,
        rdi: argc,
        rsi: argv,
        rflags: 0x202,
        // As after a kernel call, so the first return is a plain SYSRETQ.
        rcx: entry,
        r11: 0x202,
        ..UserRegs::default()
    };
    let pid = insert_process(name, parent, space)?;
    if let Err(e) = crate::thread_calls::new_thread(pid, regs, ThreadState::Runnable) {
        kernel().processes.remove(pid);
        if let Some(p) = parent.and_then(|pp| kernel().processes.get_mut(pp)) {
            p.children.retain(|&c| c != pid);
        }
        return Err(e);
    }
    Ok(pid)
}

/// Ends a process: its threads die, its children are ended too (a parent controls its
/// children's lifetime), its memory is freed, and its parent's waiting threads wake up.
/// The first process's status ends the VM.
///
/// Iterative, so a chain of nested spaces of any depth is torn down on a bounded kernel
/// stack: the whole subtree is listed first, then ended deepest first
/// (`fluke_kcore::teardown`), so every space ends after all of its descendants.
pub fn exit(pid: Pid, status: i32) {
    let processes = &kernel().processes;
    let order = fluke_kcore::teardown::deepest_first(pid, |p| {
        processes
            .get(p)
            .filter(|p| p.state == ProcessState::Alive)
            .map(|p| p.children.iter().copied())
    });
    for &descendant in &order[..order.len() - 1] {
        exit_one(descendant, fluke_abi::syscall::KILLED_WITH_PARENT);
        forget_child(descendant);
    }
    exit_one(pid, status);
}

/// Removes an ended child's record and its name from its parent's list.
fn forget_child(pid: Pid) {
    let k = kernel();
    let parent = k.processes.get(pid).and_then(|p| p.parent);
    k.processes.remove(pid);
    if let Some(p) = parent.and_then(|pp| k.processes.get_mut(pp)) {
        p.children.retain(|&c| c != pid);
    }
}

/// Ends one process whose descendants have all ended.
fn exit_one(pid: Pid, status: i32) {
    let k = kernel();
    let Some(p) = k.processes.get_mut(pid) else {
        return;
    };
    if p.state != ProcessState::Alive {
        return;
    }
    p.state = ProcessState::Exited(status);
    let threads = core::mem::take(&mut p.threads);
    let parent = p.parent;
    for tid in threads {
        sched::kill_thread(tid);
    }
    if k.init == Some(pid) {
        kprintln!("fluke: init exited with status {status}");
        crate::arch::platform::exit(status as u8);
    }
    // Free the address space now; the Exited record stays until the parent waits. Other
    // spaces' mappings of its regions go first, so no frame stays mapped once freed.
    // Objects this space created die with it (threads it made in other spaces included).
    for object in crate::object::created_by(pid) {
        match object {
            crate::object::ObjRef::Thread(t) => sched::kill_thread(t),
            crate::object::ObjRef::Space(_) => {}
            other => {
                let _ = crate::objects::destroy(other);
            }
        }
        crate::object::unregister(object);
    }
    crate::memory::forget_space(pid);
    if let Some(p) = kernel().processes.get_mut(pid) {
        let quota = p.space.as_ref().map(|s| s.budget.quota()).unwrap_or(0);
        drop(p.space.take());
        repay_parent(parent, quota);
    }
    match parent {
        Some(pp) => wake_waiters(pp),
        None => {
            kernel().processes.remove(pid);
        }
    }
}

fn wake_waiters(pid: Pid) {
    let k = kernel();
    let Some(p) = k.processes.get(pid) else {
        return;
    };
    let waiting: Vec<ThreadId> = p
        .threads
        .iter()
        .copied()
        .filter(|&t| {
            k.threads
                .get(t)
                .is_some_and(|t| t.state == ThreadState::WaitChild)
        })
        .collect();
    for t in waiting {
        sched::make_runnable(t);
    }
}

/// `wait(child)`: the child's status if it has exited (and forgets it), `None` if it is
/// still running.
pub fn try_wait(parent: Pid, child: Pid) -> Result<Option<i32>, Error> {
    let k = kernel();
    let is_child = k
        .processes
        .get(parent)
        .is_some_and(|p| p.children.contains(&child));
    if !is_child {
        return Err(Error::NoSuchChild);
    }
    match k.processes.get(child).map(|c| c.state) {
        Some(ProcessState::Exited(status)) => {
            k.processes.remove(child);
            if let Some(p) = k.processes.get_mut(parent) {
                p.children.retain(|&c| c != child);
            }
            Ok(Some(status))
        }
        Some(ProcessState::Alive) => Ok(None),
        None => Err(Error::NoSuchChild),
    }
}

/// Kills the process of the current thread after a fault it cannot survive.
pub fn kill_current(vector: u8, reason: core::fmt::Arguments, regs: &UserRegs) {
    let k = kernel();
    let Some(tid) = sched::current() else { return };
    let Some(pid) = k.threads.get(tid).map(|t| t.process) else {
        return;
    };
    let name = k
        .processes
        .get(pid)
        .map(|p| p.name)
        .unwrap_or(heapless_name::Name::new("?"));
    k.stats.processes_killed += 1;
    kprintln!(
        "fluke: process {} ({}) killed: {}",
        pid.index,
        name.as_str(),
        reason
    );
    kprintln!(
        "fluke:   rip {:#018x} rsp {:#018x} rflags {:#x}",
        regs.rip,
        regs.rsp,
        regs.rflags
    );
    crate::arch::trap::print_gprs([
        regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.r8, regs.r9,
        regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ]);
    exit(pid, fluke_abi::syscall::killed_status(vector));
}
