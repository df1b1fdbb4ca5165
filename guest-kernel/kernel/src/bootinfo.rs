//! Reading the PVH start info. The loader's structures are copied into kernel-owned storage
//! early, so nothing later depends on where the loader put them.

use crate::mm::physmap;
use fluke_abi::boot::{HvmMemmapEntry, HvmStartInfo, CMDLINE_MAX, XEN_HVM_START_MAGIC};
use fluke_kcore::memmap::PhysRange;

pub const MAX_MEMMAP: usize = 128;

pub struct BootInfo {
    pub memmap: [HvmMemmapEntry; MAX_MEMMAP],
    pub memmap_len: usize,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    /// Physical ranges the loader's structures occupy (kept out of the allocator until copied).
    pub loader_ranges: [PhysRange; 4],
}

#[derive(Debug)]
pub enum BootInfoError {
    /// Not a PVH start info: the magic read (0 if unreadable).
    BadMagic(#[allow(dead_code)] u32),
    NoMemoryMap,
}

impl BootInfo {
    pub const fn empty() -> Self {
        BootInfo {
            memmap: [HvmMemmapEntry {
                addr: 0,
                size: 0,
                type_: 0,
                reserved: 0,
            }; MAX_MEMMAP],
            memmap_len: 0,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            loader_ranges: [PhysRange { start: 0, end: 0 }; 4],
        }
    }

    pub fn memmap(&self) -> &[HvmMemmapEntry] {
        &self.memmap[..self.memmap_len]
    }

    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// Copies the start info at physical `pa`. Runs on the boot page tables, which map the
    /// first GiB; structures above that are ignored.
    pub fn read(&mut self, pa: u64) -> Result<(), BootInfoError> {
        let si: HvmStartInfo = read_phys(pa).ok_or(BootInfoError::BadMagic(0))?;
        if si.magic != XEN_HVM_START_MAGIC {
            return Err(BootInfoError::BadMagic(si.magic));
        }
        let entry_size = core::mem::size_of::<HvmMemmapEntry>() as u64;
        let n = (si.memmap_entries as usize).min(MAX_MEMMAP);
        for i in 0..n {
            match read_phys::<HvmMemmapEntry>(si.memmap_paddr + i as u64 * entry_size) {
                Some(e) => {
                    self.memmap[self.memmap_len] = e;
                    self.memmap_len += 1;
                }
                None => break,
            }
        }
        if self.memmap_len == 0 {
            return Err(BootInfoError::NoMemoryMap);
        }
        if si.cmdline_paddr != 0 {
            for i in 0..CMDLINE_MAX - 1 {
                match read_phys::<u8>(si.cmdline_paddr + i as u64) {
                    Some(0) | None => break,
                    Some(b) => {
                        self.cmdline[i] = b;
                        self.cmdline_len = i + 1;
                    }
                }
            }
        }
        let sz = core::mem::size_of::<HvmStartInfo>() as u64;
        self.loader_ranges = [
            PhysRange {
                start: pa,
                end: pa + sz,
            },
            PhysRange {
                start: si.memmap_paddr,
                end: si.memmap_paddr + n as u64 * entry_size,
            },
            PhysRange {
                start: si.cmdline_paddr,
                end: si.cmdline_paddr + self.cmdline_len as u64 + 1,
            },
            PhysRange { start: 0, end: 0 },
        ];
        Ok(())
    }
}

/// Reads a `T` from physical memory through the boot mapping, if it lies in the first GiB.
fn read_phys<T: Copy>(pa: u64) -> Option<T> {
    let end = pa.checked_add(core::mem::size_of::<T>() as u64)?;
    if end > physmap::BOOT_MAP_LIMIT {
        return None;
    }
    // SAFETY: the boot page tables map [0, BOOT_MAP_LIMIT) at the kernel base, and T is a
    // plain-old-data type for which any bit pattern is valid.
    Some(unsafe { core::ptr::read_unaligned(physmap::phys_to_virt(pa) as *const T) })
}
