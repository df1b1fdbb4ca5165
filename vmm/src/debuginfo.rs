//! The debug information beside an image (`IMAGE.debug/`, see
//! [`fluke_image::image::DEBUG_DIR_SUFFIX`]: the unstripped kernel and program ELFs whose
//! segments the image holds) and the fault reports of a run named from it.
//!
//! The guest's reports come over its console: [`ReportScanner`] picks them out of the bytes
//! the guest writes (a kernel fault, or a process killed with a register dump), and at the
//! end of the run [`DebugInfo::describe`] names the function and source line at each
//! reported `rip` with the maintained `addr2line` crate. Debug information that is missing,
//! unreadable or not the image's own (its segments differ) names nothing: the console's
//! addresses are all there is, as without it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fluke_image::elf::Elf;
use fluke_image::image::{DEBUG_DIR_SUFFIX, DEBUG_KERNEL_FILE, DEBUG_PROGRAMS_DIR};
use fluke_image::Image;

/// `IMAGE.debug` beside `IMAGE`.
pub fn sidecar_dir(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(DEBUG_DIR_SUFFIX);
    PathBuf::from(name)
}

/// The kernel's ELF in debug directory `dir`.
pub fn kernel_file(dir: &Path) -> PathBuf {
    dir.join(DEBUG_KERNEL_FILE)
}

/// Program `name`'s ELF in debug directory `dir` (`name` must be a valid program name, so
/// that it is one file name).
pub fn program_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(DEBUG_PROGRAMS_DIR).join(format!("{name}.elf"))
}

/// Whether two executables load the same bytes at the same places: their `PT_LOAD`
/// segments agree in addresses, sizes, flags and file bytes, in order. Offsets and
/// alignments may differ (an image moves the kernel's).
pub fn same_segments<'a>(
    a: (Elf<'a>, impl Iterator<Item = fluke_image::ProgramHeader>),
    b: (Elf<'a>, impl Iterator<Item = fluke_image::ProgramHeader>),
) -> bool {
    let key = |elf: Elf<'a>, ph: fluke_image::ProgramHeader| {
        let data = elf.segment_data(&ph);
        (ph.vaddr, ph.paddr, ph.filesz, ph.memsz, ph.flags, data)
    };
    let (ea, sa) = a;
    let (eb, sb) = b;
    sa.map(|ph| key(ea, ph)).eq(sb.map(|ph| key(eb, ph)))
}

/// Whose fault a report is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultSubject {
    /// `fluke: KERNEL FAULT: ...`
    Kernel,
    /// `fluke: process PID (NAME) killed: ...`; the name is the guest's word for it.
    Program { pid: u64, name: String },
    /// The VMM stopped the guest (a crash or a timeout) while it ran kernel code.
    KernelStopped,
}

/// One fault report: who faulted, at which instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultReport {
    pub subject: FaultSubject,
    pub rip: u64,
}

/// The longest console line the scanner keeps (the kernel's report lines are under 100
/// bytes); longer lines are not reports.
const MAX_LINE: usize = 256;
/// Reports kept per run; a guest that keeps faulting is counted past them.
const MAX_REPORTS: usize = 32;
const PREFIX: &[u8] = b"fluke:";

/// Picks fault reports out of the guest's console output, a byte at a time, without
/// allocating once warm: lines that do not start with `fluke:` are skipped as they come.
#[derive(Debug, Default)]
pub struct ReportScanner {
    line: Vec<u8>,
    /// The current line is not one the scanner keeps.
    skipping: bool,
    /// A report header was seen; its `rip` line is expected next.
    pending: Option<FaultSubject>,
    reports: Vec<FaultReport>,
    dropped: u64,
}

impl ReportScanner {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
                continue;
            }
            if self.skipping {
                continue;
            }
            let len = self.line.len();
            if (len < PREFIX.len() && PREFIX[len] != b) || len >= MAX_LINE {
                self.skipping = true;
                self.line.clear();
                continue;
            }
            self.line.push(b);
        }
    }

    fn end_line(&mut self) {
        let skipped = std::mem::take(&mut self.skipping);
        let mut line = std::mem::take(&mut self.line);
        let text = if skipped {
            "" // not a kernel line: it ends any report in progress
        } else {
            std::str::from_utf8(&line).unwrap_or("")
        };
        self.line_done(text.trim_end_matches('\r'));
        // The buffer is kept for the next line.
        line.clear();
        self.line = line;
    }

    fn line_done(&mut self, text: &str) {
        if text.starts_with("fluke: KERNEL FAULT:") {
            self.pending = Some(FaultSubject::Kernel);
        } else if let Some(subject) = parse_killed(text) {
            self.pending = Some(subject);
        } else if let Some(rip) = text.strip_prefix("fluke:   rip ") {
            let rip = rip.split_whitespace().next().and_then(parse_hex);
            if let (Some(subject), Some(rip)) = (self.pending.take(), rip) {
                if self.reports.len() < MAX_REPORTS {
                    self.reports.push(FaultReport { subject, rip });
                } else {
                    self.dropped += 1;
                }
            }
        } else if !text.starts_with("fluke:   ") {
            // Only the report's own indented lines (a fault address) come before its rip.
            self.pending = None;
        }
    }

    /// The reports seen so far, and how many more there were.
    pub fn take(&mut self) -> (Vec<FaultReport>, u64) {
        (
            std::mem::take(&mut self.reports),
            std::mem::take(&mut self.dropped),
        )
    }
}

/// `fluke: process PID (NAME) killed: REASON`.
fn parse_killed(text: &str) -> Option<FaultSubject> {
    let rest = text.strip_prefix("fluke: process ")?;
    let (pid, rest) = rest.split_once(" (")?;
    let (name, _) = rest.split_once(") killed: ")?;
    Some(FaultSubject::Program {
        pid: pid.parse().ok()?,
        name: name.to_string(),
    })
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The report for the `rip` in a register dump of the VMM's (`  rip 0x...` in
/// [`crate::vcpu::register_report`]), if it is in the kernel's half of the address space:
/// a user address could be any program's.
pub fn kernel_stop(registers: &str) -> Option<FaultReport> {
    let rip = registers
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("rip "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(parse_hex)?;
    (rip >= fluke_abi::boot::KERNEL_VIRT_BASE).then_some(FaultReport {
        subject: FaultSubject::KernelStopped,
        rip,
    })
}

/// The image a run booted and where its debug directory is expected.
pub struct DebugInfo {
    pub dir: PathBuf,
    pub image: ImageBytes,
}

/// Where the booted image's bytes are found again when a report needs them: `run` gives its
/// own copy back once the guest has one (`run::release_image`).
pub enum ImageBytes {
    /// The image built into this binary.
    Builtin(&'static [u8]),
    /// An image file, read again if it is still the file that was booted (the same inode,
    /// size and modification time): one rebuilt meanwhile, with its debug directory, would
    /// name functions of another build.
    File(PathBuf, Option<FileStamp>),
}

/// What identifies a file's contents well enough to notice it was replaced or rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

impl ImageBytes {
    fn get(&self) -> Result<std::borrow::Cow<'static, [u8]>, String> {
        match self {
            ImageBytes::Builtin(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
            ImageBytes::File(path, booted) => {
                if booted.is_none() || FileStamp::of(path) != *booted {
                    return Err(format!("{} changed since the boot", path.display()));
                }
                crate::run::read_image(Some(path))
                    .map(|(bytes, _)| bytes)
                    .map_err(|e| format!("the image: {e}"))
            }
        }
    }
}

/// The largest debug ELF read.
const MAX_DEBUG_FILE: u64 = 1 << 30;
/// The most inlined frames printed for one address.
const MAX_FRAMES: usize = 8;

impl DebugInfo {
    /// Lines for stderr naming the function and source line of each report (reports whose
    /// debug information is missing or not the image's say why in one line); empty if
    /// there is no debug directory at all.
    pub fn describe(&self, reports: &[FaultReport], dropped: u64) -> String {
        let mut out = String::new();
        if reports.is_empty() {
            return out;
        }
        if !self.dir.is_dir() {
            log::info!(
                "no debug information at {}: fault reports keep their addresses only",
                self.dir.display()
            );
            return out;
        }
        let mut loaders: HashMap<PathBuf, Result<Symbols, String>> = HashMap::new();
        for report in reports {
            let (what, file) = match &report.subject {
                FaultSubject::Kernel => ("kernel fault".to_string(), Ok(kernel_file(&self.dir))),
                FaultSubject::KernelStopped => (
                    "guest stopped in the kernel".to_string(),
                    Ok(kernel_file(&self.dir)),
                ),
                FaultSubject::Program { pid, name } => (
                    format!("fault in {} (process {pid})", name.escape_debug()),
                    fluke_image::bundle::validate_program_name(name.as_bytes())
                        .map(|_| program_file(&self.dir, name))
                        .map_err(|_| "not a program name of the image".to_string()),
                ),
            };
            let _ = write!(out, "fluke-vmm: {what} at {:#x}: ", report.rip);
            let loader = file.and_then(|file| {
                loaders
                    .entry(file.clone())
                    .or_insert_with(|| self.load(&report.subject, &file))
                    .as_ref()
                    .map_err(Clone::clone)
            });
            match loader {
                Ok(symbols) if !symbols.is_code(report.rip) => {
                    out.push_str("not in its code (no function to name)\n")
                }
                Ok(symbols) => out.push_str(&name_address(&symbols.loader, report.rip)),
                Err(why) => {
                    let _ = writeln!(out, "not named ({why})");
                }
            }
        }
        if dropped > 0 {
            let _ = writeln!(out, "fluke-vmm: {dropped} more fault report(s) not named");
        }
        out
    }

    /// Opens the debug ELF `file` for `subject` once it is known to load what the image
    /// loads for it.
    fn load(&self, subject: &FaultSubject, file: &Path) -> Result<Symbols, String> {
        let shown = file.display();
        let io = |e: std::io::Error| format!("{shown}: {}", crate::error::strerror(&e));
        // Judged by its metadata first: a FIFO or device there would block or never end.
        let meta = std::fs::metadata(file).map_err(io)?;
        if !meta.is_file() || meta.len() > MAX_DEBUG_FILE {
            return Err(format!(
                "{shown}: not a regular file of at most {} MiB",
                MAX_DEBUG_FILE >> 20
            ));
        }
        let bytes = std::fs::read(file).map_err(io)?;
        let debug = Elf::parse(&bytes).map_err(|e| format!("{shown}: {e}"))?;
        let image_bytes = self.image.get()?;
        let image = Image::parse(&image_bytes).map_err(|e| format!("the image: {e}"))?;
        let matches = match subject {
            FaultSubject::Kernel | FaultSubject::KernelStopped => same_segments(
                (image.elf(), image.kernel_segments()),
                (debug, debug.load_segments()),
            ),
            FaultSubject::Program { name, .. } => {
                let program = image
                    .bundle()
                    .program(name)
                    .ok_or_else(|| "the image has no program of that name".to_string())?;
                let packed = Elf::parse(program.data).map_err(|e| format!("the image's: {e}"))?;
                same_segments(
                    (packed, packed.load_segments()),
                    (debug, debug.load_segments()),
                )
            }
        };
        if !matches {
            return Err(format!(
                "{shown} is not what the image was built from: its segments differ"
            ));
        }
        let code = debug
            .load_segments()
            .filter(|ph| ph.flags & fluke_image::elf::PF_X != 0)
            .map(|ph| ph.vaddr..ph.virt_end().unwrap_or(u64::MAX))
            .collect();
        let loader = addr2line::Loader::new(file).map_err(|e| format!("{shown}: {e}"))?;
        Ok(Symbols { loader, code })
    }
}

/// One debug ELF, opened.
struct Symbols {
    loader: addr2line::Loader,
    /// Its executable segments: DWARF also describes functions the linker discarded (at
    /// address 0), so an address outside these is named by none.
    code: Vec<std::ops::Range<u64>>,
}

impl Symbols {
    fn is_code(&self, addr: u64) -> bool {
        self.code.iter().any(|r| r.contains(&addr))
    }
}

/// `FUNCTION at FILE:LINE:COL`, one line per inlined frame (innermost first), or the
/// symbol's name alone when there is no line information.
fn name_address(loader: &addr2line::Loader, addr: u64) -> String {
    let mut lines: Vec<String> = Vec::new();
    if let Ok(mut frames) = loader.find_frames(addr) {
        while let Ok(Some(frame)) = frames.next() {
            if lines.len() == MAX_FRAMES {
                break;
            }
            let function = frame
                .function
                .as_ref()
                .and_then(|f| f.demangle().ok().map(|n| n.into_owned()))
                .unwrap_or_else(|| "??".to_string());
            let location = frame.location.map(|l| {
                let mut s = l.file.unwrap_or("??").to_string();
                if let Some(line) = l.line {
                    let _ = write!(s, ":{line}");
                    if let Some(col) = l.column.filter(|&c| c > 0) {
                        let _ = write!(s, ":{col}");
                    }
                }
                s
            });
            lines.push(match location {
                Some(loc) => format!("{function} at {loc}"),
                None => function,
            });
        }
    }
    if lines.is_empty() {
        return match loader.find_symbol(addr) {
            Some(sym) => format!("{}\n", addr2line::demangle_auto(sym.into(), None)),
            None => "no function covers this address\n".to_string(),
        };
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i == 0 {
            let _ = writeln!(out, "{line}");
        } else {
            let _ = writeln!(out, "fluke-vmm:   inlined into {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Vec<FaultReport> {
        let mut s = ReportScanner::default();
        // Fed in uneven pieces, as the UART hands them on.
        for chunk in text.as_bytes().chunks(3) {
            s.feed(chunk);
        }
        s.take().0
    }

    #[test]
    fn finds_killed_processes_and_kernel_faults() {
        let console = "hello\n\
            fluke: process 3 (victim) killed: page fault at 0x0 (read, not mapped)\r\n\
            fluke:   rip 0x00000000004023cd rsp 0x00007ffefffff430 rflags 0x10246\n\
            fluke:   rax 0x0000000000000001 rbx 0x0\n\
            fluke: KERNEL FAULT: page fault (#PF) (vector 14, error code 0x0)\n\
            fluke:   fault address 0x0000001000000000\n\
            fluke:   rip 0xffffffff80101234 cs 0x8 rflags 0x2 rsp 0x1 ss 0x0\n";
        assert_eq!(
            scan(console),
            vec![
                FaultReport {
                    subject: FaultSubject::Program {
                        pid: 3,
                        name: "victim".into()
                    },
                    rip: 0x4023cd
                },
                FaultReport {
                    subject: FaultSubject::Kernel,
                    rip: 0xffff_ffff_8010_1234
                },
            ]
        );
    }

    #[test]
    fn ignores_what_is_not_a_whole_report() {
        // A rip line without a header, a header whose rip line never comes, a garbled rip.
        let console = "fluke:   rip 0x1234 rsp 0x0\n\
            fluke: process 3 (victim) killed: #GP\n\
            victim: unrelated output\n\
            fluke:   rip 0x5678 rsp 0x0\n\
            fluke: process 4 (x) killed: #UD\n\
            fluke:   rip 12zz\n\
            not fluke: process 5 (y) killed: #UD\n\
            fluke:   rip 0x9\n";
        assert!(scan(console).is_empty());
        let long = format!("fluke: {}\n", "x".repeat(10_000));
        assert!(scan(&long).is_empty());
    }

    #[test]
    fn a_vmm_register_dump_in_kernel_code_is_a_report() {
        let dump = "  rip 0xffffffff80101234  rsp 0x0  rflags 0x2\n  rax 0x0\n";
        assert_eq!(
            kernel_stop(dump),
            Some(FaultReport {
                subject: FaultSubject::KernelStopped,
                rip: 0xffff_ffff_8010_1234
            })
        );
        assert_eq!(kernel_stop("  rip 0x0000000000401000  rsp 0x0\n"), None);
        assert_eq!(kernel_stop("  (KVM_GET_REGS failed: EIO)\n"), None);
    }

    #[test]
    fn keeps_a_bounded_number_of_reports() {
        let one = "fluke: process 1 (spin) killed: #UD\nfluke:   rip 0x400000 rsp 0\n";
        let mut s = ReportScanner::default();
        for _ in 0..MAX_REPORTS + 5 {
            s.feed(one.as_bytes());
        }
        let (reports, dropped) = s.take();
        assert_eq!((reports.len(), dropped), (MAX_REPORTS, 5));
    }

    #[test]
    fn an_image_file_rewritten_since_the_boot_is_not_read_again() {
        let path = std::env::temp_dir().join(format!("fluke-stamp-{}.img", std::process::id()));
        std::fs::write(&path, fluke_images::default_image()).unwrap();
        let image = ImageBytes::File(path.clone(), FileStamp::of(&path));
        assert_eq!(
            image.get().unwrap().len(),
            fluke_images::default_image().len()
        );
        // Rewritten (a rebuild): another size, or the same size with a new time.
        std::fs::write(&path, b"another build").unwrap();
        assert!(image.get().unwrap_err().contains("changed since the boot"));
        let _ = std::fs::remove_file(&path);
        assert!(ImageBytes::File(path, None).get().is_err());
    }

    #[test]
    fn describes_nothing_without_a_debug_directory() {
        let info = DebugInfo {
            dir: PathBuf::from("/nonexistent/fluke.img.debug"),
            image: ImageBytes::Builtin(b""),
        };
        let report = FaultReport {
            subject: FaultSubject::Kernel,
            rip: 1,
        };
        assert_eq!(info.describe(&[report], 0), "");
    }

    #[test]
    fn missing_or_foreign_debug_files_are_one_line_each() {
        let dir = std::env::temp_dir().join(format!("fluke-debuginfo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(DEBUG_PROGRAMS_DIR)).unwrap();
        // Not an ELF at all; and a guest-chosen name that is no file name.
        std::fs::write(program_file(&dir, "victim"), b"garbage").unwrap();
        let info = DebugInfo {
            dir: dir.clone(),
            image: ImageBytes::Builtin(fluke_images::default_image()),
        };
        let report = |name: &str| FaultReport {
            subject: FaultSubject::Program {
                pid: 2,
                name: name.into(),
            },
            rip: 0x400000,
        };
        let text = info.describe(&[report("victim"), report("../../etc"), report("hello")], 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("victim.elf: not an ELF file"), "{text}");
        assert!(lines[1].contains("not a program name"), "{text}");
        assert!(lines[2].contains("hello.elf: No such file"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_the_default_images_functions() {
        let dir = PathBuf::from(fluke_images::DEFAULT_DEBUG_DIR);
        let info = DebugInfo {
            dir,
            image: ImageBytes::Builtin(fluke_images::default_image()),
        };
        let entry = Elf::parse(&std::fs::read(fluke_images::program_elf_path("hello")).unwrap())
            .unwrap()
            .entry();
        let report = FaultReport {
            subject: FaultSubject::Program {
                pid: 1,
                name: "hello".into(),
            },
            rip: entry,
        };
        let nowhere = FaultReport {
            rip: 0,
            ..report.clone()
        };
        let text = info.describe(&[report, nowhere], 0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("_start"), "{text}");
        assert!(lines[0].contains("runtime/src"), "{text}");
        assert_eq!(
            lines[1],
            "fluke-vmm: fault in hello (process 1) at 0x0: not in its code (no function to name)"
        );
    }
}
