//! Kernel objects as capabilities name them. A capability holds an [`ObjRef`]: the object's
//! type and its generation-checked id in that type's table, so a capability to a destroyed
//! object can never reach a new one that reuses the slot.

use fluke_abi::syscall::Error;
use fluke_kcore::cap::{Cap, Rights};
use fluke_kcore::slab::Id;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjRef {
    Port(Id),
    PortSet(Id),
    Thread(Id),
    /// A space (today: a process's address space and capability table), by process id.
    Space(Id),
    Mutex(Id),
    Condition(Id),
    Region(Id),
    Mapping(Id),
    Reference(Id),
}

pub type ObjCap = Cap<ObjRef>;

/// Capability-table size of a space.
pub const CAPS_PER_SPACE: usize = 256;

/// A fresh capability with every right, for the creator of an object.
pub fn owner_cap(object: ObjRef) -> ObjCap {
    Cap {
        object,
        rights: Rights::ALL,
    }
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
pub fn register_new(object: ObjRef) -> Result<u64, Error> {
    let (pid, space) = (crate::sched::current_pid()?, crate::sched::current_space()?);
    let frames = frames_for(object);
    space.budget.charge(frames).map_err(|_| Error::NoMemory)?;
    match space.caps.insert(owner_cap(object)) {
        Ok(name) => {
            crate::sched::kernel().creators.insert(object, pid);
            Ok(u64::from(name))
        }
        Err(e) => {
            space.budget.release(frames);
            Err(e.into())
        }
    }
}

/// The object is gone: its creator gets its frames back.
pub fn unregister(object: ObjRef) {
    let k = crate::sched::kernel();
    if let Some(pid) = k.creators.remove(&object) {
        if let Some(space) = k.processes.get_mut(pid).and_then(|p| p.space.as_mut()) {
            space.budget.release(frames_for(object));
        }
    }
}

/// Objects a space created (they die with it).
pub fn created_by(pid: Id) -> alloc::vec::Vec<ObjRef> {
    crate::sched::kernel()
        .creators
        .iter()
        .filter(|(_, &p)| p == pid)
        .map(|(&o, _)| o)
        .collect()
}
