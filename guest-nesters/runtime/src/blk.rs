//! A client of the block service (`fluke_abi::blk`): a program holding a capability to a
//! block driver's port reads, writes and flushes whole sectors through it. Each call is one
//! IPC round trip; a transfer is at most [`MAX_SECTORS`] sectors.

use crate::sys::{self, NO_CAP};
pub use fluke_abi::blk::{Status, FLAG_READ_ONLY, MAX_SECTORS, SECTOR};
use fluke_abi::blk::{FLUSH, INFO, READ, WRITE};

/// Why a block request failed: the driver's answer, or the IPC itself (the driver is gone:
/// `PeerGone`, or its port was destroyed: `BadCap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    Status(Status),
    Ipc(crate::Error),
}

/// What `INFO` tells of the drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub sectors: u64,
    pub read_only: bool,
}

/// A block driver's port.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub port: u64,
}

impl Client {
    pub const fn new(port: u64) -> Client {
        Client { port }
    }

    fn call(&self, words: [u64; 4], data: &[u8], reply: &mut [u8]) -> Result<sys::Msg, BlkError> {
        let m = sys::ipc_call_data(self.port, words, NO_CAP, data, reply).map_err(BlkError::Ipc)?;
        match Status::from_word(m.words[0]) {
            Status::Ok => Ok(m),
            s => Err(BlkError::Status(s)),
        }
    }

    pub fn info(&self) -> Result<Info, BlkError> {
        let m = self.call([INFO, 0, 0, 0], &[], &mut [])?;
        Ok(Info {
            sectors: m.words[1],
            read_only: m.words[2] & FLAG_READ_ONLY != 0,
        })
    }

    /// Reads `buf.len() / SECTOR` sectors from `sector` into `buf` (whole sectors, at most
    /// [`MAX_SECTORS`]).
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        let count = (buf.len() / SECTOR) as u64;
        let m = self.call([READ, sector, count, 0], &[], buf)?;
        if m.data_sent != buf.len() as u64 || m.data_got != buf.len() as u64 {
            return Err(BlkError::Status(Status::IoError));
        }
        Ok(())
    }

    /// Writes `data` (whole sectors, at most [`MAX_SECTORS`]) from `sector`.
    pub fn write(&self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        let count = (data.len() / SECTOR) as u64;
        self.call([WRITE, sector, count, 0], data, &mut [])
            .map(|_| ())
    }

    /// Returns once every write acknowledged before it is durable on the host.
    pub fn flush(&self) -> Result<(), BlkError> {
        self.call([FLUSH, 0, 0, 0], &[], &mut []).map(|_| ())
    }
}
