//! VM snapshots (`ctl snapshot DIR`, `PUT /snapshot/create`) and `fluke-vmm restore`: a
//! guest paused, snapshotted and killed with its VMM continues in a new process exactly
//! where it was; corrupt snapshots are refused; a VMM killed while writing one leaves the
//! previous one whole. On kvm_pvm this also checks the kernel's part: the host cannot write
//! the PV control MSR, so the restored vCPU starts in default mode and the kernel turns PV
//! mode back on in its NMI handler (a user-mode context: `spinner`; a kernel one: the idle
//! `ticker`).

mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use fluke_abi::status::VMM_ERROR;
use support::api::*;
use support::VMM;

const TICKER: &str = "fluke.init=work,ticker,40,30";

fn ctl(sock: &Path, args: &[&str]) -> std::process::Output {
    Command::new(VMM)
        .arg("ctl")
        .arg("--api-sock")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

fn ctl_snapshot(sock: &Path, dir: &Path) -> std::process::Output {
    ctl(sock, &["snapshot", dir.to_str().unwrap()])
}

/// Starts the ticker, lets it reach tick `at`, pauses it and snapshots it into `dir`.
/// Returns the paused VM and what it had printed.
fn snapshot_at(tag: &str, at: u64, dir: &Path) -> (LiveVm, String) {
    let vm = LiveVm::start(tag, TICKER);
    vm.wait_for(&format!("work: tick {at} "));
    pause(&vm.sock);
    let out = ctl_snapshot(&vm.sock, dir);
    assert!(out.status.success(), "snapshot: {out:?}");
    assert_eq!(
        state(&vm.sock),
        "Paused",
        "a paused VM stays paused after ctl snapshot"
    );
    let printed = vm.console();
    (vm, printed)
}

fn restore_args(dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["restore".into(), dir.into()];
    v.extend(extra.iter().map(OsString::from));
    v
}

/// The sequence printed before the snapshot, then by the restored VM: it must be S.
fn joined(before: &str, after: &str) -> Vec<(u64, String)> {
    let mut s = sequence(before);
    s.extend(sequence(after));
    s
}

#[test]
fn a_snapshot_continues_in_a_new_process_exactly_and_the_original_too() {
    let s = reference(TICKER);
    assert_eq!(s.len(), 40);
    let dir = TempDir::new("snap-continue");
    let snap = dir.0.join("snap");
    let (vm, before) = snapshot_at("snap-orig", 10, &snap);
    assert!(snap.join("vmstate").exists() && snap.join("memory").exists());
    // The original, resumed, finishes as if nothing happened.
    resume(&vm.sock);
    let (status, original) = vm.finish();
    assert_eq!(status, 0, "{original}");
    assert_eq!(sequence(&original), s);
    // A new process continues from the snapshot: paused until asked, then exactly S.
    let restored = LiveVm::start_with("snap-new", &restore_args(&snap, &[]), "", &[]);
    wait_state(&restored.sock, "Paused");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(restored.ticks(), 0, "a restore without --resume ran");
    resume(&restored.sock);
    let (status, after) = restored.finish();
    assert_eq!(status, 0, "{after}");
    assert_eq!(
        joined(&before, &after),
        s,
        "before:\n{before}\nafter:\n{after}"
    );
    // The guest's clock went on from where it was: no tick gap near the time in between.
    let t: Vec<u64> = ticks(&after).into_iter().map(|(_, _, ms)| ms).collect();
    let last_before = ticks(&before).last().unwrap().2;
    assert!(
        t[0] - last_before < 300,
        "a {} ms jump in guest time",
        t[0] - last_before
    );
}

#[test]
fn a_guest_killed_with_its_vmm_continues_from_its_snapshot() {
    let s = reference(TICKER);
    let dir = TempDir::new("snap-kill");
    let snap = dir.0.join("snap");
    let (vm, before) = snapshot_at("snap-killed", 15, &snap);
    let _ = vm.kill();
    // With each way of bringing the memory back: read whole, or page by page on demand.
    for mode in ["copy", "ondemand"] {
        let args = restore_args(&snap, &["--resume", "--memory-restore", mode]);
        let restored = LiveVm::start_with("snap-killed-new", &args, "", &[]);
        let (status, after) = restored.finish();
        assert_eq!(status, 0, "{mode}: {after}");
        assert_eq!(joined(&before, &after), s, "{mode}");
    }
}

#[test]
fn a_restored_vm_is_snapshotted_again_once_it_has_run() {
    // On kvm_pvm a restored vCPU reads PV control 0x400 until its kernel's NMI handler has
    // written it again: a snapshot before that is refused with a clear message (it could
    // never be restored); once the VM has run, its snapshot restores.
    let s = reference(TICKER);
    let dir = TempDir::new("snap-twice");
    let (first, second) = (dir.0.join("first"), dir.0.join("second"));
    let (vm, before) = snapshot_at("snap-twice-orig", 12, &first);
    let _ = vm.kill();
    let restored = LiveVm::start_with("snap-twice-mid", &restore_args(&first, &[]), "", &[]);
    wait_state(&restored.sock, "Paused");
    if support::host_is_kvm_pvm() {
        let early = ctl_snapshot(&restored.sock, &second);
        assert!(!early.status.success(), "{early:?}");
        assert!(
            String::from_utf8_lossy(&early.stderr).contains("PV mode"),
            "{early:?}"
        );
    }
    resume(&restored.sock);
    restored.wait_for("work: tick 14 ");
    pause(&restored.sock);
    let out = ctl_snapshot(&restored.sock, &second);
    assert!(out.status.success(), "{out:?}");
    let middle = restored.kill();
    let again = LiveVm::start_with(
        "snap-twice-new",
        &restore_args(&second, &["--resume"]),
        "",
        &[],
    );
    let (status, after) = again.finish();
    assert_eq!(status, 0, "{after}");
    let mut seq = sequence(&before);
    seq.extend(sequence(&middle));
    seq.extend(sequence(&after));
    assert_eq!(seq, s);
}

#[test]
fn a_guest_caught_in_user_mode_continues() {
    // `spinner` never enters the kernel while it spins: the snapshot catches user mode,
    // in a child whose FS and GS bases point at marker words it reads at every step (on
    // kvm_pvm the restore must swap the GS bases by hand: the first event after it enters
    // in default mode, which does not).
    let dir = TempDir::new("snap-user");
    let snap = dir.0.join("snap");
    let vm = LiveVm::start("snap-user-orig", "fluke.init=spinner,s,1500,segs");
    vm.wait_for("fluke: started init");
    std::thread::sleep(std::time::Duration::from_millis(600));
    pause(&vm.sock);
    assert!(ctl_snapshot(&vm.sock, &snap).status.success());
    let _ = vm.kill();
    for mode in ["copy", "ondemand"] {
        let args = restore_args(&snap, &["--resume", "--memory-restore", mode]);
        let restored = LiveVm::start_with("snap-user-new", &args, "", &[]);
        let (status, after) = restored.finish();
        assert_eq!(status, 0, "{mode}: {after}");
        assert!(after.contains("spinner s: done"), "{mode}: {after}");
        assert!(
            after.contains("spinner s: segment bases intact"),
            "{mode}: {after}"
        );
    }
}

#[test]
fn a_vmm_killed_while_writing_a_snapshot_leaves_the_previous_one_whole() {
    let s = reference(TICKER);
    let dir = TempDir::new("snap-crash");
    let snap = dir.0.join("snap");
    let (vm, before) = snapshot_at("snap-first", 5, &snap);
    let _ = vm.kill();
    for point in ["memory-written", "vmstate-written", "exchanged"] {
        let vm = LiveVm::start_with(
            "snap-crashing",
            &["run".into(), support::default_image().into_os_string()],
            TICKER,
            &[("FLUKE_SNAPSHOT_CRASH_AT", point)],
        );
        vm.wait_for("work: tick 20 ");
        pause(&vm.sock);
        let out = ctl_snapshot(&vm.sock, &snap);
        assert!(
            !out.status.success(),
            "{point}: the VMM did not die writing: {out:?}"
        );
        let (status, _) = vm.wait();
        assert_eq!(status, -1, "{point}: not killed by the signal");
        // Whichever snapshot DIR holds now is whole and runs to S's end.
        let restored = LiveVm::start_with(
            "snap-after-crash",
            &restore_args(&snap, &["--resume"]),
            "",
            &[],
        );
        let (status, after) = restored.finish();
        assert_eq!(status, 0, "{point}: {after}");
        let t = sequence(&after);
        let from = t.first().map(|(i, _)| *i as usize).unwrap();
        assert_eq!(t, s[from..], "{point}: {after}");
        if point != "exchanged" {
            assert_eq!(
                joined(&before, &after),
                s,
                "{point}: not the previous snapshot"
            );
        }
    }
}

#[test]
fn corrupt_or_mismatched_snapshots_are_refused_with_one_line() {
    let dir = TempDir::new("snap-bad");
    let good = dir.0.join("good");
    let (vm, _) = snapshot_at("snap-bad-orig", 3, &good);
    let _ = vm.kill();
    let vmstate = std::fs::read(good.join("vmstate")).unwrap();
    let memory_len = std::fs::metadata(good.join("memory")).unwrap().len();
    let case = |name: &str, vs: &[u8], mem: &dyn Fn(&Path)| {
        let d = case_dir(&dir.0, name, vs, &good);
        mem(&d.join("memory"));
        let out = Command::new(VMM)
            .args(["restore", "--resume", "--timeout", "20"])
            .arg(&d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(VMM_ERROR), "{name}: {out:?}");
        assert!(
            err.starts_with("fluke-vmm: error: cannot restore: "),
            "{name}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}: the guest ran: {out:?}");
        err.into_owned()
    };
    let same = |_: &Path| {};
    assert!(case("truncated", &vmstate[..vmstate.len() / 2], &same).contains("truncated"));
    let mut flipped = vmstate.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    assert!(case("flipped", &flipped, &same).contains("checksum"));
    let mut version = vmstate.clone();
    version[8] = 9;
    assert!(case("version", &version, &same).contains("version 9"));
    assert!(case("empty", b"", &same).contains("truncated"));
    let short = |p: &Path| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(memory_len / 2).unwrap();
    };
    assert!(case("short-memory", &vmstate, &short).contains("bytes"));
    let scribble_at = |offset: u64| {
        move |p: &Path| {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.write_all(b"scribbled").unwrap();
        }
    };
    let corrupt = case("corrupt-memory", &vmstate, &scribble_at(0x200_000));
    assert!(
        corrupt.contains("0x200000..0x300000 do not match the vmstate (checksum)"),
        "{corrupt}"
    );
    // A torn pair: the vmstate of one snapshot, the memory file of the next.
    let (vm, _) = snapshot_at("snap-bad-next", 3, &dir.0.join("next"));
    let _ = vm.kill();
    let next_memory = dir.0.join("next").join("memory");
    let torn = case("torn-pair", &vmstate, &|p: &Path| {
        std::fs::copy(&next_memory, p).unwrap();
    });
    assert!(
        torn.contains("does not match the vmstate") && torn.contains("torn"),
        "{torn}"
    );
    let on_demand = |name: &str| {
        Command::new(VMM)
            .args(["restore", "--resume", "--memory-restore", "ondemand"])
            .args(["--timeout", "20", "--serial", "null"])
            .arg(dir.0.join(name))
            .output()
            .unwrap()
    };
    // On demand, a torn pair is refused before anything runs too (by the trailer).
    let out = on_demand("torn-pair");
    assert_eq!(out.status.code(), Some(VMM_ERROR), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("torn"),
        "{out:?}"
    );
    // A corrupt chunk, on demand, stops the VM before the guest sees a byte of it: where the
    // guest touches it first, and where it never does (the handler's background check), with
    // one line each.
    let untouched = case_dir(&dir.0, "corrupt-untouched", &vmstate, &good);
    let ram = memory_len - 32; // the memory file ends in a 32-byte trailer
    scribble_at(ram - 0x100_000 + 64)(&untouched.join("memory"));
    let last = format!("{:#x}..{:#x}", ram - 0x100_000, ram);
    for (name, range) in [
        ("corrupt-memory", "0x200000..0x300000"),
        ("corrupt-untouched", last.as_str()),
    ] {
        let out = on_demand(name);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(VMM_ERROR), "{name}: {out:?}");
        assert!(
            err.starts_with("fluke-vmm: error: cannot restore: ")
                && err.contains(&format!("{range} do not match the vmstate (checksum)")),
            "{name}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
    }
    // A snapshot from the other platform (re-checksummed so only the platform differs).
    let body = String::from_utf8(vmstate[24..].to_vec()).unwrap();
    let here = if body.contains("\"platform\":\"kvm_pvm\"") {
        "kvm_pvm"
    } else {
        "kvm"
    };
    let other = if here == "kvm" { "kvm_pvm" } else { "kvm" };
    let recoded = |from: &str, to: &str| {
        assert!(body.contains(from), "{from} not in the vmstate");
        let body = body.replacen(from, to, 1);
        let mut out = vmstate[..24].to_vec();
        out[12..16].copy_from_slice(&crc32(body.as_bytes()).to_le_bytes());
        out[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body.as_bytes());
        out
    };
    let foreign = recoded(
        &format!("\"platform\":\"{here}\""),
        &format!("\"platform\":\"{other}\""),
    );
    assert!(case("platform", &foreign, &same).contains(&format!("taken on {other}")));
    // A TSC 20% faster than this host's: kvm_pvm cannot scale the PV guest's raw TSC.
    let khz: u64 = body
        .split("\"tsc_khz\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("tsc_khz in the vmstate");
    let faster = recoded(
        &format!("\"tsc_khz\":{khz}"),
        &format!("\"tsc_khz\":{}", khz * 6 / 5),
    );
    if here == "kvm_pvm" {
        assert!(case("tsc", &faster, &same).contains("cannot scale it"));
    }
    // No such directory.
    let out = Command::new(VMM)
        .args(["restore", "/nonexistent/snap"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(VMM_ERROR));
}

/// `base/name` holding `vmstate` and a copy of `good`'s memory file.
fn case_dir(base: &Path, name: &str, vmstate: &[u8], good: &Path) -> std::path::PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("vmstate"), vmstate).unwrap();
    std::fs::copy(good.join("memory"), d.join("memory")).unwrap();
    d
}

/// CRC-32 (IEEE), bitwise: the test's own, not the VMM's.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `restore SNAP --memory-restore ondemand --api-sock DIR/api.sock EXTRA...`, waiting paused,
/// its stderr piped; returns once the socket exists.
fn restore_paused_on_demand(
    snap: &Path,
    dir: &Path,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let sock = dir.join("api.sock");
    let child = Command::new(VMM)
        .arg("restore")
        .arg(snap)
        .args(["--memory-restore", "ondemand", "--timeout", "30"])
        .args(extra)
        .arg("--api-sock")
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "no API socket");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (child, sock)
}

/// Asks for a resume without waiting for the answer (the VMM may end first), unless the
/// VMM has ended already.
fn resume_unanswered(sock: &Path) {
    use std::io::Write;
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) {
        let body = r#"{"state": "Resumed"}"#;
        let _ = write!(
            s,
            "PATCH /vm HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

#[test]
fn a_memory_file_cut_short_under_an_on_demand_restore_ends_it_with_a_report() {
    // The file passes every check at restore and is truncated while the VM waits paused:
    // the first chunk the resumed guest touches cannot be read, and the VMM ends with one
    // line instead of leaving the vCPU waiting for its memory.
    let dir = TempDir::new("snap-cut");
    let snap = dir.0.join("snap");
    let (vm, _) = snapshot_at("snap-cut-orig", 3, &snap);
    let _ = vm.kill();
    let (child, sock) = restore_paused_on_demand(&snap, &dir.0, &[]);
    wait_state(&sock, "Paused");
    std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("memory"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // Unless the handler's background check already met the cut (the VMM has ended).
    resume_unanswered(&sock);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VMM_ERROR), "{err}");
    assert!(
        err.contains("cannot restore: cannot read the memory file"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn a_chunk_changed_after_its_background_check_is_caught_when_the_guest_touches_it() {
    // On demand, no byte reaches the guest unchecked, whatever happens to the file: with
    // every chunk checked in the background while the restored VM waits paused, the file
    // is then scribbled over in every chunk; the first chunk the resumed guest touches is
    // read again, fails its checksum, and the VMM ends with one line.
    use std::io::{BufRead, Seek, SeekFrom, Write};
    let dir = TempDir::new("snap-late");
    let snap = dir.0.join("snap");
    let (vm, _) = snapshot_at("snap-late-orig", 3, &snap);
    let _ = vm.kill();
    let (mut child, sock) =
        restore_paused_on_demand(&snap, &dir.0, &["--log-level", "info", "--serial", "null"]);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "ended early:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains("every chunk of the memory file checked") {
            break;
        }
    }
    let memory = snap.join("memory");
    let ram = std::fs::metadata(&memory).unwrap().len() - 32;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap();
    for chunk in 0..ram >> 20 {
        f.seek(SeekFrom::Start((chunk << 20) + 100)).unwrap();
        f.write_all(b"changed after its check").unwrap();
    }
    drop(f);
    wait_state(&sock, "Paused");
    resume_unanswered(&sock);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let errors: Vec<&str> = rest.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(status.code(), Some(VMM_ERROR), "{seen}{rest}");
    assert_eq!(errors.len(), 1, "{rest}");
    assert!(
        errors[0].contains("cannot restore: the memory file: its bytes")
            && errors[0].contains("do not match the vmstate (checksum)"),
        "{rest}"
    );
}
