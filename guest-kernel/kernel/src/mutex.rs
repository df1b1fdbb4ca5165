//! Mutex and Condition objects. Waits are restartable like every blocking call: a waiting
//! thread's registers hold the call to re-execute, and `cond_wait` rewrites itself as it
//! progresses (`cond_rewait` once the mutex is released, `mutex_lock` once signalled), so a
//! thread stopped and re-created at any point carries on correctly.

use crate::arch::user::SYSCALL_INSN_LEN;
use crate::object::ObjRef;
use crate::sched::{self, kernel};
use crate::thread::{ThreadId, ThreadState};
use alloc::collections::VecDeque;
use fluke_abi::syscall::{Call, Error};
use fluke_kcore::cap::Rights;
use fluke_kcore::slab::Id;

#[derive(Default)]
pub struct Mutex {
    pub holder: Option<ThreadId>,
    waiters: VecDeque<ThreadId>,
}

#[derive(Default)]
pub struct Condition {
    waiters: VecDeque<ThreadId>,
}

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
        t.regs.rip -= SYSCALL_INSN_LEN;
        t.regs.rcx = t.regs.rip;
    }
    sched::block_current(state)
}

pub fn lock(name: u64) -> Result<u64, Error> {
    let id = mutex_id(name)?;
    let tid = me()?;
    let m = kernel().mutexes.get_mut(id).ok_or(Error::BadCap)?;
    match m.holder {
        None => {
            m.holder = Some(tid);
            Ok(0)
        }
        Some(h) if h == tid => Err(Error::InvalidArgument), // not recursive
        Some(_) => {
            m.waiters.push_back(tid);
            block(tid, ThreadState::MutexWait(id))
        }
    }
}

fn release(id: Id, tid: ThreadId) -> Result<(), Error> {
    let m = kernel().mutexes.get_mut(id).ok_or(Error::BadCap)?;
    if m.holder != Some(tid) {
        return Err(Error::InvalidArgument);
    }
    m.holder = None;
    // The first waiter re-executes its lock and gets the mutex unless another thread is faster.
    if let Some(w) = m.waiters.pop_front() {
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
        t.regs.rax = Call::CondRewait as u64;
    }
    rewait(c, tid)
}

/// `cond_rewait`: waits on the condition without touching the mutex (already released).
pub fn cond_rewait(cond_name: u64, mutex_name: u64) -> Result<u64, Error> {
    let (c, _m, tid) = (cond_id(cond_name)?, mutex_id(mutex_name)?, me()?);
    rewait(c, tid)
}

fn rewait(c: Id, tid: ThreadId) -> Result<u64, Error> {
    kernel()
        .conditions
        .get_mut(c)
        .ok_or(Error::BadCap)?
        .waiters
        .push_back(tid);
    block(tid, ThreadState::CondWait(c))
}

/// Wakes waiters of a condition: each re-executes as `mutex_lock(mutex)`.
fn wake(name: u64, all: bool) -> Result<u64, Error> {
    let c = cond_id(name)?;
    let k = kernel();
    let mut woken = 0;
    while let Some(w) = k.conditions.get_mut(c).and_then(|c| c.waiters.pop_front()) {
        if let Some(t) = k.threads.get_mut(w) {
            t.regs.rax = Call::MutexLock as u64;
            t.regs.rdi = t.regs.rsi; // cond_wait(cond, mutex): the mutex becomes the argument
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
            m.waiters.retain(|&t| t != tid);
        }
    }
    for id in k.conditions.ids() {
        if let Some(c) = k.conditions.get_mut(id) {
            c.waiters.retain(|&t| t != tid);
        }
    }
}

impl Mutex {
    /// Everyone waiting re-executes `mutex_lock` (which fails once the mutex is gone).
    pub fn release_waiters(&self) {
        for &t in &self.waiters {
            sched::make_runnable(t);
        }
    }
}

impl Condition {
    pub fn release_waiters(&self) {
        for &t in &self.waiters {
            sched::make_runnable(t);
        }
    }
}
