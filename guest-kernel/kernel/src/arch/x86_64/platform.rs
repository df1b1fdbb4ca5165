//! The platform layer: the only code that knows whether the kernel runs on kvm_pvm (PV
//! backend) or on an ordinary x86 virtual machine (native backend: hardware KVM, QEMU).
//!
//! The backend is chosen once at boot by probing MSR 0x4b564d11 behind a #GP fixup
//! (pvm.md §8). Selection fails closed: if the probe answers "PVM" the PV backend is used
//! whatever the boot information says, so the native return paths (IRETQ to user mode, which
//! would keep kernel privilege on kvm_pvm: pvm.md §11 H1) are unreachable there.

use super::cpu;
use crate::sync::BootCell;
use core::sync::atomic::{AtomicU8, Ordering};
use fluke_abi::Platform;

use fluke_abi::pvm::{
    MSR_CONTROL as MSR_PVM_CONTROL, MSR_SIGNATURE as MSR_PVM_SIGNATURE, SIGNATURE as PVM_SIGNATURE,
};
/// SYSRET flips to the user half of the 8 KiB page-table pair.
const PVM_FLIP_ON_SYSRET: u64 = 0x01;
/// Events from user mode flip back to the kernel half.
const PVM_FLIP_ON_EVENT: u64 = 0x02;
/// SYSCALL from user mode flips back and takes the fast path.
const PVM_FLIP_ON_SYSCALL: u64 = 0x04;
/// #PF writes CR2 into the PV page (MOV from CR2 would trap).
const PVM_CR2_IN_PAGE: u64 = 0x10;
const PVM_FLAGS: u64 =
    PVM_FLIP_ON_SYSRET | PVM_FLIP_ON_EVENT | PVM_FLIP_ON_SYSCALL | PVM_CR2_IN_PAGE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Backend {
    /// Ordinary x86: CPL 0 kernel, STI/CLI, IRETQ, U/S page protection.
    Native = 0,
    /// kvm_pvm PV mode: kernel at hardware CPL 3, VIF byte, SYSRETQ-only returns, page-table pair.
    Pv = 1,
}

impl Backend {
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Pv => "pv",
        }
    }
}

/// The kvm_pvm per-vCPU page (pvm.md §4.2). The host gives the first 16 bytes a meaning;
/// the VMM the next 8 (`fluke_abi::pvm::PV_PAGE_RESTORED`).
#[repr(C, align(4096))]
pub struct PvPage {
    /// Virtual interrupt enable: IRQs are injected only while non-zero.
    vif: u8,
    /// Set by the host when an IRQ was held back because VIF was 0.
    pending: u8,
    _pad: [u8; 6],
    /// CR2 of the last page fault.
    cr2: u64,
    /// `fluke_abi::pvm::RESTORED` after a restore into a new VMM (PV mode is off).
    restored: u64,
    _rest: [u8; 4096 - 24],
}

const _: () =
    assert!(core::mem::offset_of!(PvPage, restored) as u64 == fluke_abi::pvm::PV_PAGE_RESTORED);

/// The PV control value written at boot, written again after a restore.
static PV_CONTROL: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Exported for entry.S, which sets VIF on the user-mode entry and exit paths.
#[no_mangle]
static PV_PAGE: BootCell<PvPage> = BootCell::new(PvPage {
    vif: 0,
    pending: 0,
    _pad: [0; 6],
    cr2: 0,
    restored: 0,
    _rest: [0; 4096 - 24],
});
static BACKEND: AtomicU8 = AtomicU8::new(Backend::Native as u8);
static PV_ON: AtomicU8 = AtomicU8::new(0);

pub fn backend() -> Backend {
    if BACKEND.load(Ordering::Relaxed) == Backend::Pv as u8 {
        Backend::Pv
    } else {
        Backend::Native
    }
}

pub fn pv_mode_on() -> bool {
    PV_ON.load(Ordering::Relaxed) != 0
}

/// What the boot-time probe found.
#[derive(Clone, Copy, Debug)]
pub struct Detection {
    pub platform: Platform,
    pub backend: Backend,
    /// The CPU offers x2APIC (read now: CPUID is the host's once PV mode is on).
    pub x2apic: bool,
    /// Physical address bits (CPUID 0x80000008): device windows above are refused.
    pub phys_bits: u32,
    /// KVM offers kvmclock, stable (read now, for the same reason).
    pub kvmclock: bool,
    /// CPUID leaf 7: SMEP, SMAP, UMIP (used by the native backend only).
    pub smep: bool,
    pub smap: bool,
    pub umip: bool,
}

/// Probes the platform. Must run in the boot phase: on kvm_pvm, CPUID returns the VMM's
/// table only until PV mode is on (pvm.md §4.3 rule 7). Needs the #GP gate (tables::init_early).
pub fn detect() -> Detection {
    let pvm = cpu::rdmsr_safe(MSR_PVM_SIGNATURE) == Some(PVM_SIGNATURE);
    let (platform, backend) = if pvm {
        (Platform::KvmPvm, Backend::Pv)
    } else {
        let sig = hypervisor_signature();
        let platform = match &sig {
            b"KVMKVMKVM\0\0\0" => Platform::Kvm,
            b"TCGTCGTCGTCG" => Platform::Qemu,
            _ => Platform::Native,
        };
        (platform, Backend::Native)
    };
    BACKEND.store(backend as u8, Ordering::Relaxed);
    let x2apic = cpu::cpuid(1, 0).ecx & (1 << 21) != 0;
    let leaf7 = if cpu::cpuid(0, 0).eax >= 7 {
        cpu::cpuid(7, 0)
    } else {
        cpu::CpuidResult::default()
    };
    // The physical address width (CPUID 0x80000008), read in the boot phase like the rest;
    // 36 bits if the leaf is missing (the architectural minimum with PAE).
    let phys_bits = if cpu::cpuid(0x8000_0000, 0).eax >= 0x8000_0008 {
        cpu::cpuid(0x8000_0008, 0).eax & 0xff
    } else {
        36
    };
    Detection {
        platform,
        backend,
        x2apic,
        phys_bits,
        kvmclock: kvmclock_offered(),
        smep: leaf7.ebx & (1 << 7) != 0,
        smap: leaf7.ebx & (1 << 20) != 0,
        umip: leaf7.ecx & (1 << 2) != 0,
    }
}

/// Whether KVM's signature leaf is there with a stable kvmclock (kvm_pvm's CPUID shows it
/// too, before PV mode is on).
fn kvmclock_offered() -> bool {
    use fluke_abi::kvmclock::*;
    let r = cpu::cpuid(CPUID_SIGNATURE, 0);
    let kvm = hypervisor_signature() == *b"KVMKVMKVM\0\0\0" && r.eax >= CPUID_FEATURES;
    let want = FEATURE_CLOCKSOURCE2 | FEATURE_CLOCKSOURCE_STABLE;
    kvm && cpu::cpuid(CPUID_FEATURES, 0).eax & want == want
}

fn hypervisor_signature() -> [u8; 12] {
    let mut sig = [0u8; 12];
    if cpu::cpuid(1, 0).ecx & (1 << 31) == 0 {
        return sig;
    }
    let r = cpu::cpuid(0x4000_0000, 0);
    sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
    sig
}

/// Turns on kvm_pvm's PV mode: from the next instruction on, kernel code runs natively at
/// hardware CPL 3. Requirements met by the caller (pvm.md §4.3): every kernel page is U=1,
/// the kernel is in the upper half, the IDT uses upper-half IST stacks, and the Linux GDT is
/// loaded. The PV page lies in the kernel image, whose physical address is its virtual
/// address minus the link base.
pub fn enable_pv_mode() {
    if backend() != Backend::Pv {
        return;
    }
    let gpa = crate::mm::physmap::kernel_virt_to_phys(PV_PAGE.as_ptr() as u64);
    // SAFETY: the PV page is a page-aligned, zeroed kernel page inside guest RAM, and the
    // preconditions above hold; this is the protocol of pvm.md §4.1 with flags 0x17.
    unsafe { cpu::wrmsr(MSR_PVM_CONTROL, gpa | PVM_FLAGS) };
    PV_CONTROL.store(gpa | PVM_FLAGS, Ordering::Relaxed);
    PV_ON.store(1, Ordering::Relaxed);
    // The entry code's floor switch reads it (FS base switching).
    super::percpu::get().pv.set(1);
}

const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_UMIP: u64 = 1 << 11;
const CR4_FSGSBASE: u64 = 1 << 16;
const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;

/// Turns on the CPU's protections for the native backend once the kernel runs on its own
/// page tables (kernel half U=0): SMEP (ring 0 never executes a user page), SMAP (ring 0
/// never touches user memory: the kernel reaches it only through the direct map), UMIP
/// (user code cannot read descriptor-table addresses), where the CPU offers them; and
/// FXSAVE/SSE for user programs (their state is switched with the thread). Returns the names
/// of what was enabled. On kvm_pvm the kernel runs at hardware CPL 3 on U=1 pages, so SMEP
/// and SMAP cannot apply there; isolation comes from the page-table pair instead.
pub fn harden(d: &Detection) -> [Option<&'static str>; 3] {
    if d.backend != Backend::Native {
        return [None; 3];
    }
    // OSXSAVE and FSGSBASE stay off whatever the loader left: the FPU switch is FXSAVE
    // natively (fpu.rs), and user code must not choose its FS/GS bases.
    let mut cr4 = (cpu::read_cr4() & !(CR4_FSGSBASE | CR4_OSXSAVE)) | CR4_OSFXSR | CR4_OSXMMEXCPT;
    let mut on = [None; 3];
    for (i, (offered, bit, name)) in [
        (d.smep, CR4_SMEP, "smep"),
        (d.smap, CR4_SMAP, "smap"),
        (d.umip, CR4_UMIP, "umip"),
    ]
    .into_iter()
    .enumerate()
    {
        if offered {
            cr4 |= bit;
            on[i] = Some(name);
        }
    }
    // SAFETY: every bit is offered by CPUID; the kernel's own page tables are active (kernel
    // half supervisor-only), the kernel never executes or accesses user-half addresses
    // (copies go through the direct map), uses no SGDT/SIDT, and switches FXSAVE state.
    unsafe { cpu::write_cr4(cr4) };
    on
}

/// Enables maskable interrupts.
pub fn irq_enable() {
    match backend() {
        Backend::Native => {
            // SAFETY: the kernel is ready for interrupts whenever it calls this.
            // Not `nomem`: from here interrupt handlers may change kernel memory.
            unsafe { core::arch::asm!("sti", options(nostack)) }
        }
        Backend::Pv => {
            // SAFETY: the host reads the byte; a volatile store keeps it ordered.
            unsafe { core::ptr::addr_of_mut!((*PV_PAGE.as_ptr()).vif).write_volatile(1) };
            // An IRQ held back while VIF was 0 is injected only at the next trap: force one.
            // SAFETY: reading the pending byte has no side effects.
            if unsafe { core::ptr::addr_of!((*PV_PAGE.as_ptr()).pending).read_volatile() } != 0 {
                let _ = cpu::read_cr4();
            }
        }
    }
}

pub fn irq_disable() {
    match backend() {
        // SAFETY: disabling interrupts is always safe.
        Backend::Native => unsafe { core::arch::asm!("cli", options(nostack)) },
        // SAFETY: as in irq_enable.
        Backend::Pv => unsafe {
            core::ptr::addr_of_mut!((*PV_PAGE.as_ptr()).vif).write_volatile(0)
        },
    }
}

/// Sets the interrupt state that an event frame's RFLAGS.IF says to return to (pvm.md §4.3
/// rule 5: the host clears VIF on delivery and IRETQ does not restore it).
/// An NMI. The only sender is the VMM, after restoring this VM from a snapshot into a new
/// process on kvm_pvm: the vCPU then runs in kvm_pvm's default mode (the host cannot write
/// the PV control MSR), where this handler is entered through the IDT as any event and is
/// the first guest code to run. It turns PV mode back on, with the value of the boot, and the
/// event returns as it would have in PV mode. It touches nothing else, so it is safe
/// whatever it interrupted. Anywhere else (no flag) an NMI does nothing.
pub fn nmi() {
    if backend() != Backend::Pv {
        return;
    }
    // SAFETY: the PV page is kernel memory; the flag is written by the VMM only while the
    // vCPU is stopped, and by this handler, which nothing interrupts (NMIs are blocked).
    let flag = unsafe { core::ptr::addr_of_mut!((*PV_PAGE.as_ptr()).restored) };
    // SAFETY: as above.
    if unsafe { flag.read_volatile() } != fluke_abi::pvm::RESTORED {
        return;
    }
    // SAFETY: as above.
    unsafe { flag.write_volatile(0) };
    let control = PV_CONTROL.load(Ordering::Relaxed);
    // SAFETY: the same write as at boot (enable_pv_mode): the kernel PGD is loaded (the VMM
    // restores it for a user-mode context, pvm.md §4.3 rule 3) and the PV page is unchanged.
    unsafe { cpu::wrmsr(MSR_PVM_CONTROL, control) };
}

pub fn restore_irq_state_for_return(rflags: u64) {
    if backend() == Backend::Pv {
        let vif = u8::from(rflags & (1 << 9) != 0);
        // SAFETY: as in irq_enable; the return (IRETQ) is itself a trap, so an IRQ cannot be
        // injected between this store and the return.
        unsafe { core::ptr::addr_of_mut!((*PV_PAGE.as_ptr()).vif).write_volatile(vif) };
    }
}

/// Waits for the next interrupt with interrupts enabled, then disables them again.
pub fn idle() {
    match backend() {
        // SAFETY: STI's one-instruction shadow makes STI;HLT atomic. Not `nomem`: the
        // interrupt handlers that run while halted change kernel memory.
        Backend::Native => unsafe { core::arch::asm!("sti; hlt; cli", options(nostack)) },
        Backend::Pv => {
            irq_enable();
            cpu::hlt(); // trapped: sleeps until an IRQ is injectable
            irq_disable();
        }
    }
}

/// The faulting address of the last page fault.
pub fn fault_address() -> u64 {
    if pv_mode_on() {
        // SAFETY: the host writes CR2 here on #PF delivery (flag 0x10).
        unsafe { core::ptr::addr_of!((*PV_PAGE.as_ptr()).cr2).read_volatile() }
    } else {
        cpu::read_cr2()
    }
}

/// Whether kernel pages must carry U=1 (kvm_pvm runs the kernel at hardware CPL 3).
pub fn kernel_pages_user_accessible() -> bool {
    backend() == Backend::Pv
}

/// Writes the exit status to the debug-exit device; the VMM (or QEMU) ends the VM.
pub fn exit(status: u8) -> ! {
    // SAFETY: the debug-exit port belongs to the kernel.
    unsafe { cpu::outb(fluke_abi::ports::DEBUG_EXIT, status) };
    loop {
        irq_disable();
        cpu::hlt();
    }
}
