//! Seccomp (`--seccomp on|log|off`, on by default): every VMM thread keeps to its list of
//! system calls. Every other test runs with the filters on; this one shows a call outside
//! a thread's list stops the VMM with a report naming the thread and the call (a test hook,
//! `FLUKE_SECCOMP_PROBE=<thread>`, makes that thread call `socket(AF_INET)` once confined),
//! and that `log` and `off` let it through.

mod support;

use std::process::{Command, Stdio};

use support::{default_image, VMM};

/// Boots the default image (the ticker, so every thread is busy) with the API on, the
/// probe in `thread`, and `extra` options; returns the status and stderr.
fn probed(thread: &str, extra: &[&str]) -> (i32, String) {
    // A directory per call: the tests run in parallel.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "fluke-seccomp-{}-{n}-{}",
        std::process::id(),
        thread.replace(' ', "-")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let out = Command::new(VMM)
        .arg("run")
        .arg(default_image())
        .args([
            "--cmdline",
            "fluke.init=work,ticker,5,10",
            "--timeout",
            "60",
        ])
        .arg("--api-sock")
        .arg(&sock)
        .args(extra)
        .env("FLUKE_SECCOMP_PROBE", thread)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_call_outside_a_threads_list_stops_the_vmm_with_a_report() {
    for thread in ["vcpu", "api", "watchdog", "console"] {
        let (status, stderr) = probed(thread, &[]);
        assert_eq!(status, 126, "{thread}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the {thread} thread made system call {}, outside its seccomp filter",
                libc::SYS_socket
            )),
            "{thread}: {stderr}"
        );
    }
}

#[test]
fn log_and_off_let_the_call_through() {
    for mode in ["log", "off"] {
        let (status, stderr) = probed("api", &["--seccomp", mode, "--log-level", "debug"]);
        assert_eq!(status, 0, "{mode}: {stderr}");
        assert!(
            !stderr.contains("outside its seccomp filter"),
            "{mode}: {stderr}"
        );
        // `log` installs the filters (calls outside them are logged by the kernel's
        // audit), `off` none.
        let confined = stderr.contains("seccomp: the api thread keeps to its list (log)");
        assert_eq!(confined, mode == "log", "{mode}: {stderr}");
    }
}

#[test]
fn the_host_pager_keeps_to_its_list_and_is_stopped_outside_it() {
    // The pagers run with filters on in every test (vm_paging, vm_snapshot's on-demand
    // restores); here a paged run of the memory workload ends normally, and the probe
    // stops it.
    let paged = |probe: &str| {
        let out = Command::new(VMM)
            .arg("run")
            .arg(default_image())
            .args(["--memory-resident", "4", "--timeout", "60"])
            .args(["--cmdline", "fluke.init=work,memory,2000"])
            .env("FLUKE_SECCOMP_PROBE", probe)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stderr) = paged("none");
    assert_eq!(status, 0, "{stderr}");
    let (status, stderr) = paged("host pager");
    assert_eq!(status, 126, "{stderr}");
    assert!(
        stderr.contains("the host pager thread made system call"),
        "{stderr}"
    );
}

#[test]
fn a_confined_thread_that_panics_says_so_instead_of_tripping_its_filter() {
    // With RUST_BACKTRACE set, the default panic hook reads the executable and /proc for
    // the backtrace, outside a confined thread's list: the panic ended as a seccomp report.
    let out = Command::new(VMM)
        .arg("run")
        .arg(default_image())
        .args(["--timeout", "60", "--serial", "null"])
        .env("FLUKE_SECCOMP_PROBE", "panic:watchdog")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a VMM thread panicked"), "{stderr}");
    assert!(stderr.contains("seccomp probe"), "{stderr}");
    assert!(!stderr.contains("outside its seccomp filter"), "{stderr}");
}
