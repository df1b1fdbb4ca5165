//! Time: the TSC, calibrated once at boot, read through KVM's paravirtual clock where KVM
//! offers it (kvmclock: the VMM can hold it still across a pause, which it cannot do for the
//! TSC on kvm_pvm), else directly.

use crate::arch::{apic, cpu, platform};
use crate::mm::physmap;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(1_000_000);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
/// kvmclock's reading at boot (ns), when it is the time source.
static BOOT_KVMCLOCK: AtomicU64 = AtomicU64::new(0);
static USE_KVMCLOCK: AtomicBool = AtomicBool::new(false);
/// The latest kvmclock time handed out: time never steps back, even where the host does
/// not set the structure's TSC-stable flag (no master clock), or at a resume whose
/// KVM_SET_CLOCK lands below the guest's last extrapolated reading.
static LAST_NS: AtomicU64 = AtomicU64::new(0);

/// KVM's `pvclock_vcpu_time_info`, which the host writes while the guest reads it: only
/// atomic loads touch it. Words: version (low 32), tsc_timestamp, system_time (ns),
/// tsc_to_system_mul (low 32) | tsc_shift (i8, bits 32..40) | flags (bits 40..48).
#[repr(C, align(32))]
struct PvClock([AtomicU64; 4]);

static PVCLOCK: PvClock = PvClock([
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
]);

/// kvm_pvm reports the TSC frequency in an MSR (pvm.md §2); KVM in its CPUID leaf
/// 0x40000010 when the VMM fills it; otherwise the TSC is measured against the LAPIC timer.
/// `kvmclock`: the boot probe found a stable kvmclock.
pub fn init(vmm_tsc_khz: Option<u64>, kvmclock: bool) -> u64 {
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
    if kvmclock && enable_kvmclock() {
        BOOT_KVMCLOCK.store(kvmclock_ns(), Ordering::Relaxed);
        USE_KVMCLOCK.store(true, Ordering::Release);
    }
    khz
}

/// Asks KVM to keep [`PVCLOCK`] up to date; true once it has written it.
fn enable_kvmclock() -> bool {
    let phys = physmap::kernel_virt_to_phys(core::ptr::addr_of!(PVCLOCK) as u64);
    // SAFETY: MSR_SYSTEM_TIME_NEW only makes KVM write the 32-byte PVCLOCK (aligned, in the
    // kernel image, never touched by Rust but through atomics); a #GP is caught.
    let written = unsafe { cpu::wrmsr_safe(fluke_abi::kvmclock::MSR_SYSTEM_TIME_NEW, phys | 1) };
    written && PVCLOCK.0[3].load(Ordering::Acquire) as u32 != 0
}

/// Whether the kernel keeps time with kvmclock.
pub fn kvmclock() -> bool {
    USE_KVMCLOCK.load(Ordering::Relaxed)
}

/// kvmclock's time (ns): the host's base and scale, and the TSC since the base.
fn kvmclock_ns() -> u64 {
    loop {
        let version = PVCLOCK.0[0].load(Ordering::Acquire) as u32;
        if version & 1 != 0 {
            continue; // the host is writing it
        }
        fence(Ordering::Acquire);
        let tsc_timestamp = PVCLOCK.0[1].load(Ordering::Relaxed);
        let system_time = PVCLOCK.0[2].load(Ordering::Relaxed);
        let scale = PVCLOCK.0[3].load(Ordering::Relaxed);
        let tsc = cpu::rdtsc();
        fence(Ordering::Acquire);
        if PVCLOCK.0[0].load(Ordering::Acquire) as u32 != version {
            continue;
        }
        let mul = scale as u32;
        let shift = (scale >> 32) as u8 as i8;
        return system_time.wrapping_add(fluke_kcore::pvclock::scale_delta(
            tsc.wrapping_sub(tsc_timestamp),
            mul,
            shift,
        ));
    }
}

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    if kvmclock() {
        let t = kvmclock_ns().saturating_sub(BOOT_KVMCLOCK.load(Ordering::Relaxed));
        return t.max(LAST_NS.fetch_max(t, Ordering::Relaxed));
    }
    let ticks = cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(tsc_khz())) as u64
}
