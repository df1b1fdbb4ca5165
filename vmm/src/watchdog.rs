//! `--timeout`: a watchdog thread that stops a guest that does not finish in time.
//!
//! On `kvm_pvm` a vCPU can spin inside KVM_RUN forever (pvm.md §9, §11 H3), so setting a
//! flag is not enough: after the deadline the watchdog sets the flag and then sends a
//! real-time signal ([`crate::kick`]) to the vCPU thread every [`KICK_INTERVAL`] until the
//! run loop acknowledges. The signal makes KVM_RUN return EINTR; the handler does nothing.
//! Repeating it also interrupts a blocking call elsewhere (the unit test's read); the run
//! loop checks the flag before each KVM_RUN too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often the vCPU thread is signalled after the deadline.
pub const KICK_INTERVAL: Duration = Duration::from_millis(20);
/// Largest accepted `--timeout` (a week; also keeps `Duration::from_secs_f64` in range).
pub const MAX_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// Checks `--timeout`.
pub fn timeout_duration(secs: f64) -> Result<Duration> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(Error::InvalidTimeout {
            got: secs,
            max: MAX_TIMEOUT_SECS,
        })
    }
}

#[derive(Default)]
struct State {
    /// The run loop has finished (or acknowledged the timeout): stop kicking.
    done: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    expired: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A watchdog armed for one run. Dropping it disarms it and joins the thread.
pub struct Watchdog {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog that kicks the *calling* thread (the vCPU thread) `timeout` from now.
    ///
    /// The calling thread must outlive the watchdog: [`Watchdog::disarm`] (or drop) joins the
    /// watchdog thread, so keep the `Watchdog` on the vCPU thread's stack.
    pub fn arm(timeout: Duration) -> Result<Watchdog> {
        crate::kick::install_handler().map_err(Error::Signal)?;
        // SAFETY: pthread_self has no preconditions and always succeeds.
        let target = unsafe { libc::pthread_self() };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            expired: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let deadline = Instant::now() + timeout;
        let handle = std::thread::Builder::new()
            .name("fluke-watchdog".into())
            .spawn(move || watch(&thread_shared, deadline, target))
            .map_err(|source| Error::HostIo {
                what: "watchdog thread",
                source,
            })?;
        Ok(Watchdog {
            shared,
            handle: Some(handle),
        })
    }

    /// Whether the deadline has passed. The run loop checks this after every exit.
    pub fn expired(&self) -> bool {
        self.shared.expired.load(Ordering::Acquire)
    }

    /// Stops the watchdog (also the acknowledgement of a timeout) and waits for its thread.
    pub fn disarm(&mut self) {
        self.shared.lock().done = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

fn watch(shared: &Shared, deadline: Instant, target: libc::pthread_t) {
    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Watchdog);
    let mut state = shared.lock();
    loop {
        if state.done {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        state = match shared.wake.wait_timeout(state, deadline - now) {
            Ok((s, _)) => s,
            Err(p) => p.into_inner().0,
        };
    }
    shared.expired.store(true, Ordering::Release);
    log::debug!("watchdog: deadline passed, kicking the vCPU");
    while !state.done {
        // SAFETY: `target` is the vCPU thread, which is still alive: it only returns from
        // the run (and lets the `Watchdog` go, which sets `done` and joins this thread)
        // after we stop.
        if let Err(rc) = unsafe { crate::kick::kick(target) } {
            log::warn!("watchdog: pthread_kill failed: {rc}");
        }
        state = match shared.wake.wait_timeout(state, KICK_INTERVAL) {
            Ok((s, _)) => s,
            Err(p) => p.into_inner().0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_validation() {
        assert_eq!(timeout_duration(1.5).unwrap(), Duration::from_millis(1500));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(timeout_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interrupts_a_blocking_syscall_and_disarms() {
        let mut wd = Watchdog::arm(Duration::from_millis(50)).unwrap();
        assert!(!wd.expired());
        // A blocking read on a pipe nobody writes: the kick must interrupt it (EINTR).
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid 2-element array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut b = 0u8;
        // SAFETY: reads at most one byte into `b`, a valid local.
        let rc = unsafe { libc::read(fds[0], (&mut b as *mut u8).cast(), 1) };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR)
        );
        assert!(wd.expired());
        wd.disarm();
        // SAFETY: closing the two fds created above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
