//! The block service's protocol (issue 15): a user-level driver that owns a virtio-blk
//! device (through its device-memory and interrupt capabilities, `crate::devices`) serves
//! block reads, writes and flushes to other programs over IPC. A client holds a capability
//! to the driver's port; the kernel knows nothing of blocks.
//!
//! Requests are `ipc_call`s, `w0` = the operation; a transfer is whole sectors and at most
//! [`MAX_SECTORS`] (one IPC message's data). Replies: `w0` = a [`Status`], then the result
//! words.
//!
//! | op | request | reply |
//! |---|---|---|
//! | [`INFO`] | | `w1` = capacity in sectors, `w2` = [`FLAG_READ_ONLY`] if the drive refuses writes |
//! | [`READ`] | `w1` = first sector, `w2` = sectors | data: the sectors |
//! | [`WRITE`] | `w1` = first sector, `w2` = sectors; data: the sectors | |
//! | [`FLUSH`] | | (every write acknowledged before it is on the host's disk) |
//!
//! A request the driver can refuse without the device (a range past the end, a write to a
//! read-only drive, a size that is not `w2` sectors) never reaches the device.

/// Bytes per sector, as virtio-blk counts them.
pub const SECTOR: usize = 512;
/// The most sectors one request moves: one IPC message's data.
pub const MAX_SECTORS: u64 = (crate::syscall::ipc::MAX_DATA / SECTOR) as u64;

pub const INFO: u64 = 1;
pub const READ: u64 = 2;
pub const WRITE: u64 = 3;
pub const FLUSH: u64 = 4;

/// `INFO`'s `w2` bit: the drive is read-only.
pub const FLAG_READ_ONLY: u64 = 1;

/// What a request came to (`w0` of the reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Status {
    Ok = 0,
    /// The device reported an error (virtio-blk's S_IOERR), or none at all.
    IoError = 1,
    /// A write to a read-only drive.
    ReadOnly = 2,
    /// Sectors past the end of the drive.
    OutOfRange = 3,
    /// An unknown operation, zero or more than [`MAX_SECTORS`] sectors, or data whose size
    /// is not the sectors named.
    BadRequest = 4,
    /// The driver has lost its device (it was reset or refused the driver's setup).
    DeviceGone = 5,
}

impl Status {
    pub fn from_word(w: u64) -> Status {
        match w {
            0 => Status::Ok,
            2 => Status::ReadOnly,
            3 => Status::OutOfRange,
            4 => Status::BadRequest,
            5 => Status::DeviceGone,
            _ => Status::IoError,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::IoError => "I/O error",
            Status::ReadOnly => "the drive is read-only",
            Status::OutOfRange => "past the end of the drive",
            Status::BadRequest => "malformed request",
            Status::DeviceGone => "the device is gone",
        }
    }
}

/// A request as the driver reads it: decoded from the call's words and the size of its
/// data, checked against the drive (`capacity` sectors, `read_only`). Everything the driver
/// can refuse without the device is refused here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Info,
    Read { sector: u64, count: u64 },
    Write { sector: u64, count: u64 },
    Flush,
}

impl Request {
    pub fn decode(
        words: [u64; 4],
        data_len: usize,
        capacity: u64,
        read_only: bool,
    ) -> Result<Request, Status> {
        let range = |sector: u64, count: u64| {
            if count == 0 || count > MAX_SECTORS {
                return Err(Status::BadRequest);
            }
            match sector.checked_add(count) {
                Some(end) if end <= capacity => Ok(()),
                _ => Err(Status::OutOfRange),
            }
        };
        match words[0] {
            INFO if data_len == 0 => Ok(Request::Info),
            // A read-only drive has no writes to make durable: its flush succeeds, as the
            // device's does (and as fsync of a file opened read-only does).
            FLUSH if data_len == 0 => Ok(Request::Flush),
            READ if data_len == 0 => {
                range(words[1], words[2])?;
                Ok(Request::Read {
                    sector: words[1],
                    count: words[2],
                })
            }
            WRITE => {
                if read_only {
                    return Err(Status::ReadOnly);
                }
                range(words[1], words[2])?;
                if data_len as u64 != words[2] * SECTOR as u64 {
                    return Err(Status::BadRequest);
                }
                Ok(Request::Write {
                    sector: words[1],
                    count: words[2],
                })
            }
            _ => Err(Status::BadRequest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_against_the_drive_before_the_device() {
        let d = |w, len| Request::decode(w, len, 100, false);
        assert_eq!(d([INFO, 0, 0, 0], 0), Ok(Request::Info));
        assert_eq!(
            d([READ, 99, 1, 0], 0),
            Ok(Request::Read {
                sector: 99,
                count: 1
            })
        );
        assert_eq!(d([READ, 99, 2, 0], 0), Err(Status::OutOfRange));
        assert_eq!(d([READ, u64::MAX, 1, 0], 0), Err(Status::OutOfRange));
        assert_eq!(d([READ, 0, 0, 0], 0), Err(Status::BadRequest));
        assert_eq!(d([READ, 0, MAX_SECTORS + 1, 0], 0), Err(Status::BadRequest));
        assert_eq!(
            d([WRITE, 0, 8, 0], 4096),
            Ok(Request::Write {
                sector: 0,
                count: 8
            })
        );
        assert_eq!(d([WRITE, 0, 8, 0], 4095), Err(Status::BadRequest));
        assert_eq!(d([WRITE, 0, 2, 0], 512), Err(Status::BadRequest));
        assert_eq!(d([FLUSH, 0, 0, 0], 0), Ok(Request::Flush));
        assert_eq!(d([9, 0, 0, 0], 0), Err(Status::BadRequest));
        assert_eq!(d([INFO, 0, 0, 0], 1), Err(Status::BadRequest));
    }

    #[test]
    fn a_read_only_drive_refuses_writes_only() {
        let d = |w, len| Request::decode(w, len, 100, true);
        assert_eq!(d([WRITE, 0, 1, 0], 512), Err(Status::ReadOnly));
        assert_eq!(d([FLUSH, 0, 0, 0], 0), Ok(Request::Flush));
        assert!(d([READ, 0, 1, 0], 0).is_ok());
    }

    #[test]
    fn status_words_round_trip() {
        for s in [
            Status::Ok,
            Status::IoError,
            Status::ReadOnly,
            Status::OutOfRange,
            Status::BadRequest,
            Status::DeviceGone,
        ] {
            assert_eq!(Status::from_word(s as u64), s);
            assert!(!s.name().is_empty());
        }
        assert_eq!(Status::from_word(77), Status::IoError);
    }
}
