//! The parts of the fluke kernel that need no hardware: they are unit-tested on the host
//! and linked into the kernel unchanged.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod budget;
pub mod cap;
pub mod devices;
pub mod frame;
pub mod ipc;
pub mod irq;
pub mod mapping;
pub mod memmap;
pub mod objstate;
pub mod pvclock;
pub mod runq;
pub mod slab;
pub mod stall;
pub mod sync_objects;
pub mod teardown;
pub mod user_range;
pub mod user_regs;
pub mod xsave;

pub const PAGE_SIZE: u64 = 4096;

pub const fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

/// Rounds up to a power-of-two alignment; `None` on overflow.
pub const fn align_up(x: u64, a: u64) -> Option<u64> {
    match x.checked_add(a - 1) {
        Some(v) => Some(v & !(a - 1)),
        None => None,
    }
}
