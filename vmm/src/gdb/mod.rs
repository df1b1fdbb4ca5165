//! A gdb stub for the guest kernel (`run --gdb unix:PATH|tcp:127.0.0.1:PORT [--gdb-wait]`),
//! with the `gdbstub` crate's protocol state machine and `gdbstub_arch`'s x86-64 registers.
//!
//! Two threads, a narrow link between them (vmm/README.md, "gdb stub", says why):
//!
//! - the gdb thread (here) owns the listener, the one client connection at a time and the
//!   protocol. Its [`ProxyTarget`] turns each of gdb's register, memory, breakpoint and
//!   resume operations into a [`link::Request`];
//! - the vCPU thread, stopped, serves those requests ([`debuggee::Debuggee`]) and tells
//!   why it stopped: a breakpoint, a step, or a stop the gdb thread asked for (a new
//!   connection, Ctrl-C, `--gdb-wait`).
//!
//! A client that sends garbage, stalls inside a packet for [`PACKET_DEADLINE`], or goes
//! away, ends its session; an ended session always removes every breakpoint, turns guest
//! debugging off and lets the guest run on. The vCPU never waits on the client.

pub mod conn;
pub mod debuggee;
pub mod insn;
pub mod link;
pub mod paging;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gdbstub::common::Signal;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{GdbStubBuilder, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;

use crate::error::{Error, Result};
use conn::{GdbConnection, GdbSpec, Listener};
use link::{BreakpointKind, Event, Link, Reply, Request, RequestError, ResumeMode, StopReason};

/// A packet begun must be whole within this (as the API's requests): a client stalled
/// inside a packet is dropped, and the guest runs on.
pub const PACKET_DEADLINE: Duration = Duration::from_secs(5);
/// How long a new connection waits for the vCPU to stop before it is given up.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the gdb thread, waiting, looks at its stop flag.
const SLICE: Duration = Duration::from_millis(100);
/// gdb's largest packet here is a register write (`G`, 0x218 bytes as hex) or a memory
/// write; 16 KiB leaves room (gdb learns it from qSupported's PacketSize).
const PACKET_BUFFER: usize = 16 * 1024;

/// The gdb thread; stopping (or dropping) it joins the thread and removes a Unix socket.
pub struct GdbServer {
    spec: GdbSpec,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GdbServer {
    /// Binds `spec` and serves it on a new thread.
    pub fn start(spec: GdbSpec, link: Arc<Link>) -> Result<GdbServer> {
        let listener = Listener::bind(&spec)?;
        let where_ = listener.describe(&spec);
        log::info!("gdb: listening on {where_}");
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fluke-gdb".into())
            .spawn(move || serve(&listener, &link, &thread_stop))
            .map_err(|source| Error::HostIo {
                what: "gdb thread",
                source,
            })?;
        Ok(GdbServer {
            spec,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            conn::remove_socket(&self.spec);
        }
    }
}

impl Drop for GdbServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the stub for a VM about to run: the gdb thread listening on `spec`, and the
/// vCPU thread's half to hand to the run loop ([`crate::vcpu::VcpuRunner::attach_debugger`]).
/// With `wait`, the vCPU stops before its first instruction until gdb lets it run.
pub fn start(
    spec: &GdbSpec,
    wait: bool,
    control: &Arc<crate::control::VmControl>,
    vm: &crate::vm::Vm,
    platform: fluke_abi::Platform,
    text: &crate::boot::KernelText,
) -> Result<(GdbServer, debuggee::Debuggee)> {
    let link = Arc::new(
        Link::new(Arc::clone(control), wait).map_err(|source| Error::HostIo {
            what: "gdb event fd",
            source,
        })?,
    );
    // A test hook: KVM_SET_GUEST_DEBUG on kvm_pvm too, whose debug registers and trap flag
    // work in its default mode (the 32-bit entry `--gdb-wait` stops at), so that the
    // hardware-KVM mechanism is exercised on this platform as far as it goes.
    let force_guest_debug = std::env::var_os("FLUKE_GDB_USE_GUEST_DEBUG").is_some();
    let mechanism = match platform {
        fluke_abi::Platform::KvmPvm if !force_guest_debug => debuggee::Mechanism::PatchedOut,
        _ => {
            // KVM_CAP_SET_GUEST_DEBUG2 lists the KVM_GUESTDBG_* flags KVM takes (5.16+).
            let raw = vm
                .fd()
                .check_extension_raw(kvm_bindings::KVM_CAP_SET_GUEST_DEBUG2.into());
            debuggee::Mechanism::GuestDebug {
                supported: u32::try_from(raw).unwrap_or(0),
            }
        }
    };
    log::debug!("gdb: breakpoints and steps by {mechanism:?}");
    let server = GdbServer::start(spec.clone(), Arc::clone(&link))?;
    if wait {
        let target = match spec {
            GdbSpec::Unix(p) => p.display().to_string(),
            GdbSpec::Tcp(a) => a.to_string(),
        };
        crate::logger::to_stderr(&format!(
            "fluke-vmm: waiting for gdb on {spec} before the guest's first instruction (gdb: target remote {target})\n"
        ));
    }
    Ok((
        server,
        debuggee::Debuggee::new(link, mechanism, text.clone()),
    ))
}

/// Waits up to `limit` until one of `fds` is readable; which ones are.
fn poll_readable(fds: &[i32], limit: Duration) -> Vec<bool> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: polls valid pollfds we own for at most `limit`; it writes only `revents`.
    let n = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            limit.as_millis().min(i32::MAX as u128) as libc::c_int,
        )
    };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    pollfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect()
}

fn serve(listener: &Listener, link: &Link, stop: &AtomicBool) {
    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Gdb);
    let stopping = || stop.load(Ordering::Acquire);
    let mut ended = false;
    // A session's breakpoints not yet removed (its release could not stop the vCPU).
    let mut unreleased = false;
    while !stopping() && !ended {
        if unreleased {
            unreleased = !release(link, &stopping);
        }
        let stream = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => {
                poll_readable(&[listener.raw_fd()], SLICE);
                // Events of no session (the run's end) are looked at between clients.
                while let Some(e) = link.take_event() {
                    ended |= matches!(e, Event::Ended(_));
                }
                continue;
            }
            Err(e) => {
                log::warn!("gdb: accept failed: {e}");
                std::thread::sleep(SLICE);
                continue;
            }
        };
        log::info!("gdb: a client connected");
        let mut touched = false;
        let end = match GdbConnection::new(stream) {
            Ok(conn) => session(conn, link, &stopping, &mut touched),
            Err(e) => SessionEnd::Client(format!("cannot set up the connection: {e}")),
        };
        // A request the stopped vCPU could not answer in time is not the run's end.
        let end = match end {
            SessionEnd::VmEnded if !link.has_ended() => {
                SessionEnd::Client("the vCPU could not be stopped".into())
            }
            other => other,
        };
        match &end {
            SessionEnd::VmEnded => ended = true,
            SessionEnd::Detached => log::info!("gdb: the client detached"),
            SessionEnd::Client(why) => log::warn!("gdb: session ended: {why}"),
            SessionEnd::Stopping => {}
        }
        // A session that never stopped the vCPU left nothing to undo, unless the vCPU
        // waits from the start (`--gdb-wait`): then it is released too.
        if !ended && (touched || link.vcpu_stopped()) {
            unreleased = !release(link, &stopping);
        }
    }
}

enum SessionEnd {
    /// gdb detached (or asked to kill, which is a detach here: the VM's end is the guest's).
    Detached,
    /// The client went away, sent what is not gdb's protocol, or was too slow.
    Client(String),
    VmEnded,
    /// The VMM is shutting down.
    Stopping,
}

/// After a session: breakpoints out, guest debugging off, the guest running. False if
/// the vCPU could not be stopped for it (paused through the API): to be tried again.
fn release(link: &Link, stopping: &dyn Fn() -> bool) -> bool {
    if !stop_vcpu(link, stopping) {
        return link.has_ended();
    }
    match link.call(Request::Detach) {
        Ok(_) | Err(RequestError::Ended) => true,
        Err(e) => {
            log::warn!("gdb: releasing the guest: {e}");
            false
        }
    }
}

/// Makes sure the vCPU is stopped (asking if need be). False if the run ended, the VMM is
/// stopping, or the vCPU did not stop within [`STOP_TIMEOUT`].
fn stop_vcpu(link: &Link, stopping: &dyn Fn() -> bool) -> bool {
    // Earlier stops (`--gdb-wait`'s) are this session's starting point, not news for it.
    while let Some(e) = link.take_event() {
        if matches!(e, Event::Ended(_)) {
            return false;
        }
    }
    if link.vcpu_stopped() {
        return true;
    }
    link.request_stop();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && !stopping() {
        match link.wait_event(SLICE) {
            Some(Event::Stopped(_)) => return true,
            Some(Event::Ended(_)) => return false,
            None => {}
        }
    }
    // Not answered (the VM is paused through the API, or the VMM is stopping): the request
    // is withdrawn, so that the vCPU does not stop for it later with no one to serve it.
    if link.withdraw_stop() {
        return true;
    }
    if !stopping() {
        log::warn!(
            "gdb: the vCPU did not stop within {STOP_TIMEOUT:?} (is the VM paused through the API?)"
        );
    }
    false
}

/// Tracks whether the bytes so far end inside a packet (`$...#xx`), and since when.
#[derive(Default)]
struct PacketClock {
    state: u8,
    since: Option<Instant>,
}

impl PacketClock {
    fn byte(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (0, b'$') => {
                self.since = Some(Instant::now());
                1
            }
            (0, _) => 0,
            (1, b'#') => 2,
            (1, _) => 1,
            (2, _) => 3,
            _ => {
                self.since = None;
                0
            }
        };
    }

    fn overdue(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() > PACKET_DEADLINE)
    }
}

fn stop_for_gdb(reason: StopReason) -> SingleThreadStopReason<u64> {
    match reason {
        StopReason::Requested => SingleThreadStopReason::Signal(Signal::SIGINT),
        StopReason::SoftwareBreakpoint => SingleThreadStopReason::SwBreak(()),
        StopReason::HardwareBreakpoint => SingleThreadStopReason::HwBreak(()),
        StopReason::StepDone => SingleThreadStopReason::DoneStep,
        StopReason::StepRefused(_) => SingleThreadStopReason::Signal(Signal::SIGILL),
    }
}

/// One client's session. The vCPU is stopped only once gdb asks for something of it
/// (registers, memory, a breakpoint), so a client that never speaks gdb's protocol ends
/// without the guest having paused. `touched` says whether it was stopped.
fn session(
    conn: GdbConnection,
    link: &Link,
    stopping: &dyn Fn() -> bool,
    touched: &mut bool,
) -> SessionEnd {
    let fd = conn.raw_fd();
    let mut target = ProxyTarget {
        link,
        stopping,
        touched,
    };
    let mut buffer = vec![0u8; PACKET_BUFFER];
    let stub = match GdbStubBuilder::new(conn)
        .with_packet_buffer(&mut buffer)
        .build()
    {
        Ok(s) => s,
        Err(e) => return SessionEnd::Client(format!("gdbstub: {e:?}")),
    };
    let mut machine = match stub.run_state_machine(&mut target) {
        Ok(m) => m,
        Err(e) => return end_on(e),
    };
    let mut clock = PacketClock::default();
    let mut input = std::collections::VecDeque::<u8>::new();
    let mut chunk = [0u8; 4096];
    loop {
        if stopping() {
            return SessionEnd::Stopping;
        }
        if clock.overdue() {
            return SessionEnd::Client(format!(
                "a packet was not whole within {PACKET_DEADLINE:?}"
            ));
        }
        machine = match machine {
            GdbStubStateMachine::Idle(mut gdb) => {
                if input.is_empty() {
                    let ready = poll_readable(&[fd, link.event_fd().as_raw_fd()], SLICE);
                    if ready[1] {
                        // The run's end (the vCPU is not stopped before gdb asks); a stop
                        // here is `--gdb-wait`'s, this session's starting point.
                        while let Some(e) = link.take_event() {
                            if matches!(e, Event::Ended(_)) {
                                return SessionEnd::VmEnded;
                            }
                        }
                    }
                    if !ready[0] {
                        machine = gdb.into();
                        continue;
                    }
                    match gdb.borrow_conn().read_available(&mut chunk) {
                        Ok(0) => return SessionEnd::Client("the client went away".into()),
                        Ok(n) => input.extend(&chunk[..n]),
                        Err(e) => return SessionEnd::Client(format!("reading: {e}")),
                    }
                }
                let Some(byte) = input.pop_front() else {
                    machine = gdb.into();
                    continue;
                };
                clock.byte(byte);
                match gdb.incoming_data(&mut target, byte) {
                    Ok(m) => m,
                    Err(e) => return end_on(e),
                }
            }
            GdbStubStateMachine::Running(mut gdb) => {
                if let Some(event) = link.take_event() {
                    match event {
                        Event::Stopped(reason) => {
                            if let StopReason::StepRefused(why) = &reason {
                                log::warn!("gdb: step refused: {why}");
                            }
                            match gdb.report_stop(&mut target, stop_for_gdb(reason)) {
                                Ok(m) => m,
                                Err(e) => return end_on(e),
                            }
                        }
                        Event::Ended(status) => {
                            let why = match status {
                                Some(s) => SingleThreadStopReason::Exited(s),
                                None => SingleThreadStopReason::Terminated(Signal::SIGKILL),
                            };
                            let _ = gdb.report_stop(&mut target, why);
                            return SessionEnd::VmEnded;
                        }
                    }
                } else if !input.is_empty() {
                    let byte = input.pop_front().unwrap_or_default();
                    clock.byte(byte);
                    match gdb.incoming_data(&mut target, byte) {
                        Ok(m) => m,
                        Err(e) => return end_on(e),
                    }
                } else {
                    let ready = poll_readable(&[fd, link.event_fd().as_raw_fd()], SLICE);
                    if ready[0] {
                        match gdb.borrow_conn().read_available(&mut chunk) {
                            Ok(0) => return SessionEnd::Client("the client went away".into()),
                            Ok(n) => input.extend(&chunk[..n]),
                            Err(e) => return SessionEnd::Client(format!("reading: {e}")),
                        }
                    }
                    gdb.into()
                }
            }
            GdbStubStateMachine::CtrlCInterrupt(gdb) => {
                if !stop_vcpu(link, stopping) {
                    return SessionEnd::VmEnded;
                }
                match gdb.interrupt_handled(
                    &mut target,
                    Some(SingleThreadStopReason::Signal(Signal::SIGINT)),
                ) {
                    Ok(m) => m,
                    Err(e) => return end_on(e),
                }
            }
            GdbStubStateMachine::Disconnected(gdb) => {
                if let gdbstub::stub::DisconnectReason::Kill = gdb.get_reason() {
                    log::warn!("gdb: kill is a detach here: the guest runs on to its own end");
                }
                return SessionEnd::Detached;
            }
        };
    }
}

use std::os::fd::AsRawFd as _;

fn end_on<E: std::fmt::Debug, C: std::fmt::Debug>(
    e: gdbstub::stub::GdbStubError<E, C>,
) -> SessionEnd {
    if e.is_target_error() {
        // The only fatal target error: the run ended under a request.
        return SessionEnd::VmEnded;
    }
    SessionEnd::Client(format!(
        "not gdb's protocol, or the connection failed: {e:?}"
    ))
}

/// gdbstub's target: every operation is a request to the stopped vCPU (stopped at the
/// first one).
struct ProxyTarget<'a> {
    link: &'a Link,
    stopping: &'a dyn Fn() -> bool,
    touched: &'a mut bool,
}

/// The one fatal error: the run ended while gdb was asking something.
#[derive(Debug)]
pub struct VmEnded;

impl ProxyTarget<'_> {
    fn call(&mut self, request: Request) -> std::result::Result<Reply, TargetError<VmEnded>> {
        if !self.link.vcpu_stopped() {
            *self.touched = true;
            if !stop_vcpu(self.link, self.stopping) {
                if self.link.has_ended() || (self.stopping)() {
                    return Err(TargetError::Fatal(VmEnded));
                }
                // Held elsewhere (paused through the API): gdb sees this operation fail.
                return Err(TargetError::Errno(libc::EBUSY as u8));
            }
        }
        *self.touched = true;
        match self.link.call(request) {
            Ok(reply) => Ok(reply),
            Err(RequestError::Ended) => Err(TargetError::Fatal(VmEnded)),
            // The vCPU logged why; gdb shows an error for the operation.
            Err(RequestError::Refused(_)) => Err(TargetError::Errno(libc::EFAULT as u8)),
        }
    }

    fn breakpoint(&mut self, request: Request) -> TargetResult<bool, Self> {
        match self.call(request) {
            Ok(_) => Ok(true),
            Err(TargetError::Fatal(e)) => Err(TargetError::Fatal(e)),
            Err(_) => Ok(false),
        }
    }

    fn resume(&mut self, mode: ResumeMode) -> std::result::Result<(), VmEnded> {
        match self.call(Request::Resume(mode)) {
            Err(TargetError::Fatal(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

impl Target for ProxyTarget<'_> {
    type Arch = X86_64_SSE;
    type Error = VmEnded;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for ProxyTarget<'_> {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        match self.call(Request::ReadRegisters)? {
            Reply::Registers(r) => {
                *regs = *r;
                Ok(())
            }
            _ => Err(TargetError::NonFatal),
        }
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
        self.call(Request::WriteRegisters(Box::new(regs.clone())))
            .map(|_| ())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        match self.call(Request::ReadMemory {
            addr: start,
            len: data.len(),
        })? {
            Reply::Memory(bytes) => {
                let n = bytes.len().min(data.len());
                data[..n].copy_from_slice(&bytes[..n]);
                Ok(n)
            }
            _ => Err(TargetError::NonFatal),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        self.call(Request::WriteMemory {
            addr: start,
            data: data.to_vec(),
        })
        .map(|_| ())
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for ProxyTarget<'_> {
    fn resume(&mut self, signal: Option<Signal>) -> std::result::Result<(), VmEnded> {
        if let Some(s) = signal {
            log::debug!("gdb: continue with signal {s}: signals are not delivered to the guest");
        }
        ProxyTarget::resume(self, ResumeMode::Continue)
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for ProxyTarget<'_> {
    fn step(&mut self, _signal: Option<Signal>) -> std::result::Result<(), VmEnded> {
        ProxyTarget::resume(self, ResumeMode::Step)
    }
}

impl Breakpoints for ProxyTarget<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for ProxyTarget<'_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoint(Request::AddBreakpoint {
            addr,
            kind: BreakpointKind::Software,
        })
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoint(Request::RemoveBreakpoint {
            addr,
            kind: BreakpointKind::Software,
        })
    }
}

impl HwBreakpoint for ProxyTarget<'_> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoint(Request::AddBreakpoint {
            addr,
            kind: BreakpointKind::Hardware,
        })
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoint(Request::RemoveBreakpoint {
            addr,
            kind: BreakpointKind::Hardware,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_clock_runs_only_inside_a_packet() {
        let mut c = PacketClock::default();
        for &b in b"+garbage" {
            c.byte(b);
        }
        assert!(c.since.is_none());
        for &b in b"$m1234,4#" {
            c.byte(b);
        }
        assert!(c.since.is_some());
        c.byte(b'a');
        assert!(c.since.is_some());
        c.byte(b'b');
        assert!(c.since.is_none());
        assert!(!c.overdue());
    }
}
