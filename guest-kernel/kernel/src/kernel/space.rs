//! Address spaces: a page-table pair, the user mappings, demand-zero ranges, the return page.
//! Every access the kernel makes to user memory translates each page through the space's
//! own tables and touches the frame through the direct map (`objects::usermem` for a live
//! space, whose pages may come through mappings; [`Space::fill`] / [`Space::write`] for one
//! being built), so a bad user pointer can only ever yield an error.

use crate::arch::paging::{self, MapError, UserPerm};
use crate::arch::{percpu, user};
use crate::mm;
use crate::sync::BootCell;
use alloc::vec::Vec;
use fluke_abi::syscall::layout::{RETURN_PAGE, USER_MAP_END};
use fluke_abi::syscall::Error;

const PAGE: u64 = 4096;
/// At most three new table levels per mapped page: refused up front rather than overdrawn.
const MAX_NEW_TABLES: u64 = 3;

/// The kernel's own root and the PV entry tree, set at boot, used to create every space.
struct Template {
    kernel_root: u64,
    entry_tree: Option<(usize, u64)>,
}

static TEMPLATE: BootCell<Template> = BootCell::new(Template {
    kernel_root: 0,
    entry_tree: None,
});

/// Records the kernel root and (kvm_pvm) the CPU-tables tree that user page tables map.
pub fn init(kernel_root: u64, entry_tree: Option<(usize, u64)>) {
    // SAFETY: boot, single CPU.
    unsafe {
        *TEMPLATE.get_mut() = Template {
            kernel_root,
            entry_tree,
        }
    };
}

pub fn kernel_root() -> u64 {
    // SAFETY: written once at boot.
    unsafe { TEMPLATE.get().kernel_root }
}

/// Loads `root` into CR3 unless it is already there.
pub fn activate_root(root: u64) {
    let pc = percpu::get();
    if pc.cur_root.get() != root {
        // SAFETY: every root maps the kernel half, so the switch is safe anywhere in the
        // kernel.
        unsafe { paging::activate(root) };
        pc.cur_root.set(root);
    }
}

/// Called before an address space is freed: CR3 must not keep pointing at it.
pub fn leave_space(root: u64) {
    if percpu::get().cur_root.get() == root {
        activate_root(kernel_root());
    }
}

impl From<MapError> for Error {
    fn from(e: MapError) -> Error {
        match e {
            MapError::OutOfMemory => Error::NoMemory,
            MapError::AlreadyMapped(_) | MapError::Misaligned(_) => Error::InvalidArgument,
        }
    }
}

pub struct Space {
    /// Even page of the 8 KiB root pair.
    pub root: u64,
    /// Frame of this space's return page (stub + slot), user read-only at RETURN_PAGE.
    return_page: u64,
    /// Demand-zero ranges `[start, end)`: a fault inside gets a fresh zeroed page.
    anon: Vec<(u64, u64)>,
    /// The frames this space may hold, holds (page tables excluded) and has lent to its
    /// children's spaces.
    pub budget: fluke_kcore::budget::Budget,
    /// The capabilities this space holds: the only objects its threads can name.
    pub caps: fluke_kcore::cap::CapTable<super::objref::ObjRef>,
}

/// Checks that `[addr, addr + len)` is a non-empty, page-aligned user range above page 0 and
/// below the return page. Page 0 is never mapped: a jump to address 0 from any privilege
/// level must fault, never run code a program put there.
pub fn check_user_range(addr: u64, len: u64) -> Result<u64, Error> {
    let end = addr.checked_add(len).ok_or(Error::InvalidArgument)?;
    if addr < PAGE
        || len == 0
        || !addr.is_multiple_of(PAGE)
        || !len.is_multiple_of(PAGE)
        || end > USER_MAP_END
    {
        return Err(Error::InvalidArgument);
    }
    Ok(end)
}

impl Space {
    /// A space that may hold `quota` frames.
    pub fn new(quota: u64) -> Result<Space, Error> {
        // SAFETY: written once at boot.
        let t = unsafe { TEMPLATE.get() };
        let root = paging::new_root_pair()?;
        paging::init_space_root(root, t.kernel_root, t.entry_tree);
        let mut space = Space {
            root,
            return_page: 0,
            anon: Vec::new(),
            budget: fluke_kcore::budget::Budget::new(quota),
            caps: fluke_kcore::cap::CapTable::new(super::objref::CAPS_PER_SPACE),
        };
        let page = space.alloc_zeroed()?;
        // SAFETY: a fresh frame, reached through the direct map.
        unsafe {
            core::ptr::copy_nonoverlapping(
                user::return_page_template_bytes().as_ptr(),
                mm::phys_to_virt(page) as *mut u8,
                PAGE as usize,
            );
        }
        space.map_page(
            RETURN_PAGE,
            page,
            UserPerm {
                write: false,
                exec: true,
            },
            true,
        )?;
        space.return_page = page;
        Ok(space)
    }

    fn alloc_zeroed(&mut self) -> Result<u64, Error> {
        self.budget.charge(1).map_err(|_| Error::NoMemory)?;
        let Some(frame) = mm::alloc_frame() else {
            self.budget.release(1);
            return Err(Error::NoMemory);
        };
        // SAFETY: a fresh frame, reached through the direct map.
        unsafe { core::ptr::write_bytes(mm::phys_to_virt(frame) as *mut u8, 0, PAGE as usize) };
        Ok(frame)
    }

    /// Whether the budget cannot pay for another page and the tables it may need (for
    /// fault reports).
    pub fn budget_exhausted(&self) -> bool {
        self.budget.available() < 1 + MAX_NEW_TABLES
    }

    /// The kernel address of the return slot (user::return_to_user).
    pub fn return_slot(&self) -> u64 {
        mm::phys_to_virt(self.return_page)
    }

    /// Maps fresh zeroed pages over `[addr, addr + len)`.
    pub fn map_zeroed(&mut self, addr: u64, len: u64, perm: UserPerm) -> Result<(), Error> {
        let end = check_user_range(addr, len)?;
        let mut va = addr;
        while va < end {
            let frame = self.alloc_zeroed()?;
            if let Err(e) = self.map_page(va, frame, perm, true) {
                mm::free_frame(frame);
                self.budget.release(1);
                return Err(e);
            }
            va += PAGE;
        }
        Ok(())
    }

    /// Maps one page, charging the page-table frames the mapping needs to this space.
    pub fn map_page(
        &mut self,
        va: u64,
        frame: u64,
        perm: UserPerm,
        owned: bool,
    ) -> Result<(), Error> {
        if self.budget.available() < MAX_NEW_TABLES {
            return Err(Error::NoMemory);
        }
        let before = mm::free_frames();
        paging::map_user(self.root, va, frame, perm, owned)?;
        let tables = before.saturating_sub(mm::free_frames());
        let _ = self.budget.charge(tables); // fits: checked above
        Ok(())
    }

    /// Maps one page of a device-memory object's window (`objects::device_memory`), the
    /// page tables charged to this space as for any page.
    pub fn map_device_page(&mut self, va: u64, phys: u64, write: bool, cached: bool) -> Result<(), Error> {
        let before = mm::free_frames();
        let r = paging::map_user_device(self.root, va, phys, write, cached);
        let tables = before.saturating_sub(mm::free_frames());
        let _ = self.budget.charge(tables); // the caller checked the budget has room
        Ok(r?)
    }

    /// Reserves `[addr, addr + len)` as demand-zero, read-write memory.
    pub fn map_anon(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        let end = check_user_range(addr, len)?;
        if self.anon.iter().any(|&(s, e)| addr < e && s < end) {
            return Err(Error::InvalidArgument);
        }
        if self.anon.len() >= 64 {
            return Err(Error::Exhausted);
        }
        self.anon.push((addr, end));
        Ok(())
    }

    /// Resolves a user page fault at `addr` if it lies in a demand-zero range and is not
    /// mapped yet. Returns false if the fault is the program's error.
    pub fn handle_fault(&mut self, addr: u64) -> bool {
        let page = addr & !(PAGE - 1);
        if !self.anon.iter().any(|&(s, e)| (s..e).contains(&page)) {
            return false;
        }
        if paging::translate_user(self.root, page).is_some() {
            return false; // present: a protection fault
        }
        let Ok(frame) = self.alloc_zeroed() else {
            return false;
        };
        if self
            .map_page(
                page,
                frame,
                UserPerm {
                    write: true,
                    exec: false,
                },
                true,
            )
            .is_err()
        {
            mm::free_frame(frame);
            self.budget.release(1);
            return false;
        }
        true
    }

    /// The frame behind a present user page that allows the access (`write`: a writable
    /// mapping); `None` if the page is not present or is not a user page. A device page is
    /// refused: the kernel never reads or writes device memory for a program (it is not in
    /// the direct map, and a register access can have effects).
    pub fn frame_for(&self, page: u64, write: bool) -> Option<Result<u64, Error>> {
        if page >= USER_MAP_END {
            return Some(Err(Error::BadAddress));
        }
        let (frame, bits) = paging::translate_user(self.root, page)?;
        if !paging::pte_user(bits)
            || paging::pte_device(bits)
            || (write && !paging::pte_writable(bits))
        {
            return Some(Err(Error::BadAddress));
        }
        Some(Ok(frame))
    }

    /// Writes `data` at `addr` whatever the page permissions, into a space that is being
    /// built (no process has it yet, so it has no mappings: only its own memory and its
    /// demand-zero ranges). Program loading.
    pub fn fill(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.copy_unattached(addr, data, false)
    }

    /// As [`Space::fill`], but `addr` must be writable (the first thread's arguments).
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.copy_unattached(addr, data, true)
    }

    fn copy_unattached(&mut self, addr: u64, data: &[u8], write: bool) -> Result<(), Error> {
        for p in fluke_kcore::user_range::pieces(addr, data.len())? {
            let frame = match self.frame_for(p.page, write) {
                Some(r) => r?,
                None if self.handle_fault(p.page) => self
                    .frame_for(p.page, write)
                    .unwrap_or(Err(Error::BadAddress))?,
                None => return Err(Error::BadAddress),
            };
            // SAFETY: `frame` is a user frame of this space (translated above), reached
            // through the direct map; the piece stays inside it.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data[p.in_buffer..].as_ptr(),
                    (mm::phys_to_virt(frame) + p.in_page) as *mut u8,
                    p.len,
                )
            };
        }
        Ok(())
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        leave_space(self.root);
        paging::destroy_space(self.root);
    }
}
