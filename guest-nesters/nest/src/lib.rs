//! The nester library. A nester gives its child a complete environment with the same
//! kernel API it has itself: the child's memory lives in regions the nester owns and maps
//! into the child's empty space (so the nester holds the child's whole state and can
//! interpose on any page), the child gets exactly the capabilities the nester chooses, and
//! every kernel call the child makes goes straight to the kernel: a nester only interposes
//! where it adds something (faults, a subset of IPC, memory). A nester is itself an
//! ordinary program, so nesters run under nesters, unchanged.
#![no_std]

use fluke_abi::procmgr;
use fluke_abi::syscall::layout::{HEAP_BASE, MEMORY_CAP, STACK_TOP, USER_BASE};
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
    /// The region mapped as the child's memory window (`NO_CAP`: none, its memory is its
    /// own), and its id at the memory service if we asked one for it.
    pub window_region: u64,
    pub window_id: Option<u64>,
    /// Which slot of the nester's memory holds them.
    pub slot: usize,
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

/// Each child's memory lives in a slot of this much of the nester's own space: its program
/// from the bottom, its stack at the top, a helper thread's stack below that.
pub const SLOT_SIZE: u64 = 0x1000_0000;
/// The most children a nester has at once.
pub const MAX_CHILDREN: usize = 64;
const WATCHER_STACK: u64 = 16 * 1024;
/// How much of a program one `program_read` copies.
const READ_CHUNK: usize = 16 * 1024;

/// The end of all slots of a nester's children.
pub const SLOTS_END: u64 = BACKING_BASE + MAX_CHILDREN as u64 * SLOT_SIZE;
/// A space's memory window, which a demand pager above provides: its heap (`HEAP_BASE`,
/// where programs map their data) up to the end of the slots where a nester keeps its
/// children's programs and stacks.
pub const WINDOW_BASE: u64 = HEAP_BASE;
pub const WINDOW_END: u64 = SLOTS_END;
pub const WINDOW_SIZE: u64 = WINDOW_END - WINDOW_BASE;

/// The memory service's protocol (the pager serves it on the port a space holds at
/// `MEMORY_CAP`). Capabilities short-circuit the hierarchy here too: each nester asks the
/// pager directly for its child's window, so a page of a process five layers down is
/// served by the pager alone, and nesters in between only pass the port on.
pub mod memory {
    /// Request `[WINDOW]` carrying a read-only capability to the new child's space: reply
    /// `[0, id]` with a region (USE, READ, GRANT) to map at `WINDOW_BASE` in it: its memory
    /// window, paged by the server (which takes it back when the space is gone).
    pub const WINDOW: u64 = 0x3e3_0001;
    /// Request `[RELEASE, id]` carrying the window's region capability (proof that the
    /// asker holds the window): the child is gone; the window's pages are freed.
    pub const RELEASE: u64 = 0x3e3_0002;
}

/// `w0` of the message [`watch_exit`] sends when a child ends: `w1` = the token, `w2` = the
/// exit status.
pub const CHILD_EXITED: u64 = 0xe817_0000;

/// How to start a child beyond its program and arguments.
#[derive(Clone, Copy)]
pub struct Spec<'a> {
    /// `(name in the child, capability of ours)`: what the child holds, besides the
    /// process manager's port it inherits (the same name as ours, if we hold one).
    pub caps: &'a [(u64, u64)],
    /// `(region of ours, address in the child, MAP_* flags)`: further memory the nester
    /// provides (a pager's window); made before the child runs.
    pub maps: &'a [(u64, u64, u64)],
    /// Frames of our budget we keep; the child's space gets the rest (0: half).
    pub keep: u64,
    /// The child's memory window, if we serve it ourselves (the pager): a region to map at
    /// `WINDOW_BASE`. Otherwise, if we hold a memory service's port, we ask it for one.
    pub window: Option<u64>,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            caps: &[],
            maps: &[],
            keep: NESTER_KEEP,
            window: None,
        }
    }
}

/// A memory window for child `space` from the memory service above, if there is one:
/// `(region, id)`. The service gets a read-only capability to the space, so that it can
/// take the window back once the space is gone even if nobody tells it.
fn request_window(space: u64) -> Result<Option<(u64, u64)>, Error> {
    if !sys::holds(MEMORY_CAP, fluke_abi::syscall::objstate::PORT) {
        return Ok(None);
    }
    let watch = sys::cap_copy(space, 0b1010)?; // READ, GRANT
    let m = match sys::ipc_call(MEMORY_CAP, [memory::WINDOW, 0, 0, 0], watch) {
        Ok(m) => m,
        Err(e) => {
            let _ = sys::cap_drop(watch);
            return Err(e);
        }
    };
    if m.words[0] != 0 || m.cap == NO_CAP {
        return Err(Error::from_i64(m.words[0] as i64).unwrap_or(Error::NoMemory));
    }
    Ok(Some((m.cap, m.words[1])))
}

fn release_window(region: u64, id: Option<u64>) {
    if region == NO_CAP {
        return;
    }
    match id {
        // The capability moves with the request (and is dropped by the server).
        Some(id) => {
            if sys::ipc_call(MEMORY_CAP, [memory::RELEASE, id, 0, 0], region).is_err() {
                let _ = sys::cap_drop(region);
            }
        }
        None => {
            let _ = sys::destroy(region);
        }
    }
}

/// Lays out children's memory in the nester's own space, a slot each, reused once a child
/// has been released.
pub struct Nester {
    /// Slots whose range of our space is reserved (demand-zero).
    reserved: u64,
    /// Slots a child holds.
    used: u64,
    /// Slots a child has used (their memory is zeroed before the next one sees it).
    dirty: u64,
}

impl Default for Nester {
    fn default() -> Self {
        Nester::new()
    }
}

impl Nester {
    pub const fn new() -> Nester {
        Nester {
            reserved: 0,
            used: 0,
            dirty: 0,
        }
    }

    fn take_slot(&mut self) -> Result<usize, Error> {
        let slot = (0..MAX_CHILDREN)
            .find(|&i| self.used & (1 << i) == 0)
            .ok_or(Error::Exhausted)?;
        if self.reserved & (1 << slot) == 0 {
            sys::map_anon(slot_base(slot), SLOT_SIZE)?;
            self.reserved |= 1 << slot;
        }
        self.used |= 1 << slot;
        Ok(slot)
    }

    /// Starts program `name` of the image with `args` in a new child environment. `caps`
    /// are `(name in the child, capability of ours)` pairs; the child holds nothing else
    /// (but the process manager's port, see [`Spec::caps`]).
    pub fn start(
        &mut self,
        name: &str,
        args: &[&str],
        caps: &[(u64, u64)],
    ) -> Result<Child, Error> {
        self.start_with(
            name,
            args,
            &Spec {
                caps,
                ..Spec::default()
            },
        )
    }

    pub fn start_with(&mut self, name: &str, args: &[&str], spec: &Spec) -> Result<Child, Error> {
        let slot = self.take_slot()?;
        self.build(slot, name, args, spec).inspect_err(|_| {
            self.used &= !(1 << slot);
            let _ = sys::mem_discard(slot_base(slot), SLOT_SIZE);
            self.dirty |= 1 << slot;
        })
    }

    fn build(
        &mut self,
        slot: usize,
        name: &str,
        args: &[&str],
        spec: &Spec,
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
        if prog_len > SLOT_SIZE - CHILD_STACK - WATCHER_STACK - 0x10_0000 {
            return Err(Error::InvalidArgument);
        }
        let prog = slot_base(slot);
        let stack = slot_base(slot) + SLOT_SIZE - CHILD_STACK;
        if self.dirty & (1 << slot) != 0 {
            // A previous child's memory: under a pager a slot's pages are not dropped with
            // it, so everything the new child can see starts zeroed.
            // SAFETY: the program and stack parts of this child's slot, ours alone now.
            unsafe {
                core::ptr::write_bytes(prog as *mut u8, 0, prog_len as usize);
                core::ptr::write_bytes(stack as *mut u8, 0, CHILD_STACK as usize);
            }
            self.dirty &= !(1 << slot);
        }
        for s in segs {
            let dst = prog + (s.vaddr - USER_BASE);
            // SAFETY: inside the slot reserved for this child; filesz <= memsz was checked.
            let buf = unsafe { core::slice::from_raw_parts_mut(dst as *mut u8, s.filesz as usize) };
            // A few pages per call: a kernel copy whose pages a pager holds must fit in the
            // pager's frames to finish.
            for (i, chunk) in buf.chunks_mut(READ_CHUNK).enumerate() {
                let at = s.offset + (i * READ_CHUNK) as u64;
                if sys::program_read(name, at, chunk)? != chunk.len() {
                    return Err(Error::InvalidArgument);
                }
            }
        }
        let sp = write_args(stack, args)?;

        let program_region = sys::region_create(prog, prog_len, NO_CAP)?;
        let stack_region = sys::region_create(stack, CHILD_STACK, NO_CAP)?;
        let mut child = Child {
            space: NO_CAP,
            thread: NO_CAP,
            pid: 0,
            program_region,
            stack_region,
            window_region: NO_CAP,
            window_id: None,
            slot,
        };
        let built = self.populate(&mut child, name, entry, sp, spec);
        if built.is_err() {
            for cap in [child.space, program_region, stack_region] {
                if cap != NO_CAP {
                    let _ = sys::destroy(cap);
                }
            }
            if child.window_id.is_some() {
                release_window(child.window_region, child.window_id);
            }
        }
        built.map(|_| child)
    }

    fn populate(
        &mut self,
        child: &mut Child,
        child_name: &str,
        entry: u64,
        sp: (u64, u64, u64),
        spec: &Spec,
    ) -> Result<(), Error> {
        let (space, pid) = sys::space_create_named(spec.keep, child_name)?;
        (child.space, child.pid) = (space, pid);
        (child.window_region, child.window_id) = match spec.window {
            Some(r) => (r, None),
            None => match request_window(space)? {
                Some((r, id)) => (r, Some(id)),
                None => (NO_CAP, None),
            },
        };
        sys::mapping_create_flags(
            space,
            child.program_region,
            USER_BASE,
            sys::MAP_WRITE | sys::MAP_EXEC,
        )?;
        sys::mapping_create_flags(
            space,
            child.stack_region,
            STACK_TOP - CHILD_STACK,
            sys::MAP_WRITE,
        )?;
        for &(region, addr, flags) in spec.maps {
            sys::mapping_create_flags(space, region, addr, flags)?;
        }
        if child.window_region != NO_CAP {
            sys::mapping_create_flags(space, child.window_region, WINDOW_BASE, sys::MAP_WRITE)?;
        }
        for inherited in [procmgr::PORT_NAME, MEMORY_CAP] {
            if !spec.caps.iter().any(|&(there, _)| there == inherited) {
                // The nearest process manager and memory service above us (if any).
                match sys::cap_give(space, inherited, inherited, 0b1111) {
                    Ok(_) | Err(Error::BadCap) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for &(there, mine) in spec.caps {
            sys::cap_give(space, there, mine, 0b1111)?;
        }
        let thread = sys::thread_create(space)?;
        child.thread = thread;
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
        Ok(())
    }

    /// Forgets a child that has ended (or ends it): its space, its memory regions, and the
    /// frames of our slot, which the next child reuses.
    pub fn release(&mut self, child: &Child) {
        for cap in [child.space, child.program_region, child.stack_region] {
            let _ = sys::destroy(cap);
        }
        if child.window_id.is_some() {
            release_window(child.window_region, child.window_id);
        }
        let _ = sys::mem_discard(slot_base(child.slot), SLOT_SIZE);
        self.used &= !(1 << child.slot);
        self.dirty |= 1 << child.slot;
    }
}

fn slot_base(slot: usize) -> u64 {
    BACKING_BASE + slot as u64 * SLOT_SIZE
}

/// Starts a thread of ours that waits for `child` to end and then sends
/// `[CHILD_EXITED, token, status]` to `port` (reliably), so that a nester serving requests
/// on a port set learns of its child's end as one more message. Returns the thread's
/// capability: destroy it once the message has arrived.
pub fn watch_exit(child: &Child, port: u64, token: u64) -> Result<u64, Error> {
    let top = slot_base(child.slot) + SLOT_SIZE - CHILD_STACK - 0x10_0000;
    let watch = top - 64;
    // SAFETY: the top of this child's watcher stack, in its slot of our reserved memory;
    // the watcher thread reads it once, before using its stack below.
    unsafe { *(watch as *mut [u64; 3]) = [child.pid, port, token] };
    fluke_rt::thread::start(watcher, watch, watch - 64)
}

extern "C" fn watcher(watch: u64) -> ! {
    // SAFETY: written by watch_exit just before starting this thread.
    let [pid, port, token] = unsafe { *(watch as *const [u64; 3]) };
    let status = sys::wait(pid).unwrap_or(procmgr::KILLED_STATUS);
    let _ = sys::ipc_send_reliable(
        port,
        [CHILD_EXITED, token, status as i64 as u64, 0],
        NO_CAP,
        &[],
    );
    loop {
        sys::sleep_ns(3_600_000_000_000); // until the nester destroys this thread
    }
}

/// A nester's command line: `[-key=value ...] [>] PROGRAM [ARGS...]` (the `>` lets stacks
/// read `pager > procmgr > app`).
pub struct Command<'a> {
    pub program: &'a str,
    pub args: [&'a str; 95],
    pub nargs: usize,
}

impl<'a> Command<'a> {
    /// Parses `args`, calling `option(key, value)` for each leading option; `Err` with a
    /// message for a bad command line.
    pub fn parse(
        args: &fluke_rt::Args,
        mut option: impl FnMut(&str, &str) -> Result<(), &'static str>,
    ) -> Result<Command<'a>, &'static str> {
        let mut i = 0;
        while let Some(a) = args.get(i).filter(|a| a.starts_with('-')) {
            let (k, v) = a[1..].split_once('=').unwrap_or((&a[1..], ""));
            option(k, v)?;
            i += 1;
        }
        if args.get(i) == Some(">") {
            i += 1;
        }
        let program = args.get(i).ok_or("no program to run")?;
        let mut cmd = Command {
            program,
            args: [""; 95],
            nargs: 0,
        };
        for a in (i + 1..args.len()).filter_map(|j| args.get(j)) {
            if cmd.nargs == cmd.args.len() {
                return Err("too many arguments");
            }
            cmd.args[cmd.nargs] = a;
            cmd.nargs += 1;
        }
        Ok(cmd)
    }

    pub fn args(&self) -> &[&'a str] {
        &self.args[..self.nargs]
    }
}

/// Writes the arguments at the top of the child's stack (our copy at `stack`) the way the
/// kernel does for `spawn`: the strings, then `(ptr, len)` pairs. Returns the child's
/// `(rsp, argc, argv)`.
fn write_args(stack: u64, args: &[&str]) -> Result<(u64, u64, u64), Error> {
    let child_base = STACK_TOP - CHILD_STACK;
    let ours = |child_addr: u64| stack + (child_addr - child_base);
    let mut top = STACK_TOP;
    let mut pairs = [[0u64; 2]; 96];
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
