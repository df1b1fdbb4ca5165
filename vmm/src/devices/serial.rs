//! COM1: the vm-superio 16550 UART, its interrupt (an `EventFd` registered as an irqfd) and
//! its output sink (`--serial`).
//!
//! The guest writes one byte per exit and vm-superio flushes its writer after every byte, so
//! the sink buffers and hands its bytes on at a newline, when its buffer fills, and whenever
//! [`SerialDevice::flush`] is called (at the end of every run, and every few tens of
//! milliseconds by the stdin thread so that a prompt without a newline shows up).
//!
//! Handing on never blocks: a writer thread ([`Console`]) does the blocking writes to the
//! terminal, pipe or file from a bounded queue, and what does not fit while the output is
//! not draining is dropped and counted (as Firecracker does), so a stuck console can stop
//! neither the vCPU nor `--timeout`, and no lock is held across host I/O.

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

    /// Opens the output side. A FIFO is opened without waiting for a reader: with none it
    /// is an error, not a hang.
    pub fn open(&self) -> Result<Output> {
        match self {
            SerialSpec::Stdio => Ok(Output::Console(Console::start(Target::Stdout)?)),
            SerialSpec::Null => Ok(Output::Null),
            SerialSpec::File(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let err = |source: io::Error| match source.raw_os_error() {
                    Some(libc::ENXIO) => Error::SerialFile {
                        path: path.clone(),
                        source: io::Error::other("a FIFO, and no process has it open for reading"),
                    },
                    _ => Error::SerialFile {
                        path: path.clone(),
                        source,
                    },
                };
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
                    .map_err(err)?;
                // Writes block again (on the writer thread only).
                set_blocking(&file).map_err(err)?;
                Ok(Output::Console(Console::start(Target::File(file))?))
            }
        }
    }
}

fn set_blocking(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own change only its status flags.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Where the sink's bytes go.
pub enum Output {
    Console(Console),
    Null,
}

/// The blocking end of the serial output: a writer thread and the bounded queue it drains.
pub struct Console {
    shared: Arc<ConsoleShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub enum Target {
    Stdout,
    File(File),
}

struct ConsoleQueue {
    bytes: std::collections::VecDeque<u8>,
    dropped: u64,
    /// The writer is in a write (the bytes it took are not out yet).
    writing: bool,
    closed: bool,
}

struct ConsoleShared {
    queue: Mutex<ConsoleQueue>,
    changed: std::sync::Condvar,
}

impl ConsoleShared {
    fn lock(&self) -> MutexGuard<'_, ConsoleQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Bytes the queue holds while the output does not drain; beyond them output is dropped.
const CONSOLE_QUEUE: usize = 1 << 20;
/// How long the end of a run waits for the output to drain.
pub const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Console {
    fn start(target: Target) -> Result<Console> {
        let shared = Arc::new(ConsoleShared {
            queue: Mutex::new(ConsoleQueue {
                bytes: std::collections::VecDeque::new(),
                dropped: 0,
                writing: false,
                closed: false,
            }),
            changed: std::sync::Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fluke-console".into())
            .spawn(move || write_out(&s, target))
            .map_err(|source| Error::HostIo {
                what: "console thread",
                source,
            })?;
        Ok(Console {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `bytes` without blocking; what does not fit is dropped and counted.
    fn push(&self, bytes: &[u8]) {
        let mut q = self.shared.lock();
        let room = CONSOLE_QUEUE.saturating_sub(q.bytes.len());
        let (kept, dropped) = bytes.split_at(bytes.len().min(room));
        q.bytes.extend(kept);
        q.dropped += dropped.len() as u64;
        self.shared.changed.notify_all();
    }

    /// Waits up to `limit` for everything queued to be written; returns the bytes dropped
    /// and the bytes still not written.
    pub fn drain(&self, limit: std::time::Duration) -> (u64, usize) {
        let deadline = std::time::Instant::now() + limit;
        let mut q = self.shared.lock();
        while !q.bytes.is_empty() || q.writing {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            q = match self.shared.changed.wait_timeout(q, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        (q.dropped, q.bytes.len())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let (_, left) = self.drain(DRAIN_WAIT);
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if left == 0 {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        // Otherwise the writer is stuck in a write: it is left behind (the process ends).
    }
}

fn write_out(shared: &ConsoleShared, mut target: Target) {
    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
    let mut chunk = Vec::new();
    let mut failed = false;
    loop {
        {
            let mut q = shared.lock();
            q.writing = false;
            shared.changed.notify_all();
            while q.bytes.is_empty() && !q.closed {
                q = match shared.changed.wait(q) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            if q.bytes.is_empty() {
                return; // closed and drained
            }
            chunk.clear();
            let n = q.bytes.len().min(64 * 1024);
            chunk.extend(q.bytes.drain(..n));
            q.writing = true;
        }
        let res = match &mut target {
            Target::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&chunk).and_then(|_| out.flush())
            }
            Target::File(f) => f.write_all(&chunk),
        };
        if let Err(e) = res {
            if !failed {
                log::warn!("serial output lost: {e}");
            }
            failed = true;
        }
    }
}

/// Flush when this much output is pending even without a newline.
const SINK_BUFFER: usize = 4096;

/// A line-buffered serial output.
pub struct Sink {
    output: Output,
    pending: Vec<u8>,
    /// Watches what the guest writes for fault reports (whatever the output).
    reports: crate::debuginfo::ReportScanner,
}

impl Sink {
    pub fn new(output: Output) -> Sink {
        Sink {
            output,
            pending: Vec::with_capacity(SINK_BUFFER),
            reports: Default::default(),
        }
    }

    /// Hands everything pending to the writer thread (never blocks).
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Output::Console(c) = &self.output {
            c.push(&self.pending);
        }
        self.pending.clear();
        Ok(())
    }

    /// At the end of a run: waits (at most [`DRAIN_WAIT`]) for the output to be written, and
    /// says what could not be.
    pub fn finish(&mut self) {
        let _ = self.flush_pending();
        if let Output::Console(c) = &self.output {
            let (dropped, left) = c.drain(DRAIN_WAIT);
            if dropped > 0 || left > 0 {
                crate::logger::to_stderr(&format!(
                    "fluke-vmm: warning: serial output: {dropped} bytes dropped and {left} not written (the console was not draining)\n"
                ));
            }
        }
    }
}

impl Sink {
    /// Output that is not searched for fault reports (a program's, on the PV console).
    fn write_unscanned(&mut self, buf: &[u8]) {
        if matches!(self.output, Output::Null) {
            return;
        }
        self.pending.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.pending.len() >= SINK_BUFFER {
            let _ = self.flush_pending();
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reports.feed(buf);
        self.write_unscanned(buf);
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

    /// Console output that bypasses the UART's registers (the paravirtual console): the
    /// same sink, in order with the UART's bytes.
    /// A program's bytes are not searched for fault reports (see
    /// `fluke_abi::ports::pv_console::FROM_PROGRAM`).
    pub fn write_console(&self, bytes: &[u8], source: super::pv_console::Source) {
        let mut uart = lock(&self.uart);
        let sink = uart.writer_mut();
        if source == super::pv_console::Source::Program {
            sink.write_unscanned(bytes);
        } else {
            let _ = sink.write_all(bytes);
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

    /// At the end of a run: the output written, or what was lost reported.
    pub fn finish(&self) {
        lock(&self.uart).writer_mut().finish();
    }

    /// The fault reports the guest printed, and how many more there were than were kept.
    pub fn take_fault_reports(&self) -> (Vec<crate::debuginfo::FaultReport>, u64) {
        lock(&self.uart).writer_mut().reports.take()
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
        // The writer thread writes the full line; the end of the run the partial one too.
        dev.finish();
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
