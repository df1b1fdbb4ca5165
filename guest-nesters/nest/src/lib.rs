//! The nester library. A nester gives its child a complete environment with the same
//! kernel API it has itself: the child's memory lives in regions the nester owns and maps
//! into the child's empty space (so the nester holds the child's whole state and can
//! interpose on any page), the child gets exactly the capabilities the nester chooses, and
//! every kernel call the child makes goes straight to the kernel: a nester only interposes
//! where it adds something (faults, a subset of IPC, memory). A nester is itself an
//! ordinary program, so nesters run under nesters, unchanged.
#![no_std]

use fluke_abi::syscall::layout::{STACK_TOP, USER_BASE};
use fluke_rt::sys::{self, NO_CAP};
use fluke_rt::Error;

/// The child's stack: this much below the top of its user range.
pub const CHILD_STACK: u64 = 64 * 1024;
/// Where a nester keeps the memory of its children, in its own space (64 GiB up).
pub const BACKING_BASE: u64 = 0x10_0000_0000;
const PAGE: u64 = 4096;
/// Frames of its budget a nester keeps for itself; its child gets the rest (the nester's own
/// needs are small: the child's program and stack copies, a few objects and page tables).
pub const NESTER_KEEP: u64 = 128;

/// A child environment: its space, its first thread and its id (for `sys::wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pub space: u64,
    pub thread: u64,
    pub pid: u64,
    /// The nester's regions backing the child's program and stack.
    pub program_region: u64,
    pub stack_region: u64,
}

/// One loadable segment of a program: `(file offset, file size, virtual address, memory size)`.
#[derive(Clone, Copy, Default)]
struct Segment {
    offset: u64,
    filesz: u64,
    vaddr: u64,
    memsz: u64,
}

/// The entry point and PT_LOAD segments of program `name`, from its ELF headers (the
/// kernel checked the image; the bounds are checked again here).
fn read_headers(name: &str, segs: &mut [Segment; 8]) -> Result<(u64, usize), Error> {
    let mut hdr = [0u8; 4096];
    let n = sys::program_read(name, 0, &mut hdr)?;
    let rd = |o: usize, len: usize| -> Result<u64, Error> {
        let b = hdr
            .get(o..o + len)
            .filter(|_| o + len <= n)
            .ok_or(Error::InvalidArgument)?;
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    };
    if hdr.get(..4) != Some(b"\x7fELF") {
        return Err(Error::InvalidArgument);
    }
    let (entry, phoff, phnum) = (rd(24, 8)?, rd(32, 8)? as usize, rd(56, 2)? as usize);
    let mut count = 0;
    for i in 0..phnum {
        let ph = phoff + i * 56;
        if rd(ph, 4)? != 1 {
            continue; // not PT_LOAD
        }
        if count == segs.len() {
            return Err(Error::InvalidArgument);
        }
        segs[count] = Segment {
            offset: rd(ph + 8, 8)?,
            vaddr: rd(ph + 16, 8)?,
            filesz: rd(ph + 32, 8)?,
            memsz: rd(ph + 40, 8)?,
        };
        if segs[count].vaddr < USER_BASE || segs[count].filesz > segs[count].memsz {
            return Err(Error::InvalidArgument);
        }
        count += 1;
    }
    Ok((entry, count))
}

/// Touches every page of `[base, base + len)` (demand-zero memory of ours) so that the
/// child's mappings of it find present pages.
fn touch(base: u64, len: u64) {
    let mut p = base;
    while p < base + len {
        // SAFETY: inside a demand-zero range this nester reserved.
        unsafe {
            core::ptr::write_volatile(p as *mut u8, core::ptr::read_volatile(p as *const u8))
        };
        p += PAGE;
    }
}

/// Lays out children's memory in the nester's own space.
pub struct Nester {
    next_backing: u64,
}

impl Default for Nester {
    fn default() -> Self {
        Nester::new()
    }
}

impl Nester {
    pub const fn new() -> Nester {
        Nester {
            next_backing: BACKING_BASE,
        }
    }

    fn backing(&mut self, len: u64) -> Result<u64, Error> {
        let base = self.next_backing;
        sys::map_anon(base, len)?;
        self.next_backing += len.div_ceil(0x20_0000) * 0x20_0000 + 0x20_0000;
        Ok(base)
    }

    /// Starts program `name` of the image with `args` in a new child environment. `caps`
    /// are `(name in the child, capability of ours)` pairs; the child holds nothing else.
    pub fn start(
        &mut self,
        name: &str,
        args: &[&str],
        caps: &[(u64, u64)],
    ) -> Result<Child, Error> {
        let mut segs = [Segment::default(); 8];
        let (entry, count) = read_headers(name, &mut segs)?;
        let segs = &segs[..count];
        let end = segs
            .iter()
            .map(|s| s.vaddr + s.memsz)
            .max()
            .ok_or(Error::InvalidArgument)?;
        let prog_len = (end - USER_BASE).div_ceil(PAGE) * PAGE;
        let prog = self.backing(prog_len)?;
        touch(prog, prog_len);
        for s in segs {
            let dst = prog + (s.vaddr - USER_BASE);
            // SAFETY: inside the backing just reserved; filesz <= memsz was checked.
            let buf = unsafe { core::slice::from_raw_parts_mut(dst as *mut u8, s.filesz as usize) };
            if sys::program_read(name, s.offset, buf)? != buf.len() {
                return Err(Error::InvalidArgument);
            }
        }
        let stack = self.backing(CHILD_STACK)?;
        touch(stack, CHILD_STACK);
        let sp = write_args(stack, args)?;

        let program_region = sys::region_create(prog, prog_len, NO_CAP)?;
        let stack_region = sys::region_create(stack, CHILD_STACK, NO_CAP)?;
        let (space, pid) = sys::space_create_keep(NESTER_KEEP)?;
        sys::mapping_create_flags(
            space,
            program_region,
            USER_BASE,
            sys::MAP_WRITE | sys::MAP_EXEC,
        )?;
        sys::mapping_create_flags(space, stack_region, STACK_TOP - CHILD_STACK, sys::MAP_WRITE)?;
        for &(there, mine) in caps {
            sys::cap_give(space, there, mine, 0b1111)?;
        }
        let thread = sys::thread_create(space)?;
        let regs = sys::ThreadRegs {
            rip: entry,
            rcx: entry,
            rsp: sp.0,
            rdi: sp.1,
            rsi: sp.2,
            rflags: 0x202,
            r11: 0x202,
            ..Default::default()
        };
        sys::thread_set_state(thread, &regs)?;
        sys::thread_resume(thread)?;
        Ok(Child {
            space,
            thread,
            pid,
            program_region,
            stack_region,
        })
    }
}

/// Writes the arguments at the top of the child's stack (our copy at `stack`) the way the
/// kernel does for `spawn`: the strings, then `(ptr, len)` pairs. Returns the child's
/// `(rsp, argc, argv)`.
fn write_args(stack: u64, args: &[&str]) -> Result<(u64, u64, u64), Error> {
    let child_base = STACK_TOP - CHILD_STACK;
    let ours = |child_addr: u64| stack + (child_addr - child_base);
    let mut top = STACK_TOP;
    let mut pairs = [[0u64; 2]; 32];
    if args.len() > pairs.len() {
        return Err(Error::InvalidArgument);
    }
    for (i, a) in args.iter().enumerate() {
        top -= a.len() as u64;
        if top < child_base + 4096 {
            return Err(Error::InvalidArgument);
        }
        // SAFETY: inside our copy of the child's stack (checked above).
        unsafe { core::ptr::copy_nonoverlapping(a.as_ptr(), ours(top) as *mut u8, a.len()) };
        pairs[i] = [top, a.len() as u64];
    }
    let argv = (top - args.len() as u64 * 16) & !15;
    for (i, p) in pairs[..args.len()].iter().enumerate() {
        // SAFETY: as above.
        unsafe { *(ours(argv + i as u64 * 16) as *mut [u64; 2]) = *p };
    }
    Ok((argv - 8, args.len() as u64, argv))
}
