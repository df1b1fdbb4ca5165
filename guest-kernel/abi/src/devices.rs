//! The devices fluke-vmm gives a guest beyond its ports (issue 15), and how the guest learns
//! of them: virtio-mmio devices, listed on the kernel command line as Linux does
//! (`virtio_mmio.device=<size>@<base>:<irq>`, one word per device; QEMU's `microvm` machine
//! appends the same words for its own virtio-mmio devices), so the kernel knows no device
//! protocol and no VMM: it hands each listed range out as a device-memory capability and
//! each listed interrupt line as an interrupt capability, to the first process.
//!
//! fluke-vmm's layout: device `i` (the `--drive`s in order, then the `--channel`s: a
//! channel's window is described in [`crate::channel`]) at
//! [`VIRTIO_MMIO_BASE`] + `i` * [`VIRTIO_MMIO_SIZE`], interrupt line (IOAPIC input, GSI)
//! [`VIRTIO_FIRST_IRQ`] + `i`. Guest RAM ends below it (at most 3 GiB), the IOAPIC and
//! LAPIC windows start above it.
//!
//! A fluke-vmm device's window is its virtio-mmio registers (the first
//! [`VIRTIO_MMIO_REGS`] bytes) followed by its **DMA area**, memory of the device's own: its
//! virtqueues and every buffer they point at must lie there, and the device refuses any
//! other address. A driver is a user program, and without an IOMMU a device that could
//! reach guest RAM would let whoever holds the device's capability write anywhere, the
//! kernel included; confined to its window, the device reaches only what the capability
//! already reaches (an IOMMU's effect, given by the VMM). A driver maps the window as two
//! parts: the registers uncached, the DMA area (from [`VIRTIO_DMA_OFFSET`]) `DEVMEM_CACHED`.

/// The first device's guest-physical base.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Each device's window: the virtio-mmio registers and configuration space, then its DMA
/// area.
pub const VIRTIO_MMIO_SIZE: u64 = 0x10_0000;
/// The registers and configuration space: the window's first page.
pub const VIRTIO_MMIO_REGS: u64 = 0x1000;
/// The DMA area: the rest of the window, from this offset.
pub const VIRTIO_DMA_OFFSET: u64 = VIRTIO_MMIO_REGS;
/// The first device's interrupt line (COM1 has line 4).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// The most devices fluke-vmm gives one guest (lines 5..=12: below the IOAPIC's 24).
pub const MAX_VIRTIO_DEVICES: usize = 8;
/// The command-line key of one device.
pub const VIRTIO_MMIO_KEY: &str = "virtio_mmio.device";

/// The IOAPIC's register window (fluke-vmm's in-kernel irqchip, QEMU's `pc`): never a
/// device window a program can be given.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const IOAPIC_WINDOW: u64 = 0x0010_0000;
/// The local APIC's window (and the MSI range after it).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
pub const LAPIC_WINDOW: u64 = 0x0010_0000;

/// How the first process finds its devices: fixed capability names, counting down from
/// below `INIT_BENCH_CAP` (255). The `i`-th `virtio_mmio.device` word of the command line
/// (counting every word with that key, refused ones too, so the names follow from the
/// command line alone) gives a device-memory capability at [`init_devmem_cap`]`(i)` and an
/// interrupt capability for its line at [`init_irq_cap`]`(i)`; a refused word leaves both
/// names empty. `obj_get_state` on a name says what is there
/// (`[DEVICE_MEMORY, base, size, line]`, `[INTERRUPT, line, ..]`).
pub const MAX_DEVICE_WORDS: usize = 16;
pub const fn init_devmem_cap(i: usize) -> u64 {
    crate::syscall::INIT_BENCH_CAP - 1 - 2 * i as u64
}
pub const fn init_irq_cap(i: usize) -> u64 {
    crate::syscall::INIT_BENCH_CAP - 2 - 2 * i as u64
}

/// `fluke.irq=<line>`: an interrupt line of a device the command line does not describe
/// otherwise (under fluke-vmm and QEMU, COM1's receive interrupt is line
/// [`crate::ports::COM1_IRQ`]). The `j`-th such word gives the first process an interrupt
/// capability at [`init_extra_irq_cap`]`(j)`. For COM1's line the kernel, whose console
/// the UART is, turns on the UART's received-data interrupt.
pub const IRQ_KEY: &str = "fluke.irq";
pub const MAX_IRQ_WORDS: usize = 8;
pub const fn init_extra_irq_cap(j: usize) -> u64 {
    init_devmem_cap(MAX_DEVICE_WORDS) - j as u64
}

/// Every `virtio_mmio.device` word of the command line, in order, with its value: parsed,
/// or `Err(value)` for one that does not parse (the kernel refuses it at boot).
pub fn device_words(cmdline: &str) -> impl Iterator<Item = Result<MmioDevice, &str>> + '_ {
    crate::cmdline::words(cmdline)
        .filter(|(k, _)| *k == VIRTIO_MMIO_KEY)
        .map(|(_, v)| MmioDevice::parse(v).ok_or(v))
}

/// Every `fluke.irq` word's value, in order: the line, or `Err(value)`.
pub fn irq_words(cmdline: &str) -> impl Iterator<Item = Result<u32, &str>> + '_ {
    crate::cmdline::words(cmdline)
        .filter(|(k, _)| *k == IRQ_KEY)
        .map(|(_, v)| number(v).and_then(|n| u32::try_from(n).ok()).ok_or(v))
}

/// One `virtio_mmio.device=` word: the window and its interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

impl MmioDevice {
    /// The word fluke-vmm writes: `<size>@<base>:<irq>`, size in bytes with an `M` or `K`
    /// suffix when it is a multiple of one (as Linux writes and reads them).
    pub fn word(&self) -> impl core::fmt::Display + '_ {
        struct W<'a>(&'a MmioDevice);
        impl core::fmt::Display for W<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let d = self.0;
                if d.size.is_multiple_of(1 << 20) {
                    write!(
                        f,
                        "{VIRTIO_MMIO_KEY}={}M@{:#x}:{}",
                        d.size >> 20,
                        d.base,
                        d.irq
                    )
                } else if d.size.is_multiple_of(1024) {
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
        assert_eq!(w, "virtio_mmio.device=1M@0xd0000000:5");
        assert_eq!(listed(&w).collect::<Vec<_>>(), [d]);
        let small = MmioDevice { size: 0x1000, ..d };
        assert_eq!(
            format!("{}", small.word()),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
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
    fn init_names_count_down_below_the_bench_cap_without_overlap() {
        assert_eq!(init_devmem_cap(0), 254);
        assert_eq!(init_irq_cap(0), 253);
        assert_eq!(init_irq_cap(MAX_DEVICE_WORDS - 1), 255 - 2 * 16);
        assert_eq!(
            init_extra_irq_cap(0),
            init_irq_cap(MAX_DEVICE_WORDS - 1) - 1
        );
        assert!(init_extra_irq_cap(MAX_IRQ_WORDS - 1) > 200);
        let w =
            "fluke.irq=4 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=junk fluke.irq=x";
        assert_eq!(device_words(w).count(), 2);
        assert_eq!(device_words(w).nth(1), Some(Err("junk")));
        assert_eq!(irq_words(w).collect::<Vec<_>>(), [Ok(4), Err("x")]);
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
