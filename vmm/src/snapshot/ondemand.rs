//! `restore --memory-restore ondemand`: guest RAM is registered with userfaultfd and left
//! empty; each page comes in from the memory file at its first touch, by the guest (through
//! KVM) or by the VMM, served by one handler thread (as Firecracker's UFFD backend and Cloud
//! Hypervisor's `memory_restore_mode=ondemand` do). The memory file is mapped read-only as
//! the source of the copies.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use userfaultfd::{Event, Uffd, UffdBuilder};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion};

const PAGE: usize = 4096;
/// How often the handler, waiting for a fault, looks at the stop flag.
const POLL_SLICE: Duration = Duration::from_millis(50);

/// What the handler did, for `--log-level info` and the benchmarks.
#[derive(Default)]
pub struct Progress {
    pub pages: AtomicU64,
    /// When the latest page came in, in µs since the VMM process started.
    pub last_us: AtomicU64,
}

/// The running handler; stopping (or dropping) it joins the thread.
pub struct Pager {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub progress: Arc<Progress>,
}

/// One RAM region: where it is in the VMM and where its bytes are in the file.
#[derive(Clone, Copy)]
struct Span {
    host: usize,
    len: usize,
    file_offset: usize,
}

impl Pager {
    /// Registers guest RAM and starts serving it from `file` (already checked: its size is
    /// the RAM's).
    pub fn start(
        memory: &GuestMemoryMmap,
        file: std::fs::File,
        started: Instant,
    ) -> Result<Pager, String> {
        let len: usize = memory.iter().map(|r| r.len() as usize).sum();
        let source = MmapRegion::<()>::build(
            Some(vm_memory::FileOffset::new(file, 0)),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| format!("cannot map the memory file: {e}"))?;
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            // KVM touches guest RAM from the kernel (get_user_pages): those faults too.
            .user_mode_only(false)
            .create()
            .map_err(|e| format!("userfaultfd: {e} (is /dev/userfaultfd or vm.unprivileged_userfaultfd available?)"))?;
        let mut spans = Vec::new();
        let mut offset = 0usize;
        for region in memory.iter() {
            let host = region.as_ptr() as usize;
            let rlen = region.len() as usize;
            uffd.register(host as *mut libc::c_void, rlen)
                .map_err(|e| format!("cannot register guest memory with userfaultfd: {e}"))?;
            spans.push(Span {
                host,
                len: rlen,
                file_offset: offset,
            });
            offset += rlen;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let (s, p) = (Arc::clone(&stop), Arc::clone(&progress));
        let thread = std::thread::Builder::new()
            .name("fluke-uffd".into())
            .spawn(move || serve(&uffd, &source, &spans, &s, &p, started))
            .map_err(|e| format!("cannot start the userfaultfd thread: {e}"))?;
        Ok(Pager {
            stop,
            thread: Some(thread),
            progress,
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    uffd: &Uffd,
    source: &MmapRegion<()>,
    spans: &[Span],
    stop: &AtomicBool,
    progress: &Progress,
    started: Instant,
) {
    while !stop.load(Ordering::Acquire) {
        let mut fd = libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one valid pollfd; it changes only `revents`.
        let ready = unsafe { libc::poll(&mut fd, 1, POLL_SLICE.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        let event = match uffd.read_event() {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                crate::logger::to_stderr(&format!(
                    "fluke-vmm: error: userfaultfd failed: {e}; stopping (the guest would wait for its memory forever)\n"
                ));
                std::process::exit(fluke_abi::status::VMM_ERROR);
            }
        };
        let Event::Pagefault { addr, .. } = event else {
            continue;
        };
        let at = addr as usize & !(PAGE - 1);
        let Some(span) = spans
            .iter()
            .find(|s| (s.host..s.host + s.len).contains(&at))
        else {
            log::error!("uffd: a fault at {at:#x}, outside guest memory");
            continue;
        };
        let from = span.file_offset + (at - span.host);
        // SAFETY: `from` + PAGE lies inside the file mapping (the file is exactly as large as
        // guest RAM, the spans tile it) and `at` is a page of a registered region; the copy
        // writes only that page, atomically, as the kernel's UFFDIO_COPY.
        let copy = || unsafe {
            uffd.copy(
                source.as_ptr().add(from) as *const libc::c_void,
                at as *mut libc::c_void,
                PAGE,
                true,
            )
        };
        // EAGAIN (the address space changing under the copy): try again.
        let mut copied = copy();
        for _ in 0..100 {
            match copied {
                Err(userfaultfd::Error::PartiallyCopied(_)) => copied = copy(),
                _ => break,
            }
        }
        match copied {
            Ok(_) => {
                progress.pages.fetch_add(1, Ordering::Relaxed);
                progress
                    .last_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            // Another fault on the same page was served first: wake whoever waits.
            Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                let _ = uffd.wake(at as *mut libc::c_void, PAGE);
            }
            // The vCPU waits for this page and cannot get it (the memory file changed under
            // the restore, say): end the VM with a report rather than leave it hanging.
            Err(e) => {
                crate::logger::to_stderr(&format!(
                    "fluke-vmm: error: cannot bring guest page {at:#x} in from the memory file: {e}; stopping\n"
                ));
                std::process::exit(fluke_abi::status::VMM_ERROR);
            }
        }
    }
}
