//! `obj_get_state`, `obj_set_state` and `destroy` over every object type: each type's
//! module encodes, decodes and destroys its own.

use super::object::{CallResult, Reply};
use super::{
    condition, destroy, device_memory, interrupt, mapping, mutex, port, port_set, reference,
    region, space, thread, usermem,
};
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::objstate::WORDS;
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;

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
        ObjRef::DeviceMemory(d) => device_memory::state(k, d)?,
        ObjRef::Interrupt(i) => interrupt::state(k, c, i)?,
        ObjRef::Bench => [fluke_abi::syscall::objstate::BENCH, 0, 0, 0, 0, 0],
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
        ObjRef::DeviceMemory(d) => device_memory::set_state(k, d, &w)?,
        ObjRef::Interrupt(i) => interrupt::set_state(k, c, i, &w)?,
        ObjRef::Thread(_) | ObjRef::Space(_) | ObjRef::Mapping(_) | ObjRef::Bench => {
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
        other => destroy::destroy(k, other)?,
    }
    k.caller_caps(c)?.remove(name)?;
    Ok(Reply::Value(0))
}
