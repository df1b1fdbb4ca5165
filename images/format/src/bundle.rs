//! The program bundle: the user programs and the manifest that says which one to start.
//!
//! Layout (all integers little-endian, offsets relative to the start of the bundle):
//!
//! | offset | size | field             | meaning                                           |
//! |--------|------|-------------------|---------------------------------------------------|
//! | 0      | 8    | `magic`           | `b"FLUKEBND"` ([`BUNDLE_MAGIC`])                  |
//! | 8      | 4    | `version`         | 2 ([`BUNDLE_VERSION`])                            |
//! | 12     | 4    | `header_size`     | 64 ([`BUNDLE_HEADER_SIZE`])                       |
//! | 16     | 8    | `total_size`      | bytes in the bundle, header included              |
//! | 24     | 8    | `checksum`        | of the metadata: see below                        |
//! | 32     | 4    | `program_count`   | 1..=[`MAX_PROGRAMS`]                              |
//! | 36     | 4    | `table_offset`    | offset of the program table                       |
//! | 40     | 4    | `manifest_offset` | offset of the manifest text                       |
//! | 44     | 4    | `manifest_size`   | length of the manifest text                       |
//! | 48     | 16   | reserved          | zero                                              |
//!
//! The program table has `program_count` entries of 32 bytes: `name_offset: u32`,
//! `name_size: u32`, `data_offset: u64`, `data_size: u64`, `data_checksum: u64`. Names
//! are 1..=32 bytes of `[a-z0-9_-]` and unique; program data starts at 4096-aligned
//! offsets so the kernel can map ELF pages straight out of the bundle. The header, the
//! table, every name, every program's data and the manifest are pairwise disjoint (empty
//! ranges excepted) and lie inside `total_size`.
//!
//! The manifest is UTF-8 text; see [`Manifest`].
//!
//! Checksums ([`checksum`], xxHash64): the header's covers the metadata, the program table,
//! every name in table order and the manifest (the header's own fields are checked for
//! consistency instead, as in version 1), and is
//! checked by [`Bundle::parse`]; each entry's `data_checksum` covers that program's data
//! and is checked only when the program is used ([`Program::verify`]; the kernel does it
//! when it first loads a program, `fluke-vmm inspect` for every one), so a boot touches
//! only the programs it runs, however large the image.

use crate::bytes::{range, u32_at, u64_at};
use crate::short::ShortStr;
use core::fmt;

/// The first 8 bytes of every bundle.
pub const BUNDLE_MAGIC: [u8; 8] = *b"FLUKEBND";
/// The bundle format version this crate reads and writes. Version 1 had one FNV-1a
/// checksum over everything, a byte at a time: 10 ms for an 8 MB bundle at every boot, in
/// the VMM and again in the kernel, where it also touched every page of every program.
pub const BUNDLE_VERSION: u32 = 2;
/// Size of the bundle header.
pub const BUNDLE_HEADER_SIZE: usize = 64;
/// Size of one program table entry.
pub const PROGRAM_ENTRY_SIZE: usize = 32;
/// The most programs a bundle may hold.
pub const MAX_PROGRAMS: usize = 256;
/// The longest program name.
pub const MAX_NAME_LEN: usize = 32;
/// Alignment of every program's data inside the bundle.
pub const DATA_ALIGN: u64 = 4096;
/// The most arguments the `init` line may pass (not counting the program name).
pub const MAX_INIT_ARGS: usize = 32;
/// The longest `init` argument, in bytes.
pub const MAX_ARG_LEN: usize = 255;

const HDR: usize = BUNDLE_HEADER_SIZE;

/// The `total_size` a bundle header claims, if `header` starts with the bundle magic: how
/// many bytes a loader must make available before it can call [`Bundle::parse`] (which
/// checks everything, the checksum included).
pub fn peek_total_size(header: &[u8]) -> Option<u64> {
    if header.get(..8)? != BUNDLE_MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(header.get(16..24)?.try_into().ok()?))
}

/// The bundle's checksum function: xxHash64 with seed 0.
pub fn checksum(data: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0, data)
}

/// The header's checksum of bundle `data` (the module documentation), if the table, the
/// names and the manifest the header points to lie inside `data`.
pub fn metadata_checksum(data: &[u8]) -> Option<u64> {
    use core::hash::Hasher;
    let count = u32_at(data, 32)? as usize;
    let table = u64::from(u32_at(data, 36)?);
    let manifest = range(
        data,
        u64::from(u32_at(data, 40)?),
        u64::from(u32_at(data, 44)?),
    )?;
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(range(
        data,
        table,
        (count.min(MAX_PROGRAMS) * PROGRAM_ENTRY_SIZE) as u64,
    )?);
    for index in 0..count.min(MAX_PROGRAMS) {
        let e = read_entry(data, table as usize, index)?;
        h.write(range(data, e.name_offset, e.name_size)?);
    }
    h.write(manifest);
    Some(h.finish())
}

/// Why a program name is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The name has no bytes.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The name contains a byte outside `[a-z0-9_-]`.
    BadByte {
        /// The first offending byte.
        byte: u8,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NameError::Empty => f.write_str("name is empty"),
            NameError::TooLong { len } => write!(
                f,
                "name is {len} bytes long (at most {MAX_NAME_LEN} allowed)"
            ),
            NameError::BadByte { byte } => write!(
                f,
                "name contains {} (only a-z, 0-9, '_' and '-' are allowed)",
                ShortStr::new(&[byte])
            ),
        }
    }
}

impl core::error::Error for NameError {}

/// Checks that `name` is 1..=32 bytes of `[a-z0-9_-]`.
pub fn validate_program_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    match name
        .iter()
        .find(|&&b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'))
    {
        Some(&byte) => Err(NameError::BadByte { byte }),
        None => Ok(()),
    }
}

/// Why a manifest is invalid. Line numbers start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// No `init` line.
    NoInit,
    /// A second `init` line.
    DuplicateInit {
        /// The second `init` line.
        line: usize,
        /// The first `init` line.
        first: usize,
    },
    /// `init` without a program name.
    MissingProgram {
        /// The `init` line.
        line: usize,
    },
    /// `init` names something that cannot be a program name.
    BadProgramName {
        /// The `init` line.
        line: usize,
        /// The name given.
        name: ShortStr,
        /// What is wrong with it.
        error: NameError,
    },
    /// More than [`MAX_INIT_ARGS`] arguments.
    TooManyArgs {
        /// The `init` line.
        line: usize,
        /// Number of arguments given.
        count: usize,
    },
    /// An argument longer than [`MAX_ARG_LEN`] bytes.
    ArgTooLong {
        /// The `init` line.
        line: usize,
        /// Which argument (1 = the first after the program name).
        index: usize,
        /// Its length.
        len: usize,
    },
    /// A line that is neither blank, a comment nor `init`.
    UnknownDirective {
        /// The line.
        line: usize,
        /// Its first word.
        directive: ShortStr,
    },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ManifestError::NoInit => f.write_str("manifest has no `init <program>` line"),
            ManifestError::DuplicateInit { line, first } => {
                write!(f, "manifest line {line}: second `init` line (the first is line {first}; only one is allowed)")
            }
            ManifestError::MissingProgram { line } => {
                write!(f, "manifest line {line}: `init` needs a program name")
            }
            ManifestError::BadProgramName { line, name, error } => {
                write!(f, "manifest line {line}: `{name}` is not a valid program name: {error}")
            }
            ManifestError::TooManyArgs { line, count } => write!(
                f,
                "manifest line {line}: `init` has {count} arguments (at most {MAX_INIT_ARGS} allowed)"
            ),
            ManifestError::ArgTooLong { line, index, len } => write!(
                f,
                "manifest line {line}: argument {index} is {len} bytes long (at most {MAX_ARG_LEN} allowed)"
            ),
            ManifestError::UnknownDirective { line, directive } => {
                write!(f, "manifest line {line}: unknown directive `{directive}`")
            }
        }
    }
}

impl core::error::Error for ManifestError {}

/// Splits the first ASCII-whitespace-delimited word off `s`: `(word, rest)`; `word` is
/// empty if `s` is blank.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    match s.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    }
}

/// The parsed manifest.
///
/// Syntax, line by line: blank lines and lines whose first non-blank character is `#` are
/// ignored; exactly one line must be `init <program> [args...]`, words separated by ASCII
/// whitespace, with at most [`MAX_INIT_ARGS`] arguments of at most [`MAX_ARG_LEN`] bytes.
/// Any other line is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest<'a> {
    text: &'a str,
    init: &'a str,
    args: &'a str,
    init_line: usize,
}

impl<'a> Manifest<'a> {
    /// Parses and validates manifest text.
    pub fn parse(text: &'a str) -> Result<Manifest<'a>, ManifestError> {
        let mut found: Option<Manifest<'a>> = None;
        for (i, line_text) in text.lines().enumerate() {
            let line = i + 1;
            let (word, rest) = split_word(line_text);
            if word.is_empty() || word.starts_with('#') {
                continue;
            }
            if word != "init" {
                return Err(ManifestError::UnknownDirective {
                    line,
                    directive: ShortStr::new(word.as_bytes()),
                });
            }
            if let Some(first) = found {
                return Err(ManifestError::DuplicateInit {
                    line,
                    first: first.init_line,
                });
            }
            let (program, args) = split_word(rest);
            if program.is_empty() {
                return Err(ManifestError::MissingProgram { line });
            }
            validate_program_name(program.as_bytes()).map_err(|error| {
                ManifestError::BadProgramName {
                    line,
                    name: ShortStr::new(program.as_bytes()),
                    error,
                }
            })?;
            let mut count = 0;
            for arg in args.split_ascii_whitespace() {
                count += 1;
                if arg.len() > MAX_ARG_LEN {
                    return Err(ManifestError::ArgTooLong {
                        line,
                        index: count,
                        len: arg.len(),
                    });
                }
            }
            if count > MAX_INIT_ARGS {
                return Err(ManifestError::TooManyArgs { line, count });
            }
            found = Some(Manifest {
                text,
                init: program,
                args,
                init_line: line,
            });
        }
        found.ok_or(ManifestError::NoInit)
    }

    /// The whole manifest text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The name of the program to start first.
    pub fn init(&self) -> &'a str {
        self.init
    }

    /// The arguments given to init after its name (the name itself is not included).
    pub fn args(&self) -> impl Iterator<Item = &'a str> + Clone + 'a {
        self.args.split_ascii_whitespace()
    }

    /// Number of [`args`](Self::args).
    pub fn arg_count(&self) -> usize {
        self.args().count()
    }

    /// The line number (from 1) of the `init` line.
    pub fn init_line(&self) -> usize {
        self.init_line
    }
}

/// A part of a bundle, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// The 64-byte header.
    Header,
    /// The program table.
    Table,
    /// The manifest text.
    Manifest,
    /// A program's name.
    Name(usize),
    /// A program's data.
    Data(usize),
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Region::Header => f.write_str("header"),
            Region::Table => f.write_str("program table"),
            Region::Manifest => f.write_str("manifest"),
            Region::Name(i) => write!(f, "name of program {i}"),
            Region::Data(i) => write!(f, "data of program {i}"),
        }
    }
}

/// Why bytes are not a valid bundle (or a builder cannot produce one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    /// Fewer bytes than the header or `total_size` needs.
    Truncated {
        /// What was being read.
        what: &'static str,
        /// The byte offset it ends at.
        end: u64,
        /// How many bytes are present.
        len: u64,
    },
    /// The bytes do not start with [`BUNDLE_MAGIC`].
    BadMagic,
    /// A version other than [`BUNDLE_VERSION`].
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// `header_size` is not 64.
    BadHeaderSize {
        /// The value found.
        size: u32,
    },
    /// The header's reserved bytes are not zero.
    HeaderReservedNotZero,
    /// `total_size` is smaller than the header.
    TotalSizeTooSmall {
        /// The value found.
        total: u64,
    },
    /// The metadata do not match the header's checksum.
    ChecksumMismatch {
        /// The checksum in the header.
        expected: u64,
        /// The checksum of the contents.
        actual: u64,
    },
    /// `program_count` is zero.
    NoPrograms,
    /// More than [`MAX_PROGRAMS`] programs.
    TooManyPrograms {
        /// The count.
        count: usize,
    },
    /// A region extends past `total_size`.
    OutOfBounds {
        /// The region.
        region: Region,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
        /// `total_size`.
        total: u64,
    },
    /// Two regions overlap.
    Overlap {
        /// The later region.
        region: Region,
        /// The region it overlaps.
        other: Region,
    },
    /// A program's data offset is not a multiple of [`DATA_ALIGN`].
    UnalignedData {
        /// Program index.
        index: usize,
        /// The offset.
        offset: u64,
    },
    /// A program's data do not match its entry's checksum.
    ProgramChecksumMismatch {
        /// Program index.
        index: usize,
        /// Its name.
        name: ShortStr,
        /// The checksum in its entry.
        expected: u64,
        /// The checksum of its data.
        actual: u64,
    },
    /// An invalid program name.
    BadName {
        /// Program index.
        index: usize,
        /// The name.
        name: ShortStr,
        /// What is wrong with it.
        error: NameError,
    },
    /// Two programs with the same name.
    DuplicateName {
        /// The name.
        name: ShortStr,
    },
    /// The manifest is not UTF-8.
    ManifestNotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The manifest is invalid.
    Manifest(ManifestError),
    /// The manifest's init program is not in the bundle.
    InitNotFound {
        /// The name `init` gives.
        name: ShortStr,
    },
    /// The builder's contents do not fit the format's 32-bit offsets or the address space.
    TooLarge,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BundleError::Truncated { what, end, len } => {
                write!(f, "truncated: {what} ends at byte {end} but only {len} bytes are present")
            }
            BundleError::BadMagic => f.write_str("not a fluke program bundle (bad magic)"),
            BundleError::UnsupportedVersion { version } => {
                write!(f, "unsupported bundle version {version} (this build reads version {BUNDLE_VERSION})")
            }
            BundleError::BadHeaderSize { size } => {
                write!(f, "bundle header size is {size}, expected {BUNDLE_HEADER_SIZE}")
            }
            BundleError::HeaderReservedNotZero => f.write_str("bundle header's reserved bytes are not zero"),
            BundleError::TotalSizeTooSmall { total } => {
                write!(f, "bundle total size {total} is smaller than its {BUNDLE_HEADER_SIZE}-byte header")
            }
            BundleError::ChecksumMismatch { expected, actual } => write!(
                f,
                "bundle checksum mismatch (corrupt image): header says {expected:#018x}, the metadata hash to {actual:#018x}"
            ),
            BundleError::NoPrograms => f.write_str("bundle contains no programs"),
            BundleError::TooManyPrograms { count } => {
                write!(f, "bundle has {count} programs (at most {MAX_PROGRAMS} allowed)")
            }
            BundleError::OutOfBounds { region, offset, size, total } => write!(
                f,
                "bundle {region} (offset {offset:#x}, {size} bytes) extends past the end of the bundle ({total} bytes)"
            ),
            BundleError::Overlap { region, other } => write!(f, "bundle {region} overlaps the {other}"),
            BundleError::UnalignedData { index, offset } => write!(
                f,
                "bundle data of program {index} starts at offset {offset:#x}, which is not {DATA_ALIGN}-byte aligned"
            ),
            BundleError::ProgramChecksumMismatch { index, name, expected, actual } => write!(
                f,
                "bundle program {index} `{name}` is corrupt: its entry says checksum {expected:#018x}, its data hash to {actual:#018x}"
            ),
            BundleError::BadName { index, name, error } => {
                write!(f, "bundle program {index} has an invalid name `{name}`: {error}")
            }
            BundleError::DuplicateName { name } => write!(f, "bundle has two programs named `{name}`"),
            BundleError::ManifestNotUtf8 { valid_up_to } => {
                write!(f, "bundle manifest is not valid UTF-8 (error at byte {valid_up_to})")
            }
            BundleError::Manifest(e) => write!(f, "bundle {e}"),
            BundleError::InitNotFound { name } => {
                write!(f, "bundle manifest: init program `{name}` is not in the bundle")
            }
            BundleError::TooLarge => f.write_str("bundle is too large for the format's offsets"),
        }
    }
}

impl core::error::Error for BundleError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            BundleError::Manifest(e) => Some(e),
            BundleError::BadName { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<ManifestError> for BundleError {
    fn from(e: ManifestError) -> BundleError {
        BundleError::Manifest(e)
    }
}

/// One program in a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program<'a> {
    /// Its name (`[a-z0-9_-]{1,32}`).
    pub name: &'a str,
    /// Its bytes (normally an ELF executable).
    pub data: &'a [u8],
    /// Offset of `data` from the start of the bundle (a multiple of 4096).
    pub offset: u64,
    /// Its index in the program table.
    pub index: usize,
    /// The checksum its entry gives for `data` ([`Program::verify`]).
    pub checksum: u64,
}

impl Program<'_> {
    /// Checks the program's data against its entry's checksum: before it is used.
    pub fn verify(&self) -> Result<(), BundleError> {
        let actual = checksum(self.data);
        if actual == self.checksum {
            Ok(())
        } else {
            Err(BundleError::ProgramChecksumMismatch {
                index: self.index,
                name: ShortStr::new(self.name.as_bytes()),
                expected: self.checksum,
                actual,
            })
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    name_offset: u64,
    name_size: u64,
    data_offset: u64,
    data_size: u64,
    data_checksum: u64,
}

fn read_entry(data: &[u8], table: usize, index: usize) -> Option<Entry> {
    let at = index.checked_mul(PROGRAM_ENTRY_SIZE)?.checked_add(table)?;
    Some(Entry {
        name_offset: u64::from(u32_at(data, at)?),
        name_size: u64::from(u32_at(data, at.checked_add(4)?)?),
        data_offset: u64_at(data, at.checked_add(8)?)?,
        data_size: u64_at(data, at.checked_add(16)?)?,
        data_checksum: u64_at(data, at.checked_add(24)?)?,
    })
}

fn check_in_bounds(region: Region, offset: u64, size: u64, total: u64) -> Result<(), BundleError> {
    match offset.checked_add(size) {
        Some(end) if end <= total => Ok(()),
        _ => Err(BundleError::OutOfBounds {
            region,
            offset,
            size,
            total,
        }),
    }
}

/// A validated bundle.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    data: &'a [u8],
    count: usize,
    table: usize,
    manifest: Manifest<'a>,
}

impl<'a> Bundle<'a> {
    /// Validates a bundle. `data` may extend past `total_size`; the extra bytes are ignored.
    pub fn parse(data: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        let len = data.len() as u64;
        let magic_len = data.len().min(BUNDLE_MAGIC.len());
        if data.is_empty() || data.get(..magic_len) != BUNDLE_MAGIC.get(..magic_len) {
            return Err(BundleError::BadMagic);
        }
        let header = data.get(..HDR).ok_or(BundleError::Truncated {
            what: "bundle header",
            end: HDR as u64,
            len,
        })?;
        let version = u32_at(header, 8).unwrap_or(0);
        if version != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion { version });
        }
        let header_size = u32_at(header, 12).unwrap_or(0);
        if header_size as usize != HDR {
            return Err(BundleError::BadHeaderSize { size: header_size });
        }
        if header.get(48..).is_none_or(|r| r.iter().any(|&b| b != 0)) {
            return Err(BundleError::HeaderReservedNotZero);
        }
        let total = u64_at(header, 16).unwrap_or(0);
        if total < HDR as u64 {
            return Err(BundleError::TotalSizeTooSmall { total });
        }
        let truncated = BundleError::Truncated {
            what: "bundle",
            end: total,
            len,
        };
        let data = range(data, 0, total).ok_or(truncated)?;

        let count = u32_at(header, 32).unwrap_or(0) as usize;
        if count == 0 {
            return Err(BundleError::NoPrograms);
        }
        if count > MAX_PROGRAMS {
            return Err(BundleError::TooManyPrograms { count });
        }
        let table_offset = u64::from(u32_at(header, 36).unwrap_or(0));
        let table_size = (count * PROGRAM_ENTRY_SIZE) as u64;
        check_in_bounds(Region::Table, table_offset, table_size, total)?;
        if table_offset < HDR as u64 {
            return Err(BundleError::Overlap {
                region: Region::Table,
                other: Region::Header,
            });
        }
        let manifest_offset = u64::from(u32_at(header, 40).unwrap_or(0));
        let manifest_size = u64::from(u32_at(header, 44).unwrap_or(0));
        check_in_bounds(Region::Manifest, manifest_offset, manifest_size, total)?;
        let table = table_offset as usize; // < total <= data.len()

        for index in 0..count {
            let e = read_entry(data, table, index).ok_or(BundleError::OutOfBounds {
                region: Region::Table,
                offset: table_offset,
                size: table_size,
                total,
            })?;
            check_in_bounds(Region::Name(index), e.name_offset, e.name_size, total)?;
            check_in_bounds(Region::Data(index), e.data_offset, e.data_size, total)?;
            if !e.data_offset.is_multiple_of(DATA_ALIGN) {
                return Err(BundleError::UnalignedData {
                    index,
                    offset: e.data_offset,
                });
            }
            let name = range(data, e.name_offset, e.name_size).unwrap_or(&[]);
            validate_program_name(name).map_err(|error| BundleError::BadName {
                index,
                name: ShortStr::new(name),
                error,
            })?;
        }

        // Every region pairwise disjoint. At most 3 + 2 * 256 regions: fine without a heap.
        let regions = 3 + 2 * count;
        let region = |k: usize| -> Option<(Region, u64, u64)> {
            let (r, off, size) = match k {
                0 => (Region::Header, 0, HDR as u64),
                1 => (Region::Table, table_offset, table_size),
                2 => (Region::Manifest, manifest_offset, manifest_size),
                _ => {
                    let index = (k - 3) / 2;
                    let e = read_entry(data, table, index)?;
                    if (k - 3).is_multiple_of(2) {
                        (Region::Name(index), e.name_offset, e.name_size)
                    } else {
                        (Region::Data(index), e.data_offset, e.data_size)
                    }
                }
            };
            Some((r, off, off.checked_add(size)?))
        };
        for b in 1..regions {
            let Some((rb, sb, eb)) = region(b) else {
                continue;
            };
            if sb == eb {
                continue;
            }
            for a in 0..b {
                let Some((ra, sa, ea)) = region(a) else {
                    continue;
                };
                if sa < ea && sa < eb && sb < ea {
                    return Err(BundleError::Overlap {
                        region: rb,
                        other: ra,
                    });
                }
            }
        }

        let name_of = |index: usize| -> &'a [u8] {
            read_entry(data, table, index)
                .and_then(|e| range(data, e.name_offset, e.name_size))
                .unwrap_or(&[])
        };
        for j in 1..count {
            let nj = name_of(j);
            if (0..j).any(|i| name_of(i) == nj) {
                return Err(BundleError::DuplicateName {
                    name: ShortStr::new(nj),
                });
            }
        }

        // The layout is consistent; are the metadata what was written? (Program data are
        // checked when used.)
        let expected = u64_at(header, 24).unwrap_or(0);
        let actual = metadata_checksum(data).unwrap_or(!expected);
        if expected != actual {
            return Err(BundleError::ChecksumMismatch { expected, actual });
        }

        let text = range(data, manifest_offset, manifest_size).unwrap_or(&[]);
        let text = core::str::from_utf8(text).map_err(|e| BundleError::ManifestNotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        let manifest = Manifest::parse(text)?;
        let bundle = Bundle {
            data,
            count,
            table,
            manifest,
        };
        if bundle.program(manifest.init()).is_none() {
            return Err(BundleError::InitNotFound {
                name: ShortStr::new(manifest.init().as_bytes()),
            });
        }
        Ok(bundle)
    }

    /// `total_size`.
    pub fn total_size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The bundle's bytes (`total_size` of them).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The metadata checksum stored in (and verified against) the header.
    pub fn checksum(&self) -> u64 {
        u64_at(self.data, 24).unwrap_or(0)
    }

    /// Checks every program's data ([`Program::verify`]).
    pub fn verify_programs(&self) -> Result<(), BundleError> {
        self.programs().try_for_each(|p| p.verify())
    }

    /// Number of programs.
    pub fn program_count(&self) -> usize {
        self.count
    }

    /// Program number `index` in table order.
    pub fn program_at(&self, index: usize) -> Option<Program<'a>> {
        if index >= self.count {
            return None;
        }
        let e = read_entry(self.data, self.table, index)?;
        let name = core::str::from_utf8(range(self.data, e.name_offset, e.name_size)?).ok()?;
        let data = range(self.data, e.data_offset, e.data_size)?;
        Some(Program {
            name,
            data,
            offset: e.data_offset,
            index,
            checksum: e.data_checksum,
        })
    }

    /// All programs in table order.
    pub fn programs(&self) -> impl Iterator<Item = Program<'a>> + Clone + 'a {
        let b = *self;
        (0..self.count).filter_map(move |i| b.program_at(i))
    }

    /// The program called `name`.
    pub fn program(&self, name: &str) -> Option<Program<'a>> {
        self.programs().find(|p| p.name == name)
    }

    /// The manifest.
    pub fn manifest(&self) -> Manifest<'a> {
        self.manifest
    }
}

#[cfg(any(feature = "alloc", test))]
pub use builder::BundleBuilder;

#[cfg(any(feature = "alloc", test))]
mod builder {
    use super::*;
    use crate::bytes::align_up;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Writes bundles. Layout: header, program table, names, manifest, then each
    /// program's data at the next 4096-aligned offset; `total_size` ends with the last
    /// program's data.
    #[derive(Clone, Debug, Default)]
    pub struct BundleBuilder {
        programs: Vec<(String, Vec<u8>)>,
        manifest: String,
    }

    fn to_u32(v: u64) -> Result<u32, BundleError> {
        u32::try_from(v).map_err(|_| BundleError::TooLarge)
    }

    fn to_usize(v: u64) -> Result<usize, BundleError> {
        usize::try_from(v).map_err(|_| BundleError::TooLarge)
    }

    impl BundleBuilder {
        /// An empty builder (no programs, empty manifest).
        pub fn new() -> BundleBuilder {
            BundleBuilder::default()
        }

        /// Adds a program; the name must be valid and unused.
        pub fn add_program(&mut self, name: &str, data: &[u8]) -> Result<&mut Self, BundleError> {
            let index = self.programs.len();
            validate_program_name(name.as_bytes()).map_err(|error| BundleError::BadName {
                index,
                name: ShortStr::new(name.as_bytes()),
                error,
            })?;
            if self.programs.iter().any(|(n, _)| n == name) {
                return Err(BundleError::DuplicateName {
                    name: ShortStr::new(name.as_bytes()),
                });
            }
            if index >= MAX_PROGRAMS {
                return Err(BundleError::TooManyPrograms { count: index + 1 });
            }
            self.programs.push((String::from(name), Vec::from(data)));
            Ok(self)
        }

        /// Sets the manifest text (validated by [`build`](Self::build)).
        pub fn manifest(&mut self, text: &str) -> &mut Self {
            self.manifest = String::from(text);
            self
        }

        /// Lays out and checksums the bundle. Fails if there are no programs, the manifest
        /// is invalid or names a program that was not added.
        pub fn build(&self) -> Result<Vec<u8>, BundleError> {
            if self.programs.is_empty() {
                return Err(BundleError::NoPrograms);
            }
            let manifest = Manifest::parse(&self.manifest)?;
            if !self.programs.iter().any(|(n, _)| n == manifest.init()) {
                return Err(BundleError::InitNotFound {
                    name: ShortStr::new(manifest.init().as_bytes()),
                });
            }
            let count = self.programs.len() as u64;
            let table_offset = HDR as u64;
            let names_offset = table_offset + count * PROGRAM_ENTRY_SIZE as u64;
            let mut cursor = names_offset;
            let mut entries = Vec::with_capacity(self.programs.len());
            for (name, data) in &self.programs {
                let name_offset = cursor;
                cursor += name.len() as u64;
                entries.push((name_offset, 0u64, data.len() as u64));
            }
            let manifest_offset = cursor;
            let manifest_size = self.manifest.len() as u64;
            let manifest_end = manifest_offset
                .checked_add(manifest_size)
                .ok_or(BundleError::TooLarge)?;
            to_u32(manifest_end)?;
            let mut total = manifest_end;
            for entry in &mut entries {
                let data_offset = align_up(total, DATA_ALIGN).ok_or(BundleError::TooLarge)?;
                entry.1 = data_offset;
                total = data_offset
                    .checked_add(entry.2)
                    .ok_or(BundleError::TooLarge)?;
            }

            let mut out = vec![0u8; to_usize(total)?];
            let put = |out: &mut Vec<u8>, at: u64, bytes: &[u8]| -> Result<(), BundleError> {
                let start = to_usize(at)?;
                let end = start
                    .checked_add(bytes.len())
                    .ok_or(BundleError::TooLarge)?;
                out.get_mut(start..end)
                    .ok_or(BundleError::TooLarge)?
                    .copy_from_slice(bytes);
                Ok(())
            };
            put(&mut out, 0, &BUNDLE_MAGIC)?;
            put(&mut out, 8, &BUNDLE_VERSION.to_le_bytes())?;
            put(&mut out, 12, &(HDR as u32).to_le_bytes())?;
            put(&mut out, 16, &total.to_le_bytes())?;
            put(&mut out, 32, &(count as u32).to_le_bytes())?;
            put(&mut out, 36, &to_u32(table_offset)?.to_le_bytes())?;
            put(&mut out, 40, &to_u32(manifest_offset)?.to_le_bytes())?;
            put(&mut out, 44, &to_u32(manifest_size)?.to_le_bytes())?;
            for (i, ((name, data), &(name_offset, data_offset, data_size))) in
                self.programs.iter().zip(entries.iter()).enumerate()
            {
                let at = table_offset + (i * PROGRAM_ENTRY_SIZE) as u64;
                put(&mut out, at, &to_u32(name_offset)?.to_le_bytes())?;
                put(&mut out, at + 4, &(name.len() as u32).to_le_bytes())?;
                put(&mut out, at + 8, &data_offset.to_le_bytes())?;
                put(&mut out, at + 16, &data_size.to_le_bytes())?;
                put(&mut out, at + 24, &checksum(data).to_le_bytes())?;
                put(&mut out, name_offset, name.as_bytes())?;
                put(&mut out, data_offset, data)?;
            }
            put(&mut out, manifest_offset, self.manifest.as_bytes())?;
            let sum = metadata_checksum(&out).ok_or(BundleError::TooLarge)?;
            put(&mut out, 24, &sum.to_le_bytes())?;
            Bundle::parse(&out)?.verify_programs()?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{mutate, patch_u32, patch_u64, user_elf, XorShift};
    use alloc::format;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    const MANIFEST: &str =
        "# the first program\n\ninit shell -v  --name=fluke\n   # indented comment\n";

    fn sample() -> Vec<u8> {
        BundleBuilder::new()
            .add_program("shell", &user_elf(0x11, 300))
            .unwrap()
            .add_program("hello-world_2", &user_elf(0x22, 5000))
            .unwrap()
            .manifest(MANIFEST)
            .build()
            .unwrap()
    }

    /// Recomputes the checksums after a test edits the payload: each program's (where its
    /// entry is in bounds), then the metadata's.
    fn reseal(b: &mut [u8]) {
        let count = (u32::from_le_bytes(b[32..36].try_into().unwrap()) as usize).min(MAX_PROGRAMS);
        let table = u32::from_le_bytes(b[36..40].try_into().unwrap()) as usize;
        for index in 0..count {
            let Some(e) = read_entry(b, table, index) else {
                continue;
            };
            if let Some(data) = range(b, e.data_offset, e.data_size) {
                let sum = checksum(data);
                patch_u64(b, table + index * PROGRAM_ENTRY_SIZE + 24, sum);
            }
        }
        if let Some(sum) = metadata_checksum(b) {
            patch_u64(b, 24, sum);
        }
    }

    fn err(b: &[u8]) -> BundleError {
        Bundle::parse(b).unwrap_err()
    }

    fn entry_at(i: usize) -> usize {
        64 + 32 * i
    }

    #[test]
    fn checksum_known_values() {
        // xxHash64, seed 0 (the reference implementation's test vectors).
        assert_eq!(checksum(b""), 0xef46_db37_51d8_e999);
        assert_eq!(checksum(b"a"), 0xd24e_c4f1_a98c_6e5b);
        assert_eq!(checksum(b"abc"), 0x44bc_2cf5_ad77_0999);
    }

    #[test]
    fn builds_and_parses() {
        let b = sample();
        let bundle = Bundle::parse(&b).unwrap();
        assert_eq!(bundle.total_size(), b.len() as u64);
        assert_eq!(bundle.as_bytes(), &b[..]);
        assert_eq!(bundle.program_count(), 2);
        assert_eq!(&b[..8], b"FLUKEBND");
        assert_eq!(Some(bundle.checksum()), metadata_checksum(&b));
        let progs: Vec<_> = bundle.programs().collect();
        assert_eq!(progs.len(), 2);
        assert_eq!(progs[0].name, "shell");
        assert_eq!(progs[0].data, &user_elf(0x11, 300)[..]);
        assert_eq!(progs[0].offset, 4096);
        assert_eq!(progs[1].name, "hello-world_2");
        assert_eq!(progs[1].data, &user_elf(0x22, 5000)[..]);
        assert_eq!(progs[1].offset % 4096, 0);
        assert!(progs[1].offset >= progs[0].offset + progs[0].data.len() as u64);
        assert_eq!(progs[1].offset + progs[1].data.len() as u64, b.len() as u64);
        assert_eq!(bundle.program("shell"), Some(progs[0]));
        assert_eq!(bundle.program("hello-world_2"), Some(progs[1]));
        assert_eq!(bundle.program("nope"), None);
        assert_eq!(bundle.program_at(2), None);
        // Program data is a parseable ELF.
        assert!(crate::elf::Elf::parse(progs[1].data).is_ok());
        let m = bundle.manifest();
        assert_eq!(m.text(), MANIFEST);
        assert_eq!(m.init(), "shell");
        assert_eq!(m.args().collect::<Vec<_>>(), ["-v", "--name=fluke"]);
        assert_eq!(m.arg_count(), 2);
        assert_eq!(m.init_line(), 3);
        // Trailing bytes are ignored.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xff; 100]);
        assert_eq!(Bundle::parse(&longer).unwrap().total_size(), b.len() as u64);
    }

    #[test]
    fn empty_program_data_is_allowed() {
        let b = BundleBuilder::new()
            .add_program("a", b"")
            .unwrap()
            .add_program("b", b"")
            .unwrap()
            .add_program("init", b"x")
            .unwrap()
            .manifest("init init")
            .build()
            .unwrap();
        let bundle = Bundle::parse(&b).unwrap();
        assert_eq!(
            bundle.programs().map(|p| p.data.len()).collect::<Vec<_>>(),
            [0, 0, 1]
        );
        assert_eq!(bundle.manifest().args().count(), 0);
    }

    #[test]
    fn max_programs() {
        let mut builder = BundleBuilder::new();
        for i in 0..MAX_PROGRAMS {
            builder.add_program(&format!("p{i}"), &[i as u8]).unwrap();
        }
        assert_eq!(
            builder.add_program("one-more", b"x").unwrap_err(),
            BundleError::TooManyPrograms {
                count: MAX_PROGRAMS + 1
            }
        );
        let b = builder.manifest("init p255 a b c").build().unwrap();
        let bundle = Bundle::parse(&b).unwrap();
        assert_eq!(bundle.programs().count(), MAX_PROGRAMS);
        assert_eq!(bundle.program("p77").unwrap().data, &[77]);
    }

    #[test]
    fn builder_rejects_bad_input() {
        let mut b = BundleBuilder::new();
        for (i, bad) in ["", "UPPER", "with space", "dot.dot", "é", &"x".repeat(33)]
            .iter()
            .enumerate()
        {
            let e = b.add_program(bad, b"x").unwrap_err();
            assert!(
                matches!(e, BundleError::BadName { index: 0, .. }),
                "{i}: {e:?}"
            );
        }
        assert_eq!(
            b.add_program("", b"x").unwrap_err(),
            BundleError::BadName {
                index: 0,
                name: ShortStr::new(b""),
                error: NameError::Empty
            }
        );
        b.add_program(&"x".repeat(32), b"x").unwrap();
        assert_eq!(b.add_program("xy", b"").map(|_| ()), Ok(()));
        assert_eq!(
            b.add_program("xy", b"").unwrap_err(),
            BundleError::DuplicateName {
                name: ShortStr::new(b"xy")
            }
        );
        assert_eq!(
            BundleBuilder::new().manifest("init a").build().unwrap_err(),
            BundleError::NoPrograms
        );
        assert_eq!(
            b.build().unwrap_err(),
            BundleError::Manifest(ManifestError::NoInit)
        );
        assert_eq!(
            b.manifest("init missing").build().unwrap_err(),
            BundleError::InitNotFound {
                name: ShortStr::new(b"missing")
            }
        );
        assert_eq!(
            b.manifest("init missing").build().unwrap_err().to_string(),
            "bundle manifest: init program `missing` is not in the bundle"
        );
        assert!(b.manifest("init xy\nrun xy").build().is_err());
        assert!(b.manifest("init xy").build().is_ok());
    }

    #[test]
    fn manifest_syntax() {
        let m = Manifest::parse("init a").unwrap();
        assert_eq!((m.init(), m.arg_count(), m.init_line()), ("a", 0, 1));
        let m = Manifest::parse("\r\n#c\r\n\tinit\tb\tx y\r\n").unwrap();
        assert_eq!(m.init(), "b");
        assert_eq!(m.args().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(Manifest::parse("").unwrap_err(), ManifestError::NoInit);
        assert_eq!(
            Manifest::parse("# only\n\n").unwrap_err(),
            ManifestError::NoInit
        );
        assert_eq!(
            Manifest::parse("init a\ninit b").unwrap_err(),
            ManifestError::DuplicateInit { line: 2, first: 1 }
        );
        assert_eq!(
            Manifest::parse("\ninit  ").unwrap_err(),
            ManifestError::MissingProgram { line: 2 }
        );
        assert_eq!(
            Manifest::parse("init a\nrun b").unwrap_err(),
            ManifestError::UnknownDirective {
                line: 2,
                directive: ShortStr::new(b"run")
            }
        );
        assert_eq!(
            Manifest::parse("init a\nrun b").unwrap_err().to_string(),
            "manifest line 2: unknown directive `run`"
        );
        assert_eq!(
            Manifest::parse("INIT a").unwrap_err(),
            ManifestError::UnknownDirective {
                line: 1,
                directive: ShortStr::new(b"INIT")
            }
        );
        assert_eq!(
            Manifest::parse("init Shell").unwrap_err(),
            ManifestError::BadProgramName {
                line: 1,
                name: ShortStr::new(b"Shell"),
                error: NameError::BadByte { byte: b'S' }
            }
        );
        let args32 = format!(
            "init a {}",
            (0..32).map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
        );
        assert_eq!(Manifest::parse(&args32).unwrap().arg_count(), 32);
        let args33 = format!("{args32} x");
        assert_eq!(
            Manifest::parse(&args33).unwrap_err(),
            ManifestError::TooManyArgs { line: 1, count: 33 }
        );
        let ok_arg = format!("init a {}", "z".repeat(255));
        assert!(Manifest::parse(&ok_arg).is_ok());
        let long_arg = format!("init a x {}", "z".repeat(256));
        assert_eq!(
            Manifest::parse(&long_arg).unwrap_err(),
            ManifestError::ArgTooLong {
                line: 1,
                index: 2,
                len: 256
            }
        );
        // Non-ASCII text is fine in comments and arguments.
        let m = Manifest::parse("# größe\ninit a ünïcode").unwrap();
        assert_eq!(m.args().next(), Some("ünïcode"));
    }

    #[test]
    fn rejects_corrupt_headers() {
        let good = sample();
        assert_eq!(err(&[]), BundleError::BadMagic);
        assert_eq!(
            err(b"FLUKE"),
            BundleError::Truncated {
                what: "bundle header",
                end: 64,
                len: 5
            }
        );
        assert_eq!(
            err(&good[..63]),
            BundleError::Truncated {
                what: "bundle header",
                end: 64,
                len: 63
            }
        );
        let total = good.len() as u64;
        assert_eq!(
            err(&good[..good.len() - 1]),
            BundleError::Truncated {
                what: "bundle",
                end: total,
                len: total - 1
            }
        );
        let mut b = good.clone();
        b[0] = b'f';
        assert_eq!(err(&b), BundleError::BadMagic);
        assert_eq!(
            err(&b).to_string(),
            "not a fluke program bundle (bad magic)"
        );
        let mut b = good.clone();
        patch_u32(&mut b, 8, 1);
        assert_eq!(err(&b), BundleError::UnsupportedVersion { version: 1 });
        let mut b = good.clone();
        patch_u32(&mut b, 12, 128);
        assert_eq!(err(&b), BundleError::BadHeaderSize { size: 128 });
        let mut b = good.clone();
        b[63] = 1;
        assert_eq!(err(&b), BundleError::HeaderReservedNotZero);
        let mut b = good.clone();
        patch_u64(&mut b, 16, 63);
        assert_eq!(err(&b), BundleError::TotalSizeTooSmall { total: 63 });
        let mut b = good.clone();
        patch_u64(&mut b, 16, u64::MAX);
        assert!(matches!(
            err(&b),
            BundleError::Truncated { what: "bundle", .. }
        ));
        let mut b = good.clone();
        patch_u32(&mut b, 32, 0);
        assert_eq!(err(&b), BundleError::NoPrograms);
        let mut b = good.clone();
        patch_u32(&mut b, 32, 257);
        assert_eq!(err(&b), BundleError::TooManyPrograms { count: 257 });
    }

    #[test]
    fn checksums_cover_every_byte_but_the_padding() {
        let good = sample();
        let bundle = Bundle::parse(&good).unwrap();
        let data: Vec<(usize, core::ops::Range<usize>)> = bundle
            .programs()
            .map(|p| (p.index, p.offset as usize..p.offset as usize + p.data.len()))
            .collect();
        // The table, the names and the manifest: the sample's builder lays them out back to
        // back after the header.
        let metadata_end = 64
            + 32 * bundle.program_count()
            + bundle.programs().map(|p| p.name.len()).sum::<usize>()
            + bundle.manifest().text().len();
        let (mut in_metadata, mut in_data, mut padding) = (0, 0, 0);
        for pos in 64..good.len() {
            let mut b = good.clone();
            b[pos] ^= 0x80;
            if pos < metadata_end {
                in_metadata += 1;
                // A flip in an offset or a size may be caught as out of bounds first.
                assert!(Bundle::parse(&b).is_err(), "flip at {pos}");
            } else if let Some((index, _)) = data.iter().find(|(_, r)| r.contains(&pos)) {
                in_data += 1;
                // The boot does not read it; using the program does.
                let parsed = Bundle::parse(&b).unwrap();
                let p = parsed.program_at(*index).unwrap();
                assert!(
                    matches!(p.verify(), Err(BundleError::ProgramChecksumMismatch { index: i, .. }) if i == *index),
                    "flip at {pos}"
                );
                assert!(parsed.verify_programs().is_err());
                assert!(parsed.program_at(1 - index).unwrap().verify().is_ok());
            } else {
                padding += 1;
                // Alignment padding: read by nothing.
                Bundle::parse(&b).unwrap().verify_programs().unwrap();
            }
        }
        assert!(in_metadata > 100 && in_data > 5000 && padding > 0);
        let mut b = good.clone();
        b[metadata_end - 1] ^= 1;
        assert!(err(&b)
            .to_string()
            .starts_with("bundle checksum mismatch (corrupt image)"));
        let mut b = good.clone();
        b[data[1].1.start + 10] ^= 1;
        let e = Bundle::parse(&b).unwrap().verify_programs().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bundle program 1 `hello-world_2` is corrupt"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_program_table() {
        let good = sample();
        let total = good.len() as u64;
        // Table too big for the bundle.
        let mut b = good.clone();
        patch_u32(&mut b, 32, 256);
        patch_u32(&mut b, 36, 8192);
        assert_eq!(
            err(&b),
            BundleError::OutOfBounds {
                region: Region::Table,
                offset: 8192,
                size: 256 * 32,
                total
            }
        );
        assert_eq!(
            err(&b).to_string(),
            format!("bundle program table (offset 0x2000, 8192 bytes) extends past the end of the bundle ({total} bytes)")
        );
        // Table past the end.
        let mut b = good.clone();
        patch_u32(&mut b, 36, total as u32 - 16);
        assert!(matches!(
            err(&b),
            BundleError::OutOfBounds {
                region: Region::Table,
                ..
            }
        ));
        // Table overlapping the header.
        let mut b = good.clone();
        patch_u32(&mut b, 36, 40);
        assert_eq!(
            err(&b),
            BundleError::Overlap {
                region: Region::Table,
                other: Region::Header
            }
        );
        assert_eq!(
            err(&b).to_string(),
            "bundle program table overlaps the header"
        );
        let mut b = good.clone();
        patch_u32(&mut b, 36, 0);
        assert_eq!(
            err(&b),
            BundleError::Overlap {
                region: Region::Table,
                other: Region::Header
            }
        );
        // Manifest out of bounds and overlapping.
        let mut b = good.clone();
        patch_u32(&mut b, 44, u32::MAX);
        assert!(matches!(
            err(&b),
            BundleError::OutOfBounds {
                region: Region::Manifest,
                ..
            }
        ));
        let mut b = good.clone();
        patch_u32(&mut b, 40, 70);
        assert_eq!(
            err(&b),
            BundleError::Overlap {
                region: Region::Manifest,
                other: Region::Table
            }
        );
        let mut b = good.clone();
        patch_u32(&mut b, 40, 0);
        assert_eq!(
            err(&b),
            BundleError::Overlap {
                region: Region::Manifest,
                other: Region::Header
            }
        );
        // A program's data checksum is metadata: changed alone, the header's catches it.
        let mut b = good.clone();
        b[entry_at(1) + 24] ^= 1;
        assert!(matches!(err(&b), BundleError::ChecksumMismatch { .. }));
    }

    #[test]
    fn rejects_bad_entries() {
        let good = sample();
        let total = good.len() as u64;
        // Name out of bounds.
        let mut b = good.clone();
        patch_u32(&mut b, entry_at(0), u32::MAX);
        reseal(&mut b);
        assert!(matches!(
            err(&b),
            BundleError::OutOfBounds {
                region: Region::Name(0),
                ..
            }
        ));
        // Data out of bounds (aligned, one page too far) and with an overflowing size.
        let mut b = good.clone();
        patch_u64(&mut b, entry_at(1) + 8, total.next_multiple_of(4096));
        reseal(&mut b);
        assert!(matches!(
            err(&b),
            BundleError::OutOfBounds {
                region: Region::Data(1),
                ..
            }
        ));
        let mut b = good.clone();
        patch_u64(&mut b, entry_at(1) + 16, u64::MAX);
        reseal(&mut b);
        assert!(matches!(
            err(&b),
            BundleError::OutOfBounds {
                region: Region::Data(1),
                ..
            }
        ));
        // Unaligned data.
        let mut b = good.clone();
        patch_u64(&mut b, entry_at(0) + 8, 4096 + 8);
        reseal(&mut b);
        assert_eq!(
            err(&b),
            BundleError::UnalignedData {
                index: 0,
                offset: 4104
            }
        );
        assert!(err(&b).to_string().contains("not 4096-byte aligned"));
        // Data overlapping the header / table / another program.
        let mut b = good.clone();
        patch_u64(&mut b, entry_at(0) + 8, 0);
        reseal(&mut b);
        assert_eq!(
            err(&b),
            BundleError::Overlap {
                region: Region::Data(0),
                other: Region::Header
            }
        );
        let mut b = good.clone();
        let off1 = u64::from_le_bytes(good[entry_at(1) + 8..entry_at(1) + 16].try_into().unwrap());
        patch_u64(&mut b, entry_at(0) + 8, off1);
        reseal(&mut b);
        assert_eq!(
            err(&b),
            BundleError::Overlap {
                region: Region::Data(1),
                other: Region::Data(0)
            }
        );
        // Name overlapping the table.
        let mut b = good.clone();
        patch_u32(&mut b, entry_at(0), 64);
        reseal(&mut b);
        let e = err(&b);
        assert!(matches!(e, BundleError::BadName { index: 0, .. }), "{e:?}");
        // A zero-size name.
        let mut b = good.clone();
        patch_u32(&mut b, entry_at(0) + 4, 0);
        reseal(&mut b);
        assert_eq!(
            err(&b),
            BundleError::BadName {
                index: 0,
                name: ShortStr::new(b""),
                error: NameError::Empty
            }
        );
    }

    /// Rebuilds the sample with the name bytes of program `index` replaced in place.
    fn with_name(index: usize, name: &[u8]) -> Vec<u8> {
        let mut b = sample();
        let off = u32::from_le_bytes(b[entry_at(index)..entry_at(index) + 4].try_into().unwrap())
            as usize;
        let size = u32::from_le_bytes(
            b[entry_at(index) + 4..entry_at(index) + 8]
                .try_into()
                .unwrap(),
        ) as usize;
        assert!(name.len() <= size);
        b[off..off + name.len()].copy_from_slice(name);
        patch_u32(&mut b, entry_at(index) + 4, name.len() as u32);
        reseal(&mut b);
        b
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(
            err(&with_name(1, b"Hello")),
            BundleError::BadName {
                index: 1,
                name: ShortStr::new(b"Hello"),
                error: NameError::BadByte { byte: b'H' }
            }
        );
        assert!(matches!(
            err(&with_name(1, b"a b")),
            BundleError::BadName {
                error: NameError::BadByte { byte: b' ' },
                ..
            }
        ));
        assert!(matches!(
            err(&with_name(1, b"\xff")),
            BundleError::BadName { .. }
        ));
        assert_eq!(
            err(&with_name(1, b"shell")),
            BundleError::DuplicateName {
                name: ShortStr::new(b"shell")
            }
        );
        // A name that renames init's program away.
        assert_eq!(
            err(&with_name(0, b"shel")),
            BundleError::InitNotFound {
                name: ShortStr::new(b"shell")
            }
        );
        // Too long: point the name of program 1 at 33 bytes of the manifest-free area.
        let mut b = sample();
        let long = [b'a'; 33];
        let names_off = 64 + 2 * 32;
        b[names_off..names_off + 33].copy_from_slice(&long); // overwrites the names + manifest start
        patch_u32(&mut b, entry_at(0), names_off as u32);
        patch_u32(&mut b, entry_at(0) + 4, 33);
        reseal(&mut b);
        assert_eq!(
            err(&b),
            BundleError::BadName {
                index: 0,
                name: ShortStr::new(&long),
                error: NameError::TooLong { len: 33 }
            }
        );
    }

    /// Replaces the manifest of the sample with `text` (placed where the old one was plus
    /// the free space before the first program's data).
    fn with_manifest(text: &[u8]) -> Vec<u8> {
        let mut b = sample();
        let off = u32::from_le_bytes(b[40..44].try_into().unwrap()) as usize;
        assert!(off + text.len() <= 4096);
        b[off..off + text.len()].copy_from_slice(text);
        patch_u32(&mut b, 44, text.len() as u32);
        reseal(&mut b);
        b
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(Bundle::parse(&with_manifest(b"init hello-world_2 x")).is_ok());
        assert_eq!(
            err(&with_manifest(b"")),
            BundleError::Manifest(ManifestError::NoInit)
        );
        assert_eq!(
            err(&with_manifest(b"# nothing\n")),
            BundleError::Manifest(ManifestError::NoInit)
        );
        assert_eq!(
            err(&with_manifest(b"init shell\ninit shell")),
            BundleError::Manifest(ManifestError::DuplicateInit { line: 2, first: 1 })
        );
        assert_eq!(
            err(&with_manifest(b"init nothere")),
            BundleError::InitNotFound {
                name: ShortStr::new(b"nothere")
            }
        );
        assert_eq!(
            err(&with_manifest(b"init shell\nboot shell")),
            BundleError::Manifest(ManifestError::UnknownDirective {
                line: 2,
                directive: ShortStr::new(b"boot")
            })
        );
        let many = format!("init shell{}", " a".repeat(33));
        assert_eq!(
            err(&with_manifest(many.as_bytes())),
            BundleError::Manifest(ManifestError::TooManyArgs { line: 1, count: 33 })
        );
        assert_eq!(
            err(&with_manifest(b"init shell \xff")),
            BundleError::ManifestNotUtf8 { valid_up_to: 11 }
        );
        assert_eq!(
            err(&with_manifest(b"init")).to_string(),
            "bundle manifest line 1: `init` needs a program name"
        );
    }

    #[test]
    fn every_truncation_and_mutation_is_handled() {
        let good = sample();
        for len in 0..good.len() {
            assert!(Bundle::parse(&good[..len]).is_err(), "prefix {len}");
        }
        let mut rng = XorShift::new(0x5eed_b0d1e);
        let (mut ok, mut resealed, mut verified) = (0, 0, 0);
        for _ in 0..5000 {
            let mut m = mutate(&mut rng, &good);
            let reseal_this = rng.below(2) == 0 && m.len() >= 64;
            if reseal_this {
                // Keep the checksums valid half the time so the deeper checks (and the
                // programs' own) get exercised.
                let total =
                    (u64::from_le_bytes(m[16..24].try_into().unwrap()) as usize).clamp(64, m.len());
                reseal(&mut m[..total]);
            }
            if let Ok(b) = Bundle::parse(&m) {
                ok += 1;
                resealed += usize::from(reseal_this);
                verified += usize::from(b.verify_programs().is_ok());
                // Whatever parses must be internally consistent.
                for p in b.programs() {
                    assert_eq!(p.offset % DATA_ALIGN, 0);
                    assert!(validate_program_name(p.name.as_bytes()).is_ok());
                }
                assert!(b.program(b.manifest().init()).is_some());
                assert_eq!(b.programs().count(), b.program_count());
            }
        }
        assert!(
            ok > 0 && resealed > 0 && verified > 0,
            "{ok} mutants parsed ({resealed} resealed, {verified} with whole programs): the mutator is too destructive to test anything"
        );
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            BundleError::Truncated {
                what: "bundle",
                end: 1,
                len: 0,
            },
            BundleError::BadMagic,
            BundleError::UnsupportedVersion { version: 9 },
            BundleError::BadHeaderSize { size: 1 },
            BundleError::HeaderReservedNotZero,
            BundleError::TotalSizeTooSmall { total: 1 },
            BundleError::ChecksumMismatch {
                expected: 1,
                actual: 2,
            },
            BundleError::NoPrograms,
            BundleError::TooManyPrograms { count: 300 },
            BundleError::OutOfBounds {
                region: Region::Name(3),
                offset: 1,
                size: 2,
                total: 3,
            },
            BundleError::Overlap {
                region: Region::Data(1),
                other: Region::Manifest,
            },
            BundleError::UnalignedData {
                index: 0,
                offset: 3,
            },
            BundleError::ProgramChecksumMismatch {
                index: 0,
                name: ShortStr::new(b"x"),
                expected: 1,
                actual: 2,
            },
            BundleError::BadName {
                index: 0,
                name: ShortStr::new(b"A\n"),
                error: NameError::BadByte { byte: b'\n' },
            },
            BundleError::DuplicateName {
                name: ShortStr::new(b"x"),
            },
            BundleError::ManifestNotUtf8 { valid_up_to: 0 },
            BundleError::Manifest(ManifestError::NoInit),
            BundleError::InitNotFound {
                name: ShortStr::new(b"x"),
            },
            BundleError::TooLarge,
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s:?}");
        }
        let s: String = BundleError::BadName {
            index: 2,
            name: ShortStr::new(b"A"),
            error: NameError::TooLong { len: 40 },
        }
        .to_string();
        assert_eq!(
            s,
            "bundle program 2 has an invalid name `A`: name is 40 bytes long (at most 32 allowed)"
        );
    }

    #[test]
    fn peek_reads_the_claimed_size_only_after_the_magic() {
        let mut b = BundleBuilder::new();
        b.add_program("a", b"x").unwrap();
        b.manifest("init a");
        let bytes = b.build().unwrap();
        assert_eq!(
            peek_total_size(&bytes[..BUNDLE_HEADER_SIZE]),
            Some(bytes.len() as u64)
        );
        assert_eq!(peek_total_size(&bytes[..20]), None);
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(peek_total_size(&bad), None);
    }
}
