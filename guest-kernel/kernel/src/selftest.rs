//! Kernel self-tests and in-guest benchmarks, selected on the command line
//! (`fluke.test=NAME`, `fluke.bench=NAME`). The integration tests boot real guests with them.

use crate::arch::{cpu, platform};
use crate::kprintln;
use fluke_abi::ports::{BENCH, BENCH_BEGIN, BENCH_END, BENCH_TICK};

pub fn run(name: &str) {
    kprintln!("fluke: self-test {name}");
    match name {
        "panic" => panic!("self-test requested a panic"),
        "spin" => loop {
            core::hint::spin_loop();
        },
        "kstack-guard" => {
            // A write just below a thread's kernel stack, as an overflow would make.
            let Some(stack) = crate::thread::KernelStack::new() else {
                panic!("no kernel stack");
            };
            kprintln!(
                "fluke: kernel stack {:#x}..{:#x}",
                stack.bottom(),
                stack.top()
            );
            // SAFETY: none: this deliberately writes the guard page to show it is unmapped.
            unsafe { core::ptr::write_volatile((stack.bottom() - 8) as *mut u64, 0) };
            kprintln!("fluke: the guard page was writable");
        }
        "kernel-fault" => {
            // SAFETY: none: this deliberately reads an unmapped address to exercise the
            // kernel-fault report path.
            let v = unsafe { core::ptr::read_volatile(0x10_0000_0000usize as *const u64) };
            kprintln!("fluke: read {v}");
        }
        _ => {
            if let Some(code) = name
                .strip_prefix("exit:")
                .and_then(|c| c.parse::<u8>().ok())
            {
                platform::exit(code);
            }
            kprintln!("fluke: unknown self-test {name}");
            platform::exit(fluke_abi::status::KERNEL_PANIC);
        }
    }
}

pub fn bench(name: &str) {
    let (what, count) = name.split_once(':').unwrap_or((name, ""));
    let count: u32 = count.parse().unwrap_or(10_000);
    match what {
        "exit_roundtrip" => {
            // SAFETY: the bench port belongs to the kernel; writes are counted by the VMM.
            unsafe {
                cpu::outb(BENCH, BENCH_BEGIN);
                for _ in 0..count {
                    cpu::outb(BENCH, BENCH_TICK);
                }
                cpu::outb(BENCH, BENCH_END);
            }
        }
        _ => kprintln!("fluke: unknown benchmark {name}"),
    }
    platform::exit(fluke_abi::status::SUCCESS);
}

/// The floor pair's "no thread" marker (0 is a real id: init's first thread).
pub const NO_FLOOR_THREAD: u64 = u64::MAX;

/// Enables the floor paths for this boot (`fluke.floors=on`, passed only by `fluke-vmm bench`).
pub fn enable_floors() {
    crate::arch::percpu::get().floors_enabled.set(1);
}

// entry.S's floor switch leaves ERR_PEER_GONE (-11) as the result of a switch the pair's end
// interrupts: it must stay what `fluke_abi` decodes as PeerGone.
const _: () = assert!(fluke_abi::syscall::Error::PeerGone as i64 == 11);

/// `bench(SwitchFloorJoin)`: makes the calling thread one side of the bare-switch pair
/// (entry.S floor_switch). Only in a boot with `fluke.floors=on`.
///
/// With no thread waiting, the caller becomes side 0 and waits in this call, as in a yield:
/// it returns 0 when it runs again, by the scheduler (which ends the half-formed pair) or
/// by its partner's floor switch. A second thread's join finds it waiting and completes the
/// pair (returns 1, the caller running in it); the two then switch with
/// `syscall(FLOOR_SWITCH)`. So the thread the floor switch resumes is always one that
/// entered the kernel by SYSCALL and waits in it (its saved RCX and R11 are its RIP and
/// RFLAGS and the result is in its RAX): never one interrupted in user mode.
///
/// The pair never bypasses the scheduler's rules: it is dissolved whenever the scheduler
/// runs (a block, a yield, a preemption), and when either thread is stopped or ends.
pub fn floor_join() -> Result<u64, fluke_abi::syscall::Error> {
    use crate::arch::percpu;
    use crate::sched::{self, kernel};
    use crate::thread::ThreadState;
    use fluke_abi::syscall::Error;
    if percpu::get().floors_enabled.get() == 0 {
        return Err(Error::NoSuchCall);
    }
    let k = kernel();
    let tid = sched::current().ok_or(Error::InvalidArgument)?;
    let t = k.threads.get_mut(tid).ok_or(Error::InvalidArgument)?;
    let regs = &mut *t.regs as *mut _ as u64;
    let fpu = t.fpu_ptr();
    let kstack = t.kstack.top();
    let root = k
        .processes
        .get(t.process)
        .and_then(|p| p.space.as_ref())
        .map(|s| s.root)
        .ok_or(Error::InvalidArgument)?;
    let pc = percpu::get();
    // A waiting side 0 is in its join call and has not run since (`floor_resumed`).
    let partner_waiting = pc.floor_active.get() == 0
        && pc.floor_regs[0].get() != 0
        && pc.floor_thread[0].get() != tid.to_u64()
        && k.threads
            .get(crate::thread::ThreadId::from_u64(pc.floor_thread[0].get()))
            .is_some_and(|p| p.state == ThreadState::Runnable);
    let side = usize::from(partner_waiting);
    if side == 0 {
        floor_dissolve();
    }
    pc.floor_regs[side].set(regs);
    pc.floor_root[side].set(root);
    pc.floor_kstack[side].set(kstack);
    pc.floor_thread[side].set(tid.to_u64());
    pc.floor_fpu[side].set(fpu);
    if side == 1 {
        pc.floor_cur.set(1);
        pc.floor_active.set(1);
        return Ok(1);
    }
    // Wait in the call: the result is in place for whichever way it is resumed.
    if let Some(t) = kernel().threads.get_mut(tid) {
        t.regs.rax = 0;
    }
    sched::yield_current()
}

/// The scheduler is about to run `tid`: a side 0 still waiting for a partner stops
/// waiting (it returns from its join), so the half-formed pair ends.
pub fn floor_resumed(tid: crate::thread::ThreadId) {
    let pc = crate::arch::percpu::get();
    if pc.floor_active.get() == 0 && pc.floor_thread[0].get() == tid.to_u64() {
        floor_dissolve();
    }
}

/// Ends the floor pair (or a half-formed one) if `tid` is in it.
pub fn floor_leave(tid: crate::thread::ThreadId) {
    let pc = crate::arch::percpu::get();
    if pc.floor_thread.iter().any(|t| t.get() == tid.to_u64()) {
        floor_dissolve();
    }
}

/// Whether `tid` is a member of the active floor pair.
pub fn in_active_floor_pair(tid: crate::thread::ThreadId) -> bool {
    let pc = crate::arch::percpu::get();
    pc.floor_active.get() != 0 && pc.floor_thread.iter().any(|t| t.get() == tid.to_u64())
}

/// Ends an active floor pair: the scheduler is about to decide who runs.
pub fn floor_end_active() {
    if crate::arch::percpu::get().floor_active.get() != 0 {
        floor_dissolve();
    }
}

fn floor_dissolve() {
    let pc = crate::arch::percpu::get();
    pc.floor_active.set(0);
    for side in 0..2 {
        pc.floor_regs[side].set(0);
        pc.floor_thread[side].set(NO_FLOOR_THREAD);
        pc.floor_fpu[side].set(0);
    }
}
