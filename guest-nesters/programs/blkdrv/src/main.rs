//! `blkdrv`: a user-level driver for a virtio-blk device on the virtio-mmio transport
//! (virtio 1.2 §4.2, §5.2), serving the block protocol (`fluke_abi::blk`) over IPC.
//!
//! Capabilities, by name: 0 the device's device-memory object, 1 its interrupt, 2 the port
//! set its clients' ports belong to (whoever started it made those ports and handed them
//! out). It maps the window as two parts, the register page uncached and the DMA area
//! after it cached, puts its one virtqueue and its buffers in the DMA area (the only memory
//! the device reaches: `fluke_abi::devices`), binds the interrupt to a port of a set of its
//! own, and then serves one request at a time: a client's call is checked
//! (`fluke_abi::blk::Request::decode`, nothing malformed reaches the device), handed to
//! the device, the interrupt awaited on its own set (the client's reply stays owed
//! meanwhile), and the reply sent with the next wait.

#![no_std]
#![no_main]

mod virtio;

use fluke_abi::blk::{Request, Status, FLAG_READ_ONLY, SECTOR};
use fluke_abi::syscall::ipc::MAX_DATA;
use fluke_rt::{println, sys};
use virtio::{Device, Kind};

const DEVMEM: u64 = 0;
const IRQ: u64 = 1;
const CLIENTS: u64 = 2;

#[no_mangle]
fn fluke_main(_args: fluke_rt::Args) -> i32 {
    let mut dev = match Device::open(DEVMEM) {
        Ok(d) => d,
        Err(why) => {
            println!("blkdrv: no device: {why}");
            return 1;
        }
    };
    let irq_set = match sys::port_set_create()
        .and_then(|set| sys::port_create(set, 1).map(|port| (set, port)))
        .and_then(|(set, port)| sys::irq_bind(IRQ, port).map(|_| set))
    {
        Ok(set) => set,
        Err(e) => {
            println!("blkdrv: cannot bind the interrupt: {e:?}");
            return 1;
        }
    };
    println!(
        "blkdrv: drive of {} sectors{} ready",
        dev.sectors,
        if dev.read_only { ", read-only" } else { "" }
    );
    // A request's data arrives in `buf`; a read's reply data goes out of `out` (the reply
    // is sent before the next request is received, but the two are separate borrows).
    let mut buf = [0u8; MAX_DATA];
    let mut out = [0u8; MAX_DATA];
    let mut reply = [Status::Ok as u64, 0, 0, 0];
    let mut reply_len = 0usize;
    loop {
        let got =
            sys::ipc_reply_wait_data(CLIENTS, reply, sys::NO_CAP, &out[..reply_len], &mut buf);
        reply_len = 0;
        let m = match got {
            Ok(m) => m,
            Err(e) => {
                // The set is gone (whoever started us destroyed it): nothing left to serve.
                println!("blkdrv: clients' set: {e:?}: exiting");
                return 0;
            }
        };
        // What arrived (`data_got`); a client that sent more than fits is refused, never
        // served with part of its data.
        let data_len = m.data_got.min(buf.len() as u64) as usize;
        let decoded = match m.data_sent == m.data_got {
            true => Request::decode(m.words, data_len, dev.sectors, dev.read_only),
            false => Err(Status::BadRequest),
        };
        let status = match decoded {
            Err(s) => Err(s),
            Ok(Request::Info) => {
                reply = [
                    Status::Ok as u64,
                    dev.sectors,
                    if dev.read_only { FLAG_READ_ONLY } else { 0 },
                    0,
                ];
                continue;
            }
            Ok(Request::Read { sector, count }) => {
                let n = count as usize * SECTOR;
                let r = dev.transfer(Kind::Read, sector, &mut out[..n], irq_set);
                if r.is_ok() {
                    reply_len = n;
                }
                r
            }
            Ok(Request::Write { sector, count }) => {
                let n = count as usize * SECTOR;
                dev.transfer(Kind::Write, sector, &mut buf[..n], irq_set)
            }
            Ok(Request::Flush) => dev.transfer(Kind::Flush, 0, &mut [], irq_set),
        };
        reply = [status.err().unwrap_or(Status::Ok) as u64, 0, 0, 0];
    }
}
