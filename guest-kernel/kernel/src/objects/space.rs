//! Spaces and the process tree: spawning a program, creating an empty child space for a
//! user-level parent to fill, giving and taking capabilities, ending a subtree, waiting for
//! a child, reading programs of the image.

use super::object::{created_by, unregister, CallResult, Reply};
use super::thread::{grant, kill, new_thread, space_cap};
use super::usermem;
use crate::arch::paging::UserPerm;
use crate::arch::user::UserRegs;
use crate::kernel::process::{Name, Pid, Process, ProcessState};
use crate::kernel::sched::{self, Next};
use crate::kernel::space::Space;
use crate::kernel::thread::{ThreadId, ThreadState};
use crate::kernel::{Caller, Kernel, ObjCap, ObjRef};
use crate::{image, kprintln, loader};
use alloc::vec::Vec;
use fluke_abi::syscall::layout::{STACK_SIZE, STACK_TOP};
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;

/// Most capabilities a parent can hand a child at spawn.
const MAX_SPAWN_CAPS: u64 = 16;

/// `spawn(name, args, caps, ncaps)`: starts a program of the image as the caller's child,
/// holding exactly the capabilities passed (border control). With SPAWN_WANT_CAPS the
/// caller also gets capabilities to the child's thread (rdx) and space (r10).
pub fn spawn_call(
    k: &mut Kernel,
    c: Caller,
    [name_ptr, name_len, args_ptr, args_len, caps_ptr, ncaps]: [u64; 6],
) -> CallResult {
    let want_caps = ncaps & fluke_abi::syscall::SPAWN_WANT_CAPS != 0;
    let ncaps = ncaps & !fluke_abi::syscall::SPAWN_WANT_CAPS;
    if name_len == 0 || name_len > 32 || args_len > 4096 || ncaps > MAX_SPAWN_CAPS {
        return Err(Error::InvalidArgument);
    }
    let mut names = [0u8; 8 * MAX_SPAWN_CAPS as usize];
    let names = &mut names[..8 * ncaps as usize];
    usermem::copy_in(k, c.pid, caps_ptr, names)?;
    let mut caps = Vec::new();
    for n in names.chunks_exact(8) {
        let name = u64::from_le_bytes(n.try_into().unwrap_or([0xff; 8]));
        caps.push(k.lookup(c, name, Rights::GRANT)?);
    }
    // Room for the two names first, so that once the child exists nothing can fail.
    if want_caps && k.caller_caps(c)?.free() < 2 {
        return Err(Error::Exhausted);
    }
    let mut name = [0u8; 32];
    usermem::copy_in(k, c.pid, name_ptr, &mut name[..name_len as usize])?;
    let name =
        core::str::from_utf8(&name[..name_len as usize]).map_err(|_| Error::InvalidArgument)?;
    let mut args = alloc::vec![0u8; args_len as usize];
    usermem::copy_in(k, c.pid, args_ptr, &mut args)?;
    let pid = spawn(k, name, &args, Some(c.pid), &caps)?;
    if want_caps {
        let main_thread = k
            .processes
            .get(pid)
            .and_then(|p| p.threads.first().copied());
        let thread = main_thread.ok_or(Error::InvalidArgument)?;
        let thread_cap = grant(k, c, ObjRef::Thread(thread))?;
        let space_cap = grant(k, c, ObjRef::Space(pid))?;
        if let Some(r) = k.regs(c.tid) {
            r.rdx = thread_cap;
            r.r10 = space_cap;
        }
    }
    Ok(Reply::Value(pid.to_u64()))
}

/// Starts program `name` of the image with `args` (NUL-separated) as a child of `parent`.
/// `caps` are copied into the child's capability table as names 0, 1, ...: border control,
/// the child can reach nothing else.
pub fn spawn(
    k: &mut Kernel,
    name: &str,
    args: &[u8],
    parent: Option<Pid>,
    caps: &[ObjCap],
) -> Result<Pid, Error> {
    let program = image::program(name).ok_or(Error::NoSuchProgram)?;
    let quota = lend_quota(k, parent, 0)?;
    let result = build_child(k, name, program.data, args, parent, caps, quota);
    if result.is_err() {
        repay_parent(k, parent, quota);
    }
    result
}

/// A new child's budget, lent out of the parent's (init gets what the kernel has); how much
/// is `fluke_kcore::budget::child_quota`.
fn lend_quota(k: &mut Kernel, parent: Option<Pid>, keep: u64) -> Result<u64, Error> {
    let Some(pp) = parent else {
        return Ok(crate::mm::free_frames() * 9 / 10);
    };
    let budget = &mut k.space(pp).ok_or(Error::InvalidArgument)?.budget;
    let quota =
        fluke_kcore::budget::child_quota(budget.available(), keep).ok_or(Error::NoMemory)?;
    budget.lend(quota).map_err(|_| Error::NoMemory)?;
    Ok(quota)
}

fn repay_parent(k: &mut Kernel, parent: Option<Pid>, quota: u64) {
    if let Some(s) = parent.and_then(|pp| k.space(pp)) {
        s.budget.repay(quota);
    }
}

fn insert_process(
    k: &mut Kernel,
    name: &str,
    parent: Option<Pid>,
    space: Space,
) -> Result<Pid, Error> {
    // An offender's children are watched from their start (`dispatch/fault.rs`).
    let offender = parent
        .and_then(|pp| k.processes.get(pp))
        .is_some_and(|p| p.offender);
    let pid = k
        .processes
        .insert(Process {
            name: Name::new(name),
            parent,
            space: Some(space),
            threads: Vec::new(),
            children: Vec::new(),
            state: ProcessState::Alive,
            offender,
            hold: Default::default(),
        })
        .ok_or(Error::Exhausted)?;
    if let Some(p) = parent.and_then(|pp| k.processes.get_mut(pp)) {
        p.children.push(pid);
    }
    Ok(pid)
}

/// Removes a process record and its name from its parent's list of children.
fn forget_child(k: &mut Kernel, pid: Pid) {
    let parent = k.processes.get(pid).and_then(|p| p.parent);
    k.processes.remove(pid);
    if let Some(p) = parent.and_then(|pp| k.processes.get_mut(pp)) {
        p.children.retain(|&c| c != pid);
    }
}

fn build_child(
    k: &mut Kernel,
    name: &str,
    elf: &[u8],
    args: &[u8],
    parent: Option<Pid>,
    caps: &[ObjCap],
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
    let pid = insert_process(k, name, parent, space)?;
    if let Err(e) = new_thread(k, pid, regs, ThreadState::Runnable) {
        forget_child(k, pid);
        return Err(e);
    }
    Ok(pid)
}

/// `space_create(keep, name_ptr, name_len (r10))`: an empty child space (no program, no
/// thread) for the caller to fill with mappings, capabilities and threads itself. Returns
/// the capability, and in `rdx` the child's id for `wait`. The name (at most 32 bytes;
/// none: "space") is what reports call it.
pub fn create(k: &mut Kernel, c: Caller, keep: u64, name_ptr: u64, name_len: u64) -> CallResult {
    let mut name = [0u8; 32];
    let len = usize::try_from(name_len).map_err(|_| Error::InvalidArgument)?;
    if len > name.len() {
        return Err(Error::InvalidArgument);
    }
    if len > 0 {
        usermem::copy_in(k, c.pid, name_ptr, &mut name[..len])?;
    }
    let name = match core::str::from_utf8(&name[..len]) {
        Ok("") => "space",
        Ok(n) => n,
        Err(_) => return Err(Error::InvalidArgument),
    };
    let quota = lend_quota(k, Some(c.pid), keep)?;
    let pid = match Space::new(quota).and_then(|space| insert_process(k, name, Some(c.pid), space))
    {
        Ok(pid) => pid,
        Err(e) => {
            repay_parent(k, Some(c.pid), quota);
            return Err(e);
        }
    };
    let cap = grant(k, c, ObjRef::Space(pid)).inspect_err(|_| destroy_space(k, pid))?;
    if let Some(r) = k.regs(c.tid) {
        r.rdx = pid.to_u64();
    }
    Ok(Reply::Value(cap))
}

/// `cap_give(space, name_there, my_cap, rights)`: puts a copy of one of the caller's
/// capabilities (GRANT needed) into a space it holds with WRITE, at a name of its choice.
pub fn cap_give(
    k: &mut Kernel,
    c: Caller,
    space_name: u64,
    name_there: u64,
    my_cap: u64,
    rights: u64,
) -> CallResult {
    let pid = space_cap(k, c, space_name, Rights::WRITE)?;
    let rights = fluke_kcore::cap::Rights::from_bits(rights).ok_or(Error::InvalidArgument)?;
    let cap = k.lookup(c, my_cap, Rights::GRANT)?;
    let name_there = u32::try_from(name_there).map_err(|_| Error::BadCap)?;
    let copy = ObjCap {
        object: cap.object,
        rights: cap.rights.intersect(rights),
    };
    k.space(pid)
        .ok_or(Error::BadCap)?
        .caps
        .insert_at(name_there, copy)?;
    Ok(Reply::Value(0))
}

/// `cap_take(space, name_there)`: a copy of a capability of a space the caller holds with
/// READ, in the caller's table.
pub fn cap_take(k: &mut Kernel, c: Caller, space_name: u64, name_there: u64) -> CallResult {
    let pid = space_cap(k, c, space_name, Rights::READ)?;
    let cap = k.space(pid).ok_or(Error::BadCap)?.caps.get(name_there)?;
    Ok(Reply::Value(u64::from(k.caller_caps(c)?.insert(cap)?)))
}

/// `program_read(name, offset, buf, len)`: bytes of a program of the image, so a
/// user-level parent can load a child itself.
pub fn program_read(
    k: &mut Kernel,
    c: Caller,
    [name_ptr, name_len, offset, buf, len]: [u64; 5],
) -> CallResult {
    if name_len == 0 || name_len > 32 || len > 1 << 20 {
        return Err(Error::InvalidArgument);
    }
    let mut name = [0u8; 32];
    usermem::copy_in(k, c.pid, name_ptr, &mut name[..name_len as usize])?;
    let name =
        core::str::from_utf8(&name[..name_len as usize]).map_err(|_| Error::InvalidArgument)?;
    let data = crate::image::program(name).ok_or(Error::NoSuchProgram)?.data;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(len as usize).min(data.len());
    usermem::copy_out(k, c.pid, buf, &data[start..end])?;
    Ok(Reply::Value((end - start) as u64))
}

/// A space's state: its budget (what it may hold, holds, may still use or lend).
pub fn state(k: &Kernel, p: Pid) -> Result<[u64; WORDS], Error> {
    let space = k.space_ref(p).ok_or(Error::BadCap)?;
    Ok([
        objstate::SPACE,
        space.budget.quota(),
        space.budget.used(),
        space.budget.available(),
        0,
        0,
    ])
}

/// `destroy` of a space (not the caller's own): its threads, its mappings, its memory and
/// its children.
pub fn destroy(k: &mut Kernel, c: Caller, pid: Pid) -> Result<(), Error> {
    if pid == c.pid {
        return Err(Error::InvalidArgument);
    }
    destroy_space(k, pid);
    Ok(())
}

/// Ends a child space and forgets it (no exit status is kept).
pub fn destroy_space(k: &mut Kernel, pid: Pid) {
    exit(k, pid, fluke_abi::syscall::KILLED_WITH_PARENT);
    forget_child(k, pid);
}

/// `exit(status)`.
pub fn exit_call(k: &mut Kernel, c: Caller, status: u64) -> CallResult {
    exit(k, c.pid, status as i32);
    Ok(Reply::Then(Next::Schedule))
}

/// `wait(child)`: the child's status once it has exited; until then the caller waits
/// (re-executing the call when woken).
pub fn wait_call(k: &mut Kernel, c: Caller, child: u64) -> CallResult {
    match try_wait(k, c.pid, fluke_kcore::slab::Id::from_u64(child))? {
        Some(status) => Ok(Reply::Value(status as i64 as u64)),
        None => {
            sched::block_in_call(k, c.tid, ThreadState::WaitChild);
            Ok(Reply::Then(Next::Schedule))
        }
    }
}

/// Ends a process: its threads die, its children are ended too (a parent controls its
/// children's lifetime), its memory is freed, and its parent's waiting threads wake up.
/// The first process's status ends the VM.
///
/// Iterative, so a chain of nested spaces of any depth is torn down on a bounded kernel
/// stack: the whole subtree is listed first, then ended deepest first
/// (`fluke_kcore::teardown`), so every space ends after all of its descendants.
pub fn exit(k: &mut Kernel, pid: Pid, status: i32) {
    let order = {
        let processes = &k.processes;
        fluke_kcore::teardown::deepest_first(pid, |p| {
            processes
                .get(p)
                .filter(|p| p.state == ProcessState::Alive)
                .map(|p| p.children.iter().copied())
        })
    };
    for &descendant in &order[..order.len() - 1] {
        exit_one(k, descendant, fluke_abi::syscall::KILLED_WITH_PARENT);
        forget_child(k, descendant);
    }
    exit_one(k, pid, status);
}

/// Ends one process whose descendants have all ended.
fn exit_one(k: &mut Kernel, pid: Pid, status: i32) {
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
        kill(k, tid);
    }
    if k.init == Some(pid) {
        kprintln!("fluke: init exited with status {status}");
        crate::arch::platform::exit(status as u8);
    }
    // Free the address space now; the Exited record stays until the parent waits. Other
    // spaces' mappings of its regions go first, so no frame stays mapped once freed.
    // Objects this space created die with it (threads it made in other spaces included).
    for object in created_by(k, pid) {
        match object {
            ObjRef::Thread(t) => kill(k, t),
            ObjRef::Space(_) => {}
            other => {
                let _ = super::destroy::destroy(k, other);
            }
        }
        unregister(k, object);
    }
    super::region::forget_space(k, pid);
    if let Some(p) = k.processes.get_mut(pid) {
        let quota = p.space.as_ref().map(|s| s.budget.quota()).unwrap_or(0);
        drop(p.space.take());
        repay_parent(k, parent, quota);
    }
    // A hold it still owes for emulated stretches passes to its parent, which is watched
    // from now on: a parent that starts a new offender each time pays for each one.
    let hold = k.processes.get(pid).filter(|p| p.offender).map(|p| p.hold);
    if let (Some(hold), Some(pp)) = (hold, parent) {
        k.mark_offender(pp);
        if let Some(p) = k.processes.get_mut(pp) {
            p.hold.inherit(hold);
        }
    }
    match parent {
        Some(pp) => wake_waiters(k, pp),
        None => {
            k.processes.remove(pid);
        }
    }
}

/// Wakes the threads of `pid` waiting for a child.
fn wake_waiters(k: &mut Kernel, pid: Pid) {
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
        sched::make_runnable(k, t);
    }
}

/// The child's status if it has exited (and forgets it), `None` if it is still running.
pub fn try_wait(k: &mut Kernel, parent: Pid, child: Pid) -> Result<Option<i32>, Error> {
    let is_child = k
        .processes
        .get(parent)
        .is_some_and(|p| p.children.contains(&child));
    if !is_child {
        return Err(Error::NoSuchChild);
    }
    match k.processes.get(child).map(|c| c.state) {
        Some(ProcessState::Exited(status)) => {
            forget_child(k, child);
            Ok(Some(status))
        }
        Some(ProcessState::Alive) => Ok(None),
        None => Err(Error::NoSuchChild),
    }
}

/// Kills the process of thread `tid` after a fault it cannot survive, with a report.
pub fn kill_process_of(
    k: &mut Kernel,
    tid: ThreadId,
    vector: u8,
    reason: core::fmt::Arguments,
    regs: &UserRegs,
) {
    let Some(pid) = k.pid_of(tid) else {
        return;
    };
    let name = k
        .processes
        .get(pid)
        .map(|p| p.name)
        .unwrap_or(Name::new("?"));
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
    exit(k, pid, fluke_abi::syscall::killed_status(vector));
}
