//! Ports and port sets: the data of the IPC objects and the queues of a port set, without
//! the threads themselves (the kernel moves messages and blocks and wakes the threads these
//! queues name).

use crate::slab::Id;
use crate::user_regs::complete_call;
use alloc::collections::VecDeque;
use fluke_abi::syscall::ipc::{MAX_DATA, NO_CAP};
use fluke_abi::syscall::{Error, ThreadRegs};

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

/// A message as its sender's registers give it: four words (`rsi, rdx, r10, r8`), a
/// capability name (`r9`, [`NO_CAP`] for none) and data (`r12` pointer, `r13` length, at
/// most [`MAX_DATA`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub words: [u64; 4],
    pub cap: u64,
    pub data_ptr: u64,
    pub data_len: usize,
}

impl Outgoing {
    pub fn from_regs(r: &ThreadRegs) -> Result<Outgoing, Error> {
        if r.r13 > MAX_DATA as u64 {
            return Err(Error::InvalidArgument);
        }
        Ok(Outgoing {
            words: [r.rsi, r.rdx, r.r10, r.r8],
            cap: r.r9,
            data_ptr: r.r12,
            data_len: r.r13 as usize,
        })
    }
}

/// Where a receiver takes data (`r14`) and how much of `sent` bytes fit there (its
/// capacity is `r15`): the rest is cut off.
pub fn receive_buffer(r: &ThreadRegs, sent: usize) -> (u64, usize) {
    (
        r.r14,
        sent.min(usize::try_from(r.r15).unwrap_or(usize::MAX)),
    )
}

/// What a receiver is told of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// RAX: the port's badge (a server receiving), or the result (a client's reply).
    pub rax: u64,
    pub words: [u64; 4],
    /// The receiver's name for the capability that came with it, or [`NO_CAP`].
    pub cap: u64,
    /// Bytes the sender sent (`r13`) and bytes that arrived in the buffer (`r15`).
    pub sent: usize,
    pub delivered: usize,
}

impl Delivery {
    /// A kernel-made message (a fault): words only.
    pub fn fault(badge: u64, words: [u64; 4]) -> Delivery {
        Delivery {
            rax: badge,
            words,
            cap: NO_CAP,
            sent: 0,
            delivered: 0,
        }
    }

    /// Writes the message into the receiver's registers; one `blocked` in its receiving
    /// call (RIP on its `syscall`) is stepped past it, so the call is complete.
    pub fn write(&self, dst: &mut ThreadRegs, blocked: bool) {
        [dst.rsi, dst.rdx, dst.r10, dst.r8] = self.words;
        dst.r9 = self.cap;
        dst.r13 = self.sent as u64;
        dst.r15 = self.delivered as u64;
        dst.rax = self.rax;
        if blocked {
            complete_call(dst);
        }
    }
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
    fn a_message_is_read_from_and_written_to_the_abi_registers() {
        let src = ThreadRegs {
            rsi: 1,
            rdx: 2,
            r10: 3,
            r8: 4,
            r9: 7,
            r12: 0x5000,
            r13: 100,
            ..ThreadRegs::default()
        };
        let m = Outgoing::from_regs(&src).unwrap();
        assert_eq!(
            (m.words, m.cap, m.data_ptr, m.data_len),
            ([1, 2, 3, 4], 7, 0x5000, 100)
        );
        let too_long = ThreadRegs {
            r13: MAX_DATA as u64 + 1,
            ..src
        };
        assert_eq!(Outgoing::from_regs(&too_long), Err(Error::InvalidArgument));

        let mut dst = ThreadRegs {
            r14: 0x9000,
            r15: 40,
            rip: 0x1002,
            rcx: 0x1002,
            ..ThreadRegs::default()
        };
        assert_eq!(receive_buffer(&dst, 100), (0x9000, 40));
        assert_eq!(receive_buffer(&dst, 10), (0x9000, 10));
        let d = Delivery {
            rax: 0x55,
            words: m.words,
            cap: 3,
            sent: 100,
            delivered: 40,
        };
        d.write(&mut dst, true);
        assert_eq!([dst.rsi, dst.rdx, dst.r10, dst.r8], [1, 2, 3, 4]);
        assert_eq!((dst.r9, dst.r13, dst.r15, dst.rax), (3, 100, 40, 0x55));
        // Blocked on its `syscall` at 0x1002: now past it, where SYSRET returns.
        assert_eq!((dst.rip, dst.rcx), (0x1004, 0x1004));
        let before = dst;
        Delivery::fault(9, [5, 6, 7, 8]).write(&mut dst, false);
        assert_eq!(
            (dst.rip, dst.r9, dst.r13, dst.r15, dst.rax),
            (before.rip, NO_CAP, 0, 0, 9)
        );
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
