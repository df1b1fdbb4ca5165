//! The runtime every fluke user program links: the `_start` entry point, the panic handler,
//! kernel-call wrappers and console printing.
//!
//! A program is `#![no_std] #![no_main]`, depends on this crate and defines
//! `#[no_mangle] fn fluke_main(args: fluke_rt::Args) -> i32`. With the `alloc` feature it
//! also gets a global allocator ([`heap`]), so `extern crate alloc` works.
#![no_std]

pub mod blk;
pub mod chan;
#[cfg(feature = "alloc")]
pub mod heap;
pub mod proc;
pub mod sys;
pub mod thread;

use core::fmt;

pub use fluke_abi::syscall::Error;

extern "Rust" {
    fn fluke_main(args: Args) -> i32;
}

/// The program's arguments, as the kernel laid them out: `(ptr, len)` pairs.
#[derive(Clone, Copy)]
pub struct Args {
    argc: usize,
    argv: *const [usize; 2],
}

impl Args {
    pub fn len(&self) -> usize {
        self.argc
    }

    pub fn is_empty(&self) -> bool {
        self.argc == 0
    }

    pub fn get(&self, i: usize) -> Option<&'static str> {
        if i >= self.argc {
            return None;
        }
        // SAFETY: the kernel wrote argc valid (ptr, len) pairs pointing into the stack pages
        // it mapped for this program, which live as long as the program.
        let [ptr, len] = unsafe { *self.argv.add(i) };
        let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
        core::str::from_utf8(bytes).ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        (0..self.argc).filter_map(|i| self.get(i))
    }
}

/// Program entry: the kernel starts the first thread here, `rdi` = argc, `rsi` = argv.
#[no_mangle]
#[link_section = ".text._start"]
pub extern "C" fn _start(argc: usize, argv: *const [usize; 2]) -> ! {
    // SAFETY: fluke_main is defined by the program being linked.
    let status = unsafe { fluke_main(Args { argc, argv }) };
    sys::exit(status)
}

/// Lets the first thread's stack grow `extra` bytes (rounded up to pages) further down than
/// the `STACK_SIZE` the kernel (or a nester) gives it: demand-zero memory right below it,
/// so a page costs a frame only once the stack reaches it, and the page below the new
/// bottom still faults. For crates that keep large values on the stack (`miniz_oxide`'s
/// compressor holds a 64 KiB buffer inline). Only for the first thread's stack; it fails
/// (InvalidArgument) if the range is taken, e.g. by an earlier call.
pub fn grow_stack(extra: u64) -> Result<(), Error> {
    use fluke_abi::syscall::layout::{STACK_SIZE, STACK_TOP};
    let extra = extra.next_multiple_of(4096);
    let bottom = STACK_TOP - STACK_SIZE;
    sys::map_anon(bottom - extra, extra).map(|_| ())
}

/// Formats a number without a heap (for program arguments).
pub struct NumBuf {
    bytes: [u8; 20],
}

impl NumBuf {
    pub const fn new() -> NumBuf {
        NumBuf { bytes: [0; 20] }
    }

    pub fn format(&mut self, mut n: u64) -> &str {
        let mut i = self.bytes.len();
        loop {
            i -= 1;
            self.bytes[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        core::str::from_utf8(&self.bytes[i..]).unwrap_or("0")
    }
}

impl Default for NumBuf {
    fn default() -> Self {
        NumBuf::new()
    }
}

pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        sys::console_write(s.as_bytes())
            .map(|_| ())
            .map_err(|_| fmt::Error)
    }
}

/// Formats into a stack buffer and writes it with one kernel call (each call is a
/// user/kernel crossing, ~2.4 µs on kvm_pvm; each console byte an exit to the VMM).
pub fn print_fmt(args: fmt::Arguments) {
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for &b in s.as_bytes() {
                if self.len == self.bytes.len() {
                    let _ = sys::console_write(&self.bytes);
                    self.len = 0;
                }
                self.bytes[self.len] = b;
                self.len += 1;
            }
            Ok(())
        }
    }
    let mut buf = Buf {
        bytes: [0; 512],
        len: 0,
    };
    let _ = fmt::Write::write_fmt(&mut buf, args);
    let _ = sys::console_write(&buf.bytes[..buf.len]);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::print_fmt(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::print_fmt(format_args!("{}\n", format_args!($($arg)*))));
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => println!("panic at {}:{}: {}", l.file(), l.line(), info.message()),
        None => println!("panic: {}", info.message()),
    }
    sys::exit(101)
}
