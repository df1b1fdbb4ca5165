//! The on-disk formats of fluke: a bounds-checked ELF64 reader ([`elf`]), the program
//! bundle that carries the user programs and their manifest ([`bundle`]) and the bootable
//! image that joins the guest kernel and a bundle into one PVH-bootable ELF file
//! ([`image`]).
//!
//! The crate is `no_std` and shared by the host (fluke-vmm validates and inspects images,
//! the image builder writes them) and the guest kernel (which parses the bundle and loads
//! user ELF programs out of it). Every parser is total: any input yields either a value or
//! a typed error, never a panic. The writers (`bundle::BundleBuilder`,
//! `image::build_image`, `elf::strip_to_segments`, `Image::kernel_elf`) need the `alloc`
//! feature.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bundle;
pub mod elf;
pub mod image;

mod bytes;
mod short;

#[cfg(test)]
mod testutil;

pub use bundle::{Bundle, BundleError, Manifest, ManifestError, Program};
pub use elf::{Elf, ElfError, Note, ProgramHeader};
pub use image::{Image, ImageError};
pub use short::ShortStr;

#[cfg(any(feature = "alloc", test))]
pub use bundle::BundleBuilder;
#[cfg(any(feature = "alloc", test))]
pub use image::build_image;
