//! `bench(op, arg)`: what `fluke-vmm bench` measures the kernel with. The floor operations
//! need the benchmark capability (`fluke_abi::syscall::INIT_BENCH_CAP`, held by init only,
//! passed on like any capability); without it they fail as a bad capability would.

use crate::kernel::floor::{self, Side};
use crate::kernel::sched::Next;
use crate::kernel::{Caller, Kernel, ObjRef};
use crate::objects::{CallResult, Reply};
use fluke_abi::syscall::{BenchOp, Error};
use fluke_kcore::cap::Rights;

pub fn bench(k: &mut Kernel, c: Caller, op: u64, arg: u64) -> CallResult {
    match op {
        x if x == BenchOp::SwitchFloorJoin as u64 => {
            check_bench_cap(k, c, arg)?;
            floor_join(k, c)
        }
        x if x == BenchOp::FloorCalls as u64 => {
            check_bench_cap(k, c, arg)?;
            enable_floor_calls(k, c)?;
            Ok(Reply::Value(0))
        }
        x if x == BenchOp::TscKhz as u64 => Ok(Reply::Value(crate::time::tsc_khz())),
        _ => Err(Error::InvalidArgument),
    }
}

/// Decode: the caller names the benchmark capability, with USE.
fn check_bench_cap(k: &mut Kernel, c: Caller, name: u64) -> Result<(), Error> {
    match k.lookup(c, name, Rights::USE)?.object {
        ObjRef::Bench => Ok(()),
        _ => Err(Error::WrongType),
    }
}

/// Opens the entry code's bare floor call to the calling thread, from now on (the thread is
/// the current one, so the entry code's flag changes now too).
fn enable_floor_calls(k: &mut Kernel, c: Caller) -> Result<(), Error> {
    let t = k.threads.get_mut(c.tid).ok_or(Error::InvalidArgument)?;
    t.floor_calls = true;
    floor::allow_calls(true);
    Ok(())
}

/// `bench(SwitchFloorJoin)`: makes the calling thread one side of the bare-switch pair
/// (entry.S floor_switch). The first to join waits in the call (yielding); the second
/// completes the pair, which lasts until the scheduler runs (a block, a yield, a
/// preemption), or either thread is stopped or ends. Both sides have the floor call open
/// (floor::allow_calls: the floor switch does not change it).
fn floor_join(k: &mut Kernel, c: Caller) -> CallResult {
    let t = k.threads.get(c.tid).ok_or(Error::InvalidArgument)?;
    let (regs, fpu, kstack) = (t.regs.addr(), t.fpu.addr(), t.kstack.top());
    let root = k.space_ref(c.pid).ok_or(Error::InvalidArgument)?.root;
    enable_floor_calls(k, c)?;
    let threads = &k.threads;
    let side = usize::from(floor::partner_waiting(c.tid, |p| {
        threads.get(p).is_some_and(|t| t.runnable())
    }));
    floor::set_side(
        side,
        Side {
            regs,
            root,
            kstack,
            thread: c.tid,
            fpu,
        },
    );
    if side == 1 {
        return Ok(Reply::Value(1));
    }
    // Wait in the call: the result is in place for whichever way it is resumed.
    if let Some(r) = k.regs(c.tid) {
        r.rax = 0;
    }
    Ok(Reply::Then(Next::Yield))
}
