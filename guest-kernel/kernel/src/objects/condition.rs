//! Conditions. `cond_wait` rewrites itself as it progresses (`cond_rewait` once the mutex
//! is released, `mutex_lock` once signalled), so a thread stopped and re-created at any
//! point carries on correctly. The state machine is `fluke_kcore::sync_objects`.

use super::mutex::{mutex_id, release};
use super::object::{register_new, value, wake_all, CallResult, Reply};
use crate::kernel::sched::{self, Next};
use crate::kernel::thread::{ThreadId, ThreadState};
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
use fluke_kcore::slab::Id;
use fluke_kcore::sync_objects::{self, Condition};

fn cond_id(k: &mut Kernel, c: Caller, name: u64) -> Result<Id, Error> {
    match k.lookup(c, name, Rights::USE)?.object {
        ObjRef::Condition(cv) if k.conditions.get(cv).is_some() => Ok(cv),
        ObjRef::Condition(_) => Err(Error::BadCap),
        _ => Err(Error::WrongType),
    }
}

/// `cond_create()`.
pub fn create(k: &mut Kernel, c: Caller) -> CallResult {
    let id = k
        .conditions
        .insert(Condition::default())
        .ok_or(Error::Exhausted)?;
    value(register_new(k, c, ObjRef::Condition(id)).inspect_err(|_| {
        k.conditions.remove(id);
    }))
}

/// `cond_wait(cond, mutex)`: releases the mutex and waits, as `cond_rewait` from here on.
pub fn wait(k: &mut Kernel, c: Caller, cond_name: u64, mutex_name: u64) -> CallResult {
    let cv = cond_id(k, c, cond_name)?;
    let m = mutex_id(k, c, mutex_name)?;
    release(k, m, c.tid)?;
    if let Some(r) = k.regs(c.tid) {
        sync_objects::rewrite_as_rewait(r);
    }
    rewait_on(k, cv, c.tid)
}

/// `cond_rewait(cond, mutex)`: waits on the condition without touching the mutex (already
/// released).
pub fn rewait(k: &mut Kernel, c: Caller, cond_name: u64, mutex_name: u64) -> CallResult {
    let cv = cond_id(k, c, cond_name)?;
    mutex_id(k, c, mutex_name)?;
    rewait_on(k, cv, c.tid)
}

fn rewait_on(k: &mut Kernel, cv: Id, tid: ThreadId) -> CallResult {
    k.conditions.get_mut(cv).ok_or(Error::BadCap)?.wait(tid);
    sched::block_in_call(k, tid, ThreadState::CondWait(cv));
    Ok(Reply::Then(Next::Schedule))
}

/// Wakes waiters of a condition: each re-executes as `mutex_lock(mutex)`.
fn wake(k: &mut Kernel, c: Caller, name: u64, all: bool) -> CallResult {
    let cv = cond_id(k, c, name)?;
    let mut woken = 0;
    while let Some(w) = k.conditions.get_mut(cv).and_then(|cond| cond.take_one()) {
        if let Some(r) = k.regs(w) {
            sync_objects::rewrite_as_relock(r);
        }
        sched::make_runnable(k, w);
        woken += 1;
        if !all {
            break;
        }
    }
    Ok(Reply::Value(woken))
}

/// `cond_signal(cond)`.
pub fn signal(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    wake(k, c, name, false)
}

/// `cond_broadcast(cond)`.
pub fn broadcast(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    wake(k, c, name, true)
}

pub fn state(k: &Kernel, cv: Id) -> Result<[u64; WORDS], Error> {
    k.conditions.get(cv).ok_or(Error::BadCap)?;
    Ok([objstate::CONDITION, 0, 0, 0, 0, 0])
}

/// A condition has no settable state: only its type word is checked.
pub fn set_state(w: &[u64; WORDS]) -> Result<(), Error> {
    if w[0] != objstate::CONDITION {
        return Err(Error::InvalidArgument);
    }
    Ok(())
}

/// Everyone waiting re-executes its call, which fails: the condition is gone.
pub fn destroy(k: &mut Kernel, cv: Id) -> Result<(), Error> {
    let cond = k.conditions.remove(cv).ok_or(Error::BadCap)?;
    wake_all(k, cond.waiters());
    Ok(())
}

/// Takes a thread out of every condition queue.
pub fn forget_thread(k: &mut Kernel, tid: ThreadId) {
    for id in k.conditions.ids() {
        if let Some(cv) = k.conditions.get_mut(id) {
            cv.forget(tid);
        }
    }
}
