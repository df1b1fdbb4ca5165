//! A CPU-bound process that never enters the kernel while it runs: it spins for the given
//! number of milliseconds (measured with RDTSC) and counts the times it was preempted, seen
//! as gaps of more than a millisecond between two consecutive TSC reads.
//! Usage: spinner NAME MILLISECONDS
#![no_std]
#![no_main]

use fluke_abi::syscall::BenchOp;
use fluke_rt::{println, sys};

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let name = args.get(0).unwrap_or("spinner");
    let ms: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let khz = sys::bench(BenchOp::TscKhz, 0).unwrap_or(1_000_000);
    let (duration, gap) = (ms * khz, khz); // ticks: total, 1 ms
    let start = sys::rdtsc();
    let (mut last, mut gaps, mut iterations) = (start, 0u64, 0u64);
    loop {
        let now = sys::rdtsc();
        if now - last > gap {
            gaps += 1;
        }
        last = now;
        iterations += 1;
        if now - start >= duration {
            break;
        }
    }
    println!("spinner {name}: done, {iterations} iterations, preempted {gaps} times");
    0
}
