//! A CPU-bound process that never enters the kernel while it runs: it spins for the given
//! number of milliseconds (measured with RDTSC) and counts the times it was preempted, seen
//! as gaps of more than a millisecond between two consecutive TSC reads.
//! Usage: spinner NAME MILLISECONDS [segs]
//!
//! With `segs` it runs the spin in a child whose FS and GS bases it has set (with
//! thread_set_state) to two marker words of its image; the child reads both through its
//! segments at every step and reports whether they ever changed. A user context caught by
//! a VM snapshot with its own segment bases must get them back (kvm_pvm's restore swaps GS
//! bases by hand).
#![no_std]
#![no_main]

use fluke_abi::syscall::{BenchOp, ThreadRegs};
use fluke_rt::{println, sys};

/// What FS:0 and GS:0 read in the `segs` child (the same address in parent and child: one
/// image, linked at one address).
static MARKS: [u64; 2] = [0xf5f5_0000_0000_f5f5, 0x6565_0000_0000_6565];

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let name = args.get(0).unwrap_or("spinner");
    let ms_arg = args.get(1).unwrap_or("200");
    let ms: u64 = ms_arg.parse().unwrap_or(200);
    match args.get(2) {
        Some("segs") => with_segment_bases(name, ms_arg),
        Some("segs-child") => {
            // The parent sets the bases while this sleeps.
            sys::sleep_ns(100_000_000);
            spin(name, ms, true)
        }
        _ => spin(name, ms, false),
    }
}

fn with_segment_bases(name: &str, ms: &str) -> i32 {
    let child = match sys::spawn_child("spinner", &[name, ms, "segs-child"], &[]) {
        Ok(c) => c,
        Err(e) => {
            println!("spinner {name}: cannot start the child: {e:?}");
            return 2;
        }
    };
    let set = sys::thread_stop(child.thread)
        .and_then(|_| sys::thread_get_state(child.thread))
        .and_then(|regs| {
            let regs = ThreadRegs {
                fs_base: &MARKS[0] as *const u64 as u64,
                gs_base: &MARKS[1] as *const u64 as u64,
                ..regs
            };
            sys::thread_set_state(child.thread, &regs)
        })
        .and_then(|_| sys::thread_resume(child.thread));
    if let Err(e) = set {
        println!("spinner {name}: cannot set the child's segment bases: {e:?}");
        return 2;
    }
    sys::wait(child.pid).unwrap_or(2)
}

/// FS:0 and GS:0.
fn segment_words() -> (u64, u64) {
    let (fs, gs): (u64, u64);
    // SAFETY: reads one word through each segment; the parent pointed both at MARKS, which
    // is mapped readable for the life of the program.
    unsafe {
        core::arch::asm!(
            "mov {fs}, qword ptr fs:[0]",
            "mov {gs}, qword ptr gs:[0]",
            fs = out(reg) fs,
            gs = out(reg) gs,
            options(nostack, readonly, preserves_flags),
        );
    }
    (fs, gs)
}

fn spin(name: &str, ms: u64, check_segments: bool) -> i32 {
    let khz = sys::bench(BenchOp::TscKhz, 0).unwrap_or(1_000_000);
    let (duration, gap) = (ms * khz, khz); // ticks: total, 1 ms
    let start = sys::rdtsc();
    let (mut last, mut gaps, mut iterations, mut wrong) = (start, 0u64, 0u64, 0u64);
    loop {
        let now = sys::rdtsc();
        if now - last > gap {
            gaps += 1;
        }
        if check_segments && segment_words() != (MARKS[0], MARKS[1]) {
            wrong += 1;
        }
        last = now;
        iterations += 1;
        if now - start >= duration {
            break;
        }
    }
    println!("spinner {name}: done, {iterations} iterations, preempted {gaps} times");
    if check_segments {
        if wrong != 0 {
            println!("spinner {name}: segment bases wrong in {wrong} reads");
            return 3;
        }
        println!("spinner {name}: segment bases intact");
    }
    0
}
