//! What every object shares: the call result, creation accounting, the caller's names
//! for objects, waking a destroyed object's waiters.

use crate::kernel::sched::{self, Next};
use crate::kernel::thread::ThreadId;
use crate::kernel::{owner_cap, Caller, Kernel, ObjRef};
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::Error;
use fluke_kcore::slab::Id;

/// What a call did, for the dispatcher.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done: the value goes to the caller's RAX and the caller continues.
    Value(u64),
    /// The caller's registers already hold what it sees when it runs again (it blocked with
    /// its call in restart form, or the call was completed on its behalf): run `Next`.
    Then(Next),
}

pub type CallResult = Result<Reply, Error>;

/// A plain value result.
pub fn value(r: Result<u64, Error>) -> CallResult {
    r.map(Reply::Value)
}

/// Frames a new object is charged to its creator's budget: a thread carries a 16 KiB kernel
/// stack; every other object a frame, a deliberate over-estimate of its heap use that bounds
/// how many objects a space can make by the memory its parent gave it.
fn frames_for(object: ObjRef) -> u64 {
    match object {
        // Kernel stack (4), registers, and the FPU area (a whole frame with AVX-512).
        ObjRef::Thread(_) => 6,
        _ => 1,
    }
}

/// The cheap half of [`register_new`], for a call to check before it plans anything:
/// whether the caller's budget and capability table have room for a new object of this
/// kind (the same errors).
pub fn check_room(k: &mut Kernel, c: Caller, object: ObjRef) -> Result<(), Error> {
    let frames = frames_for(object);
    let space = k.caller_space(c)?;
    if space.budget.available() < frames {
        return Err(Error::NoMemory);
    }
    if space.caps.free() == 0 {
        return Err(Error::Exhausted);
    }
    Ok(())
}

/// Accounts a newly created object to the calling space (its creator) and gives the caller
/// a capability with every right. On error the caller removes the object again.
pub fn register_new(k: &mut Kernel, c: Caller, object: ObjRef) -> Result<u64, Error> {
    let frames = frames_for(object);
    let space = k.caller_space(c)?;
    space.budget.charge(frames).map_err(|_| Error::NoMemory)?;
    match space.caps.insert(owner_cap(object)) {
        Ok(name) => {
            k.creators.insert(object, c.pid);
            Ok(u64::from(name))
        }
        Err(e) => {
            space.budget.release(frames);
            Err(e.into())
        }
    }
}

/// The object is gone: its creator gets its frames back.
pub fn unregister(k: &mut Kernel, object: ObjRef) {
    if let Some(pid) = k.creators.remove(&object) {
        if let Some(space) = k.space(pid) {
            space.budget.release(frames_for(object));
        }
    }
}

/// Objects a space created (they die with it).
pub fn created_by(k: &Kernel, pid: Id) -> alloc::vec::Vec<ObjRef> {
    k.creators
        .iter()
        .filter(|(_, &p)| p == pid)
        .map(|(&o, _)| o)
        .collect()
}

/// The caller's name for an object, or NO_CAP: objects a state refers to are written as the
/// caller's own capability names, so a saved state stays meaningful after the caller
/// rebuilds them.
pub fn name_of(k: &Kernel, c: Caller, object: ObjRef) -> u64 {
    k.space_ref(c.pid)
        .and_then(|s| {
            s.caps
                .iter()
                .find(|(_, cap)| cap.object == object)
                .map(|(n, _)| u64::from(n))
        })
        .unwrap_or(NO_CAP)
}

/// Wakes every thread in `waiters`: each re-executes its call (which fails if the object
/// it waited on is gone).
pub fn wake_all(k: &mut Kernel, waiters: impl Iterator<Item = ThreadId>) {
    for t in waiters {
        sched::make_runnable(k, t);
    }
}
