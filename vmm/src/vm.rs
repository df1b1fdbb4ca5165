//! The KVM environment: `/dev/kvm`, the VM, its guest memory, the in-kernel irqchip and the
//! vCPU. Nothing here knows about images or devices.

use kvm_bindings::{
    kvm_irqchip, kvm_userspace_memory_region, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};

const MIB: u64 = 1 << 20;

/// Where KVM on VMX without unrestricted guest keeps its real-mode TSS (3 pages). Outside
/// guest RAM, which ends at [`MAX_MEMORY_MIB`] at most.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Smallest accepted `--memory`: the kernel is loaded at 1 MiB, so less cannot hold one.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Largest accepted `--memory`. Guest RAM is one region at GPA 0, so it must end below the
/// IOAPIC/LAPIC MMIO window at 0xfec0_0000 (there is no PCI hole / high-memory split).
pub const MAX_MEMORY_MIB: u64 = 3072;

/// Checks `--memory` and returns it in bytes.
pub fn memory_bytes(mib: u64) -> Result<u64> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        Ok(mib * MIB)
    } else {
        Err(Error::InvalidMemorySize {
            got: mib,
            min: MIN_MEMORY_MIB,
            max: MAX_MEMORY_MIB,
        })
    }
}

/// Opens `/dev/kvm`, mapping the usual failures to actionable messages.
pub fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::EACCES | libc::EPERM => Error::KvmPermission,
        errno => Error::KvmUnavailable(errno),
    })
}

/// A VM with its memory and irqchip. Field order matters: the host pager (whose thread
/// touches guest RAM) stops first, and the VM fd is dropped before the memory mapping it
/// points at.
pub struct Vm {
    pager: Option<crate::paging::HostPager>,
    fd: VmFd,
    kvm: Kvm,
    memory: GuestMemoryMmap,
    /// Devices' own memory (virtio DMA areas), each in a memory slot after RAM's; dropped
    /// after `fd` as `memory` is.
    device_memory: Vec<GuestMemoryMmap>,
}

impl Vm {
    /// Creates the VM with `mem_bytes` of RAM at GPA 0 and the in-kernel irqchip
    /// (LAPIC/IOAPIC/PIC; the guest uses the LAPIC timer).
    pub fn new(kvm: Kvm, mem_bytes: u64) -> Result<Vm> {
        let fd = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        let mib = mem_bytes / MIB;
        let size = usize::try_from(mem_bytes).map_err(|_| Error::GuestMemory {
            mib,
            msg: "too large for this host".into(),
        })?;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| {
            Error::GuestMemory {
                mib,
                msg: e.to_string(),
            }
        })?;
        for (slot, region) in memory.iter().enumerate() {
            let host =
                memory
                    .get_host_address(region.start_addr())
                    .map_err(|e| Error::GuestMemory {
                        mib,
                        msg: e.to_string(),
                    })?;
            let slot = u32::try_from(slot).map_err(|_| Error::GuestMemory {
                mib,
                msg: "too many memory regions".into(),
            })?;
            let region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: `userspace_addr..+memory_size` is a live mapping owned by `memory`,
            // which lives in the same `Vm` as `fd` and is dropped after it (field order), so
            // KVM never sees the mapping disappear while the VM exists.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        if let Err(e) = fd.set_tss_address(TSS_ADDRESS) {
            // Only needed for real mode on VMX; kvm_pvm may not implement it.
            log::debug!("KVM_SET_TSS_ADDR failed (ignored): {e}");
        }
        fd.create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        mask_legacy_pic(&fd)?;
        Ok(Vm {
            pager: None,
            fd,
            kvm,
            memory,
            device_memory: Vec::new(),
        })
    }

    /// Gives the guest `bytes` of memory at `gpa` that is not RAM (a device's DMA area):
    /// a memory slot of its own, zero-filled, never paged by the host, never in a
    /// snapshot. Returns the memory for the device, which reaches nothing else.
    pub fn add_device_memory(&mut self, gpa: u64, bytes: u64) -> Result<GuestMemoryMmap> {
        self.add_slot(gpa, bytes, None)
    }

    /// Gives the guest the first `bytes` of `file` (a memfd another VM maps too: a
    /// channel's shared area) at `gpa`, mapped shared, in a memory slot of its own: what
    /// either guest stores there the other sees. Never paged by the host, never in a
    /// snapshot. The VMM itself never reads or writes it.
    pub fn add_shared_memory(&mut self, gpa: u64, bytes: u64, file: std::fs::File) -> Result<()> {
        self.add_slot(gpa, bytes, Some(FileOffset::new(file, 0)))
            .map(drop)
    }

    fn add_slot(
        &mut self,
        gpa: u64,
        bytes: u64,
        file: Option<FileOffset>,
    ) -> Result<GuestMemoryMmap> {
        let fail = |msg: String| Error::DeviceMemory {
            gpa,
            kib: bytes / 1024,
            msg,
        };
        let size = usize::try_from(bytes).map_err(|_| fail("too large for this host".into()))?;
        let memory = GuestMemoryMmap::from_ranges_with_files([(GuestAddress(gpa), size, file)])
            .map_err(|e| fail(e.to_string()))?;
        let host = memory
            .get_host_address(GuestAddress(gpa))
            .map_err(|e| fail(e.to_string()))?;
        let slot = u32::try_from(self.memory.num_regions() + self.device_memory.len())
            .map_err(|_| fail("too many memory regions".into()))?;
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: bytes,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `userspace_addr..+memory_size` is a live mapping owned by `memory`, a
        // clone of which is kept in `self.device_memory` (dropped after `fd`, field
        // order), so KVM never sees the mapping disappear while the VM exists; the slot
        // number is unused (RAM's slots come first, then one per device area). Aliasing:
        // for a shared file mapping (a channel), the other VM's guest writes the same pages
        // at any time; nothing in this process holds a Rust reference into them (the VMM
        // never touches a channel's area, and vm-memory's accessors of a DMA area are
        // volatile), and the file is a memfd sealed against shrinking, so the pages cannot
        // go away under KVM either.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        self.device_memory.push(memory.clone());
        Ok(memory)
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Pages guest RAM on demand from here on, `cap_bytes` of it resident at most
    /// ([`crate::paging`]).
    pub fn start_host_paging(&mut self, cap_bytes: u64) -> Result<()> {
        let pager =
            crate::paging::HostPager::start(&self.memory, cap_bytes).map_err(Error::HostPaging)?;
        self.pager = Some(pager);
        Ok(())
    }

    /// Stops host paging and says what it did. Only at the end of the run: once the
    /// userfaultfd is gone, a page that was evicted reads as zeros (its contents stay in
    /// the store, which goes too).
    pub fn stop_host_paging(&mut self) -> Option<crate::paging::PagingSummary> {
        let mut pager = self.pager.take()?;
        let summary = pager.summary();
        pager.stop();
        Some(summary)
    }

    /// Host virtual address ranges `(start, len)` of guest memory: RAM and the devices' DMA
    /// areas, which the guest fills as it fills RAM (for RSS accounting: `vmm.rss` is what
    /// the VMM holds beyond them).
    pub fn host_guest_memory_ranges(&self) -> Vec<(u64, u64)> {
        std::iter::once(&self.memory)
            .chain(self.device_memory.iter())
            .flat_map(|m| {
                m.iter().filter_map(move |r| {
                    let start = m.get_host_address(r.start_addr()).ok()?;
                    Some((start as u64, r.len()))
                })
            })
            .collect()
    }

    /// Creates vCPU `id` with the host's supported CPUID (without it the guest's EFER.LME
    /// write faults on kvm_pvm).
    pub fn create_vcpu(&self, id: u64) -> Result<VcpuFd> {
        let vcpu = self
            .fd
            .create_vcpu(id)
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        Ok(vcpu)
    }

    /// Whether KVM can copy the GPRs into `kvm_run` on every exit (KVM_CAP_SYNC_REGS).
    pub fn has_sync_regs(&self) -> bool {
        self.kvm.check_extension(Cap::SyncRegs)
    }

    /// Has KVM signal `fd` for a guest write of `value` (4 bytes) to guest-physical `addr`
    /// instead of exiting to the VMM.
    pub fn register_mmio_ioeventfd(&self, fd: &EventFd, addr: u64, value: u32) -> Result<()> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), value)
            .map_err(Error::kvm("KVM_IOEVENTFD"))
    }

    /// Has KVM signal `fd` for a guest write of any value and width to guest-physical
    /// `addr` (a channel's doorbell) instead of exiting to the VMM.
    pub fn register_mmio_doorbell(&self, fd: &EventFd, addr: u64) -> Result<()> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), kvm_ioctls::NoDatamatch)
            .map_err(Error::kvm("KVM_IOEVENTFD"))
    }

    /// Routes writes to `fd` to the irqchip's input `gsi`.
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))
    }
}

/// Masks every input of KVM's in-kernel 8259 PICs. KVM resets them unmasked with vector
/// base 0 and the BSP's LINT0 in ExtINT mode, so an irqfd on an ISA line (COM1's 4, the
/// virtio devices' 5..=12) would also reach a guest that never programmed the PIC as
/// *exception* vector 4..=12 (seen on kvm_pvm: a virtio interrupt arrived as vector 5).
/// The fluke kernel takes device interrupts through the IOAPIC only. A restore puts the
/// saved PIC state back over this.
fn mask_legacy_pic(fd: &VmFd) -> Result<()> {
    for chip_id in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        fd.get_irqchip(&mut chip)
            .map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
        // For a PIC chip id KVM fills (and reads) the `pic` member of the union.
        chip.chip.pic.imr = 0xff;
        fd.set_irqchip(&chip)
            .map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_size_bounds() {
        assert!(memory_bytes(0).is_err());
        assert!(memory_bytes(1).is_err());
        assert_eq!(memory_bytes(2).unwrap(), 2 << 20);
        assert_eq!(memory_bytes(128).unwrap(), 128 << 20);
        assert!(memory_bytes(MAX_MEMORY_MIB).is_ok());
        assert!(memory_bytes(MAX_MEMORY_MIB + 1).is_err());
        assert!(memory_bytes(u64::MAX).is_err());
    }

    /// A DMA area that cannot be made is named in KiB (it is less than a MiB: "0 MiB of
    /// guest memory" said nothing). Uses the real /dev/kvm.
    #[test]
    fn a_dma_area_that_cannot_be_made_is_named_in_kib() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let mut vm = Vm::new(kvm, 2 * MIB).expect("a VM");
        let Err(e) = vm.add_device_memory(0xd000_1000, 1 << 50) else {
            panic!("a petabyte of DMA area is refused");
        };
        let e = e.to_string();
        assert!(
            e.starts_with(
                "cannot set up the 1099511627776 KiB memory area (DMA or shared) of the device at 0xd0001000: "
            ),
            "{e}"
        );
        assert!(vm.add_device_memory(0xd000_1000, 1020 << 10).is_ok());
    }
}
