//! Regions and Mappings: how memory is given across spaces, and how a user-level pager
//! interposes. A Region exports a range of its owner's memory; a Mapping makes a region
//! appear in another space. A page of a mapping is brought in on the first fault: if the
//! owner has the page, the same frame is mapped into the faulting space; if not, the
//! region's keeper gets a fault message and the faulting thread waits until the keeper
//! replies, then re-executes the access.

use crate::arch::paging::{self, UserPerm};
use crate::object::ObjRef;
use crate::process::Pid;
use crate::sched::kernel;
use crate::space::check_user_range;
use fluke_abi::syscall::{fault, ipc::NO_CAP, Error};
use fluke_kcore::cap::Rights;
use fluke_kcore::slab::Id;

const PAGE: u64 = 4096;

pub struct Region {
    pub owner: Pid,
    pub base: u64,
    pub size: u64,
    pub keeper: Option<Id>,
}

pub struct Mapping {
    pub target: Pid,
    pub base: u64,
    pub region: Id,
    pub writable: bool,
    pub executable: bool,
}

/// Removes a mapping and unmaps whatever of it is mapped in its target space.
pub fn remove_mapping(mid: Id) {
    let k = kernel();
    let Some(m) = k.mappings.remove(mid) else {
        return;
    };
    let size = k.regions.get(m.region).map(|r| r.size).unwrap_or(0);
    if let Some(root) = k
        .processes
        .get(m.target)
        .and_then(|p| p.space.as_ref())
        .map(|s| s.root)
    {
        let mut va = m.base;
        while va < m.base + size {
            let _ = paging::unmap_user(root, va);
            va += PAGE;
        }
    }
}

/// Removes a region and every mapping of it.
pub fn remove_region(rid: Id) {
    let k = kernel();
    for mid in k.mappings.ids() {
        if k.mappings.get(mid).is_some_and(|m| m.region == rid) {
            remove_mapping(mid);
        }
    }
    k.regions.remove(rid);
}

/// `mapping_create` flags.
pub const MAP_WRITE: u64 = 1;
pub const MAP_EXEC: u64 = 2;

pub fn region_create(addr: u64, size: u64, keeper_name: u64) -> Result<u64, Error> {
    check_user_range(addr, size)?;
    let keeper = match keeper_name {
        NO_CAP => None,
        name => match crate::sched::current_space()?
            .caps
            .check(name, Rights::USE)?
            .object
        {
            ObjRef::Port(p) => Some(p),
            _ => return Err(Error::WrongType),
        },
    };
    let owner = crate::sched::current_pid()?;
    let id = kernel()
        .regions
        .insert(Region {
            owner,
            base: addr,
            size,
            keeper,
        })
        .ok_or(Error::Exhausted)?;
    crate::object::register_new(ObjRef::Region(id)).inspect_err(|_| {
        kernel().regions.remove(id);
    })
}

pub fn mapping_create(
    space_name: u64,
    region_name: u64,
    addr: u64,
    flags: u64,
) -> Result<u64, Error> {
    if flags & !(MAP_WRITE | MAP_EXEC) != 0 {
        return Err(Error::InvalidArgument);
    }
    let caps = &mut crate::sched::current_space()?.caps;
    let ObjRef::Space(target) = caps.check(space_name, Rights::WRITE)?.object else {
        return Err(Error::WrongType);
    };
    let ObjRef::Region(region) = caps.check(region_name, Rights::USE)?.object else {
        return Err(Error::WrongType);
    };
    let k = kernel();
    let size = k.regions.get(region).ok_or(Error::BadCap)?.size;
    let end = check_user_range(addr, size)?;
    if k.processes
        .get(target)
        .and_then(|p| p.space.as_ref())
        .is_none()
    {
        return Err(Error::BadCap);
    }
    let overlaps = k.mappings.iter().any(|(_, m)| {
        m.target == target
            && k.regions
                .get(m.region)
                .is_some_and(|r| addr < m.base + r.size && m.base < end)
    });
    if overlaps {
        return Err(Error::InvalidArgument);
    }
    let id = k
        .mappings
        .insert(Mapping {
            target,
            base: addr,
            region,
            writable: flags & MAP_WRITE != 0,
            executable: flags & MAP_EXEC != 0,
        })
        .ok_or(Error::Exhausted)?;
    crate::object::register_new(ObjRef::Mapping(id)).inspect_err(|_| {
        kernel().mappings.remove(id);
    })
}

/// What to do about a page fault at `addr` in space `pid`.
pub enum Resolution {
    /// The owner's page is now mapped: resume the thread.
    Mapped,
    /// Ask the region's keeper (a port) with this message.
    Keeper(Id, [u64; 4]),
    /// Not in any mapping (or a real protection violation).
    NotMapped,
}

pub fn resolve_fault(pid: Pid, addr: u64, error_code: u64) -> Resolution {
    let k = kernel();
    let page = addr & !(PAGE - 1);
    let hit = k.mappings.iter().find_map(|(_, m)| {
        let r = k.regions.get(m.region)?;
        (m.target == pid && (m.base..m.base + r.size).contains(&page)).then_some((
            m.base,
            m.writable,
            m.executable,
            m.region,
        ))
    });
    let Some((base, writable, executable, region_id)) = hit else {
        return Resolution::NotMapped;
    };
    let Some(region) = k.regions.get(region_id) else {
        return Resolution::NotMapped;
    };
    let write = error_code & 2 != 0;
    if (write && !writable) || error_code & 1 != 0 {
        return Resolution::NotMapped; // a protection violation, not a missing page
    }
    let offset = page - base;
    let owner_root = k
        .processes
        .get(region.owner)
        .and_then(|p| p.space.as_ref())
        .map(|s| s.root);
    let Some(owner_root) = owner_root else {
        return Resolution::NotMapped;
    };
    match paging::translate_user(owner_root, region.base + offset) {
        Some((frame, bits)) => {
            let perm = UserPerm {
                write: writable && paging::pte_writable(bits),
                exec: executable,
            };
            // The frame stays the owner's (not OWNED here): the owner's teardown unmaps it
            // from every target first (forget_space).
            let target = k.processes.get_mut(pid).and_then(|p| p.space.as_mut());
            match target.map(|t| t.map_page(page, frame, perm, false)) {
                Some(Ok(())) => Resolution::Mapped,
                _ => Resolution::NotMapped,
            }
        }
        None => match region.keeper {
            Some(port) => Resolution::Keeper(port, [fault::REGION, offset, error_code, addr]),
            None => Resolution::NotMapped,
        },
    }
}

/// A space is going away: unmap its regions from every space that maps them (before its
/// frames are freed), and drop every mapping into it and every region of it.
pub fn forget_space(pid: Pid) {
    let k = kernel();
    for rid in k.regions.ids() {
        if k.regions.get(rid).is_some_and(|r| r.owner == pid) {
            remove_region(rid);
        }
    }
    for mid in k.mappings.ids() {
        if k.mappings.get(mid).is_some_and(|m| m.target == pid) {
            // Its page tables go with the space: only the record.
            k.mappings.remove(mid);
        }
    }
}
