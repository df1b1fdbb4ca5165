//! What two VMMs say on a channel's socket: one fixed-size message each way, then nothing
//! (the socket stays open only so that each side sees the other end).
//!
//! ```text
//! listener -> connector: Hello  { magic "FLCH", version, kind HELLO, 0, shared_size }
//!                        + SCM_RIGHTS [memfd, eventfd listener->connector, eventfd connector->listener]
//! connector -> listener: Hello  { magic, version, kind ACK, 0, shared_size }   (no descriptors)
//! listener -> connector: Hello  { magic, version, kind JOINED, 0, shared_size } (no descriptors)
//! listener -> a third:   Hello  { magic, version, kind BUSY, 0, shared_size }  (no descriptors)
//! ```
//!
//! JOINED is sent once the listener's PEER reads 1, and the connector's guest does not start
//! before it comes: so neither guest can see the other's stores while its own PEER still
//! reads 0.
//!
//! Every field is little-endian; `version` is the guest-visible layout's
//! ([`fluke_abi::channel::VERSION`]), since that is what both guests must agree on.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use fluke_abi::channel::{MAGIC, SHARED_SIZE, VERSION};

/// A message's size on the wire.
pub const MESSAGE_BYTES: usize = 24;
/// How many descriptors a HELLO carries.
pub const HELLO_FDS: usize = 3;

/// What a message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The listener's offer, with the descriptors.
    Hello = 0,
    /// The connector took the offer and mapped everything.
    Ack = 1,
    /// The listener already has its other VM.
    Busy = 2,
    /// The listener has the connector in (its PEER reads 1): the connector's guest may run.
    Joined = 3,
}

/// One message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub version: u32,
    pub kind: Kind,
    pub shared_size: u64,
}

impl Message {
    /// This VMM's message of `kind`.
    pub fn ours(kind: Kind) -> Message {
        Message {
            version: VERSION,
            kind,
            shared_size: SHARED_SIZE,
        }
    }

    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut b = [0u8; MESSAGE_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.shared_size.to_le_bytes());
        b
    }

    /// Decodes what the other VMM sent (all of it): Err says what is wrong, for the
    /// one-line report ("the other VM ...").
    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        let Ok(b) = <&[u8; MESSAGE_BYTES]>::try_from(bytes) else {
            return Err(format!(
                "sent {} bytes, not a {MESSAGE_BYTES}-byte channel message",
                bytes.len()
            ));
        };
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if word(0) != MAGIC {
            return Err(format!(
                "sent {:02x?}..., not a channel message (no \"FLCH\")",
                &b[..4]
            ));
        }
        let version = word(4);
        let kind = match word(8) {
            0 => Kind::Hello,
            1 => Kind::Ack,
            2 => Kind::Busy,
            3 => Kind::Joined,
            other => return Err(format!("sent a message of unknown kind {other}")),
        };
        if word(12) != 0 {
            return Err("sent a message with its reserved field set".into());
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[16..24]);
        Ok(Message {
            version,
            kind,
            shared_size: u64::from_le_bytes(size),
        })
    }

    /// Whether the other VMM's guests would see the same layout as ours.
    pub fn check_compatible(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "speaks channel version {}, this fluke-vmm version {VERSION}",
                self.version
            ));
        }
        if self.shared_size != SHARED_SIZE {
            return Err(format!(
                "has a shared area of {} bytes, this fluke-vmm {SHARED_SIZE}",
                self.shared_size
            ));
        }
        Ok(())
    }
}

/// Seals a channel's memfd must carry: it can then neither shrink (which would pull pages
/// out from under both guests' memory slots) nor grow, and the seals cannot change.
pub const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// A new memfd of `size` bytes, sealed with [`REQUIRED_SEALS`].
pub fn create_memfd(size: u64) -> std::io::Result<File> {
    let name = c"fluke-channel";
    // SAFETY: memfd_create reads the NUL-terminated name only; a returned descriptor is new
    // and owned by nobody else, so File takes sole ownership of it.
    let file = unsafe {
        let fd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        <File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    file.set_len(size)?;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Checks that `file` is a memfd of exactly `size` bytes that can no longer shrink.
pub fn check_memfd(file: &File, size: u64) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor we own, no pointer argument.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err("sent a shared-memory descriptor that is not a memfd".into());
    }
    if seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(format!(
            "sent a memfd not sealed against resizing (seals {seals:#x})"
        ));
    }
    let len = file
        .metadata()
        .map_err(|e| format!("sent a memfd that cannot be examined: {e}"))?
        .len();
    if len != size {
        return Err(format!(
            "sent a memfd of {len} bytes for a shared area of {size}"
        ));
    }
    Ok(())
}

/// Checks that `fd` is an eventfd (what KVM_IOEVENTFD and KVM_IRQFD take).
pub fn check_eventfd(fd: RawFd, what: &str) -> Result<(), String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("sent a {what} descriptor that cannot be examined: {e}"))?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(format!(
            "sent a {what} descriptor that is not an eventfd ({})",
            link.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn messages_round_trip_and_garbage_is_named() {
        for kind in [Kind::Hello, Kind::Ack, Kind::Busy, Kind::Joined] {
            let m = Message::ours(kind);
            assert_eq!(Message::decode(&m.encode()), Ok(m));
            assert_eq!(m.check_compatible(), Ok(()));
        }
        assert!(Message::decode(b"hello")
            .unwrap_err()
            .contains("sent 5 bytes"));
        assert!(Message::decode(&[0u8; 24])
            .unwrap_err()
            .contains("no \"FLCH\""));
        let mut b = Message::ours(Kind::Ack).encode();
        b[8] = 9;
        assert!(Message::decode(&b).unwrap_err().contains("unknown kind 9"));
        let mut b = Message::ours(Kind::Ack).encode();
        b[13] = 1;
        assert!(Message::decode(&b).unwrap_err().contains("reserved"));
        let old = Message {
            version: 99,
            ..Message::ours(Kind::Hello)
        };
        assert_eq!(
            Message::decode(&old.encode()).unwrap().check_compatible(),
            Err(format!(
                "speaks channel version 99, this fluke-vmm version {VERSION}"
            ))
        );
        let small = Message {
            shared_size: 4096,
            ..Message::ours(Kind::Hello)
        };
        assert!(small.check_compatible().unwrap_err().contains("4096 bytes"));
    }

    #[test]
    fn descriptors_are_checked_for_what_they_are() {
        let memfd = create_memfd(SHARED_SIZE).unwrap();
        assert_eq!(check_memfd(&memfd, SHARED_SIZE), Ok(()));
        assert!(check_memfd(&memfd, 4096).unwrap_err().contains("bytes for"));
        // Sealed: it cannot shrink.
        assert!(memfd.set_len(4096).is_err());
        let plain = File::open("/dev/null").unwrap();
        assert!(check_memfd(&plain, 0).unwrap_err().contains("not a memfd"));
        let evt = EventFd::new(0).unwrap();
        assert_eq!(check_eventfd(evt.as_raw_fd(), "doorbell"), Ok(()));
        assert!(check_eventfd(plain.as_raw_fd(), "doorbell")
            .unwrap_err()
            .contains("not an eventfd"));
        assert!(check_eventfd(memfd.as_raw_fd(), "doorbell")
            .unwrap_err()
            .contains("memfd:fluke-channel"));
    }
}
