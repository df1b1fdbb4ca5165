//! `bench(op, arg)`: what `fluke-vmm bench` measures the kernel with. The floor pair is
//! refused unless the boot asked for it (`fluke.floors=on`).

use crate::kernel::floor::{self, Side};
use crate::kernel::sched::Next;
use crate::kernel::{Caller, Kernel};
use crate::objects::{CallResult, Reply};
use fluke_abi::syscall::{BenchOp, Error};

pub fn bench(k: &mut Kernel, c: Caller, op: u64, _arg: u64) -> CallResult {
    match op {
        x if x == BenchOp::SwitchFloorJoin as u64 => floor_join(k, c),
        x if x == BenchOp::TscKhz as u64 => Ok(Reply::Value(crate::time::tsc_khz())),
        _ => Err(Error::InvalidArgument),
    }
}

/// `bench(SwitchFloorJoin)`: makes the calling thread one side of the bare-switch pair
/// (entry.S floor_switch). The first to join waits in the call (yielding); the second
/// completes the pair, which lasts until the scheduler runs (a block, a yield, a
/// preemption), or either thread is stopped or ends.
fn floor_join(k: &mut Kernel, c: Caller) -> CallResult {
    if !floor::enabled() {
        return Err(Error::NoSuchCall);
    }
    let t = k.threads.get(c.tid).ok_or(Error::InvalidArgument)?;
    let (regs, fpu, kstack) = (t.regs.addr(), t.fpu.addr(), t.kstack.top());
    let root = k.space_ref(c.pid).ok_or(Error::InvalidArgument)?.root;
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
