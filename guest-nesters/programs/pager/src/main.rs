//! `pager [-frames=N] [-store=KIB] [-stats] [>] PROGRAM ARGS...`: the demand-pager nester.
//!
//! The child's memory window ([`WINDOW_BASE`], [`WINDOW_END`]: where programs and the
//! nesters under it allocate memory) is a mapping of a region of ours whose keeper we are.
//! The pager holds at most `-frames` pages of it at once (default 256 = 1 MiB): a page the
//! child touches arrives as a fault, is brought in (from the store, or a zero page) with
//! `mem_install`, and when every frame is taken the clock picks a page to evict with
//! `mem_evict` (which unmaps it from the child, and from anything under the child, in the
//! same call as it copies it out). Evicted pages go to the backing store: our own memory,
//! compressed (`fluke-pagestore`: runs of words in arithmetic progression, raw if that does
//! not shrink a page; zero pages take nothing), at most `-store` KiB (default 4096).
//! A page is never lost: if the store is full the page stays resident and the child is
//! stopped with a message. Every other kernel call of the child goes straight to the kernel.
#![no_std]
#![no_main]

use fluke_abi::syscall::fault;
use fluke_nest::{Command, Nester, Spec, CHILD_EXITED, NESTER_KEEP};
use fluke_pagestore::{codec, Clock, Entry, Store, PAGE, SLOT, WORDS};
use fluke_rt::sys::{self, NO_CAP};
use fluke_rt::{println, Error};

/// The child's paged window: above its program, below its stack; it holds the memory
/// programs map (`work memory`) and the slots of any nester under us (fluke-nest's
/// `BACKING_BASE`, 64 slots of 256 MiB).
pub const WINDOW_BASE: u64 = 0x1000_0000;
pub const WINDOW_END: u64 = 0x14_0000_0000;
const WINDOW_SIZE: u64 = WINDOW_END - WINDOW_BASE;
const WINDOW_PAGES: u64 = WINDOW_SIZE / PAGE as u64;

// Our own memory (all demand-zero: only what is used costs frames).
/// Our copy of the window (the region we export).
const OWN_WINDOW: u64 = 0x40_0000_0000;
const STORE_BASE: u64 = 0x60_0000_0000;
const NEXT_BASE: u64 = 0x68_0000_0000;
/// One `Entry` per window page.
const ENTRIES_BASE: u64 = 0x70_0000_0000;
const CLOCK_BASE: u64 = 0x78_0000_0000;

const MAX_FRAMES: u64 = 1 << 16;
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
    sys::map_anon(OWN_WINDOW, WINDOW_SIZE)?;
    if store_bytes > 0 {
        sys::map_anon(STORE_BASE, store_bytes)?;
        sys::map_anon(NEXT_BASE, (slots * 4).next_multiple_of(PAGE as u64))?;
    }
    sys::map_anon(ENTRIES_BASE, WINDOW_PAGES * 8)?;
    sys::map_anon(CLOCK_BASE, (o.frames * 8).next_multiple_of(PAGE as u64))?;
    // SAFETY: the ranges just reserved, used only through these slices.
    let (store_mem, next, entries, frames) = unsafe {
        (
            core::slice::from_raw_parts_mut(STORE_BASE as *mut u8, store_bytes as usize),
            core::slice::from_raw_parts_mut(NEXT_BASE as *mut u32, slots as usize),
            core::slice::from_raw_parts_mut(ENTRIES_BASE as *mut Entry, WINDOW_PAGES as usize),
            core::slice::from_raw_parts_mut(CLOCK_BASE as *mut u64, o.frames as usize),
        )
    };
    let set = sys::port_set_create()?;
    let port = sys::port_create(set, 1)?;
    let region = sys::region_create(OWN_WINDOW, WINDOW_SIZE, port)?;
    // What we keep: the resident frames, the store and its tables, our own needs.
    let keep = NESTER_KEEP + o.frames + o.frames / 512 + 2 * store_bytes.div_ceil(PAGE as u64) + 64;
    let maps = [(region, WINDOW_BASE, sys::MAP_WRITE)];
    let mut nester = Nester::new();
    let spec = Spec {
        maps: &maps,
        keep,
        ..Spec::default()
    };
    let child = nester.start_with(cmd.program, cmd.args(), &spec)?;
    let watcher = fluke_nest::watch_exit(&child, port, 0)?;
    let mut pager = Pager {
        store: Store::new(store_mem, next),
        clock: Clock::new(frames),
        entries,
        stats: Stats::default(),
    };
    let mut msg = sys::ipc_wait(set);
    loop {
        let m = msg?;
        let reply = match m.words[0] {
            fault::REGION => {
                if let Err(e) = pager.serve(m.words[1] / PAGE as u64) {
                    println!("pager: {e}; stopping {}", cmd.program);
                    let _ = sys::destroy(watcher);
                    nester.release(&child);
                    return Ok(1);
                }
                [0; 4]
            }
            CHILD_EXITED => {
                let _ = sys::destroy(watcher);
                nester.release(&child);
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
        msg = sys::ipc_reply_wait(set, reply, NO_CAP);
    }
}

struct Pager<'a> {
    store: Store<'a>,
    clock: Clock<'a>,
    entries: &'a mut [Entry],
    stats: Stats,
}

fn own_page(page: u64) -> u64 {
    OWN_WINDOW + page * PAGE as u64
}

impl Pager<'_> {
    /// The child touched window page `page`: bring it in.
    fn serve(&mut self, page: u64) -> Result<(), &'static str> {
        let Some(&entry) = self.entries.get(page as usize) else {
            return Ok(()); // not ours to serve; the child faults again and is stopped
        };
        if entry.resident() {
            return Ok(()); // a second thread's fault on a page already brought in
        }
        self.stats.faults += 1;
        if self.clock.is_full() {
            self.evict()?;
        }
        // SAFETY: single-threaded use of the pager's page buffers.
        let (buf, code) = unsafe {
            (
                &mut *core::ptr::addr_of_mut!(PAGE_BUF),
                &mut *core::ptr::addr_of_mut!(CODE_BUF),
            )
        };
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
        sys::mem_install(own_page(page), buf.bytes()).map_err(|_| "cannot install a page")?;
        self.entries[page as usize] = Entry::RESIDENT;
        self.clock.insert(page);
        Ok(())
    }

    /// Frees a frame: the clock's victim goes to the store.
    fn evict(&mut self) -> Result<(), &'static str> {
        let victim = self
            .clock
            .victim(|q| sys::mem_referenced(own_page(q)).unwrap_or(false))
            .ok_or("no page to evict")?;
        // SAFETY: as in serve.
        let (buf, code) = unsafe {
            (
                &mut *core::ptr::addr_of_mut!(PAGE_BUF),
                &mut *core::ptr::addr_of_mut!(CODE_BUF),
            )
        };
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
        self.entries[victim as usize] = entry;
        Ok(())
    }

    fn report(&self, o: &Options) {
        let s = &self.stats;
        println!(
            "pager: {} frames, {} faults, {} evictions ({} zero, {} raw), store peak {} KiB of {} KiB",
            o.frames,
            s.faults,
            s.evictions,
            s.zero_pages,
            s.raw_pages,
            s.peak_store / 1024,
            o.store_kib
        );
    }
}
