//! `--channel`: two real fluke-vmm processes on one socket, each booting a hand-assembled
//! guest on the real /dev/kvm (no mocks). The guests write and read the shared area, ring
//! each other's doorbell and take the interrupt through the in-kernel IOAPIC, and see the
//! other VM come and go in the PEER register.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::asm::*;
use common::*;
use fluke_abi::channel::*;
use fluke_abi::status::{VMM_ERROR, VMM_TIMEOUT};

/// Channel 0's window (no drives: device 0).
const BASE: u32 = fluke_abi::devices::VIRTIO_MMIO_BASE as u32;
const SHARED: u32 = BASE + SHARED_OFFSET as u32;
/// Its line (IOAPIC input).
const LINE: u32 = fluke_abi::devices::VIRTIO_FIRST_IRQ;

fn reg(offset: u64) -> u32 {
    BASE + offset as u32
}

/// `1: mov abs32, %eax; cmp $imm, %eax; jne 1b`: spins until the u32 at `addr` is `imm`.
fn wait32(addr: u32, imm: u32) -> Vec<u8> {
    let mut v = load32(addr);
    v.push(0x3d);
    v.extend_from_slice(&imm.to_le_bytes());
    let back = -(v.len() as i8 + 2);
    v.extend_from_slice(&[0x75, back as u8]);
    v
}

/// The LAPIC's end of interrupt.
fn eoi() -> Vec<u8> {
    store32(0xfee0_00b0, 0)
}

/// The end of an interrupt without IRET (kvm_pvm's emulator fails on a 32-bit IRETD with
/// paging off: "emulation failure"): EOI, a fresh stack and a jump to `addr`. Interrupts
/// are taken only at a HLT, so going on at a known place loses nothing.
fn resume_at(addr: u32) -> Vec<u8> {
    [eoi(), vec![0xbc, 0x00, 0x00, 0x30, 0x00], jmp_abs(addr)].concat()
}

/// `sti; hlt; jmp .-2`: waits for interrupts forever.
const IDLE: [u8; 4] = [STI, HLT, 0xeb, 0xfc];

/// A guest of `main` then `handler`, `main` built knowing where the handler lands.
fn with_handler(main: impl Fn(u32) -> Vec<u8>, handler: Vec<u8>) -> Vec<u8> {
    let len = main(0).len() as u32;
    [main(CODE_PADDR as u32 + len), handler].concat()
}

fn channel_arg(sock: &Path) -> String {
    format!("path={}", sock.display())
}

/// Starts `fluke-vmm run IMAGE --memory 16 --timeout 30 --channel path=SOCK ARGS`.
fn start(image: &Path, sock: &Path, args: &[&str], stdout: Stdio) -> Child {
    let mut c = vmm();
    c.arg("run")
        .arg(image)
        .args(["--memory", "16"])
        .arg("--channel")
        .arg(channel_arg(sock))
        .args(args);
    if !args.contains(&"--timeout") {
        c.args(["--timeout", "30"]);
    }
    c.stdout(stdout).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits until `path` exists (the listener's socket appears only once it listens).
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sock_in(dir: &Path) -> PathBuf {
    dir.join("chan.sock")
}

#[test]
fn a_doorbell_rings_the_other_vm_through_the_shared_memory() {
    // A listens (role 0): waits for B to join and be ready, writes the word into the shared
    // area, rings B's doorbell, and exits 0x21 once B has gone (PEER 2).
    let a = [
        load32(reg(REG_MAGIC)),
        expect_eax(MAGIC, 11),
        load32(reg(REG_VERSION)),
        expect_eax(VERSION, 12),
        load32(reg(REG_ROLE)),
        expect_eax(ROLE_LISTENER, 13),
        wait32(reg(REG_PEER), PEER_CONNECTED),
        wait32(SHARED + 4, 1),
        // B waits for our doorbell: it cannot have gone yet (after the doorbell it may
        // have, at any moment).
        load32(reg(REG_PEER)),
        expect_eax(PEER_CONNECTED, 14),
        store32(SHARED, 0x2a),
        store32(reg(REG_DOORBELL), 1),
        wait32(reg(REG_PEER), PEER_GONE),
        exit(0x21),
    ]
    .concat();
    // B joins (role 1, PEER already 1), routes its line, says it is ready, and waits in
    // HLT: the only thing that can raise its line is A's doorbell (a peer-state change
    // would set INTERRUPT_STATUS). Its handler exits with the word A wrote.
    let handler = [
        load32(reg(REG_INTERRUPT_STATUS)),
        expect_eax(0, 24),
        load32(SHARED),
        vec![0xe6, 0xf4, HLT], // out %al, $0xf4
    ]
    .concat();
    let b = with_handler(
        |h| {
            [
                load32(reg(REG_ROLE)),
                expect_eax(ROLE_CONNECTOR, 21),
                load32(reg(REG_PEER)),
                expect_eax(PEER_CONNECTED, 22),
                load32(reg(REG_SHARED_SIZE)),
                expect_eax(SHARED_SIZE as u32, 23),
                route_interrupt(LINE, h),
                store32(SHARED + 4, 1),
                IDLE.to_vec(),
            ]
            .concat()
        },
        handler,
    );
    let img_a = write_image("chan-bell-a", &image(&a));
    let img_b = write_image("chan-bell-b", &image(&b));
    let sock = sock_in(img_a.dir());
    let child_a = start(&img_a, &sock, &["--log-level", "debug"], Stdio::null());
    wait_for(&sock);
    let child_b = start(&img_b, &sock, &["--log-level", "debug"], Stdio::null());
    let ob = child_b.wait_with_output().unwrap();
    let oa = child_a.wait_with_output().unwrap();
    assert_eq!(ob.status.code(), Some(0x2a), "B: {}", stderr(&ob));
    assert_eq!(oa.status.code(), Some(0x21), "A: {}", stderr(&oa));
    let (ea, eb) = (stderr(&oa), stderr(&ob));
    // The doorbell never reached a VMM: KVM's ioeventfd took it.
    assert!(!ea.contains("reached the VMM"), "{ea}");
    assert!(ea.contains("the other VM joined (PEER reads 1)"), "{ea}");
    assert!(ea.contains("the other VM has gone"), "{ea}");
    assert!(eb.contains("joined the other VM"), "{eb}");
    assert!(
        ea.contains("seccomp: the channel thread keeps to its list")
            && eb.contains("seccomp: the channel thread keeps to its list"),
        "{ea}\n{eb}"
    );
    // The listener's socket goes with its VM.
    assert!(!sock.exists());
}

#[test]
fn a_killed_peer_is_seen_gone_with_an_interrupt_and_a_third_vm_is_refused() {
    // A waits until B has written the shared area (it has joined), then takes interrupts:
    // one saying PEER 2 with INT_PEER_CHANGED set ends it with 0x22; any other is
    // acknowledged.
    let gone = [
        load32(reg(REG_INTERRUPT_STATUS)),
        expect_eax(INT_PEER_CHANGED, 31),
        exit(0x22),
    ]
    .concat();
    let idle =
        CODE_PADDR as u32 + (wait32(SHARED, 1).len() + route_interrupt(LINE, 0).len()) as u32;
    let handler = [
        load32(reg(REG_PEER)),
        // cmp $2, %eax; jne 1f; <gone>; 1:
        vec![0x83, 0xf8, 0x02, 0x75, gone.len() as u8],
        gone,
        store32(reg(REG_INTERRUPT_ACK), INT_PEER_CHANGED),
        resume_at(idle),
    ]
    .concat();
    let a = with_handler(
        |h| [wait32(SHARED, 1), route_interrupt(LINE, h), IDLE.to_vec()].concat(),
        handler,
    );
    // B joins, writes the shared area, prints 'x' and spins until it is killed.
    let b = [
        store32(SHARED, 1),
        mov_al(b'x'),
        mov_dx(fluke_abi::ports::COM1),
        vec![OUT_DX_AL],
        SPIN.to_vec(),
    ]
    .concat();
    let img_a = write_image("chan-kill-a", &image(&a));
    let img_b = write_image("chan-kill-b", &image(&b));
    let sock = sock_in(img_a.dir());
    let child_a = start(&img_a, &sock, &[], Stdio::null());
    wait_for(&sock);
    let mut child_b = start(&img_b, &sock, &[], Stdio::piped());
    let mut x = [0u8; 1];
    child_b.stdout.take().unwrap().read_exact(&mut x).unwrap();
    assert_eq!(&x, b"x");

    // A third VM on the same socket is refused with one line.
    let img_c = write_image("chan-kill-c", &image(&exit(0)));
    let oc = start(&img_c, &sock, &[], Stdio::null())
        .wait_with_output()
        .unwrap();
    let ec = stderr(&oc);
    assert_eq!(oc.status.code(), Some(VMM_ERROR), "{ec}");
    assert_eq!(ec.lines().count(), 1, "{ec}");
    assert!(ec.contains("the channel already joins two VMs"), "{ec}");

    child_b.kill().unwrap(); // SIGKILL
    let _ = child_b.wait();
    let oa = child_a.wait_with_output().unwrap();
    let ea = stderr(&oa);
    assert_eq!(oa.status.code(), Some(0x22), "A: {ea}");
    assert!(
        ea.contains("the other VM has gone (PEER reads 2); this one carries on"),
        "{ea}"
    );
}

#[test]
fn a_peer_that_never_comes_leaves_peer_0_until_the_timeout() {
    // 1: PEER must stay 0 (else exit 1); jmp 1b
    let mut code = [
        load32(reg(REG_ROLE)),
        expect_eax(ROLE_LISTENER, 2),
        load32(reg(REG_PEER)),
    ]
    .concat();
    let check_at = code.len() - 5;
    code.extend(expect_eax(PEER_WAITING, 1));
    let back = -((code.len() - check_at + 2) as i8);
    code.extend([0xeb, back as u8]);
    let img = write_image("chan-alone", &image(&code));
    let sock = sock_in(img.dir());
    let started = Instant::now();
    let o = start(&img, &sock, &["--timeout", "2"], Stdio::null())
        .wait_with_output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(VMM_TIMEOUT), "{err}");
    assert!(err.contains("guest did not finish within 2 s"), "{err}");
    assert!(err.contains("no other VM came during the run"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!sock.exists(), "the socket is removed at the end");
}

#[test]
fn a_stale_socket_is_replaced_and_a_path_that_is_no_socket_refused() {
    let code = [
        load32(reg(REG_ROLE)),
        expect_eax(ROLE_LISTENER, 2),
        load32(reg(REG_PEER)),
        expect_eax(PEER_WAITING, 3),
        exit(5),
    ]
    .concat();
    let img = write_image("chan-stale", &image(&code));
    let sock = sock_in(img.dir());
    // A socket whose VMM died: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let o = run(&img, &["--channel", &channel_arg(&sock)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("removing a stale socket"), "{err}");
    assert!(!sock.exists());

    let file = img.dir().join("plain");
    std::fs::write(&file, b"mine").unwrap();
    let o = run(&img, &["--channel", &channel_arg(&file)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(VMM_ERROR), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the path exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
}

/// Two VMMs meet on a stale socket (its VMM died) at once: one removes it and listens, and
/// the other must join it, not remove the live socket just put there and listen alone.
/// strace holds the first one's unlink for 1.5 s, so the second comes in between.
#[test]
fn two_vmms_replacing_a_stale_socket_at_once_still_meet() {
    let b = [store32(SHARED, 7), wait32(SHARED + 4, 1), exit(0)].concat();
    let a = [wait32(SHARED, 7), store32(SHARED + 4, 1), exit(0x21)].concat();
    let img_a = write_image("chan-stale-race-a", &image(&a));
    let img_b = write_image("chan-stale-race-b", &image(&b));
    let sock = sock_in(img_a.dir());
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // a socket no one listens on
    let mut slow = std::process::Command::new("strace");
    slow.args([
        "-f",
        "-o",
        "/dev/null",
        "-e",
        "inject=unlink,unlinkat:delay_enter=1500000",
    ])
    .arg(env!("CARGO_BIN_EXE_fluke-vmm"))
    .arg("run")
    .arg(&*img_b)
    .args(["--memory", "16", "--timeout", "20", "--channel"])
    .arg(channel_arg(&sock))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let slow = slow.spawn().expect("strace (scripts/setup.sh installs it)");
    std::thread::sleep(Duration::from_millis(500));
    let oa = start(&img_a, &sock, &["--timeout", "20"], Stdio::null())
        .wait_with_output()
        .unwrap();
    let ob = slow.wait_with_output().unwrap();
    assert_eq!(oa.status.code(), Some(0x21), "A: {}", stderr(&oa));
    assert_eq!(ob.status.code(), Some(0), "B: {}", stderr(&ob));
}

/// A joiner that is slow after it took the offer (here: strace holds its open of /dev/kvm
/// for 6 s, past the listener's 5 s for an answer) still joins: it answers as soon as it
/// has checked the offer, and builds its VM after.
#[test]
fn a_joiner_slow_to_build_its_vm_still_joins() {
    let a = [wait32(SHARED, 9), exit(0x22)].concat();
    let b = [store32(SHARED, 9), exit(0)].concat();
    let img_a = write_image("chan-slow-a", &image(&a));
    let img_b = write_image("chan-slow-b", &image(&b));
    let sock = sock_in(img_a.dir());
    let child_a = start(&img_a, &sock, &["--timeout", "30"], Stdio::null());
    wait_for(&sock);
    let ob = std::process::Command::new("strace")
        .args([
            "-f",
            "-o",
            "/dev/null",
            "-P",
            "/dev/kvm",
            "-e",
            "inject=openat:delay_enter=6000000",
        ])
        .arg(env!("CARGO_BIN_EXE_fluke-vmm"))
        .arg("run")
        .arg(&*img_b)
        .args(["--memory", "16", "--timeout", "30", "--channel"])
        .arg(channel_arg(&sock))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("strace (scripts/setup.sh installs it)");
    let oa = child_a.wait_with_output().unwrap();
    assert_eq!(ob.status.code(), Some(0), "B: {}", stderr(&ob));
    assert_eq!(oa.status.code(), Some(0x22), "A: {}", stderr(&oa));
}

#[test]
fn bad_channels_are_refused_with_one_line() {
    let img = write_image("chan-bad", &image(&exit(0)));
    let dir = img.dir();
    let ok = channel_arg(&sock_in(dir));
    let drive = dir.join("disk.img");
    std::fs::write(&drive, [0u8; 512]).unwrap();
    let mut nine: Vec<String> = (0..8)
        .flat_map(|_| ["--drive".to_string(), format!("path={}", drive.display())])
        .collect();
    nine.extend(["--channel".to_string(), ok.clone()]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--channel".into(), "".into()], "an empty option"),
        (
            vec!["--channel".into(), "sock".into()],
            "unknown option \"sock\" (expected path=SOCKET)",
        ),
        (vec!["--channel".into(), "path=".into()], "an empty path"),
        (
            vec!["--channel".into(), "path=/nonexistent-dir/c.sock".into()],
            "--channel /nonexistent-dir/c.sock: cannot listen there: No such file or directory",
        ),
        (
            vec![
                "--channel".into(),
                ok.clone(),
                "--channel".into(),
                ok.clone(),
            ],
            "given twice",
        ),
        (nine, "9 devices (--drive and --channel), at most 8 fit"),
    ];
    assert_each_refused_with_one_line(&img, &cases);
    assert!(!sock_in(dir).exists());
}

/// A channel message as the wire has it.
fn message(version: u32, kind: u32, size: u64) -> Vec<u8> {
    [
        &u32::from_le_bytes(*b"FLCH").to_le_bytes()[..],
        &version.to_le_bytes(),
        &kind.to_le_bytes(),
        &0u32.to_le_bytes(),
        &size.to_le_bytes(),
    ]
    .concat()
}

/// Runs a VMM that joins a fake listener, which answers with `bytes` and `fds`; returns
/// the VMM's output.
fn join_fake_listener(name: &str, bytes: Vec<u8>, fds: Vec<std::fs::File>) -> Output {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let img = write_image(name, &image(&exit(0)));
    let sock = sock_in(img.dir());
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        s.send_with_fds(&[&bytes[..]], &raw).unwrap();
        // Hold the connection until the VMM has judged the offer.
        let mut rest = Vec::new();
        let _ = (&s).read_to_end(&mut rest);
    });
    let o = run(&img, &["--channel", &channel_arg(&sock)]);
    server.join().unwrap();
    o
}

#[test]
fn a_peer_that_sends_garbage_another_version_or_the_wrong_descriptors_is_refused() {
    let devnull = || std::fs::File::open("/dev/null").unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<std::fs::File>, &str)> = vec![
        (
            "chan-garbage",
            b"garbage".to_vec(),
            vec![],
            "the other VM sent 7 bytes, not a 24-byte channel message",
        ),
        (
            "chan-version",
            message(99, 0, SHARED_SIZE),
            vec![devnull(), devnull(), devnull()],
            "the other VM speaks channel version 99, this fluke-vmm version 1",
        ),
        (
            "chan-size",
            message(VERSION, 0, 4096),
            vec![],
            "the other VM has a shared area of 4096 bytes",
        ),
        (
            "chan-nofds",
            message(VERSION, 0, SHARED_SIZE),
            vec![],
            "the other VM sent 0 descriptors with its offer, not 3",
        ),
        (
            "chan-wrongfds",
            message(VERSION, 0, SHARED_SIZE),
            vec![devnull(), devnull(), devnull()],
            "the other VM sent a shared-memory descriptor that is not a memfd",
        ),
    ];
    for (name, bytes, fds, says) in cases {
        let o = join_fake_listener(name, bytes, fds);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(VMM_ERROR), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(says), "{name}: want {says:?} in {err}");
    }
}

/// The joining VMM's guest starts only once the listener confirms the join (its PEER then
/// reads 1), so neither guest sees the other's stores while its own PEER says 0: a listener
/// that takes the ACK and never confirms ends the joiner's run before its guest runs.
#[test]
fn a_joiners_guest_waits_for_the_listener_to_confirm_the_join() {
    use std::os::fd::{AsRawFd, FromRawFd};
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    // SAFETY: memfd_create reads the NUL-terminated name; the new descriptor is this test's.
    let memfd = unsafe {
        let fd = libc::memfd_create(c"fake".as_ptr(), libc::MFD_ALLOW_SEALING);
        assert!(fd >= 0);
        std::fs::File::from_raw_fd(fd)
    };
    memfd.set_len(SHARED_SIZE).unwrap();
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on the descriptor just made, integer argument.
    assert_eq!(
        unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) },
        0
    );
    let bells = [
        vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
    ];
    let img = write_image(
        "chan-unconfirmed",
        &image(
            &[
                mov_al(b'x'),
                mov_dx(fluke_abi::ports::COM1),
                vec![OUT_DX_AL],
                exit(0x2a),
            ]
            .concat(),
        ),
    );
    let sock = sock_in(img.dir());
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let raw = [
            memfd.as_raw_fd(),
            bells[0].as_raw_fd(),
            bells[1].as_raw_fd(),
        ];
        s.send_with_fds(&[&message(VERSION, 0, SHARED_SIZE)[..]], &raw)
            .unwrap();
        // The ACK, and then no JOINED: the connection held until the VMM gives up.
        let mut rest = Vec::new();
        let _ = (&s).read_to_end(&mut rest);
        rest
    });
    let o = run(&img, &["--channel", &channel_arg(&sock)]);
    let heard = server.join().unwrap();
    let err = stderr(&o);
    assert_eq!(heard, message(VERSION, 1, SHARED_SIZE), "the joiner's ACK");
    assert_eq!(o.status.code(), Some(VMM_ERROR), "{err}");
    assert!(err.contains("did not confirm the join within 5 s"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        stdout(&o),
        "",
        "the guest ran before the join was confirmed"
    );
}

#[test]
fn a_vm_with_a_channel_refuses_a_snapshot_and_its_thread_keeps_to_its_seccomp_list() {
    let img = write_image("chan-snapshot", &image(&SPIN));
    let sock = sock_in(img.dir());
    let api = img.dir().join("api.sock");
    let mut child = start(
        &img,
        &sock,
        &["--api-sock", api.to_str().unwrap()],
        Stdio::null(),
    );
    wait_for(&api);
    let snap = img.dir().join("snap");
    let o = vmm()
        .arg("ctl")
        .arg("--api-sock")
        .arg(&api)
        .args(["snapshot", snap.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(VMM_ERROR), "{err}");
    assert!(
        err.contains("a VM with a channel (--channel) cannot be snapshotted"),
        "{err}"
    );
    assert!(!snap.exists());
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _ = child.kill();
    let _ = child.wait();

    let o = vmm()
        .arg("run")
        .arg(&*img)
        .args(["--memory", "16", "--timeout", "20", "--channel"])
        .arg(channel_arg(&sock_in(img.dir()).with_extension("probe")))
        .env("FLUKE_SECCOMP_PROBE", "channel")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(VMM_ERROR), "{err}");
    assert!(
        err.contains(&format!(
            "the channel thread made system call {}, outside its seccomp filter",
            libc::SYS_socket
        )),
        "{err}"
    );
}

/// Round trips of the ping-pong test.
const ROUND_TRIPS: u32 = 2000;

/// `cli; 1: mov abs32(watch), %eax; cmp %esi, %eax; je 2f; sti; hlt; cli; jmp 1b; 2:` —
/// waits in HLT (interrupts taken only there: no wake-up is lost between the check and
/// the HLT) until the u32 at `watch` equals ESI.
fn wait_for_esi(watch: u32) -> Vec<u8> {
    let mut v = vec![0xfa];
    let top = v.len();
    v.extend(load32(watch));
    v.extend([0x39, 0xf0, 0x74, 0x05, STI, HLT, 0xfa]);
    let back = -((v.len() - top + 2) as i8);
    v.extend([0xeb, back as u8]);
    v
}

/// `inc %esi; cmp $end, %esi; jne <back to the start of body>` after `body`.
fn loop_esi(body: Vec<u8>, end: u32) -> Vec<u8> {
    let mut v = body;
    v.push(0x46);
    v.extend([0x81, 0xfe]);
    v.extend_from_slice(&end.to_le_bytes());
    let back = -((v.len() + 2) as i8);
    v.extend([0x75, back as u8]);
    v
}

/// `1: mov abs32(watch), %eax; cmp %esi, %eax; jne 1b`: spins until the u32 at `watch`
/// equals ESI.
fn spin_for_esi(watch: u32) -> Vec<u8> {
    let mut v = load32(watch);
    v.extend([0x39, 0xf0, 0x75, (-9i8) as u8]);
    v
}

/// Two VMs pass a counter back and forth ROUND_TRIPS times through the shared area: with
/// `doorbells`, each side waits in HLT and is woken by the other's doorbell (its line's
/// interrupt); without, each spins on the shared word (the floor: the same loop without
/// the notification). Returns the microseconds per round trip, as A's VMM timed them
/// with its bench port.
fn ping_pong(doorbells: bool) -> (f64, String) {
    use fluke_abi::ports::{BENCH, BENCH_BEGIN, BENCH_END};
    let ring = || {
        if doorbells {
            store32(reg(REG_DOORBELL), 1)
        } else {
            Vec::new()
        }
    };
    let wait = |watch: u32| {
        if doorbells {
            wait_for_esi(watch)
        } else {
            spin_for_esi(watch)
        }
    };
    // Each handler only ends the interrupt and goes back to the check before the HLT: the
    // interrupt's work is to end the HLT.
    let prefix_a = [
        route_interrupt(LINE, 0),
        wait32(reg(REG_PEER), PEER_CONNECTED),
        wait32(SHARED + 8, 1),
        out_dx(BENCH, BENCH_BEGIN),
        vec![0xbe, 1, 0, 0, 0],
    ]
    .concat()
    .len();
    // In A's loop: after `mov %esi, shared` (6 bytes) and the doorbell.
    let wait_a = CODE_PADDR as u32 + (prefix_a + 6 + ring().len()) as u32;
    let prefix_b = [
        route_interrupt(LINE, 0),
        store32(SHARED + 8, 1),
        vec![0xbe, 1, 0, 0, 0],
    ]
    .concat()
    .len();
    let wait_b = CODE_PADDR as u32 + prefix_b as u32;
    // A: for i in 1..=N { shared[0] = i; ring; wait until shared[4] == i }, timed by the
    // VMM's bench port.
    let a = with_handler(
        |h| {
            let mut body = vec![0x89, 0x35]; // mov %esi, shared[0]
            body.extend_from_slice(&SHARED.to_le_bytes());
            body.extend(ring());
            body.extend(wait(SHARED + 4));
            [
                route_interrupt(LINE, h),
                wait32(reg(REG_PEER), PEER_CONNECTED),
                wait32(SHARED + 8, 1),
                out_dx(BENCH, BENCH_BEGIN),
                vec![0xbe, 1, 0, 0, 0], // mov $1, %esi
                loop_esi(body, ROUND_TRIPS + 1),
                out_dx(BENCH, BENCH_END),
                exit(0),
            ]
            .concat()
        },
        resume_at(wait_a),
    );
    // B: for i in 1..=N { wait until shared[0] == i; shared[4] = i; ring }
    let b = with_handler(
        |h| {
            let mut body = wait(SHARED);
            body.push(0xa3); // mov %eax, shared[4]
            body.extend_from_slice(&(SHARED + 4).to_le_bytes());
            body.extend(ring());
            [
                route_interrupt(LINE, h),
                store32(SHARED + 8, 1),
                vec![0xbe, 1, 0, 0, 0],
                loop_esi(body, ROUND_TRIPS + 1),
                exit(0),
            ]
            .concat()
        },
        resume_at(wait_b),
    );
    let img_a = write_image(&format!("chan-pingpong-a-{doorbells}"), &image(&a));
    let img_b = write_image(&format!("chan-pingpong-b-{doorbells}"), &image(&b));
    let sock = sock_in(img_a.dir());
    let stats = img_a.dir().join("stats.json");
    let child_a = start(
        &img_a,
        &sock,
        &["--stats-json", stats.to_str().unwrap()],
        Stdio::null(),
    );
    wait_for(&sock);
    let ob = start(&img_b, &sock, &[], Stdio::null())
        .wait_with_output()
        .unwrap();
    let oa = child_a.wait_with_output().unwrap();
    assert_eq!(ob.status.code(), Some(0), "B: {}", stderr(&ob));
    assert_eq!(oa.status.code(), Some(0), "A: {}", stderr(&oa));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let us = v["bench_elapsed_us"].as_f64().unwrap();
    let platform = v["platform"].as_str().unwrap_or("?").to_string();
    (us / f64::from(ROUND_TRIPS), platform)
}

#[test]
fn doorbells_ping_pong_between_two_vms() {
    let (bell, platform) = ping_pong(true);
    let (spin, _) = ping_pong(false);
    eprintln!(
        "channel ping-pong on {platform}, {ROUND_TRIPS} round trips (guest code emulated): {bell:.2} us per round trip woken by doorbells (two doorbell->interrupt hops), {spin:.2} us spinning on the shared area"
    );
    assert!(bell > 0.0 && spin > 0.0);
}

/// A process that takes the offer (the shared area and both doorbells) and then fails the
/// handshake still holds that memory, so the listener closes the channel: its guest sees
/// PEER 2, and a real VM that comes after is refused (it would share its memory with that
/// process too).
#[test]
fn a_joiner_that_takes_the_offer_and_answers_garbage_closes_the_channel() {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    // A waits until PEER reads 2, prints "G" and waits on (until its timeout).
    let a = [
        wait32(reg(REG_PEER), PEER_GONE),
        mov_al(b'G'),
        mov_dx(fluke_abi::ports::COM1),
        vec![OUT_DX_AL],
        wait32(SHARED, 0x5a5a),
    ]
    .concat();
    let b = exit(0);
    let img_a = write_image("chan-joiner-a", &image(&a));
    let img_b = write_image("chan-joiner-b", &image(&b));
    let sock = sock_in(img_a.dir());
    let child_a = start(&img_a, &sock, &["--timeout", "6"], Stdio::piped());
    wait_for(&sock);
    // A fake joiner: takes the offer, answers garbage and goes.
    let fake = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut buf = [0u8; 64];
    let mut fds = [-1; 3];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at `buf`, alive across the call; the descriptors received
    // are closed right after.
    let (len, nfds) = unsafe { fake.recv_with_fds(&mut iov, &mut fds) }.unwrap();
    assert_eq!(
        (len, nfds),
        (24, 3),
        "the offer: a message and three descriptors"
    );
    for fd in fds {
        // SAFETY: received above, owned by this test alone.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
    std::io::Write::write_all(&mut &fake, b"junk").unwrap();
    drop(fake);
    // A real VM that comes now is refused: the channel is closed.
    let ob = start(&img_b, &sock, &[], Stdio::null())
        .wait_with_output()
        .unwrap();
    let eb = stderr(&ob);
    assert_eq!(ob.status.code(), Some(VMM_ERROR), "B: {eb}");
    assert!(eb.contains("the channel already joins two VMs"), "B: {eb}");
    let oa = child_a.wait_with_output().unwrap();
    let ea = stderr(&oa);
    assert_eq!(oa.status.code(), Some(VMM_TIMEOUT), "A: {ea}");
    assert_eq!(stdout(&oa), "G", "A's guest saw PEER 2: {ea}");
    assert!(
        ea.contains("a process that connected took the channel's memory and doorbells and then sent 4 bytes, not a 24-byte channel message; the channel admits no other VM (PEER reads 2)"),
        "{ea}"
    );
}
