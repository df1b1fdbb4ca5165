//! Threads: create, stop, resume, get and set state, set keeper, destroy. With these a
//! user-level parent can do to a child thread what the kernel does: read its entire state,
//! destroy it, re-create it and let it continue, and the child cannot tell.

use super::object::{register_new, unregister, value, CallResult, Reply};
use crate::arch::user::UserRegs;
use crate::kernel::process::Pid;
use crate::kernel::sched;
use crate::kernel::thread::{KernelStack, RegBlock, Thread, ThreadId, ThreadState};
use crate::kernel::{floor, owner_cap, Caller, Kernel, ObjRef};
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;

/// A live thread the caller holds a capability to, with `rights`.
fn thread_cap(k: &mut Kernel, c: Caller, name: u64, rights: Rights) -> Result<ThreadId, Error> {
    match k.lookup(c, name, rights)?.object {
        ObjRef::Thread(t)
            if k.threads
                .get(t)
                .is_some_and(|t| t.state != ThreadState::Dead) =>
        {
            Ok(t)
        }
        ObjRef::Thread(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

/// A live space the caller holds a capability to, with `rights`.
pub fn space_cap(k: &mut Kernel, c: Caller, name: u64, rights: Rights) -> Result<Pid, Error> {
    match k.lookup(c, name, rights)?.object {
        ObjRef::Space(p) if k.space_ref(p).is_some() => Ok(p),
        ObjRef::Space(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

/// Inserts a new thread of `pid` with `regs`, in `state`.
pub fn new_thread(
    k: &mut Kernel,
    pid: Pid,
    regs: UserRegs,
    state: ThreadState,
) -> Result<ThreadId, Error> {
    let kstack = KernelStack::new().ok_or(Error::NoMemory)?;
    let stamped = k.processes.get(pid).is_some_and(|p| p.offender);
    let tid = k
        .threads
        .insert(Thread {
            regs: RegBlock::new(regs),
            kstack,
            state,
            process: pid,
            reply_to: None,
            keeper: None,
            pending_fault: None,
            fpu: crate::arch::fpu::FpuArea::clean(),
            floor_calls: false,
            stamped,
            stretch: Default::default(),
        })
        .ok_or(Error::Exhausted)?;
    if let Some(p) = k.processes.get_mut(pid) {
        p.threads.push(tid);
    }
    if state == ThreadState::Runnable {
        sched::enqueue(k, tid);
    }
    Ok(tid)
}

/// A capability to a kernel object with every right, in the caller's table.
pub fn grant(k: &mut Kernel, c: Caller, object: ObjRef) -> Result<u64, Error> {
    Ok(u64::from(k.caller_caps(c)?.insert(owner_cap(object))?))
}

/// `thread_create(space)`: a stopped thread with zeroed registers.
pub fn create(k: &mut Kernel, c: Caller, space_name: u64) -> CallResult {
    let pid = match space_name {
        fluke_abi::syscall::SELF_SPACE => c.pid,
        name => space_cap(k, c, name, Rights::WRITE)?,
    };
    let tid = new_thread(k, pid, UserRegs::default(), ThreadState::Stopped)?;
    value(register_new(k, c, ObjRef::Thread(tid)).inspect_err(|_| {
        k.threads.remove(tid);
    }))
}

/// `thread_stop(thread)`. A thread blocked in a call already has registers that re-execute
/// it (RIP on `syscall`), except a client whose reply is pending, which re-sends: IPC calls
/// are idempotent.
pub fn stop(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let tid = thread_cap(k, c, name, Rights::WRITE)?;
    if tid == c.tid {
        return Err(Error::InvalidArgument); // a thread cannot stop itself
    }
    let t = k.threads.get_mut(tid).ok_or(Error::BadCap)?;
    if t.state != ThreadState::Stopped {
        t.state = ThreadState::Stopped;
        unqueue(k, tid);
    }
    Ok(Reply::Value(0))
}

/// `thread_resume(thread)`.
pub fn resume(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let tid = thread_cap(k, c, name, Rights::WRITE)?;
    let t = k.threads.get_mut(tid).ok_or(Error::BadCap)?;
    if t.state == ThreadState::Stopped {
        t.state = ThreadState::Runnable;
        sched::enqueue(k, tid);
    }
    Ok(Reply::Value(0))
}

/// A thread whose state may be read or set: it must be stopped (so its registers were
/// saved at the switch and nothing changes them).
fn stopped(k: &mut Kernel, tid: ThreadId) -> Result<&mut Thread, Error> {
    match k.threads.get_mut(tid) {
        Some(t) if t.state == ThreadState::Stopped => Ok(t),
        Some(_) => Err(Error::InvalidArgument),
        None => Err(Error::BadCap),
    }
}

/// `thread_get_state(thread, buf, part)`.
pub fn get_state(k: &mut Kernel, c: Caller, name: u64, buf: u64, part: u64) -> CallResult {
    let tid = thread_cap(k, c, name, Rights::READ)?;
    match part {
        fluke_abi::syscall::STATE_REGS => {
            let regs: UserRegs = *stopped(k, tid)?.regs;
            super::usermem::copy_out(k, c.pid, buf, as_bytes(&regs))?;
        }
        fluke_abi::syscall::STATE_FPU => {
            let image = stopped(k, tid)?.fpu.export_legacy();
            super::usermem::copy_out(k, c.pid, buf, &image)?;
        }
        fluke_abi::syscall::STATE_XSTATE => {
            // On the kernel stack, not the heap: a call must not fail on (or be able to
            // exhaust) memory no budget is charged for.
            let mut image = [0u8; fluke_abi::syscall::XSTATE_MAX_BYTES];
            let n = stopped(k, tid)?.fpu.export(&mut image);
            super::usermem::copy_out(k, c.pid, buf, &image[..n])?;
            return Ok(Reply::Value(n as u64));
        }
        _ => return Err(Error::InvalidArgument),
    }
    Ok(Reply::Value(0))
}

/// `thread_set_state(thread, buf, part)`: everything is read and checked before the thread
/// changes; registers are sanitised as they are written.
pub fn set_state(k: &mut Kernel, c: Caller, name: u64, buf: u64, part: u64) -> CallResult {
    let tid = thread_cap(k, c, name, Rights::WRITE)?;
    stopped(k, tid)?;
    match part {
        fluke_abi::syscall::STATE_REGS => {
            let mut regs = UserRegs::default();
            super::usermem::copy_in(k, c.pid, buf, as_bytes_mut(&mut regs))?;
            crate::arch::user::sanitize_regs(&mut regs)?;
            *stopped(k, tid)?.regs = regs;
        }
        fluke_abi::syscall::STATE_FPU => {
            let mut image = [0u8; fluke_abi::syscall::FPU_STATE_BYTES];
            super::usermem::copy_in(k, c.pid, buf, &mut image)?;
            stopped(k, tid)?.fpu.import_legacy(&image);
        }
        fluke_abi::syscall::STATE_XSTATE => {
            let mut image = [0u8; fluke_abi::syscall::XSTATE_MAX_BYTES];
            let image = &mut image[..crate::arch::fpu::export_bytes()];
            super::usermem::copy_in(k, c.pid, buf, image)?;
            stopped(k, tid)?.fpu.import(image);
        }
        _ => return Err(Error::InvalidArgument),
    }
    Ok(Reply::Value(0))
}

/// `thread_set_keeper(thread, port)`: the port that gets the thread's faults (NO_CAP: none).
pub fn set_keeper(k: &mut Kernel, c: Caller, thread_name: u64, port_name: u64) -> CallResult {
    let tid = thread_cap(k, c, thread_name, Rights::WRITE)?;
    let keeper = match port_name {
        fluke_abi::syscall::ipc::NO_CAP => None,
        name => match k.lookup(c, name, Rights::USE)?.object {
            ObjRef::Port(p) => Some(p),
            _ => return Err(Error::WrongType),
        },
    };
    k.threads.get_mut(tid).ok_or(Error::BadCap)?.keeper = keeper;
    Ok(Reply::Value(0))
}

pub fn object_state(k: &Kernel, t: ThreadId) -> Result<[u64; WORDS], Error> {
    k.threads.get(t).ok_or(Error::BadCap)?;
    Ok([objstate::THREAD, 0, 0, 0, 0, 0])
}

/// `destroy` of a thread (not the caller itself).
pub fn destroy(k: &mut Kernel, c: Caller, tid: ThreadId) -> Result<(), Error> {
    if tid == c.tid {
        return Err(Error::InvalidArgument);
    }
    let pid = k.pid_of(tid).ok_or(Error::BadCap)?;
    kill(k, tid);
    unregister(k, ObjRef::Thread(tid));
    if let Some(p) = k.processes.get_mut(pid) {
        p.threads.retain(|&t| t != tid);
    }
    Ok(())
}

/// Takes a thread out of every queue it may wait in (run queue, sleepers, IPC, mutexes,
/// conditions, the floor pair).
pub fn unqueue(k: &mut Kernel, tid: ThreadId) {
    floor::leave(tid);
    super::ipc::forget_thread(k, tid);
    if let Some(t) = k.threads.get_mut(tid) {
        t.pending_fault = None;
    }
    super::mutex::forget_thread(k, tid);
    super::condition::forget_thread(k, tid);
    k.queue.forget(tid);
}

/// Ends a thread: out of every queue, then dead (reclaimed on the idle stack).
pub fn kill(k: &mut Kernel, tid: ThreadId) {
    unqueue(k, tid);
    sched::bury(k, tid);
}

fn as_bytes(r: &UserRegs) -> &[u8] {
    // SAFETY: UserRegs is repr(C) and made of u64s only: no padding, any bytes valid.
    unsafe {
        core::slice::from_raw_parts(
            r as *const UserRegs as *const u8,
            core::mem::size_of::<UserRegs>(),
        )
    }
}

fn as_bytes_mut(r: &mut UserRegs) -> &mut [u8] {
    // SAFETY: as above.
    unsafe {
        core::slice::from_raw_parts_mut(
            r as *mut UserRegs as *mut u8,
            core::mem::size_of::<UserRegs>(),
        )
    }
}
