//! The virtio-blk device as this driver sees it: the virtio-mmio registers (version 2) in an
//! uncached mapping of the window's first page, one split virtqueue and the request's
//! buffers in a cached mapping of the DMA area after it.
//!
//! All access to both mappings is by volatile reads and writes through raw pointers, at
//! fixed addresses of this space that `Device::open` maps and nothing else in this program
//! uses: no Rust reference to device memory is ever made, since the device changes it
//! behind the compiler's back. The two mappings are separate pages of the window, each with
//! its one memory type (the kernel refuses a page mapped both ways).

use core::sync::atomic::{fence, Ordering};
use fluke_abi::blk::{Status, SECTOR};
use fluke_abi::devices::VIRTIO_DMA_OFFSET;
use fluke_abi::syscall::objstate::DEVICE_MEMORY;
use fluke_abi::syscall::{DEVMEM_CACHED, DEVMEM_WRITE, SELF_SPACE};
use fluke_rt::sys;

/// Where the register page and the DMA area are mapped in this space.
const REGS_VA: u64 = 0x6000_0000;
const DMA_VA: u64 = 0x6010_0000;

// virtio-mmio registers (virtio 1.2 §4.2.2).
const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_CAPACITY: u64 = 0x100;

/// InterruptStatus: the configuration changed (a device that needs a reset says so).
const INT_CONFIG: u32 = 2;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_NEEDS_RESET: u32 = 64;
const S_FAILED: u32 = 128;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_VERSION_1: u64 = 1 << 32;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;

const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;

/// The queue's size: one request (three descriptors) is in flight at a time.
const QUEUE_SIZE: u16 = 8;

// The DMA area's layout (offsets from its start).
const DESC: u64 = 0x0000;
const AVAIL: u64 = 0x0100;
const USED: u64 = 0x0200;
const HEADER: u64 = 0x1000;
const STATUS_BYTE: u64 = 0x1010;
const DATA: u64 = 0x2000;
/// The DMA area this driver needs.
const DMA_NEEDED: u64 = DATA + fluke_abi::syscall::ipc::MAX_DATA as u64;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
}

pub struct Device {
    /// The DMA area's guest-physical address (what the device is told).
    dma_phys: u64,
    queue_size: u16,
    /// The next avail.idx to publish, and the used.idx a completed request leaves.
    avail_idx: u16,
    pub sectors: u64,
    pub read_only: bool,
    /// VIRTIO_BLK_F_FLUSH was negotiated (without it the device has no cache to flush).
    flush: bool,
    gone: bool,
}

fn reg_read(offset: u64) -> u32 {
    // SAFETY: REGS_VA..+4096 is this space's uncached mapping of the device's register
    // page (made in `open` before any access, never unmapped by this program); a register
    // read has no effect beyond the device's, and no reference to it exists.
    unsafe { core::ptr::read_volatile((REGS_VA + offset) as *const u32) }
}

fn reg_write(offset: u64, value: u32) {
    // SAFETY: as `reg_read`.
    unsafe { core::ptr::write_volatile((REGS_VA + offset) as *mut u32, value) }
}

/// Volatile access to the DMA area at `offset` (below `DMA_NEEDED`, checked mapped in
/// `open`; every caller passes a constant layout offset plus an index bounded by
/// `QUEUE_SIZE` or the data buffer's size).
fn dma_ptr<T>(offset: u64) -> *mut T {
    debug_assert!(offset + core::mem::size_of::<T>() as u64 <= DMA_NEEDED);
    (DMA_VA + offset) as *mut T
}

fn dma_write<T>(offset: u64, value: T) {
    // SAFETY: `dma_ptr`'s bounds; the area is this space's cached, writable mapping of the
    // device's DMA area, aligned for T at every layout offset used, and reached only through
    // raw pointers (the device writes it concurrently).
    unsafe { core::ptr::write_volatile(dma_ptr::<T>(offset), value) }
}

fn dma_read<T>(offset: u64) -> T {
    // SAFETY: as `dma_write`.
    unsafe { core::ptr::read_volatile(dma_ptr::<T>(offset)) }
}

impl Device {
    /// Maps the device's window, checks it is a virtio-blk device and sets it up (reset,
    /// features, queue 0 in the DMA area, DRIVER_OK).
    pub fn open(devmem: u64) -> Result<Device, &'static str> {
        let state = sys::obj_get_state(devmem).map_err(|_| "no device-memory capability")?;
        if state[0] != DEVICE_MEMORY {
            return Err("capability 0 is not device memory");
        }
        let (base, size) = (state[1], state[2]);
        if size < VIRTIO_DMA_OFFSET + DMA_NEEDED {
            return Err("the window has no DMA area large enough");
        }
        sys::devmem_map_part(
            devmem,
            SELF_SPACE,
            REGS_VA,
            DEVMEM_WRITE,
            0,
            VIRTIO_DMA_OFFSET,
        )
        .map_err(|_| "cannot map the registers")?;
        sys::devmem_map_part(
            devmem,
            SELF_SPACE,
            DMA_VA,
            DEVMEM_WRITE | DEVMEM_CACHED,
            VIRTIO_DMA_OFFSET,
            0,
        )
        .map_err(|_| "cannot map the DMA area")?;
        if reg_read(MAGIC) != 0x7472_6976 || reg_read(VERSION) != 2 {
            return Err("not a virtio-mmio version 2 device");
        }
        if reg_read(DEVICE_ID) != 2 {
            return Err("not a block device");
        }
        // Reset, then ACKNOWLEDGE | DRIVER (virtio 1.2 §3.1.1).
        reg_write(STATUS, 0);
        if reg_read(STATUS) != 0 {
            return Err("the device does not reset");
        }
        reg_write(STATUS, S_ACKNOWLEDGE);
        reg_write(STATUS, S_ACKNOWLEDGE | S_DRIVER);
        reg_write(DEVICE_FEATURES_SEL, 0);
        let mut offered = u64::from(reg_read(DEVICE_FEATURES));
        reg_write(DEVICE_FEATURES_SEL, 1);
        offered |= u64::from(reg_read(DEVICE_FEATURES)) << 32;
        if offered & F_VERSION_1 == 0 {
            return fail("the device does not offer VIRTIO_F_VERSION_1");
        }
        let wanted = offered & (F_VERSION_1 | F_FLUSH | F_RO);
        reg_write(DRIVER_FEATURES_SEL, 0);
        reg_write(DRIVER_FEATURES, wanted as u32);
        reg_write(DRIVER_FEATURES_SEL, 1);
        reg_write(DRIVER_FEATURES, (wanted >> 32) as u32);
        reg_write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if reg_read(STATUS) & S_FEATURES_OK == 0 {
            return fail("the device refused the features");
        }
        reg_write(QUEUE_SEL, 0);
        let max = reg_read(QUEUE_NUM_MAX);
        if max == 0 {
            return fail("the device has no queue 0");
        }
        // A split ring's size is a power of two (and indexes wrap at 2^16 cleanly only so).
        let queue_size = (QUEUE_SIZE as u32).min(max);
        let queue_size = 1u16 << (31 - queue_size.leading_zeros());

        // The rings start empty (a driver before us may have left anything there).
        for offset in (0..HEADER).step_by(8) {
            dma_write::<u64>(offset, 0);
        }
        let dma_phys = base + VIRTIO_DMA_OFFSET;
        reg_write(QUEUE_NUM, u32::from(queue_size));
        for (reg, offset) in [
            (QUEUE_DESC, DESC),
            (QUEUE_DRIVER, AVAIL),
            (QUEUE_DEVICE, USED),
        ] {
            let phys = dma_phys + offset;
            reg_write(reg, phys as u32);
            reg_write(reg + 4, (phys >> 32) as u32);
        }
        reg_write(QUEUE_READY, 1);
        reg_write(
            STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        if reg_read(STATUS) & (S_NEEDS_RESET | S_FAILED) != 0 {
            return fail("the device refused the queue");
        }
        // The capacity, read until the configuration generation holds still (§2.5.1).
        let sectors = loop {
            let generation = reg_read(CONFIG_GENERATION);
            let lo = u64::from(reg_read(CONFIG_CAPACITY));
            let hi = u64::from(reg_read(CONFIG_CAPACITY + 4));
            if reg_read(CONFIG_GENERATION) == generation {
                break lo | hi << 32;
            }
        };
        Ok(Device {
            dma_phys,
            queue_size,
            avail_idx: 0,
            sectors,
            read_only: offered & F_RO != 0,
            flush: wanted & F_FLUSH != 0,
            gone: false,
        })
    }

    /// One request: `buf` is the data (whole sectors, at most the DMA data buffer; empty for
    /// a flush), read into or written from. Waits for the device's completion interrupt on
    /// `irq_set`.
    pub fn transfer(
        &mut self,
        kind: Kind,
        sector: u64,
        buf: &mut [u8],
        irq_set: u64,
    ) -> Result<(), Status> {
        if self.gone {
            return Err(Status::DeviceGone);
        }
        if kind == Kind::Flush && !self.flush {
            return Ok(()); // a device without FLUSH writes through (virtio 1.2 §5.2.6.2)
        }
        let len = buf.len() as u64;
        if !len.is_multiple_of(SECTOR as u64) || len > DMA_NEEDED - DATA {
            return Err(Status::BadRequest);
        }
        if kind == Kind::Write {
            for (i, b) in buf.iter().enumerate() {
                dma_write::<u8>(DATA + i as u64, *b);
            }
        }
        let request_type = match kind {
            Kind::Read => T_IN,
            Kind::Write => T_OUT,
            Kind::Flush => T_FLUSH,
        };
        dma_write::<u32>(HEADER, request_type);
        dma_write::<u32>(HEADER + 4, 0);
        dma_write::<u64>(HEADER + 8, sector);
        dma_write::<u8>(STATUS_BYTE, 0xff);
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = DESC + 16 * i;
            dma_write::<u64>(at, self.dma_phys + addr);
            dma_write::<u32>(at + 8, len);
            dma_write::<u16>(at + 12, flags);
            dma_write::<u16>(at + 14, next);
        };
        if len == 0 {
            desc(0, HEADER, 16, DESC_NEXT, 2);
        } else {
            desc(0, HEADER, 16, DESC_NEXT, 1);
            let write = if kind == Kind::Read { DESC_WRITE } else { 0 };
            desc(1, DATA, len as u32, DESC_NEXT | write, 2);
        }
        desc(2, STATUS_BYTE, 1, DESC_WRITE, 0);
        let slot = u64::from(self.avail_idx % self.queue_size);
        dma_write::<u16>(AVAIL + 4 + 2 * slot, 0);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The descriptors and ring entry before the index that publishes them, and the index
        // before the notification (virtio 1.2 §2.7.13).
        fence(Ordering::SeqCst);
        dma_write::<u16>(AVAIL + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        reg_write(QUEUE_NOTIFY, 0);
        // An edge that came while the line was masked is not sent again, so the used ring
        // is looked at after every acknowledgement, not only after an interrupt.
        while dma_read::<u16>(USED + 2) != self.avail_idx {
            if sys::await_interrupt(irq_set, super::IRQ).is_err() {
                self.gone = true;
                return Err(Status::DeviceGone);
            }
            // Each register access is an exit to the VMM: the device status is read only
            // when the device says its configuration (or state) changed.
            let pending = reg_read(INTERRUPT_STATUS);
            reg_write(INTERRUPT_ACK, pending);
            if pending & INT_CONFIG != 0 && reg_read(STATUS) & (S_NEEDS_RESET | S_FAILED) != 0 {
                self.gone = true;
                return Err(Status::DeviceGone);
            }
        }
        fence(Ordering::SeqCst);
        let used_len = dma_read::<u32>(
            USED + 4 + 8 * u64::from((self.avail_idx.wrapping_sub(1)) % self.queue_size) + 4,
        );
        match dma_read::<u8>(STATUS_BYTE) {
            0 => {}
            _ => return Err(Status::IoError),
        }
        if kind == Kind::Read {
            if u64::from(used_len) != len + 1 {
                return Err(Status::IoError);
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = dma_read::<u8>(DATA + i as u64);
            }
        }
        Ok(())
    }
}

/// Marks the device FAILED (the driver gives up on it, §3.1.1) and says why.
fn fail(why: &'static str) -> Result<Device, &'static str> {
    reg_write(STATUS, reg_read(STATUS) | S_FAILED);
    Err(why)
}
