//! Boot: validates an image, loads it into guest memory with linux-loader, writes the PVH
//! boot information (`fluke_abi::boot` documents the layout) and puts the vCPU in the PVH
//! entry state.
//!
//! Besides the structures listed in `fluke_abi::boot`, the VMM writes a four-entry GDT at
//! [`BOOT_GDT_GPA`] (below the start info, in memory the kernel never allocates) because
//! GDTR points at it on entry: null, null, flat 32-bit code at selector 0x10, flat data at
//! selector 0x18 (the Linux/PVH selector layout).

use std::io::Cursor;
use std::ops::Range;

use fluke_abi::boot::{
    CMDLINE_GPA, CMDLINE_MAX, E820_RAM, EBDA_START, KERNEL_PHYS_LOAD, MEMMAP_GPA, MODLIST_GPA,
    START_INFO_GPA, XEN_HVM_START_MAGIC,
};
use fluke_abi::cmdline::{CONSOLE, PLATFORM, TSC_KHZ};
use fluke_abi::devices::MmioDevice;
use fluke_abi::Platform;
use fluke_image::elf::{Elf, ProgramHeader, PF_X};
use fluke_image::image::Image;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf as ElfLoader, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

// TODO(fluke-abi): the boot GDT address and selectors are part of the boot contract too.
/// Guest-physical address of the boot GDT.
pub const BOOT_GDT_GPA: u64 = 0x500;
/// Selector of the flat 32-bit code segment.
pub const BOOT_CS: u16 = 0x10;
/// Selector of the flat data segment.
pub const BOOT_DS: u16 = 0x18;
/// The GDT: null, null, code (base 0, limit 4 GiB, 32-bit, execute/read, accessed),
/// data (base 0, limit 4 GiB, read/write, accessed).
const BOOT_GDT: [u64; 4] = [0, 0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const MIB: u64 = 1 << 20;

/// What the VMM needs to know about an image after validating it; independent of the
/// image's bytes.
#[derive(Clone, Debug)]
pub struct ImageLayout {
    /// 32-bit PVH entry point (physical).
    pub pvh_entry: u32,
    /// End of the highest segment in guest-physical memory.
    pub phys_end: u64,
    /// The bundle segment: (paddr, size in bytes).
    pub bundle: (u64, u64),
    /// Where the kernel's code lives, for the port I/O RIP check.
    pub text: KernelText,
}

/// Executable ranges of the kernel, both as linked (virtual) and as loaded (physical: the
/// 32-bit boot code runs at physical addresses with paging off), each with the physical
/// address it starts at so that the VMM can read the code there.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelText {
    ranges: Vec<(Range<u64>, u64)>,
}

impl KernelText {
    /// Collects the `PF_X` segments among `segments`.
    pub fn from_segments(segments: impl IntoIterator<Item = ProgramHeader>) -> KernelText {
        let mut ranges = Vec::new();
        for ph in segments.into_iter().filter(|ph| ph.flags & PF_X != 0) {
            for start in [ph.vaddr, ph.paddr] {
                let end = start.saturating_add(ph.memsz);
                let r = (start..end, ph.paddr);
                if !r.0.is_empty() && !ranges.contains(&r) {
                    ranges.push(r);
                }
            }
        }
        KernelText { ranges }
    }

    pub fn contains(&self, rip: u64) -> bool {
        self.range_of(rip).is_some()
    }

    /// Whether this could be an image's text: a few non-empty ranges (a restore checks a
    /// snapshot's before trusting it for the port I/O check).
    pub fn is_plausible(&self) -> bool {
        !self.ranges.is_empty()
            && self.ranges.len() <= 16
            && self
                .ranges
                .iter()
                .all(|(r, phys)| r.start < r.end && phys.checked_add(r.end - r.start).is_some())
    }

    /// The executable range holding `addr`, and the guest-physical address of `addr`.
    pub fn range_of(&self, addr: u64) -> Option<(Range<u64>, u64)> {
        self.ranges
            .iter()
            .find(|(r, _)| r.contains(&addr))
            .and_then(|(r, phys)| Some((r.clone(), phys.checked_add(addr - r.start)?)))
    }

    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.ranges.iter().map(|(r, _)| r.clone()).collect()
    }
}

/// Parses and validates an image. `what` names it in error messages.
pub fn validate(bytes: &[u8], what: &str) -> Result<ImageLayout> {
    let image = Image::parse(bytes).map_err(|e| Error::InvalidImage {
        what: what.to_string(),
        msg: e.to_string(),
    })?;
    // Every program's data too (~0.1 ms a MB here): the kernel checks a program only when
    // it first loads it, and a corrupt one should be refused before the boot.
    image
        .bundle()
        .verify_programs()
        .map_err(|e| Error::InvalidImage {
            what: what.to_string(),
            msg: e.to_string(),
        })?;
    let unsupported = |msg: String| Error::UnsupportedImage {
        what: what.to_string(),
        msg,
    };
    // linux-loader loads every PT_LOAD of the file, so check all of them (not only the ones
    // the image format knows about) against the VMM's own boot structures.
    let elf = Elf::parse(bytes).map_err(|e| Error::InvalidImage {
        what: what.to_string(),
        msg: e.to_string(),
    })?;
    for ph in elf.load_segments() {
        if ph.paddr < KERNEL_PHYS_LOAD {
            return Err(unsupported(format!(
                "a segment is loaded at {:#x}, below {KERNEL_PHYS_LOAD:#x} where the VMM keeps its boot structures",
                ph.paddr
            )));
        }
    }
    let bundle = image.bundle_segment();
    Ok(ImageLayout {
        pvh_entry: image.pvh_entry(),
        phys_end: image.phys_end(),
        bundle: (bundle.paddr, bundle.filesz),
        text: KernelText::from_segments(image.kernel_segments()),
    })
}

/// What `run` checks before it boots an image, for `inspect`: [`validate`], then a load
/// into scratch memory as large as the image needs (lazily mapped, so cheap), which is
/// where linux-loader's own reading of the ELF (its PVH note included) is compared with
/// fluke-image's.
pub fn check_loads(bytes: &[u8], what: &str) -> Result<ImageLayout> {
    let layout = validate(bytes, what)?;
    let size = layout.phys_end.div_ceil(MIB).max(2) * MIB;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).map_err(|e| {
        Error::GuestMemory {
            mib: size / MIB,
            msg: e.to_string(),
        }
    })?;
    let cmdline = build_cmdline(Platform::Kvm, None, &[], "")?;
    load(&mem, size, bytes, &layout, &cmdline).map_err(|e| match e {
        Error::UnsupportedImage { msg, .. } => Error::UnsupportedImage {
            what: what.to_string(),
            msg,
        },
        other => other,
    })?;
    Ok(layout)
}

/// Checks that an image ending at `phys_end` fits into `mem_bytes` of guest RAM.
pub fn check_memory_fit(phys_end: u64, mem_bytes: u64) -> Result<()> {
    if phys_end <= mem_bytes {
        Ok(())
    } else {
        Err(Error::MemoryTooSmall {
            need_mib: phys_end.div_ceil(MIB),
            have_mib: mem_bytes / MIB,
        })
    }
}

/// The kernel command line: what the VMM passes (one `virtio_mmio.device=` word per
/// device among it), then the user's `--cmdline`.
pub fn build_cmdline(
    platform: Platform,
    tsc_khz: Option<u32>,
    devices: &[MmioDevice],
    extra: &str,
) -> Result<String> {
    // Our paravirtual console first: a user's `fluke.console=uart` after it wins.
    let mut cmdline = format!("{PLATFORM}={} {CONSOLE}=pv", platform.name());
    if let Some(khz) = tsc_khz {
        cmdline.push_str(&format!(" {TSC_KHZ}={khz}"));
    }
    for device in devices {
        cmdline.push_str(&format!(" {}", device.word()));
    }
    let extra = extra.trim();
    if !extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    if cmdline.contains('\0') {
        return Err(Error::CmdlineNul);
    }
    // CMDLINE_MAX includes the terminating NUL.
    if cmdline.len() >= CMDLINE_MAX {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    Ok(cmdline)
}

/// The PVH memory map for `mem_bytes` of RAM.
pub fn memory_map(mem_bytes: u64) -> Vec<hvm_memmap_table_entry> {
    vec![
        hvm_memmap_table_entry {
            addr: 0,
            size: EBDA_START,
            type_: E820_RAM,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: KERNEL_PHYS_LOAD,
            size: mem_bytes.saturating_sub(KERNEL_PHYS_LOAD),
            type_: E820_RAM,
            reserved: 0,
        },
    ]
}

/// Loads a validated image and writes the boot information. `mem_bytes` is the size of
/// `mem` (a single region at GPA 0).
pub fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    bytes: &[u8],
    layout: &ImageLayout,
    cmdline: &str,
) -> Result<()> {
    check_memory_fit(layout.phys_end, mem_bytes)?;
    let result = ElfLoader::load(mem, None, &mut Cursor::new(bytes), None)?;
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) if addr.0 == u64::from(layout.pvh_entry) => {}
        other => {
            return Err(Error::UnsupportedImage {
                what: "the image".into(),
                msg: format!(
                    "linux-loader and fluke-image disagree about the PVH entry ({other} vs {:#x})",
                    layout.pvh_entry
                ),
            })
        }
    }

    for (i, desc) in BOOT_GDT.iter().enumerate() {
        let addr = BOOT_GDT_GPA + 8 * i as u64;
        mem.write_obj(*desc, GuestAddress(addr))
            .map_err(|e| Error::GuestWrite {
                what: "the boot GDT",
                msg: e.to_string(),
            })?;
    }

    let mut bytes_nul = Vec::with_capacity(cmdline.len() + 1);
    bytes_nul.extend_from_slice(cmdline.as_bytes());
    bytes_nul.push(0);
    mem.write_slice(&bytes_nul, GuestAddress(CMDLINE_GPA))
        .map_err(|e| Error::GuestWrite {
            what: "the kernel command line",
            msg: e.to_string(),
        })?;

    let memmap = memory_map(mem_bytes);
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: 1,
        modlist_paddr: MODLIST_GPA,
        cmdline_paddr: CMDLINE_GPA,
        rsdp_paddr: 0,
        memmap_paddr: MEMMAP_GPA,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    let module = hvm_modlist_entry {
        paddr: layout.bundle.0,
        size: layout.bundle.1,
        cmdline_paddr: 0,
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, GuestAddress(START_INFO_GPA));
    params.set_sections(&memmap, GuestAddress(MEMMAP_GPA));
    params.set_modules(&[module], GuestAddress(MODLIST_GPA));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;
    Ok(())
}

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The PVH entry state of the system registers: 32-bit protected mode, paging off, flat
/// segments, GDTR at the boot GDT and an empty IDT (any exception before the kernel loads
/// its own IDT triple-faults, which the VMM reports as a crash).
pub fn entry_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.cs = flat_segment(BOOT_CS, 0xb);
    let data = flat_segment(BOOT_DS, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = BOOT_GDT_GPA;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// The PVH entry state of the general registers.
pub fn entry_regs(pvh_entry: u32) -> kvm_regs {
    kvm_regs {
        rip: u64::from(pvh_entry),
        rbx: START_INFO_GPA,
        rflags: 2,
        ..Default::default()
    }
}

/// Puts `vcpu` in the PVH entry state for `pvh_entry`.
pub fn setup_vcpu(vcpu: &VcpuFd, pvh_entry: u32) -> Result<()> {
    let sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&entry_sregs(sregs))
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&entry_regs(pvh_entry))
        .map_err(Error::kvm("KVM_SET_REGS"))?;
    // x87 control word and MXCSR as after FNINIT / reset.
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluke_abi::boot::LOW_MEMORY_END;
    use fluke_image::elf::{PF_R, PF_W};

    fn ph(flags: u32, vaddr: u64, paddr: u64, memsz: u64) -> ProgramHeader {
        ProgramHeader {
            p_type: fluke_image::elf::PT_LOAD,
            flags,
            offset: 0,
            vaddr,
            paddr,
            filesz: memsz,
            memsz,
            align: 0x1000,
        }
    }

    #[test]
    fn cmdline_starts_with_platform_and_appends_user_text() {
        assert_eq!(
            build_cmdline(Platform::KvmPvm, None, &[], "").unwrap(),
            "fluke.platform=kvm_pvm fluke.console=pv"
        );
        assert_eq!(
            build_cmdline(Platform::Kvm, None, &[], "  fluke.bench=exit_roundtrip ").unwrap(),
            "fluke.platform=kvm fluke.console=pv fluke.bench=exit_roundtrip"
        );
        let c = build_cmdline(Platform::Kvm, Some(2_500_000), &[], "a=b").unwrap();
        assert_eq!(fluke_abi::cmdline::get(&c, PLATFORM), Some("kvm"));
        // The user's choice of console comes after ours, and the last word wins.
        let uart = build_cmdline(Platform::Kvm, None, &[], "fluke.console=uart").unwrap();
        assert_eq!(fluke_abi::cmdline::get(&uart, CONSOLE), Some("uart"));
        assert_eq!(fluke_abi::cmdline::get(&c, TSC_KHZ), Some("2500000"));
        assert!(matches!(
            build_cmdline(Platform::Kvm, None, &[], "x\0y"),
            Err(Error::CmdlineNul)
        ));
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            build_cmdline(Platform::Kvm, None, &[], &long),
            Err(Error::CmdlineTooLong { .. })
        ));
        let fits = "x".repeat(CMDLINE_MAX - 1 - "fluke.platform=kvm fluke.console=pv ".len());
        assert!(build_cmdline(Platform::Kvm, None, &[], &fits).is_ok());
    }

    #[test]
    fn each_device_gets_a_word_before_the_user_text() {
        let devices: Vec<MmioDevice> = (0..2).map(crate::devices::virtio::slot).collect();
        let c = build_cmdline(Platform::Kvm, None, &devices, "a=b").unwrap();
        assert_eq!(
            c,
            "fluke.platform=kvm fluke.console=pv virtio_mmio.device=1M@0xd0000000:5 \
             virtio_mmio.device=1M@0xd0100000:6 a=b"
        );
        assert_eq!(fluke_abi::devices::listed(&c).collect::<Vec<_>>(), devices);
        // The words count towards the length limit.
        let fits = "x".repeat(CMDLINE_MAX - 1 - "fluke.platform=kvm fluke.console=pv ".len());
        assert!(matches!(
            build_cmdline(Platform::Kvm, None, &devices, &fits),
            Err(Error::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn memory_fit() {
        assert!(check_memory_fit(0x20_0000, 2 * MIB).is_ok());
        let e = check_memory_fit(0x20_0001, 2 * MIB).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the image needs 3 MiB of guest memory but --memory is 2 MiB"
        );
    }

    #[test]
    fn memory_map_covers_low_ram_and_ram_above_the_kernel_base() {
        let m = memory_map(128 * MIB);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].addr, m[0].size), (0, EBDA_START));
        assert_eq!(m[1].addr, LOW_MEMORY_END);
        assert_eq!(m[1].addr + m[1].size, 128 * MIB);
        assert!(m.iter().all(|e| e.type_ == E820_RAM));
    }

    #[test]
    fn kernel_text_has_virtual_and_physical_ranges_of_executable_segments() {
        let text = KernelText::from_segments([
            ph(PF_R | PF_X, 0xffff_ffff_8010_0000, 0x10_0000, 0x2000),
            ph(PF_R | PF_W, 0xffff_ffff_8010_2000, 0x10_2000, 0x1000),
        ]);
        assert!(text.contains(0x10_0000));
        assert!(text.contains(0x10_1fff));
        assert!(!text.contains(0x10_2000));
        assert!(text.contains(0xffff_ffff_8010_0abc));
        assert!(!text.contains(0xffff_ffff_8010_2000));
        assert!(!text.contains(0));
        assert_eq!(text.ranges().len(), 2);
        // Identity-mapped segments appear once.
        let id = KernelText::from_segments([ph(PF_X, 0x10_0000, 0x10_0000, 0x10)]);
        assert_eq!(id.ranges().len(), 1);
    }

    #[test]
    fn a_crafted_text_whose_physical_end_wraps_is_implausible_and_never_overflows() {
        // What a hostile snapshot's vmstate could hold (it is deserialised, not built from
        // an ELF): a range whose physical address plus length passes 2^64.
        let text = KernelText {
            ranges: vec![(0x1000..0x3000, u64::MAX - 0x10)],
        };
        assert!(!text.is_plausible());
        assert_eq!(text.range_of(0x2fff), None); // no panic in debug, no wrap in release
        assert!(text.range_of(0x1000).is_some()); // phys + 0 still fits
        let good = KernelText {
            ranges: vec![(0x1000..0x3000, 0x10_0000)],
        };
        assert!(good.is_plausible());
    }

    #[test]
    fn entry_state_is_flat_protected_mode() {
        let s = entry_sregs(kvm_sregs::default());
        assert_eq!(s.cr0, 0x11);
        assert_eq!((s.cr4, s.efer, s.cr3), (0, 0, 0));
        assert_eq!(
            (s.cs.selector, s.cs.type_, s.cs.db, s.cs.l),
            (0x10, 0xb, 1, 0)
        );
        assert_eq!((s.ss.selector, s.ds.type_), (0x18, 3));
        assert_eq!(s.gdt.base, BOOT_GDT_GPA);
        assert!(BOOT_GDT_GPA + u64::from(s.gdt.limit) < START_INFO_GPA);
        let r = entry_regs(0x10_0040);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0040, START_INFO_GPA, 2));
    }

    #[test]
    fn gdt_descriptors_match_the_segments() {
        // Decode the code descriptor: access byte 0x9b = present, s, type 0xb; flags 0xc = g, db.
        let code = BOOT_GDT[usize::from(BOOT_CS / 8)];
        assert_eq!((code >> 40) & 0xff, 0x9b);
        assert_eq!((code >> 52) & 0xf, 0xc);
        let data = BOOT_GDT[usize::from(BOOT_DS / 8)];
        assert_eq!((data >> 40) & 0xff, 0x93);
    }
}
