//! `fluke-vmm`: the host VMM that boots fluke guest images on KVM (hardware KVM or the
//! `kvm_pvm` fork described in `shared/platform/pvm.md`).
//!
//! See `README.md` next to this crate's `Cargo.toml` for the module map, the run loop, the
//! exit codes and the guest memory layout.

mod api;
mod bench;
mod boot;
mod bootstrap;
mod cli;
mod compare;
mod control;
mod ctl;
mod debuginfo;
mod devices;
mod error;
mod fuzz;
mod gdb;
mod image_tool;
mod inspect;
mod kick;
mod listen;
mod logger;
mod paging;
mod platform;
mod qemu_boot;
mod restore;
mod run;
mod seccomp;
mod snapshot;
mod stats;
mod stdin;
mod vcpu;
mod vm;
mod watchdog;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::Error;

fn main() -> ExitCode {
    // The reference point of the boot timer and of the `boot.*` benchmarks: the first thing
    // the VMM does. /proc/self/stat's `starttime` would include exec and dynamic loading
    // (well under a millisecond for this static-ish binary) but has only clock-tick (10 ms)
    // resolution, which is useless for boot times of a few milliseconds.
    let process_start = Instant::now();
    let cli = Cli::parse();
    logger::init(cli.log_level());

    let seccomp_mode = match &cli.command {
        Command::Run(a) => Some(a.vm.seccomp),
        Command::Restore(a) => Some(a.vm.seccomp),
        _ => None,
    };
    if let Some(mode) = seccomp_mode {
        if let Err(e) = seccomp::init(mode) {
            report_error(&Error::Seccomp(e));
            return ExitCode::from(fluke_abi::status::VMM_ERROR as u8);
        }
    }
    let result = match cli.command {
        Command::Run(args) => run::run(&args, process_start),
        Command::Restore(args) => restore::restore(&args, process_start),
        Command::Inspect(args) => inspect::inspect(&args),
        Command::Image(args) => image_tool::image(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Compare(args) => compare::compare(&args),
        Command::Ctl(args) => ctl::ctl(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints a one-line error to stderr.
fn report_error(e: &Error) {
    logger::to_stderr(&format!("fluke-vmm: error: {e}\n"));
}
