//! `fluke-vmm image build` and `image default`, and fault reports named from the debug
//! information beside an image: a program built outside the default program list
//! (tests/programs/greeter, its own cargo workspace as guest-nesters/README.md describes)
//! is packed and boots under fluke-vmm and QEMU; the written default image boots with the
//! README's QEMU command line; every bad argument is one line; fault reports name the
//! function and source line.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::api::TempDir;
use support::{default_image, qemu, qemu_run, run_to_end, vmm, Run, VMM};

/// The greeter program's ELF, built once per test process with the guest's cargo set-up
/// (the host build's flags removed, as images/build.rs does).
fn greeter_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/programs/greeter");
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-programs");
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        // cargo reads the program's .cargo/config.toml from the current directory.
        cmd.current_dir(&crate_dir)
            .args(["build", "--release", "--target-dir"])
            .arg(&target_dir)
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_ENCODED_RUSTFLAGS")
                || key.starts_with("CARGO_BUILD_")
                || key.starts_with("CARGO_TARGET_")
                || key == "RUSTFLAGS"
                || key == "RUSTC_WRAPPER"
            {
                cmd.env_remove(key);
            }
        }
        let out = cmd.output().expect("run cargo for tests/programs/greeter");
        assert!(
            out.status.success(),
            "building tests/programs/greeter failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir.join("x86_64-unknown-none/release/greeter")
    })
}

/// Runs `fluke-vmm ARGS` to its end; returns (status, stdout, stderr).
fn fluke_vmm(args: &[&str]) -> (i32, String, String) {
    let (status, out, err) = run_to_end(Command::new(VMM).args(args), Duration::from_secs(60));
    (status.code().unwrap_or(-1), out, err)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// `image build` with the greeter (and the default image's hello), stacked under nothing.
fn build_greeter_image(dir: &Path) -> PathBuf {
    let image = dir.join("greeter.img");
    let hello = fluke_images::program_elf_path("hello");
    let (status, out, err) = fluke_vmm(&[
        "image",
        "build",
        "-o",
        s(&image),
        "--program",
        &format!("greeter={}", s(greeter_elf())),
        "--program",
        &format!("hello={}", s(&hello)),
        "--init",
        "greeter from-the-manifest",
    ]);
    assert_eq!(status, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("wrote ") && out.contains("2 program(s)"),
        "{out}"
    );
    image
}

#[test]
fn an_image_built_from_an_outside_program_boots_under_fluke_vmm_and_qemu() {
    let dir = TempDir::new("image-build");
    let image = build_greeter_image(&dir.0);
    // The program went in stripped; its debug information is beside the image.
    let elf = std::fs::read(greeter_elf()).unwrap();
    let packed = std::fs::metadata(&image).unwrap().len();
    let debug = dir.0.join("greeter.img.debug");
    assert_eq!(
        std::fs::read(debug.join("programs/greeter.elf")).unwrap(),
        elf
    );
    assert!(debug.join("kernel.elf").is_file());
    // The kernel's segments, two small programs and a bundle: less than the greeter's ELF.
    assert!(packed < elf.len() as u64, "{packed} >= {}", elf.len());

    // The manifest's init, then a command line that picks the other program.
    for (who, run) in [("fluke-vmm", vmm(&image, &[])), ("qemu", qemu(&image, ""))] {
        assert_eq!(run.status, 7, "{who}: {run:?}");
        run.assert_console("fluke: image: 2 program(s): greeter hello; init = greeter");
        run.assert_console("greeter: hello from outside the default image (1 argument(s))");
        run.assert_console("greeter: arg from-the-manifest");
    }
    let run = vmm(&image, &["--cmdline", "fluke.init=hello,x"]);
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("hello from user mode (1 argument(s))");

    // inspect agrees.
    let (status, out, err) = fluke_vmm(&["inspect", s(&image)]);
    assert_eq!(status, 0, "{err}");
    assert!(out.contains("init:        greeter"), "{out}");
    assert!(out.contains("args:        from-the-manifest"), "{out}");
}

#[test]
fn an_outside_programs_fault_names_its_function() {
    let dir = TempDir::new("image-fault");
    let image = build_greeter_image(&dir.0);
    let run = vmm(&image, &["--cmdline", "fluke.init=greeter,crash"]);
    run.assert_console("(greeter) killed: page fault at 0x0 (read, not mapped)");
    assert!(
        run.stderr.contains("fluke-vmm: fault in greeter (process ")
            && run.stderr.contains("inlined into greeter::crash_here at ")
            && run.stderr.contains("tests/programs/greeter/src/main.rs:"),
        "{}",
        run.stderr
    );
}

/// The README's command line: `qemu-system-x86_64 -kernel IMAGE -append "..." -nographic
/// -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04`.
fn qemu_as_in_the_readme(image: &Path, append: &str) -> Run {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.arg("-kernel")
        .arg(image)
        .args(["-append", append, "-nographic", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    qemu_run(&mut qemu)
}

#[test]
fn the_written_default_image_boots_with_the_readmes_qemu_command() {
    let dir = TempDir::new("image-default");
    let image = dir.0.join("default.img");
    let (status, out, err) = fluke_vmm(&["image", "default", "-o", s(&image)]);
    assert_eq!(status, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(default_image()).unwrap()
    );
    let debug = dir.0.join("default.img.debug");
    assert_eq!(
        std::fs::read(debug.join("kernel.elf")).unwrap(),
        std::fs::read(fluke_images::KERNEL_ELF_PATH).unwrap()
    );
    assert!(debug.join("programs/victim.elf").is_file());

    let run = qemu_as_in_the_readme(&image, "fluke.init=hello,from-qemu");
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("hello from user mode (1 argument(s))");
    run.assert_console("  arg: from-qemu");
}

#[test]
fn each_bad_argument_to_image_build_is_one_line() {
    let dir = TempDir::new("image-bad");
    let greeter = format!("greeter={}", s(greeter_elf()));
    let out = dir.0.join("x.img");
    let out = s(&out).to_string();
    let not_elf = dir.0.join("notes.txt");
    std::fs::write(&not_elf, "not a program\n").unwrap();
    let not_elf = format!("notes={}", s(&not_elf));
    let kernel_not_elf = s(&dir.0.join("notes.txt")).to_string();
    let unwritable = s(&dir.0.join("no-such-dir/x.img")).to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--program", "greeter=/nonexistent/greeter"],
            "cannot read program greeter from /nonexistent/greeter: No such file or directory",
        ),
        (
            vec!["--program", &not_elf],
            "is not an x86-64 executable ELF: not an ELF file (bad magic)",
        ),
        (
            vec!["--program", &greeter, "--program", &greeter],
            "--program greeter: named twice",
        ),
        (
            vec!["--program", &greeter, "--init", "hello world"],
            "--init \"hello world\": init names \"hello\", which is not a --program (the image has: greeter)",
        ),
        (
            vec!["--program", &greeter, "--init", "greeter > nope"],
            "the stack names \"nope\"",
        ),
        (vec!["--program", "greeter"], "--program \"greeter\": expected NAME=ELF"),
        (
            vec!["--program", "Greeter=/x"],
            "--program \"Greeter\": invalid program name",
        ),
        (
            vec!["--program", &greeter, "--kernel", &kernel_not_elf],
            "kernel ",
        ),
        (
            vec!["--program", &greeter, "--kernel", s(greeter_elf())],
            "cannot be an image's kernel",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["image", "build", "-o", &out];
        args.extend(&extra);
        let (status, stdout, stderr) = fluke_vmm(&args);
        assert_eq!(status, 126, "{extra:?}: {stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {stderr}");
        assert!(
            lines[0].starts_with("fluke-vmm: error: ") && lines[0].contains(expected),
            "{extra:?}: {stderr}"
        );
        assert!(
            !Path::new(&out).exists(),
            "{extra:?} wrote the image anyway"
        );
    }
    // An output that cannot be written, for both commands.
    for args in [
        vec!["image", "build", "-o", &unwritable, "--program", &greeter],
        vec!["image", "default", "-o", &unwritable],
    ] {
        let (status, _, stderr) = fluke_vmm(&args);
        assert_eq!(status, 126, "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            format!("fluke-vmm: error: cannot write {unwritable}: No such file or directory\n")
        );
    }
}

#[test]
fn fault_reports_name_the_function_and_line() {
    // A user program killed with a register dump: the victim's read of page 0.
    let run = vmm(&default_image(), &["--cmdline", "fluke.init=victim,null"]);
    run.assert_console("(victim) killed: page fault at 0x0 (read, not mapped)");
    assert!(
        run.stderr.contains("fluke-vmm: fault in victim (process ")
            && run.stderr.contains("inlined into fluke_main at ")
            && run.stderr.contains("programs/victim/src/main.rs:"),
        "{}",
        run.stderr
    );
    // A program that prints a report of its own: the VMM names nothing (on the paravirtual
    // console, fluke-vmm's default, a program's output is marked as its own).
    let run = vmm(
        &default_image(),
        &["--cmdline", "fluke.init=victim,fake-report"],
    );
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("fluke: KERNEL FAULT: page fault (#PF) in kernel mode");
    assert!(!run.stderr.contains("kernel fault at"), "{}", run.stderr);
    // A kernel fault: the kernel's own self-test.
    let run = vmm(&default_image(), &["--cmdline", "fluke.test=kernel-fault"]);
    assert_eq!(
        run.status,
        i32::from(fluke_abi::status::KERNEL_FAULT),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("fluke-vmm: kernel fault at 0xffffffff8")
            && run.stderr.contains("fluke_kernel::selftest::run at ")
            && run.stderr.contains("kernel/src/selftest.rs:"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_guest_stopped_in_the_kernel_is_named_after_the_vmms_report() {
    let run = vmm(
        &default_image(),
        &["--timeout", "1", "--cmdline", "fluke.test=spin"],
    );
    assert_eq!(run.status, fluke_abi::status::VMM_TIMEOUT, "{run:?}");
    let report = run
        .stderr
        .split_once("did not finish within 1 s")
        .map(|(_, after)| after)
        .unwrap_or("");
    assert!(
        report.contains("fluke-vmm: guest stopped in the kernel at 0xffffffff8")
            && report.contains("fluke_kernel::selftest::run at "),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_or_stale_debug_information_leaves_the_addresses() {
    let dir = TempDir::new("image-nodebug");
    // No debug directory: nothing is added to the report.
    let bare = dir.0.join("bare.img");
    std::fs::copy(default_image(), &bare).unwrap();
    let run = vmm(&bare, &["--cmdline", "fluke.init=victim,null"]);
    run.assert_console("fluke:   rip 0x");
    assert!(!run.stderr.contains("fluke-vmm: fault"), "{}", run.stderr);
    // A debug directory from another build (the victim's ELF swapped for hello's).
    let image = dir.0.join("stale.img");
    let (status, _, err) = fluke_vmm(&["image", "default", "-o", s(&image)]);
    assert_eq!(status, 0, "{err}");
    let programs = dir.0.join("stale.img.debug/programs");
    std::fs::copy(programs.join("hello.elf"), programs.join("victim.elf")).unwrap();
    let run = vmm(&image, &["--cmdline", "fluke.init=victim,null"]);
    assert!(
        run.stderr
            .contains("victim.elf is not what the image was built from"),
        "{}",
        run.stderr
    );
    // A FIFO where the debug file should be: refused by its metadata, not waited on.
    std::fs::remove_file(programs.join("victim.elf")).unwrap();
    let fifo = std::ffi::CString::new(s(&programs.join("victim.elf"))).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let run = vmm(&image, &["--cmdline", "fluke.init=victim,null"]);
    assert!(
        run.stderr.contains("victim.elf: not a regular file"),
        "{}",
        run.stderr
    );
    std::fs::remove_file(programs.join("victim.elf")).unwrap();
    // Garbage in the debug file: one line, no panic.
    std::fs::write(programs.join("victim.elf"), b"\x7fELF garbage").unwrap();
    let run = vmm(&image, &["--cmdline", "fluke.init=victim,null"]);
    assert!(
        run.stderr.contains("not named (") && !run.stderr.contains("panicked"),
        "{}",
        run.stderr
    );
}
