//! The devices fluke-vmm gives a guest beyond its ports (issue 15), and how the guest learns
//! of them: virtio-mmio devices, listed on the kernel command line as Linux does
//! (`virtio_mmio.device=<size>@<base>:<irq>`, one word per device; QEMU's `microvm` machine
//! appends the same words for its own virtio-mmio devices), so the kernel knows no device
//! protocol and no VMM: it hands each listed range out as a device-memory capability and
//! each listed interrupt line as an interrupt capability, to the first process.
//!
//! fluke-vmm's layout: device `i` (in `--drive`/`--channel` order) at
//! [`VIRTIO_MMIO_BASE`] + `i` * [`VIRTIO_MMIO_SIZE`], interrupt line (IOAPIC input, GSI)
//! [`VIRTIO_FIRST_IRQ`] + `i`. Guest RAM ends below it (at most 3 GiB), the IOAPIC and
//! LAPIC windows start above it.

/// The first device's guest-physical base.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Each device's window: the virtio-mmio registers and its configuration space.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The first device's interrupt line (COM1 has line 4).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// The most devices fluke-vmm gives one guest (lines 5..=12: below the IOAPIC's 24).
pub const MAX_VIRTIO_DEVICES: usize = 8;
/// The command-line key of one device.
pub const VIRTIO_MMIO_KEY: &str = "virtio_mmio.device";

/// One `virtio_mmio.device=` word: the window and its interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

impl MmioDevice {
    /// The word fluke-vmm writes: `<size>@<base>:<irq>`, size in bytes with a `K` suffix
    /// when it is a multiple of 1024 (as Linux writes and reads them).
    pub fn word(&self) -> impl core::fmt::Display + '_ {
        struct W<'a>(&'a MmioDevice);
        impl core::fmt::Display for W<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let d = self.0;
                if d.size.is_multiple_of(1024) {
                    write!(
                        f,
                        "{VIRTIO_MMIO_KEY}={}K@{:#x}:{}",
                        d.size / 1024,
                        d.base,
                        d.irq
                    )
                } else {
                    write!(f, "{VIRTIO_MMIO_KEY}={}@{:#x}:{}", d.size, d.base, d.irq)
                }
            }
        }
        W(self)
    }

    /// Parses the value of one word (`<size>[K|M]@<base>:<irq>`, numbers decimal or
    /// `0x` hex); `None` for anything else, an empty window, or one that wraps.
    pub fn parse(value: &str) -> Option<MmioDevice> {
        let (size, rest) = value.split_once('@')?;
        let (base, irq) = rest.split_once(':')?;
        let size = match size.as_bytes().last()? {
            b'K' | b'k' => number(&size[..size.len() - 1])?.checked_mul(1024)?,
            b'M' | b'm' => number(&size[..size.len() - 1])?.checked_mul(1 << 20)?,
            _ => number(size)?,
        };
        let base = number(base)?;
        let irq = u32::try_from(number(irq)?).ok()?;
        base.checked_add(size).filter(|_| size > 0)?;
        Some(MmioDevice { base, size, irq })
    }
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Every device the command line lists, in order (words that do not parse are skipped).
pub fn listed(cmdline: &str) -> impl Iterator<Item = MmioDevice> + '_ {
    crate::cmdline::words(cmdline)
        .filter(|(k, _)| *k == VIRTIO_MMIO_KEY)
        .filter_map(|(_, v)| MmioDevice::parse(v))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::vec::Vec;

    #[test]
    fn words_round_trip_and_linux_forms_parse() {
        let d = MmioDevice {
            base: VIRTIO_MMIO_BASE,
            size: VIRTIO_MMIO_SIZE,
            irq: VIRTIO_FIRST_IRQ,
        };
        let w = format!("{}", d.word());
        assert_eq!(w, "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(listed(&w).collect::<Vec<_>>(), [d]);
        // QEMU microvm's form.
        assert_eq!(
            MmioDevice::parse("512@0xfeb00e00:12"),
            Some(MmioDevice {
                base: 0xfeb0_0e00,
                size: 512,
                irq: 12
            })
        );
        let two = "a virtio_mmio.device=4K@0xd0000000:5 b=c virtio_mmio.device=1M@3489665024:6";
        assert_eq!(listed(two).count(), 2);
    }

    #[test]
    fn bad_words_are_skipped() {
        for bad in [
            "",
            "4K",
            "4K@",
            "@0x1:2",
            "0@0x1000:5",
            "4K@0xffffffffffffffff:5",
            "4K@0x1000:x",
            "4Q@0x1000:5",
            "4K@0x1000:99999999999",
        ] {
            assert_eq!(MmioDevice::parse(bad), None, "{bad}");
        }
    }
}
