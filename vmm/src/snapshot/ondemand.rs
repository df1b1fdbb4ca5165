//! `restore --memory-restore ondemand`: guest RAM is registered with userfaultfd and left
//! empty; memory comes in from the memory file at its first touch, by the guest (through
//! KVM) or by the VMM, served by one handler thread (as Firecracker's UFFD backend and Cloud
//! Hypervisor's `memory_restore_mode=ondemand` do).
//!
//! The unit brought in is the 1 MiB chunk the vmstate has a checksum for: at the first
//! fault in a chunk the handler reads the chunk from the file, checks it, and copies that
//! same buffer into place (UFFDIO_COPY), so no byte reaches the guest unchecked, whatever
//! happens to the file meanwhile. When no fault is waiting, the handler reads and checks the
//! chunks not yet touched, so a corrupt memory file stops the VM within moments of the
//! restore even where the guest never looks (without making those chunks resident).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use userfaultfd::{Event, Uffd, UffdBuilder};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PAGE: usize = 4096;
/// Copies that make no progress (EAGAIN with nothing copied) before the handler gives up.
const MAX_COPY_RETRIES: u32 = 1000;
/// How often the handler, waiting for a fault, looks at the stop flag.
const POLL_SLICE: Duration = Duration::from_millis(50);
/// How long no fault must come before the background check reads another chunk, so that
/// it does not stand between the guest and its pages.
const IDLE_BEFORE_CHECK: Duration = Duration::from_millis(2);

/// What the handler did, for `--log-level info` and the benchmarks.
#[derive(Default)]
pub struct Progress {
    pub pages: AtomicU64,
    /// When the latest page came in, in µs since the VMM process started.
    pub last_us: AtomicU64,
    /// Chunks not yet checked (neither brought in nor checked in the background).
    pub unchecked: AtomicU64,
    /// Set when the guest's run is over: from then the handler checks nothing more and
    /// ends nothing (a corrupt chunk no one used must not turn a finished run into 126).
    pub guest_ended: AtomicBool,
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

/// What the handler knows of each chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Untouched,
    /// Read and found whole by the background pass, not resident.
    Checked,
    /// Copied into guest memory.
    Resident,
}

/// The handler's state: the file, the chunks' checksums and what has been done with each.
struct Served {
    file: std::fs::File,
    spans: Vec<Span>,
    expected: Vec<u32>,
    chunks: Vec<Chunk>,
    /// The next chunk the background pass looks at.
    next_check: usize,
    /// How many chunks are still `Untouched` (kept, not counted, on the fault path).
    untouched: usize,
    buf: Vec<u8>,
}

impl Pager {
    /// Registers guest RAM and starts serving it from `file` (already checked: it holds the
    /// RAM and the right trailer), each chunk checked against `expected`.
    pub fn start(
        memory: &GuestMemoryMmap,
        file: std::fs::File,
        expected: Vec<u32>,
        started: Instant,
    ) -> Result<Pager, String> {
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
        if super::chunk_count(offset as u64) != expected.len() {
            return Err(format!(
                "{} chunk checksums for {offset} bytes of memory",
                expected.len()
            ));
        }
        let chunk_total = expected.len();
        let served = Served {
            file,
            spans,
            chunks: vec![Chunk::Untouched; chunk_total],
            expected,
            next_check: 0,
            untouched: chunk_total,
            buf: vec![0u8; super::MEMORY_CHUNK],
        };
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        progress
            .unchecked
            .store(served.chunks.len() as u64, Ordering::Relaxed);
        let (s, p) = (Arc::clone(&stop), Arc::clone(&progress));
        let thread = crate::paging::spawn_fault_server("fluke-uffd", fatal, uffd, move |uffd| {
            serve(uffd, served, &s, &p, started)
        })
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

/// Ends the VMM from the handler thread: a vCPU waiting for memory it cannot have must not
/// wait forever, and corrupt memory must not run.
pub(crate) fn fatal(msg: &str) -> ! {
    crate::logger::to_stderr(&format!("fluke-vmm: error: {msg}; stopping\n"));
    std::process::exit(fluke_abi::status::VMM_ERROR);
}

impl Served {
    fn chunk_range(&self, chunk: usize) -> std::ops::Range<usize> {
        let total: usize = self.spans.iter().map(|s| s.len).sum();
        let from = chunk * super::MEMORY_CHUNK;
        from..(from + super::MEMORY_CHUNK).min(total)
    }

    /// Reads chunk `chunk` into `buf` and checks it.
    fn read_checked(&mut self, chunk: usize) -> Result<usize, String> {
        use std::os::unix::fs::FileExt;
        let range = self.chunk_range(chunk);
        let n = range.len();
        self.file
            .read_exact_at(&mut self.buf[..n], range.start as u64)
            .map_err(|e| format!("cannot restore: cannot read the memory file: {e}"))?;
        if crc32fast::hash(&self.buf[..n]) != self.expected[chunk] {
            return Err(format!(
                "cannot restore: the memory file: {}",
                super::corrupt_chunk(chunk)
            ));
        }
        Ok(n)
    }

    /// Brings chunk `chunk` in: read, checked, copied into guest memory from that buffer.
    fn bring_in(&mut self, uffd: &Uffd, chunk: usize) -> Result<(), String> {
        let n = self.read_checked(chunk)?;
        let start = self.chunk_range(chunk).start;
        for span in &self.spans {
            // The part of this chunk that lies in this span.
            let lo = start.max(span.file_offset);
            let hi = (start + n).min(span.file_offset + span.len);
            let mut at = lo;
            let mut retries = 0;
            while at < hi {
                let dst = span.host + (at - span.file_offset);
                // SAFETY: `buf[at - start..hi - start]` is initialised memory of ours that
                // lives across the call; `dst..+len` is inside a registered region and the
                // kernel writes only there, atomically installing pages not yet present.
                let copied = unsafe {
                    uffd.copy(
                        self.buf.as_ptr().add(at - start) as *const libc::c_void,
                        dst as *mut libc::c_void,
                        hi - at,
                        true,
                    )
                };
                match copied {
                    Ok(len) if len > 0 && len <= hi - at => at += len,
                    // Interrupted part-way (the address space changing): go on from there.
                    Err(userfaultfd::Error::PartiallyCopied(len)) if len > 0 && len <= hi - at => {
                        at += len
                    }
                    // Nothing copied, or a count out of range (the crate passes the kernel's
                    // negative error through as a huge one): try the same range again,
                    // a bounded number of times.
                    Ok(_) | Err(userfaultfd::Error::PartiallyCopied(_)) => {
                        retries += 1;
                        if retries > MAX_COPY_RETRIES {
                            return Err(format!(
                                "cannot bring guest memory at {dst:#x} in from the memory file: the copy makes no progress"
                            ));
                        }
                    }
                    // A page there already present: cannot happen while whole chunks come in
                    // together; step over it rather than fail the guest.
                    Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                        at += PAGE
                    }
                    Err(e) => {
                        return Err(format!(
                            "cannot bring guest memory at {dst:#x} in from the memory file: {e}"
                        ))
                    }
                }
            }
        }
        if self.chunks[chunk] == Chunk::Untouched {
            self.untouched -= 1;
        }
        self.chunks[chunk] = Chunk::Resident;
        Ok(())
    }

    /// The background pass: checks the next chunk not yet looked at. False once all are.
    fn check_one(&mut self) -> Result<bool, String> {
        while self.next_check < self.chunks.len() {
            let c = self.next_check;
            self.next_check += 1;
            if self.chunks[c] == Chunk::Untouched {
                self.read_checked(c)?;
                self.chunks[c] = Chunk::Checked;
                self.untouched -= 1;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The chunk holding host address `at`, if it is guest RAM.
    fn chunk_of(&self, at: usize) -> Option<usize> {
        let span = self
            .spans
            .iter()
            .find(|s| (s.host..s.host + s.len).contains(&at))?;
        Some((span.file_offset + (at - span.host)) / super::MEMORY_CHUNK)
    }
}

fn serve(
    uffd: &Uffd,
    mut served: Served,
    stop: &AtomicBool,
    progress: &Progress,
    started: Instant,
) {
    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::RestorePager);
    let mut checking = true;
    // Whether the last wait ended without a fault: the guest is not asking for memory, so
    // the background check goes on at once, looking between chunks for a fault to serve
    // first (one chunk's check, ~0.3 ms, is the longest a fault then waits). At one chunk
    // per idle period instead, a 128-MiB VM took longer than some guests run.
    let mut idle = false;
    while !stop.load(Ordering::Acquire) {
        let mut fd = libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ended = progress.guest_ended.load(Ordering::Acquire);
        // While chunks remain unchecked (and the guest runs), an idle moment goes to
        // checking one.
        let wait = match (checking && !ended, idle) {
            (true, true) => Duration::ZERO,
            (true, false) => IDLE_BEFORE_CHECK,
            (false, _) => POLL_SLICE,
        };
        // SAFETY: polls one valid pollfd; it changes only `revents`.
        let ready = unsafe { libc::poll(&mut fd, 1, wait.as_millis() as libc::c_int) };
        // The guest may have ended during the wait: a chunk no one used then ends nothing.
        let ended = progress.guest_ended.load(Ordering::Acquire);
        if ready <= 0 {
            idle = ready == 0;
            if checking && !ended {
                checking = match served.check_one() {
                    Ok(more) => more,
                    Err(_) if progress.guest_ended.load(Ordering::Acquire) => false,
                    Err(e) => fatal(&e),
                };
                progress
                    .unchecked
                    .store(served.untouched as u64, Ordering::Relaxed);
                if !checking {
                    log::info!(
                        "restore: every chunk of the memory file checked, {:.1} ms after the VMM started",
                        started.elapsed().as_secs_f64() * 1e3
                    );
                }
            }
            continue;
        }
        idle = false;
        let event = match uffd.read_event() {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => fatal(&format!(
                "userfaultfd failed: {e} (the guest would wait for its memory forever)"
            )),
        };
        let Event::Pagefault { addr, .. } = event else {
            continue;
        };
        let at = addr as usize & !(PAGE - 1);
        let Some(chunk) = served.chunk_of(at) else {
            log::error!("uffd: a fault at {at:#x}, outside guest memory");
            continue;
        };
        if served.chunks[chunk] == Chunk::Resident {
            // A fault that raced the copy of its chunk: the page is there, wake its waiter.
            let _ = uffd.wake(at as *mut libc::c_void, PAGE);
            continue;
        }
        served.bring_in(uffd, chunk).unwrap_or_else(|e| fatal(&e));
        progress
            .unchecked
            .store(served.untouched as u64, Ordering::Relaxed);
        let n = served.chunk_range(chunk).len() / PAGE;
        progress.pages.fetch_add(n as u64, Ordering::Relaxed);
        progress
            .last_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}
