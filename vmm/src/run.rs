//! `fluke-vmm run`: validate the arguments and the image, build the VM, run the vCPU and
//! turn the outcome into the exit status.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use fluke_abi::devices::MAX_VIRTIO_DEVICES;
use fluke_abi::ports::COM1_IRQ;
use fluke_abi::status::{VMM_GUEST_CRASH, VMM_TIMEOUT};

use crate::api::{ApiServer, InstanceInfo};
use crate::boot;
use crate::cli::{RunArgs, VmArgs};
use crate::control::VmControl;
use crate::debuginfo;
use crate::devices::channel::{self, Channel, ChannelSpec};
use crate::devices::debug_exit::{ms, BenchPort, BootTimer};
use crate::devices::serial::{SerialDevice, SerialSpec};
use crate::devices::virtio::block::disk::{Disk, DriveSpec};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{self, Interrupt, MmioBus, VirtioDevice};
use crate::devices::Devices;
use crate::error::{status_u8, Error, Result};
use crate::logger::to_stderr;
use crate::platform;
use crate::stats::{self, RunStats};
use crate::stdin;
use crate::vcpu::{MachineInfo, OutRip, Outcome, RipSource, VcpuRunner};
use crate::vm::{self, Vm};
use crate::watchdog::{self, Watchdog};

/// The largest image file: one that could fit in the largest guest memory.
pub const MAX_IMAGE_BYTES: u64 = vm::MAX_MEMORY_MIB << 20;

/// Gives back the memory an image's bytes hold once the guest has its copy: a file's bytes
/// are freed; the pages of the image built into the binary that reading it brought in are
/// dropped from this process (they stay in the page cache and would come back from the
/// binary on a later read).
fn release_image(bytes: Cow<'static, [u8]>) {
    let Cow::Borrowed(embedded) = bytes else {
        return;
    };
    let page = 4096;
    let start = (embedded.as_ptr() as usize).next_multiple_of(page);
    let end = (embedded.as_ptr() as usize + embedded.len()) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside the binary's read-only, file-backed mapping of the
    // image (a `&'static [u8]` that nothing writes). MADV_DONTNEED on a private file mapping
    // only unmaps the pages: a later read faults the same bytes back in from the file, which
    // cannot change while it runs (writing an executable being run fails with ETXTBSY), so
    // every reference to the slice keeps seeing the same contents.
    let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if r != 0 {
        log::debug!(
            "cannot release the built-in image's pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Reads the image at `path`, or the default image built into the binary. Returns the bytes
/// and how to name the image in messages.
pub fn read_image(path: Option<&Path>) -> Result<(Cow<'static, [u8]>, String)> {
    match path {
        Some(path) => {
            let read_err = |source| Error::ReadImage {
                path: path.to_path_buf(),
                source,
            };
            // Judged by its metadata first: opening a FIFO would wait for a writer, and
            // reading a device or a huge file would never end or take all memory.
            let meta = std::fs::metadata(path).map_err(read_err)?;
            if !meta.is_file() {
                return Err(Error::InvalidImage {
                    what: path.display().to_string(),
                    msg: "not a regular file".into(),
                });
            }
            if meta.len() > MAX_IMAGE_BYTES {
                return Err(Error::InvalidImage {
                    what: path.display().to_string(),
                    msg: format!(
                        "{} bytes, larger than the {} MiB of guest memory it would have to fit in",
                        meta.len(),
                        MAX_IMAGE_BYTES >> 20
                    ),
                });
            }
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            let file = std::fs::File::open(path).map_err(read_err)?;
            // Bounded even if the file grows meanwhile.
            std::io::Read::read_to_end(
                &mut std::io::Read::take(file, MAX_IMAGE_BYTES + 1),
                &mut bytes,
            )
            .map_err(read_err)?;
            if bytes.len() as u64 > MAX_IMAGE_BYTES {
                return Err(Error::InvalidImage {
                    what: path.display().to_string(),
                    msg: "it grew past the largest image while being read".into(),
                });
            }
            Ok((Cow::Owned(bytes), path.display().to_string()))
        }
        None => {
            let bytes = fluke_images::default_image();
            if bytes.is_empty() {
                return Err(Error::NoDefaultImage);
            }
            Ok((Cow::Borrowed(bytes), "(built-in default image)".to_string()))
        }
    }
}

pub fn run(args: &RunArgs, process_start: Instant) -> Result<u8> {
    // Everything that can be checked without KVM first.
    let mem_bytes = vm::memory_bytes(args.memory)?;
    let (timeout, serial_spec) = Common::check(&args.vm)?;
    let (bytes, what) = read_image(args.image.as_deref())?;
    // What the file was when read: fault reports name functions only from the same file.
    let stamp = args
        .image
        .as_deref()
        .and_then(crate::debuginfo::FileStamp::of);
    let layout = boot::validate(&bytes, &what)?;
    boot::check_memory_fit(layout.phys_end, mem_bytes)?;
    if let Some(got) = args.memory_resident {
        let min = crate::paging::MIN_RESIDENT_MIB;
        if !(min..=args.memory).contains(&got) {
            return Err(Error::ResidentSize {
                min,
                max: args.memory,
                got,
            });
        }
    }
    log::debug!(
        "kernel text (port I/O allowed from): {:x?}",
        layout.text.ranges()
    );
    let channel_specs = ChannelSpec::parse_all(&args.channels)?;
    let devices = args.drives.len() + channel_specs.len();
    if devices > MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyDevices {
            got: devices,
            max: MAX_VIRTIO_DEVICES,
        });
    }
    let disks = open_drives(&args.drives)?;
    // Before KVM: a connector takes its listener's offer here; a listener is listening
    // from here on (its socket is removed if anything later fails).
    let rendezvous = channel_specs
        .iter()
        .map(channel::rendezvous)
        .collect::<Result<Vec<_>>>()?;

    let kvm = vm::open_kvm()?;
    let mut vm = Vm::new(kvm, mem_bytes)?;
    let vcpu = vm.create_vcpu(0)?;
    let platform = platform::detect(&vcpu);
    log::info!("platform: {}", platform::describe(platform));
    // The guest times with the TSC; KVM knows its rate, so the guest need not calibrate.
    let tsc_khz = vcpu.get_tsc_khz().ok().filter(|&k| k > 0);
    let mut mmio = attach_drives(&mut vm, disks)?;
    let channels = attach_channels(&mut vm, &mut mmio, rendezvous)?;
    let cmdline = boot::build_cmdline(platform, tsc_khz, &mmio.slots(), &args.cmdline)?;
    log::debug!("kernel command line: {cmdline}");
    boot::load(vm.memory(), mem_bytes, &bytes, &layout, &cmdline)?;
    let image = match (&bytes, &args.image) {
        (Cow::Borrowed(builtin), _) => crate::debuginfo::ImageBytes::Builtin(builtin),
        (Cow::Owned(_), Some(path)) => crate::debuginfo::ImageBytes::File(path.clone(), stamp),
        (Cow::Owned(_), None) => crate::debuginfo::ImageBytes::Builtin(b""),
    };
    // The guest has its copy: ours would only weigh on the VMM's resident memory.
    release_image(bytes);
    boot::setup_vcpu(&vcpu, layout.pvh_entry)?;
    if let Some(mib) = args.memory_resident {
        vm.start_host_paging(mib << 20)?;
    }
    let machine = Machine {
        vm,
        vcpu,
        text: layout.text,
        platform,
        tsc_khz,
        serial: None,
        start_paused: false,
        mmio,
        channels,
    };
    let debug_dir = match &args.image {
        Some(path) => crate::debuginfo::sidecar_dir(path),
        None => std::path::PathBuf::from(fluke_images::DEFAULT_DEBUG_DIR),
    };
    let common = Common {
        boot_timer: args.boot_timer,
        debug: Some(crate::debuginfo::DebugInfo {
            dir: debug_dir,
            image,
        }),
        ..Common::new(&args.vm, timeout, serial_spec, args.memory)
    };
    execute(machine, &common, process_start)
}

/// A VM ready to run: booted from an image or restored from a snapshot.
pub struct Machine {
    pub vm: Vm,
    pub vcpu: kvm_ioctls::VcpuFd,
    pub text: boot::KernelText,
    pub platform: fluke_abi::Platform,
    pub tsc_khz: Option<u32>,
    /// The UART's saved state (a restore), else a fresh UART.
    pub serial: Option<vm_superio::serial::SerialState>,
    /// Wait paused for `PATCH /vm` before the first KVM_RUN (a restore without --resume).
    pub start_paused: bool,
    /// The virtio devices, their threads started, and the channels' register pages.
    pub mmio: MmioBus,
    /// The channels to other VMs, their threads started.
    pub channels: Vec<Channel>,
}

/// Parses and opens every `--drive` (before anything else is built: a bad one is refused
/// with one line; their number is checked by the caller).
fn open_drives(specs: &[String]) -> Result<Vec<Disk>> {
    specs
        .iter()
        .map(|s| Disk::open(&DriveSpec::parse(s)?))
        .collect()
}

/// Makes drive `i` virtio device `i`: its window, its irqfd on line VIRTIO_FIRST_IRQ + i,
/// an ioeventfd on its QueueNotify register per queue, its thread.
fn attach_drives(vm: &mut Vm, disks: Vec<Disk>) -> Result<MmioBus> {
    let mut bus = MmioBus::default();
    let host_io = |source| Error::HostIo {
        what: "virtio block device",
        source,
    };
    for (i, disk) in disks.into_iter().enumerate() {
        let slot = virtio::slot(i);
        let (dma_start, dma_bytes) = virtio::dma_area(&slot);
        let dma = vm.add_device_memory(dma_start, dma_bytes)?;
        let interrupt = Arc::new(Interrupt::new().map_err(host_io)?);
        vm.register_irqfd(interrupt.irqfd(), slot.irq)?;
        log::debug!(
            "virtio-blk {i}: {} sectors{} at {:#x}, line {}",
            disk.sectors(),
            if disk.readonly() { ", read-only" } else { "" },
            slot.base,
            slot.irq
        );
        let block = Block::new(disk, dma, Arc::clone(&interrupt), format!("fluke-blk{i}"))
            .map_err(host_io)?;
        for (queue, evt) in block.queue_events().iter().enumerate() {
            vm.register_mmio_ioeventfd(evt, virtio::queue_notify_address(&slot), queue as u32)?;
        }
        bus.add(slot, MmioTransport::new(Box::new(block), interrupt));
    }
    Ok(bus)
}

/// Makes each channel the next device after the drives: its window (registers and shared
/// area), its doorbell's ioeventfd, its irqfd, its thread.
fn attach_channels(
    vm: &mut Vm,
    bus: &mut MmioBus,
    rendezvous: Vec<channel::Rendezvous>,
) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(rendezvous.len());
    for r in rendezvous {
        let (slot, registers, channel) = r.attach(vm, bus.len())?;
        bus.add(slot, registers);
        channels.push(channel);
    }
    Ok(channels)
}

/// What `run` and `restore` share on their command lines.
pub struct Common<'a> {
    pub timeout: Option<std::time::Duration>,
    pub serial_spec: SerialSpec,
    pub api_sock: Option<&'a Path>,
    pub id: &'a str,
    pub stats_json: Option<&'a Path>,
    pub boot_timer: bool,
    pub memory_mib: u64,
    /// `--gdb` (checked by [`Common::check`]) and `--gdb-wait`.
    pub gdb: Option<crate::gdb::conn::GdbSpec>,
    pub gdb_wait: bool,
    /// A restore: when the VM was ready (since process start), and the on-demand pager's
    /// progress, for the statistics.
    pub restored: Option<(
        std::time::Duration,
        Option<Arc<crate::snapshot::ondemand::Progress>>,
    )>,
    /// The booted image and its debug directory, to name functions in fault reports
    /// (`None` for a restore, which has no image).
    pub debug: Option<crate::debuginfo::DebugInfo>,
}

impl<'a> Common<'a> {
    /// The checks of the shared arguments that need no KVM: the timeout and serial spec.
    pub fn check(vm: &VmArgs) -> Result<(Option<std::time::Duration>, SerialSpec)> {
        let timeout = vm.timeout.map(watchdog::timeout_duration).transpose()?;
        if let Some(spec) = &vm.gdb {
            crate::gdb::conn::GdbSpec::parse(spec)?;
        }
        Ok((timeout, SerialSpec::parse(&vm.serial)?))
    }

    pub fn new(
        vm: &'a VmArgs,
        timeout: Option<std::time::Duration>,
        serial_spec: SerialSpec,
        memory_mib: u64,
    ) -> Common<'a> {
        Common {
            timeout,
            serial_spec,
            api_sock: vm.api_sock.as_deref(),
            id: &vm.id,
            stats_json: vm.stats_json.as_deref(),
            boot_timer: false,
            memory_mib,
            // Checked by `check` already.
            gdb: vm
                .gdb
                .as_deref()
                .and_then(|s| crate::gdb::conn::GdbSpec::parse(s).ok()),
            gdb_wait: vm.gdb_wait,
            restored: None,
            debug: None,
        }
    }
}

/// The process status for a guest's exit status: itself, unless it is one fluke-vmm's own
/// statuses would make ambiguous (123..=126), which exits with 123 and says so.
fn guest_exit_code(status: u8) -> u8 {
    use fluke_abi::status::{GUEST_STATUS_RESERVED, VMM_ERROR};
    let s = i32::from(status);
    if (GUEST_STATUS_RESERVED..=VMM_ERROR).contains(&s) {
        to_stderr(&format!(
            "fluke-vmm: the guest exited with status {s}, in the range fluke-vmm reserves ({GUEST_STATUS_RESERVED}-{VMM_ERROR}); exiting with {GUEST_STATUS_RESERVED}\n"
        ));
        return status_u8(GUEST_STATUS_RESERVED);
    }
    status
}

/// Runs a prepared VM to its end and turns the outcome into the exit status.
pub fn execute(machine: Machine, common: &Common, process_start: Instant) -> Result<u8> {
    let Machine {
        mut vm,
        vcpu,
        text,
        platform,
        tsc_khz,
        serial: saved_serial,
        start_paused,
        mmio,
        channels,
    } = machine;
    let serial_spec = common.serial_spec.clone();
    let timeout = common.timeout;

    let (serial, irq) = match &saved_serial {
        Some(state) => SerialDevice::with_state(serial_spec.open()?, state)?,
        None => SerialDevice::new(serial_spec.open()?)?,
    };
    vm.register_irqfd(&irq, COM1_IRQ)?;
    let _stdin = match serial_spec {
        SerialSpec::Stdio => {
            let space = serial.input_space_evt().map_err(|source| Error::HostIo {
                what: "serial input",
                source,
            })?;
            match stdin::start(serial.shared(), space) {
                Ok(t) => Some(t),
                Err(e) => {
                    log::warn!("{e}; the guest gets no input");
                    None
                }
            }
        }
        SerialSpec::File(_) | SerialSpec::Null => None,
    };
    let mut devices = Devices {
        serial,
        boot_timer: BootTimer::new(process_start, common.boot_timer),
        bench: BenchPort::default(),
        mmio,
        channels,
    };

    let rip_source = if vm.has_sync_regs() {
        RipSource::SyncRegs
    } else {
        RipSource::GetRegs
    };
    log::debug!("reading RIP for port I/O checks from {rip_source:?}");
    let mut watchdog = timeout.map(Watchdog::arm).transpose()?;
    let control = Arc::new(VmControl::default());
    if start_paused {
        control.start_paused();
    }
    let mut api = match common.api_sock {
        Some(path) => Some(ApiServer::start(
            path,
            InstanceInfo {
                id: common.id.to_string(),
                platform: platform.name(),
                vcpus: 1,
                memory_mib: common.memory_mib,
            },
            Arc::clone(&control),
        )?),
        None => None,
    };

    let mut gdb = match &common.gdb {
        Some(spec) => Some(crate::gdb::start(
            spec,
            common.gdb_wait,
            &control,
            &vm,
            platform,
            &text,
        )?),
        None => None,
    };
    let wants_control = api.is_some() || gdb.is_some();

    let run_start = Instant::now();
    let (outcome, exits) = {
        let mut runner = VcpuRunner::new(
            vcpu,
            &mut devices,
            (
                &text,
                vm.memory(),
                match platform {
                    fluke_abi::Platform::KvmPvm => OutRip::Next,
                    _ => OutRip::Instruction,
                },
            ),
            rip_source,
            (
                watchdog.as_ref(),
                wants_control.then_some(&*control),
                vm.fd(),
            ),
            MachineInfo {
                platform: platform.name(),
                tsc_khz,
            },
        );
        if let Some((_, debuggee)) = gdb.as_mut() {
            runner.attach_debugger(debuggee);
        }
        // Everything set up, every helper thread started: from here the vCPU thread keeps
        // to its seccomp list.
        crate::seccomp::confine(crate::seccomp::ThreadKind::Vcpu).map_err(Error::Seccomp)?;
        let outcome = runner.run();
        (outcome, runner.exits())
    };
    if let Some((_, Some(progress))) = &common.restored {
        progress
            .guest_ended
            .store(true, std::sync::atomic::Ordering::Release);
    }
    let run_time = run_start.elapsed();
    let ended = process_start.elapsed();
    // The device threads touch guest RAM: they stop before host paging does.
    devices.mmio.stop();
    for c in &mut devices.channels {
        c.stop();
    }
    let vmm_rss_kib = stats::vmm_rss_kib(&vm.host_guest_memory_ranges());
    let peak_rss_kib = stats::peak_rss_kib();
    let paging = vm.stop_host_paging();
    if let Some(w) = watchdog.as_mut() {
        w.disarm();
    }
    if let Some(a) = api.as_mut() {
        a.stop();
    }
    if let Some((server, _)) = gdb.as_mut() {
        server.stop();
    }
    // Guest output first, then whatever the VMM has to say about it.
    devices.serial.finish();
    if let Some(debug) = &common.debug {
        // After the run: debug information is read only if the guest reported a fault, or
        // the VMM stopped it in the kernel (named after the VMM's own report, below).
        let (reports, dropped) = devices.serial.take_fault_reports();
        to_stderr(&debug.describe(&reports, dropped));
    }
    let name_stop = |registers: &str| match (&common.debug, debuginfo::kernel_stop(registers)) {
        (Some(debug), Some(report)) => debug.describe(&[report], 0),
        _ => String::new(),
    };

    let (code, outcome_name) = match &outcome {
        Outcome::Exited(status) => {
            log::info!("guest exited with status {status}");
            (guest_exit_code(*status), "exit")
        }
        Outcome::Crashed { reason, registers } => {
            to_stderr(&format!(
                "fluke-vmm: error: guest crashed: {reason}\n{registers}{}",
                name_stop(registers)
            ));
            (status_u8(VMM_GUEST_CRASH), "crash")
        }
        Outcome::TimedOut { registers } => {
            let secs = common.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
            to_stderr(&format!(
                "fluke-vmm: error: guest did not finish within {secs} s; stopped\n{registers}{}",
                name_stop(registers)
            ));
            (status_u8(VMM_TIMEOUT), "timeout")
        }
    };
    log::debug!("{exits} exits to the VMM in {:.3} ms", ms(run_time));

    if let Some(path) = common.stats_json {
        let bench = devices.bench.result();
        let stats = RunStats {
            platform: platform.name().to_string(),
            outcome: outcome_name.to_string(),
            exit_code: code,
            boot_to_kernel_ms: devices.boot_timer.kernel_entry().map(ms),
            boot_to_init_ms: devices.boot_timer.init_start().map(ms),
            boot_to_exit_ms: Some(ms(ended)),
            bench_ticks: bench.map(|b| b.ticks),
            bench_elapsed_us: bench.map(|b| b.elapsed.as_secs_f64() * 1e6),
            exit_roundtrip_us: bench.map(|b| b.roundtrip_us()),
            vmm_rss_kib,
            peak_rss_kib,
            paging,
            exits,
            run_ms: ms(run_time),
            restore_ms: common.restored.as_ref().map(|(t, _)| ms(*t)),
            ondemand_pages: common
                .restored
                .as_ref()
                .and_then(|(_, p)| p.as_ref())
                .map(|p| p.pages.load(std::sync::atomic::Ordering::Relaxed)),
            ondemand_last_ms: common
                .restored
                .as_ref()
                .and_then(|(_, p)| p.as_ref())
                .map(|p| p.last_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3),
            guest: Default::default(),
        };
        stats.write(path)?;
    }
    Ok(code)
}
