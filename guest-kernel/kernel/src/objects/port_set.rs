//! Port sets: where a server waits for the messages of all its ports. The queues are
//! `fluke_kcore::ipc::PortSet` (host-tested); messages are `ipc`.

use super::object::{register_new, value, wake_all, CallResult};
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::ipc::PortSet;
use fluke_kcore::slab::Id;

/// `port_set_create()`.
pub fn create(k: &mut Kernel, c: Caller) -> CallResult {
    let id = k
        .port_sets
        .insert(PortSet::default())
        .ok_or(Error::Exhausted)?;
    value(register_new(k, c, ObjRef::PortSet(id)).inspect_err(|_| {
        k.port_sets.remove(id);
    }))
}

pub fn state(k: &Kernel, s: Id) -> Result<[u64; WORDS], Error> {
    k.port_sets.get(s).ok_or(Error::BadCap)?;
    Ok([objstate::PORT_SET, 0, 0, 0, 0, 0])
}

/// A port set has no settable state: only its type word is checked.
pub fn set_state(w: &[u64; WORDS]) -> Result<(), Error> {
    if w[0] != objstate::PORT_SET {
        return Err(Error::InvalidArgument);
    }
    Ok(())
}

/// Every thread waiting on the set or queued to it re-executes its call (which now fails:
/// the set is gone).
pub fn destroy(k: &mut Kernel, s: Id) -> Result<(), Error> {
    let set = k.port_sets.remove(s).ok_or(Error::BadCap)?;
    wake_all(k, set.members());
    Ok(())
}
