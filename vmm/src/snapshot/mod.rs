//! VM snapshots: everything needed to continue a paused VM in another process
//! ([`VmSnapshot`]), taken from KVM on the vCPU thread while the VM is paused and put back
//! into a new VM by `fluke-vmm restore`. The files and their format are [`file`].

pub mod file;
pub mod ondemand;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_superio::serial::SerialState;

use crate::boot::KernelText;

/// Guest memory is checksummed in pieces of this size (1 MiB: checking one costs a first
/// touch ≈0.1 ms here; a 3 GiB VM has 3,072).
pub const MEMORY_CHUNK: usize = 1 << 20;

/// kvm_pvm's PV control MSR (pvm.md §4.1): readable by the host, writable only by the guest.
pub const MSR_PVM_CONTROL: u32 = fluke_abi::pvm::MSR_CONTROL;

/// A paused VM, whole: what the vmstate file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// `kvm_pvm` or `kvm`: a snapshot continues only on the platform it was taken on.
    pub platform: String,
    pub memory_bytes: u64,
    /// Random, and also in the memory file's trailer ([`file::MemoryTrailer`]): a vmstate
    /// and a memory file from different snapshots are told apart before anything runs.
    pub memory_id: u64,
    /// CRC-32 of each [`MEMORY_CHUNK`] bytes of guest RAM in file order (the last may be
    /// shorter), so a restore checks each piece where it reads it: as it copies, or (on
    /// demand) before it serves the piece's first page.
    pub memory_chunk_crc32: Vec<u32>,
    pub tsc_khz: Option<u32>,
    /// The kernel's code, for the run loop's port I/O check (the image is not read again).
    pub text: KernelText,
    /// The CPUID the vCPU was given (the origin host's supported table), checked against
    /// this host's at restore and given to the new vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// kvm_pvm: the origin host's own CPUID leaves 1 and 7 (in PV mode the guest executes
    /// CPUID natively and sees these, not the table it was given).
    pub native_cpuid: Option<Vec<kvm_cpuid_entry2>>,
    pub vcpu: VcpuState,
    /// PIC master, PIC slave and IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub clock: kvm_clock_data,
    pub serial: SavedSerial,
}

/// One vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    pub debugregs: kvm_debugregs,
    /// kvm_pvm: the PV control MSR (the PV page's address and flags), which only the guest
    /// can write back.
    pub pv_control: Option<u64>,
}

/// The UART (vm-superio's `SerialState`, which has no serde).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSerial {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl SavedSerial {
    pub fn from_state(s: &SerialState) -> SavedSerial {
        SavedSerial {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer.clone(),
        }
    }

    pub fn to_state(&self) -> SerialState {
        let r = self.registers;
        SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: self.in_buffer.clone(),
        }
    }
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> String {
    move |e| format!("{op} failed: {e}")
}

/// The MSRs to save: every one in KVM's index list that reads back on this vCPU.
fn saved_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<kvm_msr_entry>, String> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut out = Vec::new();
    for &index in list.as_slice() {
        if index == MSR_PVM_CONTROL {
            continue; // kept apart: the host cannot write it
        }
        let mut one = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| format!("MSR list: {e:?}"))?;
        if let Ok(1) = vcpu.get_msrs(&mut one) {
            out.push(one.as_slice()[0]);
        }
    }
    Ok(out)
}

fn read_pv_control(vcpu: &VcpuFd) -> Option<u64> {
    let mut one = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_PVM_CONTROL,
        ..Default::default()
    }])
    .ok()?;
    match vcpu.get_msrs(&mut one) {
        Ok(1) => Some(one.as_slice()[0].data),
        _ => None,
    }
}

/// What a capture needs besides the vCPU: the VM, its memory and devices' state.
pub struct Machine<'a> {
    pub vm: &'a VmFd,
    pub memory: &'a GuestMemoryMmap,
    pub platform: &'static str,
    pub tsc_khz: Option<u32>,
    pub text: &'a KernelText,
    pub serial: SerialState,
}

/// Takes the state of a paused VM (on the vCPU thread).
pub fn capture(vcpu: &VcpuFd, m: &Machine) -> Result<VmSnapshot, String> {
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    // The XSAVE area must hold all of the vCPU's state (AMX needs KVM_GET_XSAVE2).
    let xsave_size = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    if xsave_size > std::mem::size_of::<kvm_xsave>() as i32 {
        return Err(format!(
            "this host's XSAVE state is {xsave_size} bytes, more than the {} a snapshot holds",
            std::mem::size_of::<kvm_xsave>()
        ));
    }
    let xsave = vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
    let vcpu_state = VcpuState {
        regs: vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
        xsave,
        xcrs: vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
        lapic: vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?,
        msrs: saved_msrs(&kvm, vcpu)?,
        events: vcpu
            .get_vcpu_events()
            .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
        mp_state: vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
        debugregs: vcpu
            .get_debug_regs()
            .map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
        pv_control: read_pv_control(vcpu),
    };
    // kvm_pvm: a VM restored but not yet back in PV mode (its kernel's NMI handler has not
    // run: the MSR reads 0x400) is in a state no restore could rebuild.
    if m.platform == "kvm_pvm" && vcpu_state.pv_control.is_none_or(|c| c & !0xfff == 0) {
        return Err("the VM has not re-entered kvm_pvm's PV mode since it was restored (resume it for a moment first)".into());
    }
    let mut irqchips = Vec::new();
    for chip_id in [
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        m.vm.get_irqchip(&mut chip)
            .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        irqchips.push(chip);
    }
    // The CPUID the VMM gave the vCPU at boot: KVM's supported table (vm.rs create_vcpu).
    // (KVM_GET_CPUID2 is no substitute: on kvm_pvm it shows the host's leaves once PV mode
    // is on, far beyond what a vCPU can be given.)
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?
        .as_slice()
        .to_vec();
    let ram = ram_slices(m.memory);
    let snap = VmSnapshot {
        platform: m.platform.to_string(),
        memory_bytes: m.memory.iter().map(|r| r.len()).sum(),
        memory_id: random_id()?,
        memory_chunk_crc32: chunk_crcs(ram.iter().map(|(_, b)| *b)),
        tsc_khz: m.tsc_khz,
        text: m.text.clone(),
        cpuid,
        native_cpuid: (m.platform == "kvm_pvm").then(native_cpuid),
        vcpu: vcpu_state,
        irqchips,
        clock: m.vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        serial: SavedSerial::from_state(&m.serial),
    };
    Ok(snap)
}

/// 64 random bits from the kernel (getrandom).
fn random_id() -> Result<u64, String> {
    let mut id = [0u8; 8];
    // SAFETY: getrandom writes at most `id.len()` bytes into `id`, which lives across the call.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        return Err(format!("getrandom: {}", std::io::Error::last_os_error()));
    }
    Ok(u64::from_le_bytes(id))
}

/// The host's own CPUID leaves 1 and 7.0, read with the CPUID instruction.
fn native_cpuid() -> Vec<kvm_cpuid_entry2> {
    [(1, 0), (7, 0)]
        .into_iter()
        .map(|(function, index)| {
            let r = std::arch::x86_64::__cpuid_count(function, index);
            kvm_cpuid_entry2 {
                function,
                index,
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
                ..Default::default()
            }
        })
        .collect()
}

/// CRC-32 of each [`MEMORY_CHUNK`] of the concatenation of `pieces` (the last may be
/// shorter).
pub fn chunk_crcs<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut h = crc32fast::Hasher::new();
    let mut filled = 0usize;
    for mut piece in pieces {
        while !piece.is_empty() {
            let take = piece.len().min(MEMORY_CHUNK - filled);
            h.update(&piece[..take]);
            piece = &piece[take..];
            filled += take;
            if filled == MEMORY_CHUNK {
                out.push(std::mem::take(&mut h).finalize());
                filled = 0;
            }
        }
    }
    if filled > 0 {
        out.push(h.finalize());
    }
    out
}

/// How many chunks `bytes` of memory has.
pub fn chunk_count(bytes: u64) -> usize {
    bytes.div_ceil(MEMORY_CHUNK as u64) as usize
}

/// Guest RAM as byte slices, in address order.
pub fn ram_slices(memory: &GuestMemoryMmap) -> Vec<(u64, &[u8])> {
    memory
        .iter()
        .map(|r| {
            let len = r.len() as usize;
            let ptr = r.as_ptr();
            // SAFETY: the region maps `len` bytes at `ptr` for as long as `memory` lives,
            // which the returned slices cannot outlive. The vCPU is paused (nothing in the
            // guest writes RAM while a snapshot reads it) and the VMM's devices do not DMA.
            (r.start_addr().0, unsafe {
                std::slice::from_raw_parts(ptr, len)
            })
        })
        .collect()
}

/// Fills guest RAM from `file` (the memory file, read from its start), region by region,
/// checking each chunk against `expected` as it goes (while its bytes are in the cache).
pub fn fill_memory(
    memory: &GuestMemoryMmap,
    file: &mut std::fs::File,
    expected: &[u32],
) -> Result<(), String> {
    use std::io::Read;
    use vm_memory::Bytes;
    let mut buf = vec![0u8; MEMORY_CHUNK];
    let mut h = crc32fast::Hasher::new();
    let (mut filled, mut chunk) = (0usize, 0usize);
    let check = |h: crc32fast::Hasher, chunk: usize| {
        if expected.get(chunk) != Some(&h.finalize()) {
            return Err(corrupt_chunk(chunk));
        }
        Ok(())
    };
    for region in memory.iter() {
        let (mut at, end) = (region.start_addr(), region.start_addr().0 + region.len());
        while at.0 < end {
            let n = ((end - at.0) as usize).min(MEMORY_CHUNK - filled);
            file.read_exact(&mut buf[..n])
                .map_err(|e| format!("reading guest memory: {e}"))?;
            h.update(&buf[..n]);
            memory
                .write_slice(&buf[..n], at)
                .map_err(|e| format!("filling guest memory: {e}"))?;
            at = vm_memory::GuestAddress(at.0 + n as u64);
            filled += n;
            if filled == MEMORY_CHUNK {
                check(std::mem::take(&mut h), chunk)?;
                chunk += 1;
                filled = 0;
            }
        }
    }
    if filled > 0 {
        check(h, chunk)?;
    }
    Ok(())
}

/// What a restore says of a chunk of the memory file that fails its checksum.
pub fn corrupt_chunk(chunk: usize) -> String {
    let from = chunk as u64 * MEMORY_CHUNK as u64;
    format!(
        "its bytes {from:#x}..{:#x} do not match the vmstate (checksum): the memory file is corrupt",
        from + MEMORY_CHUNK as u64
    )
}

/// Checks a snapshot against this host before anything is built from it.
pub fn check_fits_host(snap: &VmSnapshot, kvm: &Kvm, platform: &str) -> Result<(), String> {
    if snap.platform != platform {
        return Err(format!(
            "the snapshot was taken on {}, this host is {platform}",
            snap.platform
        ));
    }
    if !snap.text.is_plausible() {
        return Err("the snapshot's kernel text ranges are invalid".into());
    }
    if snap.irqchips.len() != 3 {
        return Err(format!(
            "{} interrupt controllers saved, 3 expected",
            snap.irqchips.len()
        ));
    }
    let chunks = chunk_count(snap.memory_bytes);
    if snap.memory_chunk_crc32.len() != chunks {
        return Err(format!(
            "{} memory checksums for {} bytes of memory ({chunks} expected)",
            snap.memory_chunk_crc32.len(),
            snap.memory_bytes
        ));
    }
    let host = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    features_present(&snap.cpuid, host.as_slice(), "")?;
    if platform == "kvm_pvm" {
        // What the guest's code really chose by: the origin host's own CPUID.
        let saved = snap
            .native_cpuid
            .as_deref()
            .ok_or("a kvm_pvm snapshot without the host's CPUID")?;
        features_present(saved, &native_cpuid(), "host ")?;
    }
    Ok(())
}

/// Differences in TSC frequency up to this are taken as the same clock (Firecracker's
/// tolerance too): calibration on one host differs that much between boots.
const TSC_TOLERANCE_PPM: u64 = 250;

/// The guest calibrated its clock by the origin host's TSC frequency: a vCPU on a host whose
/// TSC runs at another rate is given the saved one (KVM_SET_TSC_KHZ, TSC scaling, hardware
/// KVM only), or the restore is refused.
pub fn match_tsc(snap: &VmSnapshot, vcpu: &VcpuFd) -> Result<(), String> {
    let Some(saved) = snap.tsc_khz else {
        return Ok(());
    };
    let close = |khz: u32| {
        u64::from(saved.abs_diff(khz)) * 1_000_000 <= u64::from(saved) * TSC_TOLERANCE_PPM
    };
    let here = vcpu.get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
    if close(here) {
        return Ok(());
    }
    let cannot = |how: String| {
        format!("the snapshot's TSC runs at {saved} kHz, this host's at {here} kHz, and KVM cannot scale it ({how})")
    };
    if snap.platform == "kvm_pvm" {
        // KVM_SET_TSC_KHZ succeeds there and KVM_GET_TSC_KHZ then reports the new rate, but
        // a PV guest's RDTSC reads the host's TSC unscaled.
        return Err(cannot("kvm_pvm gives the guest the host's raw TSC".into()));
    }
    vcpu.set_tsc_khz(saved)
        .map_err(|e| cannot(format!("KVM_SET_TSC_KHZ: {e}")))?;
    // Taken at its word only if the vCPU then says so.
    match vcpu.get_tsc_khz() {
        Ok(now) if close(now) => {
            log::info!("restore: the vCPU's TSC scaled from {here} to {now} kHz");
            Ok(())
        }
        Ok(now) => Err(cannot(format!("it still runs at {now} kHz"))),
        Err(e) => Err(cannot(format!("KVM_GET_TSC_KHZ: {e}"))),
    }
}

/// Every feature in CPUID leaves 1 and 7 of `saved` must be in `here` (the instruction set
/// the guest may have chosen its code paths by). Bits derived from the guest's own state
/// are left out: OSXSAVE (1.ECX.27, from CR4), APIC (1.EDX.9, from the APIC base MSR),
/// OSPKE (7.ECX.4).
fn features_present(
    saved: &[kvm_cpuid_entry2],
    here: &[kvm_cpuid_entry2],
    whose: &str,
) -> Result<(), String> {
    const FEATURE_REGS: [(u32, [u32; 3]); 2] = [
        // (leaf, masks of [EBX, ECX, EDX]); leaf 1's EBX is IDs, not features.
        (1, [0, !(1 << 27), !(1 << 9)]),
        (7, [!0, !(1 << 4), !0]),
    ];
    let leaf_of = |table: &[kvm_cpuid_entry2], leaf| {
        table
            .iter()
            .find(|e| e.function == leaf && e.index == 0)
            .copied()
    };
    for (leaf, masks) in FEATURE_REGS {
        if let (Some(s), Some(h)) = (leaf_of(saved, leaf), leaf_of(here, leaf)) {
            let regs = [(s.ebx, h.ebx), (s.ecx, h.ecx), (s.edx, h.edx)];
            for ((name, (saved, host)), mask) in ["EBX", "ECX", "EDX"].iter().zip(regs).zip(masks) {
                let missing = saved & !host & mask;
                if missing != 0 {
                    return Err(format!(
                        "the snapshot's {whose}CPU has features this host lacks (CPUID leaf {leaf:#x} {name} bits {missing:#x})"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// kvm_pvm: prepares a restored VM whose vCPU will start in default mode (the host cannot
/// write the PV control MSR), for the kernel to turn PV mode back on in its NMI handler
/// (`fluke_abi::pvm::PV_PAGE_RESTORED`): sets the flag in the PV page, runs a user-mode
/// context on the kernel half of its page-table pair (default mode does not flip CR3 on an
/// event, and the user half maps no kernel code), and gives a kernel-mode context the
/// interrupt flag its VIF had (in default mode IF is real). The NMI itself is sent by
/// [`ring_pv_doorbell`] once the state is applied.
pub fn prepare_pv_restore(snap: &mut VmSnapshot, memory: &GuestMemoryMmap) -> Result<(), String> {
    use vm_memory::{Bytes, GuestAddress};
    let control = snap.vcpu.pv_control.ok_or("no PV control MSR saved")?;
    let page = control & !0xfff;
    if page == 0 {
        return Err("the saved PV control MSR names no PV page".into());
    }
    let at = |off: u64| GuestAddress(page + off);
    memory
        .write_obj(
            fluke_abi::pvm::RESTORED,
            at(fluke_abi::pvm::PV_PAGE_RESTORED),
        )
        .map_err(|e| format!("the PV page at {page:#x} is not in guest memory: {e}"))?;
    let vif: u8 = memory
        .read_obj(at(0))
        .map_err(|e| format!("PV page: {e}"))?;
    // Which mode the vCPU was in is told by its RIP and page table, not by the CS KVM
    // reports: for the PV kernel (which runs at hardware CPL 3) KVM_GET_SREGS gives CS 0x10
    // at most exits but 0x33 at some (seen: halted in the idle loop right after an OUT).
    // Kernel code runs only in the upper half and only on the kernel half of the page-table
    // pair; a user program that jumped to a kernel address (its fetch fault pending) is
    // still on the user half, and is a user context.
    let v = &mut snap.vcpu;
    let kernel = v.regs.rip >= KERNEL_HALF && v.sregs.cr3 & 0x1000 == 0;
    v.sregs.cs = segment(
        v.sregs.cs,
        if kernel { (KERNEL_CS, 0) } else { (USER_CS, 3) },
        0xb,
    );
    v.sregs.ss = segment(
        v.sregs.ss,
        if kernel { (KERNEL_DS, 0) } else { (USER_DS, 3) },
        0x3,
    );
    if kernel {
        if vif == 0 {
            v.regs.rflags &= !(1 << 9);
        } else {
            v.regs.rflags |= 1 << 9;
        }
    } else {
        v.sregs.cr3 &= !0x1000;
        v.regs.rflags |= 1 << 9;
        // At a user-mode exit the host reports the user's GS base live and the kernel's in
        // MSR_KERNEL_GS_BASE; at a kernel-mode exit, the other way round, which is what the
        // kernel expects on entry. Default-mode delivery of the first event does not swap,
        // so the swap is done here.
        if let Some(kgs) = v.msrs.iter_mut().find(|m| m.index == MSR_KERNEL_GS_BASE) {
            std::mem::swap(&mut kgs.data, &mut v.sregs.gs.base);
        }
    }
    // A page fault caught on its way in (KVM reflects it, the pause came first) is delivered
    // after the restore in default mode, which sets the real CR2 but not the PV page's copy
    // the kernel reads (pvm.md §4.1 flag 0x10): put it there.
    if v.events.exception.nr == 14
        && (v.events.exception.injected != 0 || v.events.exception.pending != 0)
    {
        memory
            .write_obj(v.sregs.cr2, at(8))
            .map_err(|e| format!("PV page: {e}"))?;
    }
    Ok(())
}

/// MSR_KERNEL_GS_BASE.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The upper half of the address space, where the kernel lives (pvm.md §4.3 rule 2).
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
/// The Linux-layout selectors kvm_pvm requires (pvm.md §3).
const KERNEL_CS: u16 = 0x10;
const KERNEL_DS: u16 = 0x18;
const USER_DS: u16 = 0x2b;
const USER_CS: u16 = 0x33;

/// A flat long-mode segment with `selector` at privilege `dpl`: code (type 0xb, L) or data
/// (type 0x3).
fn segment(
    mut seg: kvm_bindings::kvm_segment,
    (selector, dpl): (u16, u8),
    type_: u8,
) -> kvm_bindings::kvm_segment {
    let code = type_ == 0xb;
    seg.base = 0;
    seg.limit = 0xffff_ffff;
    seg.selector = selector;
    seg.type_ = type_;
    seg.present = 1;
    seg.dpl = dpl;
    seg.s = 1;
    seg.l = u8::from(code);
    seg.db = u8::from(!code);
    seg.g = 1;
    seg.unusable = 0;
    seg
}

/// Sends the NMI [`prepare_pv_restore`] prepared for.
pub fn ring_pv_doorbell(vcpu: &VcpuFd) -> Result<(), String> {
    vcpu.nmi().map_err(kvm_err("KVM_NMI"))
}

/// Puts a snapshot's vCPU and VM state into a freshly created VM (memory already filled).
pub fn apply(snap: &VmSnapshot, vm: &VmFd, vcpu: &VcpuFd) -> Result<(), String> {
    let cpuid = CpuId::from_entries(&snap.cpuid).map_err(|e| format!("saved CPUID: {e:?}"))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    for chip in &snap.irqchips {
        vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    let v = &snap.vcpu;
    vcpu.set_mp_state(v.mp_state)
        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    vcpu.set_sregs(&v.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&v.regs).map_err(kvm_err("KVM_SET_REGS"))?;
    // SAFETY: the saved area has the size KVM_GET_XSAVE wrote, which capture checked.
    unsafe { vcpu.set_xsave(&v.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&v.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&v.debugregs)
        .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&v.lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    let msrs = Msrs::from_entries(&v.msrs).map_err(|e| format!("saved MSRs: {e:?}"))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != v.msrs.len() {
        let failed = v.msrs.get(set).map(|m| m.index).unwrap_or(0);
        return Err(format!(
            "KVM set {set} of {} saved MSRs (MSR {failed:#x} refused)",
            v.msrs.len()
        ));
    }
    vcpu.set_vcpu_events(&v.events)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    let clock = kvm_clock_data {
        clock: snap.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
impl VmSnapshot {
    pub fn for_tests() -> VmSnapshot {
        VmSnapshot {
            platform: "kvm".into(),
            memory_bytes: 1 << 20,
            memory_id: 0x1234_5678_9abc_def0,
            memory_chunk_crc32: vec![7],
            tsc_khz: Some(2_000_000),
            text: KernelText::default(),
            cpuid: vec![kvm_cpuid_entry2::default()],
            native_cpuid: None,
            vcpu: VcpuState {
                regs: kvm_regs {
                    rip: 0xffff_ffff_8010_0000,
                    ..Default::default()
                },
                sregs: Default::default(),
                xsave: Default::default(),
                xcrs: Default::default(),
                lapic: Default::default(),
                msrs: vec![kvm_msr_entry {
                    index: 0x10,
                    data: 42,
                    ..Default::default()
                }],
                events: Default::default(),
                mp_state: Default::default(),
                debugregs: Default::default(),
                pv_control: Some(0x141417),
            },
            irqchips: vec![Default::default(); 3],
            clock: Default::default(),
            serial: SavedSerial {
                registers: [1, 2, 3, 4, 5, 6, 7, 8, 9],
                in_buffer: vec![b'a'],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_checksums_do_not_depend_on_how_memory_is_split_into_regions() {
        let bytes: Vec<u8> = (0..(2 * MEMORY_CHUNK + 4096))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let whole = chunk_crcs([bytes.as_slice()]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole.len(), chunk_count(bytes.len() as u64));
        assert_eq!(whole[0], crc32fast::hash(&bytes[..MEMORY_CHUNK]));
        assert_eq!(whole[2], crc32fast::hash(&bytes[2 * MEMORY_CHUNK..]));
        let (a, rest) = bytes.split_at(12345);
        let (b, c) = rest.split_at(MEMORY_CHUNK);
        assert_eq!(chunk_crcs([a, b, &[][..], c]), whole);
        assert!(chunk_crcs([&[][..]]).is_empty());
    }

    #[test]
    fn a_feature_the_host_lacks_is_found_in_either_table_but_os_derived_bits_are_not() {
        let leaf = |function, ecx, edx| kvm_cpuid_entry2 {
            function,
            ecx,
            edx,
            ..Default::default()
        };
        let here = [leaf(1, 0x1, 0x0), leaf(7, 0, 0)];
        // The host's own table (kvm_pvm): AVX (1.ECX.28) missing here.
        let err = features_present(&[leaf(1, 1 << 28, 0)], &here, "host ").unwrap_err();
        assert!(
            err.contains("host CPU") && err.contains("0x10000000"),
            "{err}"
        );
        // OSXSAVE and APIC follow the guest's own state: not compared.
        assert!(features_present(&[leaf(1, 1 << 27, 1 << 9)], &here, "").is_ok());
        // This host's native leaves include themselves.
        let native = native_cpuid();
        assert!(features_present(&native, &native, "host ").is_ok());
    }

    #[test]
    fn the_serial_state_survives_the_mirror() {
        let s = SavedSerial::for_tests_state();
        assert_eq!(SavedSerial::from_state(&s.to_state()), s);
    }

    impl SavedSerial {
        fn for_tests_state() -> SavedSerial {
            VmSnapshot::for_tests().serial
        }
    }
}
