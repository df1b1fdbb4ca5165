//! Capability calls on the caller's own table: drop one, copy one with fewer rights.

use super::object::{CallResult, Reply};
use crate::kernel::{Caller, Kernel, ObjCap};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;

/// `cap_drop(name)`.
pub fn drop_cap(k: &mut Kernel, c: Caller, name: u64) -> CallResult {
    k.caller_caps(c)?.remove(name)?;
    Ok(Reply::Value(0))
}

/// `cap_copy(name, rights)`: a second name for the object with the rights of both.
pub fn copy(k: &mut Kernel, c: Caller, name: u64, rights: u64) -> CallResult {
    let caps = k.caller_caps(c)?;
    let rights = Rights::from_bits(rights).ok_or(Error::InvalidArgument)?;
    let cap = caps.check(name, Rights::GRANT)?;
    let copy = ObjCap {
        object: cap.object,
        rights: cap.rights.intersect(rights),
    };
    Ok(Reply::Value(u64::from(caps.insert(copy)?)))
}
