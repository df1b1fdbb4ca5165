//! Feeds the VMM's stdin to the guest's UART receiver (only with `--serial stdio`).
//!
//! An `event-manager` loop in its own thread watches stdin and the UART's "receive FIFO
//! drained" eventfd. Input that does not fit in the FIFO is kept and stdin is unwatched until
//! the guest has read the FIFO empty, so nothing is dropped and the thread never spins. On
//! EOF, a read error or a stdin that cannot be polled (a regular file, `/dev/null`, a closed
//! fd) stdin is unregistered and the guest simply gets no more input. Each loop iteration
//! (at least every [`FLUSH_INTERVAL_MS`]) also flushes pending serial output, so that a
//! prompt without a trailing newline appears.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::serial::{lock, Uart};
use crate::error::{Error, Result};

/// How often the thread wakes up to flush partial output lines and check for shutdown.
pub const FLUSH_INTERVAL_MS: i32 = 50;

struct StdinFeeder {
    uart: Arc<Mutex<Uart>>,
    stdin: File,
    space: EventFd,
    /// Read from stdin but not yet accepted by the FIFO.
    pending: Vec<u8>,
    /// stdin is registered with the event loop.
    watching: bool,
    /// stdin reached EOF or failed; never watched again.
    done: bool,
}

impl StdinFeeder {
    fn stdin_events(&self) -> Events {
        Events::new(&self.stdin, EventSet::IN)
    }

    fn unwatch(&mut self, ops: &mut EventOps) {
        if self.watching {
            if let Err(e) = ops.remove(self.stdin_events()) {
                log::debug!("stdin: cannot unregister: {e}");
            }
            self.watching = false;
        }
    }

    fn watch(&mut self, ops: &mut EventOps) {
        if !self.watching && !self.done {
            match ops.add(self.stdin_events()) {
                Ok(()) => self.watching = true,
                Err(e) => {
                    log::debug!("stdin cannot be polled ({e}); the guest gets no input");
                    self.done = true;
                }
            }
        }
    }

    /// Moves pending input into the FIFO; returns whether everything fit.
    fn push_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let mut uart = lock(&self.uart);
        let room = uart.fifo_capacity().min(self.pending.len());
        if room > 0 {
            match uart.enqueue_raw_bytes(&self.pending[..room]) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) => log::warn!("serial input: {e}"),
            }
        }
        self.pending.is_empty()
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        match self.stdin.read(&mut buf) {
            Ok(0) => {
                log::debug!("stdin: EOF");
                self.unwatch(ops);
                self.done = true;
            }
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                log::warn!("stdin: {e}; the guest gets no more input");
                self.unwatch(ops);
                self.done = true;
            }
        }
    }
}

impl MutEventSubscriber for StdinFeeder {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.space, EventSet::IN)) {
            log::warn!("stdin: cannot watch the serial FIFO: {e}");
        }
        self.watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        if events.fd() == self.space.as_raw_fd() {
            let _ = self.space.read();
        } else if events.fd() == self.stdin.as_raw_fd() {
            if events.event_set().contains(EventSet::IN) {
                self.read_stdin(ops);
            } else {
                // HUP or ERR without data.
                self.unwatch(ops);
                self.done = true;
            }
        }
        if self.push_pending() {
            self.watch(ops);
        } else {
            // The FIFO is full: wait for the guest to drain it.
            self.unwatch(ops);
        }
    }
}

/// The running stdin thread. Dropping it stops the thread at its next wake-up.
pub struct StdinThread {
    stop: Arc<AtomicBool>,
    _handle: JoinHandle<()>,
}

impl Drop for StdinThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts feeding stdin into `uart`; `space` is the UART's "FIFO drained" eventfd.
pub fn start(uart: Arc<Mutex<Uart>>, space: EventFd) -> Result<StdinThread> {
    let host_io = |source| Error::HostIo {
        what: "stdin thread",
        source,
    };
    let stdin = File::from(io::stdin().as_fd().try_clone_to_owned().map_err(host_io)?);
    let mut manager: EventManager<StdinFeeder> =
        EventManager::new().map_err(|e| host_io(io::Error::other(e.to_string())))?;
    let flush_uart = Arc::clone(&uart);
    manager.add_subscriber(StdinFeeder {
        uart,
        stdin,
        space,
        pending: Vec::new(),
        watching: false,
        done: false,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("fluke-stdin".into())
        .spawn(move || {
            crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Stdin);
            while !stop_thread.load(Ordering::Relaxed) {
                if let Err(e) = manager.run_with_timeout(FLUSH_INTERVAL_MS) {
                    log::warn!("stdin event loop: {e}");
                    break;
                }
                let _ = lock(&flush_uart).writer_mut().flush_pending();
            }
        })
        .map_err(host_io)?;
    Ok(StdinThread {
        stop,
        _handle: handle,
    })
}
