//! The resident pages, one per frame of the pager's allotment, and a clock hand: a page
//! referenced since the hand last passed gets a second chance (its bit is cleared), the
//! first one not referenced is the victim. After two full turns every bit has been
//! cleared, so the sweep always ends.

pub struct Clock<'a> {
    /// Page number + 1 per frame; 0 = free.
    frames: &'a mut [u64],
    hand: usize,
    count: usize,
}

impl<'a> Clock<'a> {
    pub fn new(frames: &'a mut [u64]) -> Clock<'a> {
        frames.fill(0);
        Clock {
            frames,
            hand: 0,
            count: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.count == self.frames.len()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Records `page` as resident; false if every frame is taken.
    pub fn insert(&mut self, page: u64) -> bool {
        let n = self.frames.len();
        for k in 0..n {
            let i = (self.hand + k) % n;
            if self.frames[i] == 0 {
                self.frames[i] = page + 1;
                self.count += 1;
                return true;
            }
        }
        false
    }

    /// Forgets `page` if it is resident (its window went away); true if it was.
    pub fn remove(&mut self, page: u64) -> bool {
        match self.frames.iter().position(|&f| f == page + 1) {
            Some(i) => {
                self.frames[i] = 0;
                self.count -= 1;
                true
            }
            None => false,
        }
    }

    /// Picks and removes the page to evict; `referenced(page)` reports (and clears) its
    /// reference bit.
    pub fn victim(&mut self, mut referenced: impl FnMut(u64) -> bool) -> Option<u64> {
        let n = self.frames.len();
        if self.count == 0 {
            return None;
        }
        for _ in 0..2 * n + 1 {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            let slot = self.frames[i];
            if slot != 0 && !referenced(slot - 1) {
                self.frames[i] = 0;
                self.count -= 1;
                return Some(slot - 1);
            }
        }
        None // unreachable: the second turn finds every bit cleared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn unreferenced_pages_go_first_and_every_page_gets_a_second_chance() {
        let mut frames = [0u64; 4];
        let mut clock = Clock::new(&mut frames);
        assert_eq!(clock.victim(|_| false), None);
        for p in [10, 11, 12, 13] {
            assert!(clock.insert(p));
        }
        assert!(clock.is_full() && !clock.insert(14));
        // 10 and 11 were used: 12 goes.
        let mut bits: HashSet<u64> = [10, 11].into();
        assert_eq!(clock.victim(|p| bits.remove(&p)), Some(12));
        assert!(clock.insert(14));
        // Everything used: the bits are cleared in one turn and the hand's page goes.
        let mut bits: HashSet<u64> = [10, 11, 13, 14].into();
        let v = clock.victim(|p| bits.remove(&p)).unwrap();
        assert!([10, 11, 13, 14].contains(&v));
        assert_eq!(clock.len(), 3);
        assert!(clock.remove(14) || v == 14);
        assert!(!clock.remove(99));
    }
}
