//! One virtio-blk request: a descriptor chain of a 16-byte header (type, reserved, sector)
//! in driver-readable buffers, then the data (driver-readable for OUT, device-writable for
//! IN and GET_ID), then one device-writable status byte (virtio 1.2 §5.2.6). The split
//! between buffers is not assumed (the chain is read and written as two byte streams, as
//! the spec asks of devices).
//!
//! Everything in the chain is the guest's: a malformed chain, a request past the end of the
//! disk or a host I/O failure gets VIRTIO_BLK_S_IOERR (when there is a status byte to put it
//! in), never a panic.

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::disk::{Disk, SECTOR_SIZE};

/// Host-side bounce buffer for one step of a request's data: requests of any size are
/// served in steps of this many bytes, so a guest cannot make the VMM allocate.
pub const BOUNCE_BYTES: usize = 64 << 10;

/// `struct virtio_blk_outhdr`, little-endian as on the wire (the host is x86-64).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: plain integers with no padding (4 + 4 + 8 bytes, repr(C)); any bit pattern is a
// valid value.
unsafe impl ByteValued for RequestHeader {}

/// Why a request failed (the guest sees only the status; these are for the log and tests).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed descriptor chain: {0}")]
    Malformed(&'static str),
    #[error("{len} bytes at sector {sector} lie past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("a data length of {0} bytes is not whole sectors")]
    PartialSector(u64),
    #[error("a write to a read-only drive")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("host I/O: {0}")]
    HostIo(String),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// What serving one chain came to.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into the chain's device-writable buffers (the used ring's `len`).
    pub used_len: u32,
    /// The status byte written (None: the chain had no writable byte to hold it).
    pub status: Option<u8>,
    pub error: Option<RequestError>,
}

/// Serves the request in `chain` on `disk`, `bounce` as the data's staging buffer.
pub fn serve(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    bounce: &mut [u8],
) -> Completion {
    let no_status = |error| Completion {
        used_len: 0,
        status: None,
        error: Some(error),
    };
    // Readable buffers must all come before writable ones.
    let mut seen_writable = false;
    for desc in chain.clone() {
        if desc.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return no_status(RequestError::Malformed(
                "a readable buffer after a writable one",
            ));
        }
    }
    let Ok(mut data_out) = chain.clone().writer(mem) else {
        return no_status(RequestError::Malformed(
            "a writable buffer outside the device's DMA area",
        ));
    };
    let writable = data_out.available_bytes();
    if writable == 0 {
        return no_status(RequestError::Malformed("no status byte"));
    }
    let Ok(mut status_out) = data_out.split_at(writable - 1) else {
        return no_status(RequestError::Malformed("no status byte"));
    };
    let result = match chain.reader(mem) {
        Ok(data_in) => execute(disk, data_in, &mut data_out, bounce),
        Err(_) => Err(RequestError::Malformed(
            "a readable buffer outside the device's DMA area",
        )),
    };
    let status = match &result {
        Ok(()) => VIRTIO_BLK_S_OK as u8,
        Err(e) => e.status(),
    };
    let data_len = data_out.bytes_written();
    if status_out.write_all(&[status]).is_err() {
        return no_status(RequestError::Malformed("the status byte cannot be written"));
    }
    Completion {
        // At most the chain's writable bytes, which a u32 used length can hold (virtio-queue
        // refuses chains longer than that).
        used_len: u32::try_from(data_len + 1).unwrap_or(u32::MAX),
        status: Some(status),
        error: result.err(),
    }
}

fn execute(
    disk: &Disk,
    mut data_in: Reader<'_>,
    data_out: &mut Writer<'_>,
    bounce: &mut [u8],
) -> Result<(), RequestError> {
    let header: RequestHeader = data_in
        .read_obj()
        .map_err(|_| RequestError::Malformed("a header shorter than 16 bytes"))?;
    let host_io = |e: std::io::Error| RequestError::HostIo(e.to_string());
    let request_type = u32::from_le(header.request_type);
    let sector = u64::from_le(header.sector);
    match request_type {
        VIRTIO_BLK_T_IN => {
            let len = checked_span(disk, sector, data_out.available_bytes())?;
            let mut offset = sector * SECTOR_SIZE;
            let end = offset + len;
            while offset < end {
                let n = (end - offset).min(bounce.len() as u64) as usize;
                disk.read_exact_at(&mut bounce[..n], offset)
                    .map_err(host_io)?;
                data_out
                    .write_all(&bounce[..n])
                    .map_err(|_| RequestError::Malformed("a data buffer cannot be written"))?;
                offset += n as u64;
            }
            Ok(())
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly() {
                return Err(RequestError::ReadOnly);
            }
            let len = checked_span(disk, sector, data_in.available_bytes())?;
            let mut offset = sector * SECTOR_SIZE;
            let end = offset + len;
            while offset < end {
                let n = (end - offset).min(bounce.len() as u64) as usize;
                data_in
                    .read_exact(&mut bounce[..n])
                    .map_err(|_| RequestError::Malformed("a data buffer cannot be read"))?;
                disk.write_all_at(&bounce[..n], offset).map_err(host_io)?;
                offset += n as u64;
            }
            Ok(())
        }
        // Nothing is cached in the VMM: every completed write is in the host's page cache,
        // and fdatasync makes it durable before the guest hears the flush is done.
        VIRTIO_BLK_T_FLUSH => disk.flush().map_err(host_io),
        VIRTIO_BLK_T_GET_ID => {
            let n = data_out.available_bytes().min(disk.id().len());
            data_out
                .write_all(&disk.id()[..n])
                .map_err(|_| RequestError::Malformed("the id buffer cannot be written"))
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// The byte length of a data transfer of `len` bytes at `sector`, if it is whole sectors
/// inside the disk.
fn checked_span(disk: &Disk, sector: u64, len: usize) -> Result<u64, RequestError> {
    let len = len as u64;
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::PartialSector(len));
    }
    if !disk.in_range(sector, len) {
        return Err(RequestError::OutOfRange { sector, len });
    }
    Ok(len)
}
