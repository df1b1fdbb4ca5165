//! The demand pager's backing store (`guest-nesters/programs/pager`), kept apart from the
//! pager so that it is unit-tested on the host:
//!
//! - [`codec`]: a page is compressed as runs of 64-bit words in arithmetic progression
//!   (zero pages, repeated values, counters, arrays of evenly spaced pointers) and literal
//!   words in between; a page that does not shrink is stored raw.
//! - [`Store`]: blobs in fixed 256-byte slots, chained, so nothing fragments; a full store
//!   refuses a blob (the pager then stops the child rather than lose a page).
//! - [`Clock`]: the resident pages and the clock hand (second-chance replacement).
//! - [`Entry`]: what the pager knows of one page of its window, in one word.
#![no_std]

#[cfg(test)]
extern crate std;

mod clock;
pub mod codec;
mod store;

pub use clock::Clock;
pub use store::{Blob, Store, SLOT};

pub const PAGE: usize = 4096;
pub const WORDS: usize = PAGE / 8;

/// One page of the pager's window: resident (in a frame of the pager's allotment), or
/// stored (a blob, compressed or raw), or neither (never written: a zero page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry(pub u64);

const RESIDENT: u64 = 1 << 63;
const RAW: u64 = 1 << 62;
const LOGGED: u64 = 1 << 61;

impl Entry {
    pub const EMPTY: Entry = Entry(0);
    pub const RESIDENT: Entry = Entry(RESIDENT);

    pub fn resident(self) -> bool {
        self.0 & RESIDENT != 0
    }

    /// Whether the pager has recorded this page as used (so that it finds it again when
    /// the window is released); kept across the other states.
    pub fn logged(self) -> bool {
        self.0 & LOGGED != 0
    }

    /// This state, keeping `from`'s logged mark.
    pub fn keeping_mark(self, from: Entry) -> Entry {
        Entry(self.0 | from.0 & LOGGED)
    }

    pub fn with_logged(self) -> Entry {
        Entry(self.0 | LOGGED)
    }

    pub fn stored(blob: Blob, raw: bool) -> Entry {
        let raw = if raw { RAW } else { 0 };
        Entry((u64::from(blob.first) + 1) | (u64::from(blob.len) << 32) | raw)
    }

    /// The blob holding the page and whether it is raw, if it is stored.
    pub fn blob(self) -> Option<(Blob, bool)> {
        if self.resident() || self.0 & 0xffff_ffff == 0 {
            return None;
        }
        let blob = Blob {
            first: (self.0 & 0xffff_ffff) as u32 - 1,
            len: ((self.0 >> 32) & 0xffff) as u32,
        };
        Some((blob, self.0 & RAW != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        assert_eq!(Entry::EMPTY.blob(), None);
        assert!(!Entry::EMPTY.resident());
        assert!(Entry::RESIDENT.resident());
        assert_eq!(Entry::RESIDENT.blob(), None);
        let marked = Entry::RESIDENT.with_logged();
        assert!(marked.logged() && marked.resident());
        assert!(Entry::EMPTY.keeping_mark(marked).logged());
        assert!(!Entry::EMPTY.keeping_mark(Entry::RESIDENT).logged());
        let b = Blob { first: 3, len: 100 };
        assert_eq!(
            Entry::stored(b, false).keeping_mark(marked).blob(),
            Some((b, false))
        );
        for (first, len, raw) in [(0, 19, false), (7, 4096, true), (u32::MAX - 1, 1, false)] {
            let b = Blob { first, len };
            let e = Entry::stored(b, raw);
            assert!(!e.resident());
            assert_eq!(e.blob(), Some((b, raw)));
        }
    }
}
