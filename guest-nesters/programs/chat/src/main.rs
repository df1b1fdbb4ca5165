//! `chat MODE ...`: starts `chandrv` on the channel device init was given (device
//! `DEVICE`, default 0: its device-memory and interrupt capabilities), and exchanges messages
//! with the other VM through the driver's port (`fluke_rt::chan`). Run as init
//! (`fluke.init=chat,MODE,...`), one VM on each end of `--channel`.
//!
//! - `send N`: sends N messages (message `i`: `i` as 8 bytes, then `8 + i % 256` bytes of a
//!   pattern of `i`), then waits for the other side's one-message answer;
//! - `recv N`: receives N messages, checks each is the next in order and whole, answers;
//! - `until-gone`: receives messages (checked as `recv` does) until the other VM is gone;
//! - `pong`: echoes every message back until the other VM is gone;
//! - `ping N`: N round trips of a 64-byte message with a `pong` side: `BENCH
//!   vmm.channel_roundtrip`;
//! - `stopped MODE N`: `chat MODE N` as a child client whose thread is stopped and resumed
//!   every half millisecond (its calls restart whole: they must be idempotent).

#![no_std]
#![no_main]

use fluke_abi::devices::{init_devmem_cap, init_irq_cap};
use fluke_rt::chan::{ChanError, Client, Status, MAX_MESSAGE};
use fluke_rt::{println, sys};

fn start_driver(device: usize) -> Result<Client, ChanError> {
    let ipc = ChanError::Ipc;
    let set = sys::port_set_create().map_err(ipc)?;
    let port = sys::port_create(set, 1).map_err(ipc)?;
    sys::spawn_with_caps(
        "chandrv",
        &[],
        &[init_devmem_cap(device), init_irq_cap(device), set],
    )
    .map_err(ipc)?;
    Client::connect(port)
}

/// Message `i`: its number, then a pattern of it.
fn message(i: u64, buf: &mut [u8; MAX_MESSAGE]) -> usize {
    let len = 8 + (i % 256) as usize;
    buf[..8].copy_from_slice(&i.to_le_bytes());
    for (j, b) in buf[8..len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8);
    }
    len
}

/// Checks that `got` is message `i`, whole.
fn is_message(i: u64, got: &[u8]) -> bool {
    let mut want = [0u8; MAX_MESSAGE];
    let len = message(i, &mut want);
    got == &want[..len]
}

/// `stopped MODE N`: runs `chat MODE N` as a child client of the driver we start, and
/// stops and resumes its thread every half millisecond until it ends: each stop while it
/// waits in a call makes it make that call again (calls restart whole), so this checks the
/// calls are idempotent (no message lost or doubled).
fn stopped(mode: &str, n: u64) -> i32 {
    let set = sys::port_set_create();
    let port = set.and_then(|s| sys::port_create(s, 1));
    let (Ok(set), Ok(port)) = (set, port) else {
        return 1;
    };
    if sys::spawn_with_caps("chandrv", &[], &[init_devmem_cap(0), init_irq_cap(0), set]).is_err() {
        return 1;
    }
    let mut num = fluke_rt::NumBuf::new();
    let Ok(child) = sys::spawn_child("chat", &[mode, num.format(n), "port"], &[port]) else {
        println!("chat: cannot start the client");
        return 1;
    };
    let mut stops = 0u64;
    let status = loop {
        sys::sleep_ns(500_000);
        if sys::thread_stop(child.thread).is_err() {
            break sys::wait(child.pid);
        }
        stops += 1;
        if sys::thread_resume(child.thread).is_err() {
            break sys::wait(child.pid);
        }
    };
    println!("chat: stopped the client {stops} times; it ended {status:?}");
    match status {
        Ok(0) => 0,
        _ => 1,
    }
}

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let mode = args.get(0).unwrap_or("");
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    if mode == "stopped" {
        let n = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
        return stopped(args.get(1).unwrap_or(""), n);
    }
    // `port` as the third argument: the driver's port is our name 0 (a client started by
    // `stopped`); else the device number whose driver we start.
    let third = args.get(2).unwrap_or("0");
    let started = match third {
        "port" => Client::connect(0),
        d => start_driver(d.parse().unwrap_or(0)),
    };
    let ch = match started {
        Ok(c) => c,
        Err(e) => {
            println!("chat: cannot start the driver: {e:?}");
            return 1;
        }
    };
    match ch.info() {
        Ok((role, peer)) => println!("chat: role {role}, peer {peer}"),
        Err(e) => {
            println!("chat: INFO: {e:?}");
            return 1;
        }
    }
    let mut buf = [0u8; MAX_MESSAGE];
    match mode {
        "send" => {
            for i in 0..n {
                let len = message(i, &mut buf);
                if let Err(e) = ch.send(&buf[..len]) {
                    println!("chat: send {i}: {e:?}");
                    return 1;
                }
            }
            println!("chat: sent {n}");
            match ch.recv(&mut buf) {
                Ok(len) => println!(
                    "chat: the other side says {:?}",
                    core::str::from_utf8(&buf[..len])
                ),
                Err(e) => {
                    println!("chat: no answer: {e:?}");
                    return 1;
                }
            }
            0
        }
        "recv" | "until-gone" => {
            let (mut got, mut bad) = (0u64, 0u64);
            let gone = loop {
                if mode == "recv" && got == n {
                    break None;
                }
                match ch.recv(&mut buf) {
                    Ok(len) => {
                        if !is_message(got, &buf[..len]) {
                            if bad < 4 {
                                println!("chat: message {got} is not the one sent");
                            }
                            bad += 1;
                        }
                        got += 1;
                        if got % 1000 == 0 {
                            println!("chat: {got} received");
                        }
                    }
                    Err(e) => break Some(e),
                }
            };
            match gone {
                None => {
                    println!("chat: received {got} in order, {bad} bad");
                    let _ = ch.send(b"all received");
                    i32::from(bad != 0)
                }
                Some(ChanError::Status(Status::PeerGone)) if mode == "until-gone" => {
                    println!("chat: the other VM is gone after {got} messages, {bad} bad");
                    i32::from(bad != 0)
                }
                Some(e) => {
                    println!("chat: after {got} messages: {e:?}");
                    1
                }
            }
        }
        "pong" => {
            let mut echoed = 0u64;
            while let Ok(len) = ch.recv(&mut buf) {
                if ch.send(&buf[..len]).is_err() {
                    break;
                }
                echoed += 1;
            }
            println!("chat: echoed {echoed}");
            0
        }
        "ping" => {
            let khz = sys::bench(fluke_abi::syscall::BenchOp::TscKhz, 0).unwrap_or(1_000_000);
            let mut msg = [0u8; 64];
            let start = sys::rdtsc();
            for i in 0..n {
                msg[..8].copy_from_slice(&i.to_le_bytes());
                let r = ch.send(&msg).and_then(|_| ch.recv(&mut buf));
                if r != Ok(64) || buf[..8] != i.to_le_bytes() {
                    println!("chat: round trip {i}: {r:?}");
                    return 1;
                }
            }
            let ns = (sys::rdtsc() - start) as f64 * 1_000_000.0 / khz as f64 / n as f64;
            println!("BENCH vmm.channel_roundtrip {ns:.1} ns {n}");
            0
        }
        _ => {
            println!("chat: unknown mode {mode:?}");
            1
        }
    }
}
