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
}
