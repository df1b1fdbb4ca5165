//! A slab of kernel objects named by generation-checked ids: a stale id (object freed and
//! its slot reused) never reaches the new occupant.

use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub index: u32,
    pub generation: u32,
}

impl Id {
    pub const fn to_u64(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    pub const fn from_u64(v: u64) -> Id {
        Id {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
    limit: usize,
}

impl<T> Slab<T> {
    /// A slab holding at most `limit` objects.
    pub const fn new(limit: usize) -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether an insert would fail.
    pub fn is_full(&self) -> bool {
        self.len >= self.limit
    }

    /// Inserts a value; `None` when the slab is full.
    pub fn insert(&mut self, value: T) -> Option<Id> {
        if self.len >= self.limit {
            return None;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.value = Some(value);
        self.len += 1;
        Some(Id {
            index,
            generation: slot.generation,
        })
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.value.as_ref())
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.value.as_mut())
    }

    pub fn remove(&mut self, id: Id) -> Option<T> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)?;
        let value = slot.value.take()?;
        // A slot whose generation would wrap is retired, never reused: a stale id must not
        // name a new object however many times the slot has been recycled.
        if let Some(g) = slot.generation.checked_add(1) {
            slot.generation = g;
            self.free.push(id.index);
        }
        self.len -= 1;
        Some(value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|v| {
                (
                    Id {
                        index: i as u32,
                        generation: s.generation,
                    },
                    v,
                )
            })
        })
    }

    pub fn ids(&self) -> Vec<Id> {
        self.iter().map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_retired_before_its_generation_wraps() {
        let mut slab = Slab::new(4);
        let first = slab.insert(1).unwrap();
        slab.slots[first.index as usize].generation = u32::MAX;
        let last = Id {
            index: first.index,
            generation: u32::MAX,
        };
        assert_eq!(slab.remove(last), Some(1));
        // The next object goes elsewhere; the old id (and the wrapped one) name nothing.
        let next = slab.insert(2).unwrap();
        assert_ne!(next.index, first.index);
        let wrapped = Id {
            index: first.index,
            generation: 0,
        };
        assert_eq!(slab.get(last), None);
        assert_eq!(slab.get(wrapped), None);
        assert_eq!(slab.get(next), Some(&2));
    }

    #[test]
    fn stale_ids_miss_reused_slots() {
        let mut s = Slab::new(2);
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        assert_eq!(s.insert("c"), None);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        let c = s.insert("c").unwrap();
        assert_eq!(c.index, a.index);
        assert_ne!(c, a);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(c), Some(&"c"));
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 2);
        assert_eq!(Id::from_u64(c.to_u64()), c);
        assert_eq!(
            s.get(Id {
                index: 99,
                generation: 0
            }),
            None
        );
        let ids = s.ids();
        assert_eq!(ids.len(), 2);
    }
}
