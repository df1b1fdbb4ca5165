//! The object model, first part: capabilities, ports, port sets and IPC, on both backends.
//! The in-guest `ktest ipc` case runs a server and a client in two spaces.

mod support;

use support::*;

#[test]
fn call_reply_capability_transfer_and_border_control() {
    for (who, run) in both("fluke.init=ktest,ipc,2000") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        // The child was given one port: it can name that and nothing else.
        run.assert_console(
            "ktest: ipc client: border: port reachable true, 0 other names reachable",
        );
        run.assert_console(
            "ktest: ipc client: 2000 calls, 0 bad replies; capability round trip ok",
        );
        run.assert_console(
            "ktest: ipc server: 2001 calls served, 0 bad badges, client exited Ok(0)",
        );
    }
}

#[test]
fn threads_blocked_in_a_receive_and_a_sleep_are_exported_and_recreated() {
    for (who, run) in both("fluke.init=ktest,state") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: state: child stopped in IPC receive: call 14 at rip");
        run.assert_console("ktest: state: child stopped in sleep: call 10 at rip");
        // The child saw its receive complete with the right message and slept its full time.
        run.assert_console("ktest: state: child reported Ok(Msg { badge: 1, words: [1, ");
    }
}

#[test]
fn threads_blocked_in_mutex_and_condition_waits_are_exported_and_recreated() {
    for (who, run) in both("fluke.init=ktest,mutex") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: mutex: child stopped in mutex wait: call 26, re-created ok");
        run.assert_console("ktest: mutex: child stopped in condition wait: call 32, re-created ok");
        run.assert_console("ktest: mutex: parent re-locked Ok(0), signal woke Ok(1)");
        run.assert_console("ktest: mutex: child reported Ok(1), exited Ok(0)");
    }
}

#[test]
fn a_user_level_pager_serves_its_childs_page_faults() {
    for (who, run) in both("fluke.init=ktest,pager,32") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console(
            "ktest: pager: 32 region faults served, 1 exception(s) fixed, child checked 32 pages, parent sees 0 mismatches, child exited Ok(0)",
        );
    }
}

#[test]
fn a_child_cannot_exhaust_its_parent_or_siblings() {
    for (who, run) in both("fluke.init=ktest,budget") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("memory budget exhausted)");
        run.assert_console(
            "ktest: budget: hog exited Ok(142), sibling Ok(0), parent allocation Ok(())",
        );
        run.assert_console("objects, then NoMemory");
        run.assert_console(
            "ktest: budget: object hog exited Ok(0), parent still creates objects true",
        );
    }
}

/// The whole child, not just a thread: stopped mid-computation, its registers and
/// capability table read, its space destroyed and rebuilt, and it finishes with the right
/// result (its memory lives in regions of the parent, Fluke style).
#[test]
fn a_whole_child_is_checkpointed_destroyed_and_restored() {
    for (who, run) in both("fluke.init=ktest,checkpoint") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: checkpoint: child stopped at rip");
        run.assert_console("1 capability, re-created; result matches (40)");
    }
}

/// Every object type: get_state, destroy, re-create, set_state, same behaviour; plus the
/// error cases (bad names, wrong types, stale capabilities, double destroy).
#[test]
fn every_object_type_survives_a_state_round_trip() {
    for (who, run) in both("fluke.init=ktest,objects") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: objects: 28 checks, 0 failures");
    }
}

/// The property test: random graphs of ports, port sets, mutexes, conditions and regions
/// referring to each other, random creates, destroys and state round trips; a shadow model
/// in the guest checks every object's state after every step.
#[test]
fn random_object_graphs_keep_their_state() {
    for (who, run) in both("fluke.init=ktest,graph,1000") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: graph: 1000 random operations");
        run.assert_console(" 0 mismatches");
    }
}

/// Message data beyond the register words (and truncation to the receiver's buffer),
/// reliable one-way sends that are never lost, and Reference objects.
#[test]
fn ipc_data_reliable_sends_and_references() {
    for (who, run) in both("fluke.init=ktest,ipcdata") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console(
            "ktest: ipcdata: reference holds the port true, after destroy Err(BadCap)",
        );
        run.assert_console("reply data true, second call Ok(0), oversized Err(InvalidArgument), 50 reliable sends, 20/20 received back in order");
        run.assert_console("data received true, truncated to the buffer true, reliable 50/50 in order, 20 sent back, client exited Ok(0), then Err(BadCap)");
    }
}

/// lmbench's lat_ctx the microkernel way (`bench ring`): a token passed round a ring of 8
/// processes, each waiting on its own port set and sending reliably to the next, comes back
/// every lap with its lap number (the program checks each and fails on a loss), and every
/// member ends at the quit token. On both backends.
#[test]
fn a_token_passed_round_a_ring_of_eight_processes_comes_back_every_lap() {
    for (who, run) in both("fluke.init=bench,ring,50") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        let line = run
            .console
            .lines()
            .find(|l| l.starts_with("BENCH lmbench.lat_ctx "))
            .unwrap_or_else(|| panic!("{who}: no record:\n{}", run.console));
        assert!(
            line.ends_with(" ns 400"),
            "{who}: 50 laps of 8 hops: {line}"
        );
    }
}

/// sel4bench's one-way IPC (`bench oneway`): each direction of 200 calls timed from TSC
/// stamps carried in the messages, the timer's cost measured and subtracted, in ns and
/// cycles; every call and reply arrives (the server counts the calls, the warm-up one too)
/// and both processes end. On both backends.
#[test]
fn one_way_ipc_is_timed_in_each_direction_with_the_timer_cost_subtracted() {
    for (who, run) in both("fluke.init=bench,oneway,200") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        for (record, unit, count) in [
            ("sel4bench.timer_overhead", "ns", 200),
            ("sel4bench.ipc_call_oneway", "ns", 201),
            ("sel4bench.ipc_reply_oneway", "ns", 200),
            ("sel4bench.ipc_call_oneway_cycles", "cycles", 201),
            ("sel4bench.ipc_reply_oneway_cycles", "cycles", 200),
        ] {
            let line = run
                .console
                .lines()
                .find(|l| l.starts_with(&format!("BENCH {record} ")))
                .unwrap_or_else(|| panic!("{who}: no {record}:\n{}", run.console));
            assert!(line.ends_with(&format!(" {unit} {count}")), "{who}: {line}");
            let value: f64 = line.split(' ').nth(2).and_then(|v| v.parse().ok()).unwrap();
            assert!(value.is_finite() && value >= 0.0, "{who}: {line}");
        }
    }
}
