//! The fluke microkernel. See guest-kernel/README.md for the design; `arch` holds everything
//! hardware- and platform-specific.
#![no_std]
#![no_main]

extern crate alloc;

// The layers, lowest first; each imports only from those above it in this list (see
// guest-kernel/README.md).
mod arch;
mod bootinfo;
mod console;
mod devices;
mod dispatch;
mod image;
mod kernel;
mod loader;
mod mm;
mod objects;
mod panic;
mod selftest;
mod sync;
mod time;

use arch::{apic, cpu, paging, platform, tables, user};
use bootinfo::BootInfo;
use fluke_abi::ports::{BootMark, BOOT_TIMER};
use fluke_abi::{cmdline, Platform};
use fluke_kcore::memmap::PhysRange;
use sync::BootCell;

static BOOT_INFO: BootCell<BootInfo> = BootCell::new(BootInfo::empty());

pub fn boot_mark(mark: BootMark) {
    // SAFETY: the boot-timer port is write-only and owned by the kernel.
    unsafe { cpu::outb(BOOT_TIMER, mark as u8) };
}

/// Entered from boot.S on the boot stack, in 64-bit mode on the boot page tables, with
/// interrupts off. On kvm_pvm every instruction until `enable_pv_mode` is emulated (~1 µs
/// each), so the steps before it are the few that must precede PV mode.
#[no_mangle]
extern "C" fn kernel_main(start_info_pa: u64) -> ! {
    boot_mark(BootMark::KernelEntry);
    tables::init_early();
    paging::init_nx();
    let detected = platform::detect();
    platform::enable_pv_mode();
    // From here on the kernel runs at native speed on every platform.
    let fpu = crate::arch::fpu::init(platform::pv_mode_on());
    tables::init_idt();
    user::check_segment_base_access();

    // SAFETY: boot, single CPU: the only reference to the boot info.
    let boot = unsafe { BOOT_INFO.get_mut() };
    let boot_ok = boot.read(start_info_pa);
    if boot_ok.is_ok() {
        console::init(boot.cmdline());
    }
    kprintln!("fluke: Fluke microkernel {}", env!("CARGO_PKG_VERSION"));
    kprintln!(
        "fluke: platform {}, backend {}, pv-mode {}",
        detected.platform.name(),
        detected.backend.name(),
        if platform::pv_mode_on() { "on" } else { "off" }
    );
    if let Err(e) = boot_ok {
        panic!("unusable boot information at {:#x}: {:?}", start_info_pa, e);
    }
    let cmd = boot.cmdline();
    if let Some(said) = cmdline::get(cmd, cmdline::PLATFORM) {
        if Platform::from_name(said) != Some(detected.platform) {
            kprintln!(
                "fluke: note: the VMM says platform {said}; the kernel's probe says {}",
                detected.platform.name()
            );
        }
    }

    let kernel = mm::kernel_image_range();
    let bundle = image::locate_bundle(kernel.end, memmap_ram_end(boot));
    let mem = mm::init_frames(
        boot,
        &[kernel, bundle.unwrap_or(PhysRange { start: 0, end: 0 })],
    );
    let root = match mm::init_kernel_space(boot, bundle.unwrap_or(PhysRange { start: 0, end: 0 })) {
        Ok(root) => root,
        Err(e) => panic!("cannot build the kernel page tables: {:?}", e),
    };
    if let Err(e) = mm::kstack::init() {
        panic!("cannot map the kernel stack area: {:?}", e);
    }
    let entry_tree = match detected.backend {
        platform::Backend::Pv => match paging::build_entry_tree(&tables::cpu_table_pages()) {
            Ok(t) => Some(t),
            Err(e) => panic!("cannot build the user page-table entry tree: {:?}", e),
        },
        platform::Backend::Native => None,
    };
    kernel::space::init(root, entry_tree);
    user::init_syscall();
    let hardened = platform::harden(&detected);
    if hardened.iter().any(Option::is_some) {
        kprintln!(
            "fluke: cpu protections: {}",
            hardened
                .iter()
                .flatten()
                .copied()
                .collect::<alloc::vec::Vec<_>>()
                .join(" ")
        );
    }
    if let Some(xsave) = &fpu {
        log_xsave_layout(xsave);
    }
    apic::disable_legacy_pic();
    if let Err(e) = apic::init(detected.x2apic, root) {
        panic!("cannot map the local APIC: {:?}", e);
    }
    let tsc_hint = cmdline::get(cmd, cmdline::TSC_KHZ).and_then(|v| v.parse().ok());
    let tsc_khz = time::init(tsc_hint, detected.kvmclock);
    kernel::sched::init(root, boot_stack_top());
    kprintln!(
        "fluke: memory {} MiB, kernel {} KiB, free {} MiB",
        mem.ram_end >> 20,
        (kernel.end - kernel.start) >> 10,
        (mm::free_frames() * 4096) >> 20
    );
    kprintln!(
        "fluke: timer {}APIC one-shot, quantum {} ms, TSC {} kHz, clock {}",
        if apic::x2apic() { "x2" } else { "x" },
        kernel::state::QUANTUM_NS / 1_000_000,
        tsc_khz,
        if time::kvmclock() { "kvmclock" } else { "tsc" }
    );
    let bundle_range = bundle;
    let bundle = match bundle.map(image::bundle) {
        Some(Ok(b)) => b,
        Some(Err(e)) => panic!("corrupt program bundle: {e}"),
        None => panic!("the image has no program bundle"),
    };
    image::describe(&bundle);
    image::set_loaded_bundle(bundle);
    let mut image_ranges = alloc::vec![kernel];
    image_ranges.extend(bundle_range);
    image_ranges.extend(boot.loader_ranges.iter().filter(|r| r.end > r.start));
    let accepted = devices::check_words(cmd, boot, &image_ranges, detected.phys_bits, root);

    boot_mark(BootMark::InitStart);
    if let Some(name) = cmdline::get(cmd, cmdline::TEST) {
        selftest::run(name);
    }
    if let Some(name) = cmdline::get(cmd, cmdline::BENCH) {
        selftest::bench(name);
    }
    start_init(&bundle, cmdline::get(cmd, cmdline::INIT), &accepted);
    // The boot stack becomes the idle stack: the scheduler runs on it from here.
    kernel::sched::run(kernel::sched::Leave::Scheduler)
}

/// Starts the first process: the manifest's init, or `fluke.init=PROGRAM,ARG,...`.
fn start_init(
    bundle: &fluke_image::Bundle<'static>,
    override_init: Option<&str>,
    devices: &devices::Accepted,
) {
    let mut args = alloc::vec::Vec::new();
    let name = match override_init {
        Some(spec) => {
            let mut words = cmdline::init_words(spec);
            let name = words.next().unwrap_or("");
            for a in words {
                args.extend_from_slice(a.as_bytes());
                args.push(0);
            }
            name
        }
        None => {
            // The manifest's words, with `a>b` split the same way as on the command line.
            let m = bundle.manifest();
            for w in m.args() {
                for a in cmdline::init_words(w) {
                    args.extend_from_slice(a.as_bytes());
                    args.push(0);
                }
            }
            m.init()
        }
    };
    let started = kernel::with_kernel(|k| {
        let pid = objects::space::spawn(k, name, &args, None, &[])?;
        k.init = Some(pid);
        // The benchmark capability, under the table's last name (fluke_abi INIT_BENCH_CAP).
        let bench = kernel::objref::owner_cap(kernel::ObjRef::Bench);
        k.space(pid)
            .ok_or(fluke_abi::syscall::Error::InvalidArgument)?
            .caps
            .insert_at(fluke_abi::syscall::INIT_BENCH_CAP as u32, bench)?;
        // The devices of the command line, under their fixed names (fluke_abi::devices).
        devices::give_to_init(k, pid, devices);
        Ok::<_, fluke_abi::syscall::Error>(pid)
    });
    match started {
        Ok(_) => {
            kprintln!("fluke: started init: {name}");
        }
        Err(e) => panic!("cannot start init program {name:?}: {}", e.name()),
    }
}

fn boot_stack_top() -> u64 {
    extern "C" {
        static boot_stack_top: u8;
    }
    core::ptr::addr_of!(boot_stack_top) as u64
}

fn memmap_ram_end(boot: &BootInfo) -> u64 {
    fluke_kcore::memmap::ram_end(boot.memmap(), mm::MAX_PHYS)
}

/// The boot log's account of what the kernel switches with XSAVE (kvm_pvm only).
fn log_xsave_layout(x: &fluke_kcore::xsave::Layout) {
    kprintln!(
        "fluke: fpu: xsave components {:#x}, {}-byte image, {}-byte area per thread",
        x.mask,
        x.image_bytes,
        x.area_bytes
    );
    if x.unswitched != 0 {
        kprintln!(
            "fluke: warning: XCR0 components {:#x} are not switched between threads (their registers may leak)",
            x.unswitched
        );
    }
    if x.guessed != 0 {
        kprintln!(
            "fluke: warning: CPUID leaf 0xD does not describe XSAVE components {:#x}: exported at Intel's offsets, which this CPU may not use",
            x.guessed
        );
    }
    // Switched like any component, but whether a thread's PKRU also governs the kernel's own
    // accesses on kvm_pvm (it runs at hardware CPL 3) is unprobed: no host measured enables it.
    if x.mask & fluke_kcore::xsave::PKRU != 0 {
        kprintln!(
            "fluke: warning: the host enables PKRU; whether a thread's PKRU restricts the kernel's own accesses here is unprobed"
        );
    }
}
