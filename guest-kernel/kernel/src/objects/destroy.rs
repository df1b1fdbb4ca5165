//! Destroying the objects other than threads and spaces (those are `thread` and `space`,
//! which end what they hold too).

use super::object::unregister;
use super::{condition, device_memory, interrupt, mapping, mutex, port, port_set, reference, region};
use crate::kernel::{Kernel, ObjRef};
use fluke_abi::syscall::Error;

/// Destroys a port, port set, mutex, condition, region, mapping or reference, and gives
/// its creator its frames back.
pub fn destroy(k: &mut Kernel, object: ObjRef) -> Result<(), Error> {
    match object {
        ObjRef::Port(p) => {
            port::destroy(k, p)?;
            // Lines bound to it are unbound and stay masked.
            interrupt::port_gone(k, p);
        }
        ObjRef::DeviceMemory(d) => device_memory::destroy(k, d)?,
        ObjRef::Interrupt(i) => interrupt::destroy(k, i)?,
        ObjRef::PortSet(s) => port_set::destroy(k, s)?,
        ObjRef::Mutex(m) => mutex::destroy(k, m)?,
        ObjRef::Condition(cv) => condition::destroy(k, cv)?,
        ObjRef::Region(r) => region::destroy(k, r)?,
        ObjRef::Mapping(m) => mapping::destroy(k, m)?,
        ObjRef::Reference(r) => reference::destroy(k, r)?,
        // The benchmark capability names no object: dropping it is cap_drop.
        ObjRef::Thread(_) | ObjRef::Space(_) | ObjRef::Bench => return Err(Error::WrongType),
    }
    unregister(k, object);
    Ok(())
}
