//! I/O ports the guest kernel uses. Each OUT is an exit to the VMM (33-41 µs on kvm_pvm),
//! so only boot, console and exit paths use them.

/// COM1, a 16550 UART (vm-superio in fluke-vmm, QEMU's `-serial`).
pub const COM1: u16 = 0x3f8;
/// Number of registers of the UART.
pub const COM1_LEN: u16 = 8;
/// Legacy IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;

/// QEMU's `isa-debug-exit` device, emulated by fluke-vmm too: the guest writes its exit status
/// as one byte. fluke-vmm exits with the value; QEMU exits with `(value << 1) | 1`.
pub const DEBUG_EXIT: u16 = 0xf4;

/// Reserved for fluke-vmm's gdb stub, never used by the guest: on kvm_pvm a breakpoint is
/// `out %al, $GDB_BREAKPOINT` patched into kernel code (vmm/README.md, "gdb stub"). An 8-bit
/// port, so that the instruction is two bytes.
pub const GDB_BREAKPOINT: u16 = 0xf5;

/// Firecracker-style boot timer: the guest writes a [`BootMark`] byte; fluke-vmm logs the time
/// since its process started. Unassigned on QEMU, where the write is ignored.
pub const BOOT_TIMER: u16 = 0x440;

/// Benchmark port: writes cost one full exit to the VMM and back, handled as a no-op counter.
/// A write of [`BENCH_BEGIN`] / [`BENCH_END`] brackets a measured run.
pub const BENCH: u16 = 0x441;
pub const BENCH_BEGIN: u8 = 1;
pub const BENCH_END: u8 = 2;
pub const BENCH_TICK: u8 = 0;

/// fluke-vmm's paravirtual console: the guest writes (one 32-bit OUT) the guest-physical
/// address, below 4 GiB and 8-aligned, of a [`pv_console`] record, and the VMM copies its
/// bytes to the same sink as the UART's: one exit per line or buffer instead of one per
/// byte. The kernel uses it only when fluke-vmm's command line says so
/// ([`crate::cmdline::CONSOLE`]); QEMU has no device here.
pub const CONSOLE_PV: u16 = 0x442;

/// The record the guest hands to [`CONSOLE_PV`].
pub mod pv_console {
    /// `len: u32` little-endian, then `source: u32` ([`FROM_KERNEL`] or [`FROM_PROGRAM`]),
    /// then `len` bytes of output.
    pub const HEADER: usize = 8;
    /// The kernel's own output (its reports among it).
    pub const FROM_KERNEL: u32 = 0;
    /// What a program wrote with `console_write`: fluke-vmm never reads a fault report
    /// out of it, so a program cannot make the VMM vouch for a report it printed itself.
    pub const FROM_PROGRAM: u32 = 1;
    /// The most bytes one record carries (a record fits a 4 KiB page).
    pub const MAX_LEN: usize = 4096 - HEADER;
}

/// Boot milestones written to [`BOOT_TIMER`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMark {
    /// First instruction of the kernel's 64-bit Rust entry.
    KernelEntry = 1,
    /// The kernel has finished initialising and starts the first program (init).
    InitStart = 123,
}

impl BootMark {
    pub fn from_byte(b: u8) -> Option<BootMark> {
        match b {
            1 => Some(BootMark::KernelEntry),
            123 => Some(BootMark::InitStart),
            _ => None,
        }
    }
}
