//! The vCPU run loop: KVM_RUN, then a plain `match` on the exit. Port I/O and MMIO go to
//! [`Devices`]; every other exit, and an access no device owns, ends the run as a crash
//! with a register report.
//!
//! Defence in depth (pvm.md §11): on kvm_pvm a kernel bug can leave user code running with
//! kernel privilege, and the CS selector cannot tell (it reads 0x33). So every port I/O exit
//! must come from the kernel's executable segments, or the run stops. The RIP comes from
//! the `kvm_run` sync-regs area when KVM supports KVM_CAP_SYNC_REGS (KVM copies the GPRs
//! there on every exit, no extra ioctl), else from KVM_GET_REGS.
//!
//! A guest OUT is checked *before* any device sees it. A guest IN is answered by the device
//! first (the answer lives in `kvm_run` and borrows the vCPU) and checked before the vCPU
//! resumes, so a rejected IN never reaches the guest.

use std::fmt::Write as _;

use kvm_bindings::kvm_clock_data;
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::KernelText;
use crate::control::{PauseHooks, VmControl};
use crate::devices::{pv_console, Devices, IoAction};
use crate::watchdog::Watchdog;

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest wrote its exit status to the debug-exit port.
    Exited(u8),
    /// The guest did something the VMM does not allow or cannot handle.
    Crashed { reason: String, registers: String },
    /// The watchdog stopped the guest.
    TimedOut { registers: String },
}

/// Where the run loop reads RIP for the port I/O check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RipSource {
    /// `kvm_run.s.regs`, filled by KVM on every exit (KVM_CAP_SYNC_REGS).
    SyncRegs,
    /// A KVM_GET_REGS ioctl per exit.
    GetRegs,
}

/// An exit, copied out of `kvm_run` so that the vCPU can be used again while handling it.
enum Exit {
    /// OUT to `port`; the data is in `VcpuRunner::io_data`.
    IoOut(u16),
    /// IN from `port`, already answered if `handled`.
    IoIn {
        port: u16,
        len: usize,
        handled: bool,
    },
    /// An MMIO access a device served.
    Mmio,
    /// KVM_RUN returned EINTR/EAGAIN or KVM_EXIT_INTR (the watchdog's kick).
    Interrupted,
    /// KVM_EXIT_DEBUG while gdb is attached (a breakpoint, a step, or the guest's own #BP/#DB).
    Debug(kvm_bindings::kvm_debug_exit_arch),
    /// KVM_EXIT_INTERNAL_ERROR; the sub-error is read from `kvm_run` afterwards.
    InternalError,
    /// Anything else: the run ends with this reason.
    Crash(String),
}

/// Where the RIP points at an OUT exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutRip {
    /// At the OUT instruction (hardware KVM: it skips the instruction when the exit completes).
    Instruction,
    /// Just after it (kvm_pvm, pvm.md §6; an IN exit there still points at the instruction).
    Next,
}

pub struct VcpuRunner<'a> {
    vcpu: VcpuFd,
    devices: &'a mut Devices,
    text: &'a KernelText,
    memory: &'a GuestMemoryMmap,
    out_rip: OutRip,
    rip_source: RipSource,
    watchdog: Option<&'a Watchdog>,
    /// Pause and resume requests (the API), if the run takes any.
    control: Option<&'a VmControl>,
    vm: &'a VmFd,
    /// What a snapshot records about the machine.
    about: MachineInfo,
    io_data: Vec<u8>,
    /// The last paravirtual console record's bytes (kept: no allocation per line).
    console_record: Vec<u8>,
    exits: u64,
    /// The gdb stub's vCPU half (`--gdb`).
    debugger: Option<&'a mut crate::gdb::debuggee::Debuggee>,
}

impl<'a> VcpuRunner<'a> {
    pub fn new(
        mut vcpu: VcpuFd,
        devices: &'a mut Devices,
        (text, memory, out_rip): (&'a KernelText, &'a GuestMemoryMmap, OutRip),
        rip_source: RipSource,
        (watchdog, control, vm): (Option<&'a Watchdog>, Option<&'a VmControl>, &'a VmFd),
        about: MachineInfo,
    ) -> VcpuRunner<'a> {
        if rip_source == RipSource::SyncRegs {
            vcpu.set_sync_valid_reg(SyncReg::Register);
        }
        // Kicks reach this thread (the calling one, which runs the vCPU) only inside
        // KVM_RUN, so none is lost (crate::kick). Set up here, before the thread confines
        // itself to its seccomp list.
        if let Err(e) = crate::kick::deliver_only_in_kvm_run(&vcpu) {
            log::warn!("vcpu: KVM_SET_SIGNAL_MASK failed (error {e}); kicks may be late");
        }
        VcpuRunner {
            vcpu,
            devices,
            text,
            memory,
            out_rip,
            rip_source,
            watchdog,
            control,
            vm,
            about,
            io_data: Vec::with_capacity(16),
            console_record: Vec::with_capacity(fluke_abi::ports::pv_console::MAX_LEN),
            exits: 0,
            debugger: None,
        }
    }

    /// Lets gdb stop and inspect this vCPU (`--gdb`).
    pub fn attach_debugger(&mut self, debugger: &'a mut crate::gdb::debuggee::Debuggee) {
        self.debugger = Some(debugger);
    }

    /// Exits handled so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    fn timed_out(&self) -> bool {
        self.watchdog.is_some_and(|w| w.expired())
    }

    /// Runs the guest until it exits, crashes or times out, pausing where asked. Must be
    /// called on the thread that kicks are sent to (the watchdog's and the control
    /// channel's), which made this runner.
    pub fn run(&mut self) -> Outcome {
        if let Some(c) = self.control {
            c.started();
        }
        let outcome = self.run_loop();
        if let Some(c) = self.control {
            c.ended();
        }
        if let Some(d) = self.debugger.as_deref() {
            d.vm_ended(match outcome {
                Outcome::Exited(status) => Some(status),
                _ => None,
            });
        }
        outcome
    }

    fn run_loop(&mut self) -> Outcome {
        loop {
            if self.timed_out() {
                return Outcome::TimedOut {
                    registers: register_report(&self.vcpu),
                };
            }
            if let Some(c) = self.control.filter(|c| c.pending()) {
                self.complete_pending_io();
                let mut hooks = PausedVm {
                    vcpu: &self.vcpu,
                    vm: self.vm,
                    memory: self.memory,
                    devices: &*self.devices,
                    text: self.text,
                    about: self.about,
                    watchdog: self.watchdog,
                    held: None,
                };
                if !c.serve(&mut hooks) {
                    return Outcome::TimedOut {
                        registers: register_report(&self.vcpu),
                    };
                }
            }
            if self.debugger.as_deref().is_some_and(|d| d.stop_wanted()) {
                self.complete_pending_io();
                if let Some(outcome) = self.debug_stop(crate::gdb::link::StopReason::Requested) {
                    return outcome;
                }
            }
            let exit = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.io_data.clear();
                    self.io_data.extend_from_slice(data);
                    Exit::IoOut(port)
                }
                Ok(VcpuExit::IoIn(port, data)) => Exit::IoIn {
                    port,
                    len: data.len(),
                    handled: self.devices.io_in(port, data),
                },
                Ok(VcpuExit::Intr) => Exit::Interrupted,
                Ok(VcpuExit::Debug(arch)) if self.debugger.is_some() => Exit::Debug(arch),
                Ok(VcpuExit::Shutdown) => Exit::Crash("guest shut down: triple fault".into()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Crash(format!(
                    "KVM could not enter the guest: hardware entry failure reason {reason:#x} (cpu {cpu})"
                )),
                Ok(VcpuExit::InternalError) => Exit::InternalError,
                Ok(VcpuExit::SystemEvent(kind, data)) => Exit::Crash(format!(
                    "guest system event {kind} (data {})",
                    hex_u64s(data)
                )),
                // Served at once (the answer lives in `kvm_run`); no RIP check: a device's
                // registers are the business of whichever guest code was given them (a
                // driver process, not only the kernel).
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if self.devices.mmio.read(addr, data) {
                        Exit::Mmio
                    } else {
                        Exit::Crash(format!(
                            "unexpected MMIO read: {} bytes at {addr:#x}",
                            data.len()
                        ))
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if self.devices.mmio.write(addr, data) {
                        Exit::Mmio
                    } else {
                        Exit::Crash(format!(
                            "unexpected MMIO write: {addr:#x} = {}",
                            hex_bytes(data)
                        ))
                    }
                }
                Ok(VcpuExit::Hlt) => Exit::Crash("guest halted (HLT exit to the VMM)".into()),
                Ok(other) => Exit::Crash(format!("unexpected vCPU exit: {other:?}")),
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => Exit::Interrupted,
                Err(e) => Exit::Crash(format!("KVM_RUN failed: {e}")),
            };

            match exit {
                Exit::Interrupted => {
                    // The kick that interrupted it is still pending (blocked here).
                    crate::kick::take_pending();
                    continue;
                }
                Exit::Debug(arch) => {
                    let stop = self
                        .debugger
                        .as_deref_mut()
                        .and_then(|d| d.debug_exit(&self.vcpu, &arch));
                    if let Some(outcome) = stop.and_then(|reason| self.debug_stop(reason)) {
                        return outcome;
                    }
                }
                Exit::IoOut(port) => {
                    self.exits += 1;
                    if let Some(outcome) = self.breakpoint_out(port) {
                        match outcome {
                            Some(o) => return o,
                            None => continue,
                        }
                    }
                    if let Some(crash) = self.check_out_rip(port) {
                        return crash;
                    }
                    if port == fluke_abi::ports::CONSOLE_PV {
                        let record = &mut self.console_record;
                        match pv_console::read_record(self.memory, &self.io_data, record) {
                            Ok(source) => self.devices.serial.write_console(record, source),
                            Err(reason) => return self.crash(reason),
                        }
                        continue;
                    }
                    match self.devices.io_out(port, &self.io_data) {
                        IoAction::Continue => {}
                        IoAction::Exit(status) => return Outcome::Exited(status),
                        IoAction::Unknown => {
                            let reason = format!(
                                "unexpected port I/O: out {port:#x} = {}",
                                hex_bytes(&self.io_data)
                            );
                            return self.crash(reason);
                        }
                    }
                }
                Exit::IoIn { port, len, handled } => {
                    self.exits += 1;
                    if let Some(crash) = self.check_rip("in", port) {
                        return crash;
                    }
                    if !handled {
                        return self.crash(format!(
                            "unexpected port I/O: in {port:#x} ({len} byte{})",
                            if len == 1 { "" } else { "s" }
                        ));
                    }
                }
                Exit::Mmio => self.exits += 1,
                Exit::InternalError => {
                    let reason = format!("KVM internal error ({})", self.internal_error());
                    return self.crash(reason);
                }
                Exit::Crash(reason) => return self.crash(reason),
            }
        }
    }

    /// Serves gdb while stopped for `reason`; an outcome if the run must end instead (the
    /// watchdog's deadline passed while gdb held the vCPU).
    fn debug_stop(&mut self, reason: crate::gdb::link::StopReason) -> Option<Outcome> {
        let watchdog = self.watchdog;
        let must_stop = || watchdog.is_some_and(|w| w.expired());
        let d = self.debugger.as_deref_mut()?;
        // The guest's clock is held while gdb holds it, as across an API pause.
        let held = self.vm.get_clock().ok();
        let resumed = d.serve_stop(&self.vcpu, self.memory, reason, &must_stop);
        if let Some(clock) = held {
            let set = kvm_clock_data {
                clock: clock.clock,
                ..Default::default()
            };
            if let Err(e) = self.vm.set_clock(&set) {
                log::warn!("vcpu: KVM_SET_CLOCK after a gdb stop failed: {e}");
            }
        }
        (!resumed).then(|| Outcome::TimedOut {
            registers: register_report(&self.vcpu),
        })
    }

    /// An OUT from one of the gdb stub's breakpoints (kvm_pvm; checked before any device
    /// sees the OUT, as a step's 1-byte breakpoint may use any port DX holds):
    /// Some(the run's outcome, or None to run on) if it was one; None for any other OUT,
    /// which is handled as usual.
    fn breakpoint_out(&mut self, port: u16) -> Option<Option<Outcome>> {
        if !self
            .debugger
            .as_deref()
            .is_some_and(|d| d.is_breakpoint_port(port))
        {
            return None;
        }
        // KVM completes the OUT first: RIP is then just after it on every platform.
        self.complete_pending_io();
        let reason = self
            .debugger
            .as_deref_mut()?
            .breakpoint_out(&self.vcpu, self.memory, port)?;
        Some(self.debug_stop(reason))
    }

    /// Lets KVM finish the instruction of the last exit (a port I/O is completed by the next
    /// KVM_RUN: on hardware KVM the RIP still points at the IN or OUT) without entering the
    /// guest: KVM_RUN with `immediate_exit` set. Then the registers a pause hands out (to a
    /// snapshot) are those of an instruction boundary, and a restored VM does not run the
    /// OUT again.
    fn complete_pending_io(&mut self) {
        self.vcpu.set_kvm_immediate_exit(1);
        match self.vcpu.run() {
            Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {}
            Ok(VcpuExit::Intr) => {}
            other => log::warn!("vcpu: completing the last exit before a pause: {other:?}"),
        }
        self.vcpu.set_kvm_immediate_exit(0);
        crate::kick::take_pending();
    }

    fn crash(&self, reason: String) -> Outcome {
        Outcome::Crashed {
            reason,
            registers: register_report(&self.vcpu),
        }
    }

    /// The guest's RIP at the current exit.
    fn rip(&self) -> Result<u64, String> {
        match self.rip_source {
            RipSource::SyncRegs => Ok(self.vcpu.sync_regs().regs.rip),
            RipSource::GetRegs => self
                .vcpu
                .get_regs()
                .map(|r| r.rip)
                .map_err(|e| e.to_string()),
        }
    }

    /// Ends the run unless the port access came from kernel text.
    fn check_rip(&self, dir: &str, port: u16) -> Option<Outcome> {
        match self.rip() {
            Ok(rip) if self.text.contains(rip) => None,
            Ok(rip) => Some(self.crash(format!(
                "port I/O from outside kernel text: {dir} {port:#x} at rip {rip:#x}"
            ))),
            Err(e) => Some(self.crash(format!("cannot read RIP on port I/O: {e}"))),
        }
    }

    /// [`check_rip`](Self::check_rip) for an OUT: where the RIP is past the instruction
    /// (kvm_pvm), the instruction is found by decoding backwards from it, and the whole of
    /// it must lie in kernel text.
    fn check_out_rip(&self, port: u16) -> Option<Outcome> {
        if self.out_rip == OutRip::Instruction {
            return self.check_rip("out", port);
        }
        let rip = match self.rip() {
            Ok(rip) => rip,
            Err(e) => return Some(self.crash(format!("cannot read RIP on port I/O: {e}"))),
        };
        let refuse = |why: &str| {
            Some(self.crash(format!(
                "port I/O from outside kernel text: out {port:#x} {why} (rip {rip:#x}, after the instruction)"
            )))
        };
        let Some((range, phys_last)) = self.text.range_of(rip.wrapping_sub(1)) else {
            return refuse("ending outside it");
        };
        let n = (rip - range.start).min(MAX_INSN_LEN as u64) as usize;
        let mut before = [0u8; MAX_INSN_LEN];
        let from = GuestAddress(phys_last + 1 - n as u64);
        if self.memory.read_slice(&mut before[..n], from).is_err() {
            return refuse("whose code cannot be read");
        }
        match out_insn_start(&before[..n], port) {
            Some(len) if (len as u64) < rip - range.start => None,
            Some(_) => refuse("starting at or before the start of kernel text"),
            None => refuse("with no OUT instruction ending there"),
        }
    }

    /// Describes `kvm_run.internal` after KVM_EXIT_INTERNAL_ERROR.
    fn internal_error(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            return "no details".into();
        }
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the union member
        // KVM filled in; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let kind = match internal.suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failure",
            _ => "suberror",
        };
        format!(
            "{kind} {}, data {}",
            internal.suberror,
            hex_u64s(&internal.data[..n])
        )
    }
}

/// Holds the guest's clock still across a pause: kvmclock, which the fluke kernel keeps
/// time with under KVM (KVM_GET_CLOCK at the pause, KVM_SET_CLOCK at the resume). Without it
/// the guest would see the pause as time that passed (its sleepers would all wake at once).
/// The raw TSC is not held: kvm_pvm has no TSC offsetting (TSC_CONTROL=0, pvm.md §2), so a
/// program reading RDTSC itself sees the pause there, and for one clock on every platform
/// it does on hardware KVM too.
///
/// While paused, it also writes snapshots: the state taken from KVM with the clock as held
/// (not the clock KVM runs on meanwhile), the UART, and guest RAM.
struct PausedVm<'a> {
    vcpu: &'a VcpuFd,
    vm: &'a VmFd,
    memory: &'a GuestMemoryMmap,
    devices: &'a Devices,
    text: &'a KernelText,
    about: MachineInfo,
    watchdog: Option<&'a Watchdog>,
    held: Option<kvm_clock_data>,
}

/// The machine facts a snapshot records.
#[derive(Clone, Copy, Debug)]
pub struct MachineInfo {
    pub platform: &'static str,
    pub tsc_khz: Option<u32>,
}

impl PauseHooks for PausedVm<'_> {
    fn paused(&mut self) {
        self.held = self
            .vm
            .get_clock()
            .inspect_err(|e| log::warn!("vcpu: KVM_GET_CLOCK failed at pause: {e}"))
            .ok();
    }

    fn resumed(&mut self) {
        let Some(clock) = self.held.take() else {
            return;
        };
        let set = kvm_clock_data {
            clock: clock.clock,
            ..Default::default()
        };
        if let Err(e) = self.vm.set_clock(&set) {
            log::warn!("vcpu: KVM_SET_CLOCK failed at resume: {e}");
        }
    }

    fn must_stop(&self) -> bool {
        self.watchdog.is_some_and(|w| w.expired())
    }

    fn snapshot(&mut self, target: &crate::snapshot::file::Target) -> Result<(), String> {
        // The other VM's half of a channel (the shared memory it writes, its doorbells) is
        // not this VM's to save or bring back.
        if !self.devices.channels.is_empty() {
            return Err(
                "a VM with a channel (--channel) cannot be snapshotted: the shared memory is also the other VM's"
                    .to_string(),
            );
        }
        // Their queues and in-flight requests are not in the snapshot format yet.
        if !self.devices.mmio.is_empty() {
            return Err("a VM with virtio devices (--drive) cannot be snapshotted yet".to_string());
        }
        let started = std::time::Instant::now();
        let machine = crate::snapshot::Machine {
            vm: self.vm,
            memory: self.memory,
            platform: self.about.platform,
            tsc_khz: self.about.tsc_khz,
            text: self.text,
            serial: self.devices.serial.state(),
        };
        let mut snap = crate::snapshot::capture(self.vcpu, &machine)?;
        if let Some(held) = self.held {
            snap.clock = held;
        }
        let vmstate = crate::snapshot::file::encode(&snap)?;
        let ram = crate::snapshot::ram_slices(self.memory);
        let trailer = crate::snapshot::file::MemoryTrailer {
            memory_id: snap.memory_id,
            memory_bytes: snap.memory_bytes,
        }
        .encode();
        let mut pieces: Vec<&[u8]> = ram.iter().map(|(_, b)| *b).collect();
        pieces.push(&trailer);
        crate::snapshot::file::write(target, &vmstate, &pieces)?;
        log::info!(
            "snapshot: {} ({} bytes of state, {} MiB of memory) in {:.1} ms",
            target.vmstate().display(),
            vmstate.len(),
            snap.memory_bytes >> 20,
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }
}

/// The longest an x86 instruction can be.
const MAX_INSN_LEN: usize = 15;

/// The length of the OUT (or OUTS) instruction whose last byte is the last of `before` (the
/// code just below the RIP kvm_pvm reports at an OUT exit), reading it as long as it can be:
/// every byte before the opcode that could be a prefix is counted as one, so the start it
/// gives is the lowest the instruction could have. None if no OUT to `port` ends there.
///
/// Without prefixes OUT is `EE`/`EF` (port in DX), `E6 ib`/`E7 ib` (port `ib`) and OUTS
/// `6E`/`6F`; the bytes `E6 EE` end both `out 0xee, al` and, read from the second byte,
/// `out dx, al`, so both readings are tried and the longer one is taken.
pub fn out_insn_start(before: &[u8], port: u16) -> Option<usize> {
    let is_prefix = |b: u8| {
        matches!(
            b,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40
                ..=0x4f
        )
    };
    let n = before.len();
    // (index of the opcode byte) for each reading.
    let mut opcodes = Vec::with_capacity(2);
    if n >= 1 && matches!(before[n - 1], 0xee | 0xef | 0x6e | 0x6f) {
        opcodes.push(n - 1);
    }
    if n >= 2 && matches!(before[n - 2], 0xe6 | 0xe7) && u16::from(before[n - 1]) == port {
        opcodes.push(n - 2);
    }
    opcodes
        .into_iter()
        .map(|op| {
            let prefixes = before[..op]
                .iter()
                .rev()
                .take_while(|&&b| is_prefix(b))
                .count();
            n - op + prefixes
        })
        .filter(|&len| len <= MAX_INSN_LEN)
        .max()
}

/// `[0x2a, 0x01]`
pub fn hex_bytes(data: &[u8]) -> String {
    let items: Vec<String> = data.iter().map(|b| format!("{b:#04x}")).collect();
    format!("[{}]", items.join(", "))
}

fn hex_u64s(data: &[u64]) -> String {
    let items: Vec<String> = data.iter().map(|b| format!("{b:#x}")).collect();
    format!("[{}]", items.join(", "))
}

/// The register report printed after a crash or timeout.
pub fn register_report(vcpu: &VcpuFd) -> String {
    let mut s = String::new();
    match vcpu.get_regs() {
        Ok(r) => {
            let _ = writeln!(
                s,
                "  rip {:#018x}  rsp {:#018x}  rflags {:#x}",
                r.rip, r.rsp, r.rflags
            );
            let gprs = [
                ("rax", r.rax),
                ("rbx", r.rbx),
                ("rcx", r.rcx),
                ("rdx", r.rdx),
                ("rsi", r.rsi),
                ("rdi", r.rdi),
                ("rbp", r.rbp),
                ("r8", r.r8),
                ("r9", r.r9),
                ("r10", r.r10),
                ("r11", r.r11),
                ("r12", r.r12),
                ("r13", r.r13),
                ("r14", r.r14),
                ("r15", r.r15),
            ];
            for row in gprs.chunks(4) {
                let cols: Vec<String> = row
                    .iter()
                    .map(|(n, v)| format!("{n:>3} {v:#018x}"))
                    .collect();
                let _ = writeln!(s, "  {}", cols.join("  "));
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  (KVM_GET_REGS failed: {e})");
        }
    }
    match vcpu.get_sregs() {
        Ok(sr) => {
            let _ = writeln!(
                s,
                "  cs {:#06x} (dpl {})  ss {:#06x} (dpl {})",
                sr.cs.selector, sr.cs.dpl, sr.ss.selector, sr.ss.dpl
            );
            let _ = writeln!(
                s,
                "  cr0 {:#x}  cr2 {:#x}  cr3 {:#x}  cr4 {:#x}  efer {:#x}",
                sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
            );
        }
        Err(e) => {
            let _ = writeln!(s, "  (KVM_GET_SREGS failed: {e})");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_port_data() {
        assert_eq!(hex_bytes(&[0x2a]), "[0x2a]");
        assert_eq!(hex_bytes(&[1, 0xff]), "[0x01, 0xff]");
        assert_eq!(hex_bytes(&[]), "[]");
    }

    #[test]
    fn an_out_is_found_ending_at_the_rip_after_it() {
        // out %al, (%dx); out %eax, (%dx); out %ax, (%dx)
        assert_eq!(out_insn_start(&[0x90, 0xee], 0x3f8), Some(1));
        assert_eq!(out_insn_start(&[0x90, 0xef], 0x3f8), Some(1));
        assert_eq!(out_insn_start(&[0x90, 0x66, 0xef], 0x3f8), Some(2));
        // out %al, $0xf4 (the port must be the immediate)
        assert_eq!(out_insn_start(&[0xb0, 0x07, 0xe6, 0xf4], 0xf4), Some(2));
        assert_eq!(out_insn_start(&[0x90, 0xe6, 0xf4], 0xf5), None);
        // rep outsb
        assert_eq!(out_insn_start(&[0x90, 0xf3, 0x6e], 0x3f8), Some(2));
        // not an OUT
        assert_eq!(out_insn_start(&[0x90, 0x90], 0xf4), None);
        assert_eq!(out_insn_start(&[], 0xf4), None);
    }

    #[test]
    fn the_lowest_possible_start_is_taken() {
        // `e6 ee` is `out %al, $0xee`, or `out %al, (%dx)` from its second byte.
        assert_eq!(out_insn_start(&[0xe6, 0xee], 0xee), Some(2));
        // Bytes that could be prefixes count as prefixes (a REX byte before the opcode).
        assert_eq!(out_insn_start(&[0x48, 0xee], 0x3f8), Some(2));
        assert_eq!(out_insn_start(&[0x66, 0x66, 0x2e, 0xef], 0x3f8), Some(4));
    }

    #[test]
    fn a_start_at_or_before_the_text_start_is_refused_by_the_caller() {
        // check_out_rip accepts only `len < rip - text.start`: with the bytes read clipped
        // at the text start, an instruction whose prefixes reach it might begin below it.
        let text_start = 0x10_0000u64;
        let rip = text_start + 2;
        let len = out_insn_start(&[0xe6, 0xf4], 0xf4).unwrap() as u64;
        assert!(len >= rip - text_start, "must be refused");
        let rip = text_start + 3;
        assert!(len < rip - text_start, "must be accepted");
    }
}
