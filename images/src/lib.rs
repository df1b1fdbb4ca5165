//! The guest images built with this workspace (see build.rs).

/// The default image: the guest kernel with the standard program bundle.
pub fn default_image() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/default.img"))
}

/// Path of the default image file on disk (for QEMU and tests).
pub const DEFAULT_IMAGE_PATH: &str = concat!(env!("OUT_DIR"), "/default.img");

/// The default image's debug directory (`fluke_image::image::DEBUG_DIR_SUFFIX`): the
/// unstripped kernel and program ELFs it was built from, on the build machine.
pub const DEFAULT_DEBUG_DIR: &str = concat!(env!("OUT_DIR"), "/default.img.debug");

/// Path of the guest kernel ELF the default image was built from, with its debug
/// information (for gdb and for checks on its code).
pub const KERNEL_ELF_PATH: &str = concat!(env!("OUT_DIR"), "/default.img.debug/kernel.elf");

/// Path of the unstripped ELF of the default image's program `name`.
pub fn program_elf_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(DEFAULT_DEBUG_DIR)
        .join("programs")
        .join(format!("{name}.elf"))
}
