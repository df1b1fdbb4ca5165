//! References: a capability kept as an object, to be handed around and opened later.

use super::object::{name_of, register_new, value, CallResult, Reply};
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
use fluke_kcore::slab::Id;

/// `ref_create(cap)`: a Reference holding a copy of one of the caller's capabilities (which
/// must carry GRANT).
pub fn create(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let cap = k.lookup(c, name, Rights::GRANT)?;
    let id = k.references.insert(Some(cap)).ok_or(Error::Exhausted)?;
    value(register_new(k, c, ObjRef::Reference(id)).inspect_err(|_| {
        k.references.remove(id);
    }))
}

/// `ref_get(reference)`: a copy of the capability it holds, in the caller's table.
pub fn get(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    let ObjRef::Reference(r) = k.lookup(c, name, Rights::USE)?.object else {
        return Err(Error::WrongType);
    };
    let held = k
        .references
        .get(r)
        .ok_or(Error::BadCap)?
        .ok_or(Error::BadCap)?;
    Ok(Reply::Value(u64::from(k.caller_caps(c)?.insert(held)?)))
}

pub fn state(k: &Kernel, c: Caller, r: Id) -> Result<[u64; WORDS], Error> {
    let held = k.references.get(r).ok_or(Error::BadCap)?;
    Ok([
        objstate::REFERENCE,
        held.map_or(NO_CAP, |cap| name_of(k, c, cap.object)),
        0,
        0,
        0,
        0,
    ])
}

pub fn set_state(k: &mut Kernel, c: Caller, r: Id, w: &[u64; WORDS]) -> Result<(), Error> {
    if w[0] != objstate::REFERENCE {
        return Err(Error::InvalidArgument);
    }
    let held = match w[1] {
        NO_CAP => None,
        name => Some(k.lookup(c, name, Rights::GRANT)?),
    };
    *k.references.get_mut(r).ok_or(Error::BadCap)? = held;
    Ok(())
}

pub fn destroy(k: &mut Kernel, r: Id) -> Result<(), Error> {
    k.references.remove(r).map(|_| ()).ok_or(Error::BadCap)
}
