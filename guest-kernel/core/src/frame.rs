//! Physical frame allocator: one bit per 4 KiB frame (1 = free), storage supplied by the
//! caller so the kernel can keep it in a static.

use crate::{align_down, align_up, PAGE_SIZE};

#[derive(Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not page aligned.
    Unaligned(u64),
    /// The frame lies outside the managed range.
    OutOfRange(u64),
    /// The frame is already free (double free).
    AlreadyFree(u64),
}

pub struct FrameAllocator<'a> {
    /// Bit `i` of word `w` describes frame `w * 64 + i`; 1 = free.
    bitmap: &'a mut [u64],
    frames: u64,
    free: u64,
    /// Word index where the next search starts (all words below it are full).
    hint: usize,
}

impl<'a> FrameAllocator<'a> {
    /// An allocator for frames `0..frames` with every frame reserved; `storage` must hold
    /// at least `frames.div_ceil(64)` words.
    pub fn new(storage: &'a mut [u64], frames: u64) -> Self {
        let words = frames.div_ceil(64) as usize;
        assert!(storage.len() >= words, "frame bitmap storage too small");
        let bitmap = &mut storage[..words];
        bitmap.fill(0);
        FrameAllocator {
            bitmap,
            frames,
            free: 0,
            hint: 0,
        }
    }

    /// Number of frames the allocator manages.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Marks the whole frames inside `[start, end)` free (partial frames stay reserved).
    pub fn add_free_range(&mut self, start: u64, end: u64) {
        let Some(first) = align_up(start, PAGE_SIZE) else {
            return;
        };
        let last = align_down(end, PAGE_SIZE).min(self.frames * PAGE_SIZE);
        let mut addr = first;
        while addr < last {
            let f = addr / PAGE_SIZE;
            if !self.is_free(f) {
                self.set(f, true);
                self.free += 1;
            }
            addr += PAGE_SIZE;
        }
        self.hint = 0;
    }

    /// Marks every frame touching `[start, end)` reserved.
    pub fn reserve_range(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let first = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE).min(self.frames);
        for f in first..last {
            if self.is_free(f) {
                self.set(f, false);
                self.free -= 1;
            }
        }
    }

    /// Allocates one frame, lowest address first; returns its physical address.
    pub fn alloc(&mut self) -> Option<u64> {
        for w in self.hint..self.bitmap.len() {
            let word = self.bitmap[w];
            if word != 0 {
                let bit = word.trailing_zeros() as u64;
                let f = w as u64 * 64 + bit;
                self.set(f, false);
                self.free -= 1;
                self.hint = w;
                return Some(f * PAGE_SIZE);
            }
        }
        self.hint = self.bitmap.len();
        None
    }

    /// Allocates `count` contiguous frames whose first frame number is a multiple of
    /// `align` frames (e.g. the 8 KiB page-table pair of kvm_pvm: `count = 2, align = 2`).
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || align == 0 || !align.is_power_of_two() {
            return None;
        }
        let mut f = (self.hint as u64 * 64).next_multiple_of(align);
        while f + count <= self.frames {
            match (f..f + count).find(|&g| !self.is_free(g)) {
                None => {
                    for g in f..f + count {
                        self.set(g, false);
                    }
                    self.free -= count;
                    return Some(f * PAGE_SIZE);
                }
                Some(busy) => f = (busy + 1).next_multiple_of(align),
            }
        }
        None
    }

    pub fn free(&mut self, addr: u64) -> Result<(), FreeError> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(FreeError::Unaligned(addr));
        }
        let f = addr / PAGE_SIZE;
        if f >= self.frames {
            return Err(FreeError::OutOfRange(addr));
        }
        if self.is_free(f) {
            return Err(FreeError::AlreadyFree(addr));
        }
        self.set(f, true);
        self.free += 1;
        self.hint = self.hint.min((f / 64) as usize);
        Ok(())
    }

    pub fn is_free(&self, frame: u64) -> bool {
        frame < self.frames && self.bitmap[(frame / 64) as usize] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: u64, free: bool) {
        let (w, b) = ((frame / 64) as usize, frame % 64);
        if free {
            self.bitmap[w] |= 1 << b;
        } else {
            self.bitmap[w] &= !(1 << b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::vec;

    #[test]
    fn allocates_only_free_frames_lowest_first() {
        let mut storage = vec![0u64; 4];
        let mut a = FrameAllocator::new(&mut storage, 200);
        a.add_free_range(0x1800, 0x10_000); // frames 2..16 (0x1800 rounds up to frame 2)
        a.reserve_range(0x5000, 0x5001); // frame 5
        assert_eq!(a.free_frames(), 13);
        let mut got = HashSet::new();
        while let Some(p) = a.alloc() {
            assert!(got.insert(p));
        }
        assert_eq!(got.len(), 13);
        assert!(!got.contains(&0x5000) && !got.contains(&0x1000) && !got.contains(&0x10_000));
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn free_detects_misuse_and_reuses() {
        let mut storage = vec![0u64; 1];
        let mut a = FrameAllocator::new(&mut storage, 64);
        a.add_free_range(0, 64 * 4096);
        let p = a.alloc().unwrap();
        assert_eq!(p, 0);
        assert_eq!(a.free(p + 1), Err(FreeError::Unaligned(p + 1)));
        assert_eq!(a.free(64 * 4096), Err(FreeError::OutOfRange(64 * 4096)));
        assert_eq!(a.free(4096), Err(FreeError::AlreadyFree(4096)));
        a.free(p).unwrap();
        assert_eq!(a.free(p), Err(FreeError::AlreadyFree(p)));
        assert_eq!(a.alloc(), Some(0));
    }

    #[test]
    fn contiguous_respects_alignment_and_holes() {
        let mut storage = vec![0u64; 2];
        let mut a = FrameAllocator::new(&mut storage, 100);
        a.add_free_range(4096, 100 * 4096);
        a.reserve_range(4 * 4096, 5 * 4096);
        let p = a.alloc_contiguous(2, 2).unwrap();
        assert_eq!(p, 2 * 4096);
        let q = a.alloc_contiguous(2, 2).unwrap();
        assert_eq!(q, 6 * 4096); // frame 4 reserved, so 4..6 is skipped
        assert_eq!(a.alloc_contiguous(0, 1), None);
        assert_eq!(a.alloc_contiguous(1, 3), None);
        assert_eq!(a.alloc_contiguous(200, 1), None);
        assert_eq!(a.free_frames(), 99 - 1 - 4);
    }

    #[test]
    fn ranges_beyond_managed_frames_are_clipped() {
        let mut storage = vec![0u64; 1];
        let mut a = FrameAllocator::new(&mut storage, 10);
        a.add_free_range(0, u64::MAX);
        assert_eq!(a.free_frames(), 10);
        a.reserve_range(9 * 4096, u64::MAX);
        assert_eq!(a.free_frames(), 9);
        a.reserve_range(10, 5); // empty
        assert_eq!(a.free_frames(), 9);
    }
}
