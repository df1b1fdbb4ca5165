//! The kernel-call ABI shared by the kernel and the user runtime.
//!
//! A call is the `syscall` instruction with the call number in `rax` and up to six
//! arguments in `rdi, rsi, rdx, r10, r8, r9` (`rcx` and `r11` are taken by the instruction).
//! The result comes back in `rax`: a value `>= 0`, or `-(Error as i64)`. A second result,
//! where a call has one, comes back in `rdx`. Every other register is preserved.
//!
//! A call that has to wait (wait, sleep) leaves the thread's registers so that re-running
//! the `syscall` instruction continues it: the kernel keeps no hidden state for it.

/// Call numbers.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Does nothing; the dispatcher's round trip (benchmarks).
    Null = 0,
    /// `console_write(ptr, len) -> len`
    ConsoleWrite = 1,
    /// `exit(status)`: ends the calling process.
    Exit = 2,
    /// `yield()`: lets the next runnable thread run.
    Yield = 3,
    /// `time() -> nanoseconds since boot`
    Time = 4,
    /// `spawn(name_ptr, name_len, args_ptr, args_len) -> pid`: starts a program of the image;
    /// `args` is a buffer of NUL-separated arguments.
    Spawn = 5,
    /// `wait(pid) -> status`: waits for a child to exit.
    Wait = 6,
    /// `sleep(nanoseconds)`
    Sleep = 7,
    /// `map_anon(addr, len) -> addr`: reserves demand-zero memory (page-aligned).
    MapAnon = 8,
    /// `bench(what, arg) -> value`: kernel-side measurement helpers (see `BenchOp`).
    Bench = 9,
    /// `sleep_until(deadline_ns)`: what `sleep` becomes while it waits (restartable form).
    SleepUntil = 10,
    /// `port_set_create() -> name`
    PortSetCreate = 11,
    /// `port_create(port_set, badge) -> name`: a port whose messages arrive at `port_set`
    /// tagged with `badge`.
    PortCreate = 12,
    /// `ipc_call(port, w0, w1, w2, w3, cap)`: sends and waits for the reply, which comes back
    /// in the same registers (see [`ipc`]).
    IpcCall = 13,
    /// `ipc_wait(port_set) -> badge, w0..w3, cap`
    IpcWait = 14,
    /// `ipc_reply_wait(port_set, w0..w3, cap) -> badge, w0..w3, cap`: replies to the last
    /// caller and waits for the next message, in one kernel entry.
    IpcReplyWait = 15,
    /// `ipc_send(port, w0..w3, cap) -> delivered`: one-way, at most once (dropped if no
    /// thread waits on the port's set).
    IpcSend = 16,
    /// `cap_drop(name)`
    CapDrop = 17,
    /// `cap_copy(name, rights) -> new name` (rights can only shrink).
    CapCopy = 18,
    /// `thread_create(space) -> thread`: a new, stopped thread in a space.
    ThreadCreate = 19,
    /// `thread_stop(thread)`: stops it; a thread blocked in a kernel call is taken out of
    /// the call, which it re-executes when resumed (its registers say which call).
    ThreadStop = 20,
    /// `thread_resume(thread)`
    ThreadResume = 21,
    /// `thread_get_state(thread, &mut ThreadRegs, part)`: all of a stopped thread's state:
    /// with `part` = [`STATE_REGS`] (0) its registers, with [`STATE_FPU`] its x87/SSE state
    /// as the 512-byte FXSAVE image ([`FPU_STATE_BYTES`]), with [`STATE_XSTATE`] all of its
    /// floating-point and vector state (AVX and up where the platform gives them to user
    /// code) as an XSAVE standard-format image into a buffer of [`XSTATE_MAX_BYTES`]; the
    /// call returns the image's length (0 for the other parts).
    ThreadGetState = 22,
    /// `thread_set_state(thread, &ThreadRegs, part)`: the same parts. Registers are checked
    /// and sanitised on the way in (a kernel RIP or a non-canonical FS or GS base is refused,
    /// privileged RFLAGS bits dropped); in an FPU or extended-state image MXCSR is masked to
    /// the bits the CPU supports and the XSAVE header to the components the kernel switches.
    /// [`STATE_XSTATE`] reads the length `thread_get_state` returns on this machine.
    ThreadSetState = 23,
    /// `destroy(cap)`: destroys the object (threads today); other capabilities to it go stale.
    Destroy = 24,
    /// `mutex_create() -> name`
    MutexCreate = 25,
    /// `mutex_lock(mutex)`: waits while another thread holds it.
    MutexLock = 26,
    /// `mutex_unlock(mutex)`: only by the holder.
    MutexUnlock = 27,
    /// `cond_create() -> name`
    CondCreate = 28,
    /// `cond_wait(cond, mutex)`: releases the mutex, waits for a signal, re-takes the mutex.
    /// While it waits the thread's registers say `cond_rewait` (the mutex is no longer held),
    /// once signalled `mutex_lock`: re-executing the call at any point does the rest.
    CondWait = 29,
    /// `cond_signal(cond)`: wakes one waiter.
    CondSignal = 30,
    /// `cond_broadcast(cond)`: wakes every waiter.
    CondBroadcast = 31,
    /// `cond_rewait(cond, mutex)`: what `cond_wait` becomes after releasing the mutex.
    CondRewait = 32,
    /// `thread_set_keeper(thread, port)`: the thread's exception keeper; `NO_CAP` clears it.
    /// Besides the CPU's faults, the keeper gets a stack fault (vector 12, error code 0) for
    /// a thread about to return to user mode with a non-canonical RSP, which the kernel never
    /// does (a kernel call made with one is not made, and re-executes once RSP is fixed).
    ThreadSetKeeper = 33,
    /// `region_create(addr, size, keeper_port) -> name`: exports `[addr, addr + size)` of the
    /// caller's memory; faults on its pages not yet present go to the keeper (or `NO_CAP`).
    RegionCreate = 34,
    /// `mapping_create(space, region, addr, flags) -> name`: makes the region appear at
    /// `addr` in `space` (pages are shared with the region's owner, brought in on fault).
    /// `flags`: `MAP_WRITE` (1), `MAP_EXEC` (2), and an allowance in the bits at
    /// [`MAP_ALLOWANCE_SHIFT`] (0: none).
    /// Errors: `InvalidArgument` (bad flags, or the range overlaps a mapping of `space`),
    /// `BadAddress`, `TooManyViews` (a page would have more than [`MAX_VIEWS`] views, counting
    /// every chain of mappings it is passed down, or would be mapped into itself: the bound
    /// that keeps `mem_discard`, `mem_referenced` and unmapping bounded; or the allowance
    /// does not fit, or is less than the views the mapping gives at once), `Exhausted`,
    /// `NoMemory`, and the capability errors.
    MappingCreate = 35,
    /// `space_create(keep, name_ptr, name_len in r10) -> name` (child id in `rdx`): an
    /// empty child space, called `name` in reports (none: "space"). Its budget is
    /// lent from the caller's: everything but `keep` frames, or with `keep` = 0 half of what
    /// the caller has left (at most 32 MiB, as for `spawn`), or with [`SPACE_EXACT`]` | n`
    /// exactly `n` frames.
    SpaceCreate = 36,
    /// `cap_give(space, name_there, my_cap, rights)`: puts a copy of one of the caller's
    /// capabilities into a space's table under a chosen name.
    CapGive = 37,
    /// `cap_take(space, name_there) -> my name`: a copy of a capability in a space's table
    /// (how a parent reads a child's whole table, name by name).
    CapTake = 38,
    /// `program_read(name_ptr, name_len, offset, buf, len) -> bytes`: reads a program of the
    /// image (for user-level loaders).
    ProgramRead = 39,
    /// `obj_get_state(cap, &mut ObjState)`: the state of a port, port set, mutex,
    /// condition, region, mapping or space (threads: `thread_get_state`).
    ObjGetState = 40,
    /// `obj_set_state(cap, &ObjState)`: sets what of it is settable.
    ObjSetState = 41,
    /// `ipc_send_reliable(port, w0..w3, cap)`: one-way, exactly once: waits until a thread
    /// of the port's set has taken the message (no reply).
    IpcSendReliable = 42,
    /// `ref_create(cap) -> name`: a Reference object holding a copy of `cap`.
    RefCreate = 43,
    /// `ref_get(reference) -> name`: a copy of the capability a Reference holds.
    RefGet = 44,
    /// `mem_discard(addr, len, save)`: drops the caller's pages in the range, from every
    /// space its regions map them into as well (frames it owned return to its budget); its
    /// demand-zero ranges stay, so the next touch gets a zero page. With `save` != 0 (one
    /// page) its contents are copied there first, in the same call. How a pager evicts.
    MemDiscard = 45,
    /// `mem_referenced(addr) -> 0 | 1`: whether a space mapping the caller's page at `addr`
    /// has touched it since the last ask (clears the bits; the caller's own accesses do not
    /// count). A clock pager's reference bit.
    MemReferenced = 46,
    /// `mem_install(addr, src)`: makes the caller's absent demand-zero page at `addr`
    /// present holding the 4 KiB at `src`, in one call (nothing mapping it sees it
    /// half-filled). How a pager brings a page back.
    MemInstall = 47,
    /// `devmem_map(devmem, space, addr, flags, offset, len)`: maps the part
    /// `[offset, offset + len)` of a device-memory object's window (page-aligned; `len` 0:
    /// to the window's end, so `offset` and `len` 0 map the whole window) into `space` (a
    /// space capability with WRITE, or [`SELF_SPACE`]) at `addr`, uncached unless `flags`
    /// has [`DEVMEM_CACHED`]; `flags` also [`DEVMEM_WRITE`]; never executable. Needs USE on
    /// the object. `Busy` if a page of the part is mapped anywhere with the other memory
    /// type (a page is never both uncached and cached); `InvalidArgument` for a part
    /// outside the window.
    DevmemMap = 48,
    /// `irq_bind(irq, port)`: each interrupt of the line then arrives on `port` as a
    /// message `[fault::INTERRUPT, line, count, 0]`; `Busy` if the line is bound already.
    /// Needs USE on both.
    IrqBind = 49,
    /// `irq_ack(irq)`: the driver has handled the interrupt it was sent; the line, masked
    /// since it fired, is unmasked. `InvalidArgument` if no interrupt awaits an ack.
    IrqAck = 50,
}

/// `devmem_map` flags. [`DEVMEM_CACHED`] is for the part of a window that is memory rather
/// than registers: a device's DMA area or a region shared with another VM, which a driver
/// reads and writes at memory speed. A driver maps its registers and its memory as two
/// parts of the window, each with its own type; the kernel refuses a page mapped with both.
pub const DEVMEM_WRITE: u64 = 1;
pub const DEVMEM_CACHED: u64 = 4;

/// The state of a non-thread object as `obj_get_state` / `obj_set_state` exchange it.
/// Objects it refers to are named by the caller's own capability names ([`ipc::NO_CAP`] if
/// the caller holds none), so the state means the same after the caller rebuilds them.
pub mod objstate {
    /// `words[0]`: the object type.
    pub const PORT: u64 = 1; // [PORT, badge, port set]
    pub const PORT_SET: u64 = 2; // [PORT_SET]
    pub const MUTEX: u64 = 3; // [MUTEX, held (0/1), holder thread]
    pub const CONDITION: u64 = 4; // [CONDITION]
    pub const REGION: u64 = 5; // [REGION, base, size, keeper port]
    pub const MAPPING: u64 = 6; // [MAPPING, target space, base, region, flags]
    pub const SPACE: u64 = 7; // [SPACE, budget frames, used frames, available frames]
    pub const THREAD: u64 = 8; // [THREAD] (its state: thread_get_state)
    pub const REFERENCE: u64 = 9; // [REFERENCE, the object it holds]
    pub const BENCH: u64 = 10; // [BENCH] (the benchmark capability: INIT_BENCH_CAP)
    pub const DEVICE_MEMORY: u64 = 11; // [DEVICE_MEMORY, base, size, line of its word]
    /// [INTERRUPT, line, port (NO_CAP: unbound), flags (INTERRUPT_OUTSTANDING |
    /// INTERRUPT_QUEUED), interrupts so far]
    pub const INTERRUPT: u64 = 12;
    /// An interrupt was sent (or is to be) and not acknowledged yet: the line is masked.
    pub const INTERRUPT_OUTSTANDING: u64 = 1;
    /// It has not been taken by a thread of the port's set yet.
    pub const INTERRUPT_QUEUED: u64 = 2;
    pub const WORDS: usize = 6;
    /// In a mutex's state: held by the calling thread itself (which has no name for itself).
    pub const SELF_THREAD: u64 = u64::MAX - 1;
}

/// Fault messages the kernel sends to keepers on a faulting thread's behalf. The thread
/// waits for the reply and then re-executes the faulting instruction; while it waits its
/// registers are exactly those of the fault, so it can be stopped, changed or destroyed.
pub mod fault {
    /// `w0` of a fault message: an exception (`w1` vector, `w2` error code, `w3` address
    /// for a page fault, else RIP).
    pub const EXCEPTION: u64 = 1;
    /// `w0`: a page of a region is not present (`w1` offset in the region, `w2` error code,
    /// `w3` faulting address in the faulting space).
    pub const REGION: u64 = 2;
    /// `w0` of an interrupt message (`irq_bind`): `w1` the line, `w2` how many interrupts
    /// the line has had (this one included). Not a fault: nothing waits for a reply; the
    /// line stays masked until `irq_ack`.
    pub const INTERRUPT: u64 = 3;
}

/// `thread_create(SELF_SPACE)`: a thread in the caller's own space (a server's helper
/// threads); `obj_get_state(SELF_SPACE)`: its own budget. No capability names the caller's
/// own space otherwise.
pub const SELF_SPACE: u64 = u64::MAX - 2;

/// `thread_get_state`/`thread_set_state` part: the registers ([`ThreadRegs`]).
pub const STATE_REGS: u64 = 0;
/// `thread_get_state`/`thread_set_state` part: the x87/SSE state (FXSAVE layout).
pub const STATE_FPU: u64 = 1;
/// Size of the [`STATE_FPU`] image.
pub const FPU_STATE_BYTES: usize = 512;
/// `thread_get_state`/`thread_set_state` part: the whole floating-point and vector state, as
/// an XSAVE standard-format image (legacy region, header, components at the CPU's offsets).
pub const STATE_XSTATE: u64 = 2;
/// The largest [`STATE_XSTATE`] image (the buffer a caller offers).
pub const XSTATE_MAX_BYTES: usize = 4096;

/// `space_create(SPACE_EXACT | n)`: lend the child exactly `n` frames.
pub const SPACE_EXACT: u64 = 1 << 62;

/// How many views one page can have at most: places it appears in other spaces (or its own)
/// through chains of mappings, each region passing on what is mapped into it. A
/// `mapping_create` that would pass it fails with [`Error::TooManyViews`]. The kernel's
/// count is conservative: a region mapped into a range counts every view of every region of
/// the target overlapping that range (`fluke_kcore::mapping`).
pub const MAX_VIEWS: u32 = 1024;

/// `mapping_create`'s flags from this bit up: the mapping's views allowance (0: none), at
/// most [`MAX_VIEWS`]. Like a budget: the region counts the whole allowance from the start,
/// and the target's own mappings of that memory may use up to it and no more, so a child
/// cannot use up the views of a region its parent also maps into its siblings. Without one
/// the mapping passes on whatever the target's mappings add (`fluke_kcore::mapping`).
pub const MAP_ALLOWANCE_SHIFT: u32 = 16;
/// The allowance bits of `mapping_create`'s flags.
pub const MAP_ALLOWANCE_MASK: u64 = 0xffff << MAP_ALLOWANCE_SHIFT;

/// `spawn`'s `r9`: the number of capabilities to hand the child, ORed with this flag to
/// also receive capabilities to the child's space (`r10`) and main thread (`rdx`).
pub const SPAWN_WANT_CAPS: u64 = 1 << 63;

/// The whole user-visible state of a thread, as `thread_get_state` / `thread_set_state`
/// exchange it. There is no other per-thread kernel state: a thread blocked in a call is
/// described by these registers (RIP on its `syscall`, the call's arguments in place).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub rip: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

/// The register layout of IPC calls: the kernel-call number in `rax`, the port or port set
/// in `rdi`, four message words in `rsi, rdx, r10, r8`, a capability name to transfer in
/// `r9` ([`ipc::NO_CAP`] for none; the capability moves to the receiver, who gets its own
/// name for it in `r9`). A received message comes back in the same registers with the
/// port's badge in `rax`. Small messages never touch memory.
///
/// Data beyond the words (at most [`ipc::MAX_DATA`] bytes): the sender points `r12` at it
/// with its length in `r13` (0: none); a receiver offers a buffer in `r14` with its
/// capacity in `r15`. On receipt `r13` holds the length sent and `r15` the length that
/// arrived (less if the buffer was too small). `ipc_call` sends from `r12/r13` and takes the
/// reply into `r14/r15`.
pub mod ipc {
    pub const NO_CAP: u64 = u64::MAX;
    pub const MAX_DATA: usize = 4096;
}

impl Call {
    pub const fn from_u64(n: u64) -> Option<Call> {
        Some(match n {
            0 => Call::Null,
            1 => Call::ConsoleWrite,
            2 => Call::Exit,
            3 => Call::Yield,
            4 => Call::Time,
            5 => Call::Spawn,
            6 => Call::Wait,
            7 => Call::Sleep,
            8 => Call::MapAnon,
            9 => Call::Bench,
            10 => Call::SleepUntil,
            11 => Call::PortSetCreate,
            12 => Call::PortCreate,
            13 => Call::IpcCall,
            14 => Call::IpcWait,
            15 => Call::IpcReplyWait,
            16 => Call::IpcSend,
            17 => Call::CapDrop,
            18 => Call::CapCopy,
            19 => Call::ThreadCreate,
            20 => Call::ThreadStop,
            21 => Call::ThreadResume,
            22 => Call::ThreadGetState,
            23 => Call::ThreadSetState,
            24 => Call::Destroy,
            25 => Call::MutexCreate,
            26 => Call::MutexLock,
            27 => Call::MutexUnlock,
            28 => Call::CondCreate,
            29 => Call::CondWait,
            30 => Call::CondSignal,
            31 => Call::CondBroadcast,
            32 => Call::CondRewait,
            33 => Call::ThreadSetKeeper,
            34 => Call::RegionCreate,
            35 => Call::MappingCreate,
            36 => Call::SpaceCreate,
            37 => Call::CapGive,
            38 => Call::CapTake,
            39 => Call::ProgramRead,
            40 => Call::ObjGetState,
            41 => Call::ObjSetState,
            42 => Call::IpcSendReliable,
            43 => Call::RefCreate,
            44 => Call::RefGet,
            45 => Call::MemDiscard,
            46 => Call::MemReferenced,
            47 => Call::MemInstall,
            48 => Call::DevmemMap,
            49 => Call::IrqBind,
            50 => Call::IrqAck,
            _ => return None,
        })
    }
}

/// Call numbers handled by the entry code itself, without the dispatcher: the platform's
/// floor, measured by the same kernel in the same run. `FLOOR_SYSCALL` is the bare entry
/// and return, for a thread that has enabled it with `bench(FloorCalls, cap)`; for any
/// other thread it is an unknown call.
pub const FLOOR_SYSCALL: u64 = 0xf100;
/// Bare address-space switch between the two threads of the pair `BenchOp::SwitchFloorJoin`
/// forms; for a thread outside the pair it is an unknown call.
pub const FLOOR_SWITCH: u64 = 0xf101;

/// The name under which the first process (init) holds the benchmark capability, the only
/// one the kernel makes: the floor operations of [`Call::Bench`] need it (with USE), and
/// init may pass it on (with GRANT) like any other capability. It is the table's last name,
/// so every name a program gets from a create call is the same as without it.
pub const INIT_BENCH_CAP: u64 = 255;

/// Operations of [`Call::Bench`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchOp {
    /// `bench(SwitchFloorJoin, cap)`, `cap` the benchmark capability: joins the bare switch
    /// pair (`FLOOR_SWITCH`), and enables `FLOOR_SYSCALL` for the caller as `FloorCalls`
    /// does. Completes the pair if another thread waits (returns 1, the caller running in
    /// the pair), else waits in the call for a partner (returns 0 when resumed, by the
    /// partner's switch or by the scheduler).
    SwitchFloorJoin = 1,
    /// The TSC frequency in kHz, for user-side timing with RDTSC (needs no capability).
    TscKhz = 2,
    /// `bench(FloorCalls, cap)`, `cap` the benchmark capability: enables `FLOOR_SYSCALL`
    /// for the calling thread for the rest of its life.
    FloorCalls = 3,
}

/// Error codes, returned negated in `rax`.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Unknown call number.
    NoSuchCall = 1,
    /// A pointer or length does not lie in the caller's mapped memory.
    BadAddress = 2,
    /// An argument is out of range.
    InvalidArgument = 3,
    /// The kernel (or the caller's quota) is out of memory.
    NoMemory = 4,
    /// No program of that name in the image.
    NoSuchProgram = 5,
    /// No such child process.
    NoSuchChild = 6,
    /// A table is full (processes, threads, mappings, capabilities).
    Exhausted = 7,
    /// The capability name is not in the caller's table.
    BadCap = 8,
    /// The capability names an object of another type.
    WrongType = 9,
    /// The capability lacks a right the call needs.
    NoRights = 10,
    /// The other side of an IPC went away.
    PeerGone = 11,
    /// `mapping_create`: a page of the region would be seen through more than [`MAX_VIEWS`]
    /// chains of mappings, or through itself (the region mapped into memory it provides).
    /// Nothing was changed.
    TooManyViews = 12,
    /// `irq_bind`: the interrupt line is bound to a port already (destroy or unbind it
    /// through `obj_set_state` first).
    Busy = 13,
}

impl Error {
    pub const fn from_i64(v: i64) -> Option<Error> {
        Some(match v {
            1 => Error::NoSuchCall,
            2 => Error::BadAddress,
            3 => Error::InvalidArgument,
            4 => Error::NoMemory,
            5 => Error::NoSuchProgram,
            6 => Error::NoSuchChild,
            7 => Error::Exhausted,
            8 => Error::BadCap,
            9 => Error::WrongType,
            10 => Error::NoRights,
            11 => Error::PeerGone,
            12 => Error::TooManyViews,
            13 => Error::Busy,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Error::NoSuchCall => "no such call",
            Error::BadAddress => "bad address",
            Error::InvalidArgument => "invalid argument",
            Error::NoMemory => "out of memory",
            Error::NoSuchProgram => "no such program",
            Error::NoSuchChild => "no such child",
            Error::Exhausted => "table full",
            Error::BadCap => "bad capability name",
            Error::WrongType => "wrong object type",
            Error::NoRights => "missing rights",
            Error::PeerGone => "peer gone",
            Error::TooManyViews => "too many views of a page",
            Error::Busy => "busy",
        }
    }
}

/// Encodes a call result for `rax`.
pub const fn encode(r: Result<u64, Error>) -> u64 {
    match r {
        Ok(v) => v,
        Err(e) => (-(e as i64)) as u64,
    }
}

/// Decodes `rax` after a call. Values in `[-4095, -1]` are errors (as on Linux), so results
/// up to `2^64 - 4096` are representable.
pub const fn decode(rax: u64) -> Result<u64, Error> {
    let v = rax as i64;
    if v < 0 && v >= -4095 {
        match Error::from_i64(-v) {
            Some(e) => Err(e),
            None => Err(Error::InvalidArgument),
        }
    } else {
        Ok(rax)
    }
}

/// Exit status the kernel reports for a process it killed because of a fault: 128 + vector.
pub const fn killed_status(vector: u8) -> i32 {
    128 + vector as i32
}

/// Exit status of a process ended because its parent ended.
pub const KILLED_WITH_PARENT: i32 = 137;

/// User address-space layout.
pub mod layout {
    /// Programs are linked from here (guest-nesters/runtime/user.ld).
    pub const USER_BASE: u64 = 0x40_0000;
    /// Exclusive end of the user half.
    pub const USER_END: u64 = 0x0000_8000_0000_0000;
    /// Top of the first thread's stack; the stack grows down from here.
    pub const STACK_TOP: u64 = 0x0000_7fff_0000_0000;
    pub const STACK_SIZE: u64 = 64 * 1024;
    /// The kernel's return page (code) and this space's return slots, mapped read-only into
    /// every space (pvm.md §11 H2). User mappings must stay below this.
    pub const RETURN_PAGE: u64 = 0x0000_7fff_ffff_0000;
    /// Highest address a user mapping may end at.
    pub const USER_MAP_END: u64 = RETURN_PAGE;
    /// Where programs map their data (`map_anon`): from here up to the nesters' slots
    /// (fluke-nest) is a space's memory window, which a demand pager above provides.
    pub const HEAP_BASE: u64 = 0x1000_0000;
    /// The capability name of the memory service's port (a demand pager above), which
    /// nesters pass on like the process manager's: a nester asks it for each child's
    /// memory window, so everything below a pager is paged, at any depth.
    pub const MEMORY_CAP: u64 = 254;
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_call_number_round_trips_and_the_next_is_unknown() {
        let mut n = 0;
        while let Some(call) = Call::from_u64(n) {
            assert_eq!(call as u64, n);
            n += 1;
        }
        assert_eq!(n, Call::IrqAck as u64 + 1, "a gap in the call numbers");
        for unknown in [n, n + 1, 0xf100, 0xf101, u64::MAX, 1 << 32] {
            assert_eq!(Call::from_u64(unknown), None, "{unknown:#x}");
        }
    }

    use super::*;

    #[test]
    fn results_round_trip() {
        for e in [
            Error::NoSuchCall,
            Error::BadAddress,
            Error::InvalidArgument,
            Error::NoMemory,
            Error::NoSuchProgram,
            Error::NoSuchChild,
            Error::Exhausted,
            Error::BadCap,
            Error::WrongType,
            Error::NoRights,
            Error::PeerGone,
            Error::TooManyViews,
            Error::Busy,
        ] {
            assert_eq!(decode(encode(Err(e))), Err(e));
            assert_eq!(Error::from_i64(e as i64), Some(e));
        }
        assert_eq!(decode(encode(Ok(0))), Ok(0));
        assert_eq!(decode(encode(Ok(u64::MAX - 4095))), Ok(u64::MAX - 4095));
        for n in 0..=50 {
            assert_eq!(Call::from_u64(n).map(|c| c as u64), Some(n));
        }
        assert_eq!(Call::from_u64(51), None);
    }
}
