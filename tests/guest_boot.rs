//! The foundation: the default image boots under fluke-vmm on this host's KVM (the PV
//! backend on kvm_pvm, the native one on hardware KVM) and, unchanged, under QEMU (native
//! backend); exit statuses, panics, kernel faults and hangs are reported; bad images are
//! refused. Every test boots a real guest.

mod support;

use fluke_abi::status::{KERNEL_FAULT, KERNEL_PANIC, VMM_ERROR, VMM_TIMEOUT};
use support::*;

#[test]
fn default_image_boots_under_fluke_vmm_with_the_right_backend() {
    // No IMAGE argument: the image built into the binary.
    let out = std::process::Command::new(VMM)
        .args(["run", "--log-level", "info", "--timeout", "60"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run fluke-vmm");
    let console = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{console}\n{stderr}");
    assert!(console.contains("fluke: Fluke microkernel"), "{console}");
    assert!(console.contains(expected_vmm_banner()), "{console}");
    assert!(console.contains("hello from user mode"), "{console}");
    let platform = if host_is_kvm_pvm() {
        "platform: kvm_pvm"
    } else {
        "platform: kvm"
    };
    assert!(stderr.contains(platform), "{stderr}");
}

#[test]
fn same_image_boots_under_qemu_with_the_native_backend() {
    let run = qemu(&default_image(), "");
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("fluke: platform qemu, backend native, pv-mode off");
    run.assert_console("hello from user mode");
}

#[test]
fn guest_exit_status_becomes_the_exit_code() {
    for (who, run) in both("fluke.test=exit:42") {
        assert_eq!(run.status, 42, "{who}: {run:?}");
    }
}

#[test]
fn kernel_panic_is_reported_with_message_and_location() {
    for (who, run) in both("fluke.test=panic") {
        assert_eq!(run.status, i32::from(KERNEL_PANIC), "{who}: {run:?}");
        run.assert_console("fluke: KERNEL PANIC at src/selftest.rs:");
        run.assert_console("self-test requested a panic");
    }
}

#[test]
fn kernel_fault_is_reported_with_registers() {
    for (who, run) in both("fluke.test=kernel-fault") {
        assert_eq!(run.status, i32::from(KERNEL_FAULT), "{who}: {run:?}");
        run.assert_console("fluke: KERNEL FAULT: page fault (#PF)");
        run.assert_console("fault address 0x0000001000000000");
        run.assert_console("fluke:   rip 0xffffffff8");
    }
}

#[test]
fn spinning_guest_is_stopped_by_the_timeout() {
    let run = vmm(
        &default_image(),
        &["--timeout", "2", "--cmdline", "fluke.test=spin"],
    );
    assert_eq!(run.status, VMM_TIMEOUT, "{run:?}");
    run.assert_console("fluke: self-test spin");
    assert!(
        run.stderr.contains("did not finish within 2 s"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rip"),
        "register report expected: {}",
        run.stderr
    );
}

#[test]
fn corrupt_and_truncated_images_are_refused() {
    let image = std::fs::read(default_image()).expect("default image");
    let dir = std::env::temp_dir().join(format!("fluke-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("header only", image[..40].to_vec()),
        ("truncated half", image[..image.len() / 2].to_vec()),
        ("truncated end", image[..image.len() - 100].to_vec()),
    ];
    let mut flipped = image.clone();
    let last = flipped.len() - 64; // inside the bundle payload: the checksum catches it
    flipped[last] ^= 0x40;
    cases.push(("bundle byte flipped", flipped));
    let mut bad_magic = image.clone();
    bad_magic[1] = b'X';
    cases.push(("bad ELF magic", bad_magic));
    for (what, bytes) in cases {
        let path = dir.join("bad.img");
        std::fs::write(&path, &bytes).unwrap();
        let run = vmm(&path, &[]);
        assert_eq!(run.status, VMM_ERROR, "{what}: {run:?}");
        assert!(
            run.stderr.starts_with("fluke-vmm: error: "),
            "{what}: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.trim_end().lines().count(),
            1,
            "{what}: one line expected: {}",
            run.stderr
        );
        assert!(run.console.is_empty(), "{what}: nothing may boot");
    }
    // fluke-vmm checks every program before the boot; the kernel checks a program only
    // when it first loads one (issue 14: a boot reads only the programs it runs). Under
    // QEMU, which checks nothing, the image with a corrupt last program still boots its
    // init, and the corrupt program is refused when asked for.
    let mut flipped = image.clone();
    flipped[last] ^= 0x40;
    let path = dir.join("flipped.img");
    std::fs::write(&path, &flipped).unwrap();
    let boots = qemu(&path, "");
    assert_eq!(boots.status, 0, "{boots:?}");
    boots.assert_console("hello from user mode");
    // The corrupt program is the image's last (whichever that is): from the kernel's list.
    let names: Vec<&str> = boots
        .console
        .lines()
        .find_map(|l| l.strip_prefix("fluke: image: "))
        .and_then(|l| l.split_once(": "))
        .and_then(|(_, l)| l.split(';').next())
        .expect("the kernel lists the image's programs")
        .split_whitespace()
        .collect();
    let (index, name) = (names.len() - 1, names[names.len() - 1]);
    let refused = qemu(&path, &format!("fluke.init={name}"));
    refused.assert_console(&format!(
        "fluke: bundle program {index} `{name}` is corrupt: its entry says checksum"
    ));
    refused.assert_console(&format!(
        "cannot start init program \"{name}\": no such program"
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn images_that_are_no_regular_file_or_too_large_are_refused_before_reading() {
    // Issue 13 finding 3: `run /dev/zero` grew without bound, a FIFO with no writer hung
    // `run` and `inspect`, a huge sparse file was read whole to say "bad magic".
    let dir = std::env::temp_dir().join(format!("fluke-bigimg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.img");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sparse = dir.join("sparse.img");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(5 << 30)
        .unwrap();
    for (path, expect) in [
        (std::path::PathBuf::from("/dev/zero"), "not a regular file"),
        (fifo.clone(), "not a regular file"),
        (sparse.clone(), "larger than"),
    ] {
        for cmd in ["run", "inspect"] {
            let started = std::time::Instant::now();
            let out = std::process::Command::new(support::VMM)
                .arg(cmd)
                .arg(&path)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(VMM_ERROR),
                "{cmd} {}: {out:?}",
                path.display()
            );
            assert!(err.contains(expect), "{cmd} {}: {err}", path.display());
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            // Refused from its metadata, not after reading it: well within a second.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{cmd} {}",
                path.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn guest_statuses_that_collide_with_the_vmms_are_reported_and_mapped() {
    // Issue 13 finding 4: a guest exiting 124, 125 or 126 looked like a timeout, a crash or
    // a VMM error, with nothing on stderr.
    for (guest, code, said) in [
        (122, 122, false),
        (123, 123, true),
        (124, 123, true),
        (125, 123, true),
        (126, 123, true),
        (127, 127, false),
    ] {
        let run = vmm(
            &default_image(),
            &["--cmdline", &format!("fluke.init=victim,exit,{guest}")],
        );
        assert_eq!(run.status, code, "guest {guest}: {run:?}");
        let line = format!("fluke-vmm: the guest exited with status {guest}, in the range fluke-vmm reserves (123-126); exiting with 123");
        assert_eq!(
            run.stderr.contains(&line),
            said,
            "guest {guest}: {}",
            run.stderr
        );
    }
}

#[test]
fn inspect_lists_the_default_image() {
    let out = std::process::Command::new(VMM)
        .arg("inspect")
        .arg(default_image())
        .output()
        .expect("run inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in ["hello", "ktest", "victim", "spinner", "bench", "init"] {
        assert!(text.contains(needle), "inspect lacks {needle}: {text}");
    }
}

/// The kernel state is reached only through `with_kernel`: taking it while it is taken (an
/// entry nested in another) stops the kernel with a report instead of making a second
/// `&mut` to the same state.
#[test]
fn nested_kernel_state_is_refused() {
    for (who, run) in both("fluke.test=kernel-reentry") {
        assert_eq!(run.status, i32::from(KERNEL_PANIC), "{who}: {run:?}");
        run.assert_console("the kernel state was taken twice");
    }
}

/// pvm.md §11 H1: a native IRETQ to user mode keeps kernel privilege on kvm_pvm, so the
/// kernel returns to user mode only with SYSRETQ and has exactly one IRETQ (to kernel mode).
#[test]
fn kernel_has_exactly_one_iretq() {
    let out = std::process::Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(fluke_images::KERNEL_ELF_PATH)
        .output()
        .expect("objdump (binutils) is needed for this check");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let irets: Vec<&str> = text.lines().filter(|l| l.contains("iretq")).collect();
    assert_eq!(irets.len(), 1, "{irets:#?}");
    let sysrets = text.lines().filter(|l| l.contains("sysretq")).count();
    assert!(sysrets >= 1);
}

/// Issue 14: the kernel prints through fluke-vmm's paravirtual console (one exit per line,
/// `fluke.console=pv`, which fluke-vmm puts on the command line) instead of one exit per
/// byte to the UART, with the same console text either way, in the same order with what
/// programs write; QEMU, which has no such port, gets the UART (the other tests).
#[test]
fn the_paravirtual_console_prints_the_same_text_with_far_fewer_exits() {
    let dir = std::env::temp_dir().join(format!("fluke-pvcon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run_with = |console: &str| {
        let stats = dir.join(format!("{console}.json"));
        let cmdline = format!("fluke.console={console} fluke.init=ktest,garbage,2000");
        let run = vmm(
            &default_image(),
            &[
                "--cmdline",
                &cmdline,
                "--stats-json",
                stats.to_str().unwrap(),
            ],
        );
        assert_eq!(run.status, 0, "{console}: {run:?}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        (run.console, json["exits"].as_u64().unwrap())
    };
    let (pv_text, pv_exits) = run_with("pv");
    let (uart_text, uart_exits) = run_with("uart");
    let _ = std::fs::remove_dir_all(&dir);
    // The command lines differ only in the console's name, which the kernel does not print.
    assert_eq!(pv_text, uart_text);
    assert!(pv_text.contains("ktest: garbage: 2000 calls, 0 unexpected results; kernel alive"));
    // Every byte was an exit on the UART; a line is one on the PV console.
    assert!(
        uart_exits as usize >= uart_text.len(),
        "{uart_exits} exits for {} bytes",
        uart_text.len()
    );
    let lines = pv_text.lines().count() as u64;
    assert!(
        pv_exits <= lines + 20,
        "{pv_exits} exits for {lines} lines (the UART took {uart_exits})"
    );
}

/// `bench`'s image and QEMU records (issue 14): the built-in image's size, and its boot under
/// QEMU timed to the kernel's started-init line.
#[test]
fn bench_reports_the_image_size_and_the_qemu_boot() {
    let json = std::env::temp_dir().join(format!("fluke-bench-qemu-{}.json", std::process::id()));
    let out = std::process::Command::new(VMM)
        .args([
            "bench",
            "--samples",
            "2",
            "--only",
            "image.,boot.to_init_qemu",
        ])
        .args(["--json", json.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run fluke-vmm bench");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let find = |name: &str| {
        records
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {records}"))
            .clone()
    };
    let size = find("image.bytes");
    let built_in = std::fs::metadata(default_image()).unwrap().len() as f64;
    assert_eq!(size["value"].as_f64(), Some(built_in), "{size}");
    let qemu = find("boot.to_init_qemu");
    assert_eq!(qemu["platform"], "qemu");
    assert_eq!(qemu["samples"].as_array().unwrap().len(), 2);
    assert!(qemu["value"].as_f64().unwrap() > 0.0, "{qemu}");
}
