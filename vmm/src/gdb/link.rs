//! The link between the gdb thread (which owns the client connection and the protocol) and
//! the vCPU thread (which owns the vCPU, the breakpoints and every access to the guest).
//!
//! The gdb thread asks for a stop ([`Link::request_stop`]: a flag the run loop reads before
//! every KVM_RUN, and the control channel's kick to get the vCPU thread out of KVM_RUN).
//! The vCPU thread, stopped, publishes why ([`Event::Stopped`], with an eventfd the gdb
//! thread polls beside its socket), then serves one [`Request`] at a time until one resumes
//! the guest. Nothing here waits on the client: a slow or hostile client only ever holds the
//! gdb thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use gdbstub_arch::x86::reg::X86_64CoreRegs;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::control::VmControl;

/// What the gdb thread asks of the stopped vCPU.
#[derive(Debug)]
pub enum Request {
    ReadRegisters,
    WriteRegisters(Box<X86_64CoreRegs>),
    ReadMemory {
        addr: u64,
        len: usize,
    },
    WriteMemory {
        addr: u64,
        data: Vec<u8>,
    },
    AddBreakpoint {
        addr: u64,
        kind: BreakpointKind,
    },
    RemoveBreakpoint {
        addr: u64,
        kind: BreakpointKind,
    },
    /// Run on (the stop ends with this request's answer).
    Resume(ResumeMode),
    /// Remove every breakpoint, turn guest debugging off and run on.
    Detach,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakpointKind {
    /// gdb's `break` (Z0).
    Software,
    /// gdb's `hbreak` (Z1).
    Hardware,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeMode {
    Continue,
    Step,
}

#[derive(Debug)]
pub enum Reply {
    Registers(Box<X86_64CoreRegs>),
    Memory(Vec<u8>),
    Done,
}

/// A request the vCPU could not do; `Display` is the line fluke-vmm logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Refused(String),
    #[error("the VM has ended")]
    Ended,
}

pub type Answer = Result<Reply, RequestError>;

/// Why the vCPU stopped, as gdb is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Asked for: by `--gdb-wait` at the first instruction, by a new connection, by Ctrl-C.
    Requested,
    SoftwareBreakpoint,
    HardwareBreakpoint,
    StepDone,
    /// A single step could not be done (kvm_pvm); the guest did not move. Reported to gdb as
    /// SIGILL, with the reason logged.
    StepRefused(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Stopped(StopReason),
    /// The run is over: the guest's exit status, or None (crash, timeout).
    Ended(Option<u8>),
}

#[derive(Default)]
struct State {
    events: VecDeque<Event>,
    request: Option<Request>,
    answer: Option<Answer>,
    vcpu_stopped: bool,
    ended: bool,
}

pub struct Link {
    state: Mutex<State>,
    changed: Condvar,
    /// Read before every KVM_RUN (cheap; set only by the gdb thread or `--gdb-wait`).
    stop_wanted: AtomicBool,
    /// Readable while `events` is not empty (the gdb thread polls it with its socket).
    event_fd: EventFd,
    control: Arc<VmControl>,
}

/// How often a waiting side looks again at what it waits on besides the condvar (the
/// watchdog for the vCPU thread, the end of the run for the gdb thread).
pub const RECHECK: Duration = Duration::from_millis(20);

impl Link {
    pub fn new(control: Arc<VmControl>, wait_at_start: bool) -> std::io::Result<Link> {
        Ok(Link {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop_wanted: AtomicBool::new(wait_at_start),
            event_fd: EventFd::new(EFD_NONBLOCK)?,
            control,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_event(&self, state: &mut State, event: Event) {
        state.events.push_back(event);
        let _ = self.event_fd.write(1);
        self.changed.notify_all();
    }

    // ---- the gdb thread's side ----

    pub fn event_fd(&self) -> &EventFd {
        &self.event_fd
    }

    /// Asks the vCPU to stop; [`Event::Stopped`] says when it has. Nothing is asked of a
    /// vCPU already stopped (decided under the lock the vCPU stops under, so a request
    /// racing a breakpoint does not become a second, spurious stop after the resume).
    pub fn request_stop(&self) {
        {
            let state = self.lock();
            if state.vcpu_stopped || state.ended {
                return;
            }
            self.stop_wanted.store(true, Ordering::Release);
        }
        self.control.kick_vcpu();
    }

    /// Takes back a stop request that was not answered: true if the vCPU has stopped all
    /// the same (then the stop stands), false if it will not stop for it later.
    pub fn withdraw_stop(&self) -> bool {
        let state = self.lock();
        if !state.vcpu_stopped {
            self.stop_wanted.store(false, Ordering::Release);
        }
        state.vcpu_stopped
    }

    /// The oldest event not yet taken.
    pub fn take_event(&self) -> Option<Event> {
        let mut state = self.lock();
        let event = state.events.pop_front();
        if state.events.is_empty() {
            let _ = self.event_fd.read();
        }
        event
    }

    /// Waits at most `limit` for an event.
    pub fn wait_event(&self, limit: Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + limit;
        let mut state = self.lock();
        loop {
            if let Some(e) = state.events.pop_front() {
                if state.events.is_empty() {
                    let _ = self.event_fd.read();
                }
                return Some(e);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            state = match self.changed.wait_timeout(state, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    pub fn vcpu_stopped(&self) -> bool {
        self.lock().vcpu_stopped
    }

    pub fn has_ended(&self) -> bool {
        self.lock().ended
    }

    /// Has the stopped vCPU do `request` and waits for its answer.
    pub fn call(&self, request: Request) -> Answer {
        let mut state = self.lock();
        if state.ended {
            return Err(RequestError::Ended);
        }
        if !state.vcpu_stopped {
            return Err(RequestError::Refused("the vCPU is running".into()));
        }
        state.answer = None;
        state.request = Some(request);
        self.changed.notify_all();
        loop {
            if let Some(answer) = state.answer.take() {
                return answer;
            }
            if state.ended {
                return Err(RequestError::Ended);
            }
            state = match self.changed.wait_timeout(state, RECHECK) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    // ---- the vCPU thread's side ----

    /// The run loop's check before every KVM_RUN.
    pub fn stop_wanted(&self) -> bool {
        self.stop_wanted.load(Ordering::Acquire)
    }

    /// The vCPU has stopped for `reason`: tells the gdb thread and serves its requests with
    /// `serve` (which says whether a request resumed the guest) until one does. Returns
    /// false if the run must end instead (`must_stop`: the watchdog's deadline).
    pub fn stopped(
        &self,
        reason: StopReason,
        serve: &mut dyn FnMut(Request) -> (Answer, bool),
        must_stop: &dyn Fn() -> bool,
    ) -> bool {
        let mut state = self.lock();
        self.stop_wanted.store(false, Ordering::Release);
        state.vcpu_stopped = true;
        self.push_event(&mut state, Event::Stopped(reason));
        loop {
            if must_stop() {
                state.vcpu_stopped = false;
                return false;
            }
            if let Some(request) = state.request.take() {
                // Served without the lock: the gdb thread may take events meanwhile.
                drop(state);
                let (answer, resumed) = serve(request);
                state = self.lock();
                state.answer = Some(answer);
                if resumed {
                    state.vcpu_stopped = false;
                }
                self.changed.notify_all();
                if resumed {
                    return true;
                }
                continue;
            }
            state = match self.changed.wait_timeout(state, RECHECK) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The run is over (called on the vCPU thread as its loop ends).
    pub fn ended(&self, status: Option<u8>) {
        let mut state = self.lock();
        state.ended = true;
        state.vcpu_stopped = false;
        self.push_event(&mut state, Event::Ended(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_vcpu_serves_requests_until_one_resumes_it() {
        let control = Arc::new(VmControl::default());
        let link = Arc::new(Link::new(control, true).unwrap());
        assert!(link.stop_wanted());
        let l = Arc::clone(&link);
        let vcpu = std::thread::spawn(move || {
            let mut served = Vec::new();
            let resumed = l.stopped(
                StopReason::Requested,
                &mut |r| {
                    let resume = matches!(r, Request::Resume(_));
                    served.push(format!("{r:?}"));
                    (Ok(Reply::Done), resume)
                },
                &|| false,
            );
            (resumed, served)
        });
        assert_eq!(
            link.wait_event(Duration::from_secs(5)),
            Some(Event::Stopped(StopReason::Requested))
        );
        assert!(link.vcpu_stopped());
        assert!(matches!(
            link.call(Request::ReadMemory { addr: 1, len: 2 }),
            Ok(Reply::Done)
        ));
        assert!(matches!(
            link.call(Request::Resume(ResumeMode::Continue)),
            Ok(Reply::Done)
        ));
        let (resumed, served) = vcpu.join().unwrap();
        assert!(resumed);
        assert_eq!(served.len(), 2);
        assert!(!link.stop_wanted());
        // Running: a request is refused, not left waiting.
        assert!(matches!(
            link.call(Request::ReadRegisters),
            Err(RequestError::Refused(_))
        ));
        link.ended(Some(0));
        assert_eq!(link.take_event(), Some(Event::Ended(Some(0))));
        assert!(matches!(
            link.call(Request::ReadRegisters),
            Err(RequestError::Ended)
        ));
    }

    #[test]
    fn the_watchdog_ends_a_stop_nobody_resumes() {
        let control = Arc::new(VmControl::default());
        let link = Link::new(control, true).unwrap();
        let resumed = link.stopped(
            StopReason::Requested,
            &mut |_| (Ok(Reply::Done), false),
            &|| true,
        );
        assert!(!resumed);
        assert!(!link.vcpu_stopped());
    }
}
