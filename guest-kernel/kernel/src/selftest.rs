//! Kernel self-tests and in-guest benchmarks, selected on the command line
//! (`fluke.test=NAME`, `fluke.bench=NAME`). The integration tests boot real guests with them.

use crate::arch::{cpu, platform};
use crate::kprintln;
use fluke_abi::ports::{BENCH, BENCH_BEGIN, BENCH_END, BENCH_TICK};

pub fn run(name: &str) {
    kprintln!("fluke: self-test {name}");
    match name {
        "panic" => panic!("self-test requested a panic"),
        // A kernel entry nested in another must stop the kernel, never alias its state.
        "kernel-reentry" => crate::kernel::with_kernel(|_| crate::kernel::with_kernel(|_| ())),
        "spin" => loop {
            core::hint::spin_loop();
        },
        "kstack-guard" => {
            // A write just below a thread's kernel stack, as an overflow would make.
            let Some(stack) = crate::kernel::thread::KernelStack::new() else {
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
