//! Mappings: a Mapping makes a region of one space appear in another. A page of a mapping
//! is brought in on the first fault: if the owner has the page, the same frame is mapped
//! into the faulting space; if not, the region's keeper gets a fault message and the
//! faulting thread waits until the keeper replies, then re-executes the access. Without a
//! keeper the owner's page is brought in the same way in the owner (its own mappings or
//! demand-zero memory), so memory passed down a stack of nesters resolves through every
//! level. A pager evicts with [`discard`], which also unmaps the page from every space it
//! was mapped into. The graph walks are `fluke_kcore::mapping` (host-tested).

use super::object::{check_room, name_of, register_new, value, CallResult};
use crate::arch::paging::{self, UserPerm};
use crate::kernel::process::Pid;
use crate::kernel::space::check_user_range;
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::{fault, Error, MAP_ALLOWANCE_MASK, MAP_ALLOWANCE_SHIFT};
use fluke_kcore::cap::Rights;
use fluke_kcore::mapping::{Mapping, MAX_CHAIN};
use fluke_kcore::slab::Id;

const PAGE: u64 = 4096;

/// `mapping_create` flags.
pub const MAP_WRITE: u64 = 1;
pub const MAP_EXEC: u64 = 2;

/// `mapping_create(space, region, addr, flags)`. Refused with `TooManyViews`, nothing
/// changed, if a page would then be seen through more than `MAX_VIEWS` chains of mappings
/// (or through itself), or the allowance in `flags` does not fit: `fluke_kcore::mapping`.
/// Decode first (every check, the cheap ones before the views plan), then invoke.
pub fn create(
    k: &mut Kernel,
    c: Caller,
    space_name: u64,
    region_name: u64,
    addr: u64,
    flags: u64,
) -> CallResult {
    if flags & !(MAP_WRITE | MAP_EXEC | MAP_ALLOWANCE_MASK) != 0 {
        return Err(Error::InvalidArgument);
    }
    let allowance = match (flags & MAP_ALLOWANCE_MASK) >> MAP_ALLOWANCE_SHIFT {
        0 => None,
        // At most 0xffff; the plan refuses more than MAX_VIEWS.
        a => Some(u32::try_from(a).map_err(|_| Error::InvalidArgument)?),
    };
    let ObjRef::Space(target) = k.lookup(c, space_name, Rights::WRITE)?.object else {
        return Err(Error::WrongType);
    };
    let ObjRef::Region(region) = k.lookup(c, region_name, Rights::USE)?.object else {
        return Err(Error::WrongType);
    };
    let size = k.graph.region(region).ok_or(Error::BadCap)?.size;
    let end = check_user_range(addr, size)?;
    if k.space_ref(target).is_none() {
        return Err(Error::BadCap);
    }
    if k.graph.overlaps(target, addr, end) {
        return Err(Error::InvalidArgument);
    }
    if k.graph.mappings_full() {
        return Err(Error::Exhausted);
    }
    // Only the kind counts here, not the id.
    check_room(k, c, ObjRef::Mapping(Id::from_u64(0)))?;
    let mapping = Mapping {
        target,
        base: addr,
        region,
        writable: flags & MAP_WRITE != 0,
        executable: flags & MAP_EXEC != 0,
        weight: 0,
        allowance,
    };
    let plan = k
        .graph
        .plan_mapping(&mapping)
        .map_err(|_| Error::TooManyViews)?;
    // Invoke: checked above, so neither step fails (were one to, nothing is left behind).
    let id = k.graph.add_mapping(mapping, plan).ok_or(Error::Exhausted)?;
    let name = register_new(k, c, ObjRef::Mapping(id)).inspect_err(|_| {
        k.graph.remove_mapping(id);
    })?;
    value(Ok(name))
}

pub fn state(k: &Kernel, c: Caller, m: Id) -> Result<[u64; WORDS], Error> {
    let mapping = k.graph.mapping(m).ok_or(Error::BadCap)?;
    let flags = u64::from(mapping.writable)
        | u64::from(mapping.executable) << 1
        | u64::from(mapping.allowance.unwrap_or(0)) << MAP_ALLOWANCE_SHIFT;
    Ok([
        objstate::MAPPING,
        name_of(k, c, ObjRef::Space(mapping.target)),
        mapping.base,
        name_of(k, c, ObjRef::Region(mapping.region)),
        flags,
        0,
    ])
}

pub fn destroy(k: &mut Kernel, m: Id) -> Result<(), Error> {
    k.graph.mapping(m).ok_or(Error::BadCap)?;
    remove(k, m);
    Ok(())
}

/// Removes a mapping and unmaps whatever of it is mapped in its target space, and what the
/// target passed on of those pages through its own regions (their frames are not the
/// target's, and must not outlive the mapping anywhere).
pub fn remove(k: &mut Kernel, mid: Id) {
    let Some((m, _steps)) = k.graph.remove_mapping(mid) else {
        return;
    };
    let size = k.graph.region(m.region).map(|r| r.size).unwrap_or(0);
    if let Some(root) = k.space_ref(m.target).map(|s| s.root) {
        let mut va = m.base;
        while let Some(page) = paging::next_present(root, va, m.base + size) {
            discard_everywhere(k, m.target, page);
            va = page + PAGE;
        }
    }
}

/// Unmaps page `va` of `pid` from every space that sees it through mappings, then from
/// `pid` itself.
pub fn discard_everywhere(k: &mut Kernel, pid: Pid, va: u64) {
    for (space, at) in k.graph.views(pid, va) {
        discard_page(k, space, at);
    }
    discard_page(k, pid, va);
}

/// What to do about a page fault at `addr` in space `pid`.
pub enum Resolution {
    /// The page is now mapped: resume the thread.
    Mapped,
    /// Ask a region's keeper (a port) with this message.
    Keeper(Id, [u64; 4]),
    /// Not in any mapping or demand-zero range (or a real protection violation).
    NotMapped,
}

/// Brings in the page at `addr` of space `pid` after a fault with `error_code`.
pub fn resolve_fault(k: &mut Kernel, pid: Pid, addr: u64, error_code: u64) -> Resolution {
    if error_code & 1 != 0 {
        return Resolution::NotMapped; // a protection violation, not a missing page
    }
    fault_in(k, pid, addr & !(PAGE - 1), error_code & 2 != 0, addr)
}

/// Brings in `page` of `pid` (not present there). The memory a parent provides comes first:
/// a mapping covering the page gives the region owner's frame (brought into the owner
/// first if it has none yet, the same way, unless the region has a keeper: then the keeper
/// is asked). Only where no mapping lies do the space's own demand-zero ranges apply.
/// `addr` is the faulting address a keeper is told.
///
/// Iterative: the chain of owners is walked down to the first that has the page (or can
/// make it, or has a keeper), at most [`MAX_CHAIN`] levels, then mapped back up.
pub fn fault_in(k: &mut Kernel, pid: Pid, page: u64, write: bool, addr: u64) -> Resolution {
    // Each entry: a space and page that the next entry's owner page provides.
    let mut chain: alloc::vec::Vec<(Pid, u64, fluke_kcore::mapping::Through)> =
        alloc::vec::Vec::new();
    let (mut space, mut at) = (pid, page);
    loop {
        if chain.len() as u32 > MAX_CHAIN {
            return Resolution::NotMapped;
        }
        let Some(through) = k.graph.mapping_at(space, at) else {
            // No mapping here: the space's own demand-zero memory, or nothing.
            if !k.space(space).is_some_and(|s| s.handle_fault(at)) {
                return Resolution::NotMapped;
            }
            k.stats.user_faults_resolved += 1;
            break;
        };
        if write && !through.writable {
            return Resolution::NotMapped;
        }
        let Some(owner_root) = k.space_ref(through.owner).map(|s| s.root) else {
            return Resolution::NotMapped;
        };
        chain.push((space, at, through));
        if let Some((_, bits)) = paging::translate_user(owner_root, through.owner_page) {
            if paging::pte_device(bits) {
                // Device memory passes on only as its capability, never through a region.
                return Resolution::NotMapped;
            }
            break;
        }
        if let Some(port) = through.keeper {
            let code = 4 | (u64::from(write) << 1); // user mode, write
            return Resolution::Keeper(port, [fault::REGION, through.offset, code, addr]);
        }
        (space, at) = (through.owner, through.owner_page);
    }
    // Map each level from its owner, the deepest first.
    for &(space, at, through) in chain.iter().rev() {
        let Some(owner_root) = k.space_ref(through.owner).map(|s| s.root) else {
            return Resolution::NotMapped;
        };
        let Some((frame, bits)) = paging::translate_user(owner_root, through.owner_page) else {
            return Resolution::NotMapped;
        };
        let perm = UserPerm {
            write: through.writable && paging::pte_writable(bits),
            exec: through.executable,
        };
        if write && !perm.write {
            return Resolution::NotMapped;
        }
        // The frame stays the owner's (not OWNED here): the owner's teardown unmaps it from
        // every target first (forget_space), and so does `mem_discard`.
        match k.space(space).map(|s| s.map_page(at, frame, perm, false)) {
            Some(Ok(())) => {}
            _ => return Resolution::NotMapped,
        }
    }
    Resolution::Mapped
}

/// Unmaps one page of a space; a frame it owned is freed and returned to its budget.
fn discard_page(k: &mut Kernel, pid: Pid, va: u64) {
    let Some(space) = k.space(pid) else {
        return;
    };
    if let Some((frame, true)) = paging::unmap_user(space.root, va) {
        crate::mm::free_frame(frame);
        space.budget.release(1);
    }
}
