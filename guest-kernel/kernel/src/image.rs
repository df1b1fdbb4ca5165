//! The program bundle that an image carries after the kernel (see fluke-image).

use crate::{kprintln, mm};
use fluke_abi::boot::KERNEL_VIRT_BASE;
use core::sync::atomic::{AtomicU8, Ordering};
use fluke_image::bundle::{
    peek_total_size, Bundle, BundleError, Program, BUNDLE_HEADER_SIZE, MAX_PROGRAMS,
};
use fluke_image::image::bundle_paddr;
use fluke_kcore::memmap::PhysRange;

/// Finds the bundle: by the rule shared with the image builder it starts at the first page
/// after the kernel. Reads only its header (through the boot mapping of the first GiB) to
/// learn its extent; the contents are verified by [`bundle`].
pub fn locate_bundle(kernel_end: u64, ram_end: u64) -> Option<PhysRange> {
    let start = bundle_paddr(kernel_end)?;
    let header_end = start.checked_add(BUNDLE_HEADER_SIZE as u64)?;
    if header_end > ram_end.min(mm::BOOT_MAP_LIMIT) {
        return None;
    }
    // SAFETY: [start, header_end) is RAM inside the boot mapping (checked above); bytes have
    // no invalid values.
    let header = unsafe {
        core::slice::from_raw_parts(mm::phys_to_virt(start) as *const u8, BUNDLE_HEADER_SIZE)
    };
    let end = start.checked_add(peek_total_size(header)?)?;
    (end <= ram_end.min(mm::BOOT_MAP_LIMIT)).then_some(PhysRange { start, end })
}

/// Parses and verifies (its metadata checksum included; each program's data is checked when
/// it is first used, by [`program`]) the bundle, which the kernel maps read-only at its
/// physical address plus the kernel base.
pub fn bundle(r: PhysRange) -> Result<Bundle<'static>, BundleError> {
    // SAFETY: `r` was checked to be RAM by locate_bundle, is reserved from the allocator and
    // is mapped read-only at the kernel base for the kernel's lifetime.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (KERNEL_VIRT_BASE + r.start) as *const u8,
            (r.end - r.start) as usize,
        )
    };
    Bundle::parse(bytes)
}

static LOADED: crate::sync::BootCell<Option<Bundle<'static>>> = crate::sync::BootCell::new(None);

pub fn set_loaded_bundle(b: Bundle<'static>) {
    // SAFETY: boot, single CPU.
    unsafe { *LOADED.get_mut() = Some(b) };
}

/// The bundle of the image the kernel booted from.
pub fn loaded_bundle() -> Option<Bundle<'static>> {
    // SAFETY: written once at boot, then only read.
    unsafe { *LOADED.get() }
}

/// What is known of each program's data: unchecked, good, or corrupt.
const UNCHECKED: u8 = 0;
const GOOD: u8 = 1;
const CORRUPT: u8 = 2;
static CHECKED: [AtomicU8; MAX_PROGRAMS] = [const { AtomicU8::new(UNCHECKED) }; MAX_PROGRAMS];

/// Program `name` of the loaded bundle, its data checked against its checksum the first time
/// it is used, so a boot reads only the programs it runs. A corrupt program is reported once
/// and is as good as absent (`NoSuchProgram` to whoever asks).
pub fn program(name: &str) -> Option<Program<'static>> {
    let p = loaded_bundle()?.program(name)?;
    let state = CHECKED.get(p.index)?;
    match state.load(Ordering::Relaxed) {
        GOOD => Some(p),
        CORRUPT => None,
        _ => match p.verify() {
            Ok(()) => {
                state.store(GOOD, Ordering::Relaxed);
                Some(p)
            }
            Err(e) => {
                state.store(CORRUPT, Ordering::Relaxed);
                kprintln!("fluke: {e}");
                None
            }
        },
    }
}

pub fn describe(b: &Bundle<'_>) {
    // One line: every console byte is an exit to the VMM (~35-80 µs on kvm_pvm).
    crate::kprint!("fluke: image: {} program(s):", b.programs().count());
    for p in b.programs() {
        crate::kprint!(" {}", p.name);
    }
    kprintln!("; init = {}", b.manifest().init());
}
