//! A thread's floating-point and vector registers (x87, SSE, and on kvm_pvm AVX and up) and
//! their switch between threads.
//!
//! Natively the kernel leaves CR4.OSXSAVE off, so user code has x87 and SSE only and the
//! 512-byte FXSAVE image is the whole state. On kvm_pvm user code (and the kernel, which runs
//! at hardware CPL 3 there) runs on the host's CR4 and XCR0, which enable AVX at least
//! (XCR0 0x7 seen; 0x600e7 with AVX-512 and AMX on another host build), and the kernel
//! cannot change XCR0. There the state is switched with XSAVE/XRSTOR over every component
//! XCR0 enables except AMX (user code takes #UD on AMX instructions on the hosts measured;
//! a host that enables it gets a boot warning, see [`init`]).
//!
//! The kernel itself never touches these registers (it is built soft-float), so they hold
//! the running thread's state from its return to user mode until the next switch.

use alloc::boxed::Box;
use alloc::vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

pub use fluke_kcore::xsave::LEGACY_BYTES;
use fluke_kcore::xsave::{self, HEADER_END, SSE as XFEATURE_SSE, X87 as XFEATURE_X87};

/// XSAVE header: XSTATE_BV (which components hold non-initial state) and XCOMP_BV.
const XSTATE_BV: usize = 512;

/// The largest exported image (`STATE_XSTATE`), and the area of a thread that has state
/// above SSE: one frame, which the thread's charge includes (`object.rs`).
const MAX_AREA_BYTES: usize = fluke_abi::syscall::XSTATE_MAX_BYTES;
// PLACES packs an offset and a size below it into 16 bits each.
const _: () = assert!(MAX_AREA_BYTES <= 0xffff);
// FpuArea::clean allocates the area in 64-byte chunks.
const _: () = assert!(MAX_AREA_BYTES.is_multiple_of(64));

/// The components switched with XSAVE (0: FXSAVE only), the size of a thread's area and of
/// its exported image.
static XSAVE_MASK: AtomicU64 = AtomicU64::new(0);
static AREA_BYTES: AtomicUsize = AtomicUsize::new(LEGACY_BYTES);
static IMAGE_BYTES: AtomicUsize = AtomicUsize::new(HEADER_END);
/// Where each switched component above SSE lives, fixed at boot: `offset << 16 | size`
/// (both below [`MAX_AREA_BYTES`]), so that exporting needs no CPUID (a VM exit on kvm_pvm).
static PLACES: [AtomicU32; 64] = [const { AtomicU32::new(0) }; 64];

/// Chooses FXSAVE or XSAVE and the area size, once at boot, after PV mode is on and before
/// the first thread is created. `pv`: on kvm_pvm, where XCR0 is the host's. The choice of
/// places is `fluke_kcore::xsave::plan` (CPUID's, Intel's where CPUID is silent); the plan
/// is returned for the boot log (`None` natively: FXSAVE of the 512-byte legacy region).
pub fn init(pv: bool) -> Option<xsave::Layout> {
    if !pv {
        return None;
    }
    let plan = xsave::plan(xgetbv0(), MAX_AREA_BYTES, |bit| {
        let leaf = super::cpu::cpuid(0xd, bit);
        (leaf.eax, leaf.ebx)
    });
    for (bit, place) in plan.places.iter().enumerate() {
        if let Some(p) = place {
            PLACES[bit].store(((p.offset as u32) << 16) | p.size as u32, Ordering::Relaxed);
        }
    }
    XSAVE_MASK.store(plan.mask, Ordering::Relaxed);
    AREA_BYTES.store(plan.area_bytes, Ordering::Relaxed);
    IMAGE_BYTES.store(plan.image_bytes, Ordering::Relaxed);
    // The entry code's floor switch reads it.
    super::percpu::get().xsave_mask.set(plan.mask);
    Some(plan)
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called on kvm_pvm, where CR4.OSXSAVE is the host's (on: every host kernel
    // that runs kvm_pvm uses XSAVE), so XGETBV cannot #UD; it changes nothing.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The size of a thread's exported extended state ([`FpuArea::export`]): the XSAVE
/// standard-format image, at least the legacy region and the header, at most
/// `XSTATE_MAX_BYTES` ([`init`] switches no component beyond it). Never more than the area
/// on kvm_pvm; natively the area is the 512-byte legacy region and the header is made up.
pub fn export_bytes() -> usize {
    IMAGE_BYTES
        .load(Ordering::Relaxed)
        .clamp(HEADER_END, MAX_AREA_BYTES)
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Chunk([u8; 64]);

/// A thread's save area: the FXSAVE image natively, the XSAVE standard-format image on
/// kvm_pvm (64-byte aligned, as XSAVE requires).
///
/// Owned through a raw pointer, not a `Box`: the switch code saves into it by address
/// (PERCPU.cur_fpu) while the thread is not running, and a `Box` would claim unique access
/// to the contents every time it is moved or used, which those writes would contradict.
/// Rust reaches the bytes only through `&self`/`&mut self`, never while the switch runs.
pub struct FpuArea {
    chunks: NonNull<Chunk>,
    len: usize,
}

// SAFETY: the area is owned by its FpuArea alone (as a Box would own it).
unsafe impl Send for FpuArea {}

impl FpuArea {
    /// The state after FNINIT with SSE defaults: control word 0x37f, MXCSR 0x1f80 (all
    /// exceptions masked), every register zero (XSTATE_BV 0: every component initial).
    pub fn clean() -> FpuArea {
        let chunks = AREA_BYTES.load(Ordering::Relaxed) / 64;
        let boxed = vec![Chunk([0; 64]); chunks].into_boxed_slice();
        let len = boxed.len();
        let raw = Box::into_raw(boxed) as *mut Chunk;
        let mut area = FpuArea {
            // SAFETY: Box::into_raw never returns null.
            chunks: unsafe { NonNull::new_unchecked(raw) },
            len,
        };
        let bytes = area.bytes_mut();
        bytes[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        bytes[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        area
    }

    /// The area's address, for the switch code (PERCPU.cur_fpu).
    pub fn addr(&self) -> u64 {
        self.chunks.as_ptr() as u64
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` contiguous chunks of plain bytes, allocated in `clean` and freed only
        // in `drop`; the switch code does not run while this borrow of `self` is live.
        unsafe { core::slice::from_raw_parts(self.chunks.as_ptr().cast(), self.len * 64) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through `self`.
        unsafe { core::slice::from_raw_parts_mut(self.chunks.as_ptr().cast(), self.len * 64) }
    }

    fn xstate_bv(&self) -> u64 {
        match XSAVE_MASK.load(Ordering::Relaxed) {
            0 => XFEATURE_X87 | XFEATURE_SSE,
            _ => word(self.bytes(), XSTATE_BV),
        }
    }

    /// The x87/SSE state as the 512-byte FXSAVE image (`STATE_FPU`), with registers whose
    /// component is in its initial state shown as initial (XSAVE need not write them).
    pub fn export_legacy(&self) -> [u8; LEGACY_BYTES] {
        let mut image = [0u8; LEGACY_BYTES];
        image.copy_from_slice(&self.bytes()[..LEGACY_BYTES]);
        let in_use = self.xstate_bv();
        if in_use & XFEATURE_X87 == 0 {
            let mxcsr = word(&image, 24);
            image[0..160].fill(0);
            image[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
            image[24..32].copy_from_slice(&mxcsr.to_le_bytes());
        }
        if in_use & XFEATURE_SSE == 0 {
            image[160..416].fill(0);
        }
        image
    }

    /// Loads a user-supplied FXSAVE image (`STATE_FPU`), made safe for FXRSTOR/XRSTOR:
    /// MXCSR keeps only the bits the CPU supports (a reserved bit makes the restore #GP in
    /// the kernel) and the MXCSR_MASK field, which the restore ignores, is cleared. Every
    /// other field is loaded as given: no value of them can fault. The extended components
    /// keep their state.
    pub fn import_legacy(&mut self, image: &[u8; LEGACY_BYTES]) {
        let xsave = XSAVE_MASK.load(Ordering::Relaxed) != 0;
        let bytes = self.bytes_mut();
        bytes[..LEGACY_BYTES].copy_from_slice(image);
        sanitize_mxcsr(bytes);
        if xsave {
            let bv = word(bytes, XSTATE_BV) | XFEATURE_X87 | XFEATURE_SSE;
            bytes[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
        }
    }

    /// The whole state as an XSAVE standard-format image of [`export_bytes`] bytes
    /// (`STATE_XSTATE`): the legacy region, the header (XSTATE_BV says which components hold
    /// non-initial state; XCOMP_BV 0) and each component at its place (CPUID's), zero
    /// where the component is initial. Natively that is the legacy region and a header with
    /// XSTATE_BV = x87 | SSE.
    pub fn export(&self, out: &mut [u8]) -> usize {
        let n = export_bytes().min(out.len());
        out[..n].fill(0);
        let legacy = self.export_legacy();
        out[..LEGACY_BYTES.min(n)].copy_from_slice(&legacy[..LEGACY_BYTES.min(n)]);
        let in_use = self.xstate_bv();
        if n >= HEADER_END {
            out[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&in_use.to_le_bytes());
        }
        if XSAVE_MASK.load(Ordering::Relaxed) != 0 {
            for (bit, offset, size) in component_places() {
                if in_use & (1 << bit) != 0 && offset + size <= n {
                    out[offset..offset + size]
                        .copy_from_slice(&self.bytes()[offset..offset + size]);
                }
            }
        }
        n
    }

    /// Loads a user-supplied standard-format image ([`export`]'s form), made safe for
    /// XRSTOR: MXCSR masked as in [`import_legacy`], XSTATE_BV limited to the components
    /// switched here, XCOMP_BV and the header's reserved bytes zero (anything else there
    /// makes XRSTOR #GP). Natively only the legacy region is taken.
    pub fn import(&mut self, image: &[u8]) {
        let mask = XSAVE_MASK.load(Ordering::Relaxed);
        if mask == 0 {
            let mut legacy = [0u8; LEGACY_BYTES];
            legacy.copy_from_slice(&image[..LEGACY_BYTES]);
            self.import_legacy(&legacy);
            return;
        }
        let bytes = self.bytes_mut();
        let n = bytes.len().min(image.len());
        bytes[..n].copy_from_slice(&image[..n]);
        sanitize_mxcsr(bytes);
        let bv = word(bytes, XSTATE_BV) & mask;
        bytes[XSTATE_BV..HEADER_END].fill(0);
        bytes[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    }
}

/// The little-endian word at `at`.
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The switched components above SSE: (bit, offset, size) in the standard format.
fn component_places() -> impl Iterator<Item = (u32, usize, usize)> {
    let mask = XSAVE_MASK.load(Ordering::Relaxed);
    (2..64u32)
        .filter(move |bit| mask & (1 << bit) != 0)
        .map(|bit| {
            let place = PLACES[bit as usize].load(Ordering::Relaxed);
            (bit, (place >> 16) as usize, (place & 0xffff) as usize)
        })
}

fn sanitize_mxcsr(bytes: &mut [u8]) {
    let mxcsr = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    bytes[24..28].copy_from_slice(&(mxcsr & mxcsr_mask()).to_le_bytes());
    bytes[28..32].fill(0);
}

/// The MXCSR bits this CPU supports (FXSAVE's MXCSR_MASK field; 0 there means the
/// architectural default 0xffbf). Read once, by an FXSAVE into a scratch area.
fn mxcsr_mask() -> u32 {
    static MASK: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
    let known = MASK.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let mut scratch = [Chunk([0; 64]); 8];
    // SAFETY: a 64-byte-aligned 512-byte area we own; FXSAVE changes no register (the
    // running thread's state stays loaded).
    unsafe {
        core::arch::asm!("fxsave64 [{}]", in(reg) scratch.as_mut_ptr(),
            options(nostack, preserves_flags));
    }
    let field = &scratch[0].0[28..32];
    let mask = match u32::from_le_bytes([field[0], field[1], field[2], field[3]]) {
        0 => 0xffbf,
        m => m,
    };
    MASK.store(mask, Ordering::Relaxed);
    mask
}

/// Saves the registers into the area at `from` (0: the thread that ran is gone) and loads
/// those at `to`.
pub fn switch(from: u64, to: u64) {
    if from == to {
        return;
    }
    let mask = XSAVE_MASK.load(Ordering::Relaxed);
    let (lo, hi) = (mask as u32, (mask >> 32) as u32);
    // SAFETY: `from` (if non-zero) and `to` are the 64-byte-aligned FpuAreas of live threads,
    // of AREA_BYTES each (PERCPU.cur_fpu is cleared when its thread is reaped), reached only
    // here and by the floor switch, never while a Rust reference to them is live. `to` holds
    // the clean state, what the save wrote, or an image sanitised by `import*`, so the
    // restore cannot fault (MXCSR, XSTATE_BV within XCR0, header reserved bytes zero).
    unsafe {
        if mask == 0 {
            if from != 0 {
                core::arch::asm!("fxsave64 [{}]", in(reg) from, options(nostack, preserves_flags));
            }
            core::arch::asm!("fxrstor64 [{}]", in(reg) to, options(nostack, preserves_flags));
        } else {
            if from != 0 {
                core::arch::asm!("xsave64 [{}]", in(reg) from, in("eax") lo, in("edx") hi,
                    options(nostack, preserves_flags));
            }
            core::arch::asm!("xrstor64 [{}]", in(reg) to, in("eax") lo, in("edx") hi,
                options(nostack, preserves_flags));
        }
    }
}

impl Drop for FpuArea {
    fn drop(&mut self) {
        // SAFETY: the slice `clean` leaked, freed once; PERCPU.cur_fpu no longer names it
        // (the scheduler clears it before a thread is reaped).
        unsafe {
            drop(Box::from_raw(core::ptr::slice_from_raw_parts_mut(
                self.chunks.as_ptr(),
                self.len,
            )))
        };
    }
}
