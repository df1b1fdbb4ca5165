//! The guest images built with this workspace (see build.rs).

/// The default image: the guest kernel with the standard program bundle.
pub fn default_image() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/default.img"))
}

/// Path of the default image file on disk (for QEMU and tests).
pub const DEFAULT_IMAGE_PATH: &str = concat!(env!("OUT_DIR"), "/default.img");

/// Path of the guest kernel ELF the default image was built from (for checks on its code).
pub const KERNEL_ELF_PATH: &str = concat!(env!("OUT_DIR"), "/fluke-kernel.elf");
