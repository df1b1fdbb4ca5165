//! Threads of a program's own space (a server's helpers).

use crate::sys::{self, ThreadRegs};
use crate::Error;
use fluke_abi::syscall::SELF_SPACE;

/// Starts a thread of this space running `entry(arg)` on a stack ending at `stack_top`
/// (memory of ours the thread has to itself). Returns the thread's capability, with which
/// it can be stopped, inspected or destroyed like any other.
pub fn start(entry: extern "C" fn(u64) -> !, arg: u64, stack_top: u64) -> Result<u64, Error> {
    start_with(entry, arg, stack_top, None)
}

/// [`start`], with `keeper` (a port) as the thread's keeper from before it runs: a fault at
/// its very first instruction already goes to the keeper (set after `start`, a fault before
/// it would end the process).
pub fn start_kept(
    entry: extern "C" fn(u64) -> !,
    arg: u64,
    stack_top: u64,
    keeper: u64,
) -> Result<u64, Error> {
    start_with(entry, arg, stack_top, Some(keeper))
}

fn start_with(
    entry: extern "C" fn(u64) -> !,
    arg: u64,
    stack_top: u64,
    keeper: Option<u64>,
) -> Result<u64, Error> {
    let thread = sys::thread_create(SELF_SPACE)?;
    let rip = entry as usize as u64;
    let regs = ThreadRegs {
        rip,
        rcx: rip,
        // As after a `call`: 16-byte aligned plus the return address slot.
        rsp: (stack_top & !15) - 8,
        rdi: arg,
        rflags: 0x202,
        r11: 0x202,
        ..Default::default()
    };
    let started = keeper
        .map_or(Ok(0), |port| sys::thread_set_keeper(thread, port))
        .and_then(|_| sys::thread_set_state(thread, &regs))
        .and_then(|_| sys::thread_resume(thread));
    if let Err(e) = started {
        let _ = sys::destroy(thread);
        return Err(e);
    }
    Ok(thread)
}
