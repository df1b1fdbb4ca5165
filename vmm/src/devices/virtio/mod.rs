//! Virtio devices on the virtio-mmio transport (virtio 1.2 §4.2, "modern" register layout,
//! version 2), placed as `fluke_abi::devices` says: device `i` at `VIRTIO_MMIO_BASE + i *
//! VIRTIO_MMIO_SIZE`, interrupt line `VIRTIO_FIRST_IRQ + i`. A window is a page of
//! registers and then the device's DMA area, a memory slot of its own: the device is given
//! only that memory ([`dma_area`], `Vm::add_device_memory`), so its queues and buffers cannot point into guest RAM
//! (virtio-queue's accessors fail on any address outside it, and the device reports the
//! request or queue as broken).
//!
//! Three paths, each on the thread that suits it:
//! - register reads and writes are MMIO exits of the vCPU, which [`MmioBus`] hands to the
//!   device's [`mmio::MmioTransport`] in the vCPU thread;
//! - a QueueNotify write is caught in KVM by an ioeventfd and wakes the device's own thread
//!   ([`worker`]), which serves the queue; the vCPU goes on at once;
//! - the device thread raises the interrupt through an irqfd on the device's line of the
//!   in-kernel IOAPIC ([`Interrupt`]).
//!
//! [`block`] is the one device so far.

pub mod block;
pub mod mmio;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};

use fluke_abi::devices::{
    MmioDevice, VIRTIO_DMA_OFFSET, VIRTIO_FIRST_IRQ, VIRTIO_MMIO_BASE, VIRTIO_MMIO_REGS,
    VIRTIO_MMIO_SIZE,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_VRING, VIRTIO_MMIO_QUEUE_NOTIFY};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use self::mmio::MmioTransport;

/// What a device is to its transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (VIRTIO_ID_*).
    fn device_type(&self) -> u32;
    /// The feature bits it offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Each queue's largest size (a power of two).
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads its configuration space at `offset` (bytes past its end read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The eventfd the notifications of each queue arrive on (the ioeventfd's).
    fn queue_events(&self) -> &[EventFd];
    /// The driver set DRIVER_OK: serve these queues (checked by the device against guest
    /// memory) with the `acked` features.
    fn activate(&mut self, queues: Vec<Queue>, acked: u64) -> Result<(), String>;
    /// The driver reset the device: stop using its queues.
    fn reset(&mut self);
}

/// A device's interrupt: the InterruptStatus bits the driver reads and acknowledges, and
/// the irqfd that raises its IOAPIC line (an edge: KVM pulses the line for each write).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new() -> std::io::Result<Interrupt> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            irqfd: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// Device `index`'s window and line.
pub fn slot(index: usize) -> MmioDevice {
    MmioDevice {
        base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        size: VIRTIO_MMIO_SIZE,
        irq: VIRTIO_FIRST_IRQ + index as u32,
    }
}

/// Where a device's DMA area lies: `(guest-physical start, bytes)`.
pub fn dma_area(device: &MmioDevice) -> (u64, u64) {
    (
        device.base + VIRTIO_DMA_OFFSET,
        device.size - VIRTIO_DMA_OFFSET,
    )
}

/// The guest-physical address of a device's QueueNotify register (where its ioeventfds
/// are registered).
pub fn queue_notify_address(device: &MmioDevice) -> u64 {
    device.base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY)
}

/// A window's register page as the vCPU's MMIO exits see it: a virtio-mmio transport, or
/// a channel's registers (`devices::channel`).
pub trait RegisterPage {
    /// A guest read of `data.len()` bytes at `offset` in the page.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` in the page.
    fn write(&mut self, offset: u64, data: &[u8]);
}

impl RegisterPage for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

/// The device windows' register pages (virtio devices and channels), for the vCPU's MMIO
/// exits.
#[derive(Default)]
pub struct MmioBus {
    devices: Vec<(MmioDevice, Box<dyn RegisterPage>)>,
}

impl MmioBus {
    pub fn add(&mut self, slot: MmioDevice, page: impl RegisterPage + 'static) {
        self.devices.push((slot, Box::new(page)));
    }

    /// How many windows there are (the next device's index).
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The command-line words of every device.
    pub fn slots(&self) -> Vec<MmioDevice> {
        self.devices.iter().map(|(s, _)| *s).collect()
    }

    fn find(&mut self, addr: u64, len: usize) -> Option<(u64, &mut (dyn RegisterPage + 'static))> {
        self.devices.iter_mut().find_map(|(slot, t)| {
            let offset = addr.checked_sub(slot.base)?;
            (offset.checked_add(len as u64)? <= VIRTIO_MMIO_REGS).then_some((offset, &mut **t))
        })
    }

    /// A guest read of `data.len()` bytes at `addr`; false if no device owns them.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, t)) => {
                t.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// A guest write at `addr`; false if no device owns it.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, t)) => {
                t.write(offset, data);
                true
            }
            None => false,
        }
    }

    /// Stops every device and its thread (the end of the run: before host paging of
    /// guest memory stops). Guest accesses to the windows are unknown MMIO from then on.
    pub fn stop(&mut self) {
        self.devices.clear();
    }
}
