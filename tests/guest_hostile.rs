//! Regression tests for the holes a hostile program could use (issue 9), on both backends:
//! kvm_pvm under fluke-vmm and QEMU TCG (native backend, with SMEP/SMAP from `-cpu max`).
//! Each boots the real image with `fluke.init=ktest,CASE` and checks what the guest saw.

mod support;

use support::*;

/// Both lines are on the console, `first` before `then`.
fn assert_in_order(who: &str, run: &Run, first: &str, then: &str, what: &str) {
    let (a, b) = (run.console.find(first), run.console.find(then));
    assert!(
        matches!((a, b), (Some(a), Some(b)) if a < b),
        "{who}: {what}: {}",
        run.console
    );
}

#[test]
fn hostile_register_state_page_zero_compat_syscall_fpu_and_floors_are_refused() {
    for (who, run) in both("fluke.init=ktest,hostile") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: hostile: 0 unexpected");
        // The compatibility-mode SYSCALL is refused by the kernel's CSTAR entry natively; on
        // kvm_pvm the far jump to the 32-bit segment already faults.
        if who == "qemu" {
            run.assert_console("SYSCALL from 32-bit compatibility mode refused");
            run.assert_console("fluke: cpu protections: smep smap umip");
        }
        run.assert_console("victim: fpu-get: 0 non-zero register bytes");
        run.assert_console("victim: fpu-set: x87 kept true, xmm0 kept true, xmm7 kept true");
        run.assert_console(
            "victim: floor-nocap: join Err(BadCap), enable Err(BadCap), floor call false, floor switch false",
        );
    }
}

#[test]
fn vector_state_and_segment_bases_are_switched_exported_and_loaded_safely() {
    for (who, run) in both("fluke.init=ktest,xstate") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: xstate: 0 unexpected");
        run.assert_console("victim: seg-read: fs:[0] 0xf5f5f5, gs:[8] 0x656565");
        run.assert_console("victim: seg-reload: 200 selector loads");
        run.assert_console(" reads, 0 through a wrong base");
        run.assert_console(
            "ktest: xstate: bases kept beside a thread that reloads FS and GS (reader, reloader): (Ok(0), Ok(0)) ok",
        );
        if run.console.contains("platform kvm_pvm") {
            // User code has the host's XCR0 there (AVX at least): the AVX state is switched
            // and exported, and the GS base user code sets is its own.
            run.assert_console("fluke: fpu: xsave components");
            run.assert_console("victim: avx-set: ymm3 kept true, zmm16 kept true, k1 kept true");
            run.assert_console(
                "victim: avx-get: non-zero words: ymm upper halves 0, zmm16-31 0, k0-7 0",
            );
            run.assert_console("victim: gs base 0x0");
            run.assert_console("victim: avx-hold: ymm3 upper 0x5e7ba1e 0x5e7ba1e");
        } else {
            run.assert_console("ktest: xstate: AVX without OSXSAVE: Ok(134) ok");
        }
    }
}

#[test]
fn the_benchmark_floor_pair_keeps_every_rule() {
    for (who, run) in both("fluke.init=ktest,floors") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: floors: 0 unexpected");
        run.assert_console("victim: floor-seg: 500 switches, 0 with a wrong FS or GS base");
        run.assert_console(
            "ktest: floors: bases kept beside a partner that reloads FS and GS (reader, reloader): (Ok(0), Ok(0)) ok",
        );
        run.assert_console("victim: floor-nt: 300 switches, 0 returned with NT set");
        assert!(
            run.console.lines().any(|l| l
                .starts_with("ktest: floors: a runnable thread ends the pair")
                && l.ends_with(" ok")),
            "{who}: the pair was not ended by preemption: {}",
            run.console
        );
        run.assert_console("victim: floor-outsider: switched false");
        run.assert_console("victim: floor-out: 50 switches, now port I/O");
        assert!(
            run.console
                .contains("(victim) killed: general protection (#GP)"),
            "{who}: the partner's port I/O was not refused: {}",
            run.console
        );
    }
}

#[test]
fn a_spawned_child_runs_while_its_parent_spins_in_user_mode() {
    for (who, run) in both("fluke.init=ktest,starve") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        assert_in_order(
            who,
            &run,
            "victim: ok",
            "ktest: starve: parent spun",
            "the child did not run before the parent stopped spinning",
        );
    }
}

#[test]
fn a_mappings_charge_comes_back_when_its_target_space_ends() {
    for (who, run) in both("fluke.init=ktest,mapcharge,50") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: mapcharge: 50 cycles, 0 failed steps");
    }
}

#[test]
fn a_64_deep_chain_of_nested_spaces_is_torn_down_with_the_kernel_healthy() {
    for (who, run) in both("fluke.init=ktest,chain,64") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        assert_in_order(
            who,
            &run,
            "victim: sleep-forever",
            "ktest: chain: 64 spaces deep destroyed: Ok(0); kernel alive, new process exited Ok(0)",
            "the chain was not built to the bottom, or not torn down",
        );
    }
}

/// Finding F1 (issue 13): one page seen 2^depth times. The victim maps a region of its own
/// page twice into its own space, makes the two views a region, maps that twice, and so on,
/// 24 levels; then `mem_referenced`, `mem_discard` and destroying the first region walk the
/// page's views. Before the bound the walk ran the kernel heap out at the first of them (a
/// kernel panic: "memory allocation of 67108864 bytes failed"). Now the tenth level is
/// refused (MAX_VIEWS = 1024; nine levels make 1022 views), every walk finishes and leaves
/// no view of the discarded page, and the next process runs.
#[test]
fn a_page_whose_views_double_at_every_level_is_refused_at_the_bound() {
    for (who, run) in both("fluke.init=ktest,fanout,24") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console(
            "victim: fanout: 9 levels of doubling (1022 views of one page), then Some((10, TooManyViews))",
        );
        run.assert_console(
            "victim: fanout: 0 views read wrong; referenced Ok(true), discarded Ok(0), 0 stale views, first region destroyed Ok(0)",
        );
        run.assert_console(
            "ktest: fanout: capability given Ok(0); victim exited Ok(0); a new process exited Ok(0)",
        );
    }
}

/// Finding F1-1 (review of issue 13): removing a mapping walked every route upstream of it,
/// each step a scan of every mapping: under an 8-level doubling ladder (510 routes, 9
/// regions) with 2000 one-page regions mapped beside it, one `destroy` took seconds with
/// interrupts off. Now the walk takes each region once (`fluke_kcore::mapping`, where the
/// steps are counted and bounded). Here: the ladder, the mapping under it and the 2000
/// regions are all made, the views read our page, both destroys succeed, and the next
/// process runs (the time is printed, not asserted).
#[test]
fn removing_a_mapping_under_a_doubling_ladder_completes_and_the_kernel_stays_healthy() {
    for (who, run) in both("fluke.init=ktest,ladder,8,2000") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("victim: ladder: 8 levels, 2000 one-page regions mapped over it (in ");
        run.assert_console(
            " us); read through it true/true; the mapping under it destroyed Ok(0) in ",
        );
        run.assert_console("; the first region destroyed Ok(0) in ");
        run.assert_console(
            "ktest: ladder: capability given Ok(0); victim exited Ok(0); a new process exited Ok(0)",
        );
    }
}

/// Finding F1-3: a page mapped twice with an allowance of 300 each; what the first passes on
/// is refused at its allowance (299 more views), and the second can still pass its view on.
/// A third allowance of 900 does not fit beside them.
#[test]
fn an_allowance_keeps_a_siblings_views() {
    for (who, run) in both("fluke.init=ktest,allowance") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console(
            "victim: allowance: two mappings of allowance 300 true true, a third Err(TooManyViews); the first passed on 299 then TooManyViews; the second then true",
        );
        run.assert_console(
            "ktest: allowance: capability given Ok(0); victim exited Ok(0); a new process exited Ok(0)",
        );
    }
}

/// The wake-ups the ticker called `name` counted (victim `ticks`).
fn ticks(who: &str, run: &Run, name: &str) -> u64 {
    let prefix = format!("victim: ticks {name}: ");
    run.console
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{who}: no count from ticker {name}: {}", run.console))
}

/// Hole 7 (issue 13): a program looping with a non-canonical stack pointer. On kvm_pvm the
/// host emulates such user code (~1 µs an instruction) and holds the guest's interrupts off
/// for as long as one emulated instruction takes: beside a `rep stosb` over 16 MiB a ticker
/// (1-ms sleeps) got ~100 wake-ups in 500 ms where it gets ~458 alone, with or without a
/// keeper of the loop's own that resumes it at every fault. Now the kernel never returns to
/// user mode with such an RSP: the thread takes a stack fault at its first kernel entry
/// (killed without a keeper, status 128 + 12, also when it puts a good RSP back itself after
/// each fill; with one, it goes on faulting without running), and a keeper that repairs RSP
/// before the loop loads the bad one again (84 of 457 wake-ups before) buys it nothing: the
/// stretch is charged to the thread's process, none of whose threads runs for 16 times as
/// long; 32 threads taking turns under one such keeper (96 of 454 while the charge was per
/// thread) pay as one, and a parent starting a new offender each time takes on the debt of
/// each. The ticker keeps its wake-ups. The bound is a generous ratio, not a time.
#[test]
fn a_loop_with_a_non_canonical_stack_pointer_costs_only_its_own_time() {
    for (mode, stopped) in [
        ("rsp-rep", "victim still running false, status Ok(140)"),
        ("rsp-rep-keeper", "victim still running true"),
        ("rsp-rep-fixkeeper", "victim still running true"),
        ("rsp-rep-self", "victim still running false, status Ok(140)"),
        ("rsp-rep-pool", "victim still running true"),
        ("rsp-respawn", "victim still running true"),
    ] {
        for (who, run) in both(&format!("fluke.init=ktest,rsp-hog,{mode},500")) {
            assert_eq!(run.status, 0, "{who} {mode}: {run:?}");
            let (bare, beside) = (ticks(who, &run, "bare"), ticks(who, &run, "beside"));
            // Before the fix the ticker kept a fifth (84-124 of ~458); under host load a
            // fixed kernel has been seen keeping 0.41-0.5 on either backend (the ticker and
            // the loop share a host CPU with other VMs), so the bound is a third.
            assert!(
                beside * 3 >= bare,
                "{who} {mode}: a ticker beside the loop woke {beside} times, alone {bare}: {}",
                run.console
            );
            // Whether rsp-rep-self ends killed depends on where the interrupts land: only if
            // a kernel entry comes while its RSP is bad, inside a fill. On a loaded host it
            // has been seen both ways; it is charged for its stretches either way, which the
            // ticker checks. (The kept loops' threads get their keeper before they run: a
            // keeper set after the thread started let a first fault end it, seen as
            // rsp-rep-keeper, -fixkeeper and -pool "killed", one of them with e4940b2's kernel.)
            let either = mode == "rsp-rep-self";
            let outcome = |what: &str| {
                run.console.contains(&format!(
                    "ktest: rsp-hog: {mode}: tickers Ok(0) Ok(0); {what}"
                ))
            };
            let killed = outcome("victim still running false, status Ok(140)");
            assert!(
                outcome(stopped) || (either && (killed || outcome("victim still running true"))),
                "{who} {mode}: {stopped:?} expected:\n{}",
                run.console
            );
            run.assert_console("a new process exited Ok(0)");
            if mode == "rsp-rep" || (mode == "rsp-rep-self" && killed) {
                // Matched up to the reason: one loaded run ended with status 140 but without
                // the whole line "... non-canonical stack pointer 0x8000000000000000" in
                // its console, not yet explained.
                run.assert_console("killed: stack fault (#SS)");
            }
        }
    }
}

/// 10^6 kernel calls on each backend (4 seeds of 250,000) aimed at real capabilities of every
/// object kind with hostile arguments and register state; `scripts/fuzz.sh` runs longer.
#[test]
fn a_million_hostile_calls_with_real_capabilities_leave_the_kernel_healthy() {
    // With a device window and an interrupt line, so the device calls meet live objects.
    let cmdline =
        "fluke.init=ktest,capfuzz,1,250000,4 virtio_mmio.device=4K@0xd0000000:5 fluke.irq=4";
    for (who, run) in both(cmdline) {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        for seed in 1..=4 {
            run.assert_console(&format!("ktest: capfuzz: seed {seed}: 250000 calls"));
        }
        run.assert_console("ktest: capfuzz: 4 round(s) of 250000 calls, 0 failed; kernel alive");
        // Calls made with a non-canonical RSP were among them, each stopped with a stack
        // fault that the fuzzer's keeper repaired (hole 7's review: a repairing keeper).
        let repaired: u64 = run
            .console
            .lines()
            .find_map(|l| l.split("kernel alive (").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{who}: no count of repaired stack faults: {}", run.console));
        assert!(
            repaired > 1000,
            "{who}: only {repaired} stack faults repaired"
        );
    }
}

#[test]
fn a_write_below_a_kernel_stack_hits_its_guard_page() {
    for (who, run) in both("fluke.test=kstack-guard") {
        assert_eq!(
            run.status,
            i32::from(fluke_abi::status::KERNEL_FAULT),
            "{who}: {run:?}"
        );
        run.assert_console("fluke: KERNEL FAULT: page fault (#PF)");
        run.assert_console("fault address 0xffff898000003ff8");
        assert!(
            !run.console.contains("the guard page was writable"),
            "{who}: {}",
            run.console
        );
    }
}
