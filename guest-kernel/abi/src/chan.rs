//! The message-channel service (issue 15): a user-level driver that owns a VM-to-VM channel
//! device (`crate::channel`, fluke-vmm's `--channel`) serves messages to a program of its own
//! VM over IPC. The kernel knows nothing of channels or messages.
//!
//! Requests are `ipc_call`s, `w0` = the operation; replies `w0` = a [`Status`].
//!
//! | op | request | reply |
//! |---|---|---|
//! | [`INFO`] | | `w1` = role (`channel::REG_ROLE`), `w2` = peer state (`channel::REG_PEER`), `w3` = the next message numbers: to send (low 32 bits), to receive (high 32 bits) |
//! | [`SEND`] | `w1` = the message's number; data: the message, 1 to [`MAX_MESSAGE`] bytes | once it is in the ring (waits while the ring is full) |
//! | [`RECV`] | `w1` = the number of the message wanted | data: the message, `w1` = its length (waits until one comes) |
//!
//! Messages arrive in order, exactly once, each whole. A RECV after the other VM has ended
//! still gets every message it sent; then [`Status::PeerGone`]. A SEND gets
//! [`Status::PeerGone`] once the driver has seen the other VM go: the driver learns it from
//! the channel's interrupt, which it takes when it waits (a RECV on an empty ring, a SEND on
//! a full one), so a few SENDs after the other VM ended can still succeed into the ring (at
//! most [`SLOTS`]) and are lost with it. (Checking the register at every SEND would cost an
//! exit to the VMM per message.)
//!
//! **Numbers make the calls idempotent.** A call is restarted whole when its client is
//! stopped and resumed (a nester, a checkpointer; `ipc_call` is re-executed), after the
//! driver may have served it. So each SEND and RECV names its message by number (the ring
//! index, wrapping at 2^32): a SEND of the number last put in the ring, or a RECV of the
//! number last taken, is that same call again and is answered as before without touching
//! the ring (the driver keeps a copy of the last message taken); any other number but the
//! next is [`Status::BadRequest`]. A client learns the next numbers from INFO. One client
//! per channel (the numbers are the channel's, not per client).
//!
//! **The rings** (both drivers follow this, in the shared area): the area is split in two
//! halves of [`HALF`] bytes; the side of role `r` sends in half `r` and receives from half
//! `1 - r`. A half is a single-producer single-consumer ring: `head` (u32 at
//! [`HEAD`]: messages written, by the producer) and `tail` (u32 at [`TAIL`]: messages
//! consumed, by the consumer), then [`SLOTS`] slots of [`SLOT`] bytes from [`FIRST_SLOT`]:
//! message `i` is in slot `i % SLOTS`, a u32 length then the bytes. The producer writes the
//! slot, then `head`; the consumer reads `head`, the slot, then writes `tail`. Each side,
//! after its store of `head` (or `tail`), fences and reads the other index, and rings the
//! other VM's doorbell if the other side may be waiting: the ring was empty before this
//! message (or full before this consumption).

/// The most bytes one message holds: one IPC message's data.
pub const MAX_MESSAGE: usize = crate::syscall::ipc::MAX_DATA;

pub const INFO: u64 = 1;
pub const SEND: u64 = 2;
pub const RECV: u64 = 3;

/// What a request came to (`w0` of the reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Status {
    Ok = 0,
    /// The other VM has ended (and, for RECV, every message it sent was received).
    PeerGone = 1,
    /// An unknown operation, or a message that is empty or longer than [`MAX_MESSAGE`].
    BadRequest = 2,
    /// The driver has no channel device (or it misbehaves).
    DeviceGone = 3,
}

impl Status {
    pub fn from_word(w: u64) -> Status {
        match w {
            0 => Status::Ok,
            1 => Status::PeerGone,
            2 => Status::BadRequest,
            _ => Status::DeviceGone,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::PeerGone => "the other VM is gone",
            Status::BadRequest => "malformed request",
            Status::DeviceGone => "no channel device",
        }
    }
}

/// One ring's bytes: half the shared area.
pub const HALF: u64 = crate::channel::SHARED_SIZE / 2;
/// `head`'s offset in a half (its own cache line).
pub const HEAD: u64 = 0;
/// `tail`'s offset in a half (its own cache line).
pub const TAIL: u64 = 64;
/// The first slot's offset in a half.
pub const FIRST_SLOT: u64 = 128;
/// A slot: a u32 length, padding to 8, then [`MAX_MESSAGE`] bytes.
pub const SLOT: u64 = 8 + MAX_MESSAGE as u64;
/// Slots per ring (a power of two, so indices wrap cleanly).
pub const SLOTS: u32 = 64;

/// Where ring `half` (0 or 1) starts in the shared area.
pub const fn ring(half: u32) -> u64 {
    half as u64 * HALF
}

/// Slot `index`'s offset in its half.
pub const fn slot(index: u32) -> u64 {
    FIRST_SLOT + (index % SLOTS) as u64 * SLOT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_rings_fit_the_shared_area() {
        assert!(FIRST_SLOT + SLOTS as u64 * SLOT <= HALF);
        assert!(ring(1) + HALF <= crate::channel::SHARED_SIZE);
        assert!(SLOTS.is_power_of_two());
        assert_eq!(slot(SLOTS), slot(0));
        assert_eq!(slot(u32::MAX), slot(SLOTS - 1));
        assert_eq!(SLOT % 8, 0);
    }

    #[test]
    fn status_words_round_trip() {
        for s in [
            Status::Ok,
            Status::PeerGone,
            Status::BadRequest,
            Status::DeviceGone,
        ] {
            assert_eq!(Status::from_word(s as u64), s);
        }
    }
}
