//! State and destruction of the objects other than threads: `obj_get_state`,
//! `obj_set_state`, `destroy`. Objects a state refers to are written as the caller's own
//! capability names, so a saved state stays meaningful after the caller rebuilds them.

use crate::object::ObjRef;
use crate::sched::{self, kernel};
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;

/// The caller's name for an object, or NO_CAP.
fn name_of(object: ObjRef) -> u64 {
    sched::current_space()
        .ok()
        .and_then(|s| {
            s.caps
                .iter()
                .find(|(_, c)| c.object == object)
                .map(|(n, _)| u64::from(n))
        })
        .unwrap_or(NO_CAP)
}

/// The object the caller's `name` refers to, if it is live and of the expected kind.
fn resolve(name: u64) -> Result<ObjRef, Error> {
    Ok(sched::current_space()?
        .caps
        .check(name, Rights::USE)?
        .object)
}

pub fn get_state(name: u64, buf: u64) -> Result<u64, Error> {
    let object = match name {
        // Its own budget: what a space may still use or lend.
        fluke_abi::syscall::SELF_SPACE => ObjRef::Space(sched::current_pid()?),
        name => {
            sched::current_space()?
                .caps
                .check(name, Rights::READ)?
                .object
        }
    };
    let k = kernel();
    let words: [u64; WORDS] = match object {
        ObjRef::Port(p) => {
            let port = k.ports.get(p).ok_or(Error::BadCap)?;
            [
                objstate::PORT,
                port.badge,
                name_of(ObjRef::PortSet(port.set)),
                0,
                0,
                0,
            ]
        }
        ObjRef::PortSet(s) => {
            k.port_sets.get(s).ok_or(Error::BadCap)?;
            [objstate::PORT_SET, 0, 0, 0, 0, 0]
        }
        ObjRef::Mutex(m) => {
            let holder = k.mutexes.get(m).ok_or(Error::BadCap)?.holder();
            let me = sched::current();
            let holder_name = holder.map_or(NO_CAP, |t| {
                if Some(t) == me {
                    objstate::SELF_THREAD
                } else {
                    name_of(ObjRef::Thread(t))
                }
            });
            [
                objstate::MUTEX,
                u64::from(holder.is_some()),
                holder_name,
                0,
                0,
                0,
            ]
        }
        ObjRef::Condition(c) => {
            k.conditions.get(c).ok_or(Error::BadCap)?;
            [objstate::CONDITION, 0, 0, 0, 0, 0]
        }
        ObjRef::Region(r) => {
            let region = k.regions.get(r).ok_or(Error::BadCap)?;
            let keeper = region.keeper.map_or(NO_CAP, |p| name_of(ObjRef::Port(p)));
            [objstate::REGION, region.base, region.size, keeper, 0, 0]
        }
        ObjRef::Mapping(m) => {
            let mapping = k.mappings.get(m).ok_or(Error::BadCap)?;
            let flags = u64::from(mapping.writable) | u64::from(mapping.executable) << 1;
            let target = name_of(ObjRef::Space(mapping.target));
            [
                objstate::MAPPING,
                target,
                mapping.base,
                name_of(ObjRef::Region(mapping.region)),
                flags,
                0,
            ]
        }
        ObjRef::Space(p) => {
            let space = k
                .processes
                .get(p)
                .and_then(|p| p.space.as_ref())
                .ok_or(Error::BadCap)?;
            [
                objstate::SPACE,
                space.budget.quota(),
                space.budget.used(),
                space.budget.available(),
                0,
                0,
            ]
        }
        ObjRef::Thread(t) => {
            k.threads.get(t).ok_or(Error::BadCap)?;
            [objstate::THREAD, 0, 0, 0, 0, 0]
        }
        ObjRef::Reference(r) => {
            let held = k.references.get(r).ok_or(Error::BadCap)?;
            [
                objstate::REFERENCE,
                held.map_or(NO_CAP, |c| name_of(c.object)),
                0,
                0,
                0,
                0,
            ]
        }
    };
    let mut bytes = [0u8; WORDS * 8];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    sched::current_space()?.copy_out(buf, &bytes)?;
    Ok(words[0])
}

pub fn set_state(name: u64, buf: u64) -> Result<u64, Error> {
    let object = sched::current_space()?
        .caps
        .check(name, Rights::WRITE)?
        .object;
    let mut bytes = [0u8; WORDS * 8];
    sched::current_space()?.copy_in(buf, &mut bytes)?;
    let w = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let k = kernel();
    match object {
        ObjRef::Port(p) if w(0) == objstate::PORT => {
            // Moving a port into a set needs what creating one there needs: WRITE on the set.
            let set_cap = sched::current_space()?.caps.check(w(2), Rights::WRITE)?;
            let ObjRef::PortSet(set) = set_cap.object else {
                return Err(Error::WrongType);
            };
            if w(1) > i64::MAX as u64 {
                return Err(Error::InvalidArgument);
            }
            let port = k.ports.get_mut(p).ok_or(Error::BadCap)?;
            port.badge = w(1);
            port.set = set;
        }
        ObjRef::Mutex(m) if w(0) == objstate::MUTEX => {
            let holder = match (w(1), w(2)) {
                (0, _) => None,
                (_, NO_CAP) => return Err(Error::InvalidArgument),
                (_, objstate::SELF_THREAD) => Some(sched::current().ok_or(Error::InvalidArgument)?),
                (_, t) => match resolve(t)? {
                    ObjRef::Thread(t) => Some(t),
                    _ => return Err(Error::WrongType),
                },
            };
            let mutex = k.mutexes.get_mut(m).ok_or(Error::BadCap)?;
            mutex.set_holder(holder);
            if holder.is_none() {
                crate::mutex::release_waiters(mutex.waiters());
            }
        }
        ObjRef::Region(r) if w(0) == objstate::REGION => {
            // Base and size are fixed at creation; the keeper can change.
            let keeper = match w(3) {
                NO_CAP => None,
                name => match resolve(name)? {
                    ObjRef::Port(p) => Some(p),
                    _ => return Err(Error::WrongType),
                },
            };
            k.regions.get_mut(r).ok_or(Error::BadCap)?.keeper = keeper;
        }
        ObjRef::Reference(r) if w(0) == objstate::REFERENCE => {
            let held = match w(1) {
                NO_CAP => None,
                name => Some(sched::current_space()?.caps.check(name, Rights::GRANT)?),
            };
            *k.references.get_mut(r).ok_or(Error::BadCap)? = held;
        }
        ObjRef::PortSet(_) if w(0) == objstate::PORT_SET => {}
        ObjRef::Condition(_) if w(0) == objstate::CONDITION => {}
        _ => return Err(Error::InvalidArgument),
    }
    Ok(0)
}

/// `destroy` of a port, port set, mutex, condition, region or mapping. Threads blocked on
/// the object re-execute their call, which then fails with BadCap.
pub fn destroy(object: ObjRef) -> Result<(), Error> {
    destroy_object(object)?;
    crate::object::unregister(object);
    Ok(())
}

fn destroy_object(object: ObjRef) -> Result<(), Error> {
    let k = kernel();
    let gone = |o: Option<()>| o.ok_or(Error::BadCap);
    match object {
        ObjRef::Port(p) => gone(k.ports.remove(p).map(|_| ()))?,
        ObjRef::PortSet(s) => {
            let set = k.port_sets.remove(s).ok_or(Error::BadCap)?;
            crate::ipc::release_set(&set);
        }
        ObjRef::Mutex(m) => {
            crate::mutex::release_waiters(k.mutexes.remove(m).ok_or(Error::BadCap)?.waiters())
        }
        ObjRef::Condition(c) => {
            crate::mutex::release_waiters(k.conditions.remove(c).ok_or(Error::BadCap)?.waiters())
        }
        ObjRef::Region(r) => {
            gone(k.regions.get(r).map(|_| ()))?;
            crate::memory::remove_region(r);
        }
        ObjRef::Mapping(m) => {
            gone(k.mappings.get(m).map(|_| ()))?;
            crate::memory::remove_mapping(m);
        }
        ObjRef::Reference(r) => gone(k.references.remove(r).map(|_| ()))?,
        ObjRef::Thread(_) | ObjRef::Space(_) => return Err(Error::WrongType),
    }
    Ok(())
}

/// `ref_create(cap)`: a Reference holding a copy of one of the caller's capabilities (which
/// must carry GRANT): a capability kept as an object, to be handed around and opened later.
pub fn ref_create(name: u64) -> Result<u64, Error> {
    let cap = sched::current_space()?.caps.check(name, Rights::GRANT)?;
    let id = kernel()
        .references
        .insert(Some(cap))
        .ok_or(Error::Exhausted)?;
    crate::object::register_new(ObjRef::Reference(id)).inspect_err(|_| {
        kernel().references.remove(id);
    })
}

/// `ref_get(reference)`: a copy of the capability it holds, in the caller's table.
pub fn ref_get(name: u64) -> Result<u64, Error> {
    let ObjRef::Reference(r) = sched::current_space()?
        .caps
        .check(name, Rights::USE)?
        .object
    else {
        return Err(Error::WrongType);
    };
    let held = kernel()
        .references
        .get(r)
        .ok_or(Error::BadCap)?
        .ok_or(Error::BadCap)?;
    Ok(u64::from(sched::current_space()?.caps.insert(held)?))
}
