//! The kernel objects and their calls, one module per object type: each has its calls
//! (decode: look everything up and check it, copying in what is needed, changing nothing;
//! then invoke: make the change, which cannot fail), its get/set state and its destroy.
//!
//! Every call takes the kernel state and the [`Caller`] from the dispatcher and returns a
//! [`Reply`]: objects name each other by id only, never switch threads (they change thread
//! states and say what runs next) and hold no borrow of a table across a call that can
//! resolve a fault or reach another object.

pub mod cap;
pub mod condition;
pub mod ipc;
pub mod mapping;
pub mod mutex;
pub mod port;
pub mod port_set;
pub mod reference;
pub mod region;
pub mod space;
pub mod thread;
pub mod usermem;

use crate::kernel::sched::Next;
use crate::kernel::{owner_cap, Caller, Kernel, ObjRef};
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::objstate::WORDS;
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
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

/// `obj_get_state(name, buf)`: the object's state as [`WORDS`] words, in the encoding of
/// `fluke_abi::syscall::objstate`; returns its type word.
pub fn get_state(k: &mut Kernel, c: Caller, name: u64, buf: u64) -> CallResult {
    let object = match name {
        // Its own budget: what a space may still use or lend.
        fluke_abi::syscall::SELF_SPACE => ObjRef::Space(c.pid),
        name => k.lookup(c, name, Rights::READ)?.object,
    };
    let words: [u64; WORDS] = match object {
        ObjRef::Port(p) => port::state(k, c, p)?,
        ObjRef::PortSet(s) => port_set::state(k, s)?,
        ObjRef::Mutex(m) => mutex::state(k, c, m)?,
        ObjRef::Condition(cv) => condition::state(k, cv)?,
        ObjRef::Region(r) => region::state(k, c, r)?,
        ObjRef::Mapping(m) => mapping::state(k, c, m)?,
        ObjRef::Space(p) => space::state(k, p)?,
        ObjRef::Thread(t) => thread::object_state(k, t)?,
        ObjRef::Reference(r) => reference::state(k, c, r)?,
    };
    let bytes = fluke_kcore::objstate::encode(&words);
    usermem::copy_out(k, c.pid, buf, &bytes)?;
    Ok(Reply::Value(words[0]))
}

/// `obj_set_state(name, buf)`: sets what of an object's state can be set (decoded and
/// checked in full before anything changes).
pub fn set_state(k: &mut Kernel, c: Caller, name: u64, buf: u64) -> CallResult {
    let object = k.lookup(c, name, Rights::WRITE)?.object;
    let mut bytes = [0u8; WORDS * 8];
    usermem::copy_in(k, c.pid, buf, &mut bytes)?;
    let w = fluke_kcore::objstate::decode(&bytes);
    match object {
        ObjRef::Port(p) => port::set_state(k, c, p, &w)?,
        ObjRef::Mutex(m) => mutex::set_state(k, c, m, &w)?,
        ObjRef::Region(r) => region::set_state(k, c, r, &w)?,
        ObjRef::Reference(r) => reference::set_state(k, c, r, &w)?,
        ObjRef::PortSet(_) => port_set::set_state(&w)?,
        ObjRef::Condition(_) => condition::set_state(&w)?,
        ObjRef::Thread(_) | ObjRef::Space(_) | ObjRef::Mapping(_) => {
            return Err(Error::InvalidArgument)
        }
    }
    Ok(Reply::Value(0))
}

/// `destroy(name)`: destroys the object and drops the caller's capability. Threads blocked
/// on the object re-execute their call, which then fails with BadCap.
pub fn destroy_call(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let object = k.lookup(c, name, Rights::WRITE)?.object;
    match object {
        ObjRef::Thread(tid) => thread::destroy(k, c, tid)?,
        ObjRef::Space(pid) => space::destroy(k, c, pid)?,
        other => destroy(k, other)?,
    }
    k.caller_caps(c)?.remove(name)?;
    Ok(Reply::Value(0))
}

/// Destroys a port, port set, mutex, condition, region, mapping or reference, and gives
/// its creator its frames back.
pub fn destroy(k: &mut Kernel, object: ObjRef) -> Result<(), Error> {
    match object {
        ObjRef::Port(p) => port::destroy(k, p)?,
        ObjRef::PortSet(s) => port_set::destroy(k, s)?,
        ObjRef::Mutex(m) => mutex::destroy(k, m)?,
        ObjRef::Condition(cv) => condition::destroy(k, cv)?,
        ObjRef::Region(r) => region::destroy(k, r)?,
        ObjRef::Mapping(m) => mapping::destroy(k, m)?,
        ObjRef::Reference(r) => reference::destroy(k, r)?,
        ObjRef::Thread(_) | ObjRef::Space(_) => return Err(Error::WrongType),
    }
    unregister(k, object);
    Ok(())
}

/// Wakes every thread in `waiters`: each re-executes its call (which fails if the object
/// it waited on is gone).
pub fn wake_all(k: &mut Kernel, waiters: impl Iterator<Item = crate::kernel::thread::ThreadId>) {
    for t in waiters {
        crate::kernel::sched::make_runnable(k, t);
    }
}
