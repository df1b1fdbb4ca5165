//! `boot.to_init_qemu`: the same image booted by QEMU with TCG (no KVM), for reference.
//! The time runs from just before QEMU's process is started until the kernel's
//! `fluke: started init:` console line arrives (printed right after init is created; under
//! fluke-vmm `boot.to_init` stops at the InitStart boot mark just before that, a port QEMU
//! does not have).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The console line that ends the measurement.
const INIT_LINE: &str = "fluke: started init:";

/// QEMU's command line for `image`: the README's, with the console on stdout.
fn qemu_command(image: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg", "-cpu", "max", "-m", "128M", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// ms from QEMU's start to init's start, or why it could not be measured.
pub fn to_init_ms(image: &Path, timeout: Duration) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = qemu_command(image).spawn().map_err(|e| {
        format!("cannot start qemu-system-x86_64 (scripts/setup.sh installs it): {e}")
    })?;
    let stdout = child.stdout.take().ok_or("QEMU has no stdout")?;
    // A reader thread, so a QEMU that prints nothing cannot hold us past the timeout.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(INIT_LINE) {
                let _ = tx.send(start.elapsed());
                return;
            }
        }
    });
    let got = rx.recv_timeout(timeout);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    match got {
        Ok(elapsed) => Ok(elapsed.as_secs_f64() * 1e3),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "QEMU did not print `{INIT_LINE}` within {} s",
            timeout.as_secs()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("QEMU ended before it printed `{INIT_LINE}`"))
        }
    }
}
