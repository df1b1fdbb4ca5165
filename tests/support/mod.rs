//! Running the real default guest image under fluke-vmm (KVM) and under QEMU (TCG, the
//! kernel's native backend). Nothing is mocked: every helper boots a real VM.
#![allow(dead_code)]

pub mod api;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_fluke-vmm");

pub fn default_image() -> PathBuf {
    PathBuf::from(fluke_images::DEFAULT_IMAGE_PATH)
}

/// What one guest run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// The guest's exit status as the guest wrote it (QEMU's encoding already undone), or
    /// fluke-vmm's own status (124..126).
    pub status: i32,
    pub console: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_console(&self, needle: &str) {
        assert!(
            self.console.contains(needle),
            "console lacks {needle:?}:\n{}\nstderr:\n{}",
            self.console,
            self.stderr
        );
    }
}

/// True on the kvm_pvm fork (our machines), false on hardware KVM (GitHub runners).
pub fn host_is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The banner line the kernel prints under fluke-vmm on this host.
pub fn expected_vmm_banner() -> &'static str {
    if host_is_kvm_pvm() {
        "fluke: platform kvm_pvm, backend pv, pv-mode on"
    } else {
        "fluke: platform kvm, backend native, pv-mode off"
    }
}

pub fn wait_with_deadline(
    mut child: Child,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let st = child.wait().expect("wait after kill");
            panic!("guest run exceeded the test's {limit:?} limit (status {st:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
    )
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) until it ends or `deadline`
/// passes (then it is killed): its status, stdout and stderr.
pub fn run_to_end(
    cmd: &mut Command,
    deadline: Duration,
) -> (std::process::ExitStatus, String, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {:?} (scripts/setup.sh installs QEMU): {e}",
                cmd.get_program()
            )
        });
    wait_with_deadline(child, deadline)
}

/// Runs `cmd` to its end (killed at `deadline`) with its stdin a pipe: each time a line of
/// its stdout contains `trigger`, `input` is written there (after a short pause, so the
/// guest is waiting by then). The guest's UART receives it (fluke-vmm's `--serial stdio`,
/// QEMU's `-serial stdio`).
pub fn run_feeding(
    cmd: &mut Command,
    trigger: &str,
    input: &[u8],
    deadline: Duration,
) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, Write};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let trigger = trigger.to_string();
    let out_t = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.contains(&trigger) {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let input = input.to_vec();
    let in_t = std::thread::spawn(move || {
        while rx.recv().is_ok() {
            std::thread::sleep(Duration::from_millis(100));
            if stdin.write_all(&input).and_then(|_| stdin.flush()).is_err() {
                break;
            }
        }
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait after kill");
            panic!("guest run exceeded the test's {deadline:?} limit (status {st:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let console = out_t.join().unwrap_or_default();
    let _ = in_t.join();
    (status, console, err_t.join().unwrap_or_default())
}

/// Boots `image` under fluke-vmm with `args` (e.g. `--cmdline ...`).
pub fn vmm(image: &Path, args: &[&str]) -> Run {
    // Unless the test gives its own, a --timeout below the deadline: a hung guest ends
    // with fluke-vmm's report (status 124), not only a kill.
    let timeout: &[&str] = if args.contains(&"--timeout") {
        &[]
    } else {
        &["--timeout", "100"]
    };
    let mut cmd = Command::new(VMM);
    cmd.arg("run").arg(image).args(args).args(timeout);
    let (status, console, stderr) = run_to_end(&mut cmd, Duration::from_secs(120));
    Run {
        status: status.code().unwrap_or(-1),
        console,
        stderr,
    }
}

/// Boots `image` under QEMU without KVM, the kernel command line `cmdline` appended.
pub fn qemu(image: &Path, cmdline: &str) -> Run {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "128M",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args([
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ])
    .arg("-kernel")
    .arg(image)
    .args(["-append", cmdline]);
    qemu_run(&mut qemu)
}

/// Runs a QEMU command to its end: its status mapped back from QEMU's
/// `(status << 1) | 1` (the isa-debug-exit device's).
pub fn qemu_run(qemu: &mut Command) -> Run {
    let (status, console, stderr) = run_to_end(qemu, Duration::from_secs(240));
    let code = status.code().unwrap_or(-1);
    let status = fluke_abi::status::from_qemu_exit_code(code).map_or(code, i32::from);
    Run {
        status,
        console,
        stderr,
    }
}

/// Both platforms with the same kernel command line.
pub fn both(cmdline: &str) -> [(&'static str, Run); 2] {
    let image = default_image();
    [
        (
            "fluke-vmm",
            vmm(&image, &["--timeout", "100", "--cmdline", cmdline]),
        ),
        ("qemu", qemu(&image, cmdline)),
    ]
}
