//! `run --memory-resident MiB`: host-level demand paging of guest RAM, the VMM model's
//! counterpart of the pager nester. Guest RAM is registered with userfaultfd (missing and
//! write-protect faults, KVM's kernel-side accesses included) and one handler thread keeps
//! at most the cap of it resident:
//!
//! - a page's first touch gets a zero page (a read: the shared zero page; a write: a fresh
//!   one); a page evicted earlier comes back from the store, for a read write-protected,
//!   so that its first write is seen (until then the store's copy is still good);
//! - when more than the cap is resident, the oldest resident pages are evicted (the clock
//!   hand is FIFO: this host offers userspace no accessed bits for guest pages, see the
//!   README): a clean page is dropped (MADV_DONTNEED), a written one is write-protected
//!   first (so no write can slip in between), then copied to the store (or recorded as
//!   zero, if it is), then dropped;
//! - a write that meets a protected page is let through and the page marked written.
//!
//! The store is an unnamed temporary file, one 4 KiB slot per guest page (a page is never
//! lost: it is in guest memory, or in the store, or zero).

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use userfaultfd::{Event, FaultKind, ReadWrite, RegisterMode, Uffd, UffdBuilder};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PAGE: usize = 4096;
/// How often the handler, waiting for a fault, looks at the stop flag.
const POLL_SLICE: Duration = Duration::from_millis(50);
/// The smallest cap: what one guest instruction and KVM's walk of the guest's page tables
/// may need resident at once, with a wide margin.
pub const MIN_RESIDENT_MIB: u64 = 2;

/// What one guest page is, as the handler knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageState {
    /// Never touched: zero.
    Untouched,
    /// In guest memory, the store's copy (if any) out of date.
    Written,
    /// In guest memory, write-protected, identical to its copy in the store.
    Clean,
    /// Only in the store.
    Stored,
    /// Evicted while all zero: nothing stored.
    Zero,
}

impl PageState {
    fn resident(self) -> bool {
        matches!(self, PageState::Written | PageState::Clean)
    }
}

/// Counters, read by the run's statistics.
#[derive(Debug, Default)]
pub struct PagerCounters {
    pub zero_fills: AtomicU64,
    pub store_reads: AtomicU64,
    pub write_faults: AtomicU64,
    pub evictions: AtomicU64,
    pub store_writes: AtomicU64,
    pub zero_evictions: AtomicU64,
    pub peak_resident_pages: AtomicU64,
    /// Nanoseconds the handler spent serving missing faults (event read to page installed).
    pub serve_ns: AtomicU64,
}

/// What `--stats-json` reports of a paged run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PagingSummary {
    pub resident_cap_kib: u64,
    pub peak_resident_kib: u64,
    /// Guest RAM the host had resident at the guest's exit (mincore), KiB.
    pub resident_at_exit_kib: u64,
    pub zero_fills: u64,
    pub store_reads: u64,
    pub write_faults: u64,
    pub evictions: u64,
    pub store_writes: u64,
    pub zero_evictions: u64,
    /// Mean µs the handler took to serve a missing fault.
    pub mean_serve_us: Option<f64>,
}

/// The running handler; stopping (or dropping) it joins the thread.
pub struct HostPager {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<PagerCounters>,
    cap_pages: usize,
    host: usize,
    len: usize,
}

/// The handler's state: everything about the pages, on its own thread.
struct Pages {
    host: usize,
    state: Vec<PageState>,
    /// Resident pages in the order they came in, with their arrival numbers (an entry
    /// whose number is not the page's current one is stale: skipped).
    fifo: std::collections::VecDeque<(u32, u64)>,
    arrival: Vec<u64>,
    next_arrival: u64,
    resident: usize,
    cap: usize,
    store: std::fs::File,
    counters: Arc<PagerCounters>,
    zeros: Box<[u8; PAGE]>,
    buf: Box<[u8; PAGE]>,
}

/// Fatal handler errors end the VMM: a vCPU waiting for a page it cannot have must not wait
/// forever, and a page must not be lost.
fn fatal(msg: &str) -> ! {
    crate::logger::to_stderr(&format!("fluke-vmm: error: host paging: {msg}; stopping\n"));
    std::process::exit(fluke_abi::status::VMM_ERROR);
}

/// ramfs's statfs type (linux/magic.h; not in the libc crate).
const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;

/// Starts a thread that serves userfaultfd faults. If it panicked, dropping the
/// userfaultfd would let the kernel fill every page not yet served with zeros: it ends the
/// VMM through `fatal` instead.
pub(crate) fn spawn_fault_server(
    name: &str,
    fatal: fn(&str) -> !,
    uffd: Uffd,
    serve: impl FnOnce(&Uffd) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // The userfaultfd belongs to this frame, not to what unwinds: it stays open
            // (the faulting vCPU waiting) until `fatal` has ended the process.
            let uffd = uffd;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&uffd))).is_err() {
                fatal(&format!("the {name} thread panicked"));
            }
        })
}

/// An unnamed temporary file in the temporary directory, for evicted pages.
fn open_store() -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let store = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir)
        .map_err(|e| {
            format!(
                "cannot create the page store in {}: {e} (set TMPDIR to a directory on a file system with O_TMPFILE)",
                dir.display()
            )
        })?;
    // On tmpfs the store is host memory too: the cap then bounds the VMM's RSS but not
    // what the host spends on the guest.
    // SAFETY: a zeroed statfs is a valid out-parameter; fstatfs writes only it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a descriptor we own, into `fs`.
    if unsafe { libc::fstatfs(store.as_raw_fd(), &mut fs) } == 0
        && matches!(fs.f_type, libc::TMPFS_MAGIC | RAMFS_MAGIC)
    {
        log::warn!(
            "host paging: the page store in {} is in memory (tmpfs): evicted pages still use host memory (set TMPDIR to a directory on disk)",
            dir.display()
        );
    }
    Ok(store)
}

impl HostPager {
    /// Registers guest RAM and starts the handler with `cap_bytes` resident at most. Pages
    /// the VMM has already written (the loaded image) count as resident from the start.
    pub fn start(memory: &GuestMemoryMmap, cap_bytes: u64) -> Result<HostPager, String> {
        let mut regions = memory.iter();
        let region = regions.next().ok_or("no guest memory")?;
        if regions.next().is_some() {
            return Err("host paging handles one guest memory region".into());
        }
        let (host, len) = (region.as_ptr() as usize, region.len() as usize);
        let cap = (cap_bytes as usize / PAGE).max(1);
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            // KVM touches guest RAM from the kernel (get_user_pages): those faults too.
            .user_mode_only(false)
            .require_features(userfaultfd::FeatureFlags::PAGEFAULT_FLAG_WP)
            .create()
            .map_err(|e| format!("userfaultfd with write protection: {e} (is /dev/userfaultfd or vm.unprivileged_userfaultfd available, on Linux 5.7 or later?)"))?;
        // Which pages the VMM has written already (before registration they fault normally).
        let pages = len / PAGE;
        let mut present = vec![0u8; pages];
        // SAFETY: `host..host+len` is the guest RAM mapping, page-aligned; mincore writes
        // one byte per page into `present`, which has exactly that many.
        if unsafe { libc::mincore(host as *mut libc::c_void, len, present.as_mut_ptr()) } != 0 {
            return Err(format!("mincore: {}", std::io::Error::last_os_error()));
        }
        uffd.register_with_mode(
            host as *mut libc::c_void,
            len,
            RegisterMode::MISSING | RegisterMode::WRITE_PROTECT,
        )
        .map_err(|e| format!("cannot register guest memory with userfaultfd: {e}"))?;
        let counters = Arc::new(PagerCounters::default());
        let mut state = Pages {
            host,
            state: vec![PageState::Untouched; pages],
            fifo: Default::default(),
            arrival: vec![0; pages],
            next_arrival: 1,
            resident: 0,
            cap,
            store: open_store()?,
            counters: Arc::clone(&counters),
            zeros: Box::new([0; PAGE]),
            buf: Box::new([0; PAGE]),
        };
        state
            .store
            .set_len(len as u64)
            .map_err(|e| format!("cannot size the page store: {e}"))?;
        for (page, _) in present.iter().enumerate().filter(|(_, &p)| p & 1 != 0) {
            state.arrive(page, PageState::Written);
        }
        // The image the VMM loaded may be more than the cap: evicted now, and the peak
        // counted from here.
        state.evict_down(&uffd, 0);
        counters
            .peak_resident_pages
            .store(state.resident as u64, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = spawn_fault_server("fluke-pager", fatal, uffd, move |uffd| {
            serve(uffd, state, &s)
        })
        .map_err(|e| format!("cannot start the paging thread: {e}"))?;
        Ok(HostPager {
            stop,
            thread: Some(thread),
            counters,
            cap_pages: cap,
            host,
            len,
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// What the run's statistics say of it.
    pub fn summary(&self) -> PagingSummary {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let served = get(&c.zero_fills) + get(&c.store_reads);
        PagingSummary {
            resident_cap_kib: (self.cap_pages * PAGE / 1024) as u64,
            peak_resident_kib: get(&c.peak_resident_pages) * (PAGE as u64 / 1024),
            resident_at_exit_kib: resident_kib(self.host, self.len),
            zero_fills: get(&c.zero_fills),
            store_reads: get(&c.store_reads),
            write_faults: get(&c.write_faults),
            evictions: get(&c.evictions),
            store_writes: get(&c.store_writes),
            zero_evictions: get(&c.zero_evictions),
            mean_serve_us: (served > 0).then(|| get(&c.serve_ns) as f64 / served as f64 / 1e3),
        }
    }
}

impl Drop for HostPager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// KiB of `host..host+len` resident now, as the host kernel says (mincore).
fn resident_kib(host: usize, len: usize) -> u64 {
    let mut present = vec![0u8; len / PAGE];
    // SAFETY: as in `HostPager::start`; the mapping lives as long as the VM.
    if unsafe { libc::mincore(host as *mut libc::c_void, len, present.as_mut_ptr()) } != 0 {
        return 0;
    }
    present.iter().filter(|&&p| p & 1 != 0).count() as u64 * (PAGE as u64 / 1024)
}

impl Pages {
    fn addr(&self, page: usize) -> *mut libc::c_void {
        (self.host + page * PAGE) as *mut libc::c_void
    }

    /// Records `page` as resident in state `s`.
    fn arrive(&mut self, page: usize, s: PageState) {
        if !self.state[page].resident() {
            self.resident += 1;
            let a = self.next_arrival;
            self.next_arrival += 1;
            self.arrival[page] = a;
            self.fifo.push_back((page as u32, a));
            self.counters
                .peak_resident_pages
                .fetch_max(self.resident as u64, Ordering::Relaxed);
        }
        self.state[page] = s;
    }

    /// Serves a missing fault on `page`.
    fn missing(&mut self, uffd: &Uffd, page: usize, write: bool) -> Result<(), String> {
        let at = self.addr(page);
        if !self.state[page].resident() && self.resident >= self.cap {
            // Room first, so the cap holds at every moment.
            self.evict_down(uffd, 1);
        }
        match self.state[page] {
            PageState::Untouched | PageState::Zero => {
                // SAFETY: `at` is a page of the registered region; the kernel installs a
                // page there (zeros copied from our buffer, or the shared zero page) only if
                // none is present.
                let done = unsafe {
                    if write {
                        uffd.copy(self.zeros.as_ptr().cast(), at, PAGE, true)
                    } else {
                        uffd.zeropage(at, PAGE, true)
                    }
                };
                self.installed(uffd, page, done)?;
                self.arrive(page, PageState::Written);
                self.counters.zero_fills.fetch_add(1, Ordering::Relaxed);
            }
            PageState::Stored => {
                self.store
                    .read_exact_at(&mut self.buf[..], (page * PAGE) as u64)
                    .map_err(|e| format!("cannot read page {page} back from the store: {e}"))?;
                // A read gets the page protected, so that it stays clean (its store copy
                // good) until a write is seen; a write gets it writable. (A guest read can
                // arrive as a write fault: KVM's shadow MMU maps a page whose guest PTE is
                // dirty writable at once, as kvm_pvm does for nearly every page read back.)
                let mode = if write {
                    0
                } else {
                    userfaultfd_sys::UFFDIO_COPY_MODE_WP
                };
                let ours = self.copy_from_buf(uffd, page, mode)?;
                self.arrive(
                    page,
                    if ours && !write {
                        PageState::Clean
                    } else {
                        PageState::Written
                    },
                );
                self.counters.store_reads.fetch_add(1, Ordering::Relaxed);
            }
            // Served already (the fault raced an earlier one): wake whoever waits.
            PageState::Written | PageState::Clean => {
                let _ = uffd.wake(at, PAGE);
            }
        }
        Ok(())
    }

    /// EEXIST (present already) is success; any other failure is not.
    fn installed(
        &self,
        uffd: &Uffd,
        page: usize,
        done: userfaultfd::Result<usize>,
    ) -> Result<(), String> {
        match done {
            Ok(_) => Ok(()),
            Err(userfaultfd::Error::CopyFailed(e)) | Err(userfaultfd::Error::ZeropageFailed(e))
                if e as i32 == libc::EEXIST =>
            {
                let _ = uffd.wake(self.addr(page), PAGE);
                Ok(())
            }
            Err(e) => Err(format!("cannot install guest page {page}: {e}")),
        }
    }

    /// Installs `buf` at `page` (UFFDIO_COPY with `mode`: the crate's `copy` does not offer
    /// MODE_WP). False if a page was there already (EEXIST): what it holds is not known to
    /// match the store, so the caller must not count it clean.
    fn copy_from_buf(&self, uffd: &Uffd, page: usize, mode: u64) -> Result<bool, String> {
        let mut copy = userfaultfd_sys::uffdio_copy {
            dst: self.addr(page) as u64,
            src: self.buf.as_ptr() as u64,
            len: PAGE as u64,
            mode,
            copy: 0,
        };
        loop {
            // SAFETY: UFFDIO_COPY reads PAGE bytes at `src` (our buffer, alive across the
            // call) and installs them at `dst`, a page of the registered region, only if no
            // page is there; it writes only the `copy` field of the struct it is given.
            let rc = unsafe {
                libc::ioctl(
                    uffd.as_raw_fd(),
                    userfaultfd_sys::UFFDIO_COPY as _,
                    &mut copy,
                )
            };
            if rc == 0 {
                return Ok(true);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => continue,
                Some(libc::EEXIST) => {
                    let _ = uffd.wake(self.addr(page), PAGE);
                    return Ok(false);
                }
                _ => {
                    return Err(format!(
                        "cannot install guest page {page} from the store: {}",
                        std::io::Error::last_os_error()
                    ))
                }
            }
        }
    }

    /// Serves a write to a write-protected page.
    fn write_protected(&mut self, uffd: &Uffd, page: usize) -> Result<(), String> {
        let at = self.addr(page);
        match self.state[page] {
            PageState::Clean | PageState::Written => {
                if self.state[page] == PageState::Clean {
                    self.state[page] = PageState::Written;
                    self.counters.write_faults.fetch_add(1, Ordering::Relaxed);
                }
                uffd.remove_write_protection(at, PAGE, true)
                    .map_err(|e| format!("cannot unprotect guest page {page}: {e}"))
            }
            // Evicted after the write met the protection: it retries and faults as missing.
            PageState::Stored | PageState::Zero | PageState::Untouched => {
                let _ = uffd.wake(at, PAGE);
                Ok(())
            }
        }
    }

    /// Evicts the oldest resident pages until `room` more fit under the cap, and some slack
    /// besides, so that the next faults do not each evict one.
    fn evict_down(&mut self, uffd: &Uffd, room: usize) {
        if self.resident + room <= self.cap {
            return;
        }
        let slack = (self.cap / 32).min(self.cap.saturating_sub(room));
        let target = self.cap.saturating_sub(room + slack);
        while self.resident > target {
            let Some((page, a)) = self.fifo.pop_front() else {
                break;
            };
            let page = page as usize;
            if self.arrival[page] != a || !self.state[page].resident() {
                continue; // stale entry
            }
            if let Err(e) = self.evict(uffd, page) {
                fatal(&e);
            }
        }
    }

    fn evict(&mut self, uffd: &Uffd, page: usize) -> Result<(), String> {
        let at = self.addr(page);
        let next = match self.state[page] {
            PageState::Clean => PageState::Stored,
            PageState::Written => {
                // Protected first: from here no write can land after the copy.
                uffd.write_protect(at, PAGE)
                    .map_err(|e| format!("cannot protect guest page {page}: {e}"))?;
                // SAFETY: the page is present (resident) and, write-protected, cannot change
                // under this read; `buf` is ours.
                let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, PAGE) };
                if bytes.iter().all(|&b| b == 0) {
                    self.counters.zero_evictions.fetch_add(1, Ordering::Relaxed);
                    PageState::Zero
                } else {
                    self.store
                        .write_all_at(bytes, (page * PAGE) as u64)
                        .map_err(|e| format!("cannot write page {page} to the store: {e}"))?;
                    self.counters.store_writes.fetch_add(1, Ordering::Relaxed);
                    PageState::Stored
                }
            }
            _ => return Ok(()),
        };
        // SAFETY: drops one page of guest RAM: KVM's mapping of it is invalidated by the
        // kernel (mmu notifier) and the next touch faults to this handler, which has its
        // contents; nothing in the VMM holds a reference into guest RAM across this.
        if unsafe { libc::madvise(at, PAGE, libc::MADV_DONTNEED) } != 0 {
            return Err(format!(
                "cannot drop guest page {page}: {}",
                std::io::Error::last_os_error()
            ));
        }
        self.state[page] = next;
        self.resident -= 1;
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn serve(uffd: &Uffd, mut pages: Pages, stop: &AtomicBool) {
    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::HostPager);
    let len = pages.state.len() * PAGE;
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
        loop {
            let event = match uffd.read_event() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => fatal(&format!("userfaultfd failed: {e}")),
            };
            let Event::Pagefault { kind, rw, addr, .. } = event else {
                continue;
            };
            let offset = (addr as usize).wrapping_sub(pages.host);
            if offset >= len {
                log::error!("host paging: a fault at {addr:?}, outside guest memory");
                continue;
            }
            let page = offset / PAGE;
            let started = std::time::Instant::now();
            let done = match kind {
                FaultKind::Missing => pages.missing(uffd, page, rw == ReadWrite::Write),
                FaultKind::WriteProtected => pages.write_protected(uffd, page),
            };
            if let Err(e) = done {
                fatal(&e);
            }
            if kind == FaultKind::Missing {
                pages
                    .counters
                    .serve_ns
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};

    /// Host paging of plain memory (no VM: this thread's own accesses fault to the handler
    /// as the guest's would): with 16 pages resident, 256 pages written and read back in
    /// several patterns all hold what was written, and the cap held.
    #[test]
    fn no_page_is_lost_with_a_sixteenth_resident() {
        const PAGES: usize = 256;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), PAGES * PAGE)])
            .expect("guest memory");
        // A page the "VMM" wrote before paging started counts as resident.
        memory
            .write_obj(0xfeed_u64, GuestAddress(5 * PAGE as u64))
            .unwrap();
        let mut pager = HostPager::start(&memory, (16 * PAGE) as u64).expect("start");
        let word = |page: usize, round: u64| (page as u64) << 8 | round;
        assert_eq!(
            memory
                .read_obj::<u64>(GuestAddress(5 * PAGE as u64))
                .unwrap(),
            0xfeed
        );
        for round in 0..3u64 {
            // Every page written (round 1: only the even ones, so the odd ones come back
            // clean from the store and are evicted without a write).
            for page in (0..PAGES).filter(|p| round != 1 || p % 2 == 0) {
                let at = GuestAddress((page * PAGE + 8 * (round as usize)) as u64);
                memory.write_obj(word(page, round), at).unwrap();
            }
            for page in 0..PAGES {
                for r in 0..=round {
                    if r == 1 && page % 2 == 1 {
                        continue;
                    }
                    let at = GuestAddress((page * PAGE + 8 * r as usize) as u64);
                    assert_eq!(
                        memory.read_obj::<u64>(at).unwrap(),
                        word(page, r),
                        "page {page} round {r}"
                    );
                }
            }
        }
        // A page read back (protected, clean) and then written: the write is seen, kept.
        let first = GuestAddress(0);
        assert_eq!(memory.read_obj::<u64>(first).unwrap(), word(0, 0));
        memory.write_obj(7u64, first).unwrap();
        for page in 1..PAGES {
            let _ = memory.read_obj::<u64>(GuestAddress((page * PAGE) as u64));
        }
        assert_eq!(memory.read_obj::<u64>(first).unwrap(), 7);
        // Never-written memory reads zero.
        let untouched = GuestAddress((PAGES * PAGE - 16) as u64);
        assert_eq!(memory.read_obj::<u64>(untouched).unwrap(), 0);
        let s = pager.summary();
        pager.stop();
        assert!(s.peak_resident_kib <= 16 * 4, "{s:?}");
        assert!(s.resident_at_exit_kib <= 16 * 4, "{s:?}");
        assert!(
            s.evictions > PAGES as u64 && s.store_reads > 0 && s.store_writes > 0,
            "{s:?}"
        );
        // Some pages were evicted clean (read back, never written, dropped unwritten), and
        // writes to protected pages were seen.
        assert!(s.evictions > s.store_writes + s.zero_evictions, "{s:?}");
        assert!(s.write_faults > 0, "{s:?}");
    }

    /// Writes racing evictions: one thread keeps rewriting 8 hot pages (FIFO evicts them in
    /// turn) while another streams through the rest. A write that landed between the
    /// eviction's copy and its drop would be lost; the write protection taken before the
    /// copy is what prevents it (without it, dozens of writes a second were lost).
    #[test]
    fn writes_racing_evictions_are_never_lost() {
        use std::sync::atomic::AtomicBool;
        const PAGES: usize = 1024;
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), PAGES * PAGE)]).unwrap(),
        );
        let mut pager = HostPager::start(&memory, (32 * PAGE) as u64).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (m, d) = (Arc::clone(&memory), Arc::clone(&done));
        let streamer = std::thread::spawn(move || {
            let mut i = 0usize;
            while !d.load(Ordering::Relaxed) {
                let page = 8 + i % (PAGES - 8);
                m.write_obj(i as u64, GuestAddress((page * PAGE + 64) as u64))
                    .unwrap();
                i += 1;
            }
        });
        let mut last = [0u64; 8];
        let mut lost = 0u64;
        let started = std::time::Instant::now();
        let mut n = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            n += 1;
            let hot = (n % 8) as usize;
            let at = GuestAddress((hot * PAGE) as u64);
            assert_eq!(memory.read_obj::<u64>(at).unwrap(), last[hot], "page {hot}");
            last[hot] = n;
            memory.write_obj(n, at).unwrap();
            if memory.read_obj::<u64>(at).unwrap() != n {
                lost += 1;
            }
        }
        done.store(true, Ordering::Relaxed);
        streamer.join().unwrap();
        let s = pager.summary();
        pager.stop();
        assert_eq!(lost, 0, "{s:?}");
        assert!(
            s.evictions > 1000,
            "the hot pages were not evicted while written: {s:?}"
        );
    }
}
