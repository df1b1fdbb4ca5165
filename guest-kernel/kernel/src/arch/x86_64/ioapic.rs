//! The IOAPIC (issue 15): routes an interrupt line (GSI) to a vector on this CPU's local
//! APIC, and masks or unmasks it. fluke-vmm's in-kernel irqchip and QEMU's `pc` machine put
//! it at `fluke_abi::devices::IOAPIC_BASE`; the legacy PIC is masked
//! (`apic::disable_legacy_pic`), so lines reach the CPU only through here.
//!
//! The kernel touches the IOAPIC only when it hands out an interrupt line (each register
//! access is an exit into KVM's IOAPIC on kvm_pvm), and then only the entries of the lines
//! it hands out. Every line is programmed edge-triggered, active high: how the VMMs signal
//! their ISA lines (fluke-vmm's irqfds pulse them). An edge that arrives while the line is
//! masked is not signalled again when it is unmasked, so a driver checks its device after
//! `irq_ack`, as drivers of edge-triggered devices do.

use super::paging;
use crate::mm::physmap;
use core::sync::atomic::{AtomicU64, Ordering};

/// Interrupt line `n` arrives at vector `VECTOR_BASE + n`: 0x50..0x68, clear of the
/// exceptions, the timer's 0x40 and the spurious vector 0xff (`apic`).
pub const VECTOR_BASE: u8 = 0x50;
/// The IOAPIC inputs the kernel drives at most (an 82093AA has 24).
pub const MAX_LINES: u32 = 24;

const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;
const MASKED: u32 = 1 << 16;

/// Where the IOAPIC's page is mapped (0 until [`init`]).
static VIRT: AtomicU64 = AtomicU64::new(0);

fn write(reg: u32, value: u32) {
    let base = VIRT.load(Ordering::Relaxed);
    // SAFETY: the IOAPIC page is mapped uncached at `base` by init() and nothing else
    // aliases it (its window is refused as a device window); IOREGSEL at +0, IOWIN at
    // +0x10. Single CPU, interrupts off in the kernel: the select-then-access pair is not
    // interleaved with another.
    unsafe {
        (base as *mut u32).write_volatile(reg);
        ((base + 0x10) as *mut u32).write_volatile(value);
    }
}

fn read(reg: u32) -> u32 {
    let base = VIRT.load(Ordering::Relaxed);
    // SAFETY: as in write().
    unsafe {
        (base as *mut u32).write_volatile(reg);
        ((base + 0x10) as *const u32).read_volatile()
    }
}

/// Maps the IOAPIC into the kernel space `root` and returns how many lines it has (at most
/// [`MAX_LINES`]); 0 if nothing answers like an IOAPIC there.
pub fn init(root: u64) -> Result<u32, paging::MapError> {
    let virt = physmap::DEVICE_MAP_BASE + 0x1000;
    if VIRT.load(Ordering::Relaxed) == 0 {
        paging::map_device(root, virt, fluke_abi::devices::IOAPIC_BASE)?;
        VIRT.store(virt, Ordering::Relaxed);
    }
    let version = read(REG_VERSION);
    if version == u32::MAX || version == 0 {
        return Ok(0);
    }
    let entries = ((version >> 16) & 0xff) + 1;
    Ok(entries.min(MAX_LINES))
}

/// Points `line` at its vector on CPU 0's local APIC (physical destination APIC ID 0,
/// fixed delivery, edge, active high), masked.
pub fn route(line: u32) {
    let vector = u32::from(VECTOR_BASE) + line;
    write(REG_REDIRECTION + 2 * line + 1, 0); // destination: APIC ID 0
    write(REG_REDIRECTION + 2 * line, MASKED | vector);
}

pub fn mask(line: u32) {
    write(REG_REDIRECTION + 2 * line, MASKED | (u32::from(VECTOR_BASE) + line));
}

pub fn unmask(line: u32) {
    write(REG_REDIRECTION + 2 * line, u32::from(VECTOR_BASE) + line);
}

/// The line of an interrupt vector, if it is one of the IOAPIC's.
pub fn line_of(vector: u8) -> Option<u32> {
    let line = u32::from(vector.checked_sub(VECTOR_BASE)?);
    (line < MAX_LINES).then_some(line)
}
