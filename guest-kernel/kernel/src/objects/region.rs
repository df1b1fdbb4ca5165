//! Regions: a Region exports a range of its owner's memory, to be mapped into other spaces
//! (`mapping`); its keeper, if any, gets the faults on pages the owner does not have.

use super::object::{check_room, name_of, register_new, unregister, value, CallResult};
use crate::kernel::process::Pid;
use crate::kernel::space::check_user_range;
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::ipc::NO_CAP;
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
use fluke_kcore::mapping::Region;
use fluke_kcore::slab::Id;

/// A keeper argument: a port capability of the caller's, or NO_CAP.
fn keeper_port(k: &mut Kernel, c: Caller, name: u64) -> Result<Option<Id>, Error> {
    match name {
        NO_CAP => Ok(None),
        name => match k.lookup(c, name, Rights::USE)?.object {
            ObjRef::Port(p) => Ok(Some(p)),
            _ => Err(Error::WrongType),
        },
    }
}

/// `region_create(addr, size, keeper)`.
pub fn create(k: &mut Kernel, c: Caller, addr: u64, size: u64, keeper_name: u64) -> CallResult {
    check_user_range(addr, size)?;
    let keeper = keeper_port(k, c, keeper_name)?;
    if k.graph.regions_full() {
        return Err(Error::Exhausted);
    }
    // Only the kind counts here, not the id.
    check_room(k, c, ObjRef::Region(Id::from_u64(0)))?;
    let id = k
        .graph
        .add_region(Region {
            owner: c.pid,
            base: addr,
            size,
            keeper,
            views: 0,
        })
        .ok_or(Error::Exhausted)?;
    value(register_new(k, c, ObjRef::Region(id)).inspect_err(|_| {
        k.graph.remove_region(id);
    }))
}

pub fn state(k: &Kernel, c: Caller, r: Id) -> Result<[u64; WORDS], Error> {
    let region = k.graph.region(r).ok_or(Error::BadCap)?;
    let keeper = region
        .keeper
        .map_or(NO_CAP, |p| name_of(k, c, ObjRef::Port(p)));
    Ok([objstate::REGION, region.base, region.size, keeper, 0, 0])
}

/// Base and size are fixed at creation; the keeper can change.
pub fn set_state(k: &mut Kernel, c: Caller, r: Id, w: &[u64; WORDS]) -> Result<(), Error> {
    if w[0] != objstate::REGION {
        return Err(Error::InvalidArgument);
    }
    let keeper = keeper_port(k, c, w[3])?;
    if !k.graph.set_keeper(r, keeper) {
        return Err(Error::BadCap);
    }
    Ok(())
}

pub fn destroy(k: &mut Kernel, r: Id) -> Result<(), Error> {
    k.graph.region(r).ok_or(Error::BadCap)?;
    remove(k, r);
    Ok(())
}

/// Removes a region and every mapping of it (each takes its views with it, so the region
/// goes with none).
pub fn remove(k: &mut Kernel, rid: Id) {
    for mid in k.graph.mappings_of(rid) {
        super::mapping::remove(k, mid);
        // Its creator gets the mapping's charge back.
        unregister(k, ObjRef::Mapping(mid));
    }
    k.graph.remove_region(rid);
}

/// A space is going away: unmap its regions from every space that maps them (before its
/// frames are freed), and drop every mapping into it and every region of it.
pub fn forget_space(k: &mut Kernel, pid: Pid) {
    for rid in k.graph.regions_of(pid) {
        remove(k, rid);
    }
    for mid in k.graph.mappings_into(pid) {
        // Its page tables go with the space: only the record, its views (upstream of it),
        // and the charge, which goes back to the mapping's creator (a parent that mapped
        // into a child).
        k.graph.remove_mapping(mid);
        unregister(k, ObjRef::Mapping(mid));
    }
}
