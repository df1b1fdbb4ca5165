//! Regions and Mappings, and the walks over the graph they form: a Region exports a range of
//! its owner space's memory, a Mapping makes a region appear in a target space, and a
//! target may export that memory on through regions of its own (memory passed down a stack
//! of nesters). Spaces are named by their id; page tables are the kernel's business.

//!
//! ## How many views a page can have
//!
//! A page is *viewed* through every chain of mappings from it: a region of its space holding
//! it, mapped into a target, a region of the target holding that address, mapped on, and so
//! on. Mapping a region twice into a child and repeating that at every level makes that
//! number grow as 2^depth, and every walk over a page's views (`mem_discard`,
//! `mem_referenced`, unmapping a mapping or a region) would walk them all. So the number is
//! bounded by construction, at map time, by [`MAX_VIEWS`]:
//!
//! * every region keeps [`Region::views`]: the sum over its mappings of their *weight*, 1
//!   (the mapped page) plus the `views` of every region of the target that overlaps the
//!   mapped range ([`weight`]). That over-counts (a region of the target that holds other
//!   pages of the range is counted for every page), never under-counts: by induction over
//!   the mapping graph, page `p` of space `X` has at most `sum of views(R) over the regions
//!   R of X holding p` views.
//! * the invariant: for every region, that sum over the regions of its owner overlapping it
//!   is at most [`MAX_VIEWS`]; so every page has at most that many views, and no region can
//!   reach itself (a cycle would make its count infinite).
//! * `mapping_create` first plans the change ([`plan_views`]: the new mapping's weight goes
//!   to its region and, route by route, to every region upstream of it), refuses it if the
//!   invariant would break or the plan takes more than [`MAX_VIEWS`] steps (nothing changed),
//!   and only then records it ([`apply_views`]); removing a mapping takes its weight back
//!   the same way ([`forget_views`]), which cannot fail. Nothing else changes a count:
//!   a new region counts 0, and a region is removed only after its mappings.

use crate::slab::{Id, Slab};
use crate::PAGE_SIZE;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// At most this many views of one page (see the module documentation): the bound on every
/// walk over a page's views, and on the kernel memory such a walk uses (a list of this many
/// `(space, address)` pairs, 24 KiB).
pub const MAX_VIEWS: u32 = fluke_abi::syscall::MAX_VIEWS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub owner: Id,
    pub base: u64,
    pub size: u64,
    /// The port that gets the faults on pages the owner does not have.
    pub keeper: Option<Id>,
    /// The views its mappings give each of its pages, at most (module documentation):
    /// 0 for a new region; kept by [`apply_views`] and [`forget_views`].
    pub views: u32,
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

    /// Whether it shares an address with `[start, start + len)`.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        start < self.base.saturating_add(self.size) && self.base < start.saturating_add(len)
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

/// The views a mapping of `len` bytes at `base` of space `target` gives each page of its
/// region: the page there, and every view the target's regions overlapping that range pass
/// on (module documentation).
pub fn weight(regions: &Slab<Region>, target: Id, base: u64, len: u64) -> u64 {
    1 + regions
        .iter()
        .filter(|(_, r)| r.owner == target && r.overlaps(base, len))
        .map(|(_, r)| u64::from(r.views))
        .sum::<u64>()
}

/// The regions one step upstream of region `r`: for every mapping into `r`'s owner whose
/// range overlaps `r` (but `except`), that mapping's region, once per mapping.
fn upstream<'a>(
    mappings: &'a Slab<Mapping>,
    regions: &'a Slab<Region>,
    r: &'a Region,
    except: Option<Id>,
) -> impl Iterator<Item = Id> + 'a {
    mappings.iter().filter_map(move |(mid, m)| {
        let len = regions.get(m.region)?.size;
        (Some(mid) != except && m.target == r.owner && r.overlaps(m.base, len)).then_some(m.region)
    })
}

/// Why a mapping cannot be made: its pages would have too many views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewsRefused {
    /// Some page would have more than [`MAX_VIEWS`] views, or the change would take more
    /// than that many steps to account.
    TooMany,
    /// The region would be mapped into memory it (through other mappings) provides itself.
    Cycle,
}

/// What adding a mapping does to the regions' counts: how much each one's `views` grows.
/// Made by [`plan_views`] (which checked it), carried out by [`apply_views`].
#[derive(Debug, PartialEq, Eq)]
pub struct ViewsPlan {
    grow: BTreeMap<Id, u64>,
}

/// The decode half of `mapping_create` for the views: whether mapping `new` (not yet in
/// `mappings`) keeps every page within [`MAX_VIEWS`] views, and how each count changes if
/// so. Changes nothing. Bounded: at most [`MAX_VIEWS`] routes upstream are followed (more
/// would also mean more than that many new views somewhere), each a scan of the tables, and
/// the memory used is two lists of at most that many entries.
pub fn plan_views(
    mappings: &Slab<Mapping>,
    regions: &Slab<Region>,
    new: &Mapping,
) -> Result<ViewsPlan, ViewsRefused> {
    let len = regions.get(new.region).map_or(0, |r| r.size);
    let w = weight(regions, new.target, new.base, len);
    let max = u64::from(MAX_VIEWS);
    if w > max {
        return Err(ViewsRefused::TooMany);
    }
    let mut grow: BTreeMap<Id, u64> = BTreeMap::new();
    // Every route upstream from the mapped region gives each region on it `w` more views
    // (a region reached by two routes gets both).
    let mut work = alloc::vec![(new.region, w)];
    let mut routes = 1u32;
    while let Some((rid, w)) = work.pop() {
        let Some(r) = regions.get(rid) else {
            continue;
        };
        // A region upstream of the mapped one (or it) lying in the mapped range would count
        // its own views.
        if r.owner == new.target && r.overlaps(new.base, len) {
            return Err(ViewsRefused::Cycle);
        }
        let g = grow.entry(rid).or_insert(0);
        *g += w;
        if u64::from(r.views) + *g > max {
            return Err(ViewsRefused::TooMany);
        }
        for up in upstream(mappings, regions, r, None) {
            routes += 1;
            if routes > MAX_VIEWS {
                return Err(ViewsRefused::TooMany);
            }
            work.push((up, w));
        }
    }
    // The invariant, where counts grow: the regions of the owner overlapping a growing
    // region (itself included) hold at most MAX_VIEWS views between them.
    for (&rid, _) in grow.iter() {
        let Some(r) = regions.get(rid) else {
            continue;
        };
        let sum: u64 = regions
            .iter()
            .filter(|(_, o)| o.owner == r.owner && o.overlaps(r.base, r.size))
            .map(|(oid, o)| u64::from(o.views) + grow.get(&oid).copied().unwrap_or(0))
            .sum();
        if sum > max {
            return Err(ViewsRefused::TooMany);
        }
    }
    Ok(ViewsPlan { grow })
}

/// The invoke half: records a checked plan (the mapping it was made for is now in the
/// table). Cannot fail.
pub fn apply_views(regions: &mut Slab<Region>, plan: ViewsPlan) {
    for (rid, g) in plan.grow {
        if let Some(r) = regions.get_mut(rid) {
            // At most MAX_VIEWS (checked by plan_views).
            r.views = u32::try_from(u64::from(r.views) + g).unwrap_or(u32::MAX);
        }
    }
}

/// Mapping `mid` is about to be removed: its weight leaves its region and every region
/// upstream of it, route by route. Cannot fail. The routes are those [`plan_views`]
/// followed for this mapping and for the mappings that later grew its weight; each one
/// takes at least one view off a region holding at most [`MAX_VIEWS`], so the walk ends.
/// (Were it ever to stop early, counts would only stay too high: a later mapping could be
/// refused, but no walk could exceed the bound.)
pub fn forget_views(mappings: &Slab<Mapping>, regions: &mut Slab<Region>, mid: Id) {
    let Some(m) = mappings.get(mid) else {
        return;
    };
    let Some(len) = regions.get(m.region).map(|r| r.size) else {
        return;
    };
    let w = weight(regions, m.target, m.base, len);
    let mut work = alloc::vec![(m.region, w)];
    while let Some((rid, w)) = work.pop() {
        let Some(r) = regions.get(rid) else {
            continue;
        };
        let ups: Vec<Id> = upstream(mappings, regions, r, Some(mid)).collect();
        let Some(r) = regions.get_mut(rid) else {
            continue;
        };
        debug_assert!(u64::from(r.views) >= w, "views under-counted");
        r.views = u32::try_from(u64::from(r.views).saturating_sub(w)).unwrap_or(0);
        work.extend(ups.into_iter().map(|up| (up, w)));
    }
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
                spaces: Slab::new(64),
                regions: Slab::new(4096),
                mappings: Slab::new(4096),
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
                    views: 0,
                })
                .unwrap()
        }
        /// A mapping put in the table as it is (the walks' tests; no accounting).
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
        /// A mapping made as `mapping_create` makes it: planned, then recorded.
        fn map_checked(&mut self, target: Id, base: u64, region: Id) -> Result<Id, ViewsRefused> {
            let m = Mapping {
                target,
                base,
                region,
                writable: true,
                executable: false,
            };
            let plan = plan_views(&self.mappings, &self.regions, &m)?;
            let id = self.mappings.insert(m).unwrap();
            apply_views(&mut self.regions, plan);
            Ok(id)
        }
        /// A mapping removed as the kernel removes one.
        fn unmap(&mut self, mid: Id) {
            forget_views(&self.mappings, &mut self.regions, mid);
            self.mappings.remove(mid).unwrap();
        }
        /// Every region's count recomputed from the definition (the graph is acyclic).
        fn recount(&self) -> BTreeMap<Id, u64> {
            fn count(w: &World, rid: Id, memo: &mut BTreeMap<Id, u64>) -> u64 {
                if let Some(&c) = memo.get(&rid) {
                    return c;
                }
                let r = w.regions.get(rid).unwrap();
                let mut total = 0;
                for (_, m) in w.mappings.iter().filter(|(_, m)| m.region == rid) {
                    total += 1;
                    let below: Vec<Id> = w
                        .regions
                        .iter()
                        .filter(|(_, o)| o.owner == m.target && o.overlaps(m.base, r.size))
                        .map(|(id, _)| id)
                        .collect();
                    for o in below {
                        total += count(w, o, memo);
                    }
                }
                memo.insert(rid, total);
                total
            }
            let mut memo = BTreeMap::new();
            for (rid, _) in self.regions.iter() {
                count(self, rid, &mut memo);
            }
            memo
        }
        /// The counts are exact, every page's views are within their bound and MAX_VIEWS.
        fn check(&self, pages: &[(Id, u64)]) {
            let exact = self.recount();
            for (rid, r) in self.regions.iter() {
                assert_eq!(u64::from(r.views), exact[&rid], "count of {rid:?}");
            }
            for &(space, va) in pages {
                let bound: u64 = self
                    .regions
                    .iter()
                    .filter(|(_, r)| r.owner == space && r.contains(va))
                    .map(|(_, r)| u64::from(r.views))
                    .sum();
                let n = views(&self.mappings, &self.regions, space, va).len() as u64;
                assert!(n <= bound, "{n} views of {space:?} {va:#x}, bound {bound}");
                assert!(bound <= u64::from(MAX_VIEWS));
            }
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

    /// Finding F1: a region mapped twice into a child, which maps its view twice into its
    /// child, and so on: 2^depth views of one page. The count is exact here (every mapping
    /// covers the whole region), the mapping that would pass MAX_VIEWS is refused with nothing
    /// changed, and every walk stays within the bound.
    #[test]
    fn a_doubling_fan_out_is_refused_at_the_bound() {
        let mut w = World::new();
        let top = w.space();
        let first = w.region(top, P, P);
        let (mut region, mut size, mut refused) = (first, P, None);
        let mut spaces = alloc::vec![top];
        for depth in 1..=20u32 {
            let child = w.space();
            let a = w.map_checked(child, 0x1000 * P, region);
            let b = w.map_checked(child, 0x1000 * P + size, region);
            if let Err(e) = a.and(b) {
                let before = w.regions.get(first).unwrap().views;
                refused = Some((depth, e, before));
                break;
            }
            // Views of the top page: 2 + 4 + ... + 2^depth.
            assert_eq!(
                views(&w.mappings, &w.regions, top, P).len() as u64,
                (1u64 << (depth + 1)) - 2
            );
            spaces.push(child);
            size *= 2;
            region = w.region(child, 0x1000 * P, size);
        }
        let (depth, e, views_then) = refused.expect("the fan-out was never refused");
        assert_eq!(e, ViewsRefused::TooMany);
        // 2^(d+1) - 2 <= 1024 up to d = 9; the tenth level's second mapping would make 2046.
        assert_eq!(depth, 10);
        assert!(views_then <= MAX_VIEWS);
        let pages: Vec<(Id, u64)> = spaces.iter().map(|&s| (s, 0x1000 * P)).collect();
        w.check(&[(top, P)]);
        w.check(&pages);
        // Tearing it down gives every count back.
        for mid in w.mappings.ids() {
            w.unmap(mid);
            w.check(&[(top, P)]);
        }
        assert!(w.regions.iter().all(|(_, r)| r.views == 0));
    }

    #[test]
    fn a_region_mapped_into_memory_it_provides_is_refused() {
        let mut w = World::new();
        let (a, b) = (w.space(), w.space());
        let ra = w.region(a, P, P);
        assert_eq!(w.map_checked(a, P, ra), Err(ViewsRefused::Cycle));
        w.map_checked(b, P, ra).unwrap();
        // b exports its view of a's page and a free page after it; a sees both.
        let rb = w.region(b, P, 2 * P);
        w.map_checked(a, 0x10 * P, rb).unwrap();
        // A second address of a's own page in a, with nothing there to pass it on: fine.
        w.map_checked(a, 0x20 * P, ra).unwrap();
        // a exports what it sees at 0x11 (b's page 2) into b at page 2: b's page would be
        // its own view.
        let ra2 = w.region(a, 0x11 * P, P);
        assert_eq!(w.map_checked(b, 2 * P, ra2), Err(ViewsRefused::Cycle));
        // Elsewhere in b it is only one more view.
        w.map_checked(b, 0x30 * P, ra2).unwrap();
        w.check(&[(a, P), (b, P), (a, 0x10 * P), (a, 0x11 * P), (b, 2 * P)]);
    }

    #[test]
    fn many_overlapping_regions_of_one_page_share_the_bound() {
        // One page in many regions of its space, each mapped into a child: the views of
        // the page are the sum, and that sum is what is bounded.
        let mut w = World::new();
        let (a, b) = (w.space(), w.space());
        let mut made = 0u64;
        for i in 0..200u64 {
            let r = w.region(a, P, P);
            for j in 0..8u64 {
                match w.map_checked(b, (1 + i * 8 + j) * P, r) {
                    Ok(_) => made += 1,
                    Err(e) => assert_eq!(e, ViewsRefused::TooMany),
                }
            }
        }
        assert_eq!(made, u64::from(MAX_VIEWS));
        assert_eq!(views(&w.mappings, &w.regions, a, P).len() as u64, made);
        w.check(&[(a, P)]);
    }

    /// Random graphs of regions and checked mappings, with removals: the counts stay exact
    /// and no page ever has more views than MAX_VIEWS, whatever the shape.
    #[test]
    fn counts_stay_exact_under_random_maps_and_unmaps() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut made, mut cycles, mut too_many, mut deepest) = (0u32, 0u32, 0u32, 0u32);
        for _round in 0..12 {
            let mut w = World::new();
            let spaces: Vec<Id> = (0..6).map(|_| w.space()).collect();
            let mut pages = Vec::new();
            for _ in 0..3000 {
                let s = spaces[(next() % 6) as usize];
                match next() % 16 {
                    0 if w.regions.len() < 300 => {
                        let base = (next() % 64) * P;
                        let size = (1 + next() % 4) * P;
                        w.region(s, base, size);
                        pages.push((s, base));
                    }
                    2 if !w.mappings.is_empty() => {
                        let ids = w.mappings.ids();
                        w.unmap(ids[(next() as usize) % ids.len()]);
                    }
                    _ if !w.regions.is_empty() => {
                        let ids = w.regions.ids();
                        // Often one of the newest regions: chains grow.
                        let pick = if next() % 2 == 0 {
                            ids.len() - 1 - (next() as usize) % ids.len().min(4)
                        } else {
                            (next() as usize) % ids.len()
                        };
                        let r = ids[pick];
                        let size = w.regions.get(r).unwrap().size;
                        let base = (next() % 256) * P;
                        if !overlaps(&w.mappings, &w.regions, s, base, base + size)
                            && w.mappings.len() < 200
                        {
                            match w.map_checked(s, base, r) {
                                Ok(_) => {
                                    made += 1;
                                    // Often passed on, as a nester does, so chains and
                                    // fan-outs form.
                                    if next() % 2 == 0 && w.regions.len() < 300 {
                                        // Wider than the mapping: it takes in neighbours.
                                        let from = base.saturating_sub(8 * P);
                                        w.region(s, from, size + 16 * P);
                                        pages.push((s, base));
                                    }
                                }
                                Err(ViewsRefused::Cycle) => cycles += 1,
                                Err(ViewsRefused::TooMany) => too_many += 1,
                            }
                        }
                    }
                    _ => {}
                }
            }
            w.check(&pages);
            deepest = deepest.max(w.regions.iter().map(|(_, r)| r.views).max().unwrap_or(0));
            for mid in w.mappings.ids() {
                w.unmap(mid);
            }
            assert!(w.regions.iter().all(|(_, r)| r.views == 0));
        }
        // The runs reach every outcome (shapes, not only a few flat mappings).
        assert!(
            made > 1000 && cycles > 10 && too_many > 0,
            "{made} {cycles} {too_many} {deepest}"
        );
        assert!(deepest > 200, "{deepest}");
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
