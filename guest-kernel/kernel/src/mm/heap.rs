//! The kernel heap behind `alloc` (Box, Vec): power-of-two size classes from 16 bytes to
//! 2 KiB carved out of whole frames, and whole contiguous frames for anything larger.
//! Everything is reached through the direct map, so the heap works in any address space.

use super::frames::{alloc_frame, alloc_frames_contiguous, free_frame};
use super::physmap::{phys_to_virt, virt_to_phys};
use crate::sync::BootCell;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;

const MIN_CLASS: usize = 4; // 16 bytes
const MAX_CLASS: usize = 11; // 2048 bytes
const CLASSES: usize = MAX_CLASS - MIN_CLASS + 1;

struct FreeNode {
    next: *mut FreeNode,
}

struct Heap {
    free: [*mut FreeNode; CLASSES],
}

static HEAP: BootCell<Heap> = BootCell::new(Heap {
    free: [null_mut(); CLASSES],
});

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS);
    let class = size.next_power_of_two().trailing_zeros() as usize;
    (class <= MAX_CLASS).then_some(class - MIN_CLASS)
}

pub struct KernelHeap;

// SAFETY: the kernel runs on one CPU and allocates only with interrupts disabled (kernel code
// never runs with interrupts on, except the idle loop, which does not allocate), so the heap
// is never entered twice at once.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let heap = HEAP.get_mut();
        match class_of(&layout) {
            Some(c) => {
                if heap.free[c].is_null() {
                    let Some(frame) = alloc_frame() else {
                        return null_mut();
                    };
                    let size = 1usize << (c + MIN_CLASS);
                    let base = phys_to_virt(frame) as usize;
                    for off in (0..4096).step_by(size).rev() {
                        let node = (base + off) as *mut FreeNode;
                        (*node).next = heap.free[c];
                        heap.free[c] = node;
                    }
                }
                let node = heap.free[c];
                heap.free[c] = (*node).next;
                node as *mut u8
            }
            None => {
                let pages = layout.size().div_ceil(4096) as u64;
                let align = (layout.align() as u64 / 4096).max(1);
                match alloc_frames_contiguous(pages, align.next_power_of_two()) {
                    Some(frame) => phys_to_virt(frame) as *mut u8,
                    None => null_mut(),
                }
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let heap = HEAP.get_mut();
        match class_of(&layout) {
            Some(c) => {
                let node = ptr as *mut FreeNode;
                (*node).next = heap.free[c];
                heap.free[c] = node;
            }
            None => {
                let pages = layout.size().div_ceil(4096);
                let frame = virt_to_phys(ptr as u64);
                for i in 0..pages as u64 {
                    free_frame(frame + i * 4096);
                }
            }
        }
    }
}

#[global_allocator]
static GLOBAL: KernelHeap = KernelHeap;
