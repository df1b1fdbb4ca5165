//! Memory accounting: every space has a budget of frames. What it allocates is charged to
//! it, and a child's whole budget is lent out of its parent's, so a child can never use
//! more than its parent gave it, and never its parent's or its siblings' share.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    quota: u64,
    used: u64,
    lent: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget;

impl Budget {
    pub const fn new(quota: u64) -> Budget {
        Budget {
            quota,
            used: 0,
            lent: 0,
        }
    }

    /// Frames still free to use or lend.
    pub fn available(&self) -> u64 {
        self.quota - self.used - self.lent
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }

    pub fn charge(&mut self, frames: u64) -> Result<(), OverBudget> {
        if frames > self.available() {
            return Err(OverBudget);
        }
        self.used += frames;
        Ok(())
    }

    pub fn release(&mut self, frames: u64) {
        self.used = self.used.saturating_sub(frames);
    }

    /// Sets aside `frames` for a child's budget.
    pub fn lend(&mut self, frames: u64) -> Result<(), OverBudget> {
        if frames > self.available() {
            return Err(OverBudget);
        }
        self.lent += frames;
        Ok(())
    }

    /// A child's budget comes back when it ends.
    pub fn repay(&mut self, frames: u64) {
        self.lent = self.lent.saturating_sub(frames);
    }
}

/// A child's budget by default: half of what its parent has left, at most this many
/// frames (32 MiB).
pub const CHILD_QUOTA: u64 = 8192;
/// No child is started with less than this (its page tables and a few pages).
pub const MIN_QUOTA: u64 = 16;

/// How much a parent with `available` frames lends a new child, by the `keep` argument of
/// `space_create`: 0, half of what it has left (at most [`CHILD_QUOTA`]);
/// `SPACE_EXACT | n`, exactly `n`; else everything but `keep` frames (a nester handing its
/// one child all it can). `None` if that is less than [`MIN_QUOTA`]; whether the parent
/// can lend it is [`Budget::lend`]'s to say.
pub fn child_quota(available: u64, keep: u64) -> Option<u64> {
    let quota = match keep {
        0 => (available / 2).min(CHILD_QUOTA),
        k if k & fluke_abi::syscall::SPACE_EXACT != 0 => k & !fluke_abi::syscall::SPACE_EXACT,
        keep => available.saturating_sub(keep),
    };
    (quota >= MIN_QUOTA).then_some(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_cannot_use_more_than_it_was_lent_nor_the_parents_share() {
        let mut parent = Budget::new(100);
        parent.charge(10).unwrap();
        parent.lend(60).unwrap();
        let mut child = Budget::new(60);
        assert_eq!(parent.available(), 30);
        child.charge(60).unwrap();
        assert_eq!(child.charge(1), Err(OverBudget));
        // The parent still has exactly its own share.
        parent.charge(30).unwrap();
        assert_eq!(parent.charge(1), Err(OverBudget));
        assert_eq!(parent.lend(1), Err(OverBudget));
        parent.repay(60);
        parent.release(40);
        assert_eq!(parent.available(), 100);
        child.release(100);
        assert_eq!(child.used(), 0);
    }

    #[test]
    fn a_childs_quota_follows_keep() {
        use fluke_abi::syscall::SPACE_EXACT;
        assert_eq!(child_quota(1000, 0), Some(500));
        assert_eq!(child_quota(100_000, 0), Some(CHILD_QUOTA));
        assert_eq!(child_quota(1000, SPACE_EXACT | 64), Some(64));
        assert_eq!(child_quota(1000, 100), Some(900));
        assert_eq!(child_quota(20, 0), None);
        assert_eq!(child_quota(1000, 990), None);
        assert_eq!(child_quota(10, u64::MAX & !SPACE_EXACT), None);
        // Exactly n is asked for even beyond what is available: lend() refuses it.
        assert_eq!(child_quota(10, SPACE_EXACT | 64), Some(64));
    }
}
