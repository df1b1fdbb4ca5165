//! Capability tables: each space names kernel objects only through small integers that index
//! its own table (never global ids or kernel pointers), so names mean the same after a space
//! is saved and rebuilt, or moved ("reference relativity").

use alloc::vec::Vec;

/// What a capability allows, beyond naming the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rights(pub u32);

impl Rights {
    /// Use the object's operations (send on a port, wait on a set, lock a mutex...).
    pub const USE: Rights = Rights(1 << 0);
    /// Read the object's state (`get_state`).
    pub const READ: Rights = Rights(1 << 1);
    /// Change or destroy the object (`set_state`, `destroy`, thread stop/resume).
    pub const WRITE: Rights = Rights(1 << 2);
    /// Pass the capability on (copy into another table, send it in a message).
    pub const GRANT: Rights = Rights(1 << 3);
    pub const ALL: Rights = Rights(0b1111);
    pub const NONE: Rights = Rights(0);

    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn intersect(self, other: Rights) -> Rights {
        Rights(self.0 & other.0)
    }

    pub const fn from_bits(bits: u64) -> Option<Rights> {
        if bits & !(Rights::ALL.0 as u64) != 0 {
            None
        } else {
            Some(Rights(bits as u32))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapError {
    /// The name is beyond the table or the slot is empty.
    BadName,
    /// The slot holds a capability without the rights the operation needs.
    NoRights,
    /// The slot asked for is already in use.
    SlotBusy,
    /// The table is full.
    Full,
}

impl From<CapError> for fluke_abi::syscall::Error {
    fn from(e: CapError) -> Self {
        use fluke_abi::syscall::Error;
        match e {
            CapError::BadName => Error::BadCap,
            CapError::NoRights => Error::NoRights,
            CapError::SlotBusy => Error::InvalidArgument,
            CapError::Full => Error::Exhausted,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap<O> {
    pub object: O,
    pub rights: Rights,
}

pub struct CapTable<O> {
    slots: Vec<Option<Cap<O>>>,
    limit: usize,
}

impl<O: Copy + PartialEq> CapTable<O> {
    /// A table with room for `limit` capabilities (names `0..limit`).
    pub const fn new(limit: usize) -> Self {
        CapTable {
            slots: Vec::new(),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Stores a capability in the lowest free slot and returns its name.
    pub fn insert(&mut self, cap: Cap<O>) -> Result<u32, CapError> {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.slots.len() < self.limit => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(CapError::Full),
        };
        self.slots[slot] = Some(cap);
        Ok(slot as u32)
    }

    /// Stores a capability under a given name (rebuilding a saved table).
    pub fn insert_at(&mut self, name: u32, cap: Cap<O>) -> Result<(), CapError> {
        let i = name as usize;
        if i >= self.limit {
            return Err(CapError::BadName);
        }
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].is_some() {
            return Err(CapError::SlotBusy);
        }
        self.slots[i] = Some(cap);
        Ok(())
    }

    pub fn get(&self, name: u64) -> Result<Cap<O>, CapError> {
        usize::try_from(name)
            .ok()
            .and_then(|i| self.slots.get(i))
            .copied()
            .flatten()
            .ok_or(CapError::BadName)
    }

    /// The capability named `name` if it carries `needed`.
    pub fn check(&self, name: u64, needed: Rights) -> Result<Cap<O>, CapError> {
        let cap = self.get(name)?;
        if cap.rights.contains(needed) {
            Ok(cap)
        } else {
            Err(CapError::NoRights)
        }
    }

    pub fn remove(&mut self, name: u64) -> Result<Cap<O>, CapError> {
        let i = usize::try_from(name).map_err(|_| CapError::BadName)?;
        self.slots
            .get_mut(i)
            .and_then(Option::take)
            .ok_or(CapError::BadName)
    }

    /// Removes every capability naming `object` (it was destroyed); returns how many.
    pub fn revoke(&mut self, object: O) -> usize {
        let mut n = 0;
        for s in self.slots.iter_mut() {
            if s.is_some_and(|c| c.object == object) {
                *s = None;
                n += 1;
            }
        }
        n
    }

    /// `(name, cap)` for every occupied slot, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Cap<O>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|c| (i as u32, c)))
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many more capabilities `insert` can store.
    pub fn free(&self) -> usize {
        self.limit - self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(o: u32, r: Rights) -> Cap<u32> {
        Cap {
            object: o,
            rights: r,
        }
    }

    #[test]
    fn names_are_lowest_free_slots_and_survive_rebuilding() {
        let mut t = CapTable::new(4);
        assert_eq!(t.insert(cap(10, Rights::ALL)), Ok(0));
        assert_eq!(t.insert(cap(11, Rights::USE)), Ok(1));
        assert_eq!(t.insert(cap(12, Rights::USE)), Ok(2));
        assert_eq!(t.remove(1), Ok(cap(11, Rights::USE)));
        assert_eq!(t.insert(cap(13, Rights::READ)), Ok(1));
        // Rebuild from the exported list: same names, same objects.
        let mut u = CapTable::new(4);
        for (name, c) in t.iter() {
            u.insert_at(name, c).unwrap();
        }
        assert_eq!(
            u.iter().collect::<std::vec::Vec<_>>(),
            t.iter().collect::<std::vec::Vec<_>>()
        );
    }

    #[test]
    fn bad_names_wrong_rights_and_limits() {
        let mut t = CapTable::new(2);
        t.insert(cap(1, Rights::USE)).unwrap();
        assert_eq!(t.check(0, Rights::USE).map(|c| c.object), Ok(1));
        assert_eq!(t.check(0, Rights::WRITE), Err(CapError::NoRights));
        for name in [1, 2, 99, u64::MAX, 1 << 32] {
            assert_eq!(t.get(name), Err(CapError::BadName));
            assert_eq!(t.remove(name), Err(CapError::BadName));
        }
        t.insert(cap(2, Rights::USE)).unwrap();
        assert_eq!(t.insert(cap(3, Rights::USE)), Err(CapError::Full));
        assert_eq!(t.insert_at(0, cap(4, Rights::USE)), Err(CapError::SlotBusy));
        assert_eq!(t.insert_at(2, cap(4, Rights::USE)), Err(CapError::BadName));
        assert_eq!(t.revoke(2), 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rights_algebra() {
        assert!(Rights::ALL.contains(Rights::GRANT));
        assert!(!Rights::USE.contains(Rights::READ));
        assert_eq!(Rights::ALL.intersect(Rights::USE), Rights::USE);
        assert_eq!(Rights::from_bits(0b1000), Some(Rights::GRANT));
        assert_eq!(Rights::from_bits(0b1_0000), None);
    }

    #[test]
    fn free_counts_what_insert_can_still_store() {
        let mut t = CapTable::new(3);
        assert_eq!(t.free(), 3);
        t.insert_at(2, cap(1, Rights::USE)).unwrap();
        assert_eq!(t.free(), 2);
        t.insert(cap(2, Rights::USE)).unwrap();
        t.insert(cap(3, Rights::USE)).unwrap();
        assert_eq!(t.free(), 0);
        assert_eq!(t.insert(cap(4, Rights::USE)), Err(CapError::Full));
        t.remove(0).unwrap();
        assert_eq!(t.free(), 1);
    }
}
