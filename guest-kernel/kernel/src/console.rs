//! The console. Output only (input is the UART's, read by user programs through the VMM).
//!
//! Two devices: COM1, where each byte is one OUT, an exit to the VMM (33-41 µs on kvm_pvm);
//! and fluke-vmm's paravirtual console (`ports::CONSOLE_PV`), where one OUT hands the VMM a
//! whole record of up to 4 KiB. Each `kprint!` and each `console_write` call is one record,
//! so nothing is held back in the kernel. The PV console is used only when fluke-vmm's
//! command line says `fluke.console=pv` ([`init`]); QEMU and any other VMM get the UART.
//! The UART's transmit-empty bit is not polled: the UARTs of fluke-vmm (vm-superio) and
//! QEMU accept every write at once, and a poll would double the exits.

use crate::arch::cpu;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use fluke_abi::ports::{pv_console, COM1, CONSOLE_PV};

/// One record for the VMM: the layout of `ports::pv_console`, a page of its own.
#[repr(C, align(4096))]
struct Record {
    len: u32,
    /// Whose bytes these are (`pv_console::FROM_KERNEL` or `FROM_PROGRAM`).
    source: u32,
    bytes: [u8; pv_console::MAX_LEN],
}

/// The record being filled, and who fills it.
struct PvConsole {
    /// Whether the PV console is in use (set once at boot by [`init`]).
    on: AtomicBool,
    /// Taken by the one print in progress; a print nested in it (a panic while formatting)
    /// finds it taken and writes to the UART instead.
    busy: AtomicBool,
    record: UnsafeCell<Record>,
}

// SAFETY: `record` is reached only by the holder of `busy`, taken with an atomic swap, so
// there is never more than one reference to it, whichever CPU or interrupt prints.
unsafe impl Sync for PvConsole {}

static PV: PvConsole = PvConsole {
    on: AtomicBool::new(false),
    busy: AtomicBool::new(false),
    record: UnsafeCell::new(Record {
        len: 0,
        source: pv_console::FROM_KERNEL,
        bytes: [0; pv_console::MAX_LEN],
    }),
};

/// Chooses the console from the command line: the PV one if fluke-vmm offers it and the
/// record's physical address fits the 32-bit OUT.
pub fn init(cmdline: &str) {
    let wanted = fluke_abi::cmdline::get(cmdline, fluke_abi::cmdline::CONSOLE) == Some("pv");
    let fits = u32::try_from(record_phys()).is_ok();
    PV.on.store(wanted && fits, Ordering::Relaxed);
}

fn record_phys() -> u64 {
    crate::mm::physmap::kernel_virt_to_phys(PV.record.get() as u64)
}

/// Exclusive use of the record while it lives (see [`PvConsole::busy`]).
struct Held<'a> {
    record: &'a mut Record,
}

impl Held<'_> {
    fn take(source: u32) -> Option<Held<'static>> {
        if !PV.on.load(Ordering::Relaxed) || PV.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: `busy` was false and is ours until this `Held` drops: the only reference.
        let record = unsafe { &mut *PV.record.get() };
        record.len = 0;
        record.source = source;
        Some(Held { record })
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let len = self.record.len as usize;
            let n = bytes.len().min(pv_console::MAX_LEN - len);
            self.record.bytes[len..len + n].copy_from_slice(&bytes[..n]);
            self.record.len += n as u32;
            bytes = &bytes[n..];
            if self.record.len as usize == pv_console::MAX_LEN {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.record.len == 0 {
            return;
        }
        // SAFETY: the port is the kernel's console device; the record is complete in memory
        // before the OUT (`out32_after_writes` is a compiler barrier), and the VMM reads it
        // during the exit, before the kernel runs on.
        unsafe { cpu::out32_after_writes(CONSOLE_PV, record_phys() as u32) };
        self.record.len = 0;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.flush();
        PV.busy.store(false, Ordering::Release);
    }
}

impl fmt::Write for Held<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// COM1, a byte at a time.
struct Uart;

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        uart_bytes(s.as_bytes());
        Ok(())
    }
}

fn uart_bytes(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: COM1 is the kernel's console device and nothing else drives it.
        unsafe { cpu::outb(COM1, b) };
    }
}

/// Turns on COM1's received-data interrupt (IER bit 0, and OUT2, which gates a 16550's
/// interrupt output on real hardware): the kernel's console has no input of its own, and a
/// program holding an interrupt capability for COM1's line (`fluke.irq=4`) is then told
/// when input arrives. The bytes stay in the UART (reading them is port I/O, the kernel's).
pub fn enable_receive_interrupt() {
    // SAFETY: COM1 is the kernel's console device; IER and MCR change only when it
    // interrupts, not what it sends.
    unsafe {
        cpu::outb(COM1 + 4, 0x0b); // MCR: DTR, RTS, OUT2
        cpu::outb(COM1 + 1, 0x01); // IER: received data available
    }
    RECEIVE_INTERRUPT.store(true, Ordering::Relaxed);
}

/// COM1's received-data interrupt is on (`enable_receive_interrupt`).
static RECEIVE_INTERRUPT: AtomicBool = AtomicBool::new(false);

/// Interrupt line `line` was acknowledged (and unmasked). If it is COM1's and its receive
/// interrupt is on, the UART's side of the interrupt is serviced, as a driver of the UART
/// would (it is the kernel's: port I/O): the receive FIFO is read empty, which clears the
/// pending received-data condition, so the next input raises the line again. The bytes
/// are dropped: the kernel has no console input, and the interrupt only tells a program
/// that input arrived. Unmasked first, drained after, so input arriving in between still
/// interrupts.
pub fn line_acknowledged(line: u32) {
    if line != fluke_abi::ports::COM1_IRQ || !RECEIVE_INTERRUPT.load(Ordering::Relaxed) {
        return;
    }
    for _ in 0..64 {
        // SAFETY: COM1 is the kernel's; reading LSR and RBR only consumes input.
        unsafe {
            if cpu::inb(COM1 + 5) & 1 == 0 {
                break;
            }
            let _ = cpu::inb(COM1);
        }
    }
}

/// A console write in pieces that the VMM gets as few records as fit (a `console_write`
/// call copying its bytes in chunks): handed on when it drops.
pub struct Writer(Option<Held<'static>>);

impl Writer {
    /// A program's `console_write`.
    pub fn begin() -> Writer {
        Writer(Held::take(pv_console::FROM_PROGRAM))
    }

    pub fn write(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            Some(held) => held.push(bytes),
            None => uart_bytes(bytes),
        }
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    match Held::take(pv_console::FROM_KERNEL) {
        Some(mut held) => {
            let _ = fmt::Write::write_fmt(&mut held, args);
        }
        None => {
            let _ = fmt::Write::write_fmt(&mut Uart, args);
        }
    }
}

#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => ($crate::console::_print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! kprintln {
    () => ($crate::kprint!("\n"));
    ($($arg:tt)*) => ($crate::kprint!("{}\n", format_args!($($arg)*)));
}
