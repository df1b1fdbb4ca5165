//! The control API (`run --api-sock`): pause and resume a real guest, hold its clock, and
//! refuse bad requests without disturbing it. The guest runs `work ticker N MS`, which
//! prints `work: tick I checksum X guest-ms T` every MS ms of guest time.

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use fluke_abi::status::VMM_ERROR;
use support::api::*;
use support::VMM;

#[test]
fn a_paused_guest_prints_nothing_its_clock_holds_and_resume_continues_it() {
    const CMD: &str = "fluke.init=work,ticker,40,30";
    let vm = LiveVm::start("hold", CMD);
    vm.wait_for("work: tick 5 ");
    assert_eq!(state(&vm.sock), "Running");
    pause(&vm.sock);
    assert_eq!(state(&vm.sock), "Paused");
    pause(&vm.sock); // pausing a paused VM is not an error
    let at_pause = vm.ticks();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        vm.ticks(),
        at_pause,
        "the guest printed while paused:\n{}",
        vm.console()
    );
    resume(&vm.sock);
    assert_eq!(state(&vm.sock), "Running");
    let (status, console) = vm.finish();
    assert_eq!(status, 0, "{console}");
    assert!(console.contains("clock kvmclock"), "{console}");
    let t = ticks(&console);
    assert_eq!(t.len(), 40, "{console}");
    // The guest's clock did not see the 600 ms: no gap between ticks is near it.
    let widest = t.windows(2).map(|w| w[1].2 - w[0].2).max().unwrap();
    assert!(
        widest < 300,
        "a {widest} ms gap in guest time across the pause:\n{console}"
    );
    assert_eq!(sequence(&console), reference(CMD));
}

#[test]
fn fifty_pause_resume_cycles_lose_nothing() {
    const CMD: &str = "fluke.init=work,ticker,250,20";
    let vm = LiveVm::start("cycles", CMD);
    vm.wait_for("work: tick 1 ");
    for _ in 0..50 {
        pause(&vm.sock);
        std::thread::sleep(Duration::from_millis(3));
        resume(&vm.sock);
        std::thread::sleep(Duration::from_millis(3));
    }
    // The cycles all happened while the guest ran (it has ticks left).
    assert_eq!(state(&vm.sock), "Running");
    assert!(vm.ticks() < 250, "the guest finished before the cycles did");
    let (status, console) = vm.finish();
    assert_eq!(status, 0, "{console}");
    assert_eq!(sequence(&console), reference(CMD));
}

#[test]
fn bad_requests_get_errors_and_the_vm_runs_on() {
    let vm = LiveVm::start("bad", "fluke.init=work,ticker,800,20");
    vm.wait_for("work: tick 1 ");
    let sock = vm.sock.clone();
    let fault = |(status, body): (u16, String)| {
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
        assert!(v["fault_message"].is_string(), "{body}");
        status
    };
    assert_eq!(
        fault(exchange(&sock, b"\x00\x01\x02 not http at all\r\n\r\n")),
        400
    );
    assert_eq!(fault(request(&sock, "PATCH", "/vm", "{\"state\": ")), 400);
    assert_eq!(
        fault(request(&sock, "PATCH", "/vm", "{\"state\": \"Frozen\"}")),
        400
    );
    assert_eq!(fault(request(&sock, "GET", "/no/such/path", "")), 404);
    assert_eq!(fault(request(&sock, "DELETE", "/vm", "")), 405);
    assert_eq!(fault(request(&sock, "POST", "/", "")), 405);
    let big = vec![b'x'; 10 << 20];
    let mut raw = format!("PUT /vm HTTP/1.1\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    raw.extend_from_slice(&big);
    assert_eq!(fault(exchange(&sock, &raw)), 413);
    let mut flood = b"GET / HTTP/1.1\r\nX-Flood: ".to_vec();
    flood.extend(std::iter::repeat_n(b'y', 1 << 20));
    assert_eq!(fault(exchange(&sock, &flood)), 431);
    let chunked = b"PATCH /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(fault(exchange(&sock, chunked)), 411);
    // A client that connects and goes quiet is dropped; the next one is served.
    {
        let mut quiet = UnixStream::connect(&sock).unwrap();
        quiet.write_all(b"GET / HT").unwrap();
        assert_eq!(state(&sock), "Running");
    }
    // After all that the guest still runs, untouched, to its end.
    assert_eq!(state(&sock), "Running");
    let (status, console) = vm.finish();
    assert_eq!(status, 0, "{console}");
    assert_eq!(ticks(&console).len(), 800, "{console}");
}

#[test]
fn a_client_that_keeps_talking_does_not_keep_the_vmm_alive() {
    // A keep-alive client asking every 50 ms for 30 s; the guest ends after about 1 s. The
    // VMM must end with it, not when the client stops.
    let vm = LiveVm::start("chatty", "fluke.init=work,ticker,30,20");
    vm.wait_for("work: tick 1 ");
    let sock = vm.sock.clone();
    let chatter = std::thread::spawn(move || {
        let Ok(mut s) = UnixStream::connect(&sock) else {
            return 0;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut answers = 0;
        let until = std::time::Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < until {
            if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
                break;
            }
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => answers += 1,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        answers
    });
    vm.wait_for("work: ticker checksum");
    let ended = std::time::Instant::now();
    let (status, console) = vm.finish();
    let took = ended.elapsed();
    assert_eq!(status, 0, "{console}");
    assert!(
        took < Duration::from_secs(10),
        "the VMM took {took:?} to end after its guest"
    );
    assert!(chatter.join().unwrap() > 0, "the client was never answered");
}

#[test]
fn ctl_pauses_resumes_and_reports_clear_errors() {
    let vm = LiveVm::start("ctl", "fluke.init=work,ticker,150,20");
    vm.wait_for("work: tick 1 ");
    let ctl = |args: &[&str]| {
        Command::new(VMM)
            .arg("ctl")
            .arg("--api-sock")
            .arg(&vm.sock)
            .args(args)
            .output()
            .unwrap()
    };
    let info = ctl(&["info"]);
    assert!(info.status.success(), "{info:?}");
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["state"], "Running");
    assert_eq!(v["app_name"], "fluke-vmm");
    assert_eq!(v["memory_mib"], 128);
    assert!(ctl(&["pause"]).status.success());
    assert_eq!(state(&vm.sock), "Paused");
    assert!(ctl(&["resume"]).status.success());
    // A second VMM cannot take the same socket path.
    let taken = Command::new(VMM)
        .args(["run", "--api-sock"])
        .arg(&vm.sock)
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(VMM_ERROR), "{taken:?}");
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("the path exists"),
        "{taken:?}"
    );
    let (status, console) = vm.finish();
    assert_eq!(status, 0, "{console}");
    // No VM there any more: one clear line and a failure status.
    let gone = Command::new(VMM)
        .args(["ctl", "--api-sock", "/nonexistent/fluke.sock", "pause"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(VMM_ERROR));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(
        err.starts_with("fluke-vmm: error: cannot reach the API at /nonexistent/fluke.sock"),
        "{err}"
    );
}
