//! The frame allocator, built from the boot memory map: every physical page the kernel
//! hands out (page tables, user memory, kernel stacks) comes from here.

use super::physmap::MAX_PHYS;
use crate::sync::BootCell;
use fluke_abi::boot::HvmMemmapEntry;
use fluke_kcore::frame::FrameAllocator;
use fluke_kcore::memmap::{self, PhysRange};

const BITMAP_WORDS: usize = (MAX_PHYS / 4096 / 64) as usize;
static FRAME_BITMAP: BootCell<[u64; BITMAP_WORDS]> = BootCell::new([0; BITMAP_WORDS]);
static FRAMES: BootCell<Option<FrameAllocator<'static>>> = BootCell::new(None);

/// Builds the frame allocator from the memory map; `reserved` lists what is in use (the
/// kernel image, the bundle, the loader's structures). Returns the end of RAM.
pub fn init(map: &[HvmMemmapEntry], reserved: &[PhysRange], loader: &[PhysRange]) -> u64 {
    let ram_end = memmap::ram_end(map, MAX_PHYS);
    // SAFETY: boot, single CPU, interrupts off: nothing else references the allocator.
    let frames = unsafe {
        let alloc = FrameAllocator::new(&mut FRAME_BITMAP.get_mut()[..], ram_end / 4096);
        FRAMES.get_mut().insert(alloc)
    };
    memmap::populate(frames, map, reserved);
    for r in loader {
        frames.reserve_range(r.start, r.end);
    }
    ram_end
}

fn with_frames<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> Option<R> {
    // SAFETY: single CPU; the allocator is only used with interrupts off (boot, kernel
    // entries) and `f` cannot reach it again (it is only ever an allocator operation).
    unsafe { FRAMES.get_mut().as_mut().map(f) }
}

pub fn alloc_frame() -> Option<u64> {
    with_frames(|a| a.alloc()).flatten()
}

pub fn alloc_frames_contiguous(count: u64, align: u64) -> Option<u64> {
    with_frames(|a| a.alloc_contiguous(count, align)).flatten()
}

/// Returns a frame to the allocator. A double or foreign free is a kernel bug.
pub fn free_frame(frame: u64) {
    if let Some(Err(e)) = with_frames(|a| a.free(frame)) {
        panic!("freeing frame {frame:#x}: {e:?}");
    }
}

pub fn free_frames() -> u64 {
    with_frames(|a| a.free_frames()).unwrap_or(0)
}
