//! The virtio-mmio register file (virtio 1.2 §4.2.2, version 2) of one device, served in the
//! vCPU thread. Registers below the configuration space (0x100) are 32 bits wide; an access
//! of another width there, a write to a read-only register or a read of a write-only one
//! is ignored (reads as zero), as is a queue register write once the queue is ready or the
//! driver is running. The legacy (version 1) registers do not exist.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{Interrupt, VirtioDevice};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) layout.
pub const VERSION: u32 = 2;
/// fluke-vmm's vendor id: "FLKE".
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"FLKE");

/// What the driver wrote about one queue.
#[derive(Clone, Copy, Debug, Default)]
struct QueueSetup {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<Interrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueSetup>,
}

fn set_half(value: &mut u64, high: bool, half: u32) {
    *value = if high {
        (*value & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (*value & !0xffff_ffff) | u64::from(half)
    };
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, interrupt: Arc<Interrupt>) -> MmioTransport {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueSetup {
                size: max,
                ..QueueSetup::default()
            })
            .collect();
        MmioTransport {
            device,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSetup> {
        // Queues are configured between FEATURES_OK and DRIVER_OK, one not yet ready.
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(self.queue_sel as usize)
            .filter(|q| !q.ready)
    }

    /// A guest read at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        data.fill(0);
        let len = data.len();
        let Ok(word) = <&mut [u8; 4]>::try_from(data) else {
            log::debug!("virtio-mmio: {len}-byte read at {offset:#x} ignored");
            return;
        };
        let max_size = |t: &Self| {
            t.device
                .queue_max_sizes()
                .get(t.queue_sel as usize)
                .copied()
                .unwrap_or(0)
        };
        let value = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => u32::from(max_size(self)),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // The configuration space never changes.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            other => {
                log::debug!("virtio-mmio: read of register {other:#x} ignored");
                0
            }
        };
        *word = value.to_le_bytes();
    }

    /// A guest write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // virtio-blk's configuration space is read-only for us (no writeback cache).
            log::debug!("virtio-mmio: configuration write at {offset:#x} ignored");
            return;
        }
        let Ok(word) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        let value = u32::from_le_bytes(word);
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => set_half(&mut self.driver_features, false, value),
                        1 => set_half(&mut self.driver_features, true, value),
                        _ => {}
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.size = u16::try_from(value).unwrap_or(0);
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                let sel = self.queue_sel as usize;
                if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
                    if let Some(q) = self.queues.get_mut(sel) {
                        q.ready = value == 1;
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            reg @ (VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH) => {
                let high = reg & 4 != 0;
                if let Some(q) = self.selected_queue() {
                    let field = match reg & !4 {
                        VIRTIO_MMIO_QUEUE_DESC_LOW => &mut q.desc,
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW => &mut q.avail,
                        _ => &mut q.used,
                    };
                    set_half(field, high, value);
                }
            }
            other => log::debug!("virtio-mmio: write of {value:#x} to register {other:#x} ignored"),
        }
    }

    /// A QueueNotify that reached the VMM as an MMIO exit (no ioeventfd caught it): passed
    /// on to the device thread as the ioeventfd would have.
    fn notify(&mut self, queue: u32) {
        log::debug!("virtio-mmio: queue {queue} notified by an MMIO exit (no ioeventfd caught it)");
        if let Some(evt) = self.device.queue_events().get(queue as usize) {
            if let Err(e) = evt.write(1) {
                log::warn!("virtio-mmio: cannot pass on a queue notification: {e}");
            }
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let newly = value & !self.status;
        // Bits are only ever added until a reset.
        if value & self.status != self.status {
            log::debug!(
                "virtio-mmio: status {value:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        self.status = value;
        if newly & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !acceptable {
                // The driver reads FEATURES_OK back and sees it refused.
                self.status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if newly & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if value & VIRTIO_CONFIG_S_FEATURES_OK == 0 || value & VIRTIO_CONFIG_S_FAILED != 0 {
                self.fail("DRIVER_OK without FEATURES_OK".into());
                return;
            }
            match self.activate() {
                Ok(()) => {}
                Err(e) => self.fail(e),
            }
        }
    }

    fn activate(&mut self) -> Result<(), String> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, setup) in self.queues.iter().enumerate() {
            let max = self.device.queue_max_sizes().get(i).copied().unwrap_or(0);
            let mut q = Queue::new(max).map_err(|e| format!("queue {i}: {e}"))?;
            if setup.ready {
                let bad = |e: virtio_queue::Error| format!("queue {i}: {e}");
                q.try_set_size(setup.size).map_err(bad)?;
                q.try_set_desc_table_address(GuestAddress(setup.desc))
                    .map_err(bad)?;
                q.try_set_avail_ring_address(GuestAddress(setup.avail))
                    .map_err(bad)?;
                q.try_set_used_ring_address(GuestAddress(setup.used))
                    .map_err(bad)?;
                q.set_ready(true);
            }
            queues.push(q);
        }
        self.device.activate(queues, self.driver_features)
    }

    fn fail(&mut self, why: String) {
        log::debug!("virtio-mmio: the device needs a reset: {why}");
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    }

    fn reset(&mut self) {
        self.device.reset();
        self.interrupt.clear();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for (q, &max) in self.queues.iter_mut().zip(self.device.queue_max_sizes()) {
            *q = QueueSetup {
                size: max,
                ..QueueSetup::default()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    /// A device that records what the transport tells it.
    struct Recorder {
        events: [EventFd; 1],
        activated: Arc<std::sync::Mutex<Vec<(u16, u64, u64)>>>,
        resets: Arc<std::sync::atomic::AtomicU32>,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            2
        }
        fn features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | (1 << 9)
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.events
        }
        fn activate(&mut self, queues: Vec<Queue>, acked: u64) -> Result<(), String> {
            let q = &queues[0];
            self.activated
                .lock()
                .unwrap()
                .push((q.size(), q.desc_table(), acked));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    type Log = Arc<std::sync::Mutex<Vec<(u16, u64, u64)>>>;

    fn transport() -> (
        MmioTransport,
        Log,
        Arc<std::sync::atomic::AtomicU32>,
        EventFd,
    ) {
        let events = [EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let notified = events[0].try_clone().unwrap();
        let activated = Log::default();
        let resets = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let device = Recorder {
            events,
            activated: Arc::clone(&activated),
            resets: Arc::clone(&resets),
        };
        let t = MmioTransport::new(Box::new(device), Arc::new(Interrupt::new().unwrap()));
        (t, activated, resets, notified)
    }

    fn read(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn write(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    #[test]
    fn identity_registers() {
        let (mut t, ..) = transport();
        assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_ID), 2);
        assert_eq!(read(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no queue 1");
        // Narrow register reads read as zero; the config space takes any width.
        let mut b = [0xffu8; 2];
        t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut c = [0u8; 1];
        t.read(0x105, &mut c);
        assert_eq!(c, [5]);
    }

    #[test]
    fn negotiation_activation_notification_and_reset() {
        let (mut t, activated, resets, notified) = transport();
        write(&mut t, VIRTIO_MMIO_STATUS, 3);
        // A feature the device does not offer: FEATURES_OK is refused.
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xb);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 3);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 9);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xb);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0xb);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x2);
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        // Ignored once ready.
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 2);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert_eq!(
            *activated.lock().unwrap(),
            [(4, 0x2_0000_1000, (1 << 32) | (1 << 9))]
        );
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(notified.read().unwrap(), 1);
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
        assert!(notified.read().is_err(), "no queue 7");
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_or_a_bad_queue_needs_a_reset() {
        let (mut t, activated, ..) = transport();
        write(&mut t, VIRTIO_MMIO_STATUS, 3);
        write(&mut t, VIRTIO_MMIO_STATUS, 7);
        assert_ne!(
            read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xb);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 3); // not a power of two
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert_ne!(
            read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        assert!(activated.lock().unwrap().is_empty());
    }
}
