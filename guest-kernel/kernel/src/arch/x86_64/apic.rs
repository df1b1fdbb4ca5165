//! The local APIC timer, in x2APIC mode (MSRs) when the CPU offers it, else xAPIC (MMIO).
//! KVM's in-kernel LAPIC and QEMU's both count the timer at 1 GHz with divide-by-1, so
//! counts are nanoseconds. On kvm_pvm each register access is a trapped MSR (~3 µs), so the
//! timer is programmed only when the scheduler needs it (one-shot, no periodic tick).

use super::{cpu, paging};
use crate::mm::physmap;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub const TIMER_VECTOR: u8 = 0x40;
pub const SPURIOUS_VECTOR: u8 = 0xff;

const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2: u64 = 1 << 10;
const XAPIC_PHYS: u64 = 0xfee0_0000;

// Register numbers in x2APIC MSR form (0x800 + offset/16); xAPIC uses offset = reg << 4.
const REG_EOI: u32 = 0x0b;
const REG_SVR: u32 = 0x0f;
const REG_LVT_TIMER: u32 = 0x32;
const REG_INITIAL_COUNT: u32 = 0x38;
const REG_CURRENT_COUNT: u32 = 0x39;
const REG_DIVIDE: u32 = 0x3e;

const LVT_MASKED: u32 = 1 << 16;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_VIRT: AtomicU64 = AtomicU64::new(0);

fn write(reg: u32, value: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: the x2APIC register MSRs only affect this CPU's interrupt delivery.
        unsafe { cpu::wrmsr(0x800 + reg, u64::from(value)) };
    } else {
        let base = XAPIC_VIRT.load(Ordering::Relaxed);
        // SAFETY: the xAPIC page is mapped uncached at `base` by init().
        unsafe { ((base + (u64::from(reg) << 4)) as *mut u32).write_volatile(value) };
    }
}

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: reading an x2APIC register has no side effects.
        unsafe { cpu::rdmsr(0x800 + reg) as u32 }
    } else {
        let base = XAPIC_VIRT.load(Ordering::Relaxed);
        // SAFETY: as in write().
        unsafe { ((base + (u64::from(reg) << 4)) as *const u32).read_volatile() }
    }
}

/// Remaps the legacy 8259 PICs away from the exception vectors (firmware leaves the master
/// at vector 8, where a PIT tick would look like a double fault) and masks every line.
pub fn disable_legacy_pic() {
    // SAFETY: the PIC ports belong to the kernel; this is the standard ICW sequence.
    unsafe {
        for (cmd, data, base, cascade) in [(0x20u16, 0x21u16, 0x20u8, 4u8), (0xa0, 0xa1, 0x28, 2)] {
            cpu::outb(cmd, 0x11); // ICW1: initialise, ICW4 follows
            cpu::outb(data, base); // ICW2: vector base
            cpu::outb(data, cascade); // ICW3
            cpu::outb(data, 0x01); // ICW4: 8086 mode
            cpu::outb(data, 0xff); // mask all
        }
    }
}

/// Enables the LAPIC with the timer masked. `root` is the kernel address space, into which
/// the xAPIC page is mapped when x2APIC is not available.
pub fn init(x2apic_supported: bool, root: u64) -> Result<(), paging::MapError> {
    // SAFETY: enabling the local APIC (and x2APIC mode) only changes how this CPU's
    // interrupt controller is addressed; interrupts are still disabled.
    unsafe {
        let mut base = cpu::rdmsr(MSR_APIC_BASE) | APIC_BASE_ENABLE;
        if x2apic_supported {
            base |= APIC_BASE_X2;
        }
        cpu::wrmsr(MSR_APIC_BASE, base);
    }
    X2APIC.store(x2apic_supported, Ordering::Relaxed);
    if !x2apic_supported {
        let virt = physmap::DEVICE_MAP_BASE;
        paging::map_device(root, virt, XAPIC_PHYS)?;
        XAPIC_VIRT.store(virt, Ordering::Relaxed);
    }
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_DIVIDE, 0b1011); // divide by 1
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    Ok(())
}

pub fn x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

/// Fires the timer interrupt once, `ns` nanoseconds from now (at least 1 µs).
pub fn arm_oneshot(ns: u64) {
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
    write(
        REG_INITIAL_COUNT,
        ns.clamp(1_000, u64::from(u32::MAX)) as u32,
    );
}

pub fn eoi() {
    write(REG_EOI, 0);
}

/// Measures TSC ticks per millisecond against the 1 GHz LAPIC timer (native backend, where
/// the VMM gives no TSC frequency).
pub fn calibrate_tsc_khz() -> u64 {
    const COUNT: u32 = 2_000_000; // 2 ms
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(REG_INITIAL_COUNT, COUNT);
    let t0 = cpu::rdtsc();
    let c0 = read(REG_CURRENT_COUNT);
    let mut c1;
    loop {
        c1 = read(REG_CURRENT_COUNT);
        if c1 == 0 || c0 - c1 >= COUNT / 2 {
            break;
        }
    }
    let t1 = cpu::rdtsc();
    write(REG_INITIAL_COUNT, 0);
    let elapsed_ns = u64::from(c0 - c1).max(1);
    (t1 - t0) * 1_000_000 / elapsed_ns
}
