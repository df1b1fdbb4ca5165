//! Time: the TSC, calibrated once at boot.

use crate::arch::{apic, cpu, platform};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(1_000_000);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

/// kvm_pvm reports the TSC frequency in an MSR (pvm.md §2); KVM in its CPUID leaf
/// 0x40000010 when the VMM fills it; otherwise the TSC is measured against the LAPIC timer.
pub fn init(vmm_tsc_khz: Option<u64>) -> u64 {
    use fluke_abi::pvm::MSR_TSC_KHZ as MSR_PVM_TSC_KHZ;
    let khz = vmm_tsc_khz
        .filter(|&k| k > 0)
        .or_else(|| {
            (platform::backend() == platform::Backend::Pv)
                // SAFETY: the MSR exists on kvm_pvm (the PV backend is only chosen there).
                .then(|| unsafe { cpu::rdmsr(MSR_PVM_TSC_KHZ) })
        })
        .filter(|&k| k > 0)
        .unwrap_or_else(apic::calibrate_tsc_khz);
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
    khz
}

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    let ticks = cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(tsc_khz())) as u64
}
