//! Ports and port sets: the data of the IPC objects and the queues of a port set, without
//! the threads themselves (the kernel moves messages and blocks and wakes the threads these
//! queues name).

use crate::slab::Id;
use alloc::collections::VecDeque;

/// Badges travel in RAX, where values in [-4095, -1] mean errors: a badge is at most this.
pub const MAX_BADGE: u64 = i64::MAX as u64;

/// A port: an entry point into a port set, with the badge its receivers see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub set: Id,
    pub badge: u64,
}

/// A port set's two queues: servers blocked in `ipc_wait`, and clients whose call (or
/// fault message) found no waiting server. A thread waits in at most one of them.
#[derive(Debug)]
pub struct PortSet<T> {
    waiting: VecDeque<T>,
    callers: VecDeque<T>,
}

impl<T> Default for PortSet<T> {
    fn default() -> Self {
        PortSet {
            waiting: VecDeque::new(),
            callers: VecDeque::new(),
        }
    }
}

impl<T: Copy + Eq> PortSet<T> {
    /// A server starts waiting (at the back of the line).
    pub fn push_server(&mut self, t: T) {
        self.waiting.push_back(t);
    }

    /// A server taken off the queue goes back to its head (its message could not be
    /// delivered, and nothing else changed).
    pub fn return_server(&mut self, t: T) {
        self.waiting.push_front(t);
    }

    /// The first waiting server for which `live` holds; the dead ones before it are
    /// dropped.
    pub fn pop_server(&mut self, live: impl Fn(T) -> bool) -> Option<T> {
        pop_live(&mut self.waiting, live)
    }

    pub fn push_caller(&mut self, t: T) {
        self.callers.push_back(t);
    }

    /// A caller taken off the queue stays first in line (the receiver has to fetch a page
    /// of its buffer first).
    pub fn return_caller(&mut self, t: T) {
        self.callers.push_front(t);
    }

    pub fn pop_caller(&mut self, live: impl Fn(T) -> bool) -> Option<T> {
        pop_live(&mut self.callers, live)
    }

    /// Takes `t` out of both queues (it stopped or ended).
    pub fn forget(&mut self, t: T) {
        self.waiting.retain(|&w| w != t);
        self.callers.retain(|&c| c != t);
    }

    /// Everyone in either queue (to wake when the set is destroyed).
    pub fn members(&self) -> impl Iterator<Item = T> + '_ {
        self.waiting.iter().chain(self.callers.iter()).copied()
    }

    pub fn servers(&self) -> impl Iterator<Item = T> + '_ {
        self.waiting.iter().copied()
    }

    pub fn callers(&self) -> impl Iterator<Item = T> + '_ {
        self.callers.iter().copied()
    }
}

fn pop_live<T: Copy>(q: &mut VecDeque<T>, live: impl Fn(T) -> bool) -> Option<T> {
    while let Some(t) = q.pop_front() {
        if live(t) {
            return Some(t);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn servers_and_callers_are_first_in_first_out() {
        let mut s = PortSet::default();
        s.push_server(1);
        s.push_server(2);
        s.push_caller(10);
        s.push_caller(11);
        assert_eq!(s.pop_server(|_| true), Some(1));
        assert_eq!(s.pop_caller(|_| true), Some(10));
        assert_eq!(s.pop_server(|_| true), Some(2));
        assert_eq!(s.pop_caller(|_| true), Some(11));
        assert_eq!(s.pop_server(|_| true), None);
        assert_eq!(s.pop_caller(|_| true), None);
    }

    #[test]
    fn dead_threads_are_skipped_and_dropped() {
        let mut s = PortSet::default();
        for t in 1..=4 {
            s.push_server(t);
        }
        assert_eq!(s.pop_server(|t| t == 3), Some(3));
        // 1 and 2 were dead and are gone; 4 is next.
        assert_eq!(s.servers().collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn a_returned_thread_is_first_again() {
        let mut s = PortSet::default();
        s.push_server(1);
        s.push_server(2);
        let w = s.pop_server(|_| true).unwrap();
        s.return_server(w);
        assert_eq!(s.pop_server(|_| true), Some(1));
        s.push_caller(7);
        s.push_caller(8);
        let c = s.pop_caller(|_| true).unwrap();
        s.return_caller(c);
        assert_eq!(s.callers().collect::<Vec<_>>(), [7, 8]);
    }

    #[test]
    fn forget_removes_a_thread_from_both_queues() {
        let mut s = PortSet::default();
        s.push_server(1);
        s.push_caller(1);
        s.push_caller(2);
        s.forget(1);
        assert_eq!(s.members().collect::<Vec<_>>(), [2]);
    }
}
