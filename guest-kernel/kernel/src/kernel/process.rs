//! Processes: a space with its threads, a parent, children and an exit status. The calls
//! that make, end and wait for them are `objects::space`.

use super::space::Space;
use super::thread::ThreadId;
use alloc::vec::Vec;
use fluke_kcore::slab::Id;

pub type Pid = Id;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    Alive,
    Exited(i32),
}

pub struct Process {
    pub name: Name,
    pub parent: Option<Pid>,
    /// `None` once the process has exited (its memory is freed at exit).
    pub space: Option<Space>,
    pub threads: Vec<ThreadId>,
    pub children: Vec<Pid>,
    pub state: ProcessState,
    /// Whether a thread of it ran user code with a non-canonical stack pointer, or it was
    /// created by such a process: its threads' returns to user mode are time-stamped.
    pub offender: bool,
    /// Until when none of its threads returns to user mode (`fluke_kcore::stall`).
    pub hold: fluke_kcore::stall::Hold,
}

/// A short copy of the program name for reports.
#[derive(Clone, Copy)]
pub struct Name {
    bytes: [u8; 32],
    len: usize,
}

impl Name {
    pub fn new(s: &str) -> Name {
        let mut bytes = [0; 32];
        let len = s.len().min(32);
        bytes[..len].copy_from_slice(&s.as_bytes()[..len]);
        Name { bytes, len }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}
