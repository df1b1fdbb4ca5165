//! Regions and Mappings: how memory is given across spaces, and how a user-level pager
//! interposes. A Region exports a range of its owner's memory; a Mapping makes a region
//! appear in another space. A page of a mapping is brought in on the first fault: if the
//! owner has the page, the same frame is mapped into the faulting space; if not, the
//! region's keeper gets a fault message and the faulting thread waits until the keeper
//! replies, then re-executes the access. Without a keeper the owner's page is brought in
//! the same way in the owner (its own mappings or demand-zero memory), so memory passed
//! down a stack of nesters resolves through every level. A pager evicts with
//! [`discard`], which also unmaps the page from every space it was mapped into.

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

/// Removes a mapping and unmaps whatever of it is mapped in its target space, and what the
/// target passed on of those pages through its own regions (their frames are not the
/// target's, and must not outlive the mapping anywhere).
pub fn remove_mapping(mid: Id) {
    let k = kernel();
    let Some(m) = k.mappings.remove(mid) else {
        return;
    };
    let size = k.regions.get(m.region).map(|r| r.size).unwrap_or(0);
    if let Some(root) = root_of(m.target) {
        let mut va = m.base;
        while let Some(page) = paging::next_present(root, va, m.base + size) {
            for_each_view(m.target, page, 0, &mut |pid, at| discard_page(pid, at));
            discard_page(m.target, page);
            va = page + PAGE;
        }
    }
}

/// Removes a region and every mapping of it.
pub fn remove_region(rid: Id) {
    let k = kernel();
    for mid in k.mappings.ids() {
        if k.mappings.get(mid).is_some_and(|m| m.region == rid) {
            remove_mapping(mid);
            // Its creator gets the mapping's charge back.
            crate::object::unregister(ObjRef::Mapping(mid));
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
    if root_of(target).is_none() {
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
    /// The page is now mapped: resume the thread.
    Mapped,
    /// Ask a region's keeper (a port) with this message.
    Keeper(Id, [u64; 4]),
    /// Not in any mapping or demand-zero range (or a real protection violation).
    NotMapped,
}

/// How far mappings of mappings may chain (a nester's memory mapped into its child, which
/// maps it into its own child, ...). Deep enough for any stack of nesters we run; it also
/// ends a cycle of spaces mapping each other's regions.
const MAX_CHAIN: u32 = 32;

/// Brings in the page at `addr` of space `pid` after a fault with `error_code`. The memory a
/// parent provides comes first: a mapping covering the page gives the region owner's frame
/// (brought into the owner first if it has none yet, the same way, unless the region has a
/// keeper: then the keeper is asked). Only where no mapping lies do the space's own
/// demand-zero ranges apply.
pub fn resolve_fault(pid: Pid, addr: u64, error_code: u64) -> Resolution {
    if error_code & 1 != 0 {
        return Resolution::NotMapped; // a protection violation, not a missing page
    }
    fault_in(pid, addr & !(PAGE - 1), error_code & 2 != 0, addr, 0)
}

fn fault_in(pid: Pid, page: u64, write: bool, addr: u64, depth: u32) -> Resolution {
    if depth > MAX_CHAIN {
        return Resolution::NotMapped;
    }
    if let Some(r) = through_mapping(pid, page, write, addr, depth) {
        return r;
    }
    if space_of(pid).is_some_and(|s| s.handle_fault(page)) {
        kernel().stats.user_faults_resolved += 1;
        return Resolution::Mapped;
    }
    Resolution::NotMapped
}

/// The mapping of space `pid` covering `page`: `(base, writable, executable, region)`.
fn mapping_at(pid: Pid, page: u64) -> Option<(u64, bool, bool, Id)> {
    let k = kernel();
    k.mappings.iter().find_map(|(_, m)| {
        let r = k.regions.get(m.region)?;
        (m.target == pid && (m.base..m.base + r.size).contains(&page)).then_some((
            m.base,
            m.writable,
            m.executable,
            m.region,
        ))
    })
}

/// The space of process `pid`, if it still has one.
fn space_of(pid: Pid) -> Option<&'static mut crate::space::Space> {
    kernel()
        .processes
        .get_mut(pid)
        .and_then(|p| p.space.as_mut())
}

fn root_of(pid: Pid) -> Option<u64> {
    space_of(pid).map(|s| s.root)
}

/// `None` if no mapping of `pid` covers `page`.
fn through_mapping(pid: Pid, page: u64, write: bool, addr: u64, depth: u32) -> Option<Resolution> {
    let (base, writable, executable, region_id) = mapping_at(pid, page)?;
    let region = kernel().regions.get(region_id)?;
    if write && !writable {
        return Some(Resolution::NotMapped);
    }
    let (owner, keeper, offset) = (region.owner, region.keeper, page - base);
    let owner_page = region.base + offset;
    let Some(owner_root) = root_of(owner) else {
        return Some(Resolution::NotMapped);
    };
    if paging::translate_user(owner_root, owner_page).is_none() {
        match keeper {
            Some(port) => {
                let code = 4 | (u64::from(write) << 1); // user mode, write
                return Some(Resolution::Keeper(
                    port,
                    [fault::REGION, offset, code, addr],
                ));
            }
            // The owner's own memory there: bring it into the owner the same way.
            None => match fault_in(owner, owner_page, write, addr, depth + 1) {
                Resolution::Mapped => {}
                other => return Some(other),
            },
        }
    }
    let Some((frame, bits)) = paging::translate_user(owner_root, owner_page) else {
        return Some(Resolution::NotMapped);
    };
    let perm = UserPerm {
        write: writable && paging::pte_writable(bits),
        exec: executable,
    };
    if write && !perm.write {
        return Some(Resolution::NotMapped);
    }
    // The frame stays the owner's (not OWNED here): the owner's teardown unmaps it from
    // every target first (forget_space), and so does `mem_discard`.
    Some(
        match space_of(pid).map(|t| t.map_page(page, frame, perm, false)) {
            Some(Ok(())) => Resolution::Mapped,
            _ => Resolution::NotMapped,
        },
    )
}

/// A fault the kernel met while copying from or to a space's memory that only a keeper
/// can resolve: the thread whose kernel call it was sends it to the keeper and re-executes
/// the call once the keeper replies (`syscall::dispatch`; `ipc` for a queued caller).
#[derive(Clone, Copy)]
pub struct KeeperFault {
    pub pid: Pid,
    pub port: Id,
    pub words: [u64; 4],
}

/// Brings in a page of the space with page-table root `root` for a kernel access (see
/// [`resolve_fault`]). A page only a keeper can provide is recorded in
/// `Kernel::keeper_fault` and reported as `BadAddress`. `None`: no process has this space
/// yet (one being built), so it has no mappings either.
pub fn fault_in_for_kernel(root: u64, page: u64, write: bool) -> Option<Result<(), Error>> {
    let k = kernel();
    let pid = k.processes.iter().find_map(|(pid, p)| {
        p.space
            .as_ref()
            .is_some_and(|s| s.root == root)
            .then_some(pid)
    })?;
    Some(match fault_in(pid, page, write, page, 0) {
        Resolution::Mapped => Ok(()),
        Resolution::Keeper(port, words) => {
            kernel().keeper_fault = Some(KeeperFault { pid, port, words });
            Err(Error::BadAddress)
        }
        Resolution::NotMapped => Err(Error::BadAddress),
    })
}

/// Makes `[addr, addr + len)` of the current space present before a call relies on it (a
/// receive buffer, a console write). Fails only when a keeper has to provide a page (the
/// call is then re-executed after the keeper's reply); other bad addresses are left for
/// the copy itself to report.
pub fn prefault_current(addr: u64, len: u64, write: bool) -> Result<(), Error> {
    kernel().keeper_fault = None;
    let space = crate::sched::current_space()?;
    match space.prefault(addr, len, write) {
        Err(e) if kernel().keeper_fault.is_some() => Err(e),
        _ => Ok(()),
    }
}

/// Every place page `va` of space `pid` appears in other spaces through mappings of its
/// regions, and where those appear in turn: `f(space, address)`.
fn for_each_view(pid: Pid, va: u64, depth: u32, f: &mut impl FnMut(Pid, u64)) {
    if depth > MAX_CHAIN {
        return;
    }
    let k = kernel();
    for rid in k.regions.ids() {
        let Some(r) = k.regions.get(rid) else {
            continue;
        };
        if r.owner != pid || !(r.base..r.base + r.size).contains(&va) {
            continue;
        }
        let offset = va - r.base;
        for mid in k.mappings.ids() {
            let Some(m) = k.mappings.get(mid) else {
                continue;
            };
            if m.region == rid {
                let (target, at) = (m.target, m.base + offset);
                f(target, at);
                for_each_view(target, at, depth + 1, f);
            }
        }
    }
}

/// Unmaps one page of a space; a frame it owned is freed and returned to its budget.
fn discard_page(pid: Pid, va: u64) {
    let Some(space) = space_of(pid) else {
        return;
    };
    if let Some((frame, true)) = paging::unmap_user(space.root, va) {
        crate::mm::free_frame(frame);
        space.budget.release(1);
    }
}

/// `mem_discard(addr, len, save)`: drops the caller's pages in the range, first from every
/// space that maps them through its regions (recursively), then from its own tables; the
/// frames it owned go back to its budget. Its demand-zero ranges stay: the next touch gets
/// a zero page, and a mapping's next touch faults again (to the region's keeper). With
/// `save` != 0 (and one page) the page's contents are first copied to `save` (zeros if it
/// was not present), in the same call: how a pager evicts a page without a window in which
/// a child could still write to it.
pub fn discard(addr: u64, len: u64, save: u64) -> Result<u64, Error> {
    let end = check_user_range(addr, len)?;
    let me = crate::sched::current_pid()?;
    if save != 0 {
        if len != PAGE {
            return Err(Error::InvalidArgument);
        }
        let space = crate::sched::current_space()?;
        let mut page = alloc::vec![0u8; PAGE as usize];
        if let Some((frame, _)) = paging::translate_user(space.root, addr) {
            // SAFETY: a frame of the caller's, through the direct map; 4 KiB.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    crate::mm::phys_to_virt(frame) as *const u8,
                    page.as_mut_ptr(),
                    PAGE as usize,
                )
            };
        }
        space.copy_out(save, &page)?;
    }
    // Only pages present here can be mapped elsewhere (views map the owner's frames).
    let root = root_of(me).ok_or(Error::InvalidArgument)?;
    let mut va = addr;
    while let Some(page) = paging::next_present(root, va, end) {
        for_each_view(me, page, 0, &mut |pid, at| discard_page(pid, at));
        discard_page(me, page);
        va = page + PAGE;
    }
    Ok(0)
}

/// `mem_install(addr, src)`: makes the caller's page at `addr` (demand-zero memory of its
/// own, not present) present with the 4 KiB at `src`, in one call: nothing that maps it
/// can see the page before it is complete. How a pager brings a page back.
pub fn install(addr: u64, src: u64) -> Result<u64, Error> {
    check_user_range(addr, PAGE)?;
    let space = crate::sched::current_space()?;
    let mut page = alloc::vec![0u8; PAGE as usize];
    space.copy_in(src, &mut page)?;
    if paging::translate_user(space.root, addr).is_some() {
        return Err(Error::InvalidArgument); // present already
    }
    if !space.handle_fault(addr) {
        return Err(if space.budget_exhausted() {
            Error::NoMemory
        } else {
            Error::BadAddress
        });
    }
    let (frame, _) = paging::translate_user(space.root, addr).ok_or(Error::BadAddress)?;
    // SAFETY: the frame just allocated for the caller's page, through the direct map.
    unsafe {
        core::ptr::copy_nonoverlapping(
            page.as_ptr(),
            crate::mm::phys_to_virt(frame) as *mut u8,
            PAGE as usize,
        )
    };
    Ok(0)
}

/// `mem_referenced(addr) -> 0 or 1`: whether any space mapping the caller's page at `addr`
/// through its regions has touched it since the last ask (the accessed bits of those
/// views, which are cleared). The caller's own accesses do not count: a pager reading a
/// page to save it must not make it look used. A clock pager's reference bit.
pub fn referenced(addr: u64) -> Result<u64, Error> {
    check_user_range(addr & !(PAGE - 1), PAGE)?;
    let me = crate::sched::current_pid()?;
    let mut any = false;
    for_each_view(me, addr & !(PAGE - 1), 0, &mut |pid, at| {
        if let Some(root) = root_of(pid) {
            any |= paging::take_accessed(root, at);
        }
    });
    Ok(u64::from(any))
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
            // Its page tables go with the space: only the record, and the charge, which
            // goes back to the mapping's creator (a parent that mapped into a child).
            k.mappings.remove(mid);
            crate::object::unregister(ObjRef::Mapping(mid));
        }
    }
}
