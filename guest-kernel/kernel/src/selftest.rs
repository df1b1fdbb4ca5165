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

/// `bench(SwitchFloorJoin)`: registers the calling thread as one side of the bare-switch
/// pair (entry.S floor_switch). The second join activates the pair; the pair's threads then
/// switch with `syscall(FLOOR_SWITCH)`, which saves nothing but RIP, RFLAGS and RSP.
pub fn floor_join() -> Result<u64, fluke_abi::syscall::Error> {
    use crate::arch::percpu;
    use crate::sched::{self, kernel};
    use fluke_abi::syscall::Error;
    let k = kernel();
    let tid = sched::current().ok_or(Error::InvalidArgument)?;
    let t = k.threads.get_mut(tid).ok_or(Error::InvalidArgument)?;
    let regs = &mut *t.regs as *mut _ as u64;
    let kstack = t.kstack.top();
    let root = k
        .processes
        .get(t.process)
        .and_then(|p| p.space.as_ref())
        .map(|s| s.root)
        .ok_or(Error::InvalidArgument)?;
    // SAFETY: single CPU.
    let pc = unsafe { percpu::get() };
    if pc.floor_active == 0 && pc.floor_regs[0] == regs {
        return Ok(0); // already waiting for a partner
    }
    let side = if pc.floor_regs[0] == 0 || pc.floor_active != 0 {
        0
    } else {
        1
    };
    if side == 0 {
        pc.floor_active = 0;
        pc.floor_regs = [0; 2];
    }
    pc.floor_regs[side] = regs;
    pc.floor_root[side] = root;
    pc.floor_kstack[side] = kstack;
    pc.floor_thread[side] = tid.to_u64();
    if side == 1 {
        pc.floor_cur = 1;
        pc.floor_active = 1;
    }
    Ok(side as u64)
}

/// Dissolves the floor pair if `tid` is in it (the thread is ending).
pub fn floor_leave(tid: crate::thread::ThreadId) {
    // SAFETY: single CPU.
    let pc = unsafe { crate::arch::percpu::get() };
    if pc.floor_thread.contains(&tid.to_u64()) && pc.floor_regs != [0; 2] {
        pc.floor_active = 0;
        pc.floor_regs = [0; 2];
        pc.floor_thread = [0; 2];
    }
}
