//! A device's own thread: an epoll loop over its queues' notification eventfds (the
//! ioeventfds KVM writes when the guest writes QueueNotify) and a stop eventfd. It is
//! started with the VM, before the vCPU thread confines itself (a confined thread could not
//! spawn it), and confines itself to its own seccomp list; it only does work once the
//! driver has activated the device.

use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::ThreadKind;

/// The epoll token of the stop eventfd; queue `q`'s is `q`.
const STOP_TOKEN: u64 = u64::MAX;

/// The running thread; dropping it stops and joins it.
pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `name`'s thread: `serve(q)` runs on the thread each time queue `q`'s eventfd
    /// in `queue_events` is written.
    pub fn spawn(
        name: &str,
        kind: ThreadKind,
        queue_events: Vec<EventFd>,
        mut serve: impl FnMut(usize) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (q, evt) in queue_events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, q as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        let stop_seen = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                crate::seccomp::confine_or_exit(kind);
                let mut ready = vec![EpollEvent::default(); queue_events.len() + 1];
                loop {
                    let n = match epoll.wait(-1, &mut ready) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::warn!(
                                "{}: epoll_wait failed ({e}); the device stops",
                                kind.name()
                            );
                            return;
                        }
                    };
                    for event in &ready[..n] {
                        let token = event.data();
                        if token == STOP_TOKEN {
                            let _ = stop_seen.read();
                            return;
                        }
                        let Some(evt) = queue_events.get(token as usize) else {
                            continue;
                        };
                        // Consumes every notification so far: one pass serves them all.
                        let _ = evt.read();
                        serve(token as usize);
                    }
                }
            })?;
        Ok(Worker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::warn!("cannot stop a device thread: {e}");
            return;
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
