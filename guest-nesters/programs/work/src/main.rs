//! `work KIND N`: one workload, timed with the TSC, reported as `BENCH work.KIND <ns> ns N`
//! plus a checksum line (`work: KIND checksum X`) so runs at every nesting depth can be
//! compared for identical output.
//!
//! - `syscall N`: N small kernel calls (`time`),
//! - `ipc N`: N call/reply round trips with a server in another space,
//! - `memory PAGES`: writes a pattern over PAGES fresh pages and reads it all back,
//! - `compute N`: N rounds of integer mixing, no kernel calls,
//! - `deflate N [PROGRAM]`, `sha256 N [PROGRAM]`, `btree N [PROGRAM]`: maintained crates
//!   (`miniz_oxide`, `sha2`, `alloc`'s `BTreeMap`) on the bytes of a program of the image
//!   (`ktest` unless named), read before the clock starts (see `real`),
//! - `spawn N`: N processes started and waited for, one after the other, each `work nop`
//!   (which exits at once): through the process manager when one is above (at any depth),
//!   else the kernel's own spawn and wait; also reported per process as
//!   `BENCH proc.spawn_wait <ns> ns N`,
//! - `nop`: exits at once with status 0,
//! - `ticker N [MS]`: N steps MS ms apart (default 20), each printing its running checksum
//!   and the guest's clock (`work: tick I checksum X guest-ms T`): what the VMM's pause,
//!   resume and snapshot tests watch (the sequence without the clock must not change).
#![no_std]
#![no_main]

extern crate alloc;

mod real;

use fluke_abi::syscall::BenchOp;
use fluke_rt::sys::{self, NO_CAP};
use fluke_rt::{println, NumBuf};

const MEMORY_BASE: u64 = 0x3000_0000;
/// The stack the real workloads get beyond the usual 64 KiB: `miniz_oxide`'s compressor
/// alone is more than 64 KiB, and it lives on the stack.
const REAL_STACK: u64 = 1024 * 1024;

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let kind = args.get(0).unwrap_or("");
    let n: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .max(1);
    if kind == "ipc-server" {
        return ipc_server();
    }
    if kind == "nop" {
        return 0;
    }
    if kind == "ticker" {
        let period_ms: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
        return ticker(n, period_ms);
    }
    let khz = sys::bench(BenchOp::TscKhz, 0).unwrap_or(1_000_000);
    if let Some(run) = real_workload(kind) {
        if let Err(e) = fluke_rt::grow_stack(REAL_STACK) {
            println!("work: cannot grow the stack: {e:?}");
            return 1;
        }
        let Some(input) = real::read_input(args.get(2).unwrap_or(real::DEFAULT_INPUT)) else {
            return 1;
        };
        let start = sys::rdtsc();
        let Some(result) = run(&input, n) else {
            return 1;
        };
        let ticks = sys::rdtsc() - start;
        println!("work: {kind} checksum {result}");
        report(kind, n, ticks, khz);
        return 0;
    }
    let start = sys::rdtsc();
    let checksum = match kind {
        "syscall" => (0..n).fold(0u64, |acc, _| {
            acc.wrapping_add(u64::from(sys::time_ns() > 0))
        }),
        "ipc" => match ipc_client(n) {
            Some(c) => c,
            None => return 1,
        },
        "spawn" => match spawn_wait(n) {
            Some(c) => c,
            None => return 1,
        },
        "memory" => match memory(n) {
            Some(c) => c,
            None => return 1,
        },
        "compute" => (0..n).fold(0x9e37_79b9u64, |acc, i| {
            let mut x = acc ^ i;
            for _ in 0..64 {
                x = x.rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (x >> 29);
            }
            x
        }),
        _ => {
            println!("work: unknown workload {kind:?}");
            return 2;
        }
    };
    let ticks = sys::rdtsc() - start;
    println!("work: {kind} checksum {checksum:#x}");
    report(kind, n, ticks, khz);
    if kind == "spawn" {
        println!(
            "BENCH proc.spawn_wait {:.1} ns {n}",
            ticks as f64 * 1_000_000.0 / khz as f64 / n as f64
        );
    }
    0
}

/// The workloads of maintained crates on the image's bytes (`real`).
fn real_workload(kind: &str) -> Option<real::Workload> {
    match kind {
        "deflate" => Some(real::deflate),
        "sha256" => Some(real::sha256),
        "btree" => Some(real::btree),
        _ => None,
    }
}

fn report(kind: &str, n: u64, ticks: u64, khz: u64) {
    println!(
        "BENCH work.{kind} {:.1} ns {n}",
        ticks as f64 * 1_000_000.0 / khz as f64
    );
}

fn ticker(n: u64, period_ms: u64) -> i32 {
    let start = sys::time_ns();
    let mut checksum = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..n {
        sys::sleep_ns(period_ms * 1_000_000);
        for b in i.to_le_bytes() {
            checksum = (checksum ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let guest_ms = (sys::time_ns() - start) / 1_000_000;
        println!("work: tick {i} checksum {checksum:#018x} guest-ms {guest_ms}");
    }
    println!("work: ticker checksum {checksum:#018x}");
    0
}

fn ipc_client(n: u64) -> Option<u64> {
    let set = sys::port_set_create().ok()?;
    let port = sys::port_create(set, 1).ok()?;
    // Through the process manager if there is one above us (at any depth).
    let server = fluke_rt::proc::spawn("work", &["ipc-server"], Some(set)).ok()?;
    let mut acc = 0u64;
    for i in 0..n {
        let m = sys::ipc_call(port, [i, 0, 0, 0], NO_CAP).ok()?;
        acc = acc.wrapping_add(m.words[0]);
    }
    sys::ipc_send_reliable(port, [u64::MAX, 0, 0, 0], NO_CAP, &[]).ok()?;
    (fluke_rt::proc::wait(server) == Ok(0)).then_some(acc)
}

/// `n` processes of `work nop`, each waited for before the next starts; the checksum is
/// the number that exited with status 0.
fn spawn_wait(n: u64) -> Option<u64> {
    let mut ok = 0u64;
    for _ in 0..n {
        let id = fluke_rt::proc::spawn("work", &["nop"], None).ok()?;
        if fluke_rt::proc::wait(id) == Ok(0) {
            ok += 1;
        }
    }
    (ok == n).then_some(ok)
}

fn ipc_server() -> i32 {
    let set = 0; // the port set our client handed us
    let mut msg = sys::ipc_wait(set);
    while let Ok(m) = msg {
        if m.words[0] == u64::MAX {
            return 0;
        }
        msg = sys::ipc_reply_wait(set, [m.words[0] * 2 + 1, 0, 0, 0], NO_CAP);
    }
    1
}

fn memory(pages: u64) -> Option<u64> {
    sys::map_anon(MEMORY_BASE, pages * 4096).ok()?;
    for i in 0..pages {
        for w in 0..8 {
            // SAFETY: inside the demand-zero range just reserved.
            unsafe {
                core::ptr::write_volatile((MEMORY_BASE + i * 4096 + w * 512) as *mut u64, i * 8 + w)
            };
        }
    }
    let mut acc = 0u64;
    for i in 0..pages {
        for w in 0..8 {
            // SAFETY: as above.
            let v = unsafe {
                core::ptr::read_volatile((MEMORY_BASE + i * 4096 + w * 512) as *const u64)
            };
            if v != i * 8 + w {
                println!("work: memory: page {i} word {w} holds {v}");
                return None;
            }
            acc = acc.wrapping_add(v);
        }
    }
    let _ = NumBuf::new();
    Some(acc)
}
