//! The state machines of the Mutex and Condition objects, and how a condition wait rewrites
//! its own kernel call as it progresses, without the scheduler: the kernel blocks and wakes
//! the threads these decide about.
//!
//! Every wait is restartable (the atomic API): a waiting thread's registers hold the call to
//! re-execute. `cond_wait(cond, mutex)` releases the mutex and becomes
//! `cond_rewait(cond, mutex)`; once signalled it becomes `mutex_lock(mutex)`. So a thread
//! stopped, its state read and set again at any point, carries on correctly.

use alloc::collections::VecDeque;
use fluke_abi::syscall::{Call, Error, ThreadRegs};

/// What a `mutex_lock` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// The caller holds the mutex now.
    Acquired,
    /// Another thread holds it: the caller is queued and must block (re-executing its lock
    /// when woken).
    Wait,
}

#[derive(Debug)]
pub struct Mutex<T> {
    holder: Option<T>,
    waiters: VecDeque<T>,
}

impl<T: Copy + Eq> Default for Mutex<T> {
    fn default() -> Self {
        Mutex {
            holder: None,
            waiters: VecDeque::new(),
        }
    }
}

impl<T: Copy + Eq> Mutex<T> {
    pub fn holder(&self) -> Option<T> {
        self.holder
    }

    /// The holder as a parent sets it (`obj_set_state`); the waiters stay queued (the
    /// caller wakes them if the mutex is now free).
    pub fn set_holder(&mut self, holder: Option<T>) {
        self.holder = holder;
    }

    /// `t` locks: it gets the mutex if free (and stops being a waiter: a woken waiter's
    /// entry may still be queued after `set_holder(None)` woke them all); locking one it
    /// holds is an error (not recursive) and changes nothing.
    pub fn lock(&mut self, t: T) -> Result<Lock, Error> {
        match self.holder {
            None => {
                self.holder = Some(t);
                self.waiters.retain(|&w| w != t);
                Ok(Lock::Acquired)
            }
            Some(h) if h == t => Err(Error::InvalidArgument),
            Some(_) => {
                if !self.waiters.contains(&t) {
                    self.waiters.push_back(t);
                }
                Ok(Lock::Wait)
            }
        }
    }

    /// `t` unlocks: only the holder may, and nothing changes otherwise. Returns the first
    /// waiter, to be woken: it re-executes its lock and gets the mutex unless another thread
    /// is faster.
    pub fn unlock(&mut self, t: T) -> Result<Option<T>, Error> {
        if self.holder != Some(t) {
            return Err(Error::InvalidArgument);
        }
        self.holder = None;
        Ok(self.waiters.pop_front())
    }

    /// Takes `t` out of the waiters (it stopped or ended).
    pub fn forget(&mut self, t: T) {
        self.waiters.retain(|&w| w != t);
    }

    /// Everyone waiting, to be woken when the mutex is destroyed (their lock then fails).
    pub fn waiters(&self) -> impl Iterator<Item = T> + '_ {
        self.waiters.iter().copied()
    }
}

#[derive(Debug)]
pub struct Condition<T> {
    waiters: VecDeque<T>,
}

impl<T: Copy + Eq> Default for Condition<T> {
    fn default() -> Self {
        Condition {
            waiters: VecDeque::new(),
        }
    }
}

impl<T: Copy + Eq> Condition<T> {
    /// `t` waits (its mutex already released).
    pub fn wait(&mut self, t: T) {
        if !self.waiters.contains(&t) {
            self.waiters.push_back(t);
        }
    }

    /// The next waiter a signal wakes.
    pub fn take_one(&mut self) -> Option<T> {
        self.waiters.pop_front()
    }

    pub fn forget(&mut self, t: T) {
        self.waiters.retain(|&w| w != t);
    }

    pub fn waiters(&self) -> impl Iterator<Item = T> + '_ {
        self.waiters.iter().copied()
    }
}

/// `cond_wait` has released the mutex: the call becomes `cond_rewait` with the same
/// arguments, so a restart does not release it again.
pub fn rewrite_as_rewait(regs: &mut ThreadRegs) {
    regs.rax = Call::CondRewait as u64;
}

/// A waiter was signalled: its call becomes `mutex_lock(mutex)` (the wait's second argument
/// becomes the first).
pub fn rewrite_as_relock(regs: &mut ThreadRegs) {
    regs.rax = Call::MutexLock as u64;
    regs.rdi = regs.rsi;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutex_is_held_by_one_and_handed_to_its_first_waiter() {
        let mut m = Mutex::default();
        assert_eq!(m.lock(1), Ok(Lock::Acquired));
        assert_eq!(m.lock(1), Err(Error::InvalidArgument));
        assert_eq!(m.lock(2), Ok(Lock::Wait));
        assert_eq!(m.lock(3), Ok(Lock::Wait));
        // A restarted lock does not queue twice.
        assert_eq!(m.lock(2), Ok(Lock::Wait));
        assert_eq!(m.unlock(2), Err(Error::InvalidArgument));
        assert_eq!(m.holder(), Some(1));
        assert_eq!(m.unlock(1), Ok(Some(2)));
        assert_eq!(m.holder(), None);
        // The woken waiter re-executes its lock.
        assert_eq!(m.lock(2), Ok(Lock::Acquired));
        m.forget(3);
        assert_eq!(m.unlock(2), Ok(None));
    }

    #[test]
    fn a_waiter_that_wins_the_lock_after_all_were_woken_is_no_longer_queued() {
        // A parent frees the mutex through obj_set_state, which wakes every waiter but
        // leaves them queued; the first to re-lock gets it, and its unlock must hand the
        // mutex to the other waiter, not to itself.
        let mut m = Mutex::default();
        assert_eq!(m.lock(1), Ok(Lock::Acquired));
        assert_eq!((m.lock(2), m.lock(3)), (Ok(Lock::Wait), Ok(Lock::Wait)));
        m.set_holder(None);
        assert_eq!(m.lock(2), Ok(Lock::Acquired));
        assert_eq!(m.unlock(2), Ok(Some(3)));
    }

    #[test]
    fn a_signal_wakes_the_first_waiter_and_a_forgotten_one_is_never_woken() {
        let mut c = Condition::default();
        c.wait(1);
        c.wait(2);
        c.wait(1);
        c.wait(3);
        c.forget(2);
        assert_eq!(c.waiters().collect::<alloc::vec::Vec<_>>(), [1, 3]);
        assert_eq!(
            (c.take_one(), c.take_one(), c.take_one()),
            (Some(1), Some(3), None)
        );
    }

    #[test]
    fn a_condition_wait_rewrites_itself_into_a_restartable_call_at_each_step() {
        let mut r = ThreadRegs {
            rax: Call::CondWait as u64,
            rdi: 7, // the condition
            rsi: 9, // the mutex
            ..ThreadRegs::default()
        };
        rewrite_as_rewait(&mut r);
        assert_eq!((r.rax, r.rdi, r.rsi), (Call::CondRewait as u64, 7, 9));
        rewrite_as_relock(&mut r);
        assert_eq!((r.rax, r.rdi), (Call::MutexLock as u64, 9));
    }
}
