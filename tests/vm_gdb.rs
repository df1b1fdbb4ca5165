//! The gdb stub (`run --gdb`): Debian's real gdb, in batch mode, attaches to a guest waiting
//! at its first instruction, stops at a kernel function, reads registers and memory,
//! single-steps and detaches, and the guest then finishes normally; clients that speak
//! garbage, go away inside a packet or stall inside one leave the guest running to its end.
//! On kvm_pvm this exercises the patched-OUT breakpoints and steps, on hardware KVM int3,
//! KVM_GUESTDBG_SINGLESTEP and the rest (vmm/README.md, "gdb stub").

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::api::TempDir;
use support::{default_image, VMM};

/// The kernel function gdb stops at: it starts init, once, late in the boot (in PV mode on
/// kvm_pvm, long after the 32-bit entry where `--gdb-wait` holds the guest).
const KERNEL_FUNCTION: &str = "fluke_kernel::start_init";

fn gdb_binary() -> &'static str {
    let found = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "gdb is not installed: these tests need Debian's gdb (scripts/setup.sh installs it: apt-get install gdb)"
    );
    "gdb"
}

/// A fluke-vmm run with `--gdb unix:SOCK`, its output collected as it comes.
struct GdbVm {
    sock: PathBuf,
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    _dir: TempDir,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

impl GdbVm {
    fn start(tag: &str, wait: bool, cmdline: &str) -> GdbVm {
        Self::start_with(tag, wait, cmdline, &[])
    }

    fn start_with(tag: &str, wait: bool, cmdline: &str, env: &[(&str, &str)]) -> GdbVm {
        let dir = TempDir::new(&format!("gdb-{tag}"));
        let sock = dir.0.join("gdb.sock");
        let mut cmd = Command::new(VMM);
        cmd.arg("run")
            .arg(default_image())
            .arg("--gdb")
            .arg(format!("unix:{}", sock.display()))
            .args(["--timeout", "90", "--log-level", "info"]);
        if wait {
            cmd.arg("--gdb-wait");
        }
        if !cmdline.is_empty() {
            cmd.args(["--cmdline", cmdline]);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fluke-vmm");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), Arc::clone(&out));
        collect(child.stderr.take().unwrap(), Arc::clone(&err));
        let vm = GdbVm {
            sock,
            child,
            out,
            err,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !vm.sock.exists() {
            assert!(
                Instant::now() < deadline,
                "no gdb socket after 20 s; stderr:\n{}",
                vm.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        vm
    }

    fn console(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits for the VMM to end (at most `limit`); its exit status.
    fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the readers take the last output.
                std::thread::sleep(Duration::from_millis(100));
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "fluke-vmm did not end within {limit:?}\nconsole:\n{}\nstderr:\n{}",
                    self.console(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_finished_normally(&mut self, what: &str) {
        let status = self.wait(Duration::from_secs(100));
        let console = self.console();
        assert!(
            status == 0 && console.contains("fluke: init exited with status 0"),
            "{what}: status {status}\nconsole:\n{console}\nstderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for GdbVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs gdb in batch mode with `commands` (each an `-ex`); what it printed on stdout, then
/// its stderr (kept apart: gdb's warnings about missing source files would otherwise cut
/// into the lines checked).
fn run_gdb(commands: &[String]) -> String {
    let mut cmd = Command::new(gdb_binary());
    cmd.args(["-batch", "-nx"]);
    for c in commands {
        cmd.arg("-ex").arg(c);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gdb");
    let mut child = child;
    let out = Arc::new(Mutex::new(String::new()));
    let err = Arc::new(Mutex::new(String::new()));
    collect(child.stdout.take().unwrap(), Arc::clone(&out));
    collect(child.stderr.take().unwrap(), Arc::clone(&err));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            std::thread::sleep(Duration::from_millis(100));
            let out = out.lock().unwrap().clone();
            let err = err.lock().unwrap().clone();
            return format!("{out}\n(gdb's stderr:)\n{err}");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gdb did not finish within 60 s; its output:\n{}",
                out.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value gdb printed for the `nth` `info registers NAME`: `NAME  0x...  ...`, which may
/// follow the start of a line whose rest went to stderr (a step's "no source file" note).
fn register(gdb_output: &str, name: &str, nth: usize) -> (u64, String) {
    let found = gdb_output
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == name)?;
            let hex = words.get(at + 1)?.strip_prefix("0x")?;
            let value = u64::from_str_radix(hex, 16).ok()?;
            Some((value, words[at..].join(" ")))
        })
        .nth(nth);
    found.unwrap_or_else(|| panic!("gdb printed no {name} (#{nth}):\n{gdb_output}"))
}

#[test]
fn gdb_breaks_at_a_kernel_function_reads_steps_and_detaches() {
    let mut vm = GdbVm::start("session", true, "");
    let kernel = Path::new(fluke_images::KERNEL_ELF_PATH);
    assert!(kernel.exists(), "no kernel ELF at {}", kernel.display());
    let output = run_gdb(&[
        format!("file {}", kernel.display()),
        format!("target remote {}", vm.sock.display()),
        format!("break {KERNEL_FUNCTION}"),
        "continue".into(),
        "info registers rip".into(),
        "info registers rsp".into(),
        "x/4gx $rsp".into(),
        "stepi".into(),
        "info registers rip".into(),
        // Through calls, returns and 1-byte instructions (kvm_pvm's patched steps).
        "stepi 200".into(),
        "info registers rip".into(),
        "detach".into(),
    ]);
    let context = || format!("gdb:\n{output}\nfluke-vmm stderr:\n{}", vm.stderr());
    assert!(
        output.contains("Breakpoint 1, "),
        "the breakpoint was not hit; {}",
        context()
    );
    let (rip, line) = register(&output, "rip", 0);
    assert!(
        line.contains(&format!("<{KERNEL_FUNCTION}+"))
            || line.contains(&format!("<{KERNEL_FUNCTION}>")),
        "stopped outside {KERNEL_FUNCTION}: {line}; {}",
        context()
    );
    assert!(rip >> 47 == 0x1_ffff, "not a kernel address: {rip:#x}");
    // The stack, read through the guest's page tables: the line x/4gx prints starts with
    // RSP itself.
    let (rsp, _) = register(&output, "rsp", 0);
    assert!(
        output.contains(&format!("{rsp:#x}:\t0x")),
        "x/4gx $rsp printed no memory at {rsp:#x}; {}",
        context()
    );
    assert!(!output.contains("Cannot access memory"), "{}", context());
    // One instruction on, still in the function.
    let (stepped, line) = register(&output, "rip", 1);
    assert!(
        stepped != rip && stepped > rip && stepped - rip <= 15,
        "stepi went from {rip:#x} to {stepped:#x}; {}",
        context()
    );
    assert!(line.contains(KERNEL_FUNCTION), "{line}; {}", context());
    let (deeper, _) = register(&output, "rip", 2);
    assert!(
        deeper >> 47 == 0x1_ffff,
        "200 steps on: {deeper:#x}; {}",
        context()
    );
    // A step the stub cannot do shows as a signal; none may have happened.
    assert!(!output.contains("Program received signal"), "{}", context());
    assert!(
        output.contains("[Inferior 1 (process 1) detached]"),
        "{}",
        context()
    );
    vm.assert_finished_normally("after gdb detached");
    assert!(vm.stderr().contains("gdb: detached"), "{}", vm.stderr());
}

/// A raw client: connects, sends `bytes` in pieces, then goes away.
fn raw_client(sock: &Path, pieces: &[&[u8]], linger: Duration) {
    let mut s = UnixStream::connect(sock).expect("connect to the gdb socket");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for p in pieces {
        if s.write_all(p).is_err() {
            break; // the stub may have closed on the garbage already
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
    }
    std::thread::sleep(linger);
}

#[test]
fn garbage_and_clients_gone_mid_packet_leave_the_guest_running_to_its_end() {
    // Waiting at the first instruction: a client of garbage ends its session, and its end
    // releases the guest as a detach would.
    let mut vm = GdbVm::start("garbage-wait", true, "");
    raw_client(
        &vm.sock,
        &[b"\x00\xff\x03hello, not gdb\r\n", b"$m ffffffff80100000,4"],
        Duration::ZERO,
    );
    vm.assert_finished_normally("garbage while waiting");
    assert!(
        vm.stderr().contains("gdb: session ended"),
        "{}",
        vm.stderr()
    );

    // A running guest (160 ticks, 50 ms apart): a client gone mid-packet after a valid
    // first packet, then one that stalls inside a packet past the deadline, then garbage.
    let mut vm = GdbVm::start("garbage-run", false, "fluke.init=work,ticker,160,50");
    let qsupported = b"qSupported:multiprocess+;swbreak+;hwbreak+";
    let sum = qsupported.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let packet = format!("${}#{sum:02x}", String::from_utf8_lossy(qsupported));
    raw_client(
        &vm.sock,
        &[b"+", packet.as_bytes(), b"$g#6"],
        Duration::ZERO,
    );
    raw_client(
        &vm.sock,
        &[b"$m ffffffff80100000"],
        Duration::from_millis(5500),
    );
    raw_client(&vm.sock, &[b"#####$$$$\x03\x03+-"], Duration::ZERO);
    vm.assert_finished_normally("clients while running");
    let stderr = vm.stderr();
    assert!(
        stderr.contains("a packet was not whole within"),
        "the stalled client was not dropped:\n{stderr}"
    );
    let console = vm.console();
    assert!(
        console.contains("work: tick 159 ") && console.contains("work: ticker checksum"),
        "the ticker did not run to its end:\n{console}"
    );
}

#[test]
fn kvm_guest_debug_hardware_breakpoint_and_single_step_at_the_entry() {
    // KVM_GUESTDBG_USE_HW_BP and SINGLESTEP, the hardware-KVM mechanism, at the guest's
    // 32-bit entry; on kvm_pvm (forced there: it is not the default) they work only there,
    // in its default mode, before the kernel turns PV mode on (vmm/README.md).
    let env: &[(&str, &str)] = if support::host_is_kvm_pvm() {
        &[("FLUKE_GDB_USE_GUEST_DEBUG", "1")]
    } else {
        &[]
    };
    let mut vm = GdbVm::start_with("guest-debug", true, "", env);
    // The entry's third instruction (the first two are 1 and 1 bytes long: probed).
    let output = run_gdb(&[
        format!("target remote {}", vm.sock.display()),
        "info registers rip".into(),
        "hbreak *0x100002".into(),
        "continue".into(),
        "info registers rip".into(),
        "delete".into(),
        "stepi".into(),
        "info registers rip".into(),
        "stepi".into(),
        "info registers rip".into(),
        "detach".into(),
    ]);
    let context = || format!("gdb:\n{output}\nfluke-vmm stderr:\n{}", vm.stderr());
    let rips: Vec<u64> = (0..4).map(|i| register(&output, "rip", i).0).collect();
    assert_eq!(rips[0], 0x10_0000, "not at the entry; {}", context());
    assert_eq!(rips[1], 0x10_0002, "the hardware breakpoint; {}", context());
    assert!(
        rips[2] > rips[1] && rips[3] > rips[2] && rips[3] - rips[1] <= 30,
        "two steps from {:#x}: {:#x}, {:#x}; {}",
        rips[1],
        rips[2],
        rips[3],
        context()
    );
    assert!(
        output.contains("Hardware assisted breakpoint 1"),
        "{}",
        context()
    );
    assert!(!output.contains("Program received signal"), "{}", context());
    vm.assert_finished_normally("after the entry's breakpoint and steps");
}

/// A packet as gdb frames it.
fn packet(body: &str) -> Vec<u8> {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}").into_bytes()
}

/// Reads until `want` appears (at most 5 s): everything read.
fn read_until(s: &mut UnixStream, want: &str) -> String {
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !got.contains(want) && Instant::now() < deadline {
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(got.contains(want), "no {want:?} from the stub, got {got:?}");
    got
}

#[test]
fn ctrl_c_stops_a_running_guest_and_detach_lets_it_finish() {
    // gdb's batch mode cannot send Ctrl-C, so this speaks the protocol itself.
    let mut vm = GdbVm::start("interrupt", false, "fluke.init=work,ticker,100,50");
    let mut s = UnixStream::connect(&vm.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.write_all(&packet("g")).unwrap();
    read_until(&mut s, "#");
    s.write_all(b"+").unwrap();
    s.write_all(&packet("c")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"\x03").unwrap();
    // Stopped with SIGINT.
    read_until(&mut s, "$S02");
    s.write_all(b"+").unwrap();
    s.write_all(&packet("D")).unwrap();
    read_until(&mut s, "$OK");
    drop(s);
    vm.assert_finished_normally("after Ctrl-C and detach");
    assert!(vm.console().contains("work: tick 99 "), "{}", vm.console());
}

#[test]
fn a_bad_gdb_spec_is_one_line_and_status_126() {
    for (spec, says) in [
        ("tcp:0.0.0.0:1234", "loopback"),
        ("serial:/dev/ttyS0", "unix: or tcp:"),
        ("unix:", "empty"),
    ] {
        let out = Command::new(VMM)
            .args(["run", "--gdb", spec])
            .output()
            .expect("run fluke-vmm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(126), "{spec}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{spec}: {stderr}");
        assert!(
            stderr.starts_with("fluke-vmm: error: invalid --gdb") && stderr.contains(says),
            "{spec}: {stderr}"
        );
    }
    // --gdb-wait without --gdb is a usage error.
    let out = Command::new(VMM)
        .args(["run", "--gdb-wait"])
        .output()
        .expect("run fluke-vmm");
    assert_eq!(out.status.code(), Some(2));
}
