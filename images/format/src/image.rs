//! The bootable image: the guest kernel's ELF plus one extra `PT_LOAD` segment holding the
//! program bundle, bootable through PVH by both fluke-vmm (linux-loader) and QEMU
//! (`-kernel`).
//!
//! The rule shared with the kernel: the bundle's physical address is
//! `align_up(max over the kernel's PT_LOAD segments of (p_paddr + p_memsz), 4096)`
//! ([`bundle_paddr`]), its virtual address is `KERNEL_VIRT_BASE + paddr`
//! ([`bundle_vaddr`]); the segment has flags `PF_R`, align 4096 and
//! `p_filesz == p_memsz ==` the bundle's `total_size`. It is the last `PT_LOAD`.
//!
//! `build_image` (feature `alloc`) writes (program headers in this order):
//!
//! | # | type      | contents                                                            |
//! |---|-----------|---------------------------------------------------------------------|
//! | 0..n | PT_LOAD | the kernel's `PT_LOAD`s, in order, bytes copied, `p_offset ≡ p_vaddr (mod 4096)` |
//! | n | PT_LOAD   | the bundle, at the addresses of the rule, file offset 4096-aligned  |
//! | n+1 | PT_NOTE | the kernel's `PT_NOTE` segments concatenated, each padded to 4 bytes |
//!
//! File layout: ELF header, program headers, note bytes, kernel segment bytes, bundle.
//! There are no section headers.

use crate::bundle::{Bundle, BundleError, BUNDLE_MAGIC};
use crate::bytes::align_up;
use crate::elf::{Elf, ElfError, ProgramHeader, PF_X};
use core::fmt;
use fluke_abi::boot::KERNEL_VIRT_BASE;

/// The debug information of an image lives beside it, in a directory named after the image
/// file with this suffix (`default.img` -> `default.img.debug`): the kernel's and each
/// program's unstripped ELF, whose loaded segments are the image's. The image itself holds
/// only segments (see [`crate::elf::strip_to_segments`]).
pub const DEBUG_DIR_SUFFIX: &str = ".debug";
/// The kernel's unstripped ELF, in the debug directory.
pub const DEBUG_KERNEL_FILE: &str = "kernel.elf";
/// The subdirectory of the debug directory holding `NAME.elf` for each program `NAME`.
pub const DEBUG_PROGRAMS_DIR: &str = "programs";

/// Page size used by the image layout rules.
pub const PAGE_SIZE: u64 = 4096;

/// Physical address of the bundle for a kernel whose segments end at `kernel_phys_end`.
pub const fn bundle_paddr(kernel_phys_end: u64) -> Option<u64> {
    align_up(kernel_phys_end, PAGE_SIZE)
}

/// Virtual address at which the kernel sees physical address `paddr` (and thus the bundle).
pub const fn bundle_vaddr(paddr: u64) -> Option<u64> {
    KERNEL_VIRT_BASE.checked_add(paddr)
}

/// Why a file is not a valid fluke image (or a kernel and bundle cannot be made into one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The ELF structure is invalid.
    Elf(ElfError),
    /// The bundle is invalid.
    Bundle(BundleError),
    /// No `"Xen"` note of type 18.
    NoPvhEntry,
    /// The ELF has no `PT_LOAD` segment.
    NoLoadSegments,
    /// The last `PT_LOAD` does not start with the bundle magic.
    NoBundle,
    /// The only `PT_LOAD` is the bundle.
    NoKernelSegments,
    /// The bundle segment is not where the layout rule puts it.
    MisplacedBundle {
        /// Its `p_paddr`.
        paddr: u64,
        /// Its `p_vaddr`.
        vaddr: u64,
        /// The `p_paddr` required.
        expected_paddr: u64,
        /// The `p_vaddr` required.
        expected_vaddr: u64,
    },
    /// The bundle segment's `p_filesz`, `p_memsz` and the bundle's `total_size` differ.
    BundleSegmentSize {
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
        /// The bundle's `total_size` (0 if the bundle was not parsed yet).
        bundle_size: u64,
    },
    /// The PVH entry point is not inside an executable kernel segment.
    PvhEntryNotExecutable {
        /// The entry point.
        entry: u32,
    },
    /// The kernel given to `build_image` already contains a bundle.
    AlreadyHasBundle,
    /// The output would need more program headers than an image may have.
    TooManySegments {
        /// Number of kernel `PT_LOAD` segments.
        kernel_loads: usize,
    },
    /// The bundle's address or the image size does not fit in 64 bits.
    AddressOverflow,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ImageError::Elf(e) => e.fmt(f),
            ImageError::Bundle(e) => e.fmt(f),
            ImageError::NoPvhEntry => f.write_str(
                "not a fluke image: the ELF has no PVH entry note (\"Xen\" note of type 18)",
            ),
            ImageError::NoLoadSegments => f.write_str("the ELF has no loadable (PT_LOAD) segments"),
            ImageError::NoBundle => {
                f.write_str("not a fluke image: the last PT_LOAD segment does not hold a program bundle")
            }
            ImageError::NoKernelSegments => {
                f.write_str("not a fluke image: there are no kernel segments besides the bundle")
            }
            ImageError::MisplacedBundle { paddr, vaddr, expected_paddr, expected_vaddr } => write!(
                f,
                "bundle segment is at physical {paddr:#x} / virtual {vaddr:#x} but must be at {expected_paddr:#x} / {expected_vaddr:#x} (the first page after the kernel)"
            ),
            ImageError::BundleSegmentSize { filesz, memsz, bundle_size } => write!(
                f,
                "bundle segment has {filesz} file bytes and {memsz} memory bytes, but the bundle is {bundle_size} bytes (all three must be equal)"
            ),
            ImageError::PvhEntryNotExecutable { entry } => {
                write!(f, "PVH entry point {entry:#x} is not inside an executable kernel segment")
            }
            ImageError::AlreadyHasBundle => {
                f.write_str("the kernel ELF already contains a program bundle (is it an image already?)")
            }
            ImageError::TooManySegments { kernel_loads } => write!(
                f,
                "the kernel has {kernel_loads} PT_LOAD segments; an image can hold at most {}",
                crate::elf::MAX_PHNUM - 2
            ),
            ImageError::AddressOverflow => f.write_str("the bundle's address or the image size overflows 64 bits"),
        }
    }
}

impl core::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ImageError::Elf(e) => Some(e),
            ImageError::Bundle(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ElfError> for ImageError {
    fn from(e: ElfError) -> ImageError {
        ImageError::Elf(e)
    }
}

impl From<BundleError> for ImageError {
    fn from(e: BundleError) -> ImageError {
        ImageError::Bundle(e)
    }
}

/// `max(paddr + memsz)` over `segments` (0 if there are none).
fn phys_end_of(segments: impl Iterator<Item = ProgramHeader>) -> u64 {
    segments.filter_map(|ph| ph.phys_end()).max().unwrap_or(0)
}

/// Checks that `entry` lies in the physical range of an executable segment.
fn check_pvh_entry(
    entry: u32,
    mut segments: impl Iterator<Item = ProgramHeader>,
) -> Result<(), ImageError> {
    let entry64 = u64::from(entry);
    let inside = segments.any(|ph| {
        ph.flags & PF_X != 0
            && ph.paddr <= entry64
            && ph.phys_end().is_some_and(|end| entry64 < end)
    });
    if inside {
        Ok(())
    } else {
        Err(ImageError::PvhEntryNotExecutable { entry })
    }
}

/// A validated fluke image.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    elf: Elf<'a>,
    pvh_entry: u32,
    bundle: Bundle<'a>,
    bundle_segment: ProgramHeader,
    kernel_loads: usize,
    kernel_phys_end: u64,
}

impl<'a> Image<'a> {
    /// Validates an image: its ELF structure, PVH entry, bundle placement and bundle.
    pub fn parse(data: &'a [u8]) -> Result<Image<'a>, ImageError> {
        let elf = Elf::parse(data)?;
        let pvh_entry = elf.pvh_entry().ok_or(ImageError::NoPvhEntry)?;
        let bundle_segment = elf
            .load_segments()
            .last()
            .ok_or(ImageError::NoLoadSegments)?;
        if !elf.segment_data(&bundle_segment).starts_with(&BUNDLE_MAGIC) {
            return Err(ImageError::NoBundle);
        }
        let kernel_loads = elf.load_segments().count() - 1;
        if kernel_loads == 0 {
            return Err(ImageError::NoKernelSegments);
        }
        let kernel_phys_end = phys_end_of(elf.load_segments().take(kernel_loads));
        let expected_paddr = bundle_paddr(kernel_phys_end).ok_or(ImageError::AddressOverflow)?;
        let expected_vaddr = bundle_vaddr(expected_paddr).ok_or(ImageError::AddressOverflow)?;
        if bundle_segment.paddr != expected_paddr || bundle_segment.vaddr != expected_vaddr {
            return Err(ImageError::MisplacedBundle {
                paddr: bundle_segment.paddr,
                vaddr: bundle_segment.vaddr,
                expected_paddr,
                expected_vaddr,
            });
        }
        let size_error = |bundle_size| ImageError::BundleSegmentSize {
            filesz: bundle_segment.filesz,
            memsz: bundle_segment.memsz,
            bundle_size,
        };
        if bundle_segment.filesz != bundle_segment.memsz {
            return Err(size_error(0));
        }
        let bundle = Bundle::parse(elf.segment_data(&bundle_segment))?;
        if bundle.total_size() != bundle_segment.filesz {
            return Err(size_error(bundle.total_size()));
        }
        check_pvh_entry(pvh_entry, elf.load_segments().take(kernel_loads))?;
        Ok(Image {
            elf,
            pvh_entry,
            bundle,
            bundle_segment,
            kernel_loads,
            kernel_phys_end,
        })
    }

    /// The image as an ELF file.
    pub fn elf(&self) -> Elf<'a> {
        self.elf
    }

    /// The 32-bit physical PVH entry point.
    pub fn pvh_entry(&self) -> u32 {
        self.pvh_entry
    }

    /// The kernel's `PT_LOAD` segments (all but the bundle), in order.
    pub fn kernel_segments(&self) -> impl Iterator<Item = ProgramHeader> + Clone + 'a {
        self.elf.load_segments().take(self.kernel_loads)
    }

    /// The program bundle.
    pub fn bundle(&self) -> Bundle<'a> {
        self.bundle
    }

    /// The bundle's `PT_LOAD` header.
    pub fn bundle_segment(&self) -> ProgramHeader {
        self.bundle_segment
    }

    /// End of the kernel in physical memory: `max(p_paddr + p_memsz)` of its segments.
    pub fn kernel_phys_end(&self) -> u64 {
        self.kernel_phys_end
    }

    /// End of the whole image in physical memory (the end of the bundle).
    pub fn phys_end(&self) -> u64 {
        // Elf::parse rejected PT_LOADs whose range overflows.
        self.bundle_segment.phys_end().unwrap_or(u64::MAX)
    }
}

#[cfg(any(feature = "alloc", test))]
pub use builder::build_image;

#[cfg(any(feature = "alloc", test))]
mod builder {
    use super::*;
    use crate::elf::{
        EHDR_SIZE, ELFCLASS64, ELFDATA2LSB, ELF_MAGIC, EM_X86_64, ET_EXEC, EV_CURRENT, MAX_PHNUM,
        PF_R, PHDR_SIZE, PT_LOAD, PT_NOTE,
    };
    use alloc::vec;
    use alloc::vec::Vec;

    /// The smallest offset `>= cursor` congruent to `vaddr` modulo the page size.
    fn congruent_offset(cursor: u64, vaddr: u64) -> Option<u64> {
        let delta = (vaddr % PAGE_SIZE + PAGE_SIZE - cursor % PAGE_SIZE) % PAGE_SIZE;
        cursor.checked_add(delta)
    }

    fn put(out: &mut [u8], at: u64, bytes: &[u8]) -> Result<(), ImageError> {
        let start = usize::try_from(at).map_err(|_| ImageError::AddressOverflow)?;
        let end = start
            .checked_add(bytes.len())
            .ok_or(ImageError::AddressOverflow)?;
        out.get_mut(start..end)
            .ok_or(ImageError::AddressOverflow)?
            .copy_from_slice(bytes);
        Ok(())
    }

    impl Image<'_> {
        /// The kernel as an ELF file of its own, which [`build_image`] takes to put another
        /// bundle beside the same kernel: this image's file with the bundle's program
        /// header taken out of the table (its bytes stay in the file, described by nothing).
        pub fn kernel_elf(&self) -> Vec<u8> {
            let data = self.elf.data();
            let mut out = Vec::from(data);
            let bundle_index = self
                .elf
                .program_headers()
                .enumerate()
                .filter(|(_, ph)| ph.is_load())
                .last()
                .map(|(i, _)| i);
            let (Some(index), Some(phoff)) = (bundle_index, crate::bytes::u64_at(data, 32)) else {
                return out; // parse found both; unreachable for a parsed image
            };
            let phnum = self.elf.phnum();
            let entry = |i: usize| {
                usize::try_from(phoff)
                    .ok()
                    .and_then(|o| o.checked_add(i * PHDR_SIZE))
            };
            for i in index..phnum {
                let (Some(at), Some(next)) = (entry(i), entry(i + 1)) else {
                    return Vec::from(data);
                };
                let replacement = match self.elf.program_header(i + 1) {
                    Some(ph) => ph.to_bytes(),
                    None => [0; PHDR_SIZE], // the table's last slot is emptied
                };
                if let Some(slot) = out.get_mut(at..next) {
                    slot.copy_from_slice(&replacement);
                }
            }
            // phnum >= 2 (a kernel segment and the bundle) and <= MAX_PHNUM, so it fits.
            let new_phnum = u16::try_from(phnum - 1).unwrap_or(0);
            if let Some(field) = out.get_mut(56..58) {
                field.copy_from_slice(&new_phnum.to_le_bytes());
            }
            out
        }
    }

    /// Joins a kernel ELF and a bundle into an image (see the [module docs](super)).
    ///
    /// The kernel must be a valid ELF64 x86-64 executable with a PVH entry note inside an
    /// executable segment, at least one `PT_LOAD` and no bundle. Only the bundle's
    /// `total_size` bytes are used. Kernel segments keep their addresses, flags and bytes;
    /// alignments above 4096 are lowered to 4096 (the file offsets are only page-congruent).
    /// The PT_NOTE segment holding the PVH note is copied first, the others after it.
    pub fn build_image(kernel_elf: &[u8], bundle: &[u8]) -> Result<Vec<u8>, ImageError> {
        let elf = Elf::parse(kernel_elf)?;
        let pvh_entry = elf.pvh_entry().ok_or(ImageError::NoPvhEntry)?;
        let loads: Vec<ProgramHeader> = elf.load_segments().collect();
        if loads.is_empty() {
            return Err(ImageError::NoLoadSegments);
        }
        if loads
            .iter()
            .any(|ph| elf.segment_data(ph).starts_with(&BUNDLE_MAGIC))
        {
            return Err(ImageError::AlreadyHasBundle);
        }
        if loads.len() + 2 > MAX_PHNUM {
            return Err(ImageError::TooManySegments {
                kernel_loads: loads.len(),
            });
        }
        check_pvh_entry(pvh_entry, loads.iter().copied())?;
        let bundle = Bundle::parse(bundle)?.as_bytes();
        let bundle_len = bundle.len() as u64;

        let paddr =
            bundle_paddr(phys_end_of(loads.iter().copied())).ok_or(ImageError::AddressOverflow)?;
        let vaddr = bundle_vaddr(paddr).ok_or(ImageError::AddressOverflow)?;
        if paddr.checked_add(bundle_len).is_none() || vaddr.checked_add(bundle_len).is_none() {
            return Err(ImageError::AddressOverflow);
        }

        // Notes: the segment(s) with the PVH note first, so it is found even if a later
        // segment uses a layout the 4-byte note walker cannot follow.
        let note_segments: Vec<ProgramHeader> = elf
            .program_headers()
            .filter(|ph| ph.p_type == PT_NOTE)
            .collect();
        let mut notes = Vec::new();
        for pass_pvh in [true, false] {
            for ph in note_segments
                .iter()
                .filter(|ph| segment_has_pvh_note(&elf, ph) == pass_pvh)
            {
                notes.extend_from_slice(elf.segment_data(ph));
                while !notes.len().is_multiple_of(4) {
                    notes.push(0);
                }
            }
        }

        let phnum = loads.len() + 2;
        let phoff = EHDR_SIZE as u64;
        let notes_offset = phoff + (phnum * PHDR_SIZE) as u64;
        let mut cursor = notes_offset + notes.len() as u64;
        let mut headers = Vec::with_capacity(phnum);
        for ph in &loads {
            let offset = congruent_offset(cursor, ph.vaddr).ok_or(ImageError::AddressOverflow)?;
            cursor = offset
                .checked_add(ph.filesz)
                .ok_or(ImageError::AddressOverflow)?;
            headers.push(ProgramHeader {
                offset,
                align: ph.align.min(PAGE_SIZE),
                ..*ph
            });
        }
        let bundle_offset = align_up(cursor, PAGE_SIZE).ok_or(ImageError::AddressOverflow)?;
        let total = bundle_offset
            .checked_add(bundle_len)
            .ok_or(ImageError::AddressOverflow)?;
        headers.push(ProgramHeader {
            p_type: PT_LOAD,
            flags: PF_R,
            offset: bundle_offset,
            vaddr,
            paddr,
            filesz: bundle_len,
            memsz: bundle_len,
            align: PAGE_SIZE,
        });
        headers.push(ProgramHeader {
            p_type: PT_NOTE,
            flags: PF_R,
            offset: notes_offset,
            vaddr: 0,
            paddr: 0,
            filesz: notes.len() as u64,
            memsz: notes.len() as u64,
            align: 4,
        });

        let mut out = vec![0u8; usize::try_from(total).map_err(|_| ImageError::AddressOverflow)?];
        put(&mut out, 0, &ELF_MAGIC)?;
        put(&mut out, 4, &[ELFCLASS64, ELFDATA2LSB, EV_CURRENT as u8])?;
        put(&mut out, 16, &ET_EXEC.to_le_bytes())?;
        put(&mut out, 18, &EM_X86_64.to_le_bytes())?;
        put(&mut out, 20, &EV_CURRENT.to_le_bytes())?;
        put(&mut out, 24, &elf.entry().to_le_bytes())?;
        put(&mut out, 32, &phoff.to_le_bytes())?;
        // e_shoff (40), e_flags (48) stay zero.
        put(&mut out, 52, &(EHDR_SIZE as u16).to_le_bytes())?;
        put(&mut out, 54, &(PHDR_SIZE as u16).to_le_bytes())?;
        put(&mut out, 56, &(phnum as u16).to_le_bytes())?;
        // e_shentsize, e_shnum, e_shstrndx (58..64) stay zero: no section headers.
        for (i, h) in headers.iter().enumerate() {
            put(&mut out, phoff + (i * PHDR_SIZE) as u64, &h.to_bytes())?;
        }
        put(&mut out, notes_offset, &notes)?;
        for (src, dst) in loads.iter().zip(headers.iter()) {
            put(&mut out, dst.offset, elf.segment_data(src))?;
        }
        put(&mut out, bundle_offset, bundle)?;
        Image::parse(&out)?;
        Ok(out)
    }

    /// Whether this PT_NOTE segment, walked on its own, yields the PVH note.
    fn segment_has_pvh_note(elf: &Elf<'_>, ph: &ProgramHeader) -> bool {
        let mut rest = elf.segment_data(ph);
        while let Some((note, next)) = crate::elf::split_note(rest) {
            if note.pvh_entry().is_some() {
                return true;
            }
            rest = next;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{metadata_checksum, BundleBuilder};
    use crate::elf::{PF_R, PF_W, PHDR_SIZE, PT_LOAD, PT_NOTE};
    use crate::testutil::{
        kernel_elf, kernel_with_notes, mutate, note_bytes, patch_u64, phdr_offset, pvh_note,
        user_elf, ElfSpec, Seg, XorShift, KERNEL_ENTRY_PHYS,
    };
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    fn sample_bundle() -> Vec<u8> {
        BundleBuilder::new()
            .add_program("init", &user_elf(0x11, 700))
            .unwrap()
            .add_program("echo", &user_elf(0x22, 4500))
            .unwrap()
            .manifest("# boot\ninit init --verbose echo\n")
            .build()
            .unwrap()
    }

    fn sample_image() -> Vec<u8> {
        build_image(&kernel_elf(), &sample_bundle()).unwrap()
    }

    fn err(b: &[u8]) -> ImageError {
        Image::parse(b).unwrap_err()
    }

    #[test]
    fn kernel_elf_rebuilds_the_same_kernel_with_another_bundle() {
        let first = sample_image();
        let image = Image::parse(&first).unwrap();
        let kernel = image.kernel_elf();
        let other = BundleBuilder::new()
            .add_program("solo", &user_elf(0x33, 100))
            .unwrap()
            .manifest("init solo\n")
            .build()
            .unwrap();
        let second = build_image(&kernel, &other).unwrap();
        let rebuilt = Image::parse(&second).unwrap();
        let segments = |i: &Image<'_>| {
            i.kernel_segments()
                .map(|ph| {
                    let data = i.elf().segment_data(&ph).to_vec();
                    (ph.vaddr, ph.paddr, ph.memsz, ph.flags, data)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(segments(&image), segments(&rebuilt));
        assert_eq!(rebuilt.pvh_entry(), image.pvh_entry());
        assert_eq!(rebuilt.elf().entry(), image.elf().entry());
        assert_eq!(rebuilt.bundle().manifest().init(), "solo");
        // The kernel ELF carries no bundle: on its own it is not an image.
        assert_eq!(err(&kernel), ImageError::NoBundle);
    }

    #[test]
    fn builds_and_parses_every_field() {
        let kernel = kernel_elf();
        let bundle_bytes = sample_bundle();
        let img = build_image(&kernel, &bundle_bytes).unwrap();
        let image = Image::parse(&img).unwrap();
        let kelf = Elf::parse(&kernel).unwrap();

        // ELF header.
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(image.elf().entry(), kelf.entry());
        assert_eq!(
            u64::from_le_bytes(img[40..48].try_into().unwrap()),
            0,
            "e_shoff"
        );
        assert_eq!(&img[60..64], &[0, 0, 0, 0], "e_shnum, e_shstrndx");
        assert_eq!(image.elf().phnum(), 4);
        assert_eq!(image.pvh_entry(), KERNEL_ENTRY_PHYS);

        // Kernel segments: same addresses, sizes, flags and bytes; page-congruent offsets.
        let kseg: Vec<_> = image.kernel_segments().collect();
        let orig: Vec<_> = kelf.load_segments().collect();
        assert_eq!(kseg.len(), 2);
        for (new, old) in kseg.iter().zip(orig.iter()) {
            assert_eq!(
                ProgramHeader {
                    offset: old.offset,
                    ..*new
                },
                *old
            );
            assert_eq!(new.offset % 4096, new.vaddr % 4096);
            assert_eq!(image.elf().segment_data(new), kelf.segment_data(old));
        }
        assert_eq!(image.kernel_phys_end(), 0x10_3f10);

        // Bundle segment.
        let bs = image.bundle_segment();
        assert_eq!(bs.p_type, PT_LOAD);
        assert_eq!(bs.flags, PF_R);
        assert_eq!(bs.paddr, 0x10_4000);
        assert_eq!(bs.vaddr, KERNEL_VIRT_BASE + 0x10_4000);
        assert_eq!(bs.filesz, bundle_bytes.len() as u64);
        assert_eq!(bs.memsz, bundle_bytes.len() as u64);
        assert_eq!(bs.align, 4096);
        assert_eq!(bs.offset % 4096, 0);
        assert_eq!(image.elf().segment_data(&bs), &bundle_bytes[..]);
        assert_eq!(image.elf().load_segments().last(), Some(bs));
        assert_eq!(image.phys_end(), 0x10_4000 + bundle_bytes.len() as u64);
        assert_eq!(img.len() as u64, bs.offset + bs.filesz);

        // Note segment: last, with both kernel notes.
        let note_ph = image.elf().program_header(3).unwrap();
        assert_eq!(note_ph.p_type, PT_NOTE);
        let notes: Vec<_> = image.elf().notes().collect();
        assert_eq!(notes, kelf.notes().collect::<Vec<_>>());

        // Bundle contents.
        let b = image.bundle();
        assert_eq!(b.total_size(), bundle_bytes.len() as u64);
        let names: Vec<_> = b.programs().map(|p| p.name).collect();
        assert_eq!(names, ["init", "echo"]);
        assert_eq!(b.program("echo").unwrap().data, &user_elf(0x22, 4500)[..]);
        assert_eq!(b.manifest().init(), "init");
        assert_eq!(
            b.manifest().args().collect::<Vec<_>>(),
            ["--verbose", "echo"]
        );
        // Program data is page-aligned in guest physical memory too.
        for p in b.programs() {
            assert_eq!((bs.paddr + p.offset) % 4096, 0);
        }

        // Building is deterministic and trailing bytes after the bundle are dropped.
        let mut padded = bundle_bytes.clone();
        padded.extend_from_slice(&[7; 33]);
        assert_eq!(build_image(&kernel, &padded).unwrap(), img);
    }

    #[test]
    fn unaligned_vaddrs_and_large_alignments() {
        let kernel = ElfSpec::exec(KERNEL_VIRT_BASE + 0x20_0123)
            .seg(Seg::note(pvh_note(0x20_0123)))
            .seg(Seg {
                align: 0x20_0000,
                ..Seg::kload(
                    PF_R | crate::elf::PF_X,
                    0x20_0123,
                    vec![0x90; 0x1500],
                    0x1500,
                )
            })
            .seg(Seg::kload(PF_R | PF_W, 0x20_2777, vec![1; 3], 0x10))
            .seg(Seg {
                p_type: 0x6474_e551,
                ..Seg::note(Vec::new())
            }) // PT_GNU_STACK: dropped
            .build();
        let img = build_image(&kernel, &sample_bundle()).unwrap();
        let image = Image::parse(&img).unwrap();
        let segs: Vec<_> = image.kernel_segments().collect();
        assert_eq!(segs[0].offset % 4096, 0x123);
        assert_eq!(segs[0].align, 4096);
        assert_eq!(segs[1].offset % 4096, 0x777);
        assert_eq!(image.kernel_phys_end(), 0x20_2787);
        assert_eq!(image.bundle_segment().paddr, 0x20_3000);
        assert_eq!(image.elf().phnum(), 4);
        assert_eq!(image.pvh_entry(), 0x20_0123);
    }

    #[test]
    fn pvh_note_is_found_after_note_concatenation() {
        // The PVH note lives in the second of two PT_NOTE segments, the first of which is
        // malformed for the 4-byte walker (truncated note header).
        let kernel = ElfSpec::exec(KERNEL_VIRT_BASE + 0x10_0000)
            .seg(Seg::kload(
                PF_R | crate::elf::PF_X,
                0x10_0000,
                vec![0x90; 64],
                64,
            ))
            .seg(Seg::note(vec![8, 0, 0, 0, 1]))
            .seg(Seg::note(note_bytes(
                b"Xen\0",
                18,
                &0x10_0000u64.to_le_bytes(),
            )))
            .build();
        assert_eq!(Elf::parse(&kernel).unwrap().pvh_entry(), Some(0x10_0000));
        let img = build_image(&kernel, &sample_bundle()).unwrap();
        assert_eq!(Image::parse(&img).unwrap().pvh_entry(), 0x10_0000);
    }

    #[test]
    fn kernel_errors() {
        let bundle = sample_bundle();
        // No PVH note.
        let no_pvh = kernel_with_notes(note_bytes(b"GNU\0", 3, &[0; 4]));
        assert_eq!(
            build_image(&no_pvh, &bundle).unwrap_err(),
            ImageError::NoPvhEntry
        );
        assert_eq!(err(&no_pvh), ImageError::NoPvhEntry);
        assert_eq!(
            err(&no_pvh).to_string(),
            "not a fluke image: the ELF has no PVH entry note (\"Xen\" note of type 18)"
        );
        // A plain kernel is not an image.
        assert_eq!(err(&kernel_elf()), ImageError::NoBundle);
        // No PT_LOAD.
        let only_note = ElfSpec::exec(0).seg(Seg::note(pvh_note(0x10_0000))).build();
        assert_eq!(
            build_image(&only_note, &bundle).unwrap_err(),
            ImageError::NoLoadSegments
        );
        assert_eq!(err(&only_note), ImageError::NoLoadSegments);
        // PVH entry in a non-executable segment / outside every segment.
        let bad_entry = kernel_with_notes(pvh_note(0x10_1010));
        assert_eq!(
            build_image(&bad_entry, &bundle).unwrap_err(),
            ImageError::PvhEntryNotExecutable { entry: 0x10_1010 }
        );
        let bad_entry = kernel_with_notes(pvh_note(0x10_0200));
        assert_eq!(
            build_image(&bad_entry, &bundle).unwrap_err(),
            ImageError::PvhEntryNotExecutable { entry: 0x10_0200 }
        );
        // An image is not a kernel.
        let img = sample_image();
        assert_eq!(
            build_image(&img, &bundle).unwrap_err(),
            ImageError::AlreadyHasBundle
        );
        // Invalid inputs.
        assert_eq!(
            build_image(b"nope", &bundle).unwrap_err(),
            ImageError::Elf(ElfError::BadMagic)
        );
        assert_eq!(
            build_image(&kernel_elf(), &bundle[..100]).unwrap_err(),
            ImageError::Bundle(BundleError::Truncated {
                what: "bundle",
                end: bundle.len() as u64,
                len: 100
            })
        );
        // Too many segments.
        let mut spec = ElfSpec::exec(0).seg(Seg::note(pvh_note(0x10_0000)));
        for i in 0..63u64 {
            spec = spec.seg(Seg::kload(
                PF_R | crate::elf::PF_X,
                0x10_0000 + i * 0x1000,
                vec![0x90; 4],
                4,
            ));
        }
        assert_eq!(
            build_image(&spec.build(), &bundle).unwrap_err(),
            ImageError::TooManySegments { kernel_loads: 63 }
        );
    }

    #[test]
    fn bundle_only_image_has_no_kernel() {
        let bundle = sample_bundle();
        let elf = ElfSpec::exec(0)
            .seg(Seg::note(pvh_note(0)))
            .seg(Seg::kload(PF_R, 0, bundle.clone(), bundle.len() as u64))
            .build();
        assert_eq!(err(&elf), ImageError::NoKernelSegments);
    }

    #[test]
    fn misplaced_or_resized_bundle() {
        let img = sample_image();
        let bundle_ph = phdr_offset(2);
        let expected_paddr = 0x10_4000;
        let expected_vaddr = KERNEL_VIRT_BASE + 0x10_4000;
        let mut b = img.clone();
        patch_u64(&mut b, bundle_ph + 24, expected_paddr + 0x1000);
        assert_eq!(
            err(&b),
            ImageError::MisplacedBundle {
                paddr: expected_paddr + 0x1000,
                vaddr: expected_vaddr,
                expected_paddr,
                expected_vaddr
            }
        );
        let mut b = img.clone();
        patch_u64(&mut b, bundle_ph + 16, expected_paddr);
        assert!(matches!(
            err(&b),
            ImageError::MisplacedBundle {
                vaddr: 0x10_4000,
                ..
            }
        ));
        assert!(err(&b)
            .to_string()
            .contains("must be at 0x104000 / 0xffffffff80104000"));
        // Kernel grows into the bundle's page: now the bundle is misplaced.
        let mut b = img.clone();
        patch_u64(&mut b, phdr_offset(1) + 40, 0x3010);
        assert!(matches!(
            err(&b),
            ImageError::MisplacedBundle {
                expected_paddr: 0x10_5000,
                ..
            }
        ));
        // memsz != filesz
        let mut b = img.clone();
        let len = sample_bundle().len() as u64;
        patch_u64(&mut b, bundle_ph + 40, len + 1);
        assert_eq!(
            err(&b),
            ImageError::BundleSegmentSize {
                filesz: len,
                memsz: len + 1,
                bundle_size: 0
            }
        );
        // Segment larger than the bundle (file has room if we append a byte).
        let mut b = img.clone();
        b.push(0);
        patch_u64(&mut b, bundle_ph + 32, len + 1);
        patch_u64(&mut b, bundle_ph + 40, len + 1);
        assert_eq!(
            err(&b),
            ImageError::BundleSegmentSize {
                filesz: len + 1,
                memsz: len + 1,
                bundle_size: len
            }
        );
        // Not a bundle.
        let mut b = img.clone();
        let off =
            u64::from_le_bytes(img[bundle_ph + 8..bundle_ph + 16].try_into().unwrap()) as usize;
        b[off] = b'X';
        assert_eq!(err(&b), ImageError::NoBundle);
        // Wrong class/machine are reported as ELF errors.
        let mut b = img.clone();
        b[4] = 1;
        assert_eq!(err(&b), ImageError::Elf(ElfError::NotElf64 { class: 1 }));
        let mut b = img.clone();
        b[18] = 3;
        assert_eq!(
            err(&b),
            ImageError::Elf(ElfError::WrongMachine { machine: 3 })
        );
        // Program header table out of bounds.
        let mut b = img.clone();
        patch_u64(&mut b, 32, img.len() as u64 - 100);
        assert!(matches!(
            err(&b),
            ImageError::Elf(ElfError::Truncated {
                what: "program header table",
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let img = sample_image();
        for len in 0..img.len() {
            assert!(
                Image::parse(&img[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn byte_flips_never_panic_and_payload_flips_fail_the_checksums() {
        let img = sample_image();
        let image = Image::parse(&img).unwrap();
        let bs = image.bundle_segment();
        let bundle = image.bundle();
        let at = |off: u64| (bs.offset + off) as usize;
        let programs: Vec<core::ops::Range<usize>> = bundle
            .programs()
            .map(|p| at(p.offset)..at(p.offset) + p.data.len())
            .collect();
        // Table, names and manifest: back to back after the bundle header.
        let metadata_len = 32 * bundle.program_count()
            + bundle.programs().map(|p| p.name.len()).sum::<usize>()
            + bundle.manifest().text().len();
        let metadata = at(64)..at(64) + metadata_len;
        let mut caught = 0;
        for pos in 0..img.len() {
            for mask in [0x01u8, 0x80] {
                let mut b = img.clone();
                b[pos] ^= mask;
                let r = Image::parse(&b);
                if programs.iter().any(|p| p.contains(&pos)) {
                    // Parsing does not read program data; using the program checks it.
                    let verified = r.as_ref().map(|i| i.bundle().verify_programs());
                    assert!(
                        matches!(
                            verified,
                            Ok(Err(BundleError::ProgramChecksumMismatch { .. }))
                        ),
                        "flip {mask:#x} at {pos}: {r:?}"
                    );
                    caught += 1;
                } else if metadata.contains(&pos) {
                    assert!(r.is_err(), "flip {mask:#x} at {pos}");
                    caught += 1;
                }
            }
        }
        let covered = metadata.len() + programs.iter().map(|p| p.len()).sum::<usize>();
        assert!(covered > 1000);
        assert_eq!(caught, 2 * covered);
        let mut b = img.clone();
        b[metadata.end - 1] ^= 4;
        assert!(err(&b)
            .to_string()
            .starts_with("bundle checksum mismatch (corrupt image)"));
    }

    #[test]
    fn random_mutations_never_panic() {
        let img = sample_image();
        let bs = Image::parse(&img).unwrap().bundle_segment();
        let (bstart, bend) = (bs.offset as usize, (bs.offset + bs.filesz) as usize);
        let mut rng = XorShift::new(0xf1c3_2024);
        let mut parsed = 0;
        for i in 0..20_000u32 {
            let mut m = mutate(&mut rng, &img);
            // Every other mutant gets its bundle checksum repaired so that mutations get past
            // the checksum into the structural checks.
            if i.is_multiple_of(2) && m.len() >= bend {
                if let Some(sum) = metadata_checksum(&m[bstart..bend]) {
                    patch_u64(&mut m, bstart + 24, sum);
                }
            }
            if let Ok(image) = Image::parse(&m) {
                parsed += 1;
                // Whatever parses upholds the invariants.
                let bs = image.bundle_segment();
                assert_eq!(Some(bs.paddr), bundle_paddr(image.kernel_phys_end()));
                assert_eq!(bs.filesz, image.bundle().total_size());
                assert!(image.phys_end() >= bs.paddr);
                assert!(image
                    .kernel_segments()
                    .all(|k| k.phys_end().unwrap() <= bs.paddr));
                let _ = image.bundle().programs().count();
            }
        }
        assert!(parsed > 0);
    }

    #[test]
    fn rule_helpers() {
        assert_eq!(bundle_paddr(0x10_3f10), Some(0x10_4000));
        assert_eq!(bundle_paddr(0x10_4000), Some(0x10_4000));
        assert_eq!(bundle_paddr(u64::MAX), None);
        assert_eq!(bundle_vaddr(0x1000), Some(KERNEL_VIRT_BASE + 0x1000));
        assert_eq!(bundle_vaddr(0x8000_0000), None);
        assert_eq!(PHDR_SIZE, 56);
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            ImageError::Elf(ElfError::BadMagic),
            ImageError::Bundle(BundleError::NoPrograms),
            ImageError::NoPvhEntry,
            ImageError::NoLoadSegments,
            ImageError::NoBundle,
            ImageError::NoKernelSegments,
            ImageError::MisplacedBundle {
                paddr: 1,
                vaddr: 2,
                expected_paddr: 3,
                expected_vaddr: 4,
            },
            ImageError::BundleSegmentSize {
                filesz: 1,
                memsz: 2,
                bundle_size: 3,
            },
            ImageError::PvhEntryNotExecutable { entry: 5 },
            ImageError::AlreadyHasBundle,
            ImageError::TooManySegments { kernel_loads: 70 },
            ImageError::AddressOverflow,
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s:?}");
        }
        assert_eq!(
            ImageError::Elf(ElfError::BadMagic).to_string(),
            "not an ELF file (bad magic)"
        );
    }
}
