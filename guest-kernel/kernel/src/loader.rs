//! Loading a program of the image into an address space.

use crate::arch::paging::UserPerm;
use crate::kernel::space::Space;
use fluke_abi::syscall::layout::{USER_BASE, USER_MAP_END};
use fluke_abi::syscall::Error;
use fluke_image::elf::{Elf, PF_W, PF_X};

const PAGE: u64 = 4096;

/// Maps every PT_LOAD segment of `elf_bytes` into `space` (fresh frames, file bytes copied,
/// the rest zeroed) and returns the entry point. Segments must lie in the user range.
pub fn load_elf(space: &mut Space, elf_bytes: &[u8]) -> Result<u64, Error> {
    let elf = Elf::parse(elf_bytes).map_err(|_| Error::InvalidArgument)?;
    for ph in elf.load_segments() {
        if ph.memsz == 0 {
            continue;
        }
        let end = ph
            .vaddr
            .checked_add(ph.memsz)
            .ok_or(Error::InvalidArgument)?;
        if ph.vaddr < USER_BASE || end > USER_MAP_END {
            return Err(Error::InvalidArgument);
        }
        let start = ph.vaddr & !(PAGE - 1);
        let map_end = end.div_ceil(PAGE) * PAGE;
        let perm = UserPerm {
            write: ph.flags & PF_W != 0,
            exec: ph.flags & PF_X != 0,
        };
        space.map_zeroed(start, map_end - start, perm)?;
        // The kernel writes through the direct map, so read-only segments can be filled too.
        space.fill(ph.vaddr, elf.segment_data(&ph))?;
    }
    let entry = elf.entry();
    if !(USER_BASE..USER_MAP_END).contains(&entry) {
        return Err(Error::InvalidArgument);
    }
    Ok(entry)
}

/// Writes the arguments below `top`: the strings, then an array of `(ptr, len)` pairs.
/// Returns `(argc, argv, initial rsp)`; rsp is 16-byte aligned minus 8, as after a call.
pub fn push_args(space: &mut Space, top: u64, args: &[u8]) -> Result<(u64, u64, u64), Error> {
    if args.len() > 4096 {
        return Err(Error::InvalidArgument);
    }
    let strings = (top - args.len() as u64) & !15;
    space.write(strings, args)?;
    let mut pairs: alloc::vec::Vec<u64> = alloc::vec::Vec::new();
    let mut off = 0u64;
    for a in args.split(|&b| b == 0) {
        if !a.is_empty() {
            pairs.push(strings + off);
            pairs.push(a.len() as u64);
        }
        off += a.len() as u64 + 1;
    }
    let argc = pairs.len() as u64 / 2;
    let argv = (strings - pairs.len() as u64 * 8) & !15;
    let mut bytes = alloc::vec::Vec::with_capacity(pairs.len() * 8);
    for v in &pairs {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    space.write(argv, &bytes)?;
    Ok((argc, argv, argv - 8))
}
