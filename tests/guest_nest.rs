//! Nesting, first part: the pass-through nester (`passthru`, built on the nester library
//! `guest-nesters/nest`) gives its child a complete environment with the same kernel API;
//! stacked eight deep, programs and the kernel's own tests behave exactly as bare.

mod support;

use support::*;

fn stack(depth: usize, program: &str) -> String {
    let mut s = String::from("fluke.init=");
    for _ in 0..depth {
        s.push_str("passthru,");
    }
    s.push_str(program);
    s
}

#[test]
fn eight_pass_through_nesters_run_a_program_unchanged() {
    for (who, run) in both(&stack(8, "hello,deep,args")) {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("hello from user mode (2 argument(s))\n  arg: deep\n  arg: args");
    }
}

#[test]
fn kernel_tests_pass_unchanged_under_nesters() {
    let cases = [
        (
            3,
            "ktest,preempt",
            "ktest: preempt: spinners exited with Ok(0) and Ok(0)",
        ),
        (
            2,
            "ktest,ipc,500",
            "ktest: ipc server: 501 calls served, 0 bad badges, client exited Ok(0)",
        ),
        (1, "ktest,faults", "ktest: faults: 0 unexpected"),
        (
            2,
            "ktest,pager,16",
            "parent sees 0 mismatches, child exited Ok(0)",
        ),
    ];
    for (depth, program, expect) in cases {
        let run = vmm(
            &default_image(),
            &["--timeout", "100", "--cmdline", &stack(depth, program)],
        );
        assert_eq!(run.status, 0, "{program} under {depth} nesters: {run:?}");
        run.assert_console(expect);
    }
}

#[test]
fn a_nester_reports_a_bad_program() {
    let run = vmm(
        &default_image(),
        &["--timeout", "60", "--cmdline", &stack(2, "no-such-program")],
    );
    assert_eq!(run.status, 1, "{run:?}");
    run.assert_console("passthru: cannot start no-such-program: NoSuchProgram");
}

/// Each workload prints the same result bare and under one and eight pass-through nesters.
#[test]
fn workloads_give_identical_output_at_every_depth() {
    for workload in ["syscall,2000", "ipc,500", "memory,200", "compute,50000"] {
        let mut outputs = Vec::new();
        for depth in [0, 1, 8] {
            let program = format!("work,{workload}");
            let run = vmm(
                &default_image(),
                &["--timeout", "100", "--cmdline", &stack(depth, &program)],
            );
            assert_eq!(run.status, 0, "{workload} at depth {depth}: {run:?}");
            let line = run
                .console
                .lines()
                .find(|l| l.starts_with("work: ") && l.contains("checksum"))
                .unwrap_or_else(|| {
                    panic!(
                        "{workload} at depth {depth} printed no result: {}",
                        run.console
                    )
                })
                .to_string();
            outputs.push(line);
        }
        assert!(
            outputs.windows(2).all(|w| w[0] == w[1]),
            "{workload}: {outputs:?}"
        );
    }
    // The native backend too, at the deepest stack.
    let run = qemu(&default_image(), &stack(8, "work,memory,200"));
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("work: memory checksum");
}
