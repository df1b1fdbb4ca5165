//! The vCPU thread's half of the gdb stub: breakpoints, steps, registers and guest memory,
//! served while the vCPU is stopped, and the classification of the exits a breakpoint or a
//! step causes.
//!
//! Two mechanisms, chosen by platform (vmm/README.md, "gdb stub" says why):
//!
//! - hardware KVM: `int3` written into guest memory with KVM_GUESTDBG_USE_SW_BP, DR0-3
//!   with KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_SINGLESTEP (with BLOCKIRQ where KVM has it,
//!   so a step does not land in an interrupt handler). A #BP or #DB that is not ours is
//!   given back to the guest (KVM_GUESTDBG_INJECT_BP / INJECT_DB).
//! - kvm_pvm: none of those reach the VMM once the kernel runs in PV mode (int3 goes to the
//!   guest's own #BP handler, DR0-3 and TF do not fire), so a breakpoint is an
//!   `out %al, $BREAKPOINT_PORT` over the first two bytes of an instruction of at least two
//!   (an OUT exits to the VMM in either kvm_pvm mode and changes no register), and a step is
//!   such breakpoints at every address the instruction can continue at ([`super::insn`]).
//!   Where that address holds a 1-byte instruction (`push`, `pop`, `ret`, ...), the step's
//!   breakpoint is the 1-byte `out %al,(%dx)`, if the stepped instruction leaves RDX alone
//!   and DX is not a port KVM serves in the kernel (which would swallow the OUT): the exit's
//!   port is then known in advance.

use std::collections::BTreeMap;
use std::sync::Arc;

use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, kvm_regs, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_INJECT_DB, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::insn;
use super::link::{
    Answer, BreakpointKind, Link, Reply, Request, RequestError, ResumeMode, StopReason,
};
use super::paging::{self, PagingRegs, Roots};
use crate::boot::KernelText;

/// The port of the kvm_pvm breakpoint instruction (`e6 f5`: `out %al, $0xf5`); reserved in
/// `fluke_abi::ports`, never used by the guest.
pub const BREAKPOINT_PORT: u8 = fluke_abi::ports::GDB_BREAKPOINT as u8;
const OUT_IMM8_AL: u8 = 0xe6;
const OUT_DX_AL: u8 = 0xee;
/// Ports KVM's in-kernel irqchip serves (the PICs and their ELCR; the VM has no PIT): an
/// `out %al,(%dx)` to one of them would not reach the VMM.
const IN_KERNEL_PORTS: [u16; 6] = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1];
const INT3: u8 = 0xcc;
/// x86's longest instruction.
const MAX_INSN: usize = 15;

const DR6_BS: u64 = 1 << 14;
const DR6_B0_3: u64 = 0xf;
const EXCEPTION_DB: u32 = 1;
const EXCEPTION_BP: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// Hardware KVM; the KVM_GUESTDBG_* flags KVM_CAP_SET_GUEST_DEBUG2 reports (0: unknown,
    /// only the basic ones are used).
    GuestDebug { supported: u32 },
    /// kvm_pvm: patched OUT breakpoints and steps.
    PatchedOut,
}

/// Bytes of guest code replaced by the stub, and what was there.
#[derive(Clone, Debug)]
struct Patch {
    addr: u64,
    /// The port its OUT reaches the VMM on.
    port: u16,
    /// The guest-physical address of each byte (a patch may straddle a page).
    gpas: Vec<u64>,
    original: Vec<u8>,
    written: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Breakpoint {
    kind: BreakpointKind,
    /// None for a debug-register breakpoint.
    patch: Option<Patch>,
}

pub struct Debuggee {
    link: Arc<Link>,
    mechanism: Mechanism,
    /// Where the kernel's code is loaded: the translation while paging is off (`--gdb-wait`
    /// stops at the 32-bit entry, before the kernel's page tables exist), so that a
    /// breakpoint on a kernel function can be set there.
    text: KernelText,
    breakpoints: BTreeMap<u64, Breakpoint>,
    /// kvm_pvm: the breakpoints of a step in progress.
    step_patches: Vec<Patch>,
    /// DR0-3 (hardware KVM).
    hw_slots: [Option<u64>; 4],
    /// KVM_GUESTDBG_SINGLESTEP is on (hardware KVM).
    stepping: bool,
    /// A stop to report as soon as the current one is resumed, without running the guest
    /// (a step that cannot be done).
    stop_again: Option<StopReason>,
    hw_fallback_said: bool,
}

/// The guest as a stop sees it.
struct Stopped<'a> {
    vcpu: &'a VcpuFd,
    memory: &'a GuestMemoryMmap,
}

impl Debuggee {
    pub fn new(link: Arc<Link>, mechanism: Mechanism, text: KernelText) -> Debuggee {
        Debuggee {
            link,
            mechanism,
            text,
            breakpoints: BTreeMap::new(),
            step_patches: Vec::new(),
            hw_slots: [None; 4],
            stepping: false,
            stop_again: None,
            hw_fallback_said: false,
        }
    }

    /// The run loop's check before every KVM_RUN.
    pub fn stop_wanted(&self) -> bool {
        self.link.stop_wanted()
    }

    /// Serves gdb while the vCPU is stopped for `reason`. Returns false if the run must end
    /// instead (`must_stop`: the watchdog).
    pub fn serve_stop(
        &mut self,
        vcpu: &VcpuFd,
        memory: &GuestMemoryMmap,
        mut reason: StopReason,
        must_stop: &dyn Fn() -> bool,
    ) -> bool {
        let link = Arc::clone(&self.link);
        let at = Stopped { vcpu, memory };
        loop {
            log::debug!("gdb: vCPU stopped: {reason:?}");
            let resumed = link.stopped(reason, &mut |r| self.serve(&at, r), must_stop);
            if !resumed {
                return false;
            }
            match self.stop_again.take() {
                Some(again) => reason = again,
                None => return true,
            }
        }
    }

    /// The run is over.
    pub fn vm_ended(&self, status: Option<u8>) {
        self.link.ended(status);
    }

    /// A KVM_EXIT_DEBUG: the stop it means, or None if it was the guest's own #BP or #DB,
    /// given back to it.
    pub fn debug_exit(&mut self, vcpu: &VcpuFd, exit: &kvm_debug_exit_arch) -> Option<StopReason> {
        log::debug!(
            "gdb: debug exit: exception {} pc {:#x} dr6 {:#x} dr7 {:#x}",
            exit.exception,
            exit.pc,
            exit.dr6,
            exit.dr7
        );
        let mut regs = match vcpu.get_regs() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("gdb: KVM_GET_REGS at a debug exit failed: {e}");
                return Some(StopReason::Requested);
            }
        };
        match exit.exception {
            EXCEPTION_BP => {
                // KVM reports the int3's own address (VMX and SVM intercept #BP before
                // RIP moves); one past it is accepted too, and corrected.
                if self.is_int3_at(regs.rip) {
                    return Some(StopReason::SoftwareBreakpoint);
                }
                if self.is_int3_at(regs.rip.wrapping_sub(1)) {
                    regs.rip = regs.rip.wrapping_sub(1);
                    self.set_regs_or_warn(vcpu, &regs);
                    return Some(StopReason::SoftwareBreakpoint);
                }
                self.give_back(vcpu, KVM_GUESTDBG_INJECT_BP, "#BP");
                None
            }
            EXCEPTION_DB => {
                if exit.dr6 & DR6_BS != 0 && self.stepping {
                    return Some(StopReason::StepDone);
                }
                let ours = self
                    .hw_slots
                    .iter()
                    .enumerate()
                    .any(|(i, s)| s.is_some() && exit.dr6 & DR6_B0_3 & (1 << i) != 0);
                if ours {
                    return Some(StopReason::HardwareBreakpoint);
                }
                self.give_back(vcpu, KVM_GUESTDBG_INJECT_DB, "#DB");
                None
            }
            other => {
                log::warn!("gdb: debug exit for exception {other}; reporting a stop");
                Some(StopReason::Requested)
            }
        }
    }

    /// An OUT to `port` ([`Self::is_breakpoint_port`]), already completed by KVM (RIP just
    /// after it, on either platform): the stop it means if it came from one of the stub's
    /// patches, with RIP moved back onto it; None if the guest's own code wrote the port.
    pub fn breakpoint_out(
        &mut self,
        vcpu: &VcpuFd,
        memory: &GuestMemoryMmap,
        port: u16,
    ) -> Option<StopReason> {
        let mut regs = vcpu.get_regs().ok()?;
        // The patch that ends at RIP and exits on `port`.
        let ends_here =
            |p: &Patch| p.port == port && p.addr.wrapping_add(p.written.len() as u64) == regs.rip;
        let addr = self.all_patches().find(|p| ends_here(p)).map(|p| p.addr)?;
        let at_step = self.step_patches.iter().any(|p| p.addr == addr);
        let at_break = self
            .breakpoints
            .get(&addr)
            .filter(|b| b.patch.is_some())
            .map(|b| b.kind);
        if !at_step && at_break.is_none() {
            return None;
        }
        let at = Stopped { vcpu, memory };
        self.remove_step_patches(&at);
        regs.rip = addr;
        self.set_regs_or_warn(vcpu, &regs);
        Some(match at_break {
            Some(BreakpointKind::Software) => StopReason::SoftwareBreakpoint,
            Some(BreakpointKind::Hardware) => StopReason::HardwareBreakpoint,
            None => StopReason::StepDone,
        })
    }

    /// Whether an OUT to `port` may be one of the stub's breakpoints.
    pub fn is_breakpoint_port(&self, port: u16) -> bool {
        port == u16::from(BREAKPOINT_PORT) || self.step_patches.iter().any(|p| p.port == port)
    }

    fn is_int3_at(&self, addr: u64) -> bool {
        self.breakpoints
            .get(&addr)
            .and_then(|b| b.patch.as_ref())
            .is_some_and(|p| p.written == [INT3])
    }

    fn set_regs_or_warn(&self, vcpu: &VcpuFd, regs: &kvm_regs) {
        if let Err(e) = vcpu.set_regs(regs) {
            log::warn!("gdb: KVM_SET_REGS failed: {e}");
        }
    }

    /// Re-raises the guest's own exception (hardware KVM) and keeps debugging as it was.
    fn give_back(&mut self, vcpu: &VcpuFd, inject: u32, what: &str) {
        log::debug!("gdb: the guest's own {what}, given back to it");
        let mut debug = self.guest_debug(self.stepping);
        debug.control |= KVM_GUESTDBG_ENABLE | inject;
        if let Err(e) = vcpu.set_guest_debug(&debug) {
            log::warn!("gdb: cannot give the guest its {what} back (KVM_SET_GUEST_DEBUG: {e})");
        }
    }

    // ---- requests ----

    fn serve(&mut self, at: &Stopped, request: Request) -> (Answer, bool) {
        let refused = |msg: String| {
            log::warn!("gdb: {msg}");
            Err(RequestError::Refused(msg))
        };
        match request {
            Request::ReadRegisters => (self.read_registers(at), false),
            Request::WriteRegisters(regs) => (
                self.write_registers(at, &regs)
                    .map(|()| Reply::Done)
                    .or_else(refused),
                false,
            ),
            Request::ReadMemory { addr, len } => (
                match self.read_virt(at, addr, len) {
                    (data, _) if !data.is_empty() => Ok(Reply::Memory(data)),
                    (_, Some(e)) => Err(RequestError::Refused(e)),
                    (_, None) => Ok(Reply::Memory(Vec::new())),
                },
                false,
            ),
            Request::WriteMemory { addr, data } => (
                self.write_virt(at, addr, &data)
                    .map(|()| Reply::Done)
                    .or_else(refused),
                false,
            ),
            Request::AddBreakpoint { addr, kind } => (
                self.add_breakpoint(at, addr, kind)
                    .map(|()| Reply::Done)
                    .or_else(refused),
                false,
            ),
            Request::RemoveBreakpoint { addr, kind } => {
                self.remove_breakpoint(at, addr, kind);
                (Ok(Reply::Done), false)
            }
            Request::Resume(mode) => {
                self.resume(at, mode);
                (Ok(Reply::Done), true)
            }
            Request::Detach => {
                self.detach(at);
                (Ok(Reply::Done), true)
            }
        }
    }

    fn paging(&self, at: &Stopped) -> Result<(PagingRegs, kvm_bindings::kvm_sregs), String> {
        let sregs = at
            .vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
        Ok((PagingRegs::from_sregs(&sregs), sregs))
    }

    fn roots(&self) -> Roots {
        match self.mechanism {
            Mechanism::PatchedOut => Roots::KvmPvmPair,
            Mechanism::GuestDebug { .. } => Roots::Single,
        }
    }

    /// The guest-physical address of `gva` and how many bytes after it share its page.
    fn translate(
        &self,
        regs: &PagingRegs,
        memory: &GuestMemoryMmap,
        gva: u64,
    ) -> Result<(u64, u64), String> {
        if !regs.paging_enabled() {
            // Before the kernel's page tables: its code at its load address.
            if let Some((range, gpa)) = self.text.range_of(gva) {
                return Ok((gpa, (range.end - gva).min(0x1000 - (gva & 0xfff))));
            }
        }
        paging::translate(memory, regs, self.roots(), gva)
            .map(|t| (t.gpa, t.bytes_left_in_page))
            .map_err(|e| e.to_string())
    }

    /// Reads up to `len` bytes at `addr`: what could be read, and why it stopped short. The
    /// stub's own patches read as the code they replaced.
    fn read_virt(&self, at: &Stopped, addr: u64, len: usize) -> (Vec<u8>, Option<String>) {
        let regs = match self.paging(at) {
            Ok((r, _)) => r,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let gva = addr.wrapping_add(out.len() as u64);
            let (gpa, in_page) = match self.translate(&regs, at.memory, gva) {
                Ok(t) => t,
                Err(e) => return (self.unpatched(addr, out), Some(e)),
            };
            let n = ((len - out.len()) as u64).min(in_page) as usize;
            let start = out.len();
            out.resize(start + n, 0);
            if at
                .memory
                .read_slice(&mut out[start..], GuestAddress(gpa))
                .is_err()
            {
                out.truncate(start);
                let e = format!("{gva:#x} translates to {gpa:#x}, outside guest memory");
                return (self.unpatched(addr, out), Some(e));
            }
        }
        (self.unpatched(addr, out), None)
    }

    fn all_patches(&self) -> impl Iterator<Item = &Patch> {
        self.breakpoints
            .values()
            .filter_map(|b| b.patch.as_ref())
            .chain(self.step_patches.iter())
    }

    fn unpatched(&self, addr: u64, mut data: Vec<u8>) -> Vec<u8> {
        for p in self.all_patches() {
            for (i, &b) in p.original.iter().enumerate() {
                let off = p.addr.wrapping_add(i as u64).wrapping_sub(addr);
                if let Some(slot) = usize::try_from(off).ok().and_then(|o| data.get_mut(o)) {
                    *slot = b;
                }
            }
        }
        data
    }

    fn write_virt(&mut self, at: &Stopped, addr: u64, data: &[u8]) -> Result<(), String> {
        let (regs, _) = self.paging(at)?;
        // Bytes under a patch go into the patch's saved code, the rest into memory.
        let mut under_patch = vec![false; data.len()];
        let patches = self
            .breakpoints
            .values_mut()
            .filter_map(|b| b.patch.as_mut())
            .chain(self.step_patches.iter_mut());
        for p in patches {
            for (i, saved) in p.original.iter_mut().enumerate() {
                let off = p.addr.wrapping_add(i as u64).wrapping_sub(addr);
                if let Some(o) = usize::try_from(off).ok().filter(|&o| o < data.len()) {
                    *saved = data[o];
                    under_patch[o] = true;
                }
            }
        }
        let mut done = 0;
        while done < data.len() {
            let gva = addr.wrapping_add(done as u64);
            let (gpa, in_page) = self.translate(&regs, at.memory, gva)?;
            let n = ((data.len() - done) as u64).min(in_page) as usize;
            for i in 0..n {
                if !under_patch[done + i] {
                    at.memory
                        .write_obj(data[done + i], GuestAddress(gpa.wrapping_add(i as u64)))
                        .map_err(|_| {
                            format!("{gva:#x} translates to {gpa:#x}, outside guest memory")
                        })?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `bytes` (an OUT to `port`, or int3) over the code at `addr`, keeping what was
    /// there.
    fn patch(
        &self,
        at: &Stopped,
        regs: &PagingRegs,
        addr: u64,
        bytes: &[u8],
        port: u16,
    ) -> Result<Patch, String> {
        let mut gpas = Vec::with_capacity(bytes.len());
        let mut original = Vec::with_capacity(bytes.len());
        for i in 0..bytes.len() as u64 {
            let (gpa, _) = self.translate(regs, at.memory, addr.wrapping_add(i))?;
            let b: u8 = at
                .memory
                .read_obj(GuestAddress(gpa))
                .map_err(|_| format!("{addr:#x} translates to {gpa:#x}, outside guest memory"))?;
            gpas.push(gpa);
            original.push(b);
        }
        for (&gpa, &b) in gpas.iter().zip(bytes) {
            at.memory
                .write_obj(b, GuestAddress(gpa))
                .map_err(|_| format!("cannot write the breakpoint at {gpa:#x}"))?;
        }
        Ok(Patch {
            addr,
            port,
            gpas,
            original,
            written: bytes.to_vec(),
        })
    }

    fn unpatch(at: &Stopped, p: &Patch) {
        for ((&gpa, &orig), &ours) in p.gpas.iter().zip(&p.original).zip(&p.written) {
            // Put back only what is still ours (the guest may have rewritten its code).
            match at.memory.read_obj::<u8>(GuestAddress(gpa)) {
                Ok(now) if now == ours => {
                    let _ = at.memory.write_obj(orig, GuestAddress(gpa));
                }
                _ => log::warn!(
                    "gdb: the breakpoint byte at {:#x} (gpa {gpa:#x}) was changed by the guest; left as it is",
                    p.addr
                ),
            }
        }
    }

    /// The bitness to decode code at `addr` with: 64 above 4 GiB, else the CPU's mode.
    fn bitness(sregs: &kvm_bindings::kvm_sregs, addr: u64) -> u32 {
        if addr > u64::from(u32::MAX) || sregs.cs.l != 0 {
            64
        } else {
            32
        }
    }

    /// A kvm_pvm breakpoint at `addr`: `out %al, $BREAKPOINT_PORT` over an instruction of
    /// 2+ bytes; for a 1-byte one, `out %al,(%dx)` if `dx` (the port DX will hold when the
    /// guest gets there, known for a step) is given and reaches the VMM.
    fn patch_out(&self, at: &Stopped, addr: u64, dx: Option<u16>) -> Result<Patch, String> {
        if addr >> 63 == 0 {
            return Err(format!(
                "{addr:#x} is a user address: on kvm_pvm the stub can stop only in kernel code (an OUT from user mode is a #GP in the guest)"
            ));
        }
        let (regs, sregs) = self.paging(at)?;
        let (code, err) = self.read_virt(at, addr, MAX_INSN);
        let len = insn::length(&code, Self::bitness(&sregs, addr), addr).ok_or_else(|| {
            format!(
                "no instruction can be decoded at {addr:#x}{}",
                err.map(|e| format!(" ({e})")).unwrap_or_default()
            )
        })?;
        if len >= 2 {
            let port = u16::from(BREAKPOINT_PORT);
            return self.patch(at, &regs, addr, &[OUT_IMM8_AL, BREAKPOINT_PORT], port);
        }
        match dx {
            Some(port) if !IN_KERNEL_PORTS.contains(&port) => {
                self.patch(at, &regs, addr, &[OUT_DX_AL], port)
            }
            Some(port) => Err(format!(
                "the instruction at {addr:#x} is 1 byte long and DX ({port:#x}) is a port KVM serves itself, so no 1-byte breakpoint can stop there"
            )),
            None => Err(format!(
                "the instruction at {addr:#x} is 1 byte long; a kvm_pvm breakpoint is a 2-byte OUT and would overwrite the next instruction (put it on another instruction)"
            )),
        }
    }

    fn add_breakpoint(
        &mut self,
        at: &Stopped,
        addr: u64,
        kind: BreakpointKind,
    ) -> Result<(), String> {
        if let Some(b) = self.breakpoints.get(&addr) {
            return if b.kind == kind {
                Ok(())
            } else {
                Err(format!(
                    "{addr:#x} already has a breakpoint of the other kind"
                ))
            };
        }
        let patch = match (self.mechanism, kind) {
            (Mechanism::GuestDebug { .. }, BreakpointKind::Software) => {
                let (regs, _) = self.paging(at)?;
                Some(self.patch(at, &regs, addr, &[INT3], 0)?)
            }
            (Mechanism::GuestDebug { .. }, BreakpointKind::Hardware) => {
                let slot = self
                    .hw_slots
                    .iter_mut()
                    .find(|s| s.is_none())
                    .ok_or_else(|| "all four debug registers (DR0-3) are in use".to_string())?;
                *slot = Some(addr);
                None
            }
            (Mechanism::PatchedOut, _) => {
                if kind == BreakpointKind::Hardware && !self.hw_fallback_said {
                    log::warn!("gdb: kvm_pvm: debug registers do not fire in PV mode; hardware breakpoints are patched into the code like software ones");
                    self.hw_fallback_said = true;
                }
                Some(self.patch_out(at, addr, None)?)
            }
        };
        self.breakpoints.insert(addr, Breakpoint { kind, patch });
        Ok(())
    }

    fn remove_breakpoint(&mut self, at: &Stopped, addr: u64, kind: BreakpointKind) {
        if self.breakpoints.get(&addr).is_some_and(|b| b.kind == kind) {
            if let Some(b) = self.breakpoints.remove(&addr) {
                match b.patch {
                    Some(p) => Self::unpatch(at, &p),
                    None => self
                        .hw_slots
                        .iter_mut()
                        .filter(|s| **s == Some(addr))
                        .for_each(|s| *s = None),
                }
            }
        }
    }

    fn remove_step_patches(&mut self, at: &Stopped) {
        for p in std::mem::take(&mut self.step_patches) {
            Self::unpatch(at, &p);
        }
    }

    /// The KVM_SET_GUEST_DEBUG state for the breakpoints in place (hardware KVM).
    fn guest_debug(&self, step: bool) -> kvm_guest_debug {
        let mut debug = kvm_guest_debug::default();
        let supported = match self.mechanism {
            Mechanism::GuestDebug { supported } => supported,
            Mechanism::PatchedOut => return debug,
        };
        let sw = self.breakpoints.values().any(|b| b.patch.is_some());
        let mut dr7 = 0u64;
        for (i, slot) in self.hw_slots.iter().enumerate() {
            if let Some(addr) = slot {
                debug.arch.debugreg[i] = *addr;
                // Ln enabled, R/Wn = 00 (instruction fetch), LENn = 00.
                dr7 |= 1 << (2 * i);
            }
        }
        if sw || dr7 != 0 || step {
            debug.control = KVM_GUESTDBG_ENABLE;
        }
        if sw {
            debug.control |= KVM_GUESTDBG_USE_SW_BP;
        }
        if dr7 != 0 {
            debug.control |= KVM_GUESTDBG_USE_HW_BP;
            debug.arch.debugreg[7] = dr7;
        }
        if step {
            debug.control |= KVM_GUESTDBG_SINGLESTEP;
            if supported & KVM_GUESTDBG_BLOCKIRQ != 0 {
                debug.control |= KVM_GUESTDBG_BLOCKIRQ;
            }
        }
        debug
    }

    fn resume(&mut self, at: &Stopped, mode: ResumeMode) {
        let step = mode == ResumeMode::Step;
        match self.mechanism {
            Mechanism::GuestDebug { .. } => {
                let debug = self.guest_debug(step);
                match at.vcpu.set_guest_debug(&debug) {
                    Ok(()) => self.stepping = step,
                    Err(e) => {
                        log::warn!("gdb: KVM_SET_GUEST_DEBUG({:#x}) failed: {e}", debug.control);
                        if step {
                            self.stop_again = Some(StopReason::StepRefused(format!(
                                "KVM_SET_GUEST_DEBUG failed: {e}"
                            )));
                        }
                    }
                }
            }
            Mechanism::PatchedOut if step => {
                if let Err(why) = self.arm_patched_step(at) {
                    log::warn!("gdb: cannot single-step: {why}");
                    self.remove_step_patches(at);
                    self.stop_again = Some(StopReason::StepRefused(why));
                }
            }
            Mechanism::PatchedOut => {}
        }
    }

    /// Puts a breakpoint at every address the instruction at RIP can go on at.
    fn arm_patched_step(&mut self, at: &Stopped) -> Result<(), String> {
        let regs = at
            .vcpu
            .get_regs()
            .map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
        let (code, _) = self.read_virt(at, regs.rip, MAX_INSN);
        let read_u64 = |a: u64| {
            let (b, _) = self.read_virt(at, a, 8);
            b.try_into().ok().map(u64::from_le_bytes)
        };
        let targets = insn::successors(&code, &regs, &read_u64).map_err(|e| e.to_string())?;
        // DX as the guest will reach the next instruction, if this one leaves it alone.
        let dx = match insn::may_write_rdx(&code, regs.rip) {
            Some(false) => Some(regs.rdx as u16),
            _ => None,
        };
        for target in targets {
            if self.breakpoints.contains_key(&target)
                || self.step_patches.iter().any(|p| p.addr == target)
            {
                continue;
            }
            let p = self
                .patch_out(at, target, dx)
                .map_err(|e| format!("the next instruction: {e}"))?;
            self.step_patches.push(p);
        }
        Ok(())
    }

    fn detach(&mut self, at: &Stopped) {
        self.remove_step_patches(at);
        for (_, b) in std::mem::take(&mut self.breakpoints) {
            if let Some(p) = b.patch {
                Self::unpatch(at, &p);
            }
        }
        self.hw_slots = [None; 4];
        self.stepping = false;
        self.stop_again = None;
        if let Mechanism::GuestDebug { .. } = self.mechanism {
            if let Err(e) = at.vcpu.set_guest_debug(&kvm_guest_debug::default()) {
                log::warn!("gdb: turning guest debugging off failed: {e}");
            }
        }
        log::info!("gdb: detached; breakpoints removed, the guest runs on");
    }

    fn read_registers(&self, at: &Stopped) -> Answer {
        let failed = |what: &str, e: kvm_ioctls::Error| {
            let msg = format!("{what} failed: {e}");
            log::warn!("gdb: {msg}");
            RequestError::Refused(msg)
        };
        let regs = at.vcpu.get_regs().map_err(|e| failed("KVM_GET_REGS", e))?;
        let sregs = at
            .vcpu
            .get_sregs()
            .map_err(|e| failed("KVM_GET_SREGS", e))?;
        let fpu = at
            .vcpu
            .get_fpu()
            .inspect_err(|e| {
                log::warn!("gdb: KVM_GET_FPU failed ({e}); FPU and SSE registers read as 0")
            })
            .unwrap_or_default();
        Ok(Reply::Registers(Box::new(to_gdb(&regs, &sregs, &fpu))))
    }

    fn write_registers(&self, at: &Stopped, new: &X86_64CoreRegs) -> Result<(), String> {
        let mut regs = at
            .vcpu
            .get_regs()
            .map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
        let sregs = at
            .vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
        let seg = &new.segments;
        let now = [sregs.cs, sregs.ss, sregs.ds, sregs.es, sregs.fs, sregs.gs]
            .map(|s| u32::from(s.selector));
        if [seg.cs, seg.ss, seg.ds, seg.es, seg.fs, seg.gs] != now {
            return Err("segment registers cannot be changed from gdb".into());
        }
        let r = &new.regs;
        [
            regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ] = *r;
        regs.rip = new.rip;
        // The upper 32 bits of RFLAGS are reserved (zero).
        regs.rflags = u64::from(new.eflags);
        at.vcpu
            .set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS failed: {e}"))?;
        if let Ok(mut fpu) = at.vcpu.get_fpu() {
            from_gdb_fpu(new, &mut fpu);
            at.vcpu
                .set_fpu(&fpu)
                .map_err(|e| format!("KVM_SET_FPU failed: {e}"))?;
        }
        Ok(())
    }
}

/// KVM's registers as gdb's x86-64 core + SSE set.
pub fn to_gdb(
    regs: &kvm_regs,
    sregs: &kvm_bindings::kvm_sregs,
    fpu: &kvm_bindings::kvm_fpu,
) -> X86_64CoreRegs {
    let mut g = X86_64CoreRegs {
        regs: [
            regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ],
        // gdb's eflags is 32 bits; the upper half of RFLAGS is reserved.
        eflags: regs.rflags as u32,
        rip: regs.rip,
        ..Default::default()
    };
    g.segments.cs = sregs.cs.selector.into();
    g.segments.ss = sregs.ss.selector.into();
    g.segments.ds = sregs.ds.selector.into();
    g.segments.es = sregs.es.selector.into();
    g.segments.fs = sregs.fs.selector.into();
    g.segments.gs = sregs.gs.selector.into();
    for (st, fpr) in g.st.iter_mut().zip(&fpu.fpr) {
        st.copy_from_slice(&fpr[..10]);
    }
    g.fpu.fctrl = fpu.fcw.into();
    g.fpu.fstat = fpu.fsw.into();
    g.fpu.ftag = full_tag_word(fpu.ftwx);
    g.fpu.fioff = fpu.last_ip as u32;
    g.fpu.fooff = fpu.last_dp as u32;
    g.fpu.fop = fpu.last_opcode.into();
    for (x, k) in g.xmm.iter_mut().zip(&fpu.xmm) {
        *x = u128::from_le_bytes(*k);
    }
    g.mxcsr = fpu.mxcsr;
    g
}

fn from_gdb_fpu(g: &X86_64CoreRegs, fpu: &mut kvm_bindings::kvm_fpu) {
    for (fpr, st) in fpu.fpr.iter_mut().zip(&g.st) {
        fpr[..10].copy_from_slice(st);
    }
    fpu.fcw = g.fpu.fctrl as u16;
    fpu.fsw = g.fpu.fstat as u16;
    fpu.ftwx = abridged_tag(g.fpu.ftag);
    fpu.last_opcode = g.fpu.fop as u16;
    for (k, x) in fpu.xmm.iter_mut().zip(&g.xmm) {
        *k = x.to_le_bytes();
    }
    fpu.mxcsr = g.mxcsr;
}

/// FXSAVE's abridged tag (a bit per register: 1 = in use) as the x87 tag word gdb shows (2
/// bits per register: 11 = empty). An in-use register is shown as valid (00): telling zero
/// and special values apart would need their contents, and gdb does not act on it.
fn full_tag_word(abridged: u8) -> u32 {
    (0..8)
        .map(|i| {
            if abridged & (1 << i) != 0 {
                0
            } else {
                3 << (2 * i)
            }
        })
        .sum()
}

fn abridged_tag(full: u32) -> u8 {
    (0..8)
        .filter(|i| (full >> (2 * i)) & 3 != 3)
        .map(|i| 1u8 << i)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_words_round_trip() {
        assert_eq!(full_tag_word(0), 0xffff);
        assert_eq!(full_tag_word(0xff), 0);
        assert_eq!(full_tag_word(0b0000_0001), 0xfffc);
        for t in [0u8, 1, 0x80, 0xa5, 0xff] {
            assert_eq!(abridged_tag(full_tag_word(t)), t);
        }
    }

    #[test]
    fn registers_go_to_gdb_in_its_order() {
        let regs = kvm_regs {
            rax: 1,
            rbx: 2,
            rsp: 8,
            r15: 16,
            rip: 0xffff_ffff_8010_1ee0,
            rflags: 0x246,
            ..Default::default()
        };
        let mut sregs = kvm_bindings::kvm_sregs::default();
        sregs.cs.selector = 0x10;
        sregs.ss.selector = 0x18;
        let fpu = kvm_bindings::kvm_fpu {
            mxcsr: 0x1f80,
            ..Default::default()
        };
        let g = to_gdb(&regs, &sregs, &fpu);
        assert_eq!(g.regs[0], 1);
        assert_eq!(g.regs[1], 2);
        assert_eq!(g.regs[7], 8);
        assert_eq!(g.regs[15], 16);
        assert_eq!(g.rip, 0xffff_ffff_8010_1ee0);
        assert_eq!(g.eflags, 0x246);
        assert_eq!((g.segments.cs, g.segments.ss), (0x10, 0x18));
        assert_eq!(g.mxcsr, 0x1f80);
        assert_eq!(g.fpu.ftag, 0xffff);
    }

    fn debuggee(mechanism: Mechanism) -> Debuggee {
        let control = Arc::new(crate::control::VmControl::default());
        let link = Arc::new(Link::new(control, false).unwrap());
        Debuggee::new(link, mechanism, KernelText::default())
    }

    #[test]
    fn guest_debug_flags_follow_the_breakpoints_in_place() {
        let mut d = debuggee(Mechanism::GuestDebug {
            supported: KVM_GUESTDBG_BLOCKIRQ | KVM_GUESTDBG_SINGLESTEP,
        });
        // Nothing in place: guest debugging off.
        assert_eq!(d.guest_debug(false).control, 0);
        let step = d.guest_debug(true);
        assert_eq!(
            step.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ
        );
        d.hw_slots[1] = Some(0xffff_ffff_8010_0000);
        let hw = d.guest_debug(false);
        assert_eq!(hw.control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        assert_eq!(hw.arch.debugreg[1], 0xffff_ffff_8010_0000);
        assert_eq!(hw.arch.debugreg[7], 1 << 2);
        d.breakpoints.insert(
            0x1000,
            Breakpoint {
                kind: BreakpointKind::Software,
                patch: Some(Patch {
                    addr: 0x1000,
                    port: 0,
                    gpas: vec![0x1000],
                    original: vec![0x55],
                    written: vec![INT3],
                }),
            },
        );
        assert_eq!(
            d.guest_debug(false).control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP | KVM_GUESTDBG_USE_SW_BP
        );
        assert!(d.is_int3_at(0x1000));
        assert!(!d.is_int3_at(0x1001));
        // Without BLOCKIRQ in KVM's list, a step goes without it.
        let d = debuggee(Mechanism::GuestDebug { supported: 0 });
        assert_eq!(
            d.guest_debug(true).control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
        );
        // kvm_pvm: never guest debugging.
        let d = debuggee(Mechanism::PatchedOut);
        assert_eq!(d.guest_debug(true).control, 0);
    }

    #[test]
    fn reads_show_the_code_under_a_patch() {
        let mut d = debuggee(Mechanism::PatchedOut);
        d.step_patches.push(Patch {
            addr: 0x2001,
            port: u16::from(BREAKPOINT_PORT),
            gpas: vec![0x2001, 0x2002],
            original: vec![0x48, 0x89],
            written: vec![OUT_IMM8_AL, BREAKPOINT_PORT],
        });
        let read = vec![0x90, OUT_IMM8_AL, BREAKPOINT_PORT, 0xe5];
        assert_eq!(d.unpatched(0x2000, read), vec![0x90, 0x48, 0x89, 0xe5]);
        // A read that starts inside the patch, and one that ends inside it.
        assert_eq!(d.unpatched(0x2002, vec![BREAKPOINT_PORT]), vec![0x89]);
        assert_eq!(
            d.unpatched(0x1fff, vec![0, 0, OUT_IMM8_AL]),
            vec![0, 0, 0x48]
        );
    }
}
