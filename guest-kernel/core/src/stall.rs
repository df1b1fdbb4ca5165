//! What a thread pays for running user code with a non-canonical stack pointer (hole 7 of
//! issue 13, and its repaired-keeper variant H7-1).
//!
//! On kvm_pvm the host emulates such user code and holds the guest's interrupts off for as
//! long as one emulated instruction takes; the kernel cannot stop the stretch, only see it
//! end at the thread's next kernel entry. The thread then takes a stack fault, and a keeper
//! may repair its RSP and resume it, after which it can load the bad RSP again: one more
//! stretch per round trip. So the stretch is charged to the thread: it may not return to user
//! mode before [`STALL_CHARGE`] times the length of the stretch has passed. Whatever it does,
//! such a thread holds the machine at most 1 / (1 + STALL_CHARGE) of the time after its
//! first stretch.
//!
//! A stretch is measured from the thread's last return to user mode: that return is
//! time-stamped once any thread has taken such a fault (before that, no return reads the
//! clock, so the common path costs nothing); a stretch that started before stamping was on
//! is taken to have lasted [`UNMEASURED_STRETCH_NS`], about the longest one seen (a
//! `rep stosb` over 16 MiB: 80-100 ms).

/// How many times its length a stretch of emulated user code keeps the thread out of user
/// mode afterwards.
pub const STALL_CHARGE: u64 = 16;

/// What a stretch that was not measured is charged as.
pub const UNMEASURED_STRETCH_NS: u64 = 100_000_000;

/// When the thread's current stretch in user mode began, as far as its account knows.
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

/// One thread's account: when it last returned to user mode, and until when it may not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallAccount {
    since: Since,
    /// ns since boot before which it does not return to user mode; 0: free to.
    held_until: u64,
}

impl StallAccount {
    /// The thread returns to user mode at `now` (called only once stamping is on).
    pub fn resumed(&mut self, now: u64) {
        self.since = Since::At(now);
    }

    /// The thread came back from user mode at `now` after running with a non-canonical
    /// stack pointer: the stretch since its last return is charged. A later charge never
    /// shortens an earlier hold.
    pub fn charge_stretch(&mut self, now: u64) {
        let stretch = match self.since {
            Since::Unknown => UNMEASURED_STRETCH_NS,
            Since::At(t) => now.saturating_sub(t),
            // The same stretch is not charged twice.
            Since::Charged => return,
        };
        self.since = Since::Charged;
        let until = now.saturating_add(stretch.saturating_mul(STALL_CHARGE));
        self.held_until = self.held_until.max(until);
    }

    /// Whether a hold is recorded at all (no clock read needed to say no).
    pub fn may_be_held(&self) -> bool {
        self.held_until != 0
    }

    /// The deadline the thread must wait for, if it is still held at `now`; a hold that has
    /// passed is cleared.
    pub fn held_at(&mut self, now: u64) -> Option<u64> {
        if now < self.held_until {
            return Some(self.held_until);
        }
        self.held_until = 0;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn an_unmeasured_stretch_is_charged_as_a_long_one() {
        let mut a = StallAccount::default();
        assert!(!a.may_be_held());
        a.charge_stretch(5 * MS);
        let until = 5 * MS + UNMEASURED_STRETCH_NS * STALL_CHARGE;
        assert_eq!(a.held_at(5 * MS), Some(until));
        assert_eq!(a.held_at(until), None);
    }

    #[test]
    fn a_stretch_holds_the_thread_for_its_charge() {
        let mut a = StallAccount::default();
        a.resumed(100 * MS);
        a.charge_stretch(180 * MS);
        let until = 180 * MS + 80 * MS * STALL_CHARGE;
        assert_eq!(a.held_at(181 * MS), Some(until));
        assert_eq!(a.held_at(until - 1), Some(until));
        assert_eq!(a.held_at(until), None);
        assert!(!a.may_be_held());
    }

    #[test]
    fn the_share_of_a_repeating_offender_is_bounded() {
        // Each round: resumed as soon as its hold ends, runs an 80-ms stretch, is charged.
        let (mut a, mut now, mut running) = (StallAccount::default(), MS, 0u64);
        for _ in 0..100 {
            a.resumed(now);
            now += 80 * MS;
            running += 80 * MS;
            a.charge_stretch(now);
            now = a.held_at(now).unwrap();
            assert_eq!(a.held_at(now), None);
        }
        assert!(running * (1 + STALL_CHARGE) <= now, "{running} of {now}");
    }

    #[test]
    fn a_second_charge_of_the_same_stretch_changes_nothing_and_holds_never_shrink() {
        let mut a = StallAccount::default();
        a.resumed(10 * MS);
        a.charge_stretch(20 * MS);
        let until = a.held_at(20 * MS).unwrap();
        a.charge_stretch(30 * MS);
        assert_eq!(a.held_at(30 * MS), Some(until));
        a.resumed(40 * MS);
        a.charge_stretch(40 * MS + 1);
        assert_eq!(a.held_at(41 * MS), Some(until));
    }

    #[test]
    fn huge_times_saturate() {
        let mut a = StallAccount::default();
        a.resumed(1);
        a.charge_stretch(u64::MAX / 2);
        assert_eq!(a.held_at(u64::MAX - 1), Some(u64::MAX));
    }
}
