//! The kernel objects for user-level drivers (issue 15): device memory and interrupts, on
//! kvm_pvm under fluke-vmm and on QEMU TCG (native backend). Each boots the real image with
//! device words on the command line and `fluke.init=ktest,CASE`.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

const DEVICE: &str = "virtio_mmio.device=4K@0xd0000000:5";

/// Bad device words are refused at boot, one console line each, and never handed out.
#[test]
fn bad_device_words_are_refused_with_one_line_each() {
    let words = [
        ("4K@0xd0000000:5", None),
        ("4K@0x100000:6", Some("overlaps RAM")),
        ("4K@0x0:6", Some("overlaps RAM")),
        ("4K@0xfec00000:7", Some("overlaps the IOAPIC")),
        ("4K@0xfee00000:8", Some("overlaps the local APIC")),
        (
            "4K@0xfffffffffffff000:9",
            Some("malformed, empty or wrapping"),
        ),
        ("junk", Some("malformed, empty or wrapping")),
        (
            "4K@0xd0000800:10",
            Some("shares a page with an earlier device"),
        ),
        ("4K@0xd0001000:5", Some("its interrupt line is taken")),
        ("4K@0xd0002000:99", Some("no such IOAPIC line")),
        ("4M@0xd0400000:11", Some("larger than 2 MiB")),
        (
            "4K@0x10000000000000:12",
            Some("beyond the CPU's physical address width"),
        ),
    ];
    let mut cmdline = String::from("fluke.init=ktest,devlist fluke.irq=4 fluke.irq=5");
    for (w, _) in words {
        cmdline.push_str(" virtio_mmio.device=");
        cmdline.push_str(w);
    }
    for (who, run) in both(&cmdline) {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        for (i, (w, why)) in words.iter().enumerate() {
            match why {
                Some(why) => {
                    let line = format!("fluke: device {i} refused: virtio_mmio.device={w}: {why}");
                    assert_eq!(
                        run.console.matches(&line).count(),
                        1,
                        "{who}: {line:?}:\n{}",
                        run.console
                    );
                }
                None => run.assert_console(&format!(
                    "fluke: device {i}: 0xd0000000..0xd0001000 line 5 (init names 254 and 253)"
                )),
            }
        }
        run.assert_console("fluke: interrupt line 4 (init name 222)");
        run.assert_console(
            "fluke: interrupt line refused: fluke.irq=5: its interrupt line is taken",
        );
        // Only the accepted device's two capabilities and line 4's reached init.
        run.assert_console("ktest: devlist: name 254: [11, 3489660928, 4096, 5, 0]");
        run.assert_console("ktest: devlist: name 253: [12, 5, 18446744073709551615, 0, 0]");
        run.assert_console("ktest: devlist: name 222: [12, 4, 18446744073709551615, 0, 0]");
        run.assert_console("ktest: devlist: 3 device capabilities");
    }
}

/// A program with the capability maps the window and reads offset 0: under fluke-vmm,
/// which has no device there yet, the read reaches the VMM as an MMIO read at 0xd0000000
/// (so the mapping reaches the physical address), and the VMM ends the run. Before that: a
/// program without the capability reached nothing by any name or address, and the kernel
/// refused to touch the device page for a program.
#[test]
fn device_memory_reaches_the_device_only_through_its_capability() {
    let cmdline = format!("fluke.init=ktest,devmem,read {DEVICE}");
    let run = vmm(
        &default_image(),
        &["--timeout", "60", "--cmdline", &cmdline],
    );
    run.assert_console("victim: devmem-nocap: 0 name(s) reached a device");
    run.assert_console("ktest: devmem: a program without the capability: Ok(0)");
    run.assert_console("ktest: devmem: a program touching d0000000: Ok(142)");
    run.assert_console("ktest: devmem: a program touching ffff8880d0000000: Ok(142)");
    run.assert_console("ktest: devmem: the child touching the region: Ok(142)");
    run.assert_console("ktest: devmem: 0 unexpected result(s)");
    run.assert_console("ktest: devmem: reading offset 0 of 0xd0000000 at 0x70000000");
    assert!(
        run.stderr
            .contains("guest crashed: unexpected MMIO read: 4 bytes at 0xd0000000"),
        "{run:?}"
    );
    assert_ne!(run.status, 0, "{run:?}");
    // Natively, under QEMU, nothing answers there: the read returns.
    let run = qemu(&default_image(), &cmdline);
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("ktest: devmem: 0 unexpected result(s)");
    run.assert_console("ktest: devmem: read 0x");
}

/// The two halves of issue 15 together: with a drive, fluke-vmm lists its virtio-blk device
/// on the command line, the kernel hands the window to init as a capability, and a user
/// program reads the device's own register through it (virtio-mmio's magic, "virt").
#[test]
fn a_user_program_reads_a_virtio_device_through_its_capability() {
    let dir = std::env::temp_dir().join(format!("fluke-devmem-drive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let drive = dir.join("drive.img");
    std::fs::write(&drive, vec![0u8; 1 << 20]).unwrap();
    let spec = format!("path={}", drive.display());
    let with_drive = |init: &str| {
        vmm(
            &default_image(),
            &["--timeout", "60", "--drive", &spec, "--cmdline", init],
        )
    };
    let run = with_drive("fluke.init=ktest,devmem,read");
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("ktest: devmem: 0 unexpected result(s)");
    run.assert_console("ktest: devmem: read 0x74726976");

    // The drive's window (256 pages): a mapping of it that its space partly discarded and
    // mapped again is still counted, and a destroy still unmaps all of it.
    let run = with_drive("fluke.init=ktest,devmem,destroy");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("victim: devmem-remap-read: mapped Ok(0)");
    run.assert_console(
        "ktest: devmem: the child that remapped a page, reading after the destroy: Ok(142)",
    );
    run.assert_console("ktest: devmem: destroy: 0 unexpected result(s)");
}

/// Destroying a device-memory object unmaps it from every space: a child that mapped its
/// copy faults on its next read.
#[test]
fn destroying_device_memory_unmaps_it_everywhere() {
    for (who, run) in both(&format!("fluke.init=ktest,devmem,destroy {DEVICE}")) {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("victim: devmem-map-read: mapped Ok(0)");
        run.assert_console("ktest: devmem: the child reading after the destroy: Ok(142)");
        run.assert_console("ktest: devmem: destroy: 0 unexpected result(s)");
    }
}

fn irq_checks(who: &str, run: &Run) {
    for count in 1..=4 {
        run.assert_console(&format!(
            "ktest: irq: message Ok((68, [3, 4, {count}, 0])) as expected"
        ));
    }
    run.assert_console("ktest: irq: driver got Ok((85, [3, 4, 3, 0])); dies before its ack");
    run.assert_console("ktest: irq: the driver ended Ok(134)");
    // Unbound and still masked after the driver, the interrupt outstanding.
    run.assert_console("ktest: irq: after the driver: Ok([12, 4, 18446744073709551615, 1, 3, 0])");
    run.assert_console("ktest: irq: 0 unexpected result(s)");
    assert!(
        !run.console.contains("UNEXPECTED"),
        "{who}: {}",
        run.console
    );
}

/// COM1's receive interrupt (line 4, `fluke.irq=4`) as a real source: each byte fed to the
/// VMM's stdin arrives as a message on the bound port, the line masked until the ack; a
/// line binds once; a driver killed before its ack leaves the line masked and rebindable,
/// and the next binding gets that interrupt again; a bound line can be destroyed.
#[test]
fn interrupts_arrive_as_messages_until_acknowledged() {
    irq_on_both("fluke.init=ktest,irq fluke.irq=4");
}

/// The same with a CPU-bound process running meanwhile: the interrupts arrive in user mode
/// (the driver is blocked) and reach the driver all the same.
#[test]
fn interrupts_arriving_in_user_mode_reach_the_driver() {
    irq_on_both("fluke.init=ktest,irq,spin fluke.irq=4");
}

fn irq_on_both(cmdline: &str) {
    let mut cmd = Command::new(VMM);
    cmd.arg("run")
        .arg(default_image())
        .args(["--timeout", "60", "--cmdline", cmdline]);
    let (status, console, stderr) = run_feeding(
        &mut cmd,
        "waiting for interrupt",
        b"x",
        Duration::from_secs(90),
    );
    let run = Run {
        status: status.code().unwrap_or(-1),
        console,
        stderr,
    };
    assert_eq!(run.status, 0, "fluke-vmm: {run:?}");
    irq_checks("fluke-vmm", &run);

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-m", "128M", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(default_image())
        .args(["-append", cmdline]);
    let (status, console, stderr) = run_feeding(
        &mut qemu,
        "waiting for interrupt",
        b"x",
        Duration::from_secs(240),
    );
    let code = status.code().unwrap_or(-1);
    let run = Run {
        status: fluke_abi::status::from_qemu_exit_code(code).map_or(code, i32::from),
        console,
        stderr,
    };
    assert_eq!(run.status, 0, "qemu: {run:?}");
    irq_checks("qemu", &run);
}
