//! Device memory (issue 15): a window of guest-physical device memory (a virtio-mmio
//! device's registers) that the kernel hands out only as a capability, one per device the
//! command line lists, to the first process (`fluke_abi::devices::init_devmem_cap`). No
//! call creates one: a program reaches a device's memory only through this object, which
//! it got from a holder with GRANT, as any capability.
//!
//! `devmem_map(devmem, space, addr, flags, offset, len)` maps a part of the window (len 0:
//! from `offset` to its end) into a space, uncached unless the flags say the driver uses that
//! part as memory (`DEVMEM_CACHED`: a DMA area, a shared region) (`paging::map_user_device`),
//! at once (a device page cannot be brought in lazily from anyone). A page of the window has
//! one memory type at a time, in every space: a part that would map a page both uncached and
//! cached is refused with `Busy` (`fluke_kcore::devices::check_part`). The kernel never touches such a page on a program's behalf: calls that copy
//! user memory refuse device pages (`Space::frame_for`), a pager's save refuses them, and a
//! region over them does not pass them on (`mapping::fault_in`), so the window reaches
//! exactly the spaces its holders map it into. Destroying the object unmaps it from every
//! one of them; a space that ends takes its mappings with its page tables.

use super::object::{CallResult, Reply};
use crate::arch::paging;
use crate::kernel::{Caller, Kernel, ObjRef};
use fluke_abi::syscall::objstate::{self, WORDS};
use fluke_abi::syscall::Error;
use fluke_kcore::cap::Rights;
use fluke_kcore::devices::{check_part, DeviceMemory, DevmemMapping, MapRefusal, MAX_DEVMEM_MAPPINGS};
use fluke_kcore::slab::Id;

const PAGE: u64 = 4096;
// `devmem_map`'s flags (a mapping is never executable).
use fluke_abi::syscall::{DEVMEM_CACHED, DEVMEM_WRITE};
/// Page tables a mapping of a window (at most 2 MiB) can need: two of each level.
const MAX_TABLES: u64 = 6;

/// A device-memory object the kernel makes at boot for an accepted window.
pub fn make(k: &mut Kernel, window: fluke_kcore::memmap::PhysRange, line: u32) -> Option<Id> {
    k.devmems.insert(DeviceMemory {
        window,
        line,
        mappings: alloc::vec::Vec::new(),
    })
}

fn devmem_cap(k: &mut Kernel, c: Caller, name: u64, rights: Rights) -> Result<Id, Error> {
    match k.lookup(c, name, rights)?.object {
        ObjRef::DeviceMemory(d) => Ok(d),
        _ => Err(Error::WrongType),
    }
}

/// `devmem_map(devmem, space, addr, flags, offset, len)`. Decode: the flags, both
/// capabilities, the part of the window (page-aligned, inside it, no page of it mapped with
/// the other memory type anywhere), the range (a user range, clear of the target's mappings
/// and of any present page), room in the object's mapping list, and the target's budget for
/// the page tables; then map, which cannot fail (the tables are paid for up front).
#[allow(clippy::too_many_arguments)]
pub fn map(
    k: &mut Kernel,
    c: Caller,
    name: u64,
    space_name: u64,
    addr: u64,
    flags: u64,
    offset: u64,
    len: u64,
) -> CallResult {
    if flags & !(DEVMEM_WRITE | DEVMEM_CACHED) != 0 {
        return Err(Error::InvalidArgument);
    }
    let write = flags & DEVMEM_WRITE != 0;
    let cached = flags & DEVMEM_CACHED != 0;
    let d = devmem_cap(k, c, name, Rights::USE)?;
    let target = match space_name {
        fluke_abi::syscall::SELF_SPACE => c.pid,
        name => match k.lookup(c, name, Rights::WRITE)?.object {
            ObjRef::Space(p) => p,
            _ => return Err(Error::WrongType),
        },
    };
    let window = k.devmems.get(d).ok_or(Error::BadCap)?.window;
    // A mapping still counts while one of its pages still holds its frame of the window:
    // not once its space has ended, nor once the space discarded every page of it itself
    // (`mem_discard`), but a part of it discarded and mapped again leaves the rest counted,
    // for the memory-type check and for `destroy`.
    let live: alloc::vec::Vec<DevmemMapping> = k.devmems.get(d).ok_or(Error::BadCap)?.mappings.clone();
    let live: alloc::vec::Vec<DevmemMapping> = live
        .into_iter()
        .filter(|m| still_mapped(k, m, window.start))
        .collect();
    let len = match check_part(window.end - window.start, offset, len, cached, &live) {
        Ok(len) => len,
        Err(MapRefusal::OutsideWindow) => return Err(Error::InvalidArgument),
        Err(MapRefusal::OtherMemoryType) => return Err(Error::Busy),
    };
    let end = crate::kernel::space::check_user_range(addr, len)?;
    let root = k.space_ref(target).ok_or(Error::BadCap)?.root;
    if k.graph.overlaps(target, addr, end) || paging::next_present(root, addr, end).is_some() {
        return Err(Error::InvalidArgument);
    }
    if live.len() >= MAX_DEVMEM_MAPPINGS {
        return Err(Error::Exhausted);
    }
    let space = k.space(target).ok_or(Error::BadCap)?;
    if space.budget.available() < MAX_TABLES {
        return Err(Error::NoMemory);
    }
    // Invoke.
    let phys = window.start + offset;
    let mut va = addr;
    while va < end {
        if space.map_device_page(va, phys + (va - addr), write, cached).is_err() {
            // Unreachable: the range is clear and the tables are paid for. Were it to
            // happen, nothing of the part stays mapped.
            unmap_range(k, target, addr, va, phys);
            return Err(Error::NoMemory);
        }
        va += PAGE;
    }
    if let Some(obj) = k.devmems.get_mut(d) {
        obj.mappings = live;
        obj.mappings.push(DevmemMapping {
            space: target,
            addr,
            offset,
            len,
            write,
            cached,
        });
    }
    Ok(Reply::Value(0))
}

/// Whether any page of mapping `m` (of the window starting at `window_start`) still holds
/// its device frame: at most `MAX_WINDOW / PAGE` page-table walks per mapping, so a
/// `devmem_map` makes at most `MAX_DEVMEM_MAPPINGS` times that. (Another mapping of the same
/// frames at the same addresses keeps this one counted too: over-conservative for the
/// memory-type check, never unsafe.)
fn still_mapped(k: &Kernel, m: &DevmemMapping, window_start: u64) -> bool {
    let Some(root) = k.space_ref(m.space).map(|s| s.root) else {
        return false;
    };
    let phys = window_start + m.offset;
    (0..m.len / PAGE).any(|i| {
        let va = m.addr + i * PAGE;
        paging::translate_user(root, va)
            .is_some_and(|(frame, bits)| paging::pte_device(bits) && frame == phys + i * PAGE)
    })
}

/// Unmaps `[addr, end)` of `pid` where it still holds the window's own pages (the space may
/// have discarded one and put something else there since).
fn unmap_range(k: &mut Kernel, pid: crate::kernel::process::Pid, addr: u64, end: u64, phys: u64) {
    let Some(root) = k.space_ref(pid).map(|s| s.root) else {
        return;
    };
    let mut va = addr;
    while va < end {
        if let Some((frame, bits)) = paging::translate_user(root, va) {
            if paging::pte_device(bits) && frame == phys + (va - addr) {
                let _ = paging::unmap_user(root, va);
            }
        }
        va += PAGE;
    }
}

pub fn state(k: &Kernel, d: Id) -> Result<[u64; WORDS], Error> {
    let obj = k.devmems.get(d).ok_or(Error::BadCap)?;
    Ok([
        objstate::DEVICE_MEMORY,
        obj.window.start,
        obj.window.end - obj.window.start,
        u64::from(obj.line),
        0,
        0,
    ])
}

/// Nothing of it can change: the state must be the object's own.
pub fn set_state(k: &Kernel, d: Id, w: &[u64; WORDS]) -> Result<(), Error> {
    let mine = state(k, d)?;
    if w[..4] != mine[..4] {
        return Err(Error::InvalidArgument);
    }
    Ok(())
}

/// Unmaps the window from every space it is mapped into; the object is gone, and its
/// window is never handed out again in this boot.
pub fn destroy(k: &mut Kernel, d: Id) -> Result<(), Error> {
    let obj = k.devmems.remove(d).ok_or(Error::BadCap)?;
    for m in obj.mappings {
        unmap_range(k, m.space, m.addr, m.addr + m.len, obj.window.start + m.offset);
    }
    Ok(())
}
