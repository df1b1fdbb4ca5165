//! The process manager's protocol (`guest-nesters/programs/procmgr`). A process under a
//! process manager holds the manager's port at [`PORT_NAME`]; nesters pass that name on
//! to their children unchanged, so a program reaches the nearest process manager above it
//! directly however many layers lie between (capabilities short-circuit the hierarchy).
//!
//! Requests are `ipc_call`s on that port, `w0` = the operation. Replies: `w0` = 0 or an
//! [`Error`](crate::syscall::Error) code, then the result words.
//!
//! | op | request | reply |
//! |---|---|---|
//! | [`SPAWN`] | data: program name and arguments, NUL-separated; optional capability (the child gets it as name 0) | `w1` = process id |
//! | [`WAIT_HANDLE`] | `w1` = id | a mutex the manager holds while the process runs |
//! | [`STATUS`] | `w1` = id, `w2` = [`REAP`] to forget an exited process | `w1` = [`RUNNING`] or [`EXITED`], `w2` = exit status |
//! | [`KILL`] | `w1` = id | (the process ends with [`KILLED_STATUS`]) |
//! | [`LIST`] | | `w1` = count; data: that many [`ProcInfo`] records |
//!
//! Waiting needs no deferred reply: a waiter locks the process's mutex (which the manager
//! releases when the process ends), then asks for the status. Each process's port is
//! badged with its id, so a process (and everything nested below it, which shares its
//! port) may wait for and kill only the processes it spawned (`NoRights` otherwise).

use crate::syscall::Error;

/// The capability name of the process manager's port in every process under one.
pub const PORT_NAME: u64 = 255;

pub const SPAWN: u64 = 1;
pub const WAIT_HANDLE: u64 = 2;
pub const STATUS: u64 = 3;
pub const KILL: u64 = 4;
pub const LIST: u64 = 5;

pub const RUNNING: u64 = 0;
pub const EXITED: u64 = 1;
/// `STATUS`'s `w2`: forget the process once its exit status has been read.
pub const REAP: u64 = 1;
/// The exit status of a killed process (128 + SIGKILL, as a shell shows it).
pub const KILLED_STATUS: i32 = 128 + 9;

/// The reply word for a result.
pub fn reply_code(r: Result<(), Error>) -> u64 {
    match r {
        Ok(()) => 0,
        Err(e) => e as u64,
    }
}

/// A reply's `w0` back to a result (an unknown code is `InvalidArgument`).
pub fn check_reply(code: u64) -> Result<(), Error> {
    match code {
        0 => Ok(()),
        c => Err(Error::from_i64(c as i64).unwrap_or(Error::InvalidArgument)),
    }
}

/// One process as `LIST` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub id: u64,
    /// [`RUNNING`] or [`EXITED`].
    pub state: u64,
    pub status: i32,
    pub name: [u8; 32],
    pub name_len: u8,
}

impl ProcInfo {
    pub const SIZE: usize = 64;
    /// The most records one `LIST` reply carries.
    pub const MAX_PER_REPLY: usize = crate::syscall::ipc::MAX_DATA / Self::SIZE;

    pub fn new(id: u64, state: u64, status: i32, name: &str) -> ProcInfo {
        let mut n = [0u8; 32];
        let len = name.len().min(32);
        n[..len].copy_from_slice(&name.as_bytes()[..len]);
        ProcInfo {
            id,
            state,
            status,
            name: n,
            name_len: len as u8,
        }
    }

    pub fn name(&self) -> &str {
        core::str::from_utf8(&self.name[..usize::from(self.name_len).min(32)]).unwrap_or("?")
    }

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.state.to_le_bytes());
        b[16..20].copy_from_slice(&self.status.to_le_bytes());
        b[20] = self.name_len;
        b[24..56].copy_from_slice(&self.name);
        b
    }

    /// Parses a record; `None` if it is malformed (a hostile or confused manager).
    pub fn from_bytes(b: &[u8]) -> Option<ProcInfo> {
        let b: &[u8; Self::SIZE] = b.get(..Self::SIZE)?.try_into().ok()?;
        let word = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let info = ProcInfo {
            id: word(0),
            state: word(8),
            status: i32::from_le_bytes(b[16..20].try_into().ok()?),
            name_len: b[20],
            name: b[24..56].try_into().ok()?,
        };
        (info.name_len <= 32 && info.state <= EXITED).then_some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let p = ProcInfo::new(7, EXITED, -3, "work");
        assert_eq!(ProcInfo::from_bytes(&p.to_bytes()), Some(p));
        assert_eq!(p.name(), "work");
        let long = ProcInfo::new(1, RUNNING, 0, &"x".repeat(40));
        assert_eq!(long.name().len(), 32);
        let mut bad = p.to_bytes();
        bad[20] = 33;
        assert_eq!(ProcInfo::from_bytes(&bad), None);
        let mut bad = p.to_bytes();
        bad[8] = 9;
        assert_eq!(ProcInfo::from_bytes(&bad), None);
        assert_eq!(ProcInfo::from_bytes(&bad[..10]), None);
        assert_eq!(ProcInfo::MAX_PER_REPLY, 64);
    }

    #[test]
    fn reply_codes_round_trip() {
        assert_eq!(check_reply(reply_code(Ok(()))), Ok(()));
        for e in [Error::NoSuchChild, Error::NoMemory, Error::NoSuchProgram] {
            assert_eq!(check_reply(reply_code(Err(e))), Err(e));
        }
        assert_eq!(check_reply(999), Err(Error::InvalidArgument));
    }
}
