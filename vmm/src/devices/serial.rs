//! COM1: the vm-superio 16550 UART, its interrupt (an `EventFd` registered as an irqfd) and
//! its output sink (`--serial`).
//!
//! The guest writes one byte per exit and vm-superio flushes its writer after every byte, so
//! the sink buffers and writes through on a newline, when its buffer fills, and whenever
//! [`SerialDevice::flush`] is called (at the end of every run, and every few tens of
//! milliseconds by the stdin thread so that a prompt without a newline shows up).

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};

/// `--serial`: where the guest console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialSpec {
    /// The VMM's stdout; the VMM's stdin feeds the UART's receiver.
    Stdio,
    /// A file (created or truncated); no input.
    File(PathBuf),
    /// Discarded; no input.
    Null,
}

impl SerialSpec {
    pub fn parse(spec: &str) -> Result<SerialSpec> {
        let invalid = |reason| Error::InvalidSerial {
            spec: spec.to_string(),
            reason,
        };
        match spec {
            "stdio" => Ok(SerialSpec::Stdio),
            "null" => Ok(SerialSpec::Null),
            _ => match spec.strip_prefix("file:") {
                Some("") => Err(invalid("the file path is empty")),
                Some(path) => Ok(SerialSpec::File(PathBuf::from(path))),
                None => Err(invalid("unknown kind")),
            },
        }
    }

    /// Opens the output side.
    pub fn open(&self) -> Result<Output> {
        match self {
            SerialSpec::Stdio => Ok(Output::Stdout),
            SerialSpec::Null => Ok(Output::Null),
            SerialSpec::File(path) => {
                File::create(path)
                    .map(Output::File)
                    .map_err(|source| Error::SerialFile {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }
}

/// Where the sink writes.
pub enum Output {
    Stdout,
    File(File),
    Null,
}

/// Flush when this much output is pending even without a newline.
const SINK_BUFFER: usize = 4096;

/// A line-buffered serial output.
pub struct Sink {
    output: Output,
    pending: Vec<u8>,
    /// Set after the first write error; later ones are not logged again.
    failed: bool,
}

impl Sink {
    pub fn new(output: Output) -> Sink {
        Sink {
            output,
            pending: Vec::with_capacity(SINK_BUFFER),
            failed: false,
        }
    }

    /// Writes everything pending to the output.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let res = match &mut self.output {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.pending).and_then(|_| out.flush())
            }
            Output::File(f) => f.write_all(&self.pending),
            Output::Null => Ok(()),
        };
        self.pending.clear();
        if let Err(e) = &res {
            if !self.failed {
                log::warn!("serial output lost: {e}");
            }
            self.failed = true;
        }
        res
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if matches!(self.output, Output::Null) {
            return Ok(buf.len());
        }
        self.pending.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.pending.len() >= SINK_BUFFER {
            // A broken output must not stop the guest: the error is logged once.
            let _ = self.flush_pending();
        }
        Ok(buf.len())
    }

    /// vm-superio calls this after every byte; the sink decides itself when to write.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.flush_pending();
    }
}

/// The UART's interrupt line: a write to the eventfd raises the irqfd's GSI.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the stdin thread that the receive FIFO has drained and more input fits.
pub struct InputSpace {
    evt: Option<EventFd>,
}

impl SerialEvents for InputSpace {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.evt {
            let _ = evt.write(1);
        }
    }
}

pub type Uart = Serial<IrqTrigger, InputSpace, Sink>;

/// Locks `m`, recovering the data if another thread panicked while holding it.
pub fn lock(m: &Mutex<Uart>) -> MutexGuard<'_, Uart> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// COM1, shareable with the stdin thread.
pub struct SerialDevice {
    uart: Arc<Mutex<Uart>>,
    /// Read side of [`InputSpace`]'s eventfd, for the stdin thread.
    space: EventFd,
}

impl SerialDevice {
    /// Creates the UART and returns it with its interrupt eventfd (to be registered as an
    /// irqfd for `fluke_abi::ports::COM1_IRQ`).
    pub fn new(output: Output) -> Result<(SerialDevice, EventFd)> {
        Self::with_state(output, &SerialState::default())
    }

    /// [`new`](Self::new) with the registers and receive FIFO of a saved UART (a restore).
    pub fn with_state(output: Output, state: &SerialState) -> Result<(SerialDevice, EventFd)> {
        let host_io = |source| Error::HostIo {
            what: "serial port",
            source,
        };
        let irq = EventFd::new(EFD_NONBLOCK).map_err(host_io)?;
        let space = EventFd::new(EFD_NONBLOCK).map_err(host_io)?;
        let uart = Serial::from_state(
            state,
            IrqTrigger(irq.try_clone().map_err(host_io)?),
            InputSpace {
                evt: Some(space.try_clone().map_err(host_io)?),
            },
            Sink::new(output),
        )
        .map_err(|e| Error::Snapshot(format!("the saved serial port cannot be rebuilt: {e:?}")))?;
        Ok((
            SerialDevice {
                uart: Arc::new(Mutex::new(uart)),
                space,
            },
            irq,
        ))
    }

    /// A guest write of `data` to register `offset`.
    pub fn write(&self, offset: u8, data: &[u8]) {
        let mut uart = lock(&self.uart);
        for &byte in data {
            if let Err(e) = uart.write(offset, byte) {
                // Output errors are logged once by the sink; interrupt errors here.
                if !matches!(e, vm_superio::serial::Error::IOError(_)) {
                    log::warn!("serial: {e}");
                }
            }
        }
    }

    /// A guest read of register `offset` into `data`.
    pub fn read(&self, offset: u8, data: &mut [u8]) {
        let mut uart = lock(&self.uart);
        for byte in data.iter_mut() {
            *byte = uart.read(offset);
        }
    }

    /// The UART's registers and receive FIFO (a snapshot).
    pub fn state(&self) -> SerialState {
        lock(&self.uart).state()
    }

    /// Writes all pending output.
    pub fn flush(&self) {
        let _ = lock(&self.uart).writer_mut().flush_pending();
    }

    /// The UART, for the stdin thread.
    pub fn shared(&self) -> Arc<Mutex<Uart>> {
        Arc::clone(&self.uart)
    }

    /// An eventfd that becomes readable when the receive FIFO has drained.
    pub fn input_space_evt(&self) -> io::Result<EventFd> {
        self.space.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_serial_specs() {
        assert_eq!(SerialSpec::parse("stdio").unwrap(), SerialSpec::Stdio);
        assert_eq!(SerialSpec::parse("null").unwrap(), SerialSpec::Null);
        assert_eq!(
            SerialSpec::parse("file:/tmp/x.log").unwrap(),
            SerialSpec::File("/tmp/x.log".into())
        );
        assert_eq!(
            SerialSpec::parse("file:a:b").unwrap(),
            SerialSpec::File("a:b".into())
        );
        for bad in ["", "file:", "tcp:1234", "STDIO", "file"] {
            let e = SerialSpec::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid --serial"), "{e}");
        }
    }

    #[test]
    fn file_sink_keeps_everything_including_a_partial_last_line() {
        let dir = std::env::temp_dir().join(format!("fluke-vmm-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.log");
        let spec = SerialSpec::parse(&format!("file:{}", path.display())).unwrap();
        let (dev, _irq) = SerialDevice::new(spec.open().unwrap()).unwrap();
        dev.write(0, b"line one\npartial");
        assert_eq!(std::fs::read(&path).unwrap(), b"line one\n");
        dev.flush();
        assert_eq!(std::fs::read(&path).unwrap(), b"line one\npartial");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn input_reaches_the_receiver_and_raises_the_interrupt() {
        let (dev, irq) = SerialDevice::new(Output::Null).unwrap();
        dev.write(1, &[0x01]); // IER: received-data interrupt
        lock(&dev.shared()).enqueue_raw_bytes(b"a").unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(&b, b"a");
        // The FIFO drained: the stdin thread is told.
        assert_eq!(dev.input_space_evt().unwrap().read().unwrap(), 1);
    }
}
