//! Kernel-call wrappers (the ABI is documented in fluke_abi::syscall).

use core::arch::asm;
use fluke_abi::syscall::{decode, BenchOp, Call, Error, FLOOR_SWITCH, FLOOR_SYSCALL};

/// A raw kernel call. Public for tests that pass garbage on purpose.
///
/// # Safety
/// Pointers passed must be valid for what the call does with them (the kernel checks them
/// anyway; this is about the program's own memory being overwritten as asked).
#[inline(always)]
pub unsafe fn raw(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let ret: u64;
    asm!(
        "syscall",
        inlateout("rax") nr => ret,
        in("rdi") a0,
        in("rsi") a1,
        inlateout("rdx") a2 => _,
        in("r10") a3,
        in("r8") 0u64,
        in("r9") 0u64,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

/// A kernel call with all six argument registers (`rdi, rsi, rdx, r10, r8, r9`).
///
/// # Safety
/// As [`raw`]: pointer arguments must be valid for what the call does with them.
pub unsafe fn raw6(nr: u64, a: [u64; 6]) -> u64 {
    let ret: u64;
    asm!(
        "syscall",
        inlateout("rax") nr => ret,
        in("rdi") a[0],
        in("rsi") a[1],
        inlateout("rdx") a[2] => _,
        in("r10") a[3],
        in("r8") a[4],
        in("r9") a[5],
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

fn call(c: Call, a0: u64, a1: u64, a2: u64, a3: u64) -> Result<u64, Error> {
    // SAFETY: every wrapper below passes pointers from valid Rust references.
    decode(unsafe { raw(c as u64, a0, a1, a2, a3) })
}

pub fn null() -> Result<u64, Error> {
    call(Call::Null, 0, 0, 0, 0)
}

pub fn console_write(bytes: &[u8]) -> Result<u64, Error> {
    call(
        Call::ConsoleWrite,
        bytes.as_ptr() as u64,
        bytes.len() as u64,
        0,
        0,
    )
}

pub fn exit(status: i32) -> ! {
    let _ = call(Call::Exit, status as i64 as u64, 0, 0, 0);
    unreachable!("exit returned")
}

pub fn yield_now() {
    let _ = call(Call::Yield, 0, 0, 0, 0);
}

/// Nanoseconds since boot.
pub fn time_ns() -> u64 {
    call(Call::Time, 0, 0, 0, 0).unwrap_or(0)
}

/// Starts program `name` of the image with `args`; returns the child's id.
pub fn spawn(name: &str, args: &[&str]) -> Result<u64, Error> {
    spawn_with_caps(name, args, &[])
}

/// Waits for a child to exit and returns its status.
pub fn wait(child: u64) -> Result<i32, Error> {
    call(Call::Wait, child, 0, 0, 0).map(|s| s as i64 as i32)
}

pub fn sleep_ns(ns: u64) {
    let _ = call(Call::Sleep, ns, 0, 0, 0);
}

/// Reserves demand-zero memory at a page-aligned address.
pub fn map_anon(addr: u64, len: u64) -> Result<u64, Error> {
    call(Call::MapAnon, addr, len, 0, 0)
}

/// Drops the caller's pages in `[addr, addr + len)`, from every space its regions map
/// them into as well; the next touch gets a zero page (or faults to the region's keeper).
pub fn mem_discard(addr: u64, len: u64) -> Result<u64, Error> {
    call(Call::MemDiscard, addr, len, 0, 0)
}

/// Copies our page at `addr` into `save` and drops it (as [`mem_discard`]), in one call.
pub fn mem_evict(addr: u64, save: &mut [u8; 4096]) -> Result<u64, Error> {
    call(Call::MemDiscard, addr, 4096, save.as_mut_ptr() as u64, 0)
}

/// Makes our absent demand-zero page at `addr` present holding `data`, in one call.
pub fn mem_install(addr: u64, data: &[u8; 4096]) -> Result<u64, Error> {
    call(Call::MemInstall, addr, data.as_ptr() as u64, 0, 0)
}

/// Whether a space mapping our page at `addr` touched it since the last ask (clears it).
pub fn mem_referenced(addr: u64) -> Result<bool, Error> {
    call(Call::MemReferenced, addr, 0, 0, 0).map(|v| v != 0)
}

pub fn bench(op: BenchOp, arg: u64) -> Result<u64, Error> {
    call(Call::Bench, op as u64, arg, 0, 0)
}

/// The benchmark capability's name in init's table: the floor calls need it.
pub use fluke_abi::syscall::INIT_BENCH_CAP;

/// Opens [`floor_syscall`] to the calling thread; `bench_cap` names the benchmark
/// capability.
pub fn enable_floor_calls(bench_cap: u64) -> Result<(), Error> {
    bench(BenchOp::FloorCalls, bench_cap).map(|_| ())
}

/// Joins the bare-switch pair ([`floor_switch`]): `Ok(1)` if it completed the pair (the
/// caller runs in it), `Ok(0)` when resumed after waiting in the call for a partner.
pub fn floor_join(bench_cap: u64) -> Result<u64, Error> {
    bench(BenchOp::SwitchFloorJoin, bench_cap)
}

/// The platform floor: SYSCALL straight back to SYSRETQ in the entry code. True if the
/// floor path ran (only for a thread that opened it: [`enable_floor_calls`]).
#[inline(always)]
pub fn floor_syscall() -> bool {
    let ret: u64;
    // SAFETY: the floor call touches no memory; rcx/r11 are clobbered by SYSCALL.
    unsafe {
        asm!("syscall", inlateout("rax") FLOOR_SYSCALL => ret, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

/// The bare switch to the other thread of the floor pair: true once the other thread has
/// switched back; false if there is no active pair with this thread in it (never formed,
/// or dissolved because the scheduler ran), or if it ended while this thread waited. The kernel saves and restores every register
/// of both threads.
#[inline(always)]
pub fn floor_switch() -> bool {
    let ret: u64;
    // SAFETY: the kernel returns with every register as it was but RAX (the result) and RCX
    // and R11 (clobbered by SYSCALL); the asm declares them.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") FLOOR_SWITCH => ret,
            lateout("rcx") _, lateout("r11") _, options(nostack),
        );
    }
    ret == 0
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A received IPC message: the port's badge (0 for a reply), four words, the name of a
/// transferred capability (`NO_CAP` if none), and of the data: how much was sent and how
/// much arrived in the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    pub badge: u64,
    pub words: [u64; 4],
    pub cap: u64,
    pub data_sent: u64,
    pub data_got: u64,
}

pub use fluke_abi::syscall::ipc::{MAX_DATA, NO_CAP};

/// A kernel call with the IPC register layout: `rdi` object, `rsi, rdx, r10, r8` words,
/// `r9` capability, `r12/r13` data to send, `r14/r15` buffer to receive into.
#[inline(always)]
fn ipc_full(
    nr: Call,
    obj: u64,
    words: [u64; 4],
    cap: u64,
    send: &[u8],
    recv: &mut [u8],
) -> Result<Msg, Error> {
    let (rax, w0, w1, w2, w3, c, sent, got): (u64, u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: the kernel reads `send` and writes at most `recv.len()` bytes into `recv`.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as u64 => rax,
            in("rdi") obj,
            inlateout("rsi") words[0] => w0,
            inlateout("rdx") words[1] => w1,
            inlateout("r10") words[2] => w2,
            inlateout("r8") words[3] => w3,
            inlateout("r9") cap => c,
            in("r12") send.as_ptr() as u64,
            inlateout("r13") send.len() as u64 => sent,
            in("r14") recv.as_mut_ptr() as u64,
            inlateout("r15") recv.len() as u64 => got,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    decode(rax).map(|badge| Msg {
        badge,
        words: [w0, w1, w2, w3],
        cap: c,
        data_sent: sent,
        data_got: got,
    })
}

#[inline(always)]
fn ipc_raw(nr: Call, obj: u64, words: [u64; 4], cap: u64) -> Result<Msg, Error> {
    ipc_full(nr, obj, words, cap, &[], &mut [])
}

/// `ipc_call` with data: sends `data`, takes the reply's data into `reply`.
pub fn ipc_call_data(
    port: u64,
    words: [u64; 4],
    cap: u64,
    data: &[u8],
    reply: &mut [u8],
) -> Result<Msg, Error> {
    ipc_full(Call::IpcCall, port, words, cap, data, reply)
}

/// `ipc_wait` receiving data into `buf`.
pub fn ipc_wait_data(set: u64, buf: &mut [u8]) -> Result<Msg, Error> {
    ipc_full(Call::IpcWait, set, [0; 4], NO_CAP, &[], buf)
}

/// `ipc_reply_wait` with reply data, receiving the next message's data into `buf`.
pub fn ipc_reply_wait_data(
    set: u64,
    words: [u64; 4],
    cap: u64,
    data: &[u8],
    buf: &mut [u8],
) -> Result<Msg, Error> {
    ipc_full(Call::IpcReplyWait, set, words, cap, data, buf)
}

/// One-way, exactly once: returns when a thread of the port's set has taken the message.
pub fn ipc_send_reliable(port: u64, words: [u64; 4], cap: u64, data: &[u8]) -> Result<(), Error> {
    ipc_full(Call::IpcSendReliable, port, words, cap, data, &mut []).map(|_| ())
}

/// A Reference object holding a copy of capability `cap`.
pub fn ref_create(cap: u64) -> Result<u64, Error> {
    call(Call::RefCreate, cap, 0, 0, 0)
}

/// A copy of the capability a Reference holds.
pub fn ref_get(reference: u64) -> Result<u64, Error> {
    call(Call::RefGet, reference, 0, 0, 0)
}

pub fn port_set_create() -> Result<u64, Error> {
    call(Call::PortSetCreate, 0, 0, 0, 0)
}

pub fn port_create(set: u64, badge: u64) -> Result<u64, Error> {
    call(Call::PortCreate, set, badge, 0, 0)
}

/// Sends `words` (and moves capability `cap`) to `port` and waits for the reply.
pub fn ipc_call(port: u64, words: [u64; 4], cap: u64) -> Result<Msg, Error> {
    ipc_raw(Call::IpcCall, port, words, cap)
}

pub fn ipc_wait(set: u64) -> Result<Msg, Error> {
    ipc_raw(Call::IpcWait, set, [0; 4], NO_CAP)
}

/// Replies to the last caller and waits for the next message, in one kernel entry.
pub fn ipc_reply_wait(set: u64, words: [u64; 4], cap: u64) -> Result<Msg, Error> {
    ipc_raw(Call::IpcReplyWait, set, words, cap)
}

/// One-way send: true if a thread was waiting and got it, false if it was dropped.
pub fn ipc_send(port: u64, words: [u64; 4], cap: u64) -> Result<bool, Error> {
    ipc_raw(Call::IpcSend, port, words, cap).map(|m| m.badge == 1)
}

pub fn cap_drop(name: u64) -> Result<u64, Error> {
    call(Call::CapDrop, name, 0, 0, 0)
}

pub fn cap_copy(name: u64, rights: u64) -> Result<u64, Error> {
    call(Call::CapCopy, name, rights, 0, 0)
}

/// The arguments as the kernel takes them: NUL-separated in one buffer.
fn pack_args(args: &[&str]) -> Result<([u8; 1024], usize), Error> {
    let mut buf = [0u8; 1024];
    let mut len = 0;
    for a in args {
        let b = a.as_bytes();
        if len + b.len() + 1 > buf.len() {
            return Err(Error::InvalidArgument);
        }
        buf[len..len + b.len()].copy_from_slice(b);
        len += b.len() + 1;
    }
    Ok((buf, len))
}

/// Like [`spawn`], handing the child copies of `caps` as its names 0, 1, ...
pub fn spawn_with_caps(name: &str, args: &[&str], caps: &[u64]) -> Result<u64, Error> {
    let (buf, len) = pack_args(args)?;
    let ret: u64;
    // SAFETY: the kernel reads name, args and caps from this program's memory.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") Call::Spawn as u64 => ret,
            in("rdi") name.as_ptr() as u64,
            in("rsi") name.len() as u64,
            inlateout("rdx") buf.as_ptr() as u64 => _,
            in("r10") len as u64,
            in("r8") caps.as_ptr() as u64,
            in("r9") caps.len() as u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    decode(ret)
}

pub use fluke_abi::syscall::ThreadRegs;

/// A child started with [`spawn_child`]: its id and capabilities to its main thread and
/// its space, in this program's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pub pid: u64,
    pub thread: u64,
    pub space: u64,
}

/// Starts a program like [`spawn_with_caps`] and also returns capabilities to the child's
/// main thread and space.
pub fn spawn_child(name: &str, args: &[&str], caps: &[u64]) -> Result<Child, Error> {
    let (buf, len) = pack_args(args)?;
    let (ret, thread, space): (u64, u64, u64);
    // SAFETY: the kernel reads name, args and caps from this program's memory.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") Call::Spawn as u64 => ret,
            in("rdi") name.as_ptr() as u64,
            in("rsi") name.len() as u64,
            inlateout("rdx") buf.as_ptr() as u64 => thread,
            inlateout("r10") len as u64 => space,
            in("r8") caps.as_ptr() as u64,
            in("r9") caps.len() as u64 | fluke_abi::syscall::SPAWN_WANT_CAPS,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    decode(ret).map(|pid| Child { pid, thread, space })
}

pub fn thread_create(space: u64) -> Result<u64, Error> {
    call(Call::ThreadCreate, space, 0, 0, 0)
}

pub fn thread_stop(thread: u64) -> Result<u64, Error> {
    call(Call::ThreadStop, thread, 0, 0, 0)
}

pub fn thread_resume(thread: u64) -> Result<u64, Error> {
    call(Call::ThreadResume, thread, 0, 0, 0)
}

pub fn thread_get_state(thread: u64) -> Result<ThreadRegs, Error> {
    let mut regs = ThreadRegs::default();
    call(
        Call::ThreadGetState,
        thread,
        &mut regs as *mut ThreadRegs as u64,
        0,
        0,
    )?;
    Ok(regs)
}

/// A stopped thread's x87/SSE state (the FXSAVE image).
pub fn thread_get_fpu(thread: u64) -> Result<[u8; fluke_abi::syscall::FPU_STATE_BYTES], Error> {
    let mut image = [0u8; fluke_abi::syscall::FPU_STATE_BYTES];
    call(
        Call::ThreadGetState,
        thread,
        image.as_mut_ptr() as u64,
        fluke_abi::syscall::STATE_FPU,
        0,
    )?;
    Ok(image)
}

/// Sets a stopped thread's x87/SSE state (an FXSAVE image; MXCSR is masked by the kernel).
pub fn thread_set_fpu(
    thread: u64,
    image: &[u8; fluke_abi::syscall::FPU_STATE_BYTES],
) -> Result<u64, Error> {
    call(
        Call::ThreadSetState,
        thread,
        image.as_ptr() as u64,
        fluke_abi::syscall::STATE_FPU,
        0,
    )
}

/// A stopped thread's whole floating-point and vector state, as an XSAVE standard-format
/// image: the first `n` bytes of the buffer, `n` returned.
pub fn thread_get_xstate(
    thread: u64,
    image: &mut [u8; fluke_abi::syscall::XSTATE_MAX_BYTES],
) -> Result<usize, Error> {
    call(
        Call::ThreadGetState,
        thread,
        image.as_mut_ptr() as u64,
        fluke_abi::syscall::STATE_XSTATE,
        0,
    )
    .map(|n| n as usize)
}

/// Sets a stopped thread's whole floating-point and vector state from an image in
/// [`thread_get_xstate`]'s form (the kernel reads as many bytes as that call returns here
/// and makes the image safe to load).
pub fn thread_set_xstate(
    thread: u64,
    image: &[u8; fluke_abi::syscall::XSTATE_MAX_BYTES],
) -> Result<u64, Error> {
    call(
        Call::ThreadSetState,
        thread,
        image.as_ptr() as u64,
        fluke_abi::syscall::STATE_XSTATE,
        0,
    )
}

pub fn thread_set_state(thread: u64, regs: &ThreadRegs) -> Result<u64, Error> {
    call(
        Call::ThreadSetState,
        thread,
        regs as *const ThreadRegs as u64,
        0,
        0,
    )
}

/// Destroys the object a capability names (threads today).
pub fn destroy(cap: u64) -> Result<u64, Error> {
    call(Call::Destroy, cap, 0, 0, 0)
}

pub fn mutex_create() -> Result<u64, Error> {
    call(Call::MutexCreate, 0, 0, 0, 0)
}

pub fn mutex_lock(m: u64) -> Result<u64, Error> {
    call(Call::MutexLock, m, 0, 0, 0)
}

pub fn mutex_unlock(m: u64) -> Result<u64, Error> {
    call(Call::MutexUnlock, m, 0, 0, 0)
}

pub fn cond_create() -> Result<u64, Error> {
    call(Call::CondCreate, 0, 0, 0, 0)
}

/// Releases `m`, waits for `c` to be signalled, re-takes `m`.
pub fn cond_wait(c: u64, m: u64) -> Result<u64, Error> {
    call(Call::CondWait, c, m, 0, 0)
}

pub fn cond_signal(c: u64) -> Result<u64, Error> {
    call(Call::CondSignal, c, 0, 0, 0)
}

pub fn cond_broadcast(c: u64) -> Result<u64, Error> {
    call(Call::CondBroadcast, c, 0, 0, 0)
}

/// Makes `port` the thread's exception keeper (`NO_CAP` clears it).
pub fn thread_set_keeper(thread: u64, port: u64) -> Result<u64, Error> {
    call(Call::ThreadSetKeeper, thread, port, 0, 0)
}

/// Exports `[addr, addr + size)` of this program's memory; faults on pages not present go
/// to `keeper` (a port, or `NO_CAP`).
pub fn region_create(addr: u64, size: u64, keeper: u64) -> Result<u64, Error> {
    call(Call::RegionCreate, addr, size, keeper, 0)
}

/// Makes `region` appear at `addr` in `space`.
pub fn mapping_create(space: u64, region: u64, addr: u64, writable: bool) -> Result<u64, Error> {
    call(
        Call::MappingCreate,
        space,
        region,
        addr,
        u64::from(writable),
    )
}

pub use fluke_abi::syscall::fault;

/// `mapping_create` flags.
pub const MAP_WRITE: u64 = 1;
pub const MAP_EXEC: u64 = 2;

/// Makes `region` appear at `addr` in `space` with `MAP_*` flags.
pub fn mapping_create_flags(space: u64, region: u64, addr: u64, flags: u64) -> Result<u64, Error> {
    call(Call::MappingCreate, space, region, addr, flags)
}

/// Makes `region` appear at `addr` in `space` with `MAP_*` flags and a views allowance
/// (1..=`MAX_VIEWS`): the region counts it from the start, and what `space` passes on of
/// this memory may use up to it and no more (`fluke_abi::syscall::MAP_ALLOWANCE_SHIFT`).
pub fn mapping_create_allowed(
    space: u64,
    region: u64,
    addr: u64,
    flags: u64,
    allowance: u16,
) -> Result<u64, Error> {
    let flags = flags | u64::from(allowance) << fluke_abi::syscall::MAP_ALLOWANCE_SHIFT;
    call(Call::MappingCreate, space, region, addr, flags)
}

/// Whether capability name `cap` holds an object of kind `kind` (`objstate::PORT`, ...)
/// that we may read the state of.
pub fn holds(cap: u64, kind: u64) -> bool {
    obj_get_state(cap).is_ok_and(|s| s[0] == kind)
}

/// This program's budget in frames: `(quota, used, available to use or lend)`.
pub fn own_budget() -> Result<(u64, u64, u64), Error> {
    let s = obj_get_state(fluke_abi::syscall::SELF_SPACE)?;
    Ok((s[1], s[2], s[3]))
}

/// An empty child space (no memory, no threads, no capabilities), with half of what this
/// program's budget has left.
pub fn space_create() -> Result<u64, Error> {
    space_create_keep(0).map(|(cap, _)| cap)
}

/// An empty child space given everything of this program's budget but `keep` frames (or
/// half of it if `keep` is 0); also returns the child's id (for [`wait`]).
pub fn space_create_keep(keep: u64) -> Result<(u64, u64), Error> {
    space_create_named(keep, "")
}

/// [`space_create_keep`], naming the space for the kernel's reports (a program's name).
pub fn space_create_named(keep: u64, name: &str) -> Result<(u64, u64), Error> {
    let (ret, pid): (u64, u64);
    // SAFETY: the kernel reads the name from this program's memory.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") Call::SpaceCreate as u64 => ret,
            in("rdi") keep,
            in("rsi") name.as_ptr() as u64,
            lateout("rdx") pid,
            in("r10") name.len() as u64,
            in("r8") 0u64,
            in("r9") 0u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    decode(ret).map(|cap| (cap, pid))
}

/// Puts a copy of `my_cap` (with at most `rights`) into `space`'s table as `name_there`.
pub fn cap_give(space: u64, name_there: u64, my_cap: u64, rights: u64) -> Result<u64, Error> {
    call(Call::CapGive, space, name_there, my_cap, rights)
}

/// A copy of the capability `space` holds as `name_there`, in this program's table.
pub fn cap_take(space: u64, name_there: u64) -> Result<u64, Error> {
    call(Call::CapTake, space, name_there, 0, 0)
}

/// Reads part of program `name` of the image into `buf`; returns the bytes read.
pub fn program_read(name: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
    let ret: u64;
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") Call::ProgramRead as u64 => ret,
            in("rdi") name.as_ptr() as u64,
            in("rsi") name.len() as u64,
            inlateout("rdx") offset => _,
            in("r10") buf.as_mut_ptr() as u64,
            in("r8") buf.len() as u64,
            in("r9") 0u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    decode(ret).map(|n| n as usize)
}

pub use fluke_abi::syscall::objstate;

/// The state of a non-thread object (see `fluke_abi::syscall::objstate`).
pub fn obj_get_state(cap: u64) -> Result<[u64; objstate::WORDS], Error> {
    let mut words = [0u64; objstate::WORDS];
    call(Call::ObjGetState, cap, words.as_mut_ptr() as u64, 0, 0)?;
    Ok(words)
}

pub fn obj_set_state(cap: u64, words: &[u64; objstate::WORDS]) -> Result<u64, Error> {
    call(Call::ObjSetState, cap, words.as_ptr() as u64, 0, 0)
}

/// `devmem_map(devmem, space, addr, flags)`: maps a device-memory object's whole window
/// (uncached, never executable) into `space` (or [`fluke_abi::syscall::SELF_SPACE`]).
pub fn devmem_map(devmem: u64, space: u64, addr: u64, writable: bool) -> Result<u64, Error> {
    devmem_map_flags(
        devmem,
        space,
        addr,
        if writable {
            fluke_abi::syscall::DEVMEM_WRITE
        } else {
            0
        },
    )
}

/// `devmem_map` of the whole window with its flags (`DEVMEM_WRITE`, `DEVMEM_CACHED`).
pub fn devmem_map_flags(devmem: u64, space: u64, addr: u64, flags: u64) -> Result<u64, Error> {
    devmem_map_part(devmem, space, addr, flags, 0, 0)
}

/// `devmem_map` of the part `[offset, offset + len)` of the window (`len` 0: to its end):
/// a driver maps its registers uncached and its DMA area `DEVMEM_CACHED`, as two parts.
pub fn devmem_map_part(
    devmem: u64,
    space: u64,
    addr: u64,
    flags: u64,
    offset: u64,
    len: u64,
) -> Result<u64, Error> {
    // SAFETY: no pointer arguments.
    decode(unsafe {
        raw6(
            Call::DevmemMap as u64,
            [devmem, space, addr, flags, offset, len],
        )
    })
}

/// `irq_bind(irq, port)`: the line's interrupts arrive on `port` as
/// `[fault::INTERRUPT, line, count, 0]`.
pub fn irq_bind(irq: u64, port: u64) -> Result<u64, Error> {
    call(Call::IrqBind, irq, port, 0, 0)
}

/// `irq_ack(irq)`: the interrupt was handled; the line is unmasked.
pub fn irq_ack(irq: u64) -> Result<u64, Error> {
    call(Call::IrqAck, irq, 0, 0, 0)
}

/// A driver's wait for its device: the next interrupt message on `set` (a set whose only
/// port is bound to `irq`; other messages are skipped), then `irq_ack(irq)`. The line is
/// masked from the interrupt to the ack, and an edge in between is not sent again, so the
/// caller looks at its device after each return, not only after a new interrupt.
pub fn await_interrupt(set: u64, irq: u64) -> Result<(), Error> {
    loop {
        let m = ipc_wait(set)?;
        if m.words[0] == fluke_abi::syscall::fault::INTERRUPT {
            return irq_ack(irq).map(|_| ());
        }
    }
}
