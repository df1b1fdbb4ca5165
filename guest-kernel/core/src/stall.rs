//! What a program pays for running user code with a non-canonical stack pointer (hole 7 of
//! issue 13, and its repaired-keeper variant H7-1).
//!
//! On kvm_pvm the host emulates such user code and holds the guest's interrupts off for as
//! long as one emulated instruction takes; the kernel cannot stop the stretch, only see it
//! end at the thread's next kernel entry. The thread then takes a stack fault, and a keeper
//! may repair its RSP and resume it, after which it can load the bad RSP again: one more
//! stretch per round trip. So the stretch is charged: to the *process* the thread runs in,
//! none of whose threads returns to user mode before [`STALL_CHARGE`] times the stretch has
//! passed. Charged per process, not per thread, a pool of threads taking turns, or a thread
//! destroyed and created again, pays as one; a process that ends with a hold hands it to
//! its parent (which also becomes an offender), so a parent that starts a new offender
//! each time pays too. After its first stretch, a subtree holds the machine at most
//! 1 / (1 + STALL_CHARGE) of the time, whatever it does.
//!
//! A stretch is measured from the thread's last return to user mode ([`StretchClock`]).
//! Returns are time-stamped only in processes that have offended (and the ones they create
//! after), so no other return reads the clock; an unmeasured stretch counts
//! [`UNMEASURED_STRETCH_NS`], about the longest one seen (a `rep stosb` over 16 MiB:
//! 80-100 ms). The measure counts all the thread's user time since that return, emulated or
//! not: an offender that computed long before it loaded the bad RSP pays for that too.

/// How many times its length a stretch of emulated user code keeps the process out of user
/// mode afterwards.
pub const STALL_CHARGE: u64 = 16;

/// What a stretch that was not measured is charged as.
pub const UNMEASURED_STRETCH_NS: u64 = 100_000_000;

/// When a thread's current stretch in user mode began, as far as it is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Since {
    /// Its returns were not time-stamped.
    #[default]
    Unknown,
    /// It returned to user mode at this time (ns since boot).
    At(u64),
    /// Its stretch was charged, and it has not returned since.
    Charged,
}

/// One thread's clock of its current stretch in user mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StretchClock {
    since: Since,
}

impl StretchClock {
    /// The thread returns to user mode at `now` (only where returns are stamped).
    pub fn resumed(&mut self, now: u64) {
        self.since = Since::At(now);
    }

    /// The stretch that ends at `now`, to be charged; `None` if it was charged already
    /// (the same stretch is never charged twice).
    pub fn take_stretch(&mut self, now: u64) -> Option<u64> {
        let stretch = match self.since {
            Since::Unknown => UNMEASURED_STRETCH_NS,
            Since::At(t) => now.saturating_sub(t),
            Since::Charged => return None,
        };
        self.since = Since::Charged;
        Some(stretch)
    }
}

/// A process's debt: until when none of its threads returns to user mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// ns since boot; 0: none.
    until: u64,
}

impl Hold {
    /// A stretch of `stretch` ns ended at `now`. A later charge never shortens a hold.
    pub fn charge(&mut self, now: u64, stretch: u64) {
        let until = now.saturating_add(stretch.saturating_mul(STALL_CHARGE));
        self.until = self.until.max(until);
    }

    /// Takes on the rest of `other` (a child's that ended owing).
    pub fn inherit(&mut self, other: Hold) {
        self.until = self.until.max(other.until);
    }

    /// The deadline the process must wait for, if it is still held at `now`; a hold that
    /// has passed is cleared.
    pub fn held_at(&mut self, now: u64) -> Option<u64> {
        if now < self.until {
            return Some(self.until);
        }
        self.until = 0;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const MS: u64 = 1_000_000;

    #[test]
    fn an_unmeasured_stretch_is_charged_as_a_long_one() {
        let (mut clock, mut hold) = (StretchClock::default(), Hold::default());
        assert_eq!(hold.held_at(5 * MS), None);
        hold.charge(5 * MS, clock.take_stretch(5 * MS).unwrap());
        let until = 5 * MS + UNMEASURED_STRETCH_NS * STALL_CHARGE;
        assert_eq!(hold.held_at(5 * MS), Some(until));
        assert_eq!(hold.held_at(until), None);
    }

    #[test]
    fn a_stretch_holds_for_its_charge_and_is_charged_once() {
        let (mut clock, mut hold) = (StretchClock::default(), Hold::default());
        clock.resumed(100 * MS);
        hold.charge(180 * MS, clock.take_stretch(180 * MS).unwrap());
        assert_eq!(clock.take_stretch(190 * MS), None);
        let until = 180 * MS + 80 * MS * STALL_CHARGE;
        assert_eq!(hold.held_at(181 * MS), Some(until));
        // A shorter charge later does not shorten it.
        clock.resumed(200 * MS);
        hold.charge(201 * MS, clock.take_stretch(201 * MS).unwrap());
        assert_eq!(hold.held_at(until - 1), Some(until));
        assert_eq!(hold.held_at(until), None);
    }

    /// The review's pool: many threads of one process take turns running stretches. Each
    /// runs only while the process is not held; the process as a whole stays within its
    /// share, however many threads it has.
    #[test]
    fn a_pool_of_threads_shares_one_bound() {
        for threads in [1usize, 4, 32] {
            let mut clocks: Vec<StretchClock> =
                (0..threads).map(|_| StretchClock::default()).collect();
            let mut hold = Hold::default();
            let (mut now, mut running) = (MS, 0u64);
            // Every thread's first stretch is measured (the process is an offender already).
            for c in clocks.iter_mut() {
                c.resumed(0);
            }
            for round in 0..200 {
                if let Some(until) = hold.held_at(now) {
                    now = until;
                }
                let c = &mut clocks[round % threads];
                c.resumed(now);
                now += 80 * MS;
                running += 80 * MS;
                hold.charge(now, c.take_stretch(now).unwrap());
            }
            assert!(
                running * (1 + STALL_CHARGE) <= now + 80 * MS * (1 + STALL_CHARGE),
                "{threads}: {running} of {now}"
            );
        }
    }

    #[test]
    fn a_parent_takes_on_a_childs_hold() {
        let (mut parent, mut child) = (Hold::default(), Hold::default());
        child.charge(10 * MS, 50 * MS);
        parent.charge(10 * MS, MS);
        parent.inherit(child);
        assert_eq!(
            parent.held_at(11 * MS),
            Some(10 * MS + 50 * MS * STALL_CHARGE)
        );
    }

    #[test]
    fn huge_times_saturate() {
        let (mut clock, mut hold) = (StretchClock::default(), Hold::default());
        clock.resumed(1);
        hold.charge(u64::MAX / 2, clock.take_stretch(u64::MAX / 2).unwrap());
        assert_eq!(hold.held_at(u64::MAX - 1), Some(u64::MAX));
    }
}
