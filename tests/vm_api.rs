//! The control API (`run --api-sock`): pause and resume a real guest, hold its clock, and
//! refuse bad requests without disturbing it. The guest runs `work ticker N MS`, which
//! prints `work: tick I checksum X guest-ms T` every MS ms of guest time.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluke_abi::status::VMM_ERROR;
use support::{default_image, VMM};

/// A fluke-vmm with its API socket, its console collected as it comes.
struct LiveVm {
    child: Child,
    sock: PathBuf,
    console: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("fluke-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl LiveVm {
    fn start(tag: &str, cmdline: &str) -> LiveVm {
        let dir = TempDir::new(tag);
        let sock = dir.0.join("api.sock");
        let mut child = Command::new(VMM)
            .arg("run")
            .arg(default_image())
            .args(["--timeout", "90", "--api-sock"])
            .arg(&sock)
            .args(["--cmdline", cmdline])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fluke-vmm");
        let console = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let c = Arc::clone(&console);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut c = c.lock().unwrap();
                c.push_str(&line);
                c.push('\n');
            }
        });
        let vm = LiveVm {
            child,
            sock,
            console,
            reader: Some(reader),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vm.sock.exists() {
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        vm
    }

    fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.console().contains(needle) {
            assert!(Instant::now() < deadline, "never printed {needle:?}:\n{}", self.console());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ticks(&self) -> usize {
        self.console().matches("work: tick ").count()
    }

    /// Waits for the VMM to end: its exit status and the whole console.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("fluke-vmm did not end:\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        assert!(!self.sock.exists(), "the API socket was not removed");
        (status.code().unwrap_or(-1), self.console())
    }
}

/// One raw HTTP exchange: the status and body of the answer.
fn exchange(sock: &Path, raw: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read everything: a refused body.
    let _ = s.write_all(raw);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(sock, raw.as_bytes())
}

fn pause(sock: &Path) {
    assert_eq!(request(sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
}

fn resume(sock: &Path) {
    assert_eq!(request(sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#).0, 204);
}

fn state(sock: &Path) -> String {
    let (status, body) = request(sock, "GET", "/", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("GET / is JSON");
    v["state"].as_str().unwrap_or("").to_string()
}

/// The ticks of a console: (index, checksum, guest ms).
fn ticks(console: &str) -> Vec<(u64, String, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 7 && w[1] == "tick")
                .then(|| (w[2].parse().unwrap(), w[4].to_string(), w[6].parse().unwrap()))
        })
        .collect()
}

/// The console's sequence without the clock: what must not change.
fn sequence(console: &str) -> Vec<(u64, String)> {
    ticks(console).into_iter().map(|(i, c, _)| (i, c)).collect()
}

/// An uninterrupted run of the same workload (no API): the reference sequence S.
fn reference(cmdline: &str) -> Vec<(u64, String)> {
    let run = support::vmm(&default_image(), &["--cmdline", cmdline]);
    assert_eq!(run.status, 0, "{run:?}");
    sequence(&run.console)
}

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
    assert_eq!(vm.ticks(), at_pause, "the guest printed while paused:\n{}", vm.console());
    resume(&vm.sock);
    assert_eq!(state(&vm.sock), "Running");
    let (status, console) = vm.finish();
    assert_eq!(status, 0, "{console}");
    assert!(console.contains("clock kvmclock"), "{console}");
    let t = ticks(&console);
    assert_eq!(t.len(), 40, "{console}");
    // The guest's clock did not see the 600 ms: no gap between ticks is near it.
    let widest = t.windows(2).map(|w| w[1].2 - w[0].2).max().unwrap();
    assert!(widest < 300, "a {widest} ms gap in guest time across the pause:\n{console}");
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
    let vm = LiveVm::start("bad", "fluke.init=work,ticker,500,20");
    vm.wait_for("work: tick 1 ");
    let sock = vm.sock.clone();
    let fault = |(status, body): (u16, String)| {
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
        assert!(v["fault_message"].is_string(), "{body}");
        status
    };
    assert_eq!(fault(exchange(&sock, b"\x00\x01\x02 not http at all\r\n\r\n")), 400);
    assert_eq!(fault(request(&sock, "PATCH", "/vm", "{\"state\": ")), 400);
    assert_eq!(fault(request(&sock, "PATCH", "/vm", "{\"state\": \"Frozen\"}")), 400);
    assert_eq!(fault(request(&sock, "GET", "/no/such/path", "")), 404);
    assert_eq!(fault(request(&sock, "DELETE", "/vm", "")), 405);
    assert_eq!(fault(request(&sock, "POST", "/", "")), 405);
    let big = vec![b'x'; 10 << 20];
    let mut raw = format!(
        "PUT /vm HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
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
    assert_eq!(ticks(&console).len(), 500, "{console}");
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
    assert!(String::from_utf8_lossy(&taken.stderr).contains("the path exists"), "{taken:?}");
    let (status, console) = vm.finish();
    assert_eq!(status, 0, "{console}");
    // No VM there any more: one clear line and a failure status.
    let gone = Command::new(VMM)
        .args(["ctl", "--api-sock", "/nonexistent/fluke.sock", "pause"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(VMM_ERROR));
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.starts_with("fluke-vmm: error: cannot reach the API at /nonexistent/fluke.sock"), "{err}");
}
