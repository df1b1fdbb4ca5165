//! An interrupt line as the interrupt object sees it (issue 15): bound to a port or not,
//! and whether an interrupt is outstanding (sent, or to be sent, and not acknowledged). The
//! line is masked in the IOAPIC whenever it is unbound or an interrupt is outstanding, so
//! a driver gets one interrupt at a time and a level-triggered device cannot storm. The
//! kernel does what these transitions say (mask, unmask, send the message).

/// An interrupt line; `P` names a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<P> {
    pub line: u32,
    pub port: Option<P>,
    /// An interrupt arrived and has not been acknowledged.
    pub outstanding: bool,
    /// ... and no thread of the port's set has taken its message yet.
    pub queued: bool,
    /// Interrupts so far (the message's `w2`).
    pub count: u64,
}

/// Why a call on a line fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// `bind` on a bound line.
    Bound,
    /// `ack` with nothing to acknowledge (none outstanding, or its message not taken yet).
    NothingToAck,
}

impl From<LineError> for fluke_abi::syscall::Error {
    fn from(e: LineError) -> Self {
        match e {
            LineError::Bound => Self::Busy,
            LineError::NothingToAck => Self::InvalidArgument,
        }
    }
}

impl<P: Copy + PartialEq> Line<P> {
    pub const fn new(line: u32) -> Line<P> {
        Line {
            line,
            port: None,
            outstanding: false,
            queued: false,
            count: 0,
        }
    }

    /// Whether the line must be masked in the IOAPIC now.
    pub fn masked(&self) -> bool {
        self.port.is_none() || self.outstanding
    }

    /// The interrupt fired (the kernel masked the line first). Whether it is news: false
    /// for one that fired while masked (a level-triggered line the IOAPIC had latched).
    pub fn arrive(&mut self) -> bool {
        if self.masked() {
            return false;
        }
        self.outstanding = true;
        self.queued = true;
        self.count += 1;
        true
    }

    /// The message to send, if one is queued: `(port, count)`.
    pub fn to_send(&self) -> Option<(P, u64)> {
        match (self.queued, self.port) {
            (true, Some(p)) => Some((p, self.count)),
            _ => None,
        }
    }

    /// A thread of the port's set took the message.
    pub fn taken(&mut self) {
        self.queued = false;
    }

    /// The check of `irq_ack` (changes nothing).
    pub fn check_ack(&self) -> Result<(), LineError> {
        if !self.outstanding || self.queued {
            return Err(LineError::NothingToAck);
        }
        Ok(())
    }

    /// `irq_ack` after [`Line::check_ack`]: whether to unmask now.
    pub fn ack(&mut self) -> bool {
        self.outstanding = false;
        !self.masked()
    }

    pub fn check_bind(&self) -> Result<(), LineError> {
        match self.port {
            Some(_) => Err(LineError::Bound),
            None => Ok(()),
        }
    }

    /// Binds (or, from `set_state`, re-points) the line to `port`: whether to unmask now.
    /// An interrupt still outstanding (its driver went away before acknowledging it) is
    /// sent again to the new port, so none is lost; the line stays masked until it is
    /// acknowledged.
    pub fn bind(&mut self, port: P) -> bool {
        self.port = Some(port);
        if self.outstanding {
            self.queued = true;
        }
        !self.masked()
    }

    /// The port is gone (destroyed, or its space ended) or the line is unbound: the line
    /// is masked, an outstanding interrupt kept for the next binding.
    pub fn unbind(&mut self) {
        self.port = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_interrupt_at_a_time_until_acknowledged() {
        let mut l = Line::<u32>::new(4);
        assert!(l.masked());
        assert!(!l.arrive(), "an unbound line is masked");
        assert_eq!(l.check_ack(), Err(LineError::NothingToAck));
        assert!(l.bind(7));
        assert_eq!(l.check_bind(), Err(LineError::Bound));
        assert!(l.arrive());
        assert!(l.masked());
        assert_eq!(l.to_send(), Some((7, 1)));
        assert_eq!(l.check_ack(), Err(LineError::NothingToAck), "not taken yet");
        assert!(!l.arrive(), "masked: a latched one is not news");
        l.taken();
        assert_eq!(l.to_send(), None);
        assert_eq!(l.check_ack(), Ok(()));
        assert!(l.ack());
        assert!(!l.masked());
        assert_eq!(l.check_ack(), Err(LineError::NothingToAck));
        assert!(l.arrive());
        assert_eq!(l.to_send(), Some((7, 2)));
    }

    #[test]
    fn a_driver_gone_mid_interrupt_leaves_it_masked_and_rebindable() {
        let mut l = Line::<u32>::new(5);
        l.bind(1);
        l.arrive();
        l.taken();
        l.unbind(); // the driver's port died before its ack
        assert!(l.masked());
        assert_eq!(l.check_bind(), Ok(()));
        assert!(!l.bind(2), "still masked: the interrupt is outstanding");
        assert_eq!(l.to_send(), Some((2, 1)), "sent again to the new driver");
        l.taken();
        assert!(l.ack());
        assert!(!l.masked());
    }
}
