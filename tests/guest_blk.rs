//! The block device the microkernel way (issue 15): fluke-vmm's virtio-blk device driven by
//! `blkdrv`, a user program holding the device's memory and interrupt capabilities, and used
//! by `disk`, a client speaking the block protocol over IPC. Real guests on kvm_pvm.

mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use support::api::{LiveVm, TempDir};
use support::*;

const DRIVE_BYTES: usize = 2 << 20;
const DRIVE_SECTORS: usize = DRIVE_BYTES / 512;

fn drive(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; DRIVE_BYTES]).unwrap();
    path
}

fn with_drive(spec: &str, init: &str) -> Run {
    vmm(
        &default_image(),
        &["--timeout", "60", "--drive", spec, "--cmdline", init],
    )
}

/// A pattern written across the drive and flushed is all there after the VMM is killed -9
/// (the host file holds it: fluke-vmm caches nothing, and a flush is fdatasync), read back
/// block by block by a new VM.
#[test]
fn a_flushed_pattern_survives_kill_9_of_the_vmm_and_reads_back_whole() {
    let dir = TempDir::new("blk-kill9");
    let disk = drive(&dir.0, "disk.img");
    let spec = format!("path={}", disk.display());
    let args: Vec<OsString> = vec![
        "run".into(),
        default_image().into_os_string(),
        "--drive".into(),
        spec.clone().into(),
    ];
    let vm = LiveVm::start_with("blk-kill9-vm", &args, "fluke.init=disk,pattern,7", &[]);
    vm.wait_for("disk: flushed");
    let console = vm.kill();
    assert!(
        console.contains(&format!("disk: wrote {DRIVE_SECTORS} sectors")),
        "{console}"
    );
    assert!(
        console.contains("blkdrv: drive of 4096 sectors ready"),
        "{console}"
    );
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(bytes.len(), DRIVE_BYTES, "the drive file keeps its size");
    let zero_sectors = bytes
        .chunks(512)
        .filter(|s| s.iter().all(|&b| b == 0))
        .count();
    assert_eq!(zero_sectors, 0, "every sector was written");

    let run = with_drive(&spec, "fluke.init=disk,verify,7");
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console(&format!("disk: verified {DRIVE_SECTORS} sectors, 0 bad"));
    // The check compares contents: another seed's pattern is not this one.
    let run = with_drive(&spec, "fluke.init=disk,verify,8");
    assert_eq!(run.status, 1, "{run:?}");
    run.assert_console(&format!(
        "disk: verified {DRIVE_SECTORS} sectors, {DRIVE_SECTORS} bad"
    ));
}

/// A read-only drive: the driver learns it from the device (VIRTIO_BLK_F_RO), a program's
/// write is refused with the status it sees, reads and a flush work, and a read past the
/// end is refused before the device.
#[test]
fn a_read_only_drive_refuses_a_programs_write_with_a_status_it_sees() {
    let dir = TempDir::new("blk-ro");
    let disk = dir.0.join("ro.img");
    std::fs::write(&disk, vec![0x5au8; 64 * 512]).unwrap();
    let run = with_drive(
        &format!("path={},readonly", disk.display()),
        "fluke.init=disk,readonly",
    );
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("blkdrv: drive of 64 sectors, read-only ready");
    run.assert_console("disk: write refused: the drive is read-only");
    run.assert_console("disk: read: Ok(()), first byte 0x5a");
    run.assert_console("disk: flush: Ok(())");
    run.assert_console("disk: read past the end: Err(Status(OutOfRange))");
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0x5a),
        "the read-only drive is unchanged"
    );
}

/// The driver is destroyed while its client's reads are in flight (and the clients' port set
/// with it, by its launcher): the read in flight fails with an IPC error (the driver is
/// gone, or its set), the kernel and other programs run on, and a new driver resets the
/// device, binds its interrupt again and serves.
#[test]
fn a_driver_killed_mid_request_leaves_the_kernel_and_other_programs_healthy() {
    let dir = TempDir::new("blk-killdrv");
    let disk = drive(&dir.0, "disk.img");
    let run = with_drive(&format!("path={}", disk.display()), "fluke.init=disk,kill");
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("disk: the driver destroyed mid-stream: Ok(0), its clients' set: Ok(0)");
    run.assert_console("the one in flight: Ipc(");
    run.assert_console("disk: another program: Ok(0)");
    run.assert_console("disk: the second driver read sector 0: Ok(())");
    assert_eq!(
        run.console
            .matches("blkdrv: drive of 4096 sectors ready")
            .count(),
        2,
        "{}",
        run.console
    );
}
