//! virtio-blk (virtio 1.2 §5.2): one request queue over a [`disk::Disk`], served on the
//! device's thread. Offers VIRTIO_BLK_F_FLUSH, and VIRTIO_BLK_F_RO for a read-only drive;
//! the configuration space holds the capacity (in 512-byte sectors) only.

pub mod disk;
pub mod request;

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::disk::Disk;
use self::request::BOUNCE_BYTES;
use super::worker::Worker;
use super::{Interrupt, VirtioDevice};
use crate::seccomp::ThreadKind;

/// The request queue's largest size.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// What the vCPU thread (activation, reset) and the device thread (requests) share.
struct Shared {
    disk: Disk,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    /// The request queue, from activation until reset.
    queue: Mutex<Option<Queue>>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Option<Queue>> {
        // A panic while serving a request leaves the queue as it was; go on with it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves every available request, then interrupts the driver if it wants to hear.
    fn serve_queue(&self, bounce: &mut [u8]) {
        let mut guard = self.queue();
        let Some(queue) = guard.as_mut() else {
            // Not activated (or reset): the driver must not have notified.
            return;
        };
        let mem = &self.mem;
        let mut served = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let done = request::serve(&self.disk, mem, chain, bounce);
            if let Some(e) = &done.error {
                log::debug!("virtio-blk: request {head}: {e}");
            }
            if let Err(e) = queue.add_used(mem, head, done.used_len) {
                log::debug!("virtio-blk: cannot complete request {head}: {e}");
            }
            served = true;
        }
        if served && queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }
}

pub struct Block {
    shared: Arc<Shared>,
    queue_events: [EventFd; 1],
    config: [u8; 8],
    features: u64,
    _worker: Worker,
}

impl Block {
    /// The device over `disk`, its thread started (waiting for the driver to activate it).
    pub fn new(
        disk: Disk,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        thread_name: String,
    ) -> std::io::Result<Block> {
        let mut features = (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_BLK_F_FLUSH);
        if disk.readonly() {
            features |= 1u64 << VIRTIO_BLK_F_RO;
        }
        let config = disk.sectors().to_le_bytes();
        let shared = Arc::new(Shared {
            disk,
            mem,
            interrupt,
            queue: Mutex::new(None),
        });
        let queue_event = EventFd::new(libc::EFD_NONBLOCK)?;
        let served = Arc::clone(&shared);
        let mut bounce = vec![0u8; BOUNCE_BYTES];
        let worker = Worker::spawn(
            &thread_name,
            ThreadKind::VirtioBlock,
            vec![queue_event.try_clone()?],
            move |_queue| served.serve_queue(&mut bounce),
        )?;
        Ok(Block {
            shared,
            queue_events: [queue_event],
            config,
            features,
            _worker: worker,
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| self.config.get(usize::try_from(at).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, queues: Vec<Queue>, _acked: u64) -> Result<(), String> {
        let Some(queue) = queues.into_iter().next() else {
            return Err("no request queue".into());
        };
        if !queue.is_valid(&self.shared.mem) {
            return Err(
                "the request queue lies outside the device's DMA area or is misaligned".into(),
            );
        }
        *self.shared.queue() = Some(queue);
        // Requests made available before DRIVER_OK are served now.
        let _ = self.queue_events[0].write(1);
        Ok(())
    }

    fn reset(&mut self) {
        *self.shared.queue() = None;
    }
}

#[cfg(test)]
mod tests;
