//! The guest's devices: on port I/O the COM1 UART ([`serial`]) and the VMM's own ports
//! ([`debug_exit`]: exit status, boot timer, benchmark counter; [`pv_console`], which the
//! run loop serves itself because it reads guest memory); on MMIO the virtio devices
//! ([`virtio`]: `--drive`) and the channels to other VMs ([`channel`]: `--channel`). [`Devices`] dispatches a port access to the device that owns
//! the port, and an MMIO access to the device whose window holds it.

pub mod channel;
pub mod debug_exit;
pub mod pv_console;
pub mod serial;
pub mod virtio;

use fluke_abi::ports::{BENCH, BOOT_TIMER, COM1, COM1_LEN, DEBUG_EXIT};

use self::debug_exit::{BenchPort, BootTimer};
use self::serial::SerialDevice;

/// What the run loop does after a port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoAction {
    /// Resume the guest.
    Continue,
    /// The guest wrote its exit status.
    Exit(u8),
    /// No device owns the port.
    Unknown,
}

/// All devices of the VM.
pub struct Devices {
    pub serial: SerialDevice,
    pub boot_timer: BootTimer,
    pub bench: BenchPort,
    pub mmio: virtio::MmioBus,
    /// The channels to other VMs (`--channel`), whose register pages are in `mmio`.
    pub channels: Vec<channel::Channel>,
}

/// `port - COM1` if `port` is one of the UART's registers.
fn com1_offset(port: u16) -> Option<u8> {
    port.checked_sub(COM1)
        .filter(|off| *off < COM1_LEN)
        .and_then(|off| u8::try_from(off).ok())
}

impl Devices {
    /// A guest OUT of `data` to `port`. A `rep outs` delivers several bytes for one port.
    pub fn io_out(&mut self, port: u16, data: &[u8]) -> IoAction {
        if let Some(offset) = com1_offset(port) {
            self.serial.write(offset, data);
            return IoAction::Continue;
        }
        let Some(&value) = data.first() else {
            return IoAction::Continue;
        };
        match port {
            DEBUG_EXIT => IoAction::Exit(value),
            BOOT_TIMER => {
                self.boot_timer.mark(value);
                IoAction::Continue
            }
            BENCH => {
                self.bench.write(value);
                IoAction::Continue
            }
            _ => IoAction::Unknown,
        }
    }

    /// A guest IN from `port`; fills `data` and returns whether a device owns the port. The
    /// VMM's own ports are write-only.
    pub fn io_in(&mut self, port: u16, data: &mut [u8]) -> bool {
        match com1_offset(port) {
            Some(offset) => {
                self.serial.read(offset, data);
                true
            }
            None => false,
        }
    }
}

/// The `key[=value]` options of a comma-separated device spec (`--drive`, `--channel`), in
/// order: each key with its value, or `None` for a bare key.
pub fn spec_options(spec: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    spec.split(',').map(|item| match item.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (item, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com1_range() {
        assert_eq!(com1_offset(0x3f8), Some(0));
        assert_eq!(com1_offset(0x3ff), Some(7));
        assert_eq!(com1_offset(0x400), None);
        assert_eq!(com1_offset(0x3f7), None);
        assert_eq!(com1_offset(0), None);
    }

    #[test]
    fn dispatch() {
        let (serial, _irq) = SerialDevice::new(serial::Output::Null).unwrap();
        let mut d = Devices {
            serial,
            boot_timer: BootTimer::new(std::time::Instant::now(), false),
            bench: BenchPort::default(),
            mmio: Default::default(),
            channels: Vec::new(),
        };
        assert_eq!(d.io_out(DEBUG_EXIT, &[42]), IoAction::Exit(42));
        assert_eq!(d.io_out(0x80, &[1]), IoAction::Unknown);
        assert_eq!(d.io_out(COM1, b"hi"), IoAction::Continue);
        assert_eq!(d.io_out(BOOT_TIMER, &[1]), IoAction::Continue);
        assert!(d.boot_timer.kernel_entry().is_some());
        let mut b = [0u8; 1];
        assert!(d.io_in(COM1 + 5, &mut b)); // LSR: THR empty
        assert_ne!(b[0] & 0x20, 0);
        assert!(!d.io_in(DEBUG_EXIT, &mut b));
    }
}
