//! `fluke-vmm image build` and `fluke-vmm image default`: write an image file (and its
//! debug directory beside it, `IMAGE.debug/`), checked as `inspect` and `run` check one.
//!
//! Programs are packed stripped to their segments ([`fluke_image::elf::strip_to_segments`]);
//! the ELFs given keep their debug information in the debug directory, for fault reports
//! and gdb. Without `--kernel` the kernel is the one of the image built into this binary.

use std::path::{Path, PathBuf};

use fluke_abi::syscall::layout::{USER_BASE, USER_MAP_END};
use fluke_image::bundle::{validate_program_name, BundleBuilder};
use fluke_image::elf::{strip_to_segments, Elf};
use fluke_image::Image;
use thiserror::Error;

use crate::cli::{ImageAction, ImageArgs, ImageBuildArgs, ImageDefaultArgs};
use crate::debuginfo::{kernel_file, program_file, same_segments, sidecar_dir};
use crate::error::{strerror, Result};

/// Why an image could not be built or written; each is one line naming the argument.
#[derive(Debug, Error)]
pub enum ImageToolError {
    #[error("--program {arg:?}: expected NAME=ELF")]
    ProgramSyntax { arg: String },
    #[error("--program {name:?}: invalid program name: {reason}")]
    ProgramName { name: String, reason: String },
    #[error("--program {name}: named twice")]
    DuplicateProgram { name: String },
    #[error("cannot read {what} from {}: {}", path.display(), strerror(source))]
    Read {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} ({}) is not an x86-64 executable ELF: {reason}", path.display())]
    NotElf {
        what: String,
        path: PathBuf,
        reason: String,
    },
    #[error("program {name} ({}) cannot run as a fluke program: {reason}", path.display())]
    NotUserProgram {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("kernel {}: cannot be an image's kernel: {reason}", path.display())]
    Kernel { path: PathBuf, reason: String },
    #[error("--init {stack:?}: {reason}")]
    Init { stack: String, reason: String },
    #[error("no default image is built into this fluke-vmm, so there is no kernel to use; pass --kernel ELF")]
    NoDefaultKernel,
    #[error("cannot write {}: {}", path.display(), strerror(source))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pack the programs: {0}")]
    Bundle(String),
    #[error("the built image does not pass the checks of `run`: {0}")]
    Check(String),
}

/// The largest input ELF read (a program or kernel that big could not fit in guest memory).
const MAX_INPUT_BYTES: u64 = crate::run::MAX_IMAGE_BYTES;

pub fn image(args: &ImageArgs) -> Result<u8> {
    let summary = match &args.action {
        ImageAction::Build(a) => build(a)?,
        ImageAction::Default(a) => write_default(a)?,
    };
    crate::logger::to_stdout(&summary);
    Ok(0)
}

/// One `--program NAME=ELF`, read.
struct ProgramInput {
    name: String,
    path: PathBuf,
    elf: Vec<u8>,
}

fn read_input(what: &str, path: &Path) -> std::result::Result<Vec<u8>, ImageToolError> {
    let err = |source| ImageToolError::Read {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    // Judged by its metadata first: a FIFO or device would block or never end.
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_INPUT_BYTES {
        return Err(err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_INPUT_BYTES >> 20
        ))));
    }
    std::fs::read(path).map_err(err)
}

/// Parses `--program` arguments (names valid and unique) and reads their files.
fn read_programs(args: &[String]) -> std::result::Result<Vec<ProgramInput>, ImageToolError> {
    let mut programs: Vec<ProgramInput> = Vec::new();
    for arg in args {
        let Some((name, path)) = arg
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        else {
            return Err(ImageToolError::ProgramSyntax { arg: arg.clone() });
        };
        validate_program_name(name.as_bytes()).map_err(|e| ImageToolError::ProgramName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        if programs.iter().any(|p| p.name == name) {
            return Err(ImageToolError::DuplicateProgram {
                name: name.to_string(),
            });
        }
        let path = PathBuf::from(path);
        let elf = read_input(&format!("program {name}"), &path)?;
        check_user_program(name, &path, &elf)?;
        programs.push(ProgramInput {
            name: name.to_string(),
            path,
            elf,
        });
    }
    Ok(programs)
}

/// What the kernel's loader (guest-kernel/kernel/src/loader.rs) requires of a program.
fn check_user_program(
    name: &str,
    path: &Path,
    data: &[u8],
) -> std::result::Result<(), ImageToolError> {
    let elf = Elf::parse(data).map_err(|e| ImageToolError::NotElf {
        what: format!("program {name}"),
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let refuse = |reason: String| ImageToolError::NotUserProgram {
        name: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    if elf.load_segments().all(|ph| ph.memsz == 0) {
        return Err(refuse("it has no loadable segment".into()));
    }
    for ph in elf.load_segments().filter(|ph| ph.memsz > 0) {
        let end = ph.virt_end().unwrap_or(u64::MAX);
        if ph.vaddr < USER_BASE || end > USER_MAP_END {
            return Err(refuse(format!(
                "segment {:#x}..{end:#x} is outside the user range {USER_BASE:#x}..{USER_MAP_END:#x} (link it with fluke-rt's user.ld)",
                ph.vaddr
            )));
        }
    }
    if !(USER_BASE..USER_MAP_END).contains(&elf.entry()) {
        return Err(refuse(format!(
            "entry point {:#x} is outside the user range",
            elf.entry()
        )));
    }
    Ok(())
}

/// Checks that every program a stack names is in the image: the first word (the manifest's
/// init), and the word after each `>` (the nesters' `[-opt=v] [>] PROGRAM ARGS`); the
/// kernel splits `a>b` in the arguments, not in the init word.
fn check_init_stack(stack: &str, names: &[&str]) -> std::result::Result<(), ImageToolError> {
    let err = |reason: String| ImageToolError::Init {
        stack: stack.to_string(),
        reason,
    };
    if stack.contains(['\n', '\r']) {
        return Err(err("must be one line".into()));
    }
    let not_a_program = |which: &str, word: &str| {
        err(format!(
            "{which} names {word:?}, which is not a --program (the image has: {})",
            names.join(", ")
        ))
    };
    let (init, rest) = stack
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((stack.trim(), ""));
    if init.is_empty() {
        return Err(err("names no program".into()));
    }
    if !names.contains(&init) {
        return Err(not_a_program("init", init));
    }
    let spaced = rest.replace('>', " > ");
    let mut after_nester = false;
    for word in spaced.split_ascii_whitespace() {
        if word == ">" {
            if after_nester {
                return Err(err("`> >`: a program must follow each `>`".into()));
            }
            after_nester = true;
        } else if std::mem::take(&mut after_nester) && !names.contains(&word) {
            return Err(not_a_program("the stack", word));
        }
    }
    if after_nester {
        return Err(err("ends with `>`: a program must follow it".into()));
    }
    Ok(())
}

fn build(args: &ImageBuildArgs) -> Result<String> {
    let programs = read_programs(&args.programs)?;
    let names: Vec<&str> = programs.iter().map(|p| p.name.as_str()).collect();
    // clap requires one --program; without any, the empty stack is refused below.
    let stack = match &args.init {
        Some(stack) => stack.clone(),
        None => names.first().map(|n| n.to_string()).unwrap_or_default(),
    };
    check_init_stack(&stack, &names)?;

    // The kernel, and where its debug information comes from.
    let (kernel, kernel_debug): (Vec<u8>, Option<PathBuf>) = match &args.kernel {
        Some(path) => {
            let kernel = read_input("kernel", path)?;
            Elf::parse(&kernel).map_err(|e| ImageToolError::NotElf {
                what: "kernel".into(),
                path: path.clone(),
                reason: e.to_string(),
            })?;
            (kernel, Some(path.clone()))
        }
        None => {
            let image = Image::parse(fluke_images::default_image())
                .map_err(|_| ImageToolError::NoDefaultKernel)?;
            let debug = Some(PathBuf::from(fluke_images::KERNEL_ELF_PATH)).filter(|p| p.is_file());
            (image.kernel_elf(), debug)
        }
    };

    let mut bundle = BundleBuilder::new();
    for p in &programs {
        // check_user_program parsed it, so stripping cannot fail; the error is kept anyway.
        let stripped = strip_to_segments(&p.elf).map_err(|e| ImageToolError::NotElf {
            what: format!("program {}", p.name),
            path: p.path.clone(),
            reason: e.to_string(),
        })?;
        bundle
            .add_program(&p.name, &stripped)
            .map_err(|e| ImageToolError::Bundle(e.to_string()))?;
    }
    bundle.manifest(&format!(
        "# written by fluke-vmm image build\ninit {stack}\n"
    ));
    let bundle = bundle.build().map_err(|e| ImageToolError::Init {
        stack: stack.clone(),
        reason: e.to_string(),
    })?;
    let image = fluke_image::build_image(&kernel, &bundle).map_err(|e| ImageToolError::Kernel {
        path: args
            .kernel
            .clone()
            .unwrap_or_else(|| PathBuf::from("(built-in)")),
        reason: e.to_string(),
    })?;
    let shown = args.output.display().to_string();
    crate::boot::check_loads(&image, &shown).map_err(|e| ImageToolError::Check(e.to_string()))?;

    write_file(&args.output, &image)?;
    let mut debug_files: Vec<(PathBuf, Vec<u8>)> = programs
        .iter()
        .map(|p| (program_file(Path::new(""), &p.name), p.elf.clone()))
        .collect();
    // The kernel's debug information, if it is known to be this kernel's; a note otherwise.
    match kernel_debug.map(|p| (std::fs::read(&p), p)) {
        Some((Ok(bytes), _)) if kernel_matches(&image, &bytes) => {
            debug_files.push((kernel_file(Path::new("")), bytes));
        }
        Some((_, path)) => crate::logger::to_stderr(&format!(
            "fluke-vmm: note: no kernel debug information ({} is not the kernel's ELF)\n",
            path.display()
        )),
        None => crate::logger::to_stderr(
            "fluke-vmm: note: no kernel debug information (the built-in kernel's ELF is not on this machine)\n",
        ),
    }
    let debug_dir = write_debug_dir(&args.output, &debug_files)?;
    Ok(format!(
        "wrote {shown} ({} bytes, {} program(s), init {stack}); debug information in {}\n",
        image.len(),
        programs.len(),
        debug_dir.display()
    ))
}

/// Whether `debug` is the ELF of the kernel in `image`.
fn kernel_matches(image: &[u8], debug: &[u8]) -> bool {
    match (Image::parse(image), Elf::parse(debug)) {
        (Ok(image), Ok(debug)) => same_segments(
            (image.elf(), image.kernel_segments()),
            (debug, debug.load_segments()),
        ),
        _ => false,
    }
}

fn write_default(args: &ImageDefaultArgs) -> Result<String> {
    let image = fluke_images::default_image();
    if image.is_empty() {
        return Err(crate::error::Error::NoDefaultImage);
    }
    let shown = args.output.display().to_string();
    crate::boot::check_loads(image, &shown).map_err(|e| ImageToolError::Check(e.to_string()))?;
    write_file(&args.output, image)?;
    // The debug directory the build left, if this is the machine that built the binary.
    let source = Path::new(fluke_images::DEFAULT_DEBUG_DIR);
    let mut files = Vec::new();
    let mut missing = 0;
    if let Ok(parsed) = Image::parse(image) {
        let names = parsed.bundle().programs().map(|p| p.name);
        let wanted = std::iter::once(kernel_file(Path::new("")))
            .chain(names.map(|n| program_file(Path::new(""), n)));
        for rel in wanted {
            match std::fs::read(source.join(&rel)) {
                Ok(bytes) => files.push((rel, bytes)),
                Err(_) => missing += 1,
            }
        }
    }
    if missing > 0 {
        crate::logger::to_stderr(&format!(
            "fluke-vmm: note: {missing} debug file(s) not found in {} (the build of this binary leaves them there)\n",
            source.display()
        ));
    }
    let debug_dir = write_debug_dir(&args.output, &files)?;
    Ok(format!(
        "wrote {shown} ({} bytes); debug information in {}\n",
        image.len(),
        debug_dir.display()
    ))
}

/// Writes `bytes` to `path` whole or not at all: into a temporary file beside it, renamed
/// over it once written (a VM booting the old image meanwhile keeps reading the old one).
fn write_file(path: &Path, bytes: &[u8]) -> std::result::Result<(), ImageToolError> {
    let err = |source| ImageToolError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

/// Writes `files` (paths relative to it) into `IMAGE.debug/`, first removing the debug
/// files of an earlier image there, so that nothing stale names functions.
fn write_debug_dir(
    image: &Path,
    files: &[(PathBuf, Vec<u8>)],
) -> std::result::Result<PathBuf, ImageToolError> {
    let dir = sidecar_dir(image);
    let programs = program_file(&dir, "x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.clone());
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageToolError::Write { path, source }
    };
    std::fs::create_dir_all(&programs).map_err(werr(&programs))?;
    let _ = std::fs::remove_file(kernel_file(&dir));
    if let Ok(entries) = std::fs::read_dir(&programs) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "elf") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for (rel, bytes) in files {
        let path = dir.join(rel);
        std::fs::write(&path, bytes).map_err(werr(&path))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_arguments() {
        let e = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            read_programs(&args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(e(&["hello"]), "--program \"hello\": expected NAME=ELF");
        assert_eq!(e(&["=x"]), "--program \"=x\": expected NAME=ELF");
        assert_eq!(e(&["a="]), "--program \"a=\": expected NAME=ELF");
        assert!(e(&["Big=/x"]).starts_with("--program \"Big\": invalid program name: "));
        assert_eq!(
            e(&["a=/nonexistent/a"]),
            "cannot read program a from /nonexistent/a: No such file or directory"
        );
        let me = std::env::current_exe().unwrap();
        let me = me.display();
        // The host test binary is an ELF, but a position-independent one.
        let host = e(&[&format!("a={me}")]);
        assert!(
            host.starts_with("program a (") && host.contains("ELF type is 3"),
            "{host}"
        );
        let hello = fluke_images::program_elf_path("hello");
        let hello = hello.display();
        assert_eq!(
            e(&[&format!("a={hello}"), &format!("a={hello}")]),
            "--program a: named twice"
        );
        assert_eq!(e(&[&format!("a={hello}")]), "");
    }

    #[test]
    fn init_stacks() {
        let names = ["pager", "procmgr", "work"];
        let ok = |s: &str| check_init_stack(s, &names).is_ok();
        assert!(ok("work memory 1000"));
        assert!(ok("pager -frames=64 > procmgr > work memory 1000"));
        assert!(ok("pager -frames=64>procmgr>work"));
        assert!(ok("procmgr work"));
        let err = |s: &str| check_init_stack(s, &names).unwrap_err().to_string();
        assert_eq!(
            err("hello"),
            "--init \"hello\": init names \"hello\", which is not a --program (the image has: pager, procmgr, work)"
        );
        assert!(err("pager > nope").contains("the stack names \"nope\""));
        assert!(err("").contains("names no program"));
        assert!(err("work >").contains("ends with `>`"));
        assert!(err("work > > work").contains("a program must follow each"));
        assert!(err("pager>work").contains("init names \"pager>work\""));
        assert!(err("work\ninit x").contains("one line"));
    }
}
