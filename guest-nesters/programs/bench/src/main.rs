//! In-guest microbenchmarks, run as init by `fluke-vmm bench` (`fluke.init=bench,WHAT,N`).
//! Each prints one line `BENCH <name> <value> <unit> <iterations>` that the VMM parses.
#![no_std]
#![no_main]

use fluke_abi::syscall::BenchOp;
use fluke_rt::sys::NO_CAP;
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
            if let Err(e) = sys::enable_floor_calls(sys::INIT_BENCH_CAP) {
                println!("bench: the floor call needs the benchmark capability (init's): {e:?}");
                return 1;
            }
            let mut failed = 0u64;
            let t = timed(|| {
                for _ in 0..n {
                    failed += u64::from(!sys::floor_syscall());
                }
            });
            if failed != 0 {
                println!("bench: {failed} floor calls did not take the floor path");
                return 1;
            }
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
        "touch" => {
            // N pages written, then one word of each read back, timed: with the VMM paging
            // guest RAM (`run --memory-resident` below N pages) each read is a page the host
            // brings back from its store (`vmm.uffd_fault`); without, a read of memory.
            if sys::map_anon(FAULT_BASE, n * 4096).is_err() {
                return 1;
            }
            for i in 0..n {
                // SAFETY: inside the demand-zero range just reserved.
                unsafe { core::ptr::write_volatile((FAULT_BASE + i * 4096) as *mut u64, i) };
            }
            let mut wrong = 0u64;
            let t = timed(|| {
                for i in 0..n {
                    // SAFETY: as above.
                    let v =
                        unsafe { core::ptr::read_volatile((FAULT_BASE + i * 4096) as *const u64) };
                    wrong += u64::from(v != i);
                }
            });
            if wrong != 0 {
                println!("bench: touch: {wrong} pages read back wrong");
                return 1;
            }
            report("guest.page_touch", t, n);
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
            report("guest.space_switch", t, n); // per round trip A->B->A (two switches)
        }
        "yielder" => loop {
            sys::yield_now();
        },
        "switch-floor" => {
            // The partner gets the benchmark capability as its name 0.
            let Ok(_partner) =
                sys::spawn_with_caps("bench", &["floor-partner"], &[sys::INIT_BENCH_CAP])
            else {
                return 1;
            };
            // The partner runs at our yield and joins first (side 0); our join activates the
            // pair with us running.
            sys::yield_now();
            let joined = sys::floor_join(sys::INIT_BENCH_CAP);
            if joined != Ok(1) {
                println!("bench: the floor pair did not form: {joined:?}");
                return 1;
            }
            let mut failed = 0u64;
            let t = timed(|| {
                for _ in 0..n {
                    failed += u64::from(!sys::floor_switch());
                }
            });
            if failed != 0 {
                // The scheduler ran (another thread became runnable) and dissolved the pair.
                println!("bench: the floor pair dissolved; {failed} switches did not happen");
                return 1;
            }
            report("platform.switch_floor", t, n); // per round trip A->B->A (two switches)
        }
        "ipc" | "ipc-send" | "ipc-cap" => return ipc_server(what, n),
        "state" => {
            // A child blocked in a receive that never comes; stopped once, then its whole
            // state is read and written back n times.
            let Ok(child) = sys::spawn_child("bench", &["blocked"], &[]) else {
                return 1;
            };
            sys::yield_now();
            if sys::thread_stop(child.thread).is_err() {
                return 1;
            }
            let mut failures = 0u64;
            let t = timed(|| {
                for _ in 0..n {
                    match sys::thread_get_state(child.thread) {
                        Ok(r) => {
                            failures += u64::from(sys::thread_set_state(child.thread, &r).is_err())
                        }
                        Err(_) => failures += 1,
                    }
                }
            });
            if failures != 0 {
                println!("bench: thread state round trip failed {failures} times");
                return 1;
            }
            report("thread.state_roundtrip", t, n);
        }
        "keeper" => {
            // A child touches n pages of a region whose keeper (this program) provides
            // each page on the fault message and replies.
            const REGION: u64 = 0x3000_0000;
            const CHILD: u64 = 0x5000_0000;
            let (Ok(set), size) = (sys::port_set_create(), n * 4096) else {
                return 1;
            };
            let Ok(port) = sys::port_create(set, 1) else {
                return 1;
            };
            let mut num = fluke_rt::NumBuf::new();
            let setup =
                sys::map_anon(REGION, size).and_then(|_| sys::region_create(REGION, size, port));
            let Ok(region) = setup else { return 1 };
            let Ok(child) = sys::spawn_child("bench", &["keeper-child", num.format(n)], &[port])
            else {
                return 1;
            };
            if sys::mapping_create(child.space, region, CHILD, true).is_err() {
                return 1;
            }
            let mut msg = sys::ipc_wait(set);
            while let Ok(m) = msg {
                if m.words[0] != sys::fault::REGION {
                    break;
                }
                // SAFETY: inside this program's demand-zero backing of the region.
                unsafe { core::ptr::write_volatile((REGION + m.words[1]) as *mut u8, 1) };
                msg = sys::ipc_reply_wait(set, [0; 4], NO_CAP);
            }
            return i32::from(sys::wait(child.pid) != Ok(0));
        }
        "keeper-child" => {
            const CHILD: u64 = 0x5000_0000;
            let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
            let t = timed(|| {
                for i in 0..n {
                    // SAFETY: the parent's region is mapped here; each touch faults to it.
                    unsafe { core::ptr::read_volatile((CHILD + i * 4096) as *const u8) };
                }
            });
            report("keeper.fault", t, n);
            let _ = sys::ipc_send_reliable(0, [0; 4], NO_CAP, &[]);
        }
        "blocked" => {
            let Ok(set) = sys::port_set_create() else {
                return 1;
            };
            let _ = sys::ipc_wait(set);
        }
        // lmbench's `lat_ctx`, the microkernel way: a ring of RING processes (this one and
        // RING - 1 children) passing a token, each waiting on its own port set and sending
        // reliably to the next one's port; N laps; the record is the time per hop (one
        // process switch with its IPC), as lat_ctx reports per switch.
        "ring" => return ring(n, khz),
        // sel4bench's one-way IPC: each direction of a call timed on its own, with TSC
        // stamps carried in the message (one CPU, one TSC), minus the timer read's own cost.
        "oneway" => return oneway(n, khz),
        "oneway-server" => {
            // Name 0: the set. Each call's words[0] is the caller's stamp just before its
            // `syscall`; the call's one-way time is summed; the reply carries our stamp
            // taken just before ours. At the QUIT call the sum goes back in the reply, and
            // the wait after it ends when the caller destroys the set.
            let (mut sum, mut calls) = (0u64, 0u64);
            let mut msg = sys::ipc_wait(0);
            loop {
                let now = sys::rdtsc();
                let Ok(m) = msg else { return 1 };
                if m.words[0] == QUIT {
                    let _ = sys::ipc_reply_wait(0, [sum, calls, 0, 0], NO_CAP);
                    return 0;
                }
                sum += now.saturating_sub(m.words[0]);
                calls += 1;
                msg = sys::ipc_reply_wait(0, [sys::rdtsc(), 0, 0, 0], NO_CAP);
            }
        }
        "ring-member" => {
            // Name 0: our set; name 1: the next one's port. Passes every token on, until
            // the quit token, which it passes on too.
            loop {
                let token = match sys::ipc_wait(0) {
                    Ok(m) => m.words[0],
                    Err(_) => return 1,
                };
                if sys::ipc_send_reliable(1, [token, 0, 0, 0], NO_CAP, &[]).is_err() {
                    return 1;
                }
                if token == QUIT {
                    return 0;
                }
            }
        }
        "ipc-client" => {
            return ipc_client(
                args.get(1).unwrap_or(""),
                args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1),
                khz,
            )
        }
        "floor-partner" => {
            // Joins, then waits in a kernel call (a yield) so the pair can resume it there.
            let _ = sys::floor_join(0); // the capability init passed
            loop {
                if !sys::floor_switch() {
                    sys::yield_now();
                }
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

const QUIT: u64 = u64::MAX;

/// `oneway`: N calls to a server in another space, each direction timed with TSC stamps
/// the message carries (sel4bench's one-way IPC), the cost of reading the TSC measured the
/// same way (two reads back to back) and subtracted; in ns and in cycles.
fn oneway(n: u64, khz: u64) -> i32 {
    let made = sys::port_set_create().and_then(|s| sys::port_create(s, 1).map(|p| (s, p)));
    let Ok((set, port)) = made else {
        return 1;
    };
    let Ok(server) = sys::spawn_with_caps("bench", &["oneway-server"], &[set]) else {
        return 1;
    };
    // The timer's own cost: the least of many back-to-back pairs (what a stamp adds).
    let overhead = (0..10_000)
        .map(|_| {
            let a = sys::rdtsc();
            sys::rdtsc() - a
        })
        .min()
        .unwrap_or(0);
    let mut reply_sum = 0u64;
    let _ = sys::ipc_call(port, [sys::rdtsc(), 0, 0, 0], NO_CAP); // warm: both have run
    for _ in 0..n {
        match sys::ipc_call(port, [sys::rdtsc(), 0, 0, 0], NO_CAP) {
            Ok(m) => reply_sum += sys::rdtsc().saturating_sub(m.words[0]),
            Err(e) => {
                println!("bench: oneway: {e:?}");
                return 1;
            }
        }
    }
    let Ok(done) = sys::ipc_call(port, [QUIT, 0, 0, 0], NO_CAP) else {
        return 1;
    };
    // The server waits again after its last reply: destroying the set ends that wait.
    let _ = sys::destroy(set);
    let _ = sys::wait(server);
    // The server counted the warm-up call too.
    let (call_sum, calls) = (done.words[0], done.words[1].max(1));
    let per = |sum: u64, count: u64| (sum as f64 / count as f64 - overhead as f64).max(0.0);
    let (call, reply) = (per(call_sum, calls), per(reply_sum, n));
    let ns = |cycles: f64| cycles * 1_000_000.0 / khz as f64;
    println!(
        "BENCH sel4bench.timer_overhead {:.1} ns {n}",
        ns(overhead as f64)
    );
    println!("BENCH sel4bench.ipc_call_oneway {:.1} ns {calls}", ns(call));
    println!("BENCH sel4bench.ipc_reply_oneway {:.1} ns {n}", ns(reply));
    println!("BENCH sel4bench.ipc_call_oneway_cycles {call:.0} cycles {calls}");
    println!("BENCH sel4bench.ipc_reply_oneway_cycles {reply:.0} cycles {n}");
    0
}

/// Processes in the `ring` benchmark (lat_ctx's default list starts at 2; 8 is a ring long
/// enough that each hop is a switch to a process not run just before).
const RING: usize = 8;

/// The `ring` benchmark's first member: makes each member's port set and port, starts the
/// others, sends the token round `laps` times and times it.
fn ring(laps: u64, khz: u64) -> i32 {
    let mut sets = [NO_CAP; RING];
    let mut ports = [NO_CAP; RING];
    for i in 0..RING {
        let made = sys::port_set_create().and_then(|s| sys::port_create(s, 1).map(|p| (s, p)));
        let Ok((set, port)) = made else {
            println!("bench: ring: no port set");
            return 1;
        };
        (sets[i], ports[i]) = (set, port);
    }
    let mut members = [0u64; RING];
    for i in 1..RING {
        match sys::spawn_with_caps("bench", &["ring-member"], &[sets[i], ports[(i + 1) % RING]]) {
            Ok(pid) => members[i] = pid,
            Err(e) => {
                println!("bench: ring: cannot start member {i}: {e:?}");
                return 1;
            }
        }
    }
    let pass = |token: u64| {
        sys::ipc_send_reliable(ports[1], [token, 0, 0, 0], NO_CAP, &[])
            .and_then(|_| sys::ipc_wait(sets[0]))
            .map(|m| m.words[0] == token)
    };
    // One lap unmeasured: every member has run once and waits.
    if pass(0) != Ok(true) {
        println!("bench: ring: the token did not come back");
        return 1;
    }
    let start = sys::rdtsc();
    for lap in 1..=laps {
        if pass(lap) != Ok(true) {
            println!("bench: ring: lap {lap} lost the token");
            return 1;
        }
    }
    let ticks = sys::rdtsc() - start;
    let _ = pass(QUIT);
    for pid in &members[1..] {
        let _ = sys::wait(*pid);
    }
    let hops = laps * RING as u64;
    let ns = ticks as f64 * 1_000_000.0 / khz as f64 / hops as f64;
    println!("BENCH lmbench.lat_ctx {ns:.1} ns {hops}");
    0
}

/// The server side of the IPC benchmarks: answers calls (moving a received capability
/// back) and swallows one-way messages until the client's quit message.
fn ipc_server(what: &str, n: u64) -> i32 {
    let Ok(set) = sys::port_set_create() else {
        return 1;
    };
    let Ok(port) = sys::port_create(set, 1) else {
        return 1;
    };
    let mut num = fluke_rt::NumBuf::new();
    let Ok(child) = sys::spawn_with_caps("bench", &["ipc-client", what, num.format(n)], &[port])
    else {
        return 1;
    };
    let mut msg = sys::ipc_wait(set);
    while let Ok(m) = msg {
        if m.words[0] == QUIT {
            break;
        }
        msg = if what == "ipc-send" {
            sys::ipc_wait(set)
        } else {
            sys::ipc_reply_wait(set, m.words, m.cap)
        };
    }
    match sys::wait(child) {
        Ok(0) => 0,
        other => {
            println!("bench: ipc client ended with {other:?}");
            1
        }
    }
}

fn ipc_client(what: &str, n: u64, khz: u64) -> i32 {
    let port = 0;
    let cap = if what == "ipc-cap" {
        match sys::port_set_create() {
            Ok(c) => c,
            Err(_) => return 1,
        }
    } else {
        NO_CAP
    };
    let mut errors = 0u64;
    let start = sys::rdtsc();
    let mut c = cap;
    for i in 0..n {
        match what {
            // At most once: a send finding the server not waiting (it was preempted before
            // it got back to its wait) is dropped; let the server run and send again.
            "ipc-send" => loop {
                match sys::ipc_send(port, [i, 0, 0, 0], NO_CAP) {
                    Ok(true) => break,
                    Ok(false) => sys::yield_now(),
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            },
            _ => match sys::ipc_call(port, [i, 0, 0, 0], c) {
                Ok(m) => c = m.cap,
                Err(_) => errors += 1,
            },
        }
    }
    let ticks = sys::rdtsc() - start;
    let name = match what {
        "ipc-send" => "ipc.send",
        "ipc-cap" => "ipc.cap_transfer",
        _ => "ipc.call_reply",
    };
    if errors != 0 || (what == "ipc-cap" && c == NO_CAP) {
        println!("bench: {name}: {errors} failed operations");
        return 1;
    }
    println!(
        "BENCH {name} {:.1} ns {n}",
        ticks as f64 * 1_000_000.0 / khz as f64 / n as f64
    );
    // Reliable: a one-way send would be dropped if the server were not waiting yet.
    let _ = sys::ipc_send_reliable(port, [QUIT, 0, 0, 0], NO_CAP, &[]);
    0
}
