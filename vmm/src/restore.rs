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
    if mem_len != snap.memory_bytes {
        return Err(bad(format!(
            "{} holds {mem_len} bytes, the snapshot's VM has {} of memory",
            mem_path.display(),
            snap.memory_bytes
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

    let kvm = vm::open_kvm()?;
    let check_kvm = vm::open_kvm()?;
    let vm = vm::Vm::new(kvm, mem_bytes)?;
    let vcpu = vm.create_vcpu(0)?;
    let platform = platform::detect(&vcpu);
    snapshot::check_fits_host(&snap, &check_kvm, platform.name()).map_err(bad)?;
    if platform == fluke_abi::Platform::KvmPvm && snap.vcpu.pv_control.is_none() {
        return Err(bad("a kvm_pvm snapshot without the PV control MSR"));
    }

    // Memory first, checked against the saved checksum before any state is applied.
    let mut file =
        std::fs::File::open(&mem_path).map_err(|e| bad(format!("{}: {e}", mem_path.display())))?;
    let torn = || {
        bad(format!(
            "{} does not match the vmstate (checksum): the pair is torn or the memory corrupt",
            mem_path.display()
        ))
    };
    let _pager = match args.memory_restore {
        MemoryRestore::Copy => {
            snapshot::fill_memory(vm.memory(), &mut file)
                .map_err(|e| bad(format!("{}: {e}", mem_path.display())))?;
            if snapshot::memory_crc(vm.memory()) != snap.memory_crc32 {
                return Err(torn());
            }
            None
        }
        MemoryRestore::Ondemand => {
            // The file is checked whole (read, not copied) before a page of it is served.
            if snapshot::file_crc(&mut file)
                .map_err(|e| bad(format!("{}: {e}", mem_path.display())))?
                != snap.memory_crc32
            {
                return Err(torn());
            }
            Some(snapshot::ondemand::Pager::start(vm.memory(), file, process_start).map_err(bad)?)
        }
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
