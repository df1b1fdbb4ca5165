//! `fluke-vmm inspect IMAGE`: prints what an image holds.

use std::fmt::Write as _;

use fluke_image::elf::{Elf, PF_R, PF_W, PF_X};
use fluke_image::image::Image;

use crate::cli::InspectArgs;
use crate::error::{Error, Result};
use crate::run::read_image;

pub fn inspect(args: &InspectArgs) -> Result<u8> {
    let (bytes, what) = read_image(Some(&args.image))?;
    crate::logger::to_stdout(&describe(&bytes, &what)?);
    Ok(0)
}

/// `R-X` style segment flags.
pub fn flags_string(flags: u32) -> String {
    [(PF_R, 'R'), (PF_W, 'W'), (PF_X, 'X')]
        .iter()
        .map(|&(bit, c)| if flags & bit != 0 { c } else { '-' })
        .collect()
}

/// The text `inspect` prints for the image `bytes`, named `what`.
pub fn describe(bytes: &[u8], what: &str) -> Result<String> {
    // The same checks as `run` (and the same load): what run refuses, inspect refuses.
    crate::boot::check_loads(bytes, what)?;
    let image = Image::parse(bytes).map_err(|e| Error::InvalidImage {
        what: what.to_string(),
        msg: e.to_string(),
    })?;
    let mut s = String::new();
    let _ = writeln!(s, "image:       {what} ({} bytes)", bytes.len());
    let _ = writeln!(s, "pvh entry:   {:#x}", image.pvh_entry());
    let _ = writeln!(s, "phys end:    {:#x}", image.phys_end());
    let _ = writeln!(s, "kernel segments:");
    let _ = writeln!(
        s,
        "  {:<18}  {:<18}  {:>10}  {:>10}  flags",
        "paddr", "vaddr", "filesz", "memsz"
    );
    for ph in image.kernel_segments() {
        let _ = writeln!(
            s,
            "  {:#018x}  {:#018x}  {:>#10x}  {:>#10x}  {}",
            ph.paddr,
            ph.vaddr,
            ph.filesz,
            ph.memsz,
            flags_string(ph.flags)
        );
    }
    let seg = image.bundle_segment();
    let _ = writeln!(
        s,
        "bundle:      paddr {:#x}, {} bytes",
        seg.paddr, seg.filesz
    );
    let bundle = image.bundle();
    let programs: Vec<_> = bundle.programs().collect();
    let _ = writeln!(s, "programs ({}):", programs.len());
    for p in &programs {
        let entry = match Elf::parse(p.data) {
            Ok(elf) => format!("entry {:#x}", elf.entry()),
            Err(_) => "not an ELF".to_string(),
        };
        let name = p.name.escape_debug().to_string();
        let _ = writeln!(s, "  {:<16} {:>10} bytes  {entry}", name, p.data.len());
    }
    let manifest = bundle.manifest();
    // Names and words come from the image: printed escaped, as in error messages.
    let _ = writeln!(s, "init:        {}", manifest.init().escape_debug());
    let args: Vec<String> = manifest
        .args()
        .map(|a| a.escape_debug().to_string())
        .collect();
    if args.is_empty() {
        let _ = writeln!(s, "args:        (none)");
    } else {
        let _ = writeln!(s, "args:        {}", args.join(" "));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(flags_string(PF_R | PF_X), "R-X");
        assert_eq!(flags_string(PF_R | PF_W), "RW-");
        assert_eq!(flags_string(0), "---");
    }

    #[test]
    fn rejects_garbage() {
        let e = describe(b"definitely not an image", "x.img").unwrap_err();
        assert!(e.to_string().starts_with("invalid image x.img: "), "{e}");
    }
}
