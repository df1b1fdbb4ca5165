//! The devices of the command line (issue 15): each `virtio_mmio.device` word is checked
//! against what the physical address space holds (`fluke_kcore::devices`), refused with one
//! console line if it is not safe to hand out, else given to the first process as a
//! device-memory and an interrupt capability under fixed names
//! (`fluke_abi::devices::init_devmem_cap`, `init_irq_cap`); each `fluke.irq` word gives it
//! an interrupt capability for a line no device word names (`init_extra_irq_cap`).

use crate::arch::ioapic;
use crate::bootinfo::BootInfo;
use crate::kernel::{owner_cap, Kernel, ObjRef};
use crate::kprintln;
use alloc::vec::Vec;
use fluke_abi::devices::{self as abi, MAX_DEVICE_WORDS, MAX_IRQ_WORDS};
use fluke_kcore::devices::{check, check_line, Refusal};
use fluke_kcore::memmap::PhysRange;

/// What the boot checks accepted: per device word its window and line (or `None`:
/// refused), per `fluke.irq` word its line.
pub struct Accepted {
    pub devices: Vec<Option<(PhysRange, u32)>>,
    pub lines: Vec<Option<u32>>,
}

/// Checks the command line's device words; prints one line per word refused and per
/// device accepted. `image` are the kernel image, the bundle and the loader's structures.
pub fn check_words(
    cmdline: &str,
    boot: &BootInfo,
    image: &[PhysRange],
    phys_bits: u32,
    kernel_root: u64,
) -> Accepted {
    let mut out = Accepted {
        devices: Vec::new(),
        lines: Vec::new(),
    };
    let any = abi::device_words(cmdline).next().is_some() || abi::irq_words(cmdline).next().is_some();
    if !any {
        return out; // the IOAPIC is not touched
    }
    let lines = match ioapic::init(kernel_root) {
        Ok(n) => n,
        Err(e) => {
            kprintln!("fluke: devices: cannot map the IOAPIC ({e:?}): no interrupt lines");
            0
        }
    };
    let mut reserved: Vec<(PhysRange, &'static str)> = Vec::new();
    for e in boot.memmap() {
        let range = PhysRange {
            start: e.addr,
            end: e.addr.saturating_add(e.size),
        };
        let what = if e.type_ == fluke_abi::boot::E820_RAM {
            "overlaps RAM"
        } else {
            "overlaps a range of the memory map"
        };
        reserved.push((range, what));
    }
    for r in image {
        reserved.push((*r, "overlaps the kernel image, its bundle or boot data"));
    }
    reserved.push((
        PhysRange {
            start: abi::IOAPIC_BASE,
            end: abi::IOAPIC_BASE + abi::IOAPIC_WINDOW,
        },
        "overlaps the IOAPIC",
    ));
    reserved.push((
        PhysRange {
            start: abi::LAPIC_BASE,
            end: abi::LAPIC_BASE + abi::LAPIC_WINDOW,
        },
        "overlaps the local APIC",
    ));
    let mut windows: Vec<PhysRange> = Vec::new();
    let mut taken: Vec<u32> = Vec::new();
    for (i, word) in abi::device_words(cmdline).enumerate() {
        let result = match word {
            _ if i >= MAX_DEVICE_WORDS => Err(Refusal::TooMany),
            Ok(d) => check(&d, &reserved, &windows, phys_bits, lines, &taken),
            Err(_) => Err(Refusal::Malformed),
        };
        match (word, result) {
            (Ok(d), Ok(w)) => {
                windows.push(w);
                taken.push(d.irq);
                kprintln!(
                    "fluke: device {i}: {:#x}..{:#x} line {} (init names {} and {})",
                    w.start,
                    w.end,
                    d.irq,
                    abi::init_devmem_cap(i),
                    abi::init_irq_cap(i)
                );
                out.devices.push(Some((w, d.irq)));
            }
            (word, Err(why)) => {
                let value = match word {
                    Ok(_) => cmdline_value(cmdline, abi::VIRTIO_MMIO_KEY, i),
                    Err(v) => v,
                };
                kprintln!(
                    "fluke: device {i} refused: {}={value}: {}",
                    abi::VIRTIO_MMIO_KEY,
                    why.name()
                );
                out.devices.push(None);
            }
            (Err(_), Ok(_)) => out.devices.push(None), // cannot happen: checked above
        }
    }
    for (j, word) in abi::irq_words(cmdline).enumerate() {
        let result = match word {
            _ if j >= MAX_IRQ_WORDS => Err(Refusal::TooMany),
            Ok(line) => check_line(line, lines, &taken).map(|_| line),
            Err(_) => Err(Refusal::Malformed),
        };
        match result {
            Ok(line) => {
                taken.push(line);
                kprintln!(
                    "fluke: interrupt line {line} (init name {})",
                    abi::init_extra_irq_cap(j)
                );
                out.lines.push(Some(line));
            }
            Err(why) => {
                let value = cmdline_value(cmdline, abi::IRQ_KEY, j);
                kprintln!("fluke: interrupt line refused: {}={value}: {}", abi::IRQ_KEY, why.name());
                out.lines.push(None);
            }
        }
    }
    out
}

/// The value of the `n`-th word with `key`.
fn cmdline_value<'a>(cmdline: &'a str, key: &str, n: usize) -> &'a str {
    fluke_abi::cmdline::words(cmdline)
        .filter(|(k, _)| *k == key)
        .nth(n)
        .map_or("", |(_, v)| v)
}

/// Makes the objects of what was accepted and puts a capability to each in the first
/// process's table under its fixed name.
pub fn give_to_init(k: &mut Kernel, init: crate::kernel::process::Pid, accepted: &Accepted) {
    let put = |k: &mut Kernel, name: u64, object: Option<ObjRef>| {
        let Some(object) = object else {
            kprintln!("fluke: devices: no object for init name {name}");
            return;
        };
        if let Some(space) = k.space(init) {
            if space.caps.insert_at(name as u32, owner_cap(object)).is_err() {
                kprintln!("fluke: devices: init name {name} is taken");
            }
        }
    };
    for (i, d) in accepted.devices.iter().enumerate() {
        let Some((window, line)) = *d else {
            continue;
        };
        let mem = crate::objects::device_memory::make(k, window, line).map(ObjRef::DeviceMemory);
        put(k, abi::init_devmem_cap(i), mem);
        let irq = crate::objects::interrupt::make(k, line).map(ObjRef::Interrupt);
        put(k, abi::init_irq_cap(i), irq);
    }
    for (j, line) in accepted.lines.iter().enumerate() {
        let Some(line) = *line else {
            continue;
        };
        let irq = crate::objects::interrupt::make(k, line).map(ObjRef::Interrupt);
        put(k, abi::init_extra_irq_cap(j), irq);
        if line == fluke_abi::ports::COM1_IRQ {
            crate::console::enable_receive_interrupt();
        }
    }
}
