//! The pager's calls on its own memory: evict a page (everywhere it is mapped), install
//! one, ask whether one was used.

use super::mapping::discard_everywhere;
use super::object::{CallResult, Reply};
use crate::arch::paging;
use crate::kernel::space::check_user_range;
use crate::kernel::{Caller, Kernel};
use fluke_abi::syscall::Error;

const PAGE: u64 = 4096;

/// `mem_discard(addr, len, save)`: drops the caller's pages in the range, first from every
/// space that maps them through its regions (recursively), then from its own tables; the
/// frames it owned go back to its budget. Its demand-zero ranges stay: the next touch gets
/// a zero page, and a mapping's next touch faults again (to the region's keeper). With
/// `save` != 0 (and one page) the page's contents are first copied to `save` (zeros if it
/// was not present), in the same call: how a pager evicts a page without a window in which
/// a child could still write to it.
pub fn discard(k: &mut Kernel, c: Caller, addr: u64, len: u64, save: u64) -> CallResult {
    let end = check_user_range(addr, len)?;
    let root = k.caller_space(c)?.root;
    if save != 0 {
        if len != PAGE {
            return Err(Error::InvalidArgument);
        }
        let mut page = [0u8; PAGE as usize];
        if let Some((frame, bits)) = paging::translate_user(root, addr) {
            if paging::pte_device(bits) {
                return Err(Error::InvalidArgument); // the kernel never reads device memory
            }
            // SAFETY: a frame of the caller's, through the direct map; 4 KiB.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    crate::mm::phys_to_virt(frame) as *const u8,
                    page.as_mut_ptr(),
                    PAGE as usize,
                )
            };
        }
        super::usermem::copy_out(k, c.pid, save, &page)?;
    }
    // Only pages present here can be mapped elsewhere (views map the owner's frames).
    let mut va = addr;
    while let Some(page) = paging::next_present(root, va, end) {
        discard_everywhere(k, c.pid, page);
        va = page + PAGE;
    }
    Ok(Reply::Value(0))
}

/// `mem_install(addr, src)`: makes the caller's page at `addr` (demand-zero memory of its
/// own, not present) present with the 4 KiB at `src`, in one call: nothing that maps it
/// can see the page before it is complete. How a pager brings a page back.
pub fn install(k: &mut Kernel, c: Caller, addr: u64, src: u64) -> CallResult {
    check_user_range(addr, PAGE)?;
    let mut page = [0u8; PAGE as usize];
    super::usermem::copy_in(k, c.pid, src, &mut page)?;
    let space = k.caller_space(c)?;
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
    Ok(Reply::Value(0))
}

/// `mem_referenced(addr) -> 0 or 1`: whether any space mapping the caller's page at `addr`
/// through its regions has touched it since the last ask (the accessed bits of those
/// views, which are cleared). The caller's own accesses do not count: a pager reading a
/// page to save it must not make it look used. A clock pager's reference bit.
pub fn referenced(k: &mut Kernel, c: Caller, addr: u64) -> CallResult {
    let page = addr & !(PAGE - 1);
    check_user_range(page, PAGE)?;
    let mut any = false;
    for (pid, at) in k.graph.views(c.pid, page) {
        if let Some(root) = k.space_ref(pid).map(|s| s.root) {
            any |= paging::take_accessed(root, at);
        }
    }
    Ok(Reply::Value(u64::from(any)))
}
