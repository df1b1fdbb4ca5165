//! `pager [-frames=N] [-store=KIB] [-stats] [>] PROGRAM ARGS...`: the demand-pager nester.
//!
//! Every space below the pager, at any depth, has a memory window (fluke-nest's
//! `WINDOW_BASE..WINDOW_END`: its heap, where programs map their data, and the slots where
//! a nester keeps its children's programs and stacks) that is a mapping of a region of
//! ours whose keeper we are: our direct child's we make ourselves, and every nester below
//! asks us for its child's (the memory service on the port it inherits at `MEMORY_CAP`),
//! so a process five layers down is paged by us directly.
//!
//! The pager holds at most `-frames` pages of all windows at once (default 256 = 1 MiB): a
//! page touched arrives as a fault, is brought in (from the store, or a zero page) with
//! `mem_install`, and when every frame is taken the clock picks a page to evict with
//! `mem_evict` (which unmaps it from every space that maps it in the same call as it
//! copies it out). Evicted pages go to the backing store: our own memory, compressed
//! (`fluke-pagestore`: runs of words in arithmetic progression, raw if that does not
//! shrink a page; zero pages take nothing), at most `-store` KiB (default 4096). A page is
//! never lost: if the store is full the page stays resident and the child is stopped with
//! a message. Every other kernel call goes straight to the kernel.
#![no_std]
#![no_main]

use fluke_abi::syscall::fault;
use fluke_abi::syscall::layout::MEMORY_CAP;
use fluke_nest::{memory, Command, Nester, Spec, CHILD_EXITED, NESTER_KEEP, WINDOW_SIZE};
use fluke_pagestore::{codec, Clock, Entry, Store, PAGE, SLOT, WORDS};
use fluke_rt::sys::{self, NO_CAP};
use fluke_rt::{println, Error};

const WINDOW_PAGES: u64 = WINDOW_SIZE / PAGE as u64;
/// The most windows (spaces below us with a memory window) at once.
const MAX_WINDOWS: usize = 128;

// Our own memory (all demand-zero: only what is used costs frames).
/// Our copy of every window, one after another (the regions we export): a page of window
/// `w` is "global page" `w * WINDOW_PAGES + page`, at `OWN_BASE + global * PAGE`.
const OWN_BASE: u64 = 0x1000_0000_0000;
/// One `Entry` per global page.
const ENTRIES_BASE: u64 = 0x2000_0000_0000;
/// Per window, the pages it ever used (so that releasing it costs what it used).
const LOG_BASE: u64 = 0x3000_0000_0000;
const STORE_BASE: u64 = 0x4000_0000_0000;
const NEXT_BASE: u64 = 0x4800_0000_0000;
const CLOCK_BASE: u64 = 0x5000_0000_0000;

const MAX_FRAMES: u64 = 1 << 16;
/// The badge of the port our exit watcher reports on (no other space holds it); requests
/// come on badge 0, faults on a window's badge (its id + 1).
const CONTROL: u64 = 1 << 32;
const MAX_STORE_KIB: u64 = 1 << 20;

struct Options {
    frames: u64,
    store_kib: u64,
    stats: bool,
}

#[derive(Default)]
struct Stats {
    faults: u64,
    evictions: u64,
    zero_pages: u64,
    raw_pages: u64,
    stored: u64,
    peak_store: usize,
    windows: u64,
    released: u64,
}

/// A page-aligned page buffer.
#[repr(C, align(4096))]
struct PageBuf([u64; WORDS]);

impl PageBuf {
    fn bytes(&mut self) -> &mut [u8; PAGE] {
        // SAFETY: [u64; 512] and [u8; 4096] have the same size; u8 has no alignment needs.
        unsafe { &mut *(self.0.as_mut_ptr() as *mut [u8; PAGE]) }
    }
}

static mut PAGE_BUF: PageBuf = PageBuf([0; WORDS]);
static mut CODE_BUF: [u8; PAGE] = [0; PAGE];

/// The page buffer and the compressed-page buffer.
///
/// # Safety
/// The pager is single-threaded; the caller must not hold buffers from an earlier call
/// (`serve` takes them only after `evict`, which takes its own, has returned).
unsafe fn buffers() -> (&'static mut PageBuf, &'static mut [u8; PAGE]) {
    (
        &mut *core::ptr::addr_of_mut!(PAGE_BUF),
        &mut *core::ptr::addr_of_mut!(CODE_BUF),
    )
}

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let mut o = Options {
        frames: 256,
        store_kib: 4096,
        stats: false,
    };
    let cmd = Command::parse(&args, |k, v| {
        match k {
            "frames" => o.frames = v.parse().map_err(|_| "-frames needs a number")?,
            "store" => o.store_kib = v.parse().map_err(|_| "-store needs a number (KiB)")?,
            "stats" => o.stats = true,
            _ => return Err("unknown option"),
        }
        Ok(())
    });
    let cmd = match cmd {
        Ok(c) if (4..=MAX_FRAMES).contains(&o.frames) && o.store_kib <= MAX_STORE_KIB => c,
        Ok(_) => {
            println!("pager: -frames must be 4..={MAX_FRAMES}, -store at most {MAX_STORE_KIB}");
            return 2;
        }
        Err(e) => {
            println!(
                "pager: {e}; usage: pager [-frames=N] [-store=KIB] [-stats] [>] PROGRAM ARGS..."
            );
            return 2;
        }
    };
    match run(&cmd, &o) {
        Ok(status) => status,
        Err(e) => {
            println!("pager: cannot run {}: {e:?}", cmd.program);
            1
        }
    }
}

fn run(cmd: &Command, o: &Options) -> Result<i32, Error> {
    let store_bytes = o.store_kib * 1024;
    let slots = store_bytes / SLOT as u64;
    let pages = MAX_WINDOWS as u64 * WINDOW_PAGES;
    sys::map_anon(OWN_BASE, pages * PAGE as u64)?;
    sys::map_anon(ENTRIES_BASE, pages * 8)?;
    sys::map_anon(LOG_BASE, (pages * 4).next_multiple_of(PAGE as u64))?;
    if store_bytes > 0 {
        sys::map_anon(STORE_BASE, store_bytes)?;
        sys::map_anon(NEXT_BASE, (slots * 4).next_multiple_of(PAGE as u64))?;
    }
    sys::map_anon(CLOCK_BASE, (o.frames * 8).next_multiple_of(PAGE as u64))?;
    // SAFETY: the ranges just reserved, used only through these slices.
    let (store_mem, next, entries, log, frames) = unsafe {
        (
            core::slice::from_raw_parts_mut(STORE_BASE as *mut u8, store_bytes as usize),
            core::slice::from_raw_parts_mut(NEXT_BASE as *mut u32, slots as usize),
            core::slice::from_raw_parts_mut(ENTRIES_BASE as *mut Entry, pages as usize),
            core::slice::from_raw_parts_mut(LOG_BASE as *mut u32, pages as usize),
            core::slice::from_raw_parts_mut(CLOCK_BASE as *mut u64, o.frames as usize),
        )
    };
    let set = sys::port_set_create()?;
    let requests = sys::port_create(set, 0)?;
    let control = sys::port_create(set, CONTROL)?;
    let mut pager = Pager {
        set,
        store: Store::new(store_mem, next),
        clock: Clock::new(frames),
        entries,
        log,
        windows: [None; MAX_WINDOWS],
        stats: Stats::default(),
    };
    let (window, first) = pager.new_window(NO_CAP)?;
    // What we keep: the resident frames, the store and its tables, our own needs.
    let keep = NESTER_KEEP + o.frames + o.frames / 512 + 2 * store_bytes.div_ceil(PAGE as u64) + 64;
    let mut nester = Nester::new();
    let caps = [(MEMORY_CAP, requests)];
    let spec = Spec {
        caps: &caps,
        keep,
        window: Some(window),
        ..Spec::default()
    };
    let child = nester.start_with(cmd.program, cmd.args(), &spec)?;
    let watcher = fluke_nest::watch_exit(&child, control, 0)?;
    let mut msg = sys::ipc_wait(set);
    loop {
        let m = msg?;
        let mut cap = NO_CAP;
        let reply = match (m.badge, m.words[0]) {
            (b @ 1.., fault::REGION) => {
                let w = (b - 1) as usize;
                if let Err(e) = pager.serve(w, m.words[1] / PAGE as u64) {
                    println!("pager: {e}; stopping {}", cmd.program);
                    let _ = sys::destroy(watcher);
                    nester.release(&child);
                    return Ok(1);
                }
                [0; 4]
            }
            (0, memory::WINDOW) => {
                // It must name the space the window is for: we take it back when that
                // space is gone (checked whenever a window is asked for).
                let is_space = sys::holds(m.cap, fluke_abi::syscall::objstate::SPACE);
                pager.collect();
                match is_space.then(|| pager.new_window(m.cap)) {
                    Some(Ok((region, w))) => {
                        cap = region;
                        [0, w as u64, 0, 0]
                    }
                    Some(Err(e)) => {
                        let _ = sys::cap_drop(m.cap);
                        [e as u64, 0, 0, 0]
                    }
                    None => {
                        if m.cap != NO_CAP {
                            let _ = sys::cap_drop(m.cap);
                        }
                        [Error::InvalidArgument as u64, 0, 0, 0]
                    }
                }
            }
            (0, memory::RELEASE) => {
                // Only with the window's own region: a space cannot release another's.
                let w = usize::try_from(m.words[1]).unwrap_or(usize::MAX);
                let proof = pager.holds_window(m.cap, w) && w != first;
                if m.cap != NO_CAP {
                    let _ = sys::cap_drop(m.cap);
                }
                if proof {
                    pager.release(w);
                    [0; 4]
                } else {
                    [Error::NoRights as u64, 0, 0, 0]
                }
            }
            (CONTROL, CHILD_EXITED) => {
                let _ = sys::destroy(watcher);
                nester.release(&child);
                pager.release(first);
                if o.stats {
                    pager.report(o);
                }
                return Ok(m.words[2] as i64 as i32);
            }
            _ => {
                if m.cap != NO_CAP {
                    let _ = sys::cap_drop(m.cap);
                }
                [Error::InvalidArgument as u64, 0, 0, 0]
            }
        };
        msg = sys::ipc_reply_wait(set, reply, cap);
    }
}

/// A window we serve: our region (exported) and its fault port, and how many pages of it
/// are in the log.
#[derive(Clone, Copy)]
struct Window {
    region: u64,
    port: u64,
    /// The space it is for (read-only; `NO_CAP` for our own child's, which we release
    /// ourselves).
    space: u64,
    logged: u64,
}

struct Pager<'a> {
    set: u64,
    store: Store<'a>,
    clock: Clock<'a>,
    entries: &'a mut [Entry],
    log: &'a mut [u32],
    windows: [Option<Window>; MAX_WINDOWS],
    stats: Stats,
}

fn own_page(global: u64) -> u64 {
    OWN_BASE + global * PAGE as u64
}

impl Pager<'_> {
    /// A new window: returns a capability to its region to hand out (USE, READ, GRANT) and
    /// its id.
    fn new_window(&mut self, space: u64) -> Result<(u64, usize), Error> {
        let w = self
            .windows
            .iter()
            .position(Option::is_none)
            .ok_or(Error::Exhausted)?;
        let port = sys::port_create(self.set, w as u64 + 1)?;
        let base = own_page(w as u64 * WINDOW_PAGES);
        let region = match sys::region_create(base, WINDOW_SIZE, port) {
            Ok(r) => r,
            Err(e) => {
                let _ = sys::destroy(port);
                return Err(e);
            }
        };
        let copy = match sys::cap_copy(region, 0b1011) {
            Ok(c) => c,
            Err(e) => {
                let _ = sys::destroy(region);
                let _ = sys::destroy(port);
                return Err(e);
            }
        };
        self.stats.windows += 1;
        self.windows[w] = Some(Window {
            region,
            port,
            space,
            logged: 0,
        });
        Ok((copy, w))
    }

    /// Whether `cap` (a capability someone sent us) is window `w`'s region.
    fn holds_window(&self, cap: u64, w: usize) -> bool {
        let Some(Some(win)) = self.windows.get(w) else {
            return false;
        };
        // Its keeper is our port for it (by our name for it): nobody else's region over
        // the same addresses can pass.
        sys::obj_get_state(cap).is_ok_and(|s| {
            s[0] == fluke_abi::syscall::objstate::REGION
                && s[1] == own_page(w as u64 * WINDOW_PAGES)
                && s[2] == WINDOW_SIZE
                && s[3] == win.port
        })
    }

    /// Releases the windows whose space is gone (a nester that ended without telling us);
    /// returns how many.
    fn collect(&mut self) -> usize {
        let dead: [bool; MAX_WINDOWS] = core::array::from_fn(|w| {
            self.windows[w]
                .is_some_and(|win| win.space != NO_CAP && sys::obj_get_state(win.space).is_err())
        });
        let mut n = 0;
        for (w, _) in dead.iter().enumerate().filter(|(_, &d)| d) {
            self.release(w);
            n += 1;
        }
        n
    }

    /// The space behind window `w` is gone: its pages and stored blobs are freed.
    fn release(&mut self, w: usize) {
        let Some(win) = self.windows.get_mut(w).and_then(Option::take) else {
            return;
        };
        self.stats.released += 1;
        let _ = sys::destroy(win.region); // unmaps it everywhere
        let _ = sys::destroy(win.port);
        if win.space != NO_CAP {
            let _ = sys::cap_drop(win.space);
        }
        let first = w as u64 * WINDOW_PAGES;
        for i in 0..win.logged {
            let global = first + u64::from(self.log[(first + i) as usize]);
            let entry = self.entries[global as usize];
            if entry.resident() {
                let _ = sys::mem_discard(own_page(global), PAGE as u64);
                self.clock.remove(global);
            } else if let Some((blob, _)) = entry.blob() {
                self.store.free(blob);
            }
            self.entries[global as usize] = Entry::EMPTY;
        }
    }

    /// Page `page` of window `w` was touched: bring it in.
    fn serve(&mut self, w: usize, page: u64) -> Result<(), &'static str> {
        let Some(win) = self.windows.get_mut(w).and_then(|x| x.as_mut()) else {
            return Ok(()); // a window released meanwhile: the fault is repeated, and fails
        };
        if page >= WINDOW_PAGES {
            return Ok(());
        }
        let global = w as u64 * WINDOW_PAGES + page;
        let entry = self.entries[global as usize];
        if entry.resident() {
            return Ok(()); // a second thread's fault on a page already brought in
        }
        if !entry.logged() {
            self.log[(w as u64 * WINDOW_PAGES + win.logged) as usize] = page as u32;
            win.logged += 1;
        }
        self.stats.faults += 1;
        if self.clock.is_full() {
            match self.evict() {
                // Windows of spaces gone hold frames and store: take them back, once.
                Err(_) if self.collect() > 0 => {
                    if self.clock.is_full() {
                        self.evict()?;
                    }
                }
                r => r?,
            }
        }
        // SAFETY: evict's buffers are no longer in use.
        let (buf, code) = unsafe { buffers() };
        match entry.blob() {
            Some((blob, true)) => {
                self.store.get(blob, buf.bytes()).ok_or("store corrupt")?;
                self.store.free(blob);
            }
            Some((blob, false)) => {
                self.store.get(blob, code).ok_or("store corrupt")?;
                codec::decompress(&code[..blob.len as usize], &mut buf.0)
                    .map_err(|_| "store corrupt")?;
                self.store.free(blob);
            }
            None => buf.0.fill(0),
        }
        sys::mem_install(own_page(global), buf.bytes()).map_err(|_| "cannot install a page")?;
        self.entries[global as usize] = Entry::RESIDENT.with_logged();
        self.clock.insert(global);
        Ok(())
    }

    /// Frees a frame: the clock's victim goes to the store.
    fn evict(&mut self) -> Result<(), &'static str> {
        let victim = self
            .clock
            .victim(|q| sys::mem_referenced(own_page(q)).unwrap_or(false))
            .ok_or("no page to evict")?;
        // SAFETY: serve takes its buffers only after this returns.
        let (buf, code) = unsafe { buffers() };
        sys::mem_evict(own_page(victim), buf.bytes()).map_err(|_| "cannot evict a page")?;
        self.stats.evictions += 1;
        let entry = if buf.0.iter().all(|&w| w == 0) {
            self.stats.zero_pages += 1;
            Some(Entry::EMPTY)
        } else {
            match codec::compress(&buf.0, code) {
                Some(n) => self.store.put(&code[..n]).map(|b| Entry::stored(b, false)),
                None => {
                    self.stats.raw_pages += 1;
                    self.store.put(buf.bytes()).map(|b| Entry::stored(b, true))
                }
            }
        };
        let Some(entry) = entry else {
            // Full: the page goes back where it was, untouched.
            let _ = sys::mem_install(own_page(victim), buf.bytes());
            self.clock.insert(victim);
            return Err("backing store full");
        };
        self.stats.stored += 1;
        self.stats.peak_store = self.stats.peak_store.max(self.store.used_bytes());
        self.entries[victim as usize] = entry.with_logged();
        Ok(())
    }

    fn report(&self, o: &Options) {
        let s = &self.stats;
        println!(
            "pager: {} frames, {} faults, {} evictions ({} zero, {} raw), store peak {} KiB of {} KiB, {} windows ({} released)",
            o.frames,
            s.faults,
            s.evictions,
            s.zero_pages,
            s.raw_pages,
            s.peak_store / 1024,
            o.store_kib,
            s.windows,
            s.released
        );
    }
}
