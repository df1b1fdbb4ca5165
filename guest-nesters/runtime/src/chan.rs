//! A client of the message-channel service (`fluke_abi::chan`): a program holding a
//! capability to a channel driver's port sends and receives messages to and from the other
//! VM through it. Each call is one IPC round trip.

use crate::sys::{self, NO_CAP};
use core::cell::Cell;
pub use fluke_abi::chan::{Status, MAX_MESSAGE};
use fluke_abi::chan::{INFO, RECV, SEND};

/// Why a channel request failed: the driver's answer, or the IPC itself (the driver is
/// gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChanError {
    Status(Status),
    Ipc(crate::Error),
}

/// A channel driver's port, and the numbers of the next message to send and to receive
/// (`fluke_abi::chan`: they make a call that is restarted after the driver served it the
/// same call again).
#[derive(Debug)]
pub struct Client {
    pub port: u64,
    next_send: Cell<u32>,
    next_recv: Cell<u32>,
}

impl Client {
    /// A client of the driver at `port`, starting from the channel's next numbers (INFO).
    pub fn connect(port: u64) -> Result<Client, ChanError> {
        let c = Client {
            port,
            next_send: Cell::new(0),
            next_recv: Cell::new(0),
        };
        let m = c.call([INFO, 0, 0, 0], &[], &mut [])?;
        c.next_send.set(m.words[3] as u32);
        c.next_recv.set((m.words[3] >> 32) as u32);
        Ok(c)
    }

    fn call(&self, words: [u64; 4], data: &[u8], reply: &mut [u8]) -> Result<sys::Msg, ChanError> {
        let m =
            sys::ipc_call_data(self.port, words, NO_CAP, data, reply).map_err(ChanError::Ipc)?;
        match Status::from_word(m.words[0]) {
            Status::Ok => Ok(m),
            s => Err(ChanError::Status(s)),
        }
    }

    /// `(role, peer state)`: `fluke_abi::channel::REG_ROLE` and `REG_PEER`.
    pub fn info(&self) -> Result<(u64, u64), ChanError> {
        let m = self.call([INFO, 0, 0, 0], &[], &mut [])?;
        Ok((m.words[1], m.words[2]))
    }

    /// Sends `msg` (1 to [`MAX_MESSAGE`] bytes); returns once it is in the ring.
    pub fn send(&self, msg: &[u8]) -> Result<(), ChanError> {
        let n = self.next_send.get();
        self.call([SEND, u64::from(n), 0, 0], msg, &mut [])?;
        self.next_send.set(n.wrapping_add(1));
        Ok(())
    }

    /// Receives the next message into `buf` (give it [`MAX_MESSAGE`] bytes): its length.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, ChanError> {
        let n = self.next_recv.get();
        let m = self.call([RECV, u64::from(n), 0, 0], &[], buf)?;
        self.next_recv.set(n.wrapping_add(1));
        Ok(m.words[1].min(m.data_got) as usize)
    }
}
