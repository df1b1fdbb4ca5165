//! `disk MODE ...`: starts `blkdrv` on the first device init was given (its device-memory
//! and interrupt capabilities, `fluke_abi::devices`), and uses the drive through the driver's
//! port as any client would (`fluke_rt::blk`). Run as init (`fluke.init=disk,MODE,...`).
//!
//! - `pattern SEED`: writes a pattern of SEED across every sector, flushes, prints
//!   `disk: flushed`, then waits (to be killed: the test kills the VMM there);
//! - `verify SEED`: reads every sector back and compares;
//! - `readonly`: on a read-only drive, a write is refused with the status the driver
//!   reports, reads and a flush work;
//! - `kill`: the driver is destroyed while requests are in flight; the requests in flight
//!   fail, other programs run, a new driver takes the device over and serves;
//! - `bench N`: `BENCH` lines for 4 KiB read and write latency and sequential throughput.

#![no_std]
#![no_main]

use fluke_abi::devices::{init_devmem_cap, init_irq_cap};
use fluke_rt::blk::{BlkError, Client, Info, SECTOR};
use fluke_rt::{println, sys};

/// Sectors per request: one IPC message's data.
const CHUNK: usize = fluke_rt::blk::MAX_SECTORS as usize;
const CHUNK_BYTES: usize = CHUNK * SECTOR;

/// The driver, started, and the client's port to it.
struct Driver {
    child: sys::Child,
    set: u64,
    client: Client,
}

/// Starts `blkdrv` with device 0's capabilities and a port set of ours; our port in that
/// set is how we reach it.
fn start_driver() -> Result<Driver, fluke_rt::Error> {
    let set = sys::port_set_create()?;
    let port = sys::port_create(set, 1)?;
    let child = sys::spawn_child("blkdrv", &[], &[init_devmem_cap(0), init_irq_cap(0), set])?;
    Ok(Driver {
        child,
        set,
        client: Client::new(port),
    })
}

/// The byte of sector `sector` at `offset` in the pattern of `seed`.
fn pattern(seed: u64, sector: u64, offset: usize) -> u8 {
    let x = (sector.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.wrapping_mul(0xff51_afd7_ed55_8ccd))
        .wrapping_add(offset as u64 / 8);
    (x >> ((offset % 8) * 8)) as u8 ^ (x >> 56) as u8
}

fn fill(seed: u64, first: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(seed, first + (i / SECTOR) as u64, i % SECTOR);
    }
}

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let mode = args.get(0).unwrap_or("");
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let driver = match start_driver() {
        Ok(d) => d,
        Err(e) => {
            println!("disk: cannot start the driver: {e:?}");
            return 1;
        }
    };
    let info = match driver.client.info() {
        Ok(i) => i,
        Err(e) => {
            println!("disk: INFO: {e:?}");
            return 1;
        }
    };
    println!(
        "disk: {} sectors, read-only {}",
        info.sectors, info.read_only
    );
    match mode {
        "pattern" => write_pattern(&driver.client, info, number(1).unwrap_or(1)),
        "verify" => verify(&driver.client, info, number(1).unwrap_or(1)),
        "readonly" => read_only(&driver.client, info),
        "kill" => kill(driver, info),
        "bench" => bench(&driver.client, info, number(1).unwrap_or(200)),
        _ => {
            println!("disk: unknown mode {mode:?}");
            1
        }
    }
}

fn write_pattern(client: &Client, info: Info, seed: u64) -> i32 {
    let mut buf = [0u8; CHUNK_BYTES];
    let mut sector = 0;
    while sector < info.sectors {
        let n = CHUNK.min((info.sectors - sector) as usize);
        fill(seed, sector, &mut buf[..n * SECTOR]);
        if let Err(e) = client.write(sector, &buf[..n * SECTOR]) {
            println!("disk: write at sector {sector}: {e:?}");
            return 1;
        }
        sector += n as u64;
    }
    println!("disk: wrote {sector} sectors");
    if let Err(e) = client.flush() {
        println!("disk: flush: {e:?}");
        return 1;
    }
    println!("disk: flushed");
    loop {
        sys::sleep_ns(1_000_000_000);
    }
}

fn verify(client: &Client, info: Info, seed: u64) -> i32 {
    let mut buf = [0u8; CHUNK_BYTES];
    let mut want = [0u8; CHUNK_BYTES];
    let (mut sector, mut bad) = (0, 0u64);
    while sector < info.sectors {
        let n = CHUNK.min((info.sectors - sector) as usize);
        if let Err(e) = client.read(sector, &mut buf[..n * SECTOR]) {
            println!("disk: read at sector {sector}: {e:?}");
            return 1;
        }
        fill(seed, sector, &mut want[..n * SECTOR]);
        for s in 0..n {
            let range = s * SECTOR..(s + 1) * SECTOR;
            if buf[range.clone()] != want[range] {
                if bad < 4 {
                    println!("disk: sector {} differs", sector + s as u64);
                }
                bad += 1;
            }
        }
        sector += n as u64;
    }
    println!("disk: verified {sector} sectors, {bad} bad");
    i32::from(bad != 0)
}

fn read_only(client: &Client, info: Info) -> i32 {
    let mut buf = [0u8; CHUNK_BYTES];
    let write = client.write(0, &buf[..SECTOR]);
    match write {
        Err(BlkError::Status(s)) => println!("disk: write refused: {}", s.name()),
        other => println!("disk: write: {other:?}"),
    }
    let read = client.read(0, &mut buf);
    println!("disk: read: {read:?}, first byte {:#x}", buf[0]);
    let flush = client.flush();
    println!("disk: flush: {flush:?}");
    // Past the end, and more than one message's data: refused by the driver's checks.
    let past = client.read(info.sectors, &mut buf[..SECTOR]);
    println!("disk: read past the end: {past:?}");
    i32::from(!(info.read_only && write.is_err() && read.is_ok() && flush.is_ok() && past.is_err()))
}

const KILLER_STACK: u64 = 0x5000_0000;
const KILLER_STACK_LEN: u64 = 16 * 4096;

/// The killer thread: 30 ms on, destroys the driver's space and then the clients' port set
/// (`arg`: the space's name in the low 32 bits, the set's in the high). The set is ours,
/// not the driver's: a call queued on it while the driver was between requests would wait
/// for a server that no longer exists, so whoever ends a server ends its set with it, and
/// the calls queued there fail.
extern "C" fn killer(arg: u64) -> ! {
    sys::sleep_ns(30_000_000);
    let r = sys::destroy(arg & 0xffff_ffff);
    let set = sys::destroy(arg >> 32);
    println!("disk: the driver destroyed mid-stream: {r:?}, its clients' set: {set:?}");
    loop {
        sys::sleep_ns(1_000_000_000);
    }
}

fn kill(driver: Driver, info: Info) -> i32 {
    if sys::map_anon(KILLER_STACK, KILLER_STACK_LEN).is_err() {
        return 1;
    }
    let arg = driver.child.space | driver.set << 32;
    if let Err(e) = fluke_rt::thread::start(killer, arg, KILLER_STACK + KILLER_STACK_LEN) {
        println!("disk: no killer thread: {e:?}");
        return 1;
    }
    // Reads (each a device round trip) until the driver is gone under us.
    let mut buf = [0u8; CHUNK_BYTES];
    let mut done = 0u64;
    let failed = loop {
        let sector = (done * CHUNK as u64) % info.sectors.saturating_sub(CHUNK as u64).max(1);
        match driver.client.read(sector, &mut buf) {
            Ok(()) => done += 1,
            Err(e) => break e,
        }
        if done > 10_000_000 {
            println!("disk: the driver was never killed");
            return 1;
        }
    };
    println!("disk: {done} reads before the driver went; the one in flight: {failed:?}");
    let _ = sys::wait(driver.child.pid);
    // The kernel and other programs are unharmed.
    let hello = sys::spawn("hello", &["after-the-driver"]).and_then(sys::wait);
    println!("disk: another program: {hello:?}");
    // A new driver takes the device over (resets it, binds the line again) and serves.
    let again = match start_driver() {
        Ok(d) => d,
        Err(e) => {
            println!("disk: cannot start a second driver: {e:?}");
            return 1;
        }
    };
    let read = again.client.read(0, &mut buf);
    println!("disk: the second driver read sector 0: {read:?}");
    let _ = sys::destroy(again.set);
    i32::from(!(matches!(failed, BlkError::Ipc(_)) && hello == Ok(0) && read.is_ok()))
}

fn bench(client: &Client, info: Info, n: u64) -> i32 {
    let khz = sys::bench(fluke_abi::syscall::BenchOp::TscKhz, 0).unwrap_or(1_000_000);
    let ns = |ticks: u64| ticks as f64 * 1_000_000.0 / khz as f64;
    let mut buf = [0u8; CHUNK_BYTES];
    let span = (info.sectors / CHUNK as u64).max(1);
    if info.sectors < CHUNK as u64 {
        println!("disk: bench needs at least {CHUNK} sectors");
        return 1;
    }
    let timed = |f: &mut dyn FnMut(u64) -> Result<(), BlkError>| -> Result<u64, BlkError> {
        let start = sys::rdtsc();
        for i in 0..n {
            f(i)?;
        }
        Ok(sys::rdtsc() - start)
    };
    let reads = timed(&mut |i| client.read((i % span) * CHUNK as u64, &mut buf));
    let writes = timed(&mut |i| {
        fill(i, 0, &mut buf);
        client.write((i % span) * CHUNK as u64, &buf)
    });
    let (Ok(reads), Ok(writes)) = (reads, writes) else {
        println!("disk: bench: a request failed: {reads:?} {writes:?}");
        return 1;
    };
    println!("BENCH blk.read_4k {:.1} ns {n}", ns(reads) / n as f64);
    println!("BENCH blk.write_4k {:.1} ns {n}", ns(writes) / n as f64);
    // Sequential throughput: the whole drive (at most 16 MiB) read front to back.
    let total = (span * CHUNK as u64).min(16 << 20 >> 9);
    let mut whole = |_: u64| -> Result<(), BlkError> {
        let mut s = 0;
        while s < total {
            client.read(s, &mut buf)?;
            s += CHUNK as u64;
        }
        Ok(())
    };
    let start = sys::rdtsc();
    if let Err(e) = whole(0) {
        println!("disk: bench: sequential read: {e:?}");
        return 1;
    }
    let seconds = ns(sys::rdtsc() - start) / 1e9;
    let mib = (total * SECTOR as u64) as f64 / (1 << 20) as f64;
    println!(
        "BENCH blk.mib_s {:.1} MiB/s {}",
        mib / seconds,
        total / CHUNK as u64
    );
    0
}
