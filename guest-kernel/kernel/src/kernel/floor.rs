//! The bare-switch benchmark pair's state (`platform.switch_floor`, entry.S floor_switch):
//! two threads that switch to each other without the scheduler while the pair lasts. The
//! scheduler ends the pair whenever it has to decide who runs. Reached only by threads that
//! presented the benchmark capability (dispatch/bench.rs), which only init receives.

use super::thread::ThreadId;
use crate::arch::percpu;

/// The floor pair's "no thread" marker (0 is a real id: init's first thread).
pub const NO_FLOOR_THREAD: u64 = u64::MAX;

// entry.S's floor switch leaves ERR_PEER_GONE (-11) as the result of a switch the pair's end
// interrupts: it must stay what `fluke_abi` decodes as PeerGone.
const _: () = assert!(fluke_abi::syscall::Error::PeerGone as i64 == 11);

/// Whether entry.S takes the bare floor call for the thread about to run (its
/// `Thread::floor_calls`): set on every switch, and by the call that enables it. The floor
/// switch does not change it: both members of a pair have it (joining enables it).
pub fn allow_calls(allowed: bool) {
    percpu::get().floors_enabled.set(u64::from(allowed));
}

/// The scheduler is about to run `tid`: a side 0 still waiting for a partner stops
/// waiting (it returns from its join), so the half-formed pair ends.
pub fn resumed(tid: ThreadId) {
    let pc = percpu::get();
    if pc.floor_active.get() == 0 && pc.floor_thread[0].get() == tid.to_u64() {
        dissolve();
    }
}

/// Ends the floor pair (or a half-formed one) if `tid` is in it.
pub fn leave(tid: ThreadId) {
    let pc = percpu::get();
    if pc.floor_thread.iter().any(|t| t.get() == tid.to_u64()) {
        dissolve();
    }
}

/// Whether `tid` is a member of the active floor pair.
pub fn in_active_pair(tid: ThreadId) -> bool {
    let pc = percpu::get();
    pc.floor_active.get() != 0 && pc.floor_thread.iter().any(|t| t.get() == tid.to_u64())
}

/// Ends an active floor pair: the scheduler is about to decide who runs.
pub fn end_active() {
    if percpu::get().floor_active.get() != 0 {
        dissolve();
    }
}

/// Side 0 of a pair waits in its join call: whether `tid` may join as side 1 (a side 0
/// that is another thread, still runnable and not resumed since its join).
pub fn partner_waiting(tid: ThreadId, runnable: impl Fn(ThreadId) -> bool) -> bool {
    let pc = percpu::get();
    pc.floor_active.get() == 0
        && pc.floor_regs[0].get() != 0
        && pc.floor_thread[0].get() != tid.to_u64()
        && runnable(ThreadId::from_u64(pc.floor_thread[0].get()))
}

/// What the floor switch needs of one side.
pub struct Side {
    pub regs: u64,
    pub root: u64,
    pub kstack: u64,
    pub thread: ThreadId,
    pub fpu: u64,
}

/// Records one side of the pair; side 1 completes it (the pair is then active).
pub fn set_side(side: usize, s: Side) {
    let pc = percpu::get();
    if side == 0 {
        dissolve();
    }
    pc.floor_regs[side].set(s.regs);
    pc.floor_root[side].set(s.root);
    pc.floor_kstack[side].set(s.kstack);
    pc.floor_thread[side].set(s.thread.to_u64());
    pc.floor_fpu[side].set(s.fpu);
    if side == 1 {
        pc.floor_cur.set(1);
        pc.floor_active.set(1);
    }
}

fn dissolve() {
    let pc = percpu::get();
    pc.floor_active.set(0);
    for side in 0..2 {
        pc.floor_regs[side].set(0);
        pc.floor_thread[side].set(NO_FLOOR_THREAD);
        pc.floor_fpu[side].set(0);
    }
}
