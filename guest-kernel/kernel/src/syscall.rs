//! The kernel-call dispatcher. entry.S has saved the caller's registers in its UserRegs;
//! each call reads its arguments from there, writes its result to `rax` and returns to user
//! mode. Every pointer argument goes through `Space::copy_in/copy_out`, which check it
//! against the caller's own page tables.

use crate::arch::percpu;
use crate::arch::user::UserRegs;
use fluke_kcore::user_regs;
use crate::console::Console;
use crate::ipc;
use crate::mutex;
use crate::process::{self, Pid};
use crate::sched::{self, kernel};
use crate::thread::ThreadState;
use crate::thread_calls;
use crate::time;
use fluke_abi::syscall::{encode, BenchOp, Call, Error};
use fluke_kcore::slab::Id;

/// The current thread's saved registers.
fn regs() -> &'static mut UserRegs {
    // SAFETY: entry.S saved into the current thread's UserRegs, which lives as long as the
    // thread; single CPU, so no other reference is live.
    unsafe { &mut *(percpu::get().cur_regs.get() as *mut UserRegs) }
}

fn current_pid() -> Option<Pid> {
    sched::current_pid().ok()
}

fn with_space<R>(f: impl FnOnce(&mut crate::space::Space) -> Result<R, Error>) -> Result<R, Error> {
    f(sched::current_space()?)
}

#[no_mangle]
extern "C" fn syscall_dispatch() -> ! {
    kernel().keeper_fault = None;
    let r = regs();
    let result = match Call::from_u64(r.rax) {
        Some(call) => dispatch(call, r),
        None => Err(Error::NoSuchCall),
    };
    if result == Err(Error::BadAddress) {
        fault_to_keeper();
    }
    regs().rax = encode(result);
    sched::resume_current()
}

/// The call failed on a page that only a region keeper can provide (a pager evicted it,
/// say): the caller's own, or the one its message was to be copied into. The thread
/// re-executes the call once the keeper has replied, exactly as after a fault of its own.
/// Calls copy user memory before they change anything (or prefault it), so re-executing
/// is safe. Returns if there is no such page (the call then fails with `BadAddress`) or
/// the keeper's port is gone.
fn fault_to_keeper() {
    let Some(f) = kernel().keeper_fault.take() else {
        return;
    };
    let r = regs();
    user_regs::restart_call(r);
    ipc::send_fault(f.port, f.words);
    let r = regs();
    user_regs::complete_call(r);
}

fn dispatch(call: Call, r: &mut UserRegs) -> Result<u64, Error> {
    let (a0, a1, a2, a3) = (r.rdi, r.rsi, r.rdx, r.r10);
    match call {
        Call::Null => Ok(0),
        Call::ConsoleWrite => console_write(a0, a1),
        Call::Exit => {
            if let Some(pid) = current_pid() {
                process::exit(pid, a0 as i32);
            }
            // SAFETY: entry.S's schedule switches stacks and never returns.
            unsafe { sched::schedule() }
        }
        Call::Yield => {
            r.rax = 0;
            sched::yield_current()
        }
        Call::Time => Ok(time::now_ns()),
        Call::Spawn => spawn(a0, a1, a2, a3, r.r8, r.r9),
        Call::Wait => {
            let me = current_pid().ok_or(Error::InvalidArgument)?;
            match process::try_wait(me, Id::from_u64(a0))? {
                Some(status) => Ok(status as i64 as u64),
                None => restart_later(r, ThreadState::WaitChild),
            }
        }
        Call::Sleep => {
            // Rewritten into the restartable absolute form: visible in the registers.
            let deadline = time::now_ns().saturating_add(a0);
            r.rax = Call::SleepUntil as u64;
            r.rdi = deadline;
            sleep_until(r, deadline)
        }
        Call::SleepUntil => sleep_until(r, a0),
        Call::MapAnon => with_space(|s| s.map_anon(a0, a1).map(|_| a0)),
        Call::Bench => bench(a0, a1),
        Call::PortSetCreate => ipc::port_set_create(),
        Call::PortCreate => ipc::port_create(a0, a1),
        Call::IpcCall => ipc::call(a0),
        Call::IpcWait => ipc::wait(a0, None),
        Call::IpcReplyWait => ipc::reply_wait(a0),
        Call::IpcSend => ipc::send(a0),
        Call::CapDrop => ipc::cap_drop(a0),
        Call::CapCopy => ipc::cap_copy(a0, a1),
        Call::ThreadCreate => thread_calls::create(a0),
        Call::ThreadStop => thread_calls::stop(a0),
        Call::ThreadResume => thread_calls::resume(a0),
        Call::ThreadGetState => thread_calls::get_state(a0, a1, a2),
        Call::ThreadSetState => thread_calls::set_state(a0, a1, a2),
        Call::Destroy => thread_calls::destroy(a0),
        Call::MutexCreate => mutex::mutex_create(),
        Call::MutexLock => mutex::lock(a0),
        Call::MutexUnlock => mutex::unlock(a0),
        Call::CondCreate => mutex::cond_create(),
        Call::CondWait => mutex::cond_wait(a0, a1),
        Call::CondRewait => mutex::cond_rewait(a0, a1),
        Call::CondSignal => mutex::signal(a0),
        Call::CondBroadcast => mutex::broadcast(a0),
        Call::ThreadSetKeeper => thread_calls::set_keeper(a0, a1),
        Call::RegionCreate => crate::memory::region_create(a0, a1, a2),
        Call::MappingCreate => crate::memory::mapping_create(a0, a1, a2, a3),
        Call::SpaceCreate => crate::space_calls::create(a0, a1, a3),
        Call::CapGive => crate::space_calls::cap_give(a0, a1, a2, a3),
        Call::CapTake => crate::space_calls::cap_take(a0, a1),
        Call::ProgramRead => crate::space_calls::program_read(a0, a1, a2, a3, r.r8),
        Call::ObjGetState => crate::objects::get_state(a0, a1),
        Call::ObjSetState => crate::objects::set_state(a0, a1),
        Call::IpcSendReliable => ipc::send_reliable(a0),
        Call::RefCreate => crate::objects::ref_create(a0),
        Call::RefGet => crate::objects::ref_get(a0),
        Call::MemDiscard => crate::memory::discard(a0, a1, a2),
        Call::MemInstall => crate::memory::install(a0, a1),
        Call::MemReferenced => crate::memory::referenced(a0),
    }
}

fn sleep_until(r: &mut UserRegs, deadline: u64) -> Result<u64, Error> {
    if time::now_ns() >= deadline {
        return Ok(0);
    }
    restart_later(r, ThreadState::Sleeping(deadline))
}

/// Blocks the current thread so that, when woken, it re-executes its `syscall` instruction
/// with the registers it has now: no kernel state is kept for the pending call.
fn restart_later(r: &mut UserRegs, state: ThreadState) -> ! {
    user_regs::restart_call(r);
    sched::block_current(state)
}

fn console_write(ptr: u64, len: u64) -> Result<u64, Error> {
    const MAX: u64 = 64 * 1024;
    if len > MAX {
        return Err(Error::InvalidArgument);
    }
    // All of it present first: a page only a keeper has re-executes the whole call, and
    // nothing must have been written then.
    crate::memory::prefault_current(ptr, len, false)?;
    let mut buf = [0u8; 256];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        with_space(|s| s.copy_in(ptr + done, &mut buf[..n]))?;
        Console.write_bytes(&buf[..n]);
        done += n as u64;
    }
    Ok(len)
}

/// Most capabilities a parent can hand a child at spawn.
const MAX_SPAWN_CAPS: u64 = 16;

fn spawn(
    name_ptr: u64,
    name_len: u64,
    args_ptr: u64,
    args_len: u64,
    caps_ptr: u64,
    ncaps: u64,
) -> Result<u64, Error> {
    let want_caps = ncaps & fluke_abi::syscall::SPAWN_WANT_CAPS != 0;
    let ncaps = ncaps & !fluke_abi::syscall::SPAWN_WANT_CAPS;
    if name_len == 0 || name_len > 32 || args_len > 4096 || ncaps > MAX_SPAWN_CAPS {
        return Err(Error::InvalidArgument);
    }
    let mut names = [0u8; 8 * MAX_SPAWN_CAPS as usize];
    let names = &mut names[..8 * ncaps as usize];
    with_space(|s| s.copy_in(caps_ptr, names))?;
    let mut caps = alloc::vec::Vec::new();
    for n in names.chunks_exact(8) {
        let name = u64::from_le_bytes(n.try_into().unwrap_or([0xff; 8]));
        caps.push(with_space(|s| {
            Ok(s.caps.check(name, fluke_kcore::cap::Rights::GRANT)?)
        })?);
    }
    let mut name = [0u8; 32];
    with_space(|s| s.copy_in(name_ptr, &mut name[..name_len as usize]))?;
    let name =
        core::str::from_utf8(&name[..name_len as usize]).map_err(|_| Error::InvalidArgument)?;
    let mut args = alloc::vec![0u8; args_len as usize];
    with_space(|s| s.copy_in(args_ptr, &mut args))?;
    let parent = current_pid();
    let pid = process::spawn(name, &args, parent, &caps)?;
    if want_caps {
        let main_thread = kernel()
            .processes
            .get(pid)
            .and_then(|p| p.threads.first().copied());
        let thread = main_thread.ok_or(Error::InvalidArgument)?;
        regs().rdx = thread_calls::grant_to_caller(crate::object::ObjRef::Thread(thread))?;
        regs().r10 = thread_calls::grant_to_caller(crate::object::ObjRef::Space(pid))?;
    }
    Ok(pid.to_u64())
}

fn bench(op: u64, _arg: u64) -> Result<u64, Error> {
    match op {
        x if x == BenchOp::SwitchFloorJoin as u64 => crate::selftest::floor_join(),
        x if x == BenchOp::TscKhz as u64 => Ok(time::tsc_khz()),
        _ => Err(Error::InvalidArgument),
    }
}
