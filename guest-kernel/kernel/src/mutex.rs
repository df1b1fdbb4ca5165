//! Mutex and Condition objects. Waits are restartable like every blocking call: a waiting
//! thread's registers hold the call to re-execute, and `cond_wait` rewrites itself as it
//! progresses (`cond_rewait` once the mutex is released, `mutex_lock` once signalled), so a
//! thread stopped and re-created at any point carries on correctly.

use crate::object::ObjRef;
use crate::sched::{self, kernel};
use crate::thread::{ThreadId, ThreadState};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
use fluke_kcore::slab::Id;
use fluke_kcore::sync_objects::{self, Lock};

/// The state machines are `fluke_kcore::sync_objects` (host-tested); this file decodes the
/// calls and blocks and wakes the threads they decide about.
pub type Mutex = sync_objects::Mutex<ThreadId>;
pub type Condition = sync_objects::Condition<ThreadId>;

fn me() -> Result<ThreadId, Error> {
    sched::current().ok_or(Error::InvalidArgument)
}

fn lookup(name: u64) -> Result<ObjRef, Error> {
    Ok(sched::current_space()?
        .caps
        .check(name, Rights::USE)?
        .object)
}

fn mutex_id(name: u64) -> Result<Id, Error> {
    match lookup(name)? {
        ObjRef::Mutex(m) if kernel().mutexes.get(m).is_some() => Ok(m),
        ObjRef::Mutex(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

fn cond_id(name: u64) -> Result<Id, Error> {
    match lookup(name)? {
        ObjRef::Condition(c) if kernel().conditions.get(c).is_some() => Ok(c),
        ObjRef::Condition(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

pub fn mutex_create() -> Result<u64, Error> {
    let id = kernel()
        .mutexes
        .insert(Mutex::default())
        .ok_or(Error::Exhausted)?;
    crate::object::register_new(ObjRef::Mutex(id)).inspect_err(|_| {
        kernel().mutexes.remove(id);
    })
}

pub fn cond_create() -> Result<u64, Error> {
    let id = kernel()
        .conditions
        .insert(Condition::default())
        .ok_or(Error::Exhausted)?;
    crate::object::register_new(ObjRef::Condition(id)).inspect_err(|_| {
        kernel().conditions.remove(id);
    })
}

/// Blocks the caller with RIP back on its `syscall` (re-executed when woken or restarted).
fn block(me: ThreadId, state: ThreadState) -> ! {
    if let Some(t) = kernel().threads.get_mut(me) {
        fluke_kcore::user_regs::restart_call(&mut t.regs);
    }
    sched::block_current(state)
}

pub fn lock(name: u64) -> Result<u64, Error> {
    let id = mutex_id(name)?;
    let tid = me()?;
    match kernel().mutexes.get_mut(id).ok_or(Error::BadCap)?.lock(tid)? {
        Lock::Acquired => Ok(0),
        Lock::Wait => block(tid, ThreadState::MutexWait(id)),
    }
}

fn release(id: Id, tid: ThreadId) -> Result<(), Error> {
    let first = kernel()
        .mutexes
        .get_mut(id)
        .ok_or(Error::BadCap)?
        .unlock(tid)?;
    if let Some(w) = first {
        sched::make_runnable(w);
    }
    Ok(())
}

pub fn unlock(name: u64) -> Result<u64, Error> {
    release(mutex_id(name)?, me()?).map(|_| 0)
}

pub fn cond_wait(cond_name: u64, mutex_name: u64) -> Result<u64, Error> {
    let (c, m, tid) = (cond_id(cond_name)?, mutex_id(mutex_name)?, me()?);
    release(m, tid)?;
    if let Some(t) = kernel().threads.get_mut(tid) {
        sync_objects::rewrite_as_rewait(&mut t.regs);
    }
    rewait(c, tid)
}

/// `cond_rewait`: waits on the condition without touching the mutex (already released).
pub fn cond_rewait(cond_name: u64, mutex_name: u64) -> Result<u64, Error> {
    let (c, _m, tid) = (cond_id(cond_name)?, mutex_id(mutex_name)?, me()?);
    rewait(c, tid)
}

fn rewait(c: Id, tid: ThreadId) -> Result<u64, Error> {
    kernel().conditions.get_mut(c).ok_or(Error::BadCap)?.wait(tid);
    block(tid, ThreadState::CondWait(c))
}

/// Wakes waiters of a condition: each re-executes as `mutex_lock(mutex)`.
fn wake(name: u64, all: bool) -> Result<u64, Error> {
    let c = cond_id(name)?;
    let k = kernel();
    let mut woken = 0;
    while let Some(w) = k.conditions.get_mut(c).and_then(|c| c.take_one()) {
        if let Some(t) = k.threads.get_mut(w) {
            sync_objects::rewrite_as_relock(&mut t.regs);
        }
        sched::make_runnable(w);
        woken += 1;
        if !all {
            break;
        }
    }
    Ok(woken)
}

pub fn signal(name: u64) -> Result<u64, Error> {
    wake(name, false)
}

pub fn broadcast(name: u64) -> Result<u64, Error> {
    wake(name, true)
}

/// Takes a thread out of every mutex and condition queue.
pub fn forget_thread(tid: ThreadId) {
    let k = kernel();
    for id in k.mutexes.ids() {
        if let Some(m) = k.mutexes.get_mut(id) {
            m.forget(tid);
        }
    }
    for id in k.conditions.ids() {
        if let Some(c) = k.conditions.get_mut(id) {
            c.forget(tid);
        }
    }
}

/// Everyone waiting on a mutex or condition being destroyed or freed re-executes its call
/// (a lock fails once the mutex is gone).
pub fn release_waiters(waiters: impl Iterator<Item = ThreadId>) {
    for t in waiters {
        sched::make_runnable(t);
    }
}
