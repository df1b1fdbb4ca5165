//! Blobs in fixed-size slots. A blob is a chain of slots (`next[slot]` links them), so any
//! free slots will do and the store never fragments. Slots are handed out from a free list,
//! then from the never-used tail: a store in demand-zero memory costs only what it holds.

pub const SLOT: usize = 256;
const END: u32 = u32::MAX;

/// A stored blob: its first slot and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blob {
    pub first: u32,
    pub len: u32,
}

pub struct Store<'a> {
    data: &'a mut [u8],
    next: &'a mut [u32],
    slots: u32,
    /// Head of the free list (slots used once and freed).
    free: u32,
    /// Slots from here on were never used.
    fresh: u32,
    used: u32,
}

impl<'a> Store<'a> {
    /// A store in `data` (a whole number of slots) with `next` (one entry per slot).
    pub fn new(data: &'a mut [u8], next: &'a mut [u32]) -> Store<'a> {
        let slots = (data.len() / SLOT).min(next.len()).min(END as usize - 1) as u32;
        Store {
            data,
            next,
            slots,
            free: END,
            fresh: 0,
            used: 0,
        }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.slots as usize * SLOT
    }

    pub fn used_bytes(&self) -> usize {
        self.used as usize * SLOT
    }

    fn alloc(&mut self) -> Option<u32> {
        if self.free != END {
            let s = self.free;
            self.free = self.next[s as usize];
            return Some(s);
        }
        (self.fresh < self.slots).then(|| {
            self.fresh += 1;
            self.fresh - 1
        })
    }

    /// Stores `bytes`; `None` if the store has no room for them (nothing is changed then).
    pub fn put(&mut self, bytes: &[u8]) -> Option<Blob> {
        let need = bytes.len().div_ceil(SLOT).max(1) as u32;
        if self.slots - self.used < need {
            return None;
        }
        let mut first = END;
        let mut prev = END;
        for chunk in bytes
            .chunks(SLOT)
            .chain((bytes.is_empty()).then_some(&[][..]))
        {
            let s = self.alloc()?; // cannot fail: counted above
            let at = s as usize * SLOT;
            self.data[at..at + chunk.len()].copy_from_slice(chunk);
            self.next[s as usize] = END;
            if prev == END {
                first = s;
            } else {
                self.next[prev as usize] = s;
            }
            prev = s;
            self.used += 1;
        }
        Some(Blob {
            first,
            len: bytes.len() as u32,
        })
    }

    /// Copies a blob into `out` (at least `blob.len` bytes); `None` if the blob does not
    /// describe a chain of this store (a bug, reported rather than followed).
    pub fn get(&self, blob: Blob, out: &mut [u8]) -> Option<()> {
        let len = blob.len as usize;
        let out = out.get_mut(..len)?;
        let mut s = blob.first;
        for chunk in out.chunks_mut(SLOT) {
            if s >= self.slots {
                return None;
            }
            let at = s as usize * SLOT;
            chunk.copy_from_slice(&self.data[at..at + chunk.len()]);
            s = self.next[s as usize];
        }
        Some(())
    }

    /// Returns a blob's slots to the free list.
    pub fn free(&mut self, blob: Blob) {
        let mut s = blob.first;
        for _ in 0..(blob.len as usize).div_ceil(SLOT).max(1) {
            if s >= self.slots {
                return;
            }
            let after = self.next[s as usize];
            self.next[s as usize] = self.free;
            self.free = s;
            self.used -= 1;
            s = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn blobs_round_trip_reuse_slots_and_a_full_store_refuses() {
        let (mut data, mut next) = (vec![0u8; 16 * SLOT], vec![0u32; 16]);
        let mut store = Store::new(&mut data, &mut next);
        assert_eq!(store.capacity_bytes(), 16 * SLOT);
        let blobs: Vec<(Blob, Vec<u8>)> = (0..5)
            .map(|i| {
                let bytes: Vec<u8> = (0..(i * 300 + 1)).map(|b| (b * 7 + i) as u8).collect();
                (store.put(&bytes).unwrap(), bytes)
            })
            .collect();
        // 1 + 2 + 3 + 4 + 5 slots
        assert_eq!(store.used_bytes(), 15 * SLOT);
        assert_eq!(store.put(&[0; 2 * SLOT]), None, "only one slot left");
        for (b, bytes) in &blobs {
            let mut out = vec![0u8; bytes.len()];
            store.get(*b, &mut out).unwrap();
            assert_eq!(&out, bytes);
        }
        store.free(blobs[3].0); // 4 slots back
        let big = vec![0xab; 5 * SLOT];
        let b = store.put(&big).unwrap(); // the freed slots plus the last fresh one
        let mut out = vec![0; big.len()];
        store.get(b, &mut out).unwrap();
        assert_eq!(out, big);
        for (i, (b, bytes)) in blobs.iter().enumerate() {
            if i != 3 {
                let mut out = vec![0u8; bytes.len()];
                store.get(*b, &mut out).unwrap();
                assert_eq!(&out, bytes, "blob {i} intact after reuse");
            }
        }
        assert_eq!(store.get(Blob { first: 99, len: 10 }, &mut out), None);
    }
}
