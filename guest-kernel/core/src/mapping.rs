//! Regions and Mappings, and the walks over the graph they form: a Region exports a range of
//! its owner space's memory, a Mapping makes a region appear in a target space, and a
//! target may export that memory on through regions of its own (memory passed down a stack
//! of nesters). Spaces are named by their id; page tables are the kernel's business.

use crate::slab::{Id, Slab};
use crate::PAGE_SIZE;
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub owner: Id,
    pub base: u64,
    pub size: u64,
    /// The port that gets the faults on pages the owner does not have.
    pub keeper: Option<Id>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub target: Id,
    pub base: u64,
    pub region: Id,
    pub writable: bool,
    pub executable: bool,
}

/// How far mappings of mappings may chain (a nester's memory mapped into its child, which
/// maps it into its own child, ...). Deep enough for any stack of nesters we run; it also
/// ends a cycle of spaces mapping each other's regions.
pub const MAX_CHAIN: u32 = 32;

impl Region {
    pub fn contains(&self, va: u64) -> bool {
        va >= self.base && va - self.base < self.size
    }
}

/// Where a mapping of space `target` puts `page`: the mapping, the region, and the page in
/// the region owner's space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Through {
    pub mapping: Id,
    pub region: Id,
    pub writable: bool,
    pub executable: bool,
    /// The page's offset in the region.
    pub offset: u64,
    pub owner: Id,
    pub owner_page: u64,
    pub keeper: Option<Id>,
}

/// The mapping of space `target` covering `page`, if any.
pub fn mapping_at(
    mappings: &Slab<Mapping>,
    regions: &Slab<Region>,
    target: Id,
    page: u64,
) -> Option<Through> {
    mappings.iter().find_map(|(mid, m)| {
        let r = regions.get(m.region)?;
        let offset = page.checked_sub(m.base)?;
        (m.target == target && offset < r.size).then_some(Through {
            mapping: mid,
            region: m.region,
            writable: m.writable,
            executable: m.executable,
            offset,
            owner: r.owner,
            owner_page: r.base + offset,
            keeper: r.keeper,
        })
    })
}

/// Whether a new mapping of `[addr, end)` into `target` overlaps one it has.
pub fn overlaps(
    mappings: &Slab<Mapping>,
    regions: &Slab<Region>,
    target: Id,
    addr: u64,
    end: u64,
) -> bool {
    mappings.iter().any(|(_, m)| {
        m.target == target
            && regions
                .get(m.region)
                .is_some_and(|r| addr < m.base + r.size && m.base < end)
    })
}

/// Every place page `va` of space `owner` appears in other spaces through mappings of its
/// regions, and where those appear in turn, as `(space, address)`, each view before the
/// views of it. Bounded by [`MAX_CHAIN`] levels (a cycle ends there).
pub fn views(
    mappings: &Slab<Mapping>,
    regions: &Slab<Region>,
    owner: Id,
    va: u64,
) -> Vec<(Id, u64)> {
    let mut out = Vec::new();
    // (space, address, depth): a work list, so the kernel stack stays bounded.
    let mut work = alloc::vec![(owner, va, 0u32)];
    while let Some((space, at, depth)) = work.pop() {
        if depth > 0 {
            out.push((space, at));
        }
        if depth > MAX_CHAIN {
            continue;
        }
        let mut found = Vec::new();
        for (rid, r) in regions.iter() {
            if r.owner != space || !r.contains(at) {
                continue;
            }
            let offset = at - r.base;
            for (_, m) in mappings.iter() {
                if m.region == rid {
                    found.push((m.target, m.base + offset));
                }
            }
        }
        // Depth first, in table order, as the kernel's recursive walk did.
        for &(t, a) in found.iter().rev() {
            work.push((t, a, depth + 1));
        }
    }
    out
}

/// The mappings of region `rid`.
pub fn mappings_of(mappings: &Slab<Mapping>, rid: Id) -> Vec<Id> {
    mappings
        .iter()
        .filter(|(_, m)| m.region == rid)
        .map(|(id, _)| id)
        .collect()
}

/// The pages `[base, base + size)` of a mapping, page by page (for unmapping).
pub fn pages(base: u64, size: u64) -> impl Iterator<Item = u64> {
    (0..size / PAGE_SIZE).map(move |i| base + i * PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    struct World {
        spaces: Slab<()>,
        regions: Slab<Region>,
        mappings: Slab<Mapping>,
    }

    impl World {
        fn new() -> World {
            World {
                spaces: Slab::new(16),
                regions: Slab::new(16),
                mappings: Slab::new(16),
            }
        }
        fn space(&mut self) -> Id {
            self.spaces.insert(()).unwrap()
        }
        fn region(&mut self, owner: Id, base: u64, size: u64) -> Id {
            self.regions
                .insert(Region {
                    owner,
                    base,
                    size,
                    keeper: None,
                })
                .unwrap()
        }
        fn map(&mut self, target: Id, base: u64, region: Id) -> Id {
            self.mappings
                .insert(Mapping {
                    target,
                    base,
                    region,
                    writable: true,
                    executable: false,
                })
                .unwrap()
        }
    }

    #[test]
    fn mapping_at_finds_the_owner_page() {
        let mut w = World::new();
        let (a, b) = (w.space(), w.space());
        let r = w.region(a, 0x10 * P, 4 * P);
        let m = w.map(b, 0x100 * P, r);
        let t = mapping_at(&w.mappings, &w.regions, b, 0x102 * P).unwrap();
        assert_eq!(
            (t.mapping, t.owner, t.owner_page, t.offset),
            (m, a, 0x12 * P, 2 * P)
        );
        assert_eq!(mapping_at(&w.mappings, &w.regions, b, 0x104 * P), None);
        assert_eq!(mapping_at(&w.mappings, &w.regions, b, 0xff * P), None);
        assert_eq!(mapping_at(&w.mappings, &w.regions, a, 0x102 * P), None);
    }

    #[test]
    fn views_follow_a_chain_of_nesters() {
        // a exports to b, b passes the same memory on to c.
        let mut w = World::new();
        let (a, b, c) = (w.space(), w.space(), w.space());
        let ra = w.region(a, 0x10 * P, 4 * P);
        w.map(b, 0x100 * P, ra);
        let rb = w.region(b, 0x100 * P, 4 * P);
        w.map(c, 0x200 * P, rb);
        assert_eq!(
            views(&w.mappings, &w.regions, a, 0x11 * P),
            [(b, 0x101 * P), (c, 0x201 * P)]
        );
        assert_eq!(
            views(&w.mappings, &w.regions, b, 0x103 * P),
            [(c, 0x203 * P)]
        );
        assert!(views(&w.mappings, &w.regions, c, 0x201 * P).is_empty());
        assert!(views(&w.mappings, &w.regions, a, 0x14 * P).is_empty());
    }

    #[test]
    fn a_cycle_of_mappings_ends_at_the_chain_limit() {
        let mut w = World::new();
        let (a, b) = (w.space(), w.space());
        let ra = w.region(a, P, P);
        w.map(b, P, ra);
        let rb = w.region(b, P, P);
        w.map(a, P, rb);
        let v = views(&w.mappings, &w.regions, a, P);
        assert_eq!(v.len(), MAX_CHAIN as usize + 1);
    }

    #[test]
    fn overlap_is_per_target() {
        let mut w = World::new();
        let (a, b, c) = (w.space(), w.space(), w.space());
        let r = w.region(a, P, 2 * P);
        w.map(b, 0x10 * P, r);
        assert!(overlaps(&w.mappings, &w.regions, b, 0x11 * P, 0x12 * P));
        assert!(!overlaps(&w.mappings, &w.regions, b, 0x12 * P, 0x13 * P));
        assert!(!overlaps(&w.mappings, &w.regions, c, 0x10 * P, 0x12 * P));
        assert_eq!(mappings_of(&w.mappings, r).len(), 1);
        assert_eq!(
            pages(0x10 * P, 2 * P).collect::<Vec<_>>(),
            [0x10 * P, 0x11 * P]
        );
    }
}
