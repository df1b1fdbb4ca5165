//! The kernel's accesses to the memory of a live space (one a process has): each page is
//! translated through the space's own tables and touched through the direct map, so a bad
//! user pointer can only yield an error. A page not present yet is brought in as a fault
//! would bring it (`mapping::fault_in`: a mapping's page, else demand-zero memory); one that
//! only a region keeper can provide is recorded in `Kernel::keeper_fault` and reported as
//! `BadAddress`, and the dispatcher sends the fault to the keeper and re-executes the call.
//!
//! The kernel state is borrowed afresh for each page, never across the fault-in.

use super::mapping::{self, Resolution};
use crate::kernel::process::Pid;
use crate::kernel::{KeeperFault, Kernel};
use crate::mm;
use fluke_abi::syscall::Error;

/// Copies user memory of `pid` at `addr` into `buf`.
pub fn copy_in(k: &mut Kernel, pid: Pid, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
    copy(k, pid, addr, buf.len(), false, |frame_va, off, chunk| {
        // SAFETY: `frame_va` is a user frame of the space through the direct map, with
        // `chunk` bytes left in it; `buf[off..]` has at least `chunk` bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(frame_va as *const u8, buf[off..].as_mut_ptr(), chunk)
        }
    })
}

/// Copies `data` into user memory of `pid` at `addr` (which must be writable).
pub fn copy_out(k: &mut Kernel, pid: Pid, addr: u64, data: &[u8]) -> Result<(), Error> {
    copy(k, pid, addr, data.len(), true, |frame_va, off, chunk| {
        // SAFETY: as in copy_in, in the other direction.
        unsafe { core::ptr::copy_nonoverlapping(data[off..].as_ptr(), frame_va as *mut u8, chunk) }
    })
}

/// Makes every page of `[addr, addr + len)` present (writable if `write`), as the
/// kernel's own accesses would.
pub fn prefault(k: &mut Kernel, pid: Pid, addr: u64, len: u64, write: bool) -> Result<(), Error> {
    let len = usize::try_from(len).map_err(|_| Error::BadAddress)?;
    copy(k, pid, addr, len, write, |_, _, _| {})
}

/// Makes `[addr, addr + len)` of `pid` present before a call relies on it (a receive
/// buffer, a console write). Fails only when a keeper has to provide a page (the call is
/// then re-executed after the keeper's reply); other bad addresses are left for the copy
/// itself to report.
pub fn prefault_for_call(
    k: &mut Kernel,
    pid: Pid,
    addr: u64,
    len: u64,
    write: bool,
) -> Result<(), Error> {
    k.keeper_fault = None;
    match prefault(k, pid, addr, len, write) {
        Err(e) if k.keeper_fault.is_some() => Err(e),
        _ => Ok(()),
    }
}

fn copy(
    k: &mut Kernel,
    pid: Pid,
    addr: u64,
    len: usize,
    write: bool,
    mut f: impl FnMut(u64, usize, usize),
) -> Result<(), Error> {
    for p in fluke_kcore::user_range::pieces(addr, len)? {
        let frame = user_frame(k, pid, p.page, write)?;
        f(mm::phys_to_virt(frame) + p.in_page, p.in_buffer, p.len);
    }
    Ok(())
}

/// The frame behind a user page of `pid`, brought in if it is not present.
fn user_frame(k: &mut Kernel, pid: Pid, page: u64, write: bool) -> Result<u64, Error> {
    let space = k.space_ref(pid).ok_or(Error::InvalidArgument)?;
    if let Some(r) = space.frame_for(page, write) {
        return r;
    }
    match mapping::fault_in(k, pid, page, write, page) {
        Resolution::Mapped => {}
        Resolution::Keeper(port, words) => {
            k.keeper_fault = Some(KeeperFault { pid, port, words });
            return Err(Error::BadAddress);
        }
        Resolution::NotMapped => return Err(Error::BadAddress),
    }
    k.space_ref(pid)
        .and_then(|s| s.frame_for(page, write))
        .unwrap_or(Err(Error::BadAddress))
}
