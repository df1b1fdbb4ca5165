//! The kernel-call dispatcher. entry.S has saved the caller's registers in its register
//! block; the call reads its arguments from a copy of them, the dispatcher writes the
//! result to `rax` (unless the call left the registers as the thread must see them) and
//! leaves as the call said. Every pointer argument goes through `objects::usermem`, which
//! checks it against the caller's own page tables.

use crate::console;
use crate::kernel::sched::{self, Leave, Next};
use crate::kernel::thread::ThreadState;
use crate::kernel::{Caller, Kernel};
use crate::objects::{self, ipc, usermem, CallResult, Reply};
use crate::time;
use fluke_abi::syscall::{encode, Call, Error};
use fluke_kcore::user_regs;

/// One kernel call of the running thread.
pub fn handle(k: &mut Kernel) -> Leave {
    k.keeper_fault = None;
    let Some(c) = sched::caller(k) else {
        return sched::leave(k, Next::Schedule);
    };
    let Some(&mut args) = k.regs(c.tid) else {
        return sched::leave(k, Next::Schedule);
    };
    let result = match Call::from_u64(args.rax) {
        Some(call) => dispatch(
            k,
            c,
            call,
            [args.rdi, args.rsi, args.rdx, args.r10, args.r8, args.r9],
        ),
        None => Err(Error::NoSuchCall),
    };
    let next = match result {
        Ok(Reply::Value(v)) => set_result(k, c, Ok(v)),
        Ok(Reply::Then(next)) => next,
        Err(Error::BadAddress) => match fault_to_keeper(k, c) {
            Some(next) => next,
            None => set_result(k, c, Err(Error::BadAddress)),
        },
        Err(e) => set_result(k, c, Err(e)),
    };
    sched::leave(k, next)
}

fn set_result(k: &mut Kernel, c: Caller, result: Result<u64, Error>) -> Next {
    if let Some(r) = k.regs(c.tid) {
        r.rax = encode(result);
    }
    Next::Resume
}

/// The call failed on a page that only a region keeper can provide (a pager evicted it,
/// say): the caller's own, or the one its message was to be copied into. The thread
/// re-executes the call once the keeper has replied, exactly as after a fault of its own.
/// Calls copy user memory before they change anything (or prefault it), so re-executing
/// is safe. `None` if there is no such page (the call then fails with `BadAddress`) or
/// the keeper's port is gone.
fn fault_to_keeper(k: &mut Kernel, c: Caller) -> Option<Next> {
    let f = k.keeper_fault.take()?;
    if let Some(r) = k.regs(c.tid) {
        user_regs::restart_call(r);
    }
    if let Some(next) = ipc::send_fault(k, c.tid, f.port, f.words) {
        return Some(next);
    }
    if let Some(r) = k.regs(c.tid) {
        user_regs::complete_call(r);
    }
    None
}

fn dispatch(k: &mut Kernel, c: Caller, call: Call, a: [u64; 6]) -> CallResult {
    use objects::{
        cap, condition, mapping, memory, mutex, port, port_set, reference, region, space, thread,
    };
    let v = objects::value;
    match call {
        Call::Null => Ok(Reply::Value(0)),
        Call::ConsoleWrite => v(console_write(k, c, a[0], a[1])),
        Call::Exit => space::exit_call(k, c, a[0]),
        Call::Yield => {
            if let Some(r) = k.regs(c.tid) {
                r.rax = 0;
            }
            Ok(Reply::Then(Next::Yield))
        }
        Call::Time => Ok(Reply::Value(time::now_ns())),
        Call::Spawn => space::spawn_call(k, c, a),
        Call::Wait => space::wait_call(k, c, a[0]),
        Call::Sleep => {
            // Rewritten into the restartable absolute form: visible in the registers.
            let deadline = time::now_ns().saturating_add(a[0]);
            if let Some(r) = k.regs(c.tid) {
                r.rax = Call::SleepUntil as u64;
                r.rdi = deadline;
            }
            sleep_until(k, c, deadline)
        }
        Call::SleepUntil => sleep_until(k, c, a[0]),
        Call::MapAnon => v(k.caller_space(c)?.map_anon(a[0], a[1]).map(|_| a[0])),
        Call::Bench => super::bench::bench(k, c, a[0], a[1]),
        Call::PortSetCreate => port_set::create(k, c),
        Call::PortCreate => port::create(k, c, a[0], a[1]),
        Call::IpcCall => ipc::call(k, c, a[0]),
        Call::IpcWait => ipc::wait(k, c, a[0], None),
        Call::IpcReplyWait => ipc::reply_wait(k, c, a[0]),
        Call::IpcSend => ipc::send(k, c, a[0]),
        Call::IpcSendReliable => ipc::send_reliable(k, c, a[0]),
        Call::CapDrop => cap::drop_cap(k, c, a[0]),
        Call::CapCopy => cap::copy(k, c, a[0], a[1]),
        Call::ThreadCreate => thread::create(k, c, a[0]),
        Call::ThreadStop => thread::stop(k, c, a[0]),
        Call::ThreadResume => thread::resume(k, c, a[0]),
        Call::ThreadGetState => thread::get_state(k, c, a[0], a[1], a[2]),
        Call::ThreadSetState => thread::set_state(k, c, a[0], a[1], a[2]),
        Call::ThreadSetKeeper => thread::set_keeper(k, c, a[0], a[1]),
        Call::Destroy => objects::state::destroy_call(k, c, a[0]),
        Call::MutexCreate => mutex::create(k, c),
        Call::MutexLock => mutex::lock(k, c, a[0]),
        Call::MutexUnlock => mutex::unlock(k, c, a[0]),
        Call::CondCreate => condition::create(k, c),
        Call::CondWait => condition::wait(k, c, a[0], a[1]),
        Call::CondRewait => condition::rewait(k, c, a[0], a[1]),
        Call::CondSignal => condition::signal(k, c, a[0]),
        Call::CondBroadcast => condition::broadcast(k, c, a[0]),
        Call::RegionCreate => region::create(k, c, a[0], a[1], a[2]),
        Call::MappingCreate => mapping::create(k, c, a[0], a[1], a[2], a[3]),
        Call::SpaceCreate => space::create(k, c, a[0], a[1], a[3]),
        Call::CapGive => space::cap_give(k, c, a[0], a[1], a[2], a[3]),
        Call::CapTake => space::cap_take(k, c, a[0], a[1]),
        Call::ProgramRead => space::program_read(k, c, [a[0], a[1], a[2], a[3], a[4]]),
        Call::ObjGetState => objects::state::get_state(k, c, a[0], a[1]),
        Call::ObjSetState => objects::state::set_state(k, c, a[0], a[1]),
        Call::RefCreate => reference::create(k, c, a[0]),
        Call::RefGet => reference::get(k, c, a[0]),
        Call::MemDiscard => memory::discard(k, c, a[0], a[1], a[2]),
        Call::MemInstall => memory::install(k, c, a[0], a[1]),
        Call::MemReferenced => memory::referenced(k, c, a[0]),
        Call::DevmemMap => objects::device_memory::map(k, c, a[0], a[1], a[2], a[3], a[4], a[5]),
        Call::IrqBind => objects::interrupt::bind(k, c, a[0], a[1]),
        Call::IrqAck => objects::interrupt::ack(k, c, a[0]),
    }
}

/// `sleep_until(deadline)`: blocks so that, when woken, the thread re-executes its
/// `syscall` instruction with the registers it has now: no kernel state is kept for it.
fn sleep_until(k: &mut Kernel, c: Caller, deadline: u64) -> CallResult {
    if time::now_ns() >= deadline {
        return Ok(Reply::Value(0));
    }
    sched::block_in_call(k, c.tid, ThreadState::Sleeping(deadline));
    Ok(Reply::Then(Next::Schedule))
}

fn console_write(k: &mut Kernel, c: Caller, ptr: u64, len: u64) -> Result<u64, Error> {
    const MAX: u64 = 64 * 1024;
    if len > MAX {
        return Err(Error::InvalidArgument);
    }
    // All of it present first: a page only a keeper has re-executes the whole call, and
    // nothing must have been written then.
    usermem::prefault_for_call(k, c.pid, ptr, len, false)?;
    let mut buf = [0u8; 256];
    let mut done = 0;
    let mut out = console::Writer::begin();
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        usermem::copy_in(k, c.pid, ptr + done, &mut buf[..n])?;
        out.write(&buf[..n]);
        done += n as u64;
    }
    Ok(len)
}
