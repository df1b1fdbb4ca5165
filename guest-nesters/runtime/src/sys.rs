//! Kernel-call wrappers (the ABI is documented in fluke_abi::syscall).

use core::arch::asm;
use fluke_abi::syscall::{decode, BenchOp, Call, Error, FLOOR_SWITCH, FLOOR_SYSCALL};

/// A raw kernel call. Public for tests that pass garbage on purpose.
///
/// # Safety
/// Pointers passed must be valid for what the call does with them (the kernel checks them
/// anyway; this is about the program's own memory being overwritten as asked).
#[inline(always)]
pub unsafe fn raw(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let ret: u64;
    asm!(
        "syscall",
        inlateout("rax") nr => ret,
        in("rdi") a0,
        in("rsi") a1,
        inlateout("rdx") a2 => _,
        in("r10") a3,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

fn call(c: Call, a0: u64, a1: u64, a2: u64, a3: u64) -> Result<u64, Error> {
    // SAFETY: every wrapper below passes pointers from valid Rust references.
    decode(unsafe { raw(c as u64, a0, a1, a2, a3) })
}

pub fn null() -> Result<u64, Error> {
    call(Call::Null, 0, 0, 0, 0)
}

pub fn console_write(bytes: &[u8]) -> Result<u64, Error> {
    call(
        Call::ConsoleWrite,
        bytes.as_ptr() as u64,
        bytes.len() as u64,
        0,
        0,
    )
}

pub fn exit(status: i32) -> ! {
    let _ = call(Call::Exit, status as i64 as u64, 0, 0, 0);
    unreachable!("exit returned")
}

pub fn yield_now() {
    let _ = call(Call::Yield, 0, 0, 0, 0);
}

/// Nanoseconds since boot.
pub fn time_ns() -> u64 {
    call(Call::Time, 0, 0, 0, 0).unwrap_or(0)
}

/// Starts program `name` of the image with `args`; returns the child's id.
pub fn spawn(name: &str, args: &[&str]) -> Result<u64, Error> {
    let mut buf = [0u8; 1024];
    let mut len = 0;
    for a in args {
        let b = a.as_bytes();
        if len + b.len() + 1 > buf.len() {
            return Err(Error::InvalidArgument);
        }
        buf[len..len + b.len()].copy_from_slice(b);
        len += b.len() + 1;
    }
    call(
        Call::Spawn,
        name.as_ptr() as u64,
        name.len() as u64,
        buf.as_ptr() as u64,
        len as u64,
    )
}

/// Waits for a child to exit and returns its status.
pub fn wait(child: u64) -> Result<i32, Error> {
    call(Call::Wait, child, 0, 0, 0).map(|s| s as i64 as i32)
}

pub fn sleep_ns(ns: u64) {
    let _ = call(Call::Sleep, ns, 0, 0, 0);
}

/// Reserves demand-zero memory at a page-aligned address.
pub fn map_anon(addr: u64, len: u64) -> Result<u64, Error> {
    call(Call::MapAnon, addr, len, 0, 0)
}

pub fn bench(op: BenchOp, arg: u64) -> Result<u64, Error> {
    call(Call::Bench, op as u64, arg, 0, 0)
}

/// The platform floor: SYSCALL straight back to SYSRETQ in the entry code.
#[inline(always)]
pub fn floor_syscall() {
    // SAFETY: the floor call touches no memory; rcx/r11 are clobbered by SYSCALL.
    unsafe {
        asm!("syscall", inlateout("rax") FLOOR_SYSCALL => _, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
}

/// The bare switch to the other thread of the floor pair. Clobbers every register but RSP.
#[inline(always)]
pub fn floor_switch() {
    // SAFETY: all registers the other thread may change are declared clobbered; RSP and the
    // stack are preserved by the kernel.
    unsafe {
        asm!(
            "push rbp",
            "push rbx",
            "syscall",
            "pop rbx",
            "pop rbp",
            inlateout("rax") FLOOR_SWITCH => _,
            lateout("rcx") _, lateout("rdx") _, lateout("rsi") _, lateout("rdi") _,
            lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
        );
    }
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
