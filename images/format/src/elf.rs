//! A bounds-checked reader for ELF64 x86-64 executables.
//!
//! [`Elf::parse`] validates the file header and every program header up front, so the
//! accessors afterwards never fail: every `PT_LOAD` and `PT_NOTE` segment's file bytes lie
//! inside the file and no `PT_LOAD` address range wraps around. Section headers are ignored.

use crate::bytes::{range, u16_at, u32_at, u64_at};
use core::fmt;

/// `\x7fELF`.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// `EI_CLASS` of a 64-bit file.
pub const ELFCLASS64: u8 = 2;
/// `EI_DATA` of a little-endian file.
pub const ELFDATA2LSB: u8 = 1;
/// The only ELF version (`EI_VERSION` and `e_version`).
pub const EV_CURRENT: u32 = 1;
/// `e_type` of an executable.
pub const ET_EXEC: u16 = 2;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header (`e_phentsize`).
pub const PHDR_SIZE: usize = 56;
/// The most program headers [`Elf::parse`] accepts.
pub const MAX_PHNUM: usize = 64;

/// Loadable segment.
pub const PT_LOAD: u32 = 1;
/// Note segment.
pub const PT_NOTE: u32 = 4;
/// Segment is executable.
pub const PF_X: u32 = 1;
/// Segment is writable.
pub const PF_W: u32 = 2;
/// Segment is readable.
pub const PF_R: u32 = 4;

/// Why a file is not an acceptable ELF64 x86-64 executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// The file does not start with `\x7fELF`.
    BadMagic,
    /// A structure extends past the end of the file.
    Truncated {
        /// What was being read, e.g. "program header table".
        what: &'static str,
        /// Offset of the byte just past the structure.
        end: u64,
        /// Length of the file.
        len: u64,
    },
    /// `EI_CLASS` is not ELFCLASS64.
    NotElf64 {
        /// The `EI_CLASS` byte.
        class: u8,
    },
    /// `EI_DATA` is not little-endian.
    NotLittleEndian {
        /// The `EI_DATA` byte.
        data: u8,
    },
    /// `EI_VERSION` or `e_version` is not EV_CURRENT.
    BadVersion {
        /// The offending version.
        version: u32,
    },
    /// `e_machine` is not x86-64.
    WrongMachine {
        /// The `e_machine` value.
        machine: u16,
    },
    /// `e_type` is not ET_EXEC.
    NotExecutable {
        /// The `e_type` value.
        e_type: u16,
    },
    /// `e_phentsize` is not 56.
    BadPhentsize {
        /// The `e_phentsize` value.
        size: u16,
    },
    /// More than [`MAX_PHNUM`] program headers.
    TooManyProgramHeaders {
        /// The `e_phnum` value.
        count: u16,
    },
    /// The program header table's offset plus size overflows 64 bits.
    ProgramHeaderTableOverflow {
        /// The `e_phoff` value.
        offset: u64,
    },
    /// A `PT_LOAD` or `PT_NOTE` segment's file bytes extend past the end of the file.
    SegmentTruncated {
        /// Index of the program header.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
        /// Length of the file.
        len: u64,
    },
    /// A `PT_LOAD` segment has more file bytes than memory bytes.
    FileszExceedsMemsz {
        /// Index of the program header.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A `PT_LOAD` segment's virtual or physical range wraps around the address space.
    AddressOverflow {
        /// Index of the program header.
        index: usize,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::BadMagic => f.write_str("not an ELF file (bad magic)"),
            ElfError::Truncated { what, end, len } => {
                write!(f, "truncated: {what} ends at byte {end} but the file has {len} bytes")
            }
            ElfError::NotElf64 { class } => {
                write!(f, "not a 64-bit ELF file (EI_CLASS is {class}, expected {ELFCLASS64})")
            }
            ElfError::NotLittleEndian { data } => {
                write!(f, "not a little-endian ELF file (EI_DATA is {data}, expected {ELFDATA2LSB})")
            }
            ElfError::BadVersion { version } => {
                write!(f, "unsupported ELF version {version} (expected {EV_CURRENT})")
            }
            ElfError::WrongMachine { machine } => {
                write!(f, "ELF machine is {machine} but x86-64 ({EM_X86_64}) is required")
            }
            ElfError::NotExecutable { e_type } => {
                write!(f, "ELF type is {e_type} but an executable (ET_EXEC = {ET_EXEC}) is required")
            }
            ElfError::BadPhentsize { size } => {
                write!(f, "ELF program header size is {size} bytes, expected {PHDR_SIZE}")
            }
            ElfError::TooManyProgramHeaders { count } => {
                write!(f, "ELF has {count} program headers, at most {MAX_PHNUM} are supported")
            }
            ElfError::ProgramHeaderTableOverflow { offset } => {
                write!(f, "ELF program header table offset {offset:#x} is out of range")
            }
            ElfError::SegmentTruncated { index, offset, filesz, len } => write!(
                f,
                "truncated: segment {index} (file offset {offset:#x}, {filesz} bytes) extends past the end of the file ({len} bytes)"
            ),
            ElfError::FileszExceedsMemsz { index, filesz, memsz } => write!(
                f,
                "segment {index} has more file bytes ({filesz}) than memory bytes ({memsz})"
            ),
            ElfError::AddressOverflow { index } => {
                write!(f, "segment {index}: address range wraps around the 64-bit address space")
            }
        }
    }
}

impl core::error::Error for ElfError {}

/// One ELF64 program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`, e.g. [`PT_LOAD`].
    pub p_type: u32,
    /// `p_flags`: [`PF_R`] | [`PF_W`] | [`PF_X`].
    pub flags: u32,
    /// `p_offset`: where the segment's bytes start in the file.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// `p_align`.
    pub align: u64,
}

impl ProgramHeader {
    /// Decodes the 56 bytes at `bytes[offset..]`.
    fn read(bytes: &[u8], offset: usize) -> Option<ProgramHeader> {
        Some(ProgramHeader {
            p_type: u32_at(bytes, offset)?,
            flags: u32_at(bytes, offset.checked_add(4)?)?,
            offset: u64_at(bytes, offset.checked_add(8)?)?,
            vaddr: u64_at(bytes, offset.checked_add(16)?)?,
            paddr: u64_at(bytes, offset.checked_add(24)?)?,
            filesz: u64_at(bytes, offset.checked_add(32)?)?,
            memsz: u64_at(bytes, offset.checked_add(40)?)?,
            align: u64_at(bytes, offset.checked_add(48)?)?,
        })
    }

    /// The 56-byte little-endian encoding.
    pub fn to_bytes(&self) -> [u8; PHDR_SIZE] {
        let mut b = [0u8; PHDR_SIZE];
        b[0..4].copy_from_slice(&self.p_type.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_le_bytes());
        b[24..32].copy_from_slice(&self.paddr.to_le_bytes());
        b[32..40].copy_from_slice(&self.filesz.to_le_bytes());
        b[40..48].copy_from_slice(&self.memsz.to_le_bytes());
        b[48..56].copy_from_slice(&self.align.to_le_bytes());
        b
    }

    /// Whether this is a `PT_LOAD` segment.
    pub fn is_load(&self) -> bool {
        self.p_type == PT_LOAD
    }

    /// End of the physical range, `paddr + memsz` (`None` if it overflows, which
    /// [`Elf::parse`] rejects for `PT_LOAD` segments).
    pub fn phys_end(&self) -> Option<u64> {
        self.paddr.checked_add(self.memsz)
    }

    /// End of the virtual range, `vaddr + memsz`.
    pub fn virt_end(&self) -> Option<u64> {
        self.vaddr.checked_add(self.memsz)
    }
}

/// One ELF note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// The owner name without its terminating NUL, e.g. `b"Xen"`.
    pub name: &'a [u8],
    /// The note type.
    pub note_type: u32,
    /// The descriptor bytes (without padding).
    pub desc: &'a [u8],
}

impl Note<'_> {
    /// If this is the PVH entry note (`"Xen"`, type
    /// [`XEN_ELFNOTE_PHYS32_ENTRY`](fluke_abi::boot::XEN_ELFNOTE_PHYS32_ENTRY), a 4- or
    /// 8-byte descriptor), the entry point: the descriptor's low 32 bits.
    pub fn pvh_entry(&self) -> Option<u32> {
        if self.name != b"Xen" || self.note_type != fluke_abi::boot::XEN_ELFNOTE_PHYS32_ENTRY {
            return None;
        }
        match self.desc.len() {
            4 | 8 => u32_at(self.desc, 0),
            _ => None,
        }
    }
}

/// A validated ELF64 x86-64 executable.
#[derive(Clone, Copy, Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    entry: u64,
    phoff: usize,
    phnum: usize,
}

impl<'a> Elf<'a> {
    /// Validates the file header and all program headers of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        let len = data.len() as u64;
        let magic_len = data.len().min(ELF_MAGIC.len());
        if data.get(..magic_len) != ELF_MAGIC.get(..magic_len) || data.is_empty() {
            return Err(ElfError::BadMagic);
        }
        let ehdr = data.get(..EHDR_SIZE).ok_or(ElfError::Truncated {
            what: "ELF header",
            end: EHDR_SIZE as u64,
            len,
        })?;
        // `ehdr` has exactly EHDR_SIZE bytes, so every fixed-offset read below succeeds; the
        // fallbacks only keep the code free of panics.
        let class = ehdr.get(4).copied().unwrap_or(0);
        if class != ELFCLASS64 {
            return Err(ElfError::NotElf64 { class });
        }
        let data_enc = ehdr.get(5).copied().unwrap_or(0);
        if data_enc != ELFDATA2LSB {
            return Err(ElfError::NotLittleEndian { data: data_enc });
        }
        let ident_version = u32::from(ehdr.get(6).copied().unwrap_or(0));
        if ident_version != EV_CURRENT {
            return Err(ElfError::BadVersion {
                version: ident_version,
            });
        }
        let e_type = u16_at(ehdr, 16).unwrap_or(0);
        let machine = u16_at(ehdr, 18).unwrap_or(0);
        let version = u32_at(ehdr, 20).unwrap_or(0);
        let entry = u64_at(ehdr, 24).unwrap_or(0);
        let phoff = u64_at(ehdr, 32).unwrap_or(0);
        let phentsize = u16_at(ehdr, 54).unwrap_or(0);
        let phnum = u16_at(ehdr, 56).unwrap_or(0);
        if machine != EM_X86_64 {
            return Err(ElfError::WrongMachine { machine });
        }
        if e_type != ET_EXEC {
            return Err(ElfError::NotExecutable { e_type });
        }
        if version != EV_CURRENT {
            return Err(ElfError::BadVersion { version });
        }
        if usize::from(phentsize) != PHDR_SIZE {
            return Err(ElfError::BadPhentsize { size: phentsize });
        }
        if usize::from(phnum) > MAX_PHNUM {
            return Err(ElfError::TooManyProgramHeaders { count: phnum });
        }
        let (phoff_usize, phnum_usize) = if phnum == 0 {
            (0, 0)
        } else {
            let table_end = phoff
                .checked_add(u64::from(phnum) * PHDR_SIZE as u64)
                .ok_or(ElfError::ProgramHeaderTableOverflow { offset: phoff })?;
            if table_end > len {
                return Err(ElfError::Truncated {
                    what: "program header table",
                    end: table_end,
                    len,
                });
            }
            // table_end <= len, so phoff fits in usize.
            let phoff = usize::try_from(phoff)
                .map_err(|_| ElfError::ProgramHeaderTableOverflow { offset: phoff })?;
            (phoff, usize::from(phnum))
        };
        let elf = Elf {
            data,
            entry,
            phoff: phoff_usize,
            phnum: phnum_usize,
        };
        for index in 0..elf.phnum {
            let ph = elf.program_header(index).ok_or(ElfError::Truncated {
                what: "program header table",
                end: u64::MAX,
                len,
            })?;
            Self::validate_segment(index, &ph, len)?;
        }
        Ok(elf)
    }

    fn validate_segment(index: usize, ph: &ProgramHeader, len: u64) -> Result<(), ElfError> {
        if ph.p_type != PT_LOAD && ph.p_type != PT_NOTE {
            return Ok(());
        }
        let in_file = ph
            .offset
            .checked_add(ph.filesz)
            .is_some_and(|end| end <= len);
        if !in_file {
            return Err(ElfError::SegmentTruncated {
                index,
                offset: ph.offset,
                filesz: ph.filesz,
                len,
            });
        }
        if ph.p_type == PT_LOAD {
            if ph.filesz > ph.memsz {
                return Err(ElfError::FileszExceedsMemsz {
                    index,
                    filesz: ph.filesz,
                    memsz: ph.memsz,
                });
            }
            if ph.virt_end().is_none() || ph.phys_end().is_none() {
                return Err(ElfError::AddressOverflow { index });
            }
        }
        Ok(())
    }

    /// The whole file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// `e_entry`.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Number of program headers (`e_phnum`).
    pub fn phnum(&self) -> usize {
        self.phnum
    }

    /// Program header number `index`, or `None` if `index >= phnum()`.
    pub fn program_header(&self, index: usize) -> Option<ProgramHeader> {
        if index >= self.phnum {
            return None;
        }
        let offset = index.checked_mul(PHDR_SIZE)?.checked_add(self.phoff)?;
        ProgramHeader::read(self.data, offset)
    }

    /// All program headers, in file order.
    pub fn program_headers(&self) -> impl Iterator<Item = ProgramHeader> + Clone + 'a {
        let elf = *self;
        (0..self.phnum).filter_map(move |i| elf.program_header(i))
    }

    /// The `PT_LOAD` program headers, in file order.
    pub fn load_segments(&self) -> impl Iterator<Item = ProgramHeader> + Clone + 'a {
        self.program_headers().filter(ProgramHeader::is_load)
    }

    /// The file bytes of a segment (`filesz` bytes at `offset`). Always in bounds for the
    /// `PT_LOAD` and `PT_NOTE` headers of this file; for a header that does not describe
    /// bytes of this file, the empty slice.
    pub fn segment_data(&self, ph: &ProgramHeader) -> &'a [u8] {
        range(self.data, ph.offset, ph.filesz).unwrap_or(&[])
    }

    /// All notes of all `PT_NOTE` segments, in order. A malformed note ends the walk of its
    /// segment; the next `PT_NOTE` segment is still read.
    pub fn notes(&self) -> impl Iterator<Item = Note<'a>> + Clone + 'a {
        Notes {
            elf: *self,
            next_ph: 0,
            cur: &[],
        }
    }

    /// The PVH entry point: the descriptor of the `"Xen"` note of type
    /// [`XEN_ELFNOTE_PHYS32_ENTRY`](fluke_abi::boot::XEN_ELFNOTE_PHYS32_ENTRY) (4 or 8
    /// bytes; the low 32 bits are the 32-bit physical entry address).
    pub fn pvh_entry(&self) -> Option<u32> {
        self.notes().find_map(|n| n.pvh_entry())
    }
}

/// A copy of the executable `data` with only what loading it needs: the file up to the end
/// of its ELF header, program header table and every segment's bytes, and no section
/// headers (`e_shoff`, `e_shnum`, `e_shstrndx` zeroed). Linkers put the non-allocated
/// sections (debug information, symbol tables) after the segments, so this drops them
/// while every segment keeps its file offset, bytes and addresses: the kernel loads the
/// copy exactly as it would the original. The original stays the file debuggers read.
#[cfg(any(feature = "alloc", test))]
pub fn strip_to_segments(data: &[u8]) -> Result<alloc::vec::Vec<u8>, ElfError> {
    let elf = Elf::parse(data)?;
    let table_end = elf.phoff + elf.phnum * PHDR_SIZE;
    let file_len = data.len() as u64;
    let segments_end = elf
        .program_headers()
        .filter_map(|ph| ph.offset.checked_add(ph.filesz))
        // `parse` bounds PT_LOAD and PT_NOTE only; a header of another type that claims
        // bytes past the file describes none of it.
        .filter(|&end| end <= file_len)
        .max()
        .unwrap_or(0);
    // segments_end <= file_len, so it fits in usize.
    let keep = usize::try_from(segments_end)
        .unwrap_or(data.len())
        .max(table_end)
        .max(EHDR_SIZE)
        .min(data.len());
    let mut out = alloc::vec::Vec::from(data.get(..keep).unwrap_or(data));
    // e_shoff (8 bytes at 40), e_shnum (2 at 60), e_shstrndx (2 at 62).
    for (at, len) in [(40, 8), (60, 2), (62, 2)] {
        if let Some(field) = out.get_mut(at..at + len) {
            field.fill(0);
        }
    }
    Ok(out)
}

#[derive(Clone)]
struct Notes<'a> {
    elf: Elf<'a>,
    next_ph: usize,
    cur: &'a [u8],
}

/// 4-byte alignment of note names and descriptors.
fn align4(v: usize) -> Option<usize> {
    Some(v.checked_add(3)? & !3)
}

/// Splits the first note off `d`; `None` if `d` is empty or the note is malformed.
pub(crate) fn split_note(d: &[u8]) -> Option<(Note<'_>, &[u8])> {
    let namesz = usize::try_from(u32_at(d, 0)?).ok()?;
    let descsz = usize::try_from(u32_at(d, 4)?).ok()?;
    let note_type = u32_at(d, 8)?;
    let name_end = 12usize.checked_add(namesz)?;
    let name = d.get(12..name_end)?;
    let desc_start = align4(name_end)?;
    let desc_end = desc_start.checked_add(descsz)?;
    let desc = d.get(desc_start..desc_end)?;
    let next = align4(desc_end)?;
    let rest = d.get(next..).unwrap_or(&[]);
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    Some((
        Note {
            name,
            note_type,
            desc,
        },
        rest,
    ))
}

impl<'a> Iterator for Notes<'a> {
    type Item = Note<'a>;

    fn next(&mut self) -> Option<Note<'a>> {
        loop {
            if let Some((note, rest)) = split_note(self.cur) {
                self.cur = rest;
                return Some(note);
            }
            // Current segment exhausted or malformed: move to the next PT_NOTE.
            loop {
                let ph = self.elf.program_header(self.next_ph)?;
                self.next_ph += 1;
                if ph.p_type == PT_NOTE {
                    self.cur = self.elf.segment_data(&ph);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{
        kernel_elf, note_bytes, patch_u16, patch_u32, patch_u64, phdr_offset, ElfSpec, Seg,
        KERNEL_ENTRY_PHYS,
    };
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn parses_synthetic_kernel() {
        let k = kernel_elf();
        let elf = Elf::parse(&k).unwrap();
        assert_eq!(elf.entry(), 0xffff_ffff_8010_0040);
        assert_eq!(elf.phnum(), 3);
        let phs: Vec<_> = elf.program_headers().collect();
        assert_eq!(phs.len(), 3);
        assert_eq!(phs[0].p_type, PT_LOAD);
        assert_eq!(phs[0].flags, PF_R | PF_X);
        assert_eq!(phs[0].paddr, 0x10_0000);
        assert_eq!(phs[0].vaddr, 0xffff_ffff_8010_0000);
        assert_eq!(phs[0].filesz, 0x200);
        assert_eq!(phs[0].memsz, 0x200);
        assert_eq!(phs[1].flags, PF_R | PF_W);
        assert_eq!(phs[1].paddr, 0x10_1000);
        assert_eq!(phs[1].filesz, 0x80);
        assert_eq!(phs[1].memsz, 0x2f10);
        assert_eq!(phs[2].p_type, PT_NOTE);
        let loads: Vec<_> = elf.load_segments().collect();
        assert_eq!(loads, phs[..2].to_vec());
        let d0 = elf.segment_data(&loads[0]);
        assert_eq!(d0.len(), 0x200);
        assert_eq!(d0[0], 0xaa);
        assert_eq!(elf.segment_data(&loads[1]), &[0xbb; 0x80][..]);
        let notes: Vec<_> = elf.notes().collect();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].name, b"GNU");
        assert_eq!(notes[0].note_type, 3);
        assert_eq!(notes[0].desc, &[1, 2, 3, 4, 5][..]);
        assert_eq!(notes[1].name, b"Xen");
        assert_eq!(notes[1].note_type, 18);
        assert_eq!(elf.pvh_entry(), Some(KERNEL_ENTRY_PHYS));
        assert_eq!(elf.program_header(3), None);
        assert_eq!(elf.data().len(), k.len());
    }

    #[test]
    fn program_header_round_trips() {
        let ph = ProgramHeader {
            p_type: PT_LOAD,
            flags: PF_R,
            offset: 1,
            vaddr: 2,
            paddr: 3,
            filesz: 4,
            memsz: 5,
            align: 6,
        };
        assert_eq!(ProgramHeader::read(&ph.to_bytes(), 0), Some(ph));
        assert_eq!(ProgramHeader::read(&ph.to_bytes(), 1), None);
    }

    #[test]
    fn pvh_note_with_8_byte_desc_and_other_sizes() {
        let mut notes = note_bytes(b"Xen\0", 18, &0x1234_5678_9abc_def0u64.to_le_bytes());
        let elf_bytes = ElfSpec::exec(0).seg(Seg::note(notes.clone())).build();
        assert_eq!(
            Elf::parse(&elf_bytes).unwrap().pvh_entry(),
            Some(0x9abc_def0)
        );
        // A 2-byte desc is ignored; a later valid one is found.
        notes = note_bytes(b"Xen\0", 18, &[1, 2]);
        notes.extend(note_bytes(b"Xen\0", 18, &7u32.to_le_bytes()));
        let elf_bytes = ElfSpec::exec(0).seg(Seg::note(notes)).build();
        assert_eq!(Elf::parse(&elf_bytes).unwrap().pvh_entry(), Some(7));
        // Wrong name or type: no entry.
        let mut notes = note_bytes(b"Xen2\0", 18, &7u32.to_le_bytes());
        notes.extend(note_bytes(b"Xen\0", 17, &7u32.to_le_bytes()));
        let elf_bytes = ElfSpec::exec(0).seg(Seg::note(notes)).build();
        assert_eq!(Elf::parse(&elf_bytes).unwrap().pvh_entry(), None);
        // No notes at all.
        let elf_bytes = ElfSpec::exec(0)
            .seg(Seg::load(PF_R, 0x1000, vec![1; 8], 8))
            .build();
        let elf = Elf::parse(&elf_bytes).unwrap();
        assert_eq!(elf.notes().count(), 0);
        assert_eq!(elf.pvh_entry(), None);
    }

    #[test]
    fn notes_in_several_segments_and_malformed_notes_stop_cleanly() {
        let mut bad = note_bytes(b"A\0", 1, &[9]);
        // namesz far past the end of the segment
        bad.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
        bad.extend_from_slice(&4u32.to_le_bytes());
        bad.extend_from_slice(&5u32.to_le_bytes());
        bad.extend_from_slice(b"xxxxxxxx");
        let good = note_bytes(b"Xen\0", 18, &0x10_0040u32.to_le_bytes());
        let elf_bytes = ElfSpec::exec(0)
            .seg(Seg::note(bad))
            .seg(Seg::note(good))
            .build();
        let elf = Elf::parse(&elf_bytes).unwrap();
        let notes: Vec<_> = elf.notes().collect();
        assert_eq!(notes.len(), 2);
        assert_eq!(
            notes[0],
            Note {
                name: b"A",
                note_type: 1,
                desc: &[9]
            }
        );
        assert_eq!(elf.pvh_entry(), Some(0x10_0040));

        // descsz overflowing, a header cut short, an empty segment
        let mut weird = Vec::new();
        weird.extend_from_slice(&0u32.to_le_bytes());
        weird.extend_from_slice(&u32::MAX.to_le_bytes());
        weird.extend_from_slice(&0u32.to_le_bytes());
        let elf_bytes = ElfSpec::exec(0)
            .seg(Seg::note(weird))
            .seg(Seg::note(vec![1, 2, 3]))
            .seg(Seg::note(Vec::new()))
            .build();
        assert_eq!(Elf::parse(&elf_bytes).unwrap().notes().count(), 0);
        // A note whose name has no NUL and whose desc is unpadded at the segment end.
        let mut raw = Vec::new();
        raw.extend_from_slice(&3u32.to_le_bytes());
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(b"abc\0");
        raw.push(0x42);
        let elf_bytes = ElfSpec::exec(0).seg(Seg::note(raw)).build();
        let notes: Vec<_> = Elf::parse(&elf_bytes).unwrap().notes().collect();
        assert_eq!(
            notes,
            [Note {
                name: b"abc",
                note_type: 2,
                desc: &[0x42]
            }]
        );
    }

    fn err(data: &[u8]) -> ElfError {
        Elf::parse(data).unwrap_err()
    }

    #[test]
    fn rejects_bad_headers() {
        let k = kernel_elf();
        assert_eq!(err(&[]), ElfError::BadMagic);
        assert_eq!(
            err(b"\x7fEL"),
            ElfError::Truncated {
                what: "ELF header",
                end: 64,
                len: 3
            }
        );
        assert_eq!(err(b"MZ"), ElfError::BadMagic);
        let mut b = k.clone();
        b[1] = b'X';
        assert_eq!(err(&b), ElfError::BadMagic);
        assert_eq!(err(&b).to_string(), "not an ELF file (bad magic)");
        let mut b = k.clone();
        b[4] = 1;
        assert_eq!(err(&b), ElfError::NotElf64 { class: 1 });
        let mut b = k.clone();
        b[5] = 2;
        assert_eq!(err(&b), ElfError::NotLittleEndian { data: 2 });
        let mut b = k.clone();
        b[6] = 0;
        assert_eq!(err(&b), ElfError::BadVersion { version: 0 });
        let mut b = k.clone();
        patch_u32(&mut b, 20, 2);
        assert_eq!(err(&b), ElfError::BadVersion { version: 2 });
        let mut b = k.clone();
        patch_u16(&mut b, 18, 183);
        assert_eq!(err(&b), ElfError::WrongMachine { machine: 183 });
        assert_eq!(
            err(&b).to_string(),
            "ELF machine is 183 but x86-64 (62) is required"
        );
        let mut b = k.clone();
        patch_u16(&mut b, 16, 3);
        assert_eq!(err(&b), ElfError::NotExecutable { e_type: 3 });
        let mut b = k.clone();
        patch_u16(&mut b, 54, 64);
        assert_eq!(err(&b), ElfError::BadPhentsize { size: 64 });
        let mut b = k.clone();
        patch_u16(&mut b, 56, 65);
        assert_eq!(err(&b), ElfError::TooManyProgramHeaders { count: 65 });
    }

    #[test]
    fn rejects_program_header_table_out_of_bounds() {
        let k = kernel_elf();
        let mut b = k.clone();
        patch_u64(&mut b, 32, 4096 - 3 * 56);
        b.truncate(100);
        // The ELF header itself is intact; the table is not.
        assert_eq!(
            err(&b),
            ElfError::Truncated {
                what: "program header table",
                end: 4096,
                len: 100
            }
        );
        assert_eq!(
            err(&b).to_string(),
            "truncated: program header table ends at byte 4096 but the file has 100 bytes"
        );
        let mut b = k.clone();
        patch_u64(&mut b, 32, u64::MAX - 10);
        assert_eq!(
            err(&b),
            ElfError::ProgramHeaderTableOverflow {
                offset: u64::MAX - 10
            }
        );
        // More headers than the file holds.
        let mut b = k.clone();
        patch_u16(&mut b, 56, 64);
        assert!(matches!(
            err(&b),
            ElfError::Truncated { .. } | ElfError::SegmentTruncated { .. }
        ));
        // phnum == 0 ignores phoff entirely.
        let mut b = k.clone();
        patch_u16(&mut b, 56, 0);
        patch_u64(&mut b, 32, u64::MAX);
        let elf = Elf::parse(&b).unwrap();
        assert_eq!(elf.program_headers().count(), 0);
        assert_eq!(elf.notes().count(), 0);
    }

    #[test]
    fn rejects_bad_segments() {
        let k = kernel_elf();
        let len = k.len() as u64;
        // PT_LOAD data past the end
        let mut b = k.clone();
        patch_u64(&mut b, phdr_offset(0) + 8, len - 0x100);
        assert_eq!(
            err(&b),
            ElfError::SegmentTruncated {
                index: 0,
                offset: len - 0x100,
                filesz: 0x200,
                len
            }
        );
        let mut b = k.clone();
        patch_u64(&mut b, phdr_offset(0) + 8, u64::MAX);
        assert!(matches!(
            err(&b),
            ElfError::SegmentTruncated { index: 0, .. }
        ));
        // PT_NOTE past the end
        let mut b = k.clone();
        patch_u64(&mut b, phdr_offset(2) + 32, len);
        assert!(matches!(
            err(&b),
            ElfError::SegmentTruncated { index: 2, .. }
        ));
        // filesz > memsz
        let mut b = k.clone();
        patch_u64(&mut b, phdr_offset(0) + 40, 0x100);
        assert_eq!(
            err(&b),
            ElfError::FileszExceedsMemsz {
                index: 0,
                filesz: 0x200,
                memsz: 0x100
            }
        );
        // vaddr + memsz overflows
        let mut b = k.clone();
        patch_u64(&mut b, phdr_offset(1) + 16, u64::MAX - 0x100);
        assert_eq!(err(&b), ElfError::AddressOverflow { index: 1 });
        // paddr + memsz overflows
        let mut b = k.clone();
        patch_u64(&mut b, phdr_offset(1) + 24, u64::MAX - 0x100);
        assert_eq!(err(&b), ElfError::AddressOverflow { index: 1 });
        // Other segment types are not checked.
        let mut b = k.clone();
        patch_u32(&mut b, phdr_offset(1), 0x6474_e551); // PT_GNU_STACK
        patch_u64(&mut b, phdr_offset(1) + 8, u64::MAX);
        let elf = Elf::parse(&b).unwrap();
        let ph = elf.program_header(1).unwrap();
        assert_eq!(elf.segment_data(&ph), &[] as &[u8]);
        assert_eq!(elf.load_segments().count(), 1);
    }

    #[test]
    fn every_truncation_fails_without_panicking() {
        let k = kernel_elf();
        for len in 0..k.len() {
            assert!(
                Elf::parse(&k[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn strip_keeps_segments_and_drops_what_follows() {
        let mut elf = ElfSpec::exec(0x40_0000)
            .seg(Seg::load(PF_R | PF_X, 0x40_0000, vec![0x90; 100], 100))
            .seg(Seg::load(PF_R | PF_W, 0x40_1000, vec![7; 16], 64))
            .build();
        let segments_end = elf.len();
        // What a linker writes after the segments: debug sections and section headers.
        elf.extend_from_slice(&[0xdb; 5000]);
        elf[40..48].copy_from_slice(&(segments_end as u64 + 4000).to_le_bytes());
        elf[60..62].copy_from_slice(&9u16.to_le_bytes());
        elf[62..64].copy_from_slice(&8u16.to_le_bytes());
        let stripped = strip_to_segments(&elf).unwrap();
        assert_eq!(stripped.len(), segments_end);
        assert_eq!(&stripped[..40], &elf[..40]);
        assert!(stripped[40..48].iter().all(|&b| b == 0));
        assert!(stripped[60..64].iter().all(|&b| b == 0));
        let (a, b) = (Elf::parse(&elf).unwrap(), Elf::parse(&stripped).unwrap());
        assert_eq!(a.entry(), b.entry());
        let segs = |e: &Elf<'_>| {
            e.load_segments()
                .map(|ph| (ph, e.segment_data(&ph).to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(segs(&a), segs(&b));
        // Stripping again changes nothing.
        assert_eq!(strip_to_segments(&stripped).unwrap(), stripped);
    }

    #[test]
    fn strip_refuses_what_is_not_an_executable() {
        assert_eq!(strip_to_segments(b"#!/bin/sh\n"), Err(ElfError::BadMagic));
        let elf = ElfSpec::exec(0x40_0000)
            .seg(Seg::load(PF_R | PF_X, 0x40_0000, vec![0x90; 100], 100))
            .build();
        for len in 0..elf.len() {
            assert!(
                strip_to_segments(&elf[..len]).is_err(),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            ElfError::BadMagic,
            ElfError::Truncated {
                what: "ELF header",
                end: 64,
                len: 3,
            },
            ElfError::NotElf64 { class: 1 },
            ElfError::NotLittleEndian { data: 2 },
            ElfError::BadVersion { version: 0 },
            ElfError::WrongMachine { machine: 3 },
            ElfError::NotExecutable { e_type: 3 },
            ElfError::BadPhentsize { size: 0 },
            ElfError::TooManyProgramHeaders { count: 100 },
            ElfError::ProgramHeaderTableOverflow { offset: 1 },
            ElfError::SegmentTruncated {
                index: 0,
                offset: 1,
                filesz: 2,
                len: 3,
            },
            ElfError::FileszExceedsMemsz {
                index: 0,
                filesz: 2,
                memsz: 1,
            },
            ElfError::AddressOverflow { index: 0 },
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s:?}");
        }
    }
}
