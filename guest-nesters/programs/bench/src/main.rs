//! In-guest microbenchmarks, run as init by `fluke-vmm bench` (`fluke.init=bench,WHAT,N`).
//! Each prints one line `BENCH <name> <value> <unit> <iterations>` that the VMM parses.
#![no_std]
#![no_main]

use fluke_abi::syscall::BenchOp;
use fluke_rt::{println, sys};

const FAULT_BASE: u64 = 0x2000_0000;

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let what = args.get(0).unwrap_or("");
    let n: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000)
        .max(1);
    let khz = sys::bench(BenchOp::TscKhz, 0).unwrap_or(1_000_000);
    let ns = |ticks: u64, ops: u64| ticks as f64 * 1_000_000.0 / khz as f64 / ops as f64;
    let report =
        |name: &str, ticks: u64, ops: u64| println!("BENCH {name} {:.1} ns {ops}", ns(ticks, ops));
    match what {
        "null" => {
            let t = timed(|| {
                for _ in 0..n {
                    let _ = sys::null();
                }
            });
            report("guest.null_call", t, n);
        }
        "floor" => {
            let t = timed(|| {
                for _ in 0..n {
                    sys::floor_syscall();
                }
            });
            report("platform.syscall_floor", t, n);
        }
        "fault" => {
            if sys::map_anon(FAULT_BASE, n * 4096).is_err() {
                return 1;
            }
            let t = timed(|| {
                for i in 0..n {
                    // SAFETY: inside the demand-zero range just reserved.
                    unsafe { core::ptr::write_volatile((FAULT_BASE + i * 4096) as *mut u8, 1) };
                }
            });
            report("guest.user_fault", t, n);
        }
        "switch" => {
            let Ok(_partner) = sys::spawn("bench", &["yielder"]) else {
                return 1;
            };
            sys::yield_now(); // let the partner start
            let t = timed(|| {
                for _ in 0..n {
                    sys::yield_now();
                }
            });
            report("guest.space_switch", t, 2 * n);
        }
        "yielder" => loop {
            sys::yield_now();
        },
        "switch-floor" => {
            let Ok(_partner) = sys::spawn("bench", &["floor-partner"]) else {
                return 1;
            };
            // The partner runs at our yield and joins first (side 0); our join activates the
            // pair with us running.
            sys::yield_now();
            if sys::bench(BenchOp::SwitchFloorJoin, 0) != Ok(1) {
                println!("bench: the floor pair did not form");
                return 1;
            }
            let t = timed(|| {
                for _ in 0..n {
                    sys::floor_switch();
                }
            });
            report("platform.switch_floor", t, 2 * n);
        }
        "floor-partner" => {
            let _ = sys::bench(BenchOp::SwitchFloorJoin, 0);
            loop {
                sys::floor_switch();
            }
        }
        _ => {
            println!("bench: unknown benchmark {what:?}");
            return 2;
        }
    }
    0
}

fn timed(f: impl FnOnce()) -> u64 {
    let start = sys::rdtsc();
    f();
    sys::rdtsc() - start
}
