//! `--channel path=SOCKET`: a shared-memory channel between this VM and another fluke-vmm's
//! (issue 15). The guest's view is `fluke_abi::channel`; this is the host side.
//!
//! **Rendezvous** ([`rendezvous`], before the VM is built). The first VMM to come finds no
//! socket at SOCKET, creates the channel's memfd (sealed against resizing) and two eventfds,
//! and listens there (bound under a hidden name and renamed into place, so the path appears
//! only once it listens: `crate::listen`). Its guest boots at once with PEER reading 0 and
//! the shared area mapped. The second VMM connects, receives the three descriptors in one
//! message (SCM_RIGHTS, [`wire`]), checks them (a sealed memfd of the right size, two
//! eventfds; the same version and size), maps and wires them, answers ACK and boots with
//! PEER reading 1. A socket nobody listens on (ECONNREFUSED: its VMM died) is removed if it
//! is a socket, with a warning, and the VMM listens in its place; a path that is not a
//! socket is an error.
//!
//! **Wiring** ([`Rendezvous::attach`]). Each side maps the memfd at its window's shared
//! area as a KVM memory slot of its own, registers its *outgoing* eventfd as an ioeventfd
//! on its DOORBELL register and its *incoming* eventfd as an irqfd on its line. The
//! listener's outgoing eventfd is the connector's incoming one and the other way round, so
//! a doorbell write is caught in the ringing VM's KVM and injected by the other VM's KVM:
//! **no VMM thread is on the data path**.
//!
//! **Liveness** (the channel thread, `fluke-chan<i>`, its own seccomp list). It holds the
//! socket and waits (epoll) for the other VM to come (the listener's accept and
//! handshake) or go (the connection's hang-up: however the other VMM ended, `kill -9`
//! included, the kernel closes its end). Then it sets PEER and INT_PEER_CHANGED and raises
//! the local line by writing the incoming eventfd (the same irqfd the doorbell uses). A third
//! VMM on the socket is answered BUSY. The listener waits for its other VM for the whole
//! run: `--timeout` ends the run as ever, and at the end a VM whose other VM never came
//! says so. The socket file is removed when the listener's VM ends.
//!
//! **Registers** ([`Registers`]): reads are MMIO exits served in the vCPU thread from the
//! state the channel thread keeps.

pub mod wire;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fluke_abi::channel::*;
use fluke_abi::devices::MmioDevice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use self::wire::{Kind, Message, HELLO_FDS};
use super::debug_exit::GuestWarnings;
use super::virtio::{self, RegisterPage};
use crate::error::{strerror, Error, Result};
use crate::seccomp::ThreadKind;
use crate::vm::Vm;

/// How long one side waits for the other's message in the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// One `--channel` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    pub path: PathBuf,
}

impl ChannelSpec {
    /// Parses `path=SOCKET` (a path cannot hold a comma).
    pub fn parse(spec: &str) -> Result<ChannelSpec> {
        let bad = |reason: String| Error::InvalidChannel {
            spec: spec.to_string(),
            reason,
        };
        let mut path = None;
        for (key, value) in crate::devices::spec_options(spec) {
            match (key, value) {
                ("path", Some(v)) if !v.is_empty() => {
                    if path.replace(PathBuf::from(v)).is_some() {
                        return Err(bad("path given twice".into()));
                    }
                }
                ("path", _) => return Err(bad("an empty path".into())),
                ("", None) => return Err(bad("an empty option".into())),
                (other, _) => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        Ok(ChannelSpec {
            path: path.ok_or_else(|| bad("no path=SOCKET".into()))?,
        })
    }

    /// Parses every `--channel`, refusing one socket named twice (the VM would wait for
    /// itself).
    pub fn parse_all(specs: &[String]) -> Result<Vec<ChannelSpec>> {
        let parsed = specs
            .iter()
            .map(|s| ChannelSpec::parse(s))
            .collect::<Result<Vec<_>>>()?;
        for (i, c) in parsed.iter().enumerate() {
            if parsed[..i].iter().any(|o| o.path == c.path) {
                return Err(Error::Channel {
                    path: c.path.clone(),
                    reason: "given twice (a VM cannot be its own other VM)".into(),
                });
            }
        }
        Ok(parsed)
    }
}

/// What the register page and the channel thread share.
#[derive(Debug)]
struct State {
    role: u32,
    peer: AtomicU32,
    status: AtomicU32,
    /// Raises this VM's channel line: the incoming eventfd (the other VM's doorbell).
    line: EventFd,
}

impl State {
    fn peer(&self) -> u32 {
        self.peer.load(Ordering::SeqCst)
    }

    /// PEER becomes `peer`: the status bit first, then the register, then the interrupt, so
    /// a driver woken by it reads both.
    fn set_peer(&self, peer: u32) {
        self.status.fetch_or(INT_PEER_CHANGED, Ordering::SeqCst);
        self.peer.store(peer, Ordering::SeqCst);
        if let Err(e) = self.line.write(1) {
            log::warn!("channel: cannot raise the guest's channel line: {e}");
        }
    }
}

/// A channel's register page, served in the vCPU thread.
pub struct Registers {
    state: Arc<State>,
    /// The outgoing eventfd, for a doorbell that reaches the VMM as an exit.
    doorbell: EventFd,
    warnings: GuestWarnings,
}

impl RegisterPage for Registers {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(word) = <&mut [u8; 4]>::try_from(data) else {
            return;
        };
        let value = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_SHARED_SIZE => SHARED_SIZE as u32,
            REG_ROLE => self.state.role,
            REG_PEER => self.state.peer(),
            REG_INTERRUPT_STATUS => self.state.status.load(Ordering::SeqCst),
            _ => 0,
        };
        *word = value.to_le_bytes();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == REG_DOORBELL {
            // KVM's ioeventfd takes every doorbell write; one that exits is passed on.
            log::debug!("channel: a doorbell reached the VMM as an MMIO exit");
            if let Err(e) = self.doorbell.write(1) {
                log::warn!("channel: cannot pass on a doorbell: {e}");
            }
            return;
        }
        match (offset, <[u8; 4]>::try_from(data)) {
            (REG_INTERRUPT_ACK, Ok(word)) => {
                let bits = u32::from_le_bytes(word);
                self.state.status.fetch_and(!bits, Ordering::SeqCst);
            }
            _ => self.warnings.warn(format_args!(
                "channel: guest write of {} bytes {data:02x?} to register {offset:#x} ignored",
                data.len()
            )),
        }
    }
}

/// The socket file a listener made, removed when the VM ends if it is still the same file.
struct SocketFile {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl SocketFile {
    fn new(path: &Path) -> SocketFile {
        SocketFile {
            path: path.to_path_buf(),
            id: std::fs::symlink_metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino())),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

enum Link {
    /// The listener: its socket, waiting for the other VM.
    Listening(UnixListener, SocketFile),
    /// The connector: its connection to the listener.
    Connected(UnixStream),
}

/// A channel after the rendezvous, before the VM is wired to it.
pub struct Rendezvous {
    path: PathBuf,
    memfd: File,
    /// This VM's doorbell: written by KVM when the guest rings, read by the other VM's irqfd.
    outgoing: EventFd,
    /// The other VM's doorbell: this VM's irqfd.
    incoming: EventFd,
    link: Link,
}

/// Joins the channel at `spec.path`: listens there if no VMM does, else connects and takes
/// the listener's offer.
pub fn rendezvous(spec: &ChannelSpec) -> Result<Rendezvous> {
    let path = &spec.path;
    let fail = |reason: String| Error::Channel {
        path: path.clone(),
        reason,
    };
    // A few rounds: another VMM may bind, or remove a stale socket, between our steps.
    for _ in 0..8 {
        match UnixStream::connect(path) {
            Ok(stream) => return connect_side(path, stream),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match crate::listen::bind_listening(path) {
                    Ok(listener) => return listen_side(path, listener),
                    // Another VMM began listening meanwhile: connect to it.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                    Err(e) => return Err(fail(format!("cannot listen there: {}", strerror(&e)))),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                // Only one VMM at a time removes a stale socket and listens in its place
                // (a lock on the socket's directory), and it tries the socket again under
                // the lock: else a second VMM could remove the live socket the first just
                // put there, and each would listen alone.
                let _lock = match DirLock::take(path) {
                    Ok(l) => l,
                    Err(e) => {
                        return Err(fail(format!("cannot lock its directory: {}", strerror(&e))))
                    }
                };
                match UnixStream::connect(path) {
                    Ok(stream) => {
                        // Its handshake needs no lock (and may take 5 s).
                        drop(_lock);
                        return connect_side(path, stream);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                    Err(_) => continue,
                }
                let meta = match std::fs::symlink_metadata(path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(fail(format!("cannot examine it: {}", strerror(&e)))),
                };
                if !meta.file_type().is_socket() {
                    return Err(fail("the path exists and is not a socket".into()));
                }
                log::warn!(
                    "--channel {}: removing a stale socket (no VMM listens on it any more); this VM listens in its place",
                    path.display()
                );
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(fail(format!(
                            "cannot remove the stale socket: {}",
                            strerror(&e)
                        )))
                    }
                }
                match crate::listen::bind_listening(path) {
                    Ok(listener) => return listen_side(path, listener),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                    Err(e) => return Err(fail(format!("cannot listen there: {}", strerror(&e)))),
                }
            }
            Err(e) => return Err(fail(format!("cannot connect: {}", strerror(&e)))),
        }
    }
    Err(fail(
        "the path kept changing while this VMM tried to join (other VMMs racing for it?)".into(),
    ))
}

/// An exclusive flock on the directory holding a socket path, released when dropped (the
/// descriptor is held only for that).
struct DirLock {
    _held: File,
}

impl DirLock {
    fn take(path: &Path) -> std::io::Result<DirLock> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let f = File::open(dir)?;
        // SAFETY: flock on a descriptor this function owns; no pointer argument.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DirLock { _held: f })
    }
}

fn listen_side(path: &Path, listener: UnixListener) -> Result<Rendezvous> {
    let socket = SocketFile::new(path);
    let host = |e: std::io::Error| Error::Channel {
        path: path.to_path_buf(),
        reason: format!(
            "cannot set up the shared memory or doorbells: {}",
            strerror(&e)
        ),
    };
    listener.set_nonblocking(true).map_err(host)?;
    let memfd = wire::create_memfd(SHARED_SIZE).map_err(host)?;
    let outgoing = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(host)?;
    let incoming = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(host)?;
    log::info!(
        "--channel {}: listening; the guest boots while it waits for the other VM",
        path.display()
    );
    Ok(Rendezvous {
        path: path.to_path_buf(),
        memfd,
        outgoing,
        incoming,
        link: Link::Listening(listener, socket),
    })
}

fn connect_side(path: &Path, stream: UnixStream) -> Result<Rendezvous> {
    let peer = |reason: String| Error::ChannelPeer {
        path: path.to_path_buf(),
        reason,
    };
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| peer(format!("cannot be waited for: {}", strerror(&e))))?;
    let mut buf = [0u8; 64];
    let mut raw: [RawFd; HELLO_FDS] = [-1; HELLO_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the one iovec points at `buf`, which lives across the call and may hold any
    // bytes; the descriptors received are taken over below, each exactly once.
    let received = unsafe { stream.recv_with_fds(&mut iov, &mut raw) };
    let (len, nfds) = match received {
        Ok(r) => r,
        Err(e) if e.errno() == libc::EAGAIN => {
            return Err(peer(format!(
                "did not answer within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )))
        }
        Err(e) if e.errno() == libc::ENOBUFS => {
            return Err(peer(format!(
                "sent more than the {HELLO_FDS} descriptors of a channel offer"
            )))
        }
        Err(e) => return Err(peer(format!("cannot be read from: {e}"))),
    };
    let fds: Vec<OwnedFd> = raw[..nfds.min(HELLO_FDS)]
        .iter()
        // SAFETY: recvmsg gave this process these `nfds` new descriptors, owned by no one
        // else; each is wrapped once, so each is closed once. (Each is then marked
        // close-on-exec: recvmsg gave them without it.)
        .map(|&fd| unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            OwnedFd::from_raw_fd(fd)
        })
        .collect();
    if len == 0 {
        return Err(peer("closed the socket without a word".into()));
    }
    let msg = Message::decode(&buf[..len]).map_err(peer)?;
    match msg.kind {
        Kind::Hello => {}
        Kind::Busy => {
            return Err(Error::Channel {
                path: path.to_path_buf(),
                reason: "the channel already joins two VMs (or its listener's other VM has ended)"
                    .into(),
            })
        }
        Kind::Ack | Kind::Joined => {
            return Err(peer(format!(
                "answered {:?} where its offer belongs",
                msg.kind
            )))
        }
    }
    msg.check_compatible().map_err(peer)?;
    let Ok([memfd, to_us, to_them]) = <[OwnedFd; HELLO_FDS]>::try_from(fds) else {
        return Err(peer(format!(
            "sent {nfds} descriptors with its offer, not {HELLO_FDS}"
        )));
    };
    let memfd = File::from(memfd);
    wire::check_memfd(&memfd, SHARED_SIZE).map_err(peer)?;
    wire::check_eventfd(to_us.as_raw_fd(), "doorbell").map_err(peer)?;
    wire::check_eventfd(to_them.as_raw_fd(), "doorbell").map_err(peer)?;
    let eventfd = |fd: OwnedFd| {
        // SAFETY: `fd` is an eventfd (checked above) this process owns; EventFd takes sole
        // ownership of it.
        unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) }
    };
    // The offer is good: say so at once. The listener closes its channel if the answer does
    // not come within 5 s (the descriptors are out), and what this VMM does next (its other
    // channels, the VM, the drives) may take longer; the JOINED it answers with is read
    // before the guest starts (`attach`).
    let mut stream = stream;
    stream
        .write_all(&Message::ours(Kind::Ack).encode())
        .map_err(|e| peer(format!("cannot be answered: {}", strerror(&e))))?;
    log::info!("--channel {}: joined the other VM", path.display());
    Ok(Rendezvous {
        path: path.to_path_buf(),
        memfd,
        // The listener sends [memfd, listener->connector, connector->listener].
        outgoing: eventfd(to_them),
        incoming: eventfd(to_us),
        link: Link::Connected(stream),
    })
}

/// The user id of the process at the other end of `s` (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live local of that size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// This process's effective user id (what SO_PEERCRED reports of the other end, too).
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The listener's JOINED, within the handshake's time (the stream's read timeout).
fn await_joined(s: &mut UnixStream) -> std::result::Result<(), String> {
    let mut buf = [0u8; wire::MESSAGE_BYTES];
    match s.read_exact(&mut buf) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!(
                "did not confirm the join within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("closed the socket before confirming the join".into())
        }
        Err(e) => return Err(format!("cannot be read from: {}", strerror(&e))),
    }
    let m = Message::decode(&buf)?;
    match m.kind {
        Kind::Joined => m.check_compatible(),
        other => Err(format!("answered {other:?} where JOINED belongs")),
    }
}

impl Rendezvous {
    /// Makes the channel device `index` of `vm`: its shared area mapped, its doorbell and
    /// line wired, its thread started; a connector then tells the listener it is in.
    /// Returns the window and its register page, and the running channel.
    pub fn attach(self, vm: &mut Vm, index: usize) -> Result<(MmioDevice, Registers, Channel)> {
        let Rendezvous {
            path,
            memfd,
            outgoing,
            incoming,
            link,
        } = self;
        let host = |e: std::io::Error| Error::Channel {
            path: path.clone(),
            reason: format!("cannot set up the channel: {}", strerror(&e)),
        };
        let slot = virtio::slot(index);
        let mapped = memfd.try_clone().map_err(host)?;
        vm.add_shared_memory(slot.base + SHARED_OFFSET, SHARED_SIZE, mapped)?;
        vm.register_mmio_doorbell(&outgoing, slot.base + REG_DOORBELL)?;
        vm.register_irqfd(&incoming, slot.irq)?;
        let (role, peer, socket, listener, stream) = match link {
            Link::Listening(l, socket) => {
                (ROLE_LISTENER, PEER_WAITING, Some(socket), Some(l), None)
            }
            Link::Connected(mut s) => {
                let peer = |reason: String| Error::ChannelPeer {
                    path: path.clone(),
                    reason,
                };
                // The ACK went in `connect_side`. The guest starts only once the listener's
                // PEER reads 1 (JOINED), so it never sees the other guest's stores while the
                // other's PEER says 0.
                await_joined(&mut s).map_err(peer)?;
                (ROLE_CONNECTOR, PEER_CONNECTED, None, None, Some(s))
            }
        };
        let state = Arc::new(State {
            role,
            peer: AtomicU32::new(peer),
            status: AtomicU32::new(0),
            line: incoming.try_clone().map_err(host)?,
        });
        let offer = match listener {
            Some(_) => Some(Offer {
                memfd,
                outgoing: outgoing.try_clone().map_err(host)?,
                incoming: incoming.try_clone().map_err(host)?,
            }),
            None => None,
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(host)?;
        let name = path.display().to_string();
        let thread = Watcher {
            name: name.clone(),
            state: Arc::clone(&state),
            listener,
            peer: stream,
            offer,
            stop: stop.try_clone().map_err(host)?,
            warnings: 0,
        };
        let handle = thread.spawn(index).map_err(host)?;
        log::debug!(
            "channel {index} ({name}): role {role} at {:#x}, line {}",
            slot.base,
            slot.irq
        );
        Ok((
            slot,
            Registers {
                state: Arc::clone(&state),
                doorbell: outgoing,
                warnings: GuestWarnings::default(),
            },
            Channel {
                name,
                state,
                stop,
                handle: Some(handle),
                _socket: socket,
            },
        ))
    }
}

/// A running channel; [`Channel::stop`] (or dropping it) stops its thread.
pub struct Channel {
    name: String,
    state: Arc<State>,
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
    /// The listener's socket file, removed when this goes.
    _socket: Option<SocketFile>,
}

impl Channel {
    /// Stops the thread (the end of the run) and says if the other VM never came.
    pub fn stop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            log::warn!("channel {}: cannot stop its thread: {e}", self.name);
            return;
        }
        let _ = handle.join();
        if self.state.peer() == PEER_WAITING {
            log::warn!(
                "channel {}: no other VM came during the run (the guest read PEER 0 throughout)",
                self.name
            );
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the listener hands each VM that joins.
struct Offer {
    memfd: File,
    outgoing: EventFd,
    incoming: EventFd,
}

const STOP: u64 = 0;
const LISTENER: u64 = 1;
const PEER: u64 = 2;

/// Warnings about what other processes send on the socket, limited as the guest's are.
const PEER_WARNINGS_SHOWN: u32 = 10;

/// The channel thread's state.
struct Watcher {
    name: String,
    state: Arc<State>,
    listener: Option<UnixListener>,
    peer: Option<UnixStream>,
    offer: Option<Offer>,
    stop: EventFd,
    warnings: u32,
}

impl Watcher {
    fn spawn(self, index: usize) -> std::io::Result<JoinHandle<()>> {
        let epoll = Epoll::new()?;
        let handshake = Epoll::new()?;
        let watch = |ep: &Epoll, fd: RawFd, token: u64| {
            ep.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
            )
        };
        watch(&epoll, self.stop.as_raw_fd(), STOP)?;
        watch(&handshake, self.stop.as_raw_fd(), STOP)?;
        if let Some(l) = &self.listener {
            watch(&epoll, l.as_raw_fd(), LISTENER)?;
        }
        if let Some(s) = &self.peer {
            watch(&epoll, s.as_raw_fd(), PEER)?;
        }
        std::thread::Builder::new()
            .name(format!("fluke-chan{index}"))
            .spawn(move || {
                crate::seccomp::confine_or_exit(ThreadKind::Channel);
                self.run(&epoll, &handshake);
            })
    }

    fn warn(&mut self, message: std::fmt::Arguments) {
        self.warnings = self.warnings.saturating_add(1);
        if self.warnings <= PEER_WARNINGS_SHOWN {
            log::warn!("channel {}: {message}", self.name);
        } else if self.warnings == PEER_WARNINGS_SHOWN + 1 {
            log::warn!(
                "channel {}: {message} (further such warnings are not shown)",
                self.name
            );
        }
    }

    fn run(mut self, epoll: &Epoll, handshake: &Epoll) {
        let mut ready = [EpollEvent::default(); 3];
        loop {
            let n = match epoll.wait(-1, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("channel {}: epoll_wait failed ({e}); the channel thread stops, PEER no longer changes", self.name);
                    return;
                }
            };
            for event in &ready[..n] {
                match event.data() {
                    STOP => return,
                    LISTENER if !self.accept(epoll, handshake) => return,
                    PEER => self.peer_event(epoll),
                    _ => {}
                }
            }
        }
    }

    /// A VMM connected to the listener; false if the thread was told to stop meanwhile.
    fn accept(&mut self, epoll: &Epoll, handshake: &Epoll) -> bool {
        let Some(listener) = &self.listener else {
            return true;
        };
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                self.warn(format_args!("cannot accept a connection: {e}"));
                return true;
            }
        };
        if self.state.peer() != PEER_WAITING {
            // One pair per channel: a third VMM is told so (its own error says it).
            let _ = stream.send_with_fds(&[&Message::ours(Kind::Busy).encode()[..]], &[]);
            return true;
        }
        // The offer is the channel itself (its memory and doorbells): only a process of this
        // VMM's own user gets it. (The socket's directory decides who can connect at all.)
        match peer_uid(&stream) {
            Ok(uid) if uid == current_uid() => {}
            Ok(uid) => {
                self.warn(format_args!(
                    "refused a process of user {uid} that connected (this VMM runs as user {}); still waiting for the other VM",
                    current_uid()
                ));
                return true;
            }
            Err(e) => {
                self.warn(format_args!(
                    "cannot tell who connected ({e}); refused, still waiting for the other VM"
                ));
                return true;
            }
        }
        let Some(offer) = &self.offer else {
            return true;
        };
        let fds = [
            offer.memfd.as_raw_fd(),
            offer.outgoing.as_raw_fd(),
            offer.incoming.as_raw_fd(),
        ];
        if let Err(e) = stream.send_with_fds(&[&Message::ours(Kind::Hello).encode()[..]], &fds) {
            self.warn(format_args!(
                "cannot send the offer to a VMM that connected: {e}"
            ));
            return true;
        }
        // Its answer, within the handshake's time (the stop request still heard).
        let fd = stream.as_raw_fd();
        let watched = handshake.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, PEER),
        );
        if let Err(e) = watched {
            self.warn(format_args!("cannot wait for a VMM that connected: {e}"));
            return true;
        }
        let answer = self.await_answer(handshake, &mut stream);
        let _ = handshake.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let answer = match answer {
            None => return false,
            Some(a) => a,
        };
        match answer.and_then(|m| match m.kind {
            Kind::Ack => m.check_compatible(),
            _ => Err(format!("answered {:?} where ACK belongs", m.kind)),
        }) {
            Ok(()) => {}
            Err(why) => {
                // It holds the shared area and both doorbells now: a VM let in after it
                // would share its memory with that process too. The channel is closed.
                self.offer = None;
                self.state.set_peer(PEER_GONE);
                self.warn(format_args!(
                    "a process that connected took the channel's memory and doorbells and then {why}; the channel admits no other VM (PEER reads 2)"
                ));
                return true;
            }
        }
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, PEER),
        ) {
            self.warn(format_args!("cannot watch the other VM's connection: {e}"));
        }
        self.state.set_peer(PEER_CONNECTED);
        // Only now may the other guest run (it waits for this): a failure to say so is the
        // other VM gone, which its hang-up tells the loop.
        if let Err(e) = stream.send_with_fds(&[&Message::ours(Kind::Joined).encode()[..]], &[]) {
            self.warn(format_args!("cannot confirm the join to the other VM: {e}"));
        }
        self.peer = Some(stream);
        log::info!("channel {}: the other VM joined (PEER reads 1)", self.name);
        true
    }

    /// The joining VMM's answer: `None` if told to stop, else the message or what was
    /// wrong.
    fn await_answer(
        &self,
        handshake: &Epoll,
        stream: &mut UnixStream,
    ) -> Option<std::result::Result<Message, String>> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut ready = [EpollEvent::default(); 2];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(Err(format!(
                    "did not answer within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )));
            }
            let n = match handshake.wait(left.as_millis().max(1) as i32, &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(format!("cannot be waited for: {e}"))),
            };
            if ready[..n].iter().any(|e| e.data() == STOP) {
                return None;
            }
            if n == 0 {
                continue;
            }
            let mut buf = [0u8; 64];
            return Some(match stream.read(&mut buf) {
                Ok(0) => {
                    Err("closed the socket before taking the offer (its own error says why)".into())
                }
                Ok(len) => Message::decode(&buf[..len]),
                Err(e) => Err(format!("cannot be read from: {e}")),
            });
        }
    }

    /// The other VM's connection is readable: it has gone (end of file, an error), or it
    /// sent something, which the protocol has no place for.
    fn peer_event(&mut self, epoll: &Epoll) {
        let Some(stream) = self.peer.as_mut() else {
            return;
        };
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    stream.as_raw_fd(),
                    EpollEvent::default(),
                );
                self.peer = None;
                self.state.set_peer(PEER_GONE);
                log::warn!(
                    "channel {}: the other VM has gone (PEER reads 2); this one carries on",
                    self.name
                );
            }
            Ok(n) => self.warn(format_args!(
                "the other VM sent {n} bytes after the handshake; ignored"
            )),
        }
    }
}

#[cfg(test)]
mod tests;
