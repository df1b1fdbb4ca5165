//! The shared-memory channel between two VMs (issue 15): what a guest sees of
//! `fluke-vmm run --channel path=SOCKET`.
//!
//! Two fluke-vmm processes given the same SOCKET meet there; each gives its guest one
//! device window ([`crate::devices`]: a slot in the same numbering as the virtio devices,
//! **drives first, then channels**, each in command-line order; the same
//! `virtio_mmio.device=<size>@<base>:<irq>` word, so the kernel hands the window and the
//! line to a user-level driver as it does any device's and knows nothing of channels). A
//! driver tells a channel's window from a virtio one by the first register: [`MAGIC`] here,
//! `"virt"` there.
//!
//! The window ([`crate::devices::VIRTIO_MMIO_SIZE`], 1 MiB) is a register page (the first
//! [`REGS_SIZE`] bytes, map it uncached) followed by the **shared area** (from
//! [`SHARED_OFFSET`], [`SHARED_SIZE`] bytes, map it cached: `DEVMEM_CACHED`): the *same*
//! host memory in both VMs, so what one guest stores there the other reads, with no VMM
//! thread in between. The two sides split it without negotiating by [`REG_ROLE`]: the side
//! whose VMM came first (and listened) is role 0, the other role 1; a driver that wants two
//! rings gives each role one half.
//!
//! Notifications: a 4-byte write of any value to [`REG_DOORBELL`] raises the *other* VM's
//! channel line (KVM catches the write with an ioeventfd whose eventfd is the other VM's
//! irqfd on that line: no VMM is on the path; the line is an edge, so the IOAPIC entry is
//! programmed edge-triggered). A doorbell sets no status bit: on every interrupt the driver
//! looks at its rings. The VMM raises the same line itself when the other VM comes or goes,
//! after setting [`INT_PEER_CHANGED`] in [`REG_INTERRUPT_STATUS`], which the driver clears
//! by writing the bit to [`REG_INTERRUPT_ACK`].
//!
//! Memory ordering: the shared area is ordinary write-back memory on both sides; x86's
//! ordering (stores seen in order, a store then the doorbell write) is what a ring needs. A
//! doorbell rung before the other VM came is delivered when it comes (KVM injects an irqfd
//! whose eventfd is already signalled when it is registered).
//!
//! Liveness: [`REG_PEER`] reads [`PEER_WAITING`] until the other VM has come,
//! [`PEER_CONNECTED`] while it runs, [`PEER_GONE`] once it has ended (for whatever reason,
//! `kill -9` included). A channel is for one pair of VMs in one run: after
//! [`PEER_GONE`] it stays gone (the shared area stays mapped, holding what the other VM
//! last wrote), and a third VM on the same socket is refused.

/// `"FLCH"`, little-endian: the register at offset 0.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FLCH");
/// The layout described here. Two VMMs of different versions refuse to join.
pub const VERSION: u32 = 1;

/// The register page: the window's first 4 KiB.
pub const REGS_SIZE: u64 = 0x1000;
/// Where the shared area starts in the window.
pub const SHARED_OFFSET: u64 = REGS_SIZE;
/// The shared area's size: the rest of the 1 MiB window.
pub const SHARED_SIZE: u64 = crate::devices::VIRTIO_MMIO_SIZE - SHARED_OFFSET;

// Registers: 32 bits wide, little-endian, at these offsets in the register page. A read of
// another width, of an offset not listed or of a write-only register reads as zero; a
// write to a read-only register is ignored.

/// R: [`MAGIC`].
pub const REG_MAGIC: u64 = 0x00;
/// R: [`VERSION`].
pub const REG_VERSION: u64 = 0x04;
/// R: the shared area's size in bytes ([`SHARED_SIZE`]).
pub const REG_SHARED_SIZE: u64 = 0x08;
/// R: 0 for the side that listened (came first), 1 for the side that connected.
pub const REG_ROLE: u64 = 0x0c;
/// R: [`PEER_WAITING`], [`PEER_CONNECTED`] or [`PEER_GONE`].
pub const REG_PEER: u64 = 0x10;
/// R: interrupt causes the VMM sets ([`INT_PEER_CHANGED`]); a doorbell sets none.
pub const REG_INTERRUPT_STATUS: u64 = 0x14;
/// W: clears the [`REG_INTERRUPT_STATUS`] bits written as 1.
pub const REG_INTERRUPT_ACK: u64 = 0x18;
/// W: any 4-byte write rings the other VM's doorbell.
pub const REG_DOORBELL: u64 = 0x40;

/// [`REG_ROLE`] of the side that listened.
pub const ROLE_LISTENER: u32 = 0;
/// [`REG_ROLE`] of the side that connected.
pub const ROLE_CONNECTOR: u32 = 1;

/// [`REG_PEER`]: the other VM has not come yet.
pub const PEER_WAITING: u32 = 0;
/// [`REG_PEER`]: the other VM is there.
pub const PEER_CONNECTED: u32 = 1;
/// [`REG_PEER`]: the other VM has ended.
pub const PEER_GONE: u32 = 2;

/// [`REG_INTERRUPT_STATUS`] bit: [`REG_PEER`] changed.
pub const INT_PEER_CHANGED: u32 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_fits_one_device_window() {
        assert_eq!(MAGIC, 0x4843_4c46);
        assert_eq!(
            SHARED_OFFSET + SHARED_SIZE,
            crate::devices::VIRTIO_MMIO_SIZE
        );
        assert_eq!(SHARED_OFFSET, crate::devices::VIRTIO_DMA_OFFSET);
        assert_eq!(SHARED_SIZE % 4096, 0);
        for reg in [
            REG_MAGIC,
            REG_VERSION,
            REG_SHARED_SIZE,
            REG_ROLE,
            REG_PEER,
            REG_INTERRUPT_STATUS,
            REG_INTERRUPT_ACK,
            REG_DOORBELL,
        ] {
            assert!(reg % 4 == 0 && reg + 4 <= REGS_SIZE, "{reg:#x}");
        }
        // A channel's magic is not virtio-mmio's ("virt").
        assert_ne!(MAGIC, u32::from_le_bytes(*b"virt"));
    }
}
