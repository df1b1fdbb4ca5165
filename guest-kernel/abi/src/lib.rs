//! The fixed contract between the host VMM (`fluke-vmm`), QEMU and the guest kernel.
//!
//! Everything here is plain data: addresses, port numbers, exit statuses and the
//! `#[repr(C)]` layout of the PVH start info the kernel is booted with. It is `no_std` so
//! the kernel, the user runtime and the host all use the same definitions, and the layout
//! logic is unit-tested on the host.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod blk;
pub mod boot;
pub mod chan;
pub mod channel;
pub mod cmdline;
pub mod devices;
pub mod ports;
pub mod procmgr;
pub mod status;
pub mod syscall;

/// The `kvm_pvm` fork's MSRs that both sides read (shared/platform/pvm.md §2).
pub mod pvm {
    /// Signature MSR: reads [`SIGNATURE`] on kvm_pvm (guest RDMSR and host KVM_GET_MSRS);
    /// raises #GP / is unknown elsewhere.
    pub const MSR_SIGNATURE: u32 = 0x4b56_4d11;
    /// "PVM".
    pub const SIGNATURE: u64 = 0x4d_5650;
    /// PV control MSR: guest-physical address of the PV page | flags (guest writes only).
    pub const MSR_CONTROL: u32 = 0x4b56_4d10;
    /// TSC frequency in kHz.
    pub const MSR_TSC_KHZ: u32 = 0x4b56_4d13;
    /// Offset in the kernel's PV page (whose address the host reads in [`MSR_CONTROL`]) of a
    /// u64 the VMM sets to [`RESTORED`] in a VM it restored from a snapshot, before it sends
    /// the vCPU an NMI: the host cannot write [`MSR_CONTROL`], so the restored vCPU starts
    /// in kvm_pvm's default mode, and the kernel's NMI handler (which default mode delivers
    /// through the IDT as any event) turns PV mode back on and clears it.
    pub const PV_PAGE_RESTORED: u64 = 16;
    pub const RESTORED: u64 = 0x5245_5354_4f52_4544; // "RESTORED"
}

/// KVM's paravirtual clock (kvmclock), which the kernel keeps time with where KVM offers it
/// (hardware KVM and kvm_pvm): the VMM can then hold the guest's clock across a pause
/// (KVM_GET_CLOCK / KVM_SET_CLOCK), which it cannot do for the raw TSC on kvm_pvm.
pub mod kvmclock {
    /// CPUID leaf with KVM's signature `KVMKVMKVM` in EBX, ECX, EDX.
    pub const CPUID_SIGNATURE: u32 = 0x4000_0000;
    /// CPUID leaf whose EAX holds KVM's paravirtual features.
    pub const CPUID_FEATURES: u32 = 0x4000_0001;
    /// Feature bit: MSR_SYSTEM_TIME_NEW exists.
    pub const FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
    /// Feature bit: the clock is the same on every vCPU and never goes backwards.
    pub const FEATURE_CLOCKSOURCE_STABLE: u32 = 1 << 24;
    /// Guest-physical address (4-byte aligned) of the 32-byte time structure, bit 0 enable.
    pub const MSR_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
}

/// Which hypervisor interface the guest kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// The `kvm_pvm` fork: the kernel must switch to PV mode (see `shared/platform/pvm.md`).
    KvmPvm,
    /// Hardware-assisted KVM (VMX/SVM).
    Kvm,
    /// QEMU's TCG emulator (no KVM).
    Qemu,
    /// A native x86 machine the guest cannot identify further.
    Native,
}

impl Platform {
    /// The name used on the command line, in banners and in benchmark records.
    pub const fn name(self) -> &'static str {
        match self {
            Platform::KvmPvm => "kvm_pvm",
            Platform::Kvm => "kvm",
            Platform::Qemu => "qemu",
            Platform::Native => "native",
        }
    }

    pub fn from_name(s: &str) -> Option<Platform> {
        [
            Platform::KvmPvm,
            Platform::Kvm,
            Platform::Qemu,
            Platform::Native,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names_round_trip() {
        for p in [
            Platform::KvmPvm,
            Platform::Kvm,
            Platform::Qemu,
            Platform::Native,
        ] {
            assert_eq!(Platform::from_name(p.name()), Some(p));
        }
        assert_eq!(Platform::from_name("vmx"), None);
    }
}
