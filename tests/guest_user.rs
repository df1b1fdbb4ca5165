//! User mode on both backends: preemption, protection, argument checking, idling, and the
//! benchmark harness. Each test boots the real image with `fluke.init=ktest,CASE` (the
//! in-guest test program) and checks what the guest reported.

mod support;

use support::*;

#[test]
fn two_cpu_bound_processes_that_never_yield_both_progress() {
    for (who, run) in both("fluke.init=ktest,preempt") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        for name in ["a", "b"] {
            let line = run
                .console
                .lines()
                .find(|l| l.starts_with(&format!("spinner {name}: done")))
                .unwrap_or_else(|| panic!("{who}: spinner {name} did not finish: {}", run.console));
            let preempted: u64 = line
                .rsplit("preempted ")
                .next()
                .and_then(|t| t.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(
                preempted >= 1,
                "{who}: spinner {name} was never preempted: {line}"
            );
        }
    }
}

#[test]
fn faulting_processes_are_stopped_and_the_rest_carries_on() {
    for (who, run) in both("fluke.init=ktest,faults") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: faults: 0 unexpected");
        run.assert_console("killed: page fault at 0x0 (read, not mapped)");
        // Natively the kernel half is present but supervisor-only; on kvm_pvm it is absent
        // from the user's page table: the report says which.
        run.assert_console("killed: page fault at 0xffffffff80100000 (read, ");
        run.assert_console(", kernel address)");
        run.assert_console("killed: general protection (#GP)");
        run.assert_console("killed: invalid opcode (#UD)");
        run.assert_console("killed: page fault at 0x10000000 (read, not mapped)");
        run.assert_console("ktest: console_write of the other process's address: Err(BadAddress)");
    }
}

#[test]
fn garbage_kernel_calls_get_errors_and_the_kernel_survives() {
    for (who, run) in both("fluke.init=ktest,garbage,100000") {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("ktest: garbage: 100000 calls, 0 unexpected results; kernel alive");
    }
}

/// CPU time (user + system) of a process, in seconds, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the comm field.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn an_idle_guest_uses_little_host_cpu() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(VMM)
        .arg("run")
        .arg(default_image())
        .args(["--timeout", "60", "--cmdline", "fluke.init=ktest,idle,2000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start fluke-vmm");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut start = None;
    let mut used = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("ktest: idle: sleeping") {
            start = Some((cpu_seconds(pid), std::time::Instant::now()));
        } else if line.contains("ktest: idle: woke after") {
            let (cpu0, t0) = start.expect("sleep start seen first");
            used = Some((cpu_seconds(pid) - cpu0, t0.elapsed().as_secs_f64()));
            break;
        }
    }
    for _ in lines {}
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let (cpu, wall) = used.expect("the guest reported its sleep");
    assert!(wall >= 1.9, "slept only {wall} s");
    assert!(
        cpu < 0.1 * wall,
        "idle guest used {cpu:.3} s of CPU in {wall:.3} s"
    );
}

#[test]
fn bench_writes_records_for_every_benchmark() {
    let dir = std::env::temp_dir().join(format!("fluke-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = std::process::Command::new(VMM)
        .args(["bench", "--samples", "1", "--json"])
        .arg(&json)
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let records = records.as_array().expect("a JSON array");
    let platform = if host_is_kvm_pvm() { "kvm_pvm" } else { "kvm" };
    for name in [
        "boot.to_kernel",
        "boot.to_init",
        "vmm.exit_roundtrip",
        "vmm.rss",
        "guest.null_call",
        "platform.syscall_floor",
        "guest.user_fault",
        "guest.space_switch",
        "platform.switch_floor",
        "ipc.call_reply",
        "ipc.send",
        "ipc.cap_transfer",
        "thread.state_roundtrip",
        "keeper.fault",
        "host.getppid",
    ] {
        let r = records
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no record {name}"));
        assert_eq!(r["platform"], platform, "{name}");
        assert!(
            ["host", "vmm", "microkernel"].contains(&r["model"].as_str().unwrap()),
            "{name}"
        );
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 1, "{name}");
        assert!(
            r["value"].as_f64().unwrap() > 0.0,
            "{name} measured nothing"
        );
        assert!(r["unit"].is_string(), "{name}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("space switch vs. switch floor"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
