//! The serial console (COM1). Output only: each byte is one OUT, an exit to the VMM
//! (33-41 µs on kvm_pvm), so the kernel prints little. The transmit-empty bit is not polled:
//! the UARTs of fluke-vmm (vm-superio) and QEMU accept every write at once, and a poll would
//! double the exits.

use crate::arch::cpu;
use core::fmt;
use fluke_abi::ports::COM1;

pub struct Console;

impl Console {
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: COM1 is the kernel's console device and nothing else drives it.
            unsafe { cpu::outb(COM1, b) };
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = fmt::Write::write_fmt(&mut Console, args);
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
