//! The Thread object's calls: create, stop, resume, get and set state, destroy. With these a
//! user-level parent can do to a child thread what the kernel does: read its entire state,
//! destroy it, re-create it and let it continue, and the child cannot tell.

use crate::arch::user::UserRegs;
use crate::object::{owner_cap, ObjRef};
use crate::process::Pid;
use crate::sched::{self, kernel};
use crate::thread::{KernelStack, Thread, ThreadId, ThreadState};
use alloc::boxed::Box;
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;

fn thread_cap(name: u64, rights: Rights) -> Result<ThreadId, Error> {
    match sched::current_space()?.caps.check(name, rights)?.object {
        ObjRef::Thread(t)
            if kernel()
                .threads
                .get(t)
                .is_some_and(|t| t.state != ThreadState::Dead) =>
        {
            Ok(t)
        }
        ObjRef::Thread(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

fn space_cap(name: u64, rights: Rights) -> Result<Pid, Error> {
    match sched::current_space()?.caps.check(name, rights)?.object {
        ObjRef::Space(p) if kernel().processes.get(p).is_some_and(|p| p.space.is_some()) => Ok(p),
        ObjRef::Space(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

/// Inserts a new thread of `pid` with `regs`, in `state`.
pub fn new_thread(pid: Pid, regs: UserRegs, state: ThreadState) -> Result<ThreadId, Error> {
    let k = kernel();
    let kstack = KernelStack::new().ok_or(Error::NoMemory)?;
    let tid = k
        .threads
        .insert(Thread {
            regs: Box::new(regs),
            kstack,
            state,
            process: pid,
            reply_to: None,
            keeper: None,
            pending_fault: None,
            fpu: crate::arch::fpu::FpuArea::clean(),
        })
        .ok_or(Error::Exhausted)?;
    if let Some(p) = k.processes.get_mut(pid) {
        p.threads.push(tid);
    }
    if state == ThreadState::Runnable {
        sched::enqueue(tid);
    }
    Ok(tid)
}

/// A capability to a kernel object, in the caller's table.
pub fn grant_to_caller(object: ObjRef) -> Result<u64, Error> {
    Ok(u64::from(
        sched::current_space()?.caps.insert(owner_cap(object))?,
    ))
}

pub fn create(space_name: u64) -> Result<u64, Error> {
    let pid = match space_name {
        fluke_abi::syscall::SELF_SPACE => sched::current_pid()?,
        name => space_cap(name, Rights::WRITE)?,
    };
    let tid = new_thread(pid, UserRegs::default(), ThreadState::Stopped)?;
    crate::object::register_new(ObjRef::Thread(tid)).inspect_err(|_| {
        kernel().threads.remove(tid);
    })
}

pub fn stop(name: u64) -> Result<u64, Error> {
    let tid = thread_cap(name, Rights::WRITE)?;
    if sched::current() == Some(tid) {
        return Err(Error::InvalidArgument); // a thread cannot stop itself
    }
    let k = kernel();
    let Some(t) = k.threads.get_mut(tid) else {
        return Err(Error::BadCap);
    };
    match t.state {
        ThreadState::Stopped => return Ok(0),
        ThreadState::Runnable => {}
        // Blocked in a call: its registers already re-execute the call (RIP on `syscall`),
        // except a client whose reply is pending, which re-sends: IPC calls are idempotent.
        _ => {}
    }
    t.state = ThreadState::Stopped;
    sched::unqueue(tid);
    Ok(0)
}

pub fn resume(name: u64) -> Result<u64, Error> {
    let tid = thread_cap(name, Rights::WRITE)?;
    let k = kernel();
    let t = k.threads.get_mut(tid).ok_or(Error::BadCap)?;
    if t.state == ThreadState::Stopped {
        t.state = ThreadState::Runnable;
        sched::enqueue(tid);
    }
    Ok(0)
}

fn stopped(tid: ThreadId) -> Result<&'static mut Thread, Error> {
    match kernel().threads.get_mut(tid) {
        Some(t) if t.state == ThreadState::Stopped => Ok(t),
        Some(_) => Err(Error::InvalidArgument),
        None => Err(Error::BadCap),
    }
}

pub fn get_state(name: u64, buf: u64, part: u64) -> Result<u64, Error> {
    let tid = thread_cap(name, Rights::READ)?;
    match part {
        fluke_abi::syscall::STATE_REGS => {
            let regs = *stopped(tid)?.regs;
            sched::current_space()?.copy_out(buf, as_bytes(&regs))?;
        }
        // A stopped thread is not running, so its registers were saved at the switch.
        fluke_abi::syscall::STATE_FPU => {
            let image = stopped(tid)?.fpu.export_legacy();
            sched::current_space()?.copy_out(buf, &image)?;
        }
        fluke_abi::syscall::STATE_XSTATE => {
            // On the kernel stack, not the heap: a call must not fail on (or be able to
            // exhaust) memory no budget is charged for.
            let mut image = [0u8; fluke_abi::syscall::XSTATE_MAX_BYTES];
            let n = stopped(tid)?.fpu.export(&mut image);
            sched::current_space()?.copy_out(buf, &image[..n])?;
            return Ok(n as u64);
        }
        _ => return Err(Error::InvalidArgument),
    }
    Ok(0)
}

pub fn set_state(name: u64, buf: u64, part: u64) -> Result<u64, Error> {
    let tid = thread_cap(name, Rights::WRITE)?;
    stopped(tid)?;
    match part {
        fluke_abi::syscall::STATE_REGS => {
            let mut regs = UserRegs::default();
            sched::current_space()?.copy_in(buf, as_bytes_mut(&mut regs))?;
            crate::arch::user::sanitize_regs(&mut regs)?;
            *stopped(tid)?.regs = regs;
        }
        fluke_abi::syscall::STATE_FPU => {
            let mut image = [0u8; fluke_abi::syscall::FPU_STATE_BYTES];
            sched::current_space()?.copy_in(buf, &mut image)?;
            stopped(tid)?.fpu.import_legacy(&image);
        }
        fluke_abi::syscall::STATE_XSTATE => {
            let mut image = [0u8; fluke_abi::syscall::XSTATE_MAX_BYTES];
            let image = &mut image[..crate::arch::fpu::export_bytes()];
            sched::current_space()?.copy_in(buf, image)?;
            stopped(tid)?.fpu.import(image);
        }
        _ => return Err(Error::InvalidArgument),
    }
    Ok(0)
}

pub fn destroy(name: u64) -> Result<u64, Error> {
    let space = sched::current_space()?;
    let cap = space.caps.check(name, Rights::WRITE)?;
    match cap.object {
        ObjRef::Thread(tid) => {
            if sched::current() == Some(tid) {
                return Err(Error::InvalidArgument);
            }
            let pid = kernel().threads.get(tid).ok_or(Error::BadCap)?.process;
            crate::selftest::floor_leave(tid);
            sched::kill_thread(tid);
            crate::object::unregister(ObjRef::Thread(tid));
            if let Some(p) = kernel().processes.get_mut(pid) {
                p.threads.retain(|&t| t != tid);
            }
            sched::current_space()?.caps.remove(name)?;
            Ok(0)
        }
        ObjRef::Space(pid) => {
            crate::space_calls::destroy(pid)?;
            sched::current_space()?.caps.remove(name)?;
            Ok(0)
        }
        other => {
            crate::objects::destroy(other)?;
            sched::current_space()?.caps.remove(name)?;
            Ok(0)
        }
    }
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

pub fn set_keeper(thread_name: u64, port_name: u64) -> Result<u64, Error> {
    let tid = thread_cap(thread_name, Rights::WRITE)?;
    let keeper = match port_name {
        fluke_abi::syscall::ipc::NO_CAP => None,
        name => match sched::current_space()?
            .caps
            .check(name, Rights::USE)?
            .object
        {
            ObjRef::Port(p) => Some(p),
            _ => return Err(Error::WrongType),
        },
    };
    kernel().threads.get_mut(tid).ok_or(Error::BadCap)?.keeper = keeper;
    Ok(0)
}
