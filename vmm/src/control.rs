//! The vCPU event channel: what other threads (the API server) ask of the running VM, and
//! how the vCPU thread hears it. A request sets the wanted state and kicks the vCPU thread
//! ([`crate::kick`]); the run loop sees `pending` before its next KVM_RUN, pauses there
//! (saving the guest's clock), and answers by changing the reported state.
//!
//! One VM has one vCPU today; the channel names the vCPU thread it kicks, so a second vCPU
//! would add a thread list here and a barrier in [`VmControl::serve`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the VM is doing, as the API reports it (Firecracker's instance states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Built, its vCPU not yet in its run loop.
    NotStarted,
    Running,
    Paused,
    /// The guest exited, crashed or timed out: nothing more can be asked of it.
    Ended,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            VmState::NotStarted => "Not started",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Ended => "Ended",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM has ended")]
    Ended,
    #[error("the VM is not paused (PATCH /vm {{\"state\": \"Paused\"}} first)")]
    NotPaused,
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    #[error("a snapshot is already being written")]
    SnapshotBusy,
    #[error("the vCPU did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("cannot signal the vCPU thread (error {0})")]
    Kick(i32),
}

struct Inner {
    want_paused: bool,
    state: VmState,
    /// A snapshot asked of the paused vCPU (with its request's number), the one being
    /// written, and the latest answer: a request takes only the answer to its own number,
    /// so one that gave up waiting cannot hand its result to the next.
    snapshot: Option<(u64, crate::snapshot::file::Target)>,
    snapshot_writing: Option<u64>,
    snapshot_done: Option<(u64, Result<(), String>)>,
    next_snapshot: u64,
    /// The vCPU thread, once it runs (kicks go there).
    vcpu_thread: Option<libc::pthread_t>,
}

pub struct VmControl {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Something is asked of the vCPU: the run loop's one check per exit.
    pending: AtomicBool,
}

/// How often a request that has not been answered yet kicks again. A kick is not lost (it
/// stays pending until KVM_RUN), so this only covers a vCPU thread busy in the VMM.
const REKICK: Duration = Duration::from_millis(20);

/// How long a request waits for the vCPU thread to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the vCPU thread does around a pause.
pub trait PauseHooks {
    /// The guest is about to stop (save what must not run on: its clock).
    fn paused(&mut self);
    /// The guest is about to run again.
    fn resumed(&mut self);
    /// Whether the run must end instead of waiting on (the watchdog's deadline passed).
    fn must_stop(&self) -> bool;
    /// Writes a snapshot of the paused VM.
    fn snapshot(&mut self, target: &crate::snapshot::file::Target) -> Result<(), String>;
}

/// How long a snapshot may take before the API gives up waiting (it goes on).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for VmControl {
    fn default() -> Self {
        VmControl {
            inner: Mutex::new(Inner {
                want_paused: false,
                state: VmState::NotStarted,
                snapshot: None,
                snapshot_writing: None,
                snapshot_done: None,
                next_snapshot: 1,
                vcpu_thread: None,
            }),
            changed: Condvar::new(),
            pending: AtomicBool::new(false),
        }
    }
}

impl VmControl {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> VmState {
        self.lock().state
    }

    /// Makes the VM wait paused before its first KVM_RUN (a restore without --resume).
    pub fn start_paused(&self) {
        self.lock().want_paused = true;
    }

    /// The vCPU thread enters its run loop (called on that thread).
    pub fn started(&self) {
        let mut inner = self.lock();
        // SAFETY: pthread_self has no preconditions.
        inner.vcpu_thread = Some(unsafe { libc::pthread_self() });
        if inner.state == VmState::NotStarted {
            inner.state = VmState::Running;
        }
        // A pause asked for before the start is served at the first check.
        self.pending.store(inner.want_paused, Ordering::Release);
        self.changed.notify_all();
    }

    /// The run is over (called on the vCPU thread before it leaves its run loop, so no kick
    /// is sent to it afterwards).
    pub fn ended(&self) {
        let mut inner = self.lock();
        inner.state = VmState::Ended;
        inner.vcpu_thread = None;
        self.changed.notify_all();
    }

    /// Asks for the VM to be paused and waits until it is (at once if it already is).
    pub fn pause(&self) -> Result<(), ControlError> {
        self.request(true)
    }

    /// Asks for a paused VM to run again and waits until it does.
    pub fn resume(&self) -> Result<(), ControlError> {
        self.request(false)
    }

    fn request(&self, paused: bool) -> Result<(), ControlError> {
        let wanted = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut inner = self.lock();
        if inner.state == VmState::Ended {
            return Err(ControlError::Ended);
        }
        let before = inner.want_paused;
        inner.want_paused = paused;
        self.pending.store(true, Ordering::Release);
        self.changed.notify_all();
        loop {
            match inner.state {
                s if s == wanted => return Ok(()),
                VmState::Ended => return Err(ControlError::Ended),
                _ => {}
            }
            if paused {
                if let Some(thread) = inner.vcpu_thread {
                    // SAFETY: the vCPU thread is alive while it is registered: it clears
                    // `vcpu_thread` under this lock (`ended`) before it leaves its loop.
                    unsafe { crate::kick::kick(thread) }.map_err(ControlError::Kick)?;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                // Not answered: the request is withdrawn, so that it does not happen later
                // behind the back of a client that was told it failed.
                inner.want_paused = before;
                return Err(ControlError::NoAnswer(ANSWER_TIMEOUT));
            }
            inner = match self.changed.wait_timeout(inner, REKICK.min(deadline - now)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Kicks the vCPU thread out of KVM_RUN, for a requester with its own flag that the
    /// run loop reads before every KVM_RUN (the gdb stub's stop). Before the vCPU thread
    /// runs and after it has ended there is no one to kick, and the flag is enough.
    pub fn kick_vcpu(&self) {
        let inner = self.lock();
        if let Some(thread) = inner.vcpu_thread {
            // SAFETY: the vCPU thread is alive while it is registered: it clears
            // `vcpu_thread` under this lock (`ended`) before it leaves its loop.
            if let Err(e) = unsafe { crate::kick::kick(thread) } {
                log::warn!("cannot kick the vCPU thread (error {e})");
            }
        }
    }

    /// Writes a snapshot of the paused VM to `target` (done by the vCPU thread) and waits
    /// for it, at most [`SNAPSHOT_TIMEOUT`].
    pub fn snapshot(&self, target: crate::snapshot::file::Target) -> Result<(), ControlError> {
        self.snapshot_within(target, SNAPSHOT_TIMEOUT)
    }

    fn snapshot_within(
        &self,
        target: crate::snapshot::file::Target,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        match inner.state {
            VmState::Ended => return Err(ControlError::Ended),
            VmState::Paused => {}
            _ => return Err(ControlError::NotPaused),
        }
        if inner.snapshot.is_some() || inner.snapshot_writing.is_some() {
            return Err(ControlError::SnapshotBusy);
        }
        let id = inner.next_snapshot;
        inner.next_snapshot += 1;
        inner.snapshot = Some((id, target));
        self.changed.notify_all();
        loop {
            if inner.snapshot_done.as_ref().is_some_and(|(i, _)| *i == id) {
                let (_, done) = inner.snapshot_done.take().expect("just matched");
                return done.map_err(ControlError::Snapshot);
            }
            if inner.state == VmState::Ended {
                return Err(ControlError::Ended);
            }
            let now = Instant::now();
            if now >= deadline {
                // Not begun: withdrawn, as an unanswered pause is. Begun: it goes on, and
                // its answer is dropped.
                if inner.snapshot.as_ref().is_some_and(|(i, _)| *i == id) {
                    inner.snapshot = None;
                }
                return Err(ControlError::NoAnswer(timeout));
            }
            inner = match self.changed.wait_timeout(inner, REKICK.min(deadline - now)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The run loop's check, once per exit: true if something is asked.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Serves what is asked (on the vCPU thread): if a pause is wanted, pauses, waits until
    /// a resume is wanted and resumes. Returns false if the run must end instead
    /// ([`PauseHooks::must_stop`]).
    pub fn serve(&self, hooks: &mut dyn PauseHooks) -> bool {
        let mut inner = self.lock();
        self.pending.store(false, Ordering::Release);
        if !inner.want_paused {
            return true;
        }
        hooks.paused();
        inner.state = VmState::Paused;
        self.changed.notify_all();
        log::debug!("vcpu: paused");
        while inner.want_paused {
            if hooks.must_stop() {
                return false;
            }
            if let Some((id, target)) = inner.snapshot.take() {
                inner.snapshot_writing = Some(id);
                // Written without the lock: a GET / meanwhile still answers.
                drop(inner);
                let done = hooks.snapshot(&target);
                inner = self.lock();
                inner.snapshot_writing = None;
                inner.snapshot_done = Some((id, done));
                self.changed.notify_all();
                continue;
            }
            inner = match self.changed.wait_timeout(inner, REKICK) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        self.pending.store(false, Ordering::Release);
        hooks.resumed();
        inner.state = VmState::Running;
        self.changed.notify_all();
        log::debug!("vcpu: resumed");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Counting {
        paused: u32,
        resumed: u32,
    }

    impl PauseHooks for Counting {
        fn paused(&mut self) {
            self.paused += 1;
        }
        fn resumed(&mut self) {
            self.resumed += 1;
        }
        fn must_stop(&self) -> bool {
            false
        }
        fn snapshot(&mut self, _: &crate::snapshot::file::Target) -> Result<(), String> {
            Err("no snapshots here".into())
        }
    }

    #[test]
    fn pause_and_resume_are_answered_by_the_serving_thread() {
        crate::kick::install_handler().unwrap();
        let control = Arc::new(VmControl::default());
        let c = Arc::clone(&control);
        let vcpu = std::thread::spawn(move || {
            c.started();
            let mut hooks = Counting {
                paused: 0,
                resumed: 0,
            };
            let mut served = 0;
            while served < 3 {
                if c.pending() {
                    assert!(c.serve(&mut hooks));
                    served += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            c.ended();
            (hooks.paused, hooks.resumed)
        });
        while control.state() == VmState::NotStarted {
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..3 {
            control.pause().unwrap();
            assert_eq!(control.state(), VmState::Paused);
            control.pause().unwrap(); // already paused: at once
            control.resume().unwrap();
            assert_eq!(control.state(), VmState::Running);
        }
        assert_eq!(vcpu.join().unwrap(), (3, 3));
        assert_eq!(control.pause(), Err(ControlError::Ended));
        assert_eq!(control.resume(), Err(ControlError::Ended));
    }

    /// Snapshots that take 300 ms each and fail with the name of their target.
    struct Slow;

    impl PauseHooks for Slow {
        fn paused(&mut self) {}
        fn resumed(&mut self) {}
        fn must_stop(&self) -> bool {
            false
        }
        fn snapshot(&mut self, target: &crate::snapshot::file::Target) -> Result<(), String> {
            std::thread::sleep(Duration::from_millis(300));
            Err(target.vmstate().display().to_string())
        }
    }

    #[test]
    fn a_snapshot_request_gets_its_own_answer_never_an_abandoned_one() {
        use crate::snapshot::file::Target;
        crate::kick::install_handler().unwrap();
        let control = Arc::new(VmControl::default());
        let c = Arc::clone(&control);
        let vcpu = std::thread::spawn(move || {
            c.started();
            while !c.pending() {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(c.serve(&mut Slow));
            c.ended();
        });
        while control.state() == VmState::NotStarted {
            std::thread::sleep(Duration::from_millis(1));
        }
        control.pause().unwrap();
        let dir = |n: &str| Target::Dir(std::path::PathBuf::from(n));
        // A gives up while its snapshot is being written...
        assert_eq!(
            control.snapshot_within(dir("a"), Duration::from_millis(50)),
            Err(ControlError::NoAnswer(Duration::from_millis(50)))
        );
        // ...B, asked meanwhile, is refused rather than answered with A's result...
        assert_eq!(control.snapshot(dir("b")), Err(ControlError::SnapshotBusy));
        std::thread::sleep(Duration::from_millis(400));
        // ...and C, once A is done, gets the answer to C.
        assert_eq!(
            control.snapshot(dir("c")),
            Err(ControlError::Snapshot("c/vmstate".into()))
        );
        // (The serving thread ends as soon as it has resumed: either answer is right.)
        let resumed = control.resume();
        assert!(
            matches!(resumed, Ok(()) | Err(ControlError::Ended)),
            "{resumed:?}"
        );
        vcpu.join().unwrap();
    }
}
