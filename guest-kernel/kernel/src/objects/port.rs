//! Ports: an entry point into a port set, with the badge its receivers see. Messages are
//! `ipc`.

use super::object::{name_of, register_new, value, CallResult};
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
use fluke_kcore::ipc::{Port, MAX_BADGE};
use fluke_kcore::slab::Id;

/// A port-set argument the caller may add ports to (WRITE on the set).
fn writable_set(k: &mut Kernel, c: Caller, name: u64) -> Result<Id, Error> {
    match k.lookup(c, name, Rights::WRITE)?.object {
        ObjRef::PortSet(s) => Ok(s),
        _ => Err(Error::WrongType),
    }
}

/// `port_create(set, badge)`.
pub fn create(k: &mut Kernel, c: Caller, set_name: u64, badge: u64) -> CallResult {
    if badge > MAX_BADGE {
        return Err(Error::InvalidArgument);
    }
    let set = writable_set(k, c, set_name)?;
    let id = k
        .ports
        .insert(Port { set, badge })
        .ok_or(Error::Exhausted)?;
    value(register_new(k, c, ObjRef::Port(id)).inspect_err(|_| {
        k.ports.remove(id);
    }))
}

pub fn state(k: &Kernel, c: Caller, p: Id) -> Result<[u64; WORDS], Error> {
    let port = k.ports.get(p).ok_or(Error::BadCap)?;
    Ok([
        objstate::PORT,
        port.badge,
        name_of(k, c, ObjRef::PortSet(port.set)),
        0,
        0,
        0,
    ])
}

/// Moving a port into a set needs what creating one there needs: WRITE on the set.
pub fn set_state(k: &mut Kernel, c: Caller, p: Id, w: &[u64; WORDS]) -> Result<(), Error> {
    if w[0] != objstate::PORT {
        return Err(Error::InvalidArgument);
    }
    let set = writable_set(k, c, w[2])?;
    if w[1] > MAX_BADGE {
        return Err(Error::InvalidArgument);
    }
    let port = k.ports.get_mut(p).ok_or(Error::BadCap)?;
    *port = Port { set, badge: w[1] };
    Ok(())
}

pub fn destroy(k: &mut Kernel, p: Id) -> Result<(), Error> {
    k.ports.remove(p).map(|_| ()).ok_or(Error::BadCap)
}
