//! Where gdb connects (`--gdb unix:PATH|tcp:127.0.0.1:PORT`) and the connection the stub
//! talks on: written through a buffer flushed once per reply, with a write timeout, so a
//! client that stops reading cannot hold the gdb thread for long.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// How long a reply may take to be written to a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GdbSpec {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl GdbSpec {
    /// `unix:PATH` or `tcp:ADDR:PORT` with a loopback ADDR: the stub gives whoever connects
    /// the whole guest, so it is not offered beyond this machine.
    pub fn parse(spec: &str) -> Result<GdbSpec> {
        let bad = |reason: &str| Error::InvalidGdbSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the path is empty"));
            }
            return Ok(GdbSpec::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = spec.strip_prefix("tcp:") {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| bad("not an IP address and port, e.g. tcp:127.0.0.1:1234"))?;
            if !addr.ip().is_loopback() {
                return Err(bad(
                    "only a loopback address is allowed (whoever connects controls the guest)",
                ));
            }
            return Ok(GdbSpec::Tcp(addr));
        }
        Err(bad("it must start with unix: or tcp:"))
    }
}

impl std::fmt::Display for GdbSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GdbSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            GdbSpec::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds the spec's socket (a Unix path must not exist yet), non-blocking.
    pub fn bind(spec: &GdbSpec) -> Result<Listener> {
        let listen_err = |source| Error::GdbListen {
            spec: spec.to_string(),
            source,
        };
        let listener = match spec {
            GdbSpec::Unix(path) => {
                if path.symlink_metadata().is_ok() {
                    return Err(Error::GdbSocketExists { path: path.clone() });
                }
                Listener::Unix(crate::listen::bind_listening(path).map_err(listen_err)?)
            }
            GdbSpec::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).map_err(listen_err)?),
        };
        match &listener {
            Listener::Unix(l) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        }
        .map_err(listen_err)?;
        Ok(listener)
    }

    /// What it listens on (a TCP port 0 becomes the port chosen).
    pub fn describe(&self, spec: &GdbSpec) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|_| spec.to_string()),
            Listener::Unix(_) => spec.to_string(),
        }
    }

    /// A waiting client, if any.
    pub fn accept(&self) -> io::Result<Option<Stream>> {
        let accepted = match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                // gdb's packets are small and each waits for its answer.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        };
        match accepted {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn set_blocking_with_write_timeout(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))
            }
            Stream::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The stub's side of one client connection.
pub struct GdbConnection {
    stream: Stream,
    out: Vec<u8>,
}

/// A reply larger than this is written out before it is complete (a big `m` answer).
const OUT_CHUNK: usize = 64 * 1024;

impl GdbConnection {
    pub fn new(stream: Stream) -> io::Result<GdbConnection> {
        stream.set_blocking_with_write_timeout()?;
        Ok(GdbConnection {
            stream,
            out: Vec::with_capacity(4096),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.stream.raw_fd()
    }

    /// Reads what has arrived (call when poll says the socket is readable): Ok(0) is the
    /// client gone.
    pub fn read_available(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.io().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let written = self.stream.io().write_all(&out);
        self.out = out;
        self.out.clear();
        written
    }
}

impl gdbstub::conn::Connection for GdbConnection {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.out.push(byte);
        if self.out.len() >= OUT_CHUNK {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(buf);
        if self.out.len() >= OUT_CHUNK {
            self.write_out()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.stream.io().flush()
    }
}

/// Removes a Unix socket path when the server ends.
pub fn remove_socket(spec: &GdbSpec) {
    if let GdbSpec::Unix(path) = spec {
        let _ = std::fs::remove_file(Path::new(path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            GdbSpec::parse("unix:/tmp/g.sock").unwrap(),
            GdbSpec::Unix("/tmp/g.sock".into())
        );
        assert_eq!(
            GdbSpec::parse("tcp:127.0.0.1:1234").unwrap(),
            GdbSpec::Tcp("127.0.0.1:1234".parse().unwrap())
        );
        assert!(GdbSpec::parse("tcp:[::1]:1234").is_ok());
        for (bad, why) in [
            ("", "unix: or tcp:"),
            ("/tmp/g.sock", "unix: or tcp:"),
            ("unix:", "empty"),
            ("tcp:localhost:1234", "IP address"),
            ("tcp:127.0.0.1", "IP address"),
            ("tcp:0.0.0.0:1234", "loopback"),
            ("tcp:10.1.2.3:1234", "loopback"),
        ] {
            let e = GdbSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
