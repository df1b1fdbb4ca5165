//! Which hypervisor this `/dev/kvm` is: hardware KVM or the `kvm_pvm` fork
//! (`shared/platform/pvm.md` §4.4). The result goes on the kernel command line as
//! `fluke.platform=<name>`; the guest confirms it with its own probe.

use fluke_abi::Platform;
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// `kvm_pvm`'s signature MSR (host-readable with KVM_GET_MSRS) and its value there.
pub use fluke_abi::pvm::{MSR_SIGNATURE as MSR_KVM_PVM_SIGNATURE, SIGNATURE as KVM_PVM_SIGNATURE};

/// Detects the platform on a created (not yet run) vCPU. On hardware KVM the MSR is unknown
/// and KVM_GET_MSRS returns zero entries (or fails); both mean [`Platform::Kvm`].
pub fn detect(vcpu: &VcpuFd) -> Platform {
    let entry = kvm_msr_entry {
        index: MSR_KVM_PVM_SIGNATURE,
        ..Default::default()
    };
    let Ok(mut msrs) = Msrs::from_entries(&[entry]) else {
        return Platform::Kvm;
    };
    match vcpu.get_msrs(&mut msrs) {
        Ok(1) => classify(msrs.as_slice().first().map(|e| e.data)),
        Ok(_) => classify(None),
        Err(e) => {
            log::debug!(
                "KVM_GET_MSRS({MSR_KVM_PVM_SIGNATURE:#x}) failed: {e}; assuming hardware KVM"
            );
            classify(None)
        }
    }
}

/// Maps the value read from the signature MSR (if any) to a platform.
pub fn classify(signature: Option<u64>) -> Platform {
    match signature {
        Some(KVM_PVM_SIGNATURE) => Platform::KvmPvm,
        _ => Platform::Kvm,
    }
}

/// A human description for the log.
pub fn describe(p: Platform) -> &'static str {
    match p {
        Platform::KvmPvm => "kvm_pvm (PVM fork; the guest kernel runs in its PV mode)",
        Platform::Kvm => "kvm (hardware virtualization)",
        Platform::Qemu => "qemu (TCG emulation)",
        Platform::Native => "native",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_signature() {
        assert_eq!(classify(Some(0x4d5650)), Platform::KvmPvm);
        assert_eq!(classify(Some(0)), Platform::Kvm);
        assert_eq!(classify(None), Platform::Kvm);
    }
}
