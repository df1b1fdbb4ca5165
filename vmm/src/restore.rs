//! `fluke-vmm restore`: reads a snapshot, checks it whole before building anything, makes a
//! new VM of the saved size, fills its memory (`--memory-restore copy`), puts the vCPU, the
//! interrupt controllers, the clock and the UART back, and runs it as `run` does (paused
//! until `PATCH /vm`, unless --resume).

use std::time::Instant;

use crate::cli::{MemoryRestore, RestoreArgs};
use crate::error::{Error, Result};
use crate::run::{execute, Common, Machine};
use crate::snapshot::{self, file};
use crate::{platform, vm};

fn bad(what: impl Into<String>) -> Error {
    Error::Snapshot(format!("cannot restore: {}", what.into()))
}

pub fn restore(args: &RestoreArgs, process_start: Instant) -> Result<u8> {
    let (timeout, serial_spec) = Common::check(&args.vm)?;
    let target = match (&args.dir, &args.snapshot, &args.mem_file) {
        (Some(dir), None, None) => file::Target::Dir(dir.clone()),
        (None, Some(vmstate), Some(memory)) => file::Target::Files {
            vmstate: vmstate.clone(),
            memory: memory.clone(),
        },
        _ => {
            return Err(bad(
                "give a snapshot directory, or --snapshot and --mem-file",
            ))
        }
    };
    let started = Instant::now();
    let mut snap = file::read_vmstate(&target.vmstate()).map_err(bad)?;
    let mem_path = target.memory();
    let mem_meta =
        std::fs::metadata(&mem_path).map_err(|e| bad(format!("{}: {e}", mem_path.display())))?;
    if !mem_meta.is_file() {
        return Err(bad(format!("{}: not a regular file", mem_path.display())));
    }
    let mem_len = mem_meta.len();
    if mem_len != snap.memory_bytes.saturating_add(file::TRAILER_LEN) {
        return Err(bad(format!(
            "{} holds {mem_len} bytes, the snapshot's VM has {} of memory (and the file a {}-byte trailer)",
            mem_path.display(),
            snap.memory_bytes,
            file::TRAILER_LEN
        )));
    }
    let mib = snap.memory_bytes >> 20;
    if mib << 20 != snap.memory_bytes {
        return Err(bad(format!(
            "a memory size of {} bytes is not whole MiB",
            snap.memory_bytes
        )));
    }
    let mem_bytes = vm::memory_bytes(mib)?;

    let vm = vm::Vm::new(vm::open_kvm()?, mem_bytes)?;
    let vcpu = vm.create_vcpu(0)?;
    let platform = platform::detect(&vcpu);
    snapshot::check_fits_host(&snap, vm.kvm(), platform.name()).map_err(bad)?;
    snapshot::match_tsc(&snap, &vcpu).map_err(bad)?;
    if platform == fluke_abi::Platform::KvmPvm && snap.vcpu.pv_control.is_none() {
        return Err(bad("a kvm_pvm snapshot without the PV control MSR"));
    }

    // Memory next: a file from another snapshot is refused by its trailer before a byte
    // is used; every chunk is checked against its checksum before the guest sees it (as it
    // is copied, or before its first page is served on demand).
    let mem_err = |e: String| bad(format!("{}: {e}", mem_path.display()));
    let mut file = std::fs::File::open(&mem_path).map_err(|e| mem_err(e.to_string()))?;
    let trailer = file::MemoryTrailer::read(&file, snap.memory_bytes).map_err(mem_err)?;
    if trailer.memory_id != snap.memory_id || trailer.memory_bytes != snap.memory_bytes {
        return Err(mem_err(format!(
            "does not match the vmstate (it is memory {:016x} of {} bytes, the vmstate's is {:016x} of {}): the pair is torn",
            trailer.memory_id, trailer.memory_bytes, snap.memory_id, snap.memory_bytes
        )));
    }
    let _pager = match args.memory_restore {
        MemoryRestore::Copy => {
            snapshot::fill_memory(vm.memory(), &mut file, &snap.memory_chunk_crc32)
                .map_err(mem_err)?;
            None
        }
        MemoryRestore::Ondemand => Some(
            snapshot::ondemand::Pager::start(
                vm.memory(),
                file,
                snap.memory_chunk_crc32.clone(),
                process_start,
            )
            .map_err(bad)?,
        ),
    };
    let pv = platform == fluke_abi::Platform::KvmPvm;
    if pv {
        snapshot::prepare_pv_restore(&mut snap, vm.memory()).map_err(bad)?;
    }
    snapshot::apply(&snap, vm.fd(), &vcpu).map_err(bad)?;
    if pv {
        snapshot::ring_pv_doorbell(&vcpu).map_err(bad)?;
    }
    log::info!(
        "restore: {} MiB {} and the state applied in {:.1} ms",
        mib,
        match args.memory_restore {
            MemoryRestore::Copy => "copied",
            MemoryRestore::Ondemand => "registered for on-demand paging",
        },
        started.elapsed().as_secs_f64() * 1e3
    );

    let machine = Machine {
        vm,
        vcpu,
        text: snap.text.clone(),
        platform,
        tsc_khz: snap.tsc_khz,
        serial: Some(snap.serial.to_state()),
        start_paused: !args.resume,
        // Snapshots of VMs with drives are refused when taken.
        mmio: Default::default(),
        channels: Vec::new(),
    };
    let common = Common {
        restored: Some((
            process_start.elapsed(),
            _pager.as_ref().map(|p| std::sync::Arc::clone(&p.progress)),
        )),
        ..Common::new(&args.vm, timeout, serial_spec, mib)
    };
    let code = execute(machine, &common, process_start);
    if let Some(p) = &_pager {
        let unchecked = p
            .progress
            .unchecked
            .load(std::sync::atomic::Ordering::Relaxed);
        if unchecked > 0 {
            log::warn!(
                "restore: the guest's run ended before {unchecked} chunks of the memory file (never used) were checked"
            );
        }
        log::info!(
            "restore: {} pages brought in on demand, the last {:.1} ms after the VMM started",
            p.progress.pages.load(std::sync::atomic::Ordering::Relaxed),
            p.progress
                .last_us
                .load(std::sync::atomic::Ordering::Relaxed) as f64
                / 1e3
        );
    }
    code
}
