//! Mutexes. A wait is restartable like every blocking call: a waiting thread's registers
//! hold the `mutex_lock` to re-execute. The state machine is `fluke_kcore::sync_objects`
//! (host-tested); this file decodes the calls and blocks and wakes the threads it decides
//! about.

use super::object::{name_of, register_new, value, wake_all, CallResult, Reply};
use crate::kernel::sched::{self, Next};
use crate::kernel::thread::{ThreadId, ThreadState};
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
use fluke_kcore::slab::Id;
use fluke_kcore::sync_objects::{Lock, Mutex};

/// A live mutex the caller may use.
pub fn mutex_id(k: &mut Kernel, c: Caller, name: u64) -> Result<Id, Error> {
    match k.lookup(c, name, Rights::USE)?.object {
        ObjRef::Mutex(m) if k.mutexes.get(m).is_some() => Ok(m),
        ObjRef::Mutex(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

/// `mutex_create()`.
pub fn create(k: &mut Kernel, c: Caller) -> CallResult {
    let id = k.mutexes.insert(Mutex::default()).ok_or(Error::Exhausted)?;
    value(register_new(k, c, ObjRef::Mutex(id)).inspect_err(|_| {
        k.mutexes.remove(id);
    }))
}

/// `mutex_lock(mutex)`: taken at once, or the caller waits (re-executing the lock when
/// woken).
pub fn lock(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let id = mutex_id(k, c, name)?;
    match k.mutexes.get_mut(id).ok_or(Error::BadCap)?.lock(c.tid)? {
        Lock::Acquired => Ok(Reply::Value(0)),
        Lock::Wait => {
            sched::block_in_call(k, c.tid, ThreadState::MutexWait(id));
            Ok(Reply::Then(Next::Schedule))
        }
    }
}

/// Releases a mutex `tid` holds; the first waiter, if any, becomes runnable.
pub fn release(k: &mut Kernel, id: Id, tid: ThreadId) -> Result<(), Error> {
    let first = k.mutexes.get_mut(id).ok_or(Error::BadCap)?.unlock(tid)?;
    if let Some(w) = first {
        sched::make_runnable(k, w);
    }
    Ok(())
}

/// `mutex_unlock(mutex)`.
pub fn unlock(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let id = mutex_id(k, c, name)?;
    release(k, id, c.tid)?;
    Ok(Reply::Value(0))
}

pub fn state(k: &Kernel, c: Caller, m: Id) -> Result<[u64; WORDS], Error> {
    let holder = k.mutexes.get(m).ok_or(Error::BadCap)?.holder();
    let holder_name = holder.map_or(NO_CAP, |t| {
        if t == c.tid {
            objstate::SELF_THREAD
        } else {
            name_of(k, c, ObjRef::Thread(t))
        }
    });
    Ok([
        objstate::MUTEX,
        u64::from(holder.is_some()),
        holder_name,
        0,
        0,
        0,
    ])
}

/// Sets who holds the mutex; freeing it wakes every waiter (each re-executes its lock).
pub fn set_state(k: &mut Kernel, c: Caller, m: Id, w: &[u64; WORDS]) -> Result<(), Error> {
    if w[0] != objstate::MUTEX {
        return Err(Error::InvalidArgument);
    }
    let holder = match (w[1], w[2]) {
        (0, _) => None,
        (_, NO_CAP) => return Err(Error::InvalidArgument),
        (_, objstate::SELF_THREAD) => Some(c.tid),
        (_, t) => match k.lookup(c, t, Rights::USE)?.object {
            ObjRef::Thread(t) => Some(t),
            _ => return Err(Error::WrongType),
        },
    };
    let mutex = k.mutexes.get_mut(m).ok_or(Error::BadCap)?;
    mutex.set_holder(holder);
    if holder.is_none() {
        let waiters: alloc::vec::Vec<ThreadId> = mutex.waiters().collect();
        wake_all(k, waiters.into_iter());
    }
    Ok(())
}

/// Everyone waiting re-executes its lock, which fails: the mutex is gone.
pub fn destroy(k: &mut Kernel, m: Id) -> Result<(), Error> {
    let mutex = k.mutexes.remove(m).ok_or(Error::BadCap)?;
    wake_all(k, mutex.waiters());
    Ok(())
}

/// Takes a thread out of every mutex queue.
pub fn forget_thread(k: &mut Kernel, tid: ThreadId) {
    for id in k.mutexes.ids() {
        if let Some(m) = k.mutexes.get_mut(id) {
            m.forget(tid);
        }
    }
}
