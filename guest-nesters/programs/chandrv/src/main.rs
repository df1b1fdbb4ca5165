//! `chandrv`: a user-level driver for fluke-vmm's VM-to-VM channel (`fluke_abi::channel`),
//! serving it as a message channel over IPC (`fluke_abi::chan`).
//!
//! Capabilities, by name: 0 the channel's device-memory object, 1 its interrupt, 2 the
//! port set its clients' ports belong to. It maps the register page uncached and the shared
//! area cached (two parts of the window), binds the interrupt to a port of a set of its own,
//! and serves one request at a time: a SEND puts the message in this side's ring (waiting
//! while it is full), a RECV takes the next one from the other side's (waiting while it is
//! empty); a wait is for the channel's interrupt (the other VM's doorbell, or the VMM's
//! news that the other VM came or went), with the client's reply owed meanwhile.

#![no_std]
#![no_main]

use core::sync::atomic::{fence, Ordering};
use fluke_abi::chan::{self, Status, MAX_MESSAGE, SLOTS};
use fluke_abi::channel as reg;
use fluke_abi::syscall::objstate::DEVICE_MEMORY;
use fluke_abi::syscall::{DEVMEM_CACHED, DEVMEM_WRITE, SELF_SPACE};
use fluke_rt::{println, sys};

const DEVMEM: u64 = 0;
const IRQ: u64 = 1;
const CLIENTS: u64 = 2;

/// Where the register page and the shared area are mapped in this space.
const REGS_VA: u64 = 0x6000_0000;
const SHARED_VA: u64 = 0x6010_0000;

fn reg_read(offset: u64) -> u32 {
    // SAFETY: REGS_VA..+4096 is this space's uncached mapping of the channel's register page
    // (mapped in `open` before any access, never unmapped by this program); a read has no
    // effect but the VMM's answer, and no reference to the page exists.
    unsafe { core::ptr::read_volatile((REGS_VA + offset) as *const u32) }
}

fn reg_write(offset: u64, value: u32) {
    // SAFETY: as `reg_read`.
    unsafe { core::ptr::write_volatile((REGS_VA + offset) as *mut u32, value) }
}

/// Volatile access to the shared area at `offset` (below `SHARED_SIZE`, which `open` checked
/// is mapped): the other VM writes it concurrently, so no reference to it is ever made.
fn shared_read<T>(offset: u64) -> T {
    debug_assert!(offset + core::mem::size_of::<T>() as u64 <= reg::SHARED_SIZE);
    // SAFETY: inside the shared area's cached mapping, aligned for T at every offset used
    // (the ring layout's fields are at multiples of their size).
    unsafe { core::ptr::read_volatile((SHARED_VA + offset) as *const T) }
}

fn shared_write<T>(offset: u64, value: T) {
    debug_assert!(offset + core::mem::size_of::<T>() as u64 <= reg::SHARED_SIZE);
    // SAFETY: as `shared_read`; the mapping is writable.
    unsafe { core::ptr::write_volatile((SHARED_VA + offset) as *mut T, value) }
}

/// The two rings of this side: `tx` (this side produces) and `rx` (this side consumes).
struct Channel {
    tx: u64,
    rx: u64,
    irq_set: u64,
    /// `REG_PEER` as last read: at the start, and at each interrupt that says it changed.
    peer: u32,
    /// This driver has put a message in the ring (so `head - 1` is one it sent).
    sent_any: bool,
}

impl Channel {
    fn open() -> Result<Channel, &'static str> {
        let state = sys::obj_get_state(DEVMEM).map_err(|_| "no device-memory capability")?;
        if state[0] != DEVICE_MEMORY || state[2] < reg::SHARED_OFFSET + reg::SHARED_SIZE {
            return Err("capability 0 is not a channel's window");
        }
        sys::devmem_map_part(DEVMEM, SELF_SPACE, REGS_VA, DEVMEM_WRITE, 0, reg::REGS_SIZE)
            .map_err(|_| "cannot map the registers")?;
        sys::devmem_map_part(
            DEVMEM,
            SELF_SPACE,
            SHARED_VA,
            DEVMEM_WRITE | DEVMEM_CACHED,
            reg::SHARED_OFFSET,
            reg::SHARED_SIZE,
        )
        .map_err(|_| "cannot map the shared area")?;
        if reg_read(reg::REG_MAGIC) != reg::MAGIC || reg_read(reg::REG_VERSION) != reg::VERSION {
            return Err("not a channel of this version");
        }
        if u64::from(reg_read(reg::REG_SHARED_SIZE)) != reg::SHARED_SIZE {
            return Err("the shared area is not the size this driver knows");
        }
        let role = reg_read(reg::REG_ROLE) & 1;
        let irq_set = sys::port_set_create()
            .and_then(|set| sys::port_create(set, 1).map(|port| (set, port)))
            .and_then(|(set, port)| sys::irq_bind(IRQ, port).map(|_| set))
            .map_err(|_| "cannot bind the interrupt")?;
        Ok(Channel {
            tx: chan::ring(role),
            rx: chan::ring(1 - role),
            irq_set,
            peer: reg_read(reg::REG_PEER),
            sent_any: false,
        })
    }

    /// Waits for the channel's next interrupt and acknowledges it: the other VM's doorbell,
    /// or the VMM's news that the other VM came or went. The status register is read after
    /// `irq_ack` (an edge that comes while the line is masked is not sent again: news that
    /// comes before the read is seen in it, news after it raises the line anew), and only
    /// there, so a message costs no register read beyond its interrupt's. The caller looks
    /// at its ring again after each.
    fn await_interrupt(&mut self) -> Result<(), Status> {
        sys::await_interrupt(self.irq_set, IRQ).map_err(|_| Status::DeviceGone)?;
        let pending = reg_read(reg::REG_INTERRUPT_STATUS);
        if pending & reg::INT_PEER_CHANGED != 0 {
            reg_write(reg::REG_INTERRUPT_ACK, pending);
            self.peer = reg_read(reg::REG_PEER);
        }
        Ok(())
    }

    /// The number of the next message this side puts in its ring (its `head`).
    fn next_send(&self) -> u32 {
        shared_read(self.tx + chan::HEAD)
    }

    /// The number of the next message this side takes from the other's ring (its `tail`).
    fn next_recv(&self) -> u32 {
        shared_read(self.rx + chan::TAIL)
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), Status> {
        if msg.is_empty() || msg.len() > MAX_MESSAGE {
            return Err(Status::BadRequest);
        }
        let head = self.next_send();
        // Room: wait while the ring is full (the consumer rings when it frees a slot of a
        // full ring).
        loop {
            if self.peer == reg::PEER_GONE {
                return Err(Status::PeerGone);
            }
            let tail: u32 = shared_read(self.tx + chan::TAIL);
            if head.wrapping_sub(tail) < SLOTS {
                break;
            }
            self.await_interrupt()?;
        }
        let slot = self.tx + chan::slot(head);
        shared_write::<u32>(slot, msg.len() as u32);
        for (i, b) in msg.iter().enumerate() {
            shared_write::<u8>(slot + 8 + i as u64, *b);
        }
        fence(Ordering::SeqCst);
        shared_write::<u32>(self.tx + chan::HEAD, head.wrapping_add(1));
        self.sent_any = true;
        // Store head, then load tail (a full fence between: the consumer does the mirror
        // image), so one of the two sides always sees the other's update.
        fence(Ordering::SeqCst);
        let tail: u32 = shared_read(self.tx + chan::TAIL);
        if tail == head {
            reg_write(reg::REG_DOORBELL, 1); // the ring was empty: the consumer may wait
        }
        Ok(())
    }

    /// The next message into `buf`: its length.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Status> {
        let tail = self.next_recv();
        loop {
            let head: u32 = shared_read(self.rx + chan::HEAD);
            if head != tail {
                break;
            }
            // Empty. Messages written before the peer went are still taken above.
            if self.peer == reg::PEER_GONE {
                fence(Ordering::SeqCst);
                if shared_read::<u32>(self.rx + chan::HEAD) == tail {
                    return Err(Status::PeerGone);
                }
                continue;
            }
            self.await_interrupt()?;
        }
        fence(Ordering::SeqCst);
        let slot = self.rx + chan::slot(tail);
        let len = (shared_read::<u32>(slot) as usize)
            .min(MAX_MESSAGE)
            .min(buf.len());
        for (i, b) in buf[..len].iter_mut().enumerate() {
            *b = shared_read::<u8>(slot + 8 + i as u64);
        }
        fence(Ordering::SeqCst);
        shared_write::<u32>(self.rx + chan::TAIL, tail.wrapping_add(1));
        fence(Ordering::SeqCst);
        let head: u32 = shared_read(self.rx + chan::HEAD);
        if head.wrapping_sub(tail) == SLOTS {
            reg_write(reg::REG_DOORBELL, 1); // the ring was full: the producer may wait
        }
        Ok(len)
    }
}

#[no_mangle]
fn fluke_main(_args: fluke_rt::Args) -> i32 {
    let mut ch = match Channel::open() {
        Ok(c) => c,
        Err(why) => {
            println!("chandrv: no channel: {why}");
            return 1;
        }
    };
    println!(
        "chandrv: channel ready, role {}, peer {}",
        reg_read(reg::REG_ROLE),
        ch.peer
    );
    let mut buf = [0u8; MAX_MESSAGE];
    let mut out = [0u8; MAX_MESSAGE];
    let mut reply = [Status::Ok as u64, 0, 0, 0];
    let mut reply_len = 0usize;
    // The length of the last message taken (still in `out`), for a RECV served again.
    let mut last_len = 0usize;
    loop {
        let got =
            sys::ipc_reply_wait_data(CLIENTS, reply, sys::NO_CAP, &out[..reply_len], &mut buf);
        reply_len = 0;
        let m = match got {
            Ok(m) => m,
            Err(e) => {
                println!("chandrv: clients' set: {e:?}: exiting");
                return 0;
            }
        };
        let data_len = m.data_got.min(buf.len() as u64) as usize;
        if m.data_sent != m.data_got {
            // More than one message holds: refused, never sent in part.
            reply = [Status::BadRequest as u64, 0, 0, 0];
            continue;
        }
        let result = match m.words[0] {
            chan::INFO if data_len == 0 => {
                ch.peer = reg_read(reg::REG_PEER);
                reply = [
                    Status::Ok as u64,
                    u64::from(reg_read(reg::REG_ROLE)),
                    u64::from(ch.peer),
                    u64::from(ch.next_send()) | u64::from(ch.next_recv()) << 32,
                ];
                continue;
            }
            // A call restarted after it was served names the message it already moved:
            // answered again, the ring untouched (`fluke_abi::chan`, numbers).
            chan::SEND => {
                let (n, head) = (m.words[1] as u32, ch.next_send());
                if n == head {
                    ch.send(&buf[..data_len]).map(|_| 0)
                } else if n.wrapping_add(1) == head && ch.sent_any {
                    Ok(0)
                } else {
                    Err(Status::BadRequest)
                }
            }
            chan::RECV if data_len == 0 => {
                let (n, tail) = (m.words[1] as u32, ch.next_recv());
                if n == tail {
                    ch.recv(&mut out).inspect(|&len| {
                        last_len = len;
                        reply_len = len;
                    })
                } else if n.wrapping_add(1) == tail && last_len != 0 {
                    reply_len = last_len; // `out` still holds it: only RECV writes there
                    Ok(last_len)
                } else {
                    Err(Status::BadRequest)
                }
            }
            _ => Err(Status::BadRequest),
        };
        reply = match result {
            Ok(n) => [Status::Ok as u64, n as u64, 0, 0],
            Err(s) => [s as u64, 0, 0, 0],
        };
    }
}
