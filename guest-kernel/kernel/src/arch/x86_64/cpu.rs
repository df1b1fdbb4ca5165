//! Thin wrappers around single x86 instructions. Each is `unsafe` only where the instruction
//! can break the kernel's invariants (writing control registers or MSRs, port I/O); the
//! callers state why their use is sound.

use core::arch::asm;

/// # Safety
/// Port I/O reaches devices; the caller must own the device behind `port`.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
}

/// An 8-bit IN.
///
/// # Safety
/// The port must be one the caller owns (reading a device register can have effects).
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags));
    v
}

/// A 32-bit OUT that the compiler keeps after every memory write before it (no `nomem`):
/// for a device that reads what the value points to during the exit.
///
/// # Safety
/// As for [`outb`]: the port must be one the caller owns.
#[inline]
pub unsafe fn out32_after_writes(port: u16, value: u32) {
    asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags));
}

/// # Safety
/// Reading an MSR the CPU does not implement raises #GP; use [`rdmsr_safe`] for probes.
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// MSR writes change CPU behaviour globally; the caller must know the MSR's meaning.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
         options(nostack, preserves_flags));
}

/// Runs one instruction that may raise #GP (or any exception below 32) in the kernel, and
/// evaluates to whether it completed: a fault is redirected past it by the exception
/// handler through an `.extable` entry (`trap::fixup`), the one mechanism every such
/// instruction uses. Needs the IDT loaded. The operands are the instruction's own.
macro_rules! catch_fault {
    ($insn:literal, $($operands:tt)*) => {{
        let faulted: u32;
        asm!(
            "xor {f:e}, {f:e}",
            concat!("2: ", $insn),
            "jmp 4f",
            "3: mov {f:e}, 1",
            "4:",
            ".pushsection .extable, \"a\"",
            ".balign 8",
            ".quad 2b, 3b",
            ".popsection",
            f = out(reg) faulted,
            $($operands)*
        );
        faulted == 0
    }};
}

/// Reads an MSR, returning `None` if the read raised #GP (caught through the exception
/// table, see `trap::fixup`). Needs the IDT with the #GP gate loaded.
pub fn rdmsr_safe(msr: u32) -> Option<u64> {
    let (lo, hi): (u32, u32);
    // SAFETY: a faulting RDMSR is skipped (catch_fault); a successful one has no side
    // effects.
    let ok = unsafe {
        catch_fault!("rdmsr", in("ecx") msr, inout("eax") 0u32 => lo,
            inout("edx") 0u32 => hi, options(nostack))
    };
    ok.then_some((u64::from(hi) << 32) | u64::from(lo))
}

/// Writes an MSR, returning false if the write raised #GP (caught as in [`rdmsr_safe`]).
///
/// # Safety
/// As [`wrmsr`]: the caller must know what writing `value` there does.
pub unsafe fn wrmsr_safe(msr: u32, value: u64) -> bool {
    catch_fault!("wrmsr", in("ecx") msr, in("eax") value as u32,
        in("edx") (value >> 32) as u32, options(nostack))
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// CPUID. On kvm_pvm it returns the VMM's table only before PV mode is on (pvm.md §4.3 rule 7).
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// # Safety
/// `root` must be a page table that maps the running kernel (code, stack, data).
#[inline]
pub unsafe fn write_cr3(root: u64) {
    asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags));
}

#[inline]
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// CR4 changes paging and protection features globally: the caller must have checked that
/// the CPU offers every bit it sets and that the kernel obeys what they enforce.
#[inline]
pub unsafe fn write_cr4(value: u64) {
    asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags));
}

/// Reads CR2 directly (the native backend; on kvm_pvm it traps, see `platform::fault_address`).
#[inline]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

#[inline]
pub fn hlt() {
    // SAFETY: HLT waits for the next interrupt; the caller decides whether interrupts are on.
    // Not `nomem`: interrupt handlers that run meanwhile change kernel memory.
    unsafe { asm!("hlt", options(nostack, preserves_flags)) };
}

pub const MSR_EFER: u32 = 0xc000_0080;
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_NXE: u64 = 1 << 11;
