//! Boots tiny hand-assembled guests on the real /dev/kvm (no mocks) and checks the VMM's
//! exit statuses, console output and reports.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::asm::*;
use common::*;
use fluke_abi::ports::{BENCH, BENCH_BEGIN, BENCH_END, BENCH_TICK, BOOT_TIMER, COM1};
use fluke_abi::status::{VMM_ERROR, VMM_GUEST_CRASH, VMM_TIMEOUT};
use std::process::Output;

fn hello_code() -> Vec<u8> {
    [mov_al(b'h'), mov_dx(COM1), vec![OUT_DX_AL], exit(42)].concat()
}

#[test]
fn guest_output_and_exit_status() {
    let img = write_image("hello", &image(&hello_code()));
    let o = run(&img, &[]);
    assert_eq!(o.status.code(), Some(42), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "h");
}

#[test]
fn platform_is_logged_at_info() {
    let img = write_image("platform", &image(&exit(0)));
    let o = run(&img, &["--log-level", "info"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("platform: kvm"), "{err}");
}

#[test]
fn serial_to_file_and_null() {
    let img = write_image("serial-file", &image(&hello_code()));
    let log = img.dir().join("console.log");
    let o = run(&img, &["--serial", &format!("file:{}", log.display())]);
    assert_eq!(o.status.code(), Some(42), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "h");
    let o = run(&img, &["--serial", "null"]);
    assert_eq!(o.status.code(), Some(42));
    assert_eq!(stdout(&o), "");
}

#[test]
fn stdin_reaches_the_guest() {
    // Poll LSR until data is ready, read RBR, exit with the byte.
    let code = [
        mov_dx(COM1 + 5),
        vec![IN_AL_DX, 0xa8, 0x01, 0x74, 0xfb], // 1: in; test $1,%al; jz 1b
        mov_dx(COM1),
        vec![IN_AL_DX],
        out_imm(0xf4),
        vec![HLT],
    ]
    .concat();
    let img = write_image("stdin", &image(&code));
    let mut child = vmm()
        .arg("run")
        .arg(&img)
        .args(["--memory", "16", "--timeout", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"x").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(i32::from(b'x')),
        "stderr: {}",
        stderr(&o)
    );
}

#[test]
fn timeout_stops_a_spinning_guest() {
    let img = write_image("spin", &image(&SPIN));
    let t = std::time::Instant::now();
    let o = run(&img, &["--timeout", "1"]);
    assert_eq!(o.status.code(), Some(VMM_TIMEOUT), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("error: guest did not finish within 1 s; stopped"),
        "{err}"
    );
    assert!(err.contains("rip 0x0000000000100000"), "{err}");
    assert!(t.elapsed().as_secs_f64() < 10.0);
}

#[test]
fn unknown_port_is_a_crash_with_a_report() {
    let code = [mov_al(0x5a), out_imm(0x80), vec![HLT]].concat();
    let img = write_image("unknown-port", &image(&code));
    let o = run(&img, &[]);
    let err = assert_guest_crash(&o, "unexpected port I/O: out 0x80 = [0x5a]");
    // RIP is after the 2-byte mov and the 2-byte out.
    assert!(err.contains("rip 0x0000000000100004"), "{err}");
    for reg in [
        "rsp",
        "rflags",
        "rax",
        "rbx 0x0000000000006000",
        "r15",
        "cs 0x0010 (dpl 0)",
        "ss 0x0018",
        "cr0 0x11",
        "cr2",
        "cr3",
        "cr4",
        "efer",
    ] {
        assert!(err.contains(reg), "missing {reg}: {err}");
    }
    // An IN from an unknown port too.
    let code = [mov_dx(0x1234), vec![IN_AL_DX, HLT]].concat();
    let img = write_image("unknown-port-in", &image(&code));
    let o = run(&img, &[]);
    assert_guest_crash(&o, "unexpected port I/O: in 0x1234 (1 byte)");
}

#[test]
fn mmio_is_a_crash() {
    // mov $0x5a, %al; mov %al, 0xd0000000 (no RAM or device there)
    let code = [mov_al(0x5a), vec![0xa2, 0x00, 0x00, 0x00, 0xd0, HLT]].concat();
    let img = write_image("mmio", &image(&code));
    let o = run(&img, &[]);
    assert_guest_crash(&o, "unexpected MMIO write: 0xd0000000 = [0x5a]");
}

#[test]
fn triple_fault_is_a_crash() {
    let img = write_image("ud2", &image(&UD2));
    let o = run(&img, &["--timeout", "20"]);
    assert_guest_crash(&o, "triple fault");
}

#[test]
fn port_io_from_outside_kernel_text_is_refused() {
    // The code jumps into the (non-executable) data segment, which writes 7 to the exit
    // port. Paging is off, so the CPU executes it; the VMM must refuse the write.
    let data = exit(7);
    let code = jmp_abs(DATA_PADDR as u32);
    let img = write_image(
        "outside-text",
        &image_with_data(&code, Some((&data, 0x1000))),
    );
    let o = run(&img, &[]);
    assert_guest_crash(&o, "port I/O from outside kernel text: out 0xf4");
}

#[test]
fn an_out_that_is_the_last_instruction_of_kernel_text_is_accepted() {
    // On kvm_pvm the RIP at an OUT exit is the address after the instruction, here the end
    // of the text: the instruction itself is inside it.
    let code = [mov_al(5), out_imm(0xf4)].concat();
    let img = write_image("out-last", &image(&code));
    let o = run(&img, &[]);
    assert_eq!(o.status.code(), Some(5), "stderr: {}", stderr(&o));
}

#[test]
fn an_out_just_below_kernel_text_is_refused() {
    // The code writes `out %al, $0xf4` into the two bytes below the text and jumps there:
    // the instruction lies outside the text although, on kvm_pvm, the RIP after it is the
    // text's first byte.
    let below = (CODE_PADDR - 2) as u32;
    let mut code = Vec::new();
    for (i, b) in [0xe6u8, 0xf4].into_iter().enumerate() {
        code.extend_from_slice(&[0xc6, 0x05]); // movb $imm8, abs32
        code.extend_from_slice(&(below + i as u32).to_le_bytes());
        code.push(b);
    }
    code.extend(mov_al(7));
    code.extend(jmp_abs(below));
    let img = write_image("out-below", &image(&code));
    let o = run(&img, &[]);
    assert_guest_crash(&o, "port I/O from outside kernel text: out 0xf4");
}

/// A guest that writes 'x' to COM1 forever.
fn serial_flood_code() -> Vec<u8> {
    // mov $COM1, %dx; mov $'x', %al; 1: out %al, %dx; jmp 1b
    [mov_dx(COM1), mov_al(b'x'), vec![OUT_DX_AL, 0xeb, 0xfd]].concat()
}

#[test]
fn a_console_that_stops_draining_does_not_stop_the_timeout() {
    // Issue 13 finding 1: with stdout a pipe nobody reads, the flood filled it and the VMM
    // hung in a write, deaf to --timeout.
    let img = write_image("stuck-console", &image(&serial_flood_code()));
    let started = std::time::Instant::now();
    let mut child = vmm()
        .arg("run")
        .arg(&img)
        .args(["--memory", "16", "--timeout", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped()) // never read
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = started + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the VMM hung with a stuck console");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(VMM_TIMEOUT), "{err}");
    assert!(err.contains("guest did not finish within 2 s"), "{err}");
    assert!(
        err.contains("serial output: ") && err.contains("bytes dropped"),
        "{err}"
    );
}

#[test]
fn a_serial_fifo_without_a_reader_is_an_error_not_a_hang() {
    let dir = temp_dir("serial-fifo");
    let fifo = dir.path().join("console");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let img = write_image("serial-fifo-img", &image(&hello_code()));
    let serial = format!("file:{}", fifo.display());
    let started = std::time::Instant::now();
    let o = run(&img, &["--serial", &serial, "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(VMM_ERROR), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("no process has it open for reading"),
        "{}",
        stderr(&o)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_guest_cannot_flood_the_vmms_stderr() {
    // Issue 13 finding 5: unknown boot-timer and bench values each logged a warning, and a
    // repeated boot mark was printed each time (200,000 lines were seen).
    let mut code = Vec::new();
    for _ in 0..2000 {
        code.extend(out_dx(BOOT_TIMER, 200));
        code.extend(out_dx(BENCH, 200));
        code.extend(out_dx(BOOT_TIMER, 1));
    }
    code.extend(exit(0));
    let img = write_image("flood", &image(&code));
    let o = run(&img, &["--boot-timer", "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    let lines = err.lines().count();
    assert!(lines <= 30, "{lines} lines on stderr:\n{err}");
    assert!(err.contains("further such warnings are not shown"), "{err}");
    assert_eq!(
        err.matches("boot-timer: kernel entry after").count(),
        1,
        "{err}"
    );
}

#[test]
fn boot_timer_and_bench_port_are_measured() {
    let code = [
        out_dx(BOOT_TIMER, 1),
        out_dx(BENCH, BENCH_BEGIN),
        out_dx(BENCH, BENCH_TICK),
        vec![OUT_DX_AL, OUT_DX_AL],
        out_dx(BENCH, BENCH_END),
        out_dx(BOOT_TIMER, 123),
        exit(0),
    ]
    .concat();
    let img = write_image("timers", &image(&code));
    let stats = img.dir().join("stats.json");
    let o = run(
        &img,
        &["--boot-timer", "--stats-json", stats.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("boot-timer: kernel entry after "), "{err}");
    assert!(err.contains("boot-timer: init start after "), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(v["bench_ticks"], 3);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["outcome"], "exit");
    assert!(v["boot_to_kernel_ms"].as_f64().unwrap() > 0.0);
    assert!(v["boot_to_init_ms"].as_f64().unwrap() >= v["boot_to_kernel_ms"].as_f64().unwrap());
    assert!(v["exit_roundtrip_us"].as_f64().unwrap() > 0.0);
    assert!(v["vmm_rss_kib"].as_u64().unwrap() > 0);
    assert!(["kvm", "kvm_pvm"].contains(&v["platform"].as_str().unwrap()));
}

#[test]
fn bad_images_are_clear_errors() {
    let dir = temp_dir("bad-images");
    let missing = dir.join("missing.img");
    let o = run(&missing, &[]);
    assert_eq!(o.status.code(), Some(VMM_ERROR));
    let err = stderr(&o);
    assert!(
        err.starts_with("fluke-vmm: error: cannot read image "),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let garbage = dir.join("garbage.img");
    std::fs::write(&garbage, b"this is not an ELF file at all").unwrap();
    let o = run(&garbage, &[]);
    assert_eq!(o.status.code(), Some(VMM_ERROR));
    let err = stderr(&o);
    assert!(err.contains("invalid image "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let good = image(&exit(0));
    let truncated = dir.join("truncated.img");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let o = run(&truncated, &[]);
    assert_eq!(o.status.code(), Some(VMM_ERROR));
    assert!(stderr(&o).contains("invalid image "), "{}", stderr(&o));

    let mut corrupt = good.clone();
    corrupt[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes()); // e_phoff
    let corrupt_path = dir.join("corrupt.img");
    std::fs::write(&corrupt_path, &corrupt).unwrap();
    let o = run(&corrupt_path, &[]);
    assert_eq!(o.status.code(), Some(VMM_ERROR));
    assert!(stderr(&o).contains("invalid image "), "{}", stderr(&o));

    let empty = dir.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let o = run(&empty, &[]);
    assert_eq!(o.status.code(), Some(VMM_ERROR));
}

#[test]
fn memory_and_argument_errors() {
    // 4 MiB of .bss after the code: does not fit in 2 MiB.
    let img = write_image(
        "too-big",
        &image_with_data(&exit(0), Some((&[1, 2, 3], 4 << 20))),
    );
    let o = vmm()
        .args(["run", img.to_str().unwrap(), "--memory", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(VMM_ERROR));
    let err = stderr(&o);
    assert!(
        err.contains("the image needs ")
            && err.contains(" MiB of guest memory but --memory is 2 MiB"),
        "{err}"
    );

    for (args, needle) in [
        (vec!["--memory", "0"], "--memory must be between"),
        (vec!["--memory", "99999999"], "--memory must be between"),
        (vec!["--serial", "tcp:1"], "invalid --serial"),
        (vec!["--serial", "file:"], "invalid --serial"),
        (vec!["--timeout", "0"], "--timeout must be"),
        (vec!["--timeout=-3"], "--timeout must be"),
    ] {
        let o = vmm()
            .args(["run", img.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(VMM_ERROR), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }

    // Usage errors keep clap's status.
    let o = vmm().args(["run", "--log-level", "loud"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = vmm().args(["frobnicate"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn inspect_prints_the_image() {
    let img = write_image("inspect", &image(&hello_code()));
    let o = vmm().arg("inspect").arg(&img).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "pvh entry:   0x100000",
        "0x0000000000100000",
        "0xffffffff80100000",
        "R-X",
        "bundle:",
        "hello",
        "not an ELF",
        "init:        hello",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let o = vmm()
        .args(["inspect", "/nonexistent/x.img"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(VMM_ERROR));
}

#[test]
fn inspect_refuses_what_run_refuses() {
    // Issue 13 finding 6: inspect said OK to an image with a segment below 1 MiB, which run
    // refuses (linux-loader would load it over the VMM's boot structures).
    let mut low = image_with_data(&exit(0), Some((b"low data", 8)));
    // Move the data segment below 1 MiB and the bundle to the first page after the code,
    // where the image format then expects it (ELF64 program headers, little-endian).
    let word = |b: &[u8], at: usize, n: usize| {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |a, &x| (a << 8) | u64::from(x))
    };
    let (phoff, size, count) = (
        word(&low, 32, 8) as usize,
        word(&low, 54, 2) as usize,
        word(&low, 56, 2) as usize,
    );
    let set = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let (mut moved_data, mut moved_bundle) = (false, false);
    for i in 0..count {
        let ph = phoff + i * size;
        let (vaddr, paddr) = (word(&low, ph + 16, 8), word(&low, ph + 24, 8));
        if paddr == DATA_PADDR {
            set(&mut low, ph + 24, 0x8_0000);
            moved_data = true;
        } else if paddr == DATA_PADDR + 0x1000 {
            set(&mut low, ph + 24, DATA_PADDR);
            set(&mut low, ph + 16, vaddr - 0x1000);
            moved_bundle = true;
        }
    }
    assert!(moved_data && moved_bundle, "unexpected image layout");
    let img = write_image("inspect-low", &low);
    let r = run(&img, &[]);
    let i = vmm().arg("inspect").arg(&img).output().unwrap();
    assert_eq!(r.status.code(), Some(VMM_ERROR), "run: {}", stderr(&r));
    assert!(stderr(&r).contains("below 0x100000"), "{}", stderr(&r));
    assert_eq!(
        i.status.code(),
        Some(VMM_ERROR),
        "inspect said: {}",
        stdout(&i)
    );
    assert_eq!(stderr(&i), stderr(&r));
}

#[test]
fn bench_writes_records() {
    // Boot marks around a BEGIN, 100 TICKs (a `dec %ecx; jnz` loop), END; then exit 0.
    let code = [
        out_dx(BOOT_TIMER, 1),
        out_dx(BENCH, BENCH_BEGIN),
        mov_al(BENCH_TICK),
        vec![0xb9, 100, 0, 0, 0],          // mov $100, %ecx
        vec![OUT_DX_AL, 0x49, 0x75, 0xfc], // 1: out %al,(%dx); dec %ecx; jnz 1b
        mov_al(BENCH_END),
        vec![OUT_DX_AL],
        out_dx(BOOT_TIMER, 123),
        exit(0),
    ]
    .concat();
    let img = write_image("bench", &image(&code));
    let dir = img.dir();
    let json = dir.join("bench.json");
    let md = dir.join("bench.md");
    let o = vmm()
        .arg("bench")
        .arg("--image")
        .arg(&img)
        .args([
            "--samples",
            "3",
            "--only",
            // Not `boot.`: boot.to_init_qemu would boot this tiny guest under QEMU, which
            // never prints the kernel's started-init line.
            "boot.to_kernel,vmm.exit_roundtrip,vmm.rss",
        ])
        .args(["--json", json.to_str().unwrap()])
        .args(["--markdown", md.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("name"), "{table}");
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let names: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "boot.to_kernel",
            "vmm.exit_roundtrip",
            "vmm.exit_roundtrip_seccomp_off",
            "vmm.rss"
        ]
    );
    for r in records.as_array().unwrap() {
        assert_eq!(r["model"], "vmm");
        assert_eq!(r["samples"].as_array().unwrap().len(), 3);
        assert!(r["value"].as_f64().unwrap() > 0.0, "{r}");
        assert!(["kvm", "kvm_pvm"].contains(&r["platform"].as_str().unwrap()));
    }
    assert!(std::fs::read_to_string(&md)
        .unwrap()
        .starts_with("| name | model | platform | median | unit | samples | min | max |"));

    // A guest that never writes the marks: the bench fails, naming what is missing.
    let img = write_image("bench-none", &image(&exit(0)));
    let o = vmm()
        .arg("bench")
        .arg("--image")
        .arg(&img)
        .args(["--samples", "1", "--only", "boot."])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(VMM_ERROR));
    assert!(
        stderr(&o).contains("boot.to_kernel: the guest did not report it"),
        "{}",
        stderr(&o)
    );
    // Under QEMU it exits before any init starts: that record fails too, saying so.
    assert!(
        stderr(&o)
            .contains("boot.to_init_qemu: QEMU ended before it printed `fluke: started init:`"),
        "{}",
        stderr(&o)
    );
}

/// How a hostile guest's run may end: its own exit (the VMM or KVM handled what it did) or
/// a crash report naming what it did; never a hang, another status, or a VMM failure.
#[track_caller]
fn ends_cleanly(o: &Output, case: &str, crash_says: &str) -> &'static str {
    let err = stderr(o);
    match o.status.code() {
        Some(0) => "exit",
        Some(VMM_GUEST_CRASH) => {
            assert!(
                err.contains(crash_says),
                "{case}: no {crash_says:?} in: {err}"
            );
            assert!(
                err.contains("rip 0x") && err.contains("cr3"),
                "{case}: no registers: {err}"
            );
            "crash"
        }
        other => panic!("{case}: status {other:?}: {err}"),
    }
}

#[test]
fn a_corpus_of_hostile_guests_each_ends_with_its_exit_or_a_report_within_the_timeout() {
    // Issue 13, "a hostile-guest corpus": every kind of thing a guest can do to the VMM,
    // each in a VM of its own, ends one of the two ways above (or, for a guest that never
    // stops, with the timeout's report) within its --timeout; the VMM never hangs or fails.
    let dir = temp_dir("hostile-corpus");
    let boot = |name: &str, code: &[u8], timeout: &str| {
        let path = dir.path().join(format!("{name}.img"));
        std::fs::write(&path, image(code)).unwrap();
        let started = std::time::Instant::now();
        let o = run(&path, &["--timeout", timeout]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{name}: took {:?}",
            started.elapsed()
        );
        o
    };
    let (mut exits, mut crashes) = (0, 0);
    let mut tally = |how: &str| match how {
        "exit" => exits += 1,
        _ => crashes += 1,
    };
    // Ports: one byte out, one byte in, a word out and a dword out, on a sample of the
    // whole port space (every 0x400th port and the ones anything might answer: the PIC,
    // PIT, i8042, CMOS, POST, COM2-4, PCI configuration, ours), then exit 0.
    let mut ports: Vec<u16> = (0..64).map(|i| i * 0x400 + 0x1f).collect();
    ports.extend([
        0x20,
        0x21,
        0x40,
        0x43,
        0x60,
        0x64,
        0x70,
        0x71,
        0x80,
        0x92,
        0xa0,
        0xa1,
        0x2f8,
        0x3e8,
        0x2e8,
        0x3f8 + 7,
        0xcf8,
        0xcfc,
        0xf5,
        0xf6,
        0xf7,
        0xffff,
    ]);
    for port in ports {
        let out_b = [out_dx(port, 0xa5), exit(0)].concat();
        let in_b = [mov_dx(port), vec![IN_AL_DX], exit(0)].concat();
        // mov $0x1234, %ax; out %ax, (%dx)  /  mov $0x12345678, %eax; out %eax, (%dx)
        let out_w = [
            mov_dx(port),
            vec![0x66, 0xb8, 0x34, 0x12, 0x66, 0xef],
            exit(0),
        ]
        .concat();
        let out_l = [
            mov_dx(port),
            vec![0xb8, 0x78, 0x56, 0x34, 0x12, 0xef],
            exit(0),
        ]
        .concat();
        for (what, code) in [
            ("outb", out_b),
            ("inb", in_b),
            ("outw", out_w),
            ("outl", out_l),
        ] {
            let case = format!("{what} {port:#x}");
            let o = boot(&format!("port-{what}-{port:x}"), &code, "10");
            tally(ends_cleanly(&o, &case, &format!("{port:#x}")));
        }
    }
    // MMIO: a byte written, a byte read, just above RAM (16 MiB), far above it, at the
    // IOAPIC and LAPIC (KVM's), at the top of the 32-bit space; then exit 0.
    for addr in [
        0x0100_0000u32,
        0x4000_0000,
        0xd000_0000,
        0xfec0_0000,
        0xfee0_0000,
        0xffff_fff0,
    ] {
        let [a, b, c, d] = addr.to_le_bytes();
        let write = [mov_al(0x5a), vec![0xa2, a, b, c, d], exit(0)].concat();
        let read = [vec![0xa0, a, b, c, d], exit(0)].concat();
        for (what, code) in [("write", write), ("read", read)] {
            let case = format!("MMIO {what} {addr:#x}");
            let o = boot(&format!("mmio-{what}-{addr:x}"), &code, "10");
            tally(ends_cleanly(&o, &case, &format!("{addr:#x}")));
        }
    }
    assert!(exits > 0 && crashes > 0, "{exits} exits, {crashes} crashes");
    // Guests that never stop: spinning and halted with interrupts off, and a flood of the
    // VMM's own ports; each gets the timeout's report (124) on time.
    let never_stop: [(&str, Vec<u8>); 4] = [
        ("cli-spin", [vec![0xfa], SPIN.to_vec()].concat()),
        ("cli-hlt", vec![0xfa, HLT, 0xeb, 0xfd]),
        // mov $BOOT_TIMER, %dx; 1: inc %al; out %al, (%dx); jmp 1b
        (
            "boot-timer-flood",
            [mov_dx(BOOT_TIMER), vec![0xfe, 0xc0, OUT_DX_AL, 0xeb, 0xfb]].concat(),
        ),
        (
            "bench-port-flood",
            [mov_dx(BENCH), vec![0xfe, 0xc0, OUT_DX_AL, 0xeb, 0xfb]].concat(),
        ),
    ];
    for (name, code) in never_stop {
        let o = boot(name, &code, "1");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(VMM_TIMEOUT), "{name}: {err}");
        assert!(
            err.contains("guest did not finish within 1 s"),
            "{name}: {err}"
        );
        assert!(err.lines().count() < 40, "{name}: stderr flooded: {err}");
    }
    // A triple fault and a serial flood into a stuck console are their own tests above.
}

/// Tiny virtio-blk drivers: 32-bit code (paging off) that programs device 0's virtio-mmio
/// registers at their physical addresses, one request at a time on a queue of 4.
mod virtio_guest {
    use super::common::asm::*;

    pub const BASE: u32 = fluke_abi::devices::VIRTIO_MMIO_BASE as u32;
    /// The rings and buffers lie in the device's DMA area, after its register page (the
    /// only memory the device reaches).
    pub const DMA: u32 = BASE + fluke_abi::devices::VIRTIO_DMA_OFFSET as u32;
    pub const DESC: u32 = DMA;
    pub const AVAIL: u32 = DMA + 0x100;
    pub const USED: u32 = DMA + 0x200;
    pub const HEADER: u32 = DMA + 0x1000;
    pub const DATA: u32 = DMA + 0x2000;
    pub const STATUS: u32 = DMA + 0x3000;

    pub fn reg(offset: u32) -> u32 {
        BASE + offset
    }

    /// Status ACKNOWLEDGE|DRIVER, VIRTIO_F_VERSION_1 only, FEATURES_OK (checked), queue 0
    /// of 4 entries at DESC/AVAIL/USED, DRIVER_OK.
    pub fn setup() -> Vec<u8> {
        setup_at(DESC, AVAIL, USED)
    }

    /// [`setup`] with the rings at other addresses.
    pub fn setup_at(desc: u32, avail: u32, used: u32) -> Vec<u8> {
        [
            store32(reg(0x70), 1),
            store32(reg(0x70), 3),
            store32(reg(0x24), 1),
            store32(reg(0x20), 1),
            store32(reg(0x24), 0),
            store32(reg(0x20), 0),
            store32(reg(0x70), 0xb),
            load32(reg(0x70)),
            expect_eax(0xb, 10),
            store32(reg(0x30), 0),
            load32(reg(0x34)),
            expect_eax(256, 11),
            store32(reg(0x38), 4),
            store32(reg(0x80), desc),
            store32(reg(0x84), 0),
            store32(reg(0x90), avail),
            store32(reg(0x94), 0),
            store32(reg(0xa0), used),
            store32(reg(0xa4), 0),
            store32(reg(0x44), 1),
            store32(reg(0x70), 0xf),
        ]
        .concat()
    }

    /// Request number `n` (0-based): header (type, sector), one 512-byte data buffer
    /// (device-writable for a read), the status byte (preset to 0xff); made available.
    pub fn request(n: u16, request_type: u32, sector: u32) -> Vec<u8> {
        let data_flags = if request_type == 0 { 2 } else { 0 };
        [
            // desc0: header, NEXT, next 1
            store32(DESC, HEADER),
            store32(DESC + 4, 0),
            store32(DESC + 8, 16),
            store32(DESC + 12, 0x0001_0001),
            // desc1: data, NEXT (| WRITE), next 2
            store32(DESC + 16, DATA),
            store32(DESC + 20, 0),
            store32(DESC + 24, 512),
            store32(DESC + 28, 0x0002_0001 | data_flags),
            // desc2: status, WRITE
            store32(DESC + 32, STATUS),
            store32(DESC + 36, 0),
            store32(DESC + 40, 1),
            store32(DESC + 44, 2),
            store32(HEADER, request_type),
            store32(HEADER + 4, 0),
            store32(HEADER + 8, sector),
            store32(HEADER + 12, 0),
            store32(STATUS, 0xff),
            // avail.ring[n] = 0; avail.idx = n + 1 (flags 0)
            store32(AVAIL + 4 + 2 * u32::from(n), 0),
            store32(AVAIL, u32::from(n + 1) << 16),
        ]
        .concat()
    }

    /// QueueNotify(0).
    pub fn notify() -> Vec<u8> {
        store32(reg(0x50), 0)
    }

    /// Routes device 0's line (IOAPIC input 5) to `DEVICE_VECTOR` and its gate to `handler`.
    pub fn route_interrupt(handler: u32) -> Vec<u8> {
        super::common::asm::route_interrupt(5, handler)
    }
}

/// A drive file of `sectors` sectors, sector `i` filled with byte `0x70 + i`.
fn drive_file(dir: &std::path::Path, name: &str, sectors: u8) -> std::path::PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..sectors).flat_map(|i| [0x70 + i; 512]).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn virtio_blk_registers_read_as_the_spec_says() {
    use virtio_guest::reg;
    const WINDOW: u32 = fluke_abi::devices::VIRTIO_MMIO_SIZE as u32;
    let code = [
        load32(reg(0x000)),
        expect_eax(0x7472_6976, 1), // "virt"
        load32(reg(0x004)),
        expect_eax(2, 2), // version 2: the modern layout
        load32(reg(0x008)),
        expect_eax(2, 3), // block
        load32(reg(0x100)),
        expect_eax(3, 4), // capacity: 3 sectors
        load32(reg(0x104)),
        expect_eax(0, 5),
        store32(reg(0x14), 0),
        load32(reg(0x10)),
        expect_eax((1 << 9) | (1 << 5), 6), // FLUSH | RO
        store32(reg(0x14), 1),
        load32(reg(0x10)),
        expect_eax(1, 7), // VERSION_1
        // The second device's window, a window's size on.
        load32(reg(WINDOW + 0x008)),
        expect_eax(2, 8),
        load32(reg(WINDOW + 0x100)),
        expect_eax(1, 9),
        // The first one's DMA area is memory: what is stored reads back.
        store32(virtio_guest::DMA, 0x1234_5678),
        load32(virtio_guest::DMA),
        expect_eax(0x1234_5678, 10),
        exit(42),
    ]
    .concat();
    let img = write_image("virtio-regs", &image(&code));
    let ro = drive_file(img.dir(), "ro.img", 3);
    let rw = drive_file(img.dir(), "rw.img", 1);
    let o = run(
        &img,
        &[
            "--drive",
            &format!("path={},readonly", ro.display()),
            "--drive",
            &format!("path={}", rw.display()),
        ],
    );
    assert_eq!(o.status.code(), Some(42), "stderr: {}", stderr(&o));
}

/// `vmm.rss` is the VMM's own memory: a guest that writes every page of its device's DMA
/// area (guest memory, like RAM) does not make it grow.
#[test]
fn vmm_rss_leaves_out_the_devices_dma_areas() {
    use virtio_guest::DMA;
    let end =
        DMA + (fluke_abi::devices::VIRTIO_MMIO_SIZE - fluke_abi::devices::VIRTIO_DMA_OFFSET) as u32;
    let touch_all = |touch: bool| {
        let mut code = vec![0xb8];
        code.extend_from_slice(&DMA.to_le_bytes()); // mov $DMA, %eax
        if touch {
            // 1: movl $1, (%eax); add $0x1000, %eax; cmp $end, %eax; jb 1b
            code.extend_from_slice(&[0xc7, 0x00, 1, 0, 0, 0, 0x05, 0x00, 0x10, 0x00, 0x00, 0x3d]);
            code.extend_from_slice(&end.to_le_bytes());
            code.extend_from_slice(&[0x72, 0xee]);
        }
        [code, exit(0)].concat()
    };
    let rss = |touch: bool| {
        let img = write_image(&format!("dma-rss-{touch}"), &image(&touch_all(touch)));
        let disk = drive_file(img.dir(), "disk.img", 1);
        let stats = img.dir().join("stats.json");
        let o = run(
            &img,
            &[
                "--drive",
                &format!("path={}", disk.display()),
                "--stats-json",
                stats.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
        v["vmm_rss_kib"].as_u64().unwrap()
    };
    let (untouched, touched) = (rss(false), rss(true));
    // 1020 KiB touched; allow for what else varies between two runs.
    assert!(
        touched < untouched + 256,
        "vmm_rss_kib {untouched} KiB with the DMA area untouched, {touched} KiB with all of it written"
    );
}

#[test]
fn a_virtio_blk_read_completes_with_an_interrupt() {
    use virtio_guest::*;
    // The handler checks the completion and exits with the data's first byte.
    let handler = [
        load16(USED + 2),
        expect_eax(1, 20), // used.idx
        load32(USED + 8),
        expect_eax(513, 21), // used.ring[0].len: 512 data bytes and the status
        load8(STATUS),
        expect_eax(0, 22), // VIRTIO_BLK_S_OK
        load32(reg(0x60)),
        expect_eax(1, 23), // InterruptStatus: used buffer
        store32(reg(0x64), 1),
        load32(reg(0x60)),
        expect_eax(0, 24), // acknowledged
        load8(DATA + 511),
        vec![0xe6, 0xf4, HLT], // out %al, $0xf4
    ]
    .concat();
    let main = |handler_at: u32| {
        [
            route_interrupt(handler_at),
            setup(),
            request(0, 0, 2),
            vec![STI],
            notify(),
            vec![HLT, 0xeb, 0xfd], // 1: hlt; jmp 1b
        ]
        .concat()
    };
    let len = main(0).len() as u32;
    let code = [main(CODE_PADDR as u32 + len), handler].concat();
    let img = write_image("virtio-read", &image(&code));
    let drive = drive_file(img.dir(), "disk.img", 4);
    let o = run(
        &img,
        &[
            "--drive",
            &format!("path={}", drive.display()),
            "--timeout",
            "20",
            "--log-level",
            "debug",
        ],
    );
    assert_eq!(o.status.code(), Some(0x72), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    // The notification never reached the VMM as an exit: KVM's ioeventfd took it.
    assert!(!err.contains("notified by an MMIO exit"), "{err}");
    assert!(
        err.contains("seccomp: the virtio-blk thread keeps to its list"),
        "{err}"
    );

    // With guest RAM paged by the host (userfaultfd, 2 MiB resident of 16): the device's
    // memory is its own DMA area, which the host does not page, and the read is the same.
    let o = run(
        &img,
        &[
            "--drive",
            &format!("path={}", drive.display()),
            "--memory-resident",
            "2",
        ],
    );
    assert_eq!(o.status.code(), Some(0x72), "stderr: {}", stderr(&o));
}

/// The device reaches only its DMA area: a queue placed in guest RAM (where a driver
/// that could DMA would overwrite the kernel) is refused at DRIVER_OK with
/// DEVICE_NEEDS_RESET, and nothing is read or written.
#[test]
fn a_virtio_queue_in_guest_ram_is_refused() {
    use virtio_guest::*;
    let code = [
        setup_at(0x20_0000, 0x20_0100, 0x20_0200),
        load32(reg(0x70)),
        expect_eax(0x4f, 30), // ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK|NEEDS_RESET
        exit(0),
    ]
    .concat();
    let img = write_image("virtio-ram-queue", &image(&code));
    let drive = drive_file(img.dir(), "disk.img", 4);
    let o = run(
        &img,
        &[
            "--drive",
            &format!("path={}", drive.display()),
            "--timeout",
            "20",
            "--log-level",
            "debug",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("outside the device's DMA area"),
        "{}",
        stderr(&o)
    );
}

/// A guest that writes sector 1 (a data buffer of 0xabababab words) and exits with its
/// status + 50 if it failed; else flushes (the device thread's fdatasync, under its seccomp
/// list) and exits with the flush's status + 60.
fn virtio_write_guest() -> Vec<u8> {
    use virtio_guest::*;
    let fill: Vec<u8> = (0..128)
        .flat_map(|i| store32(DATA + 4 * i, 0xabab_abab))
        .collect();
    [
        setup(),
        fill,
        request(0, 1, 1),
        notify(),
        wait16(USED + 2, 1),
        load8(STATUS),
        vec![0x3c, 0, 0x74, 6],          // cmp $0, %al; je 1f
        vec![0x04, 50, 0xe6, 0xf4, HLT], // add $50, %al; out %al, $0xf4; hlt
        vec![HLT],                       // (padding to the 6-byte jump)
        request(1, 4, 0),                // 1: VIRTIO_BLK_T_FLUSH
        notify(),
        wait16(USED + 2, 2),
        load8(STATUS),
        vec![0x04, 60, 0xe6, 0xf4, HLT],
    ]
    .concat()
}

#[test]
fn a_virtio_blk_write_reaches_the_file_and_a_read_only_drive_refuses_it() {
    let img = write_image("virtio-write", &image(&virtio_write_guest()));
    let drive = drive_file(img.dir(), "disk.img", 2);
    let o = run(&img, &["--drive", &format!("path={}", drive.display())]);
    assert_eq!(o.status.code(), Some(60), "stderr: {}", stderr(&o));
    let bytes = std::fs::read(&drive).unwrap();
    assert!(
        bytes[..512].iter().all(|&b| b == 0x70),
        "sector 0 untouched"
    );
    assert!(bytes[512..].iter().all(|&b| b == 0xab), "sector 1 written");

    let drive = drive_file(img.dir(), "ro.img", 2);
    let o = run(
        &img,
        &["--drive", &format!("path={},readonly", drive.display())],
    );
    // VIRTIO_BLK_S_IOERR, and the file is as it was.
    assert_eq!(o.status.code(), Some(51), "stderr: {}", stderr(&o));
    assert!(std::fs::read(&drive).unwrap()[512..]
        .iter()
        .all(|&b| b == 0x71));
}

#[test]
fn the_device_thread_keeps_to_its_seccomp_list() {
    let img = write_image("virtio-seccomp", &image(&exit(0)));
    let drive = drive_file(img.dir(), "disk.img", 1);
    let o = vmm()
        .arg("run")
        .arg(&*img)
        .args(["--memory", "16", "--timeout", "20", "--drive"])
        .arg(format!("path={}", drive.display()))
        .env("FLUKE_SECCOMP_PROBE", "virtio-blk")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(VMM_ERROR), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "the virtio-blk thread made system call {}, outside its seccomp filter",
            libc::SYS_socket
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn mmio_outside_every_device_window_is_still_a_crash() {
    // With one drive, device 1's window is nobody's.
    let window = fluke_abi::devices::VIRTIO_MMIO_SIZE as u32;
    let code = [load32(virtio_guest::reg(window)), exit(0)].concat();
    let img = write_image("virtio-no-device", &image(&code));
    let drive = drive_file(img.dir(), "disk.img", 1);
    let o = run(&img, &["--drive", &format!("path={}", drive.display())]);
    assert_guest_crash(&o, "unexpected MMIO read: 4 bytes at 0xd0100000");
    // Without a drive, device 0's DMA area is nobody's memory either.
    let code = [load32(virtio_guest::DMA), exit(0)].concat();
    let img = write_image("virtio-no-dma", &image(&code));
    let o = run(&img, &[]);
    assert_guest_crash(&o, "unexpected MMIO read: 4 bytes at 0xd0001000");
}

#[test]
fn bad_drives_are_refused_with_one_line() {
    let img = write_image("virtio-bad-drives", &image(&exit(0)));
    let dir = img.dir();
    std::fs::write(dir.join("odd.img"), [0u8; 700]).unwrap();
    let ok = drive_file(dir, "ok.img", 1);
    let path = |name: &str| format!("path={}", dir.join(name).display());
    let nine: Vec<String> = (0..9)
        .flat_map(|_| ["--drive".to_string(), format!("path={}", ok.display())])
        .collect();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--drive".into(), path("missing.img")],
            "missing.img: No such file or directory".into(),
        ),
        (
            vec!["--drive".into(), format!("path={}", dir.display())],
            "is a directory".into(),
        ),
        (
            vec!["--drive".into(), "path=/dev/null".into()],
            "--drive /dev/null: not a regular file".into(),
        ),
        (
            vec!["--drive".into(), path("odd.img")],
            "its size (700 bytes) is not a multiple of 512".into(),
        ),
        (
            vec!["--drive".into(), format!("{},cache=none", path("ok.img"))],
            "unknown option \"cache\" (expected path=FILE[,readonly])".into(),
        ),
        (
            vec!["--drive".into(), "readonly".into()],
            "no path=FILE".into(),
        ),
        (
            nine,
            "9 devices (--drive and --channel), at most 8 fit".into(),
        ),
    ];
    assert_each_refused_with_one_line(&img, &cases);
}

#[test]
fn a_vm_with_drives_refuses_a_snapshot_and_runs_on() {
    let img = write_image("virtio-snapshot", &image(&SPIN));
    let drive = drive_file(img.dir(), "disk.img", 1);
    let sock = img.dir().join("api.sock");
    let mut child = vmm()
        .arg("run")
        .arg(&*img)
        .args(["--memory", "16", "--timeout", "20", "--api-sock"])
        .arg(&sock)
        .arg("--drive")
        .arg(format!("path={}", drive.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ctl = |args: &[&str]| {
        vmm()
            .arg("ctl")
            .arg("--api-sock")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap()
    };
    let snap = img.dir().join("snap");
    let o = ctl(&["snapshot", snap.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(VMM_ERROR), "{err}");
    assert!(
        err.contains("a VM with virtio devices (--drive) cannot be snapshotted yet"),
        "{err}"
    );
    assert!(!snap.exists());
    // Still running: the refusal left the VM as it was.
    assert!(child.try_wait().unwrap().is_none());
    let _ = child.kill();
    let _ = child.wait();
}
