//! The VM-to-VM channel the microkernel way (issue 15): two fluke-vmm processes meet on a
//! socket (`--channel`), and in each guest a user program, `chandrv`, drives the channel
//! through its device-memory and interrupt capabilities and serves it as ordered messages
//! over IPC to `chat`. Real guests on kvm_pvm, two VMMs at once.

mod support;

use std::ffi::OsString;
use support::api::{LiveVm, TempDir};
use support::*;

fn vm_on(dir: &TempDir, tag: &str, cmdline: &str) -> LiveVm {
    let sock = dir.0.join("chan.sock");
    let args: Vec<OsString> = vec![
        "run".into(),
        default_image().into_os_string(),
        "--channel".into(),
        format!("path={}", sock.display()).into(),
    ];
    LiveVm::start_with(tag, &args, cmdline, &[])
}

/// 10,000 messages of 8 to 263 bytes, each checked to be the next one and whole, then an
/// answer the other way.
#[test]
fn two_vms_exchange_10000_messages_in_order_with_none_lost() {
    let dir = TempDir::new("chan-10k");
    let receiver = vm_on(&dir, "chan-10k-b", "fluke.init=chat,recv,10000");
    let sender = vm_on(&dir, "chan-10k-a", "fluke.init=chat,send,10000");
    let (a_status, a) = sender.finish();
    let (b_status, b) = receiver.finish();
    assert_eq!(b_status, 0, "receiver:\n{b}");
    assert_eq!(a_status, 0, "sender:\n{a}");
    assert!(b.contains("chat: received 10000 in order, 0 bad"), "{b}");
    assert!(a.contains("chat: sent 10000"), "{a}");
    assert!(
        a.contains("chat: the other side says Ok(\"all received\")"),
        "{a}"
    );
    // The two sides had the two roles (the first VMM to come listened, role 0).
    let role = |console: &str| console.contains("chandrv: channel ready, role 1");
    assert_ne!(
        role(&a),
        role(&b),
        "both sides had one role:
{a}
{b}"
    );
}

/// The sending VM is killed -9 mid-stream: the other takes every message that reached the
/// ring, in order, then hears that the other VM is gone, and its guest exits cleanly.
#[test]
fn a_vm_killed_mid_stream_is_reported_gone_and_the_other_exits_cleanly() {
    let dir = TempDir::new("chan-kill");
    let receiver = vm_on(&dir, "chan-kill-b", "fluke.init=chat,until-gone");
    let sender = vm_on(&dir, "chan-kill-a", "fluke.init=chat,send,100000000");
    receiver.wait_for("chat: 2000 received");
    let a = sender.kill();
    assert!(
        !a.contains("chat: sent"),
        "the sender was still sending:\n{a}"
    );
    let (status, b) = receiver.finish();
    assert_eq!(status, 0, "{b}");
    let line = b
        .lines()
        .find(|l| l.starts_with("chat: the other VM is gone after "))
        .unwrap_or_else(|| panic!("no report of the peer gone:\n{b}"));
    assert!(line.ends_with(" messages, 0 bad"), "{line}");
    let got: u64 = line
        .trim_start_matches("chat: the other VM is gone after ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(got >= 2000, "{line}");
    assert!(b.contains("fluke: init exited with status 0"), "{b}");
}

/// A VM whose other end never comes: its driver reports the peer waiting, the run ends at
/// `--timeout` with the timeout's status, nothing hangs.
#[test]
fn a_peer_that_never_comes_leaves_the_guest_waiting_until_the_timeout() {
    let dir = TempDir::new("chan-alone");
    let sock = dir.0.join("chan.sock");
    let run = vmm(
        &default_image(),
        &[
            "--timeout",
            "3",
            "--channel",
            &format!("path={}", sock.display()),
            "--cmdline",
            "fluke.init=chat,recv,1",
        ],
    );
    assert_eq!(run.status, fluke_abi::status::VMM_TIMEOUT, "{run:?}");
    run.assert_console("chandrv: channel ready, role 0, peer 0");
    run.assert_console("chat: role 0, peer 0");
}

/// Both clients are stopped and resumed every half millisecond, hundreds of times in the
/// middle of their calls (a call restarts whole: the driver may already have moved its
/// message), and still no message is lost or doubled: each call names its message.
#[test]
fn calls_restarted_by_stops_lose_and_double_no_message() {
    let dir = TempDir::new("chan-stops");
    let receiver = vm_on(&dir, "chan-stops-b", "fluke.init=chat,stopped,recv,3000");
    let sender = vm_on(&dir, "chan-stops-a", "fluke.init=chat,stopped,send,3000");
    let (a_status, a) = sender.finish();
    let (b_status, b) = receiver.finish();
    assert_eq!((a_status, b_status), (0, 0), "sender:\n{a}\nreceiver:\n{b}");
    assert!(b.contains("chat: received 3000 in order, 0 bad"), "{b}");
    for console in [&a, &b] {
        let stops: u64 = console
            .lines()
            .find_map(|l| l.strip_prefix("chat: stopped the client "))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of stops:\n{console}"));
        assert!(
            stops >= 20,
            "too few stops to mean anything: {stops}\n{console}"
        );
    }
}
