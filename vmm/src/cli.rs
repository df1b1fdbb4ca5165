//! Command line interface (clap derive). Values that clap cannot check by type (memory
//! size range, serial spec, timeout range) are validated by the commands themselves so that
//! they fail with the VMM's own exit status ([`fluke_abi::status::VMM_ERROR`]), while usage
//! errors keep clap's status 2.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "fluke-vmm", version, about = "Boots fluke guest images on KVM")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log level: `run` has its own `--log-level`; the other commands log warnings.
    pub fn log_level(&self) -> log::LevelFilter {
        match &self.command {
            Command::Run(a) => a.vm.log_level.into(),
            Command::Restore(a) => a.vm.log_level.into(),
            Command::Inspect(_)
            | Command::Image(_)
            | Command::Bench(_)
            | Command::Compare(_)
            | Command::Ctl(_) => log::LevelFilter::Warn,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot an image (default: the image built into this binary) and exit with the status
    /// the guest wrote to the debug-exit port.
    Run(RunArgs),
    /// Continue a VM from a snapshot (`ctl snapshot DIR`, `PUT /snapshot/create`) in this new
    /// process. Without --resume it waits paused for `PATCH /vm {"state": "Resumed"}`.
    Restore(RestoreArgs),
    /// Print what an image holds.
    Inspect(InspectArgs),
    /// Write image files: one built from your own programs, or the built-in default image.
    /// Each is written with its debug directory beside it (IMAGE.debug/: the unstripped
    /// ELFs, from which `run` names functions in fault reports).
    Image(ImageArgs),
    /// Run the VMM benchmarks and print a table.
    Bench(BenchArgs),
    /// Run each service's microkernel-model and VMM-model implementations in the same
    /// interleaved rounds and print them side by side (what is not built yet: missing).
    Compare(CompareArgs),
    /// Talk to a running VM's control API (`run --api-sock PATH`).
    Ctl(CtlArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The image to boot; without it, the default image built into this binary.
    pub image: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 128)]
    pub memory: u64,
    /// Log the guest's boot milestones (time since the VMM started) to stderr.
    #[arg(long)]
    pub boot_timer: bool,
    /// Extra kernel command line, appended after what the VMM writes.
    #[arg(long, value_name = "STRING", default_value = "")]
    pub cmdline: String,
    /// Keep at most this much guest RAM resident on the host: pages come in on first touch
    /// and the oldest are evicted to a temporary file (userfaultfd; see the README).
    #[arg(long, value_name = "MiB")]
    pub memory_resident: Option<u64>,
    /// A virtio block device over FILE (a regular file, a whole number of 512-byte sectors;
    /// with `readonly` opened read-only and offered as read-only). Repeat for more drives,
    /// at most 8; the guest finds them on its command line (`virtio_mmio.device=`).
    #[arg(long = "drive", value_name = "path=FILE[,readonly]")]
    pub drives: Vec<String>,
    /// A shared-memory channel to another fluke-vmm given the same SOCKET: the first to
    /// come listens there (its guest boots at once and waits), the second joins. Each guest
    /// gets a device window after the drives' (registers, then 1 MiB less 4 KiB of memory
    /// both VMs map) and a doorbell into the other; see vmm/README.md. Repeatable, one
    /// socket each.
    #[arg(long = "channel", value_name = "path=SOCKET")]
    pub channels: Vec<String>,
    #[command(flatten)]
    pub vm: VmArgs,
}

/// What `run` and `restore` share: how the VM runs, whatever it starts from.
#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// Stop the guest after this many seconds (fractions allowed, paused time included);
    /// exit status 124.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Where the guest's serial console goes: `stdio`, `file:PATH` or `null`.
    #[arg(long, value_name = "SPEC", default_value = "stdio")]
    pub serial: String,
    /// How much the VMM logs to stderr.
    #[arg(long, value_enum, default_value_t = LogLevel::Warn)]
    pub log_level: LogLevel,
    /// Serve the control API (HTTP/1.1, JSON) on a Unix socket at this path, which must not
    /// exist yet; it is removed when the VM ends. See `fluke-vmm ctl`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Serve a gdb stub for the guest kernel on `unix:PATH` (the path must not exist yet; it
    /// is removed when the VM ends) or `tcp:127.0.0.1:PORT` (loopback only). gdb:
    /// `target remote PATH` or `target remote 127.0.0.1:PORT`. See vmm/README.md.
    #[arg(long, value_name = "SPEC")]
    pub gdb: Option<String>,
    /// With --gdb: wait before the guest's first instruction until gdb attaches and lets it
    /// run (continue, step or detach).
    #[arg(long, requires = "gdb")]
    pub gdb_wait: bool,
    /// The instance id the API reports.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    pub id: String,
    /// Confine each VMM thread to the system calls it needs: `on` stops the VMM at any
    /// other call with a report, `log` lets it through and has the kernel log it.
    #[arg(long, value_enum, default_value_t = crate::seccomp::SeccompMode::On)]
    pub seccomp: crate::seccomp::SeccompMode,
    /// Write what the run measured as a JSON object to this file (used by `bench`).
    #[arg(long, value_name = "PATH", hide = true)]
    pub stats_json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The snapshot directory (DIR/vmstate and DIR/memory).
    #[arg(required_unless_present_all = ["snapshot", "mem_file"], conflicts_with_all = ["snapshot", "mem_file"])]
    pub dir: Option<PathBuf>,
    /// The vmstate file, when the two files are named separately.
    #[arg(long, value_name = "PATH", requires = "mem_file")]
    pub snapshot: Option<PathBuf>,
    /// The memory file, with --snapshot.
    #[arg(long, value_name = "PATH", requires = "snapshot")]
    pub mem_file: Option<PathBuf>,
    /// How guest memory comes back: `copy` reads it all into place before the vCPU runs;
    /// `ondemand` maps it through userfaultfd, each page read from the file at first touch.
    #[arg(long, value_enum, default_value_t = MemoryRestore::Copy)]
    pub memory_restore: MemoryRestore,
    /// Run at once instead of waiting paused for the API.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub vm: VmArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoryRestore {
    Copy,
    Ondemand,
}

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The VM's API socket (`run --api-sock PATH`).
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlAction {
    /// Print the instance information (`GET /`).
    Info,
    /// Pause the VM (`PATCH /vm {"state": "Paused"}`); returns once its vCPU has stopped.
    Pause,
    /// Resume a paused VM (`PATCH /vm {"state": "Resumed"}`).
    Resume,
    /// Write a snapshot to DIR/vmstate and DIR/memory (`PUT /snapshot/create`). A running
    /// VM is paused for it and resumed after; a paused one stays paused.
    Snapshot {
        /// The snapshot directory (replaced whole: the previous snapshot there stays intact
        /// until the new one is complete).
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The image file.
    pub image: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub action: ImageAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImageAction {
    /// Build an image from program ELFs (linked against fluke-rt, see
    /// guest-nesters/README.md) and a kernel (default: the built-in image's kernel). The
    /// programs are packed stripped of debug information; the ELFs as given go to
    /// IMAGE.debug/.
    Build(ImageBuildArgs),
    /// Write the default image built into this binary (and, where the build left it, its
    /// debug directory).
    Default(ImageDefaultArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ImageBuildArgs {
    /// The image file to write (IMAGE.debug/ is written beside it).
    #[arg(short, long, value_name = "IMAGE")]
    pub output: PathBuf,
    /// The kernel ELF; without it, the kernel of the image built into this binary.
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// A program of the image: its name in the image ([a-z0-9_-], at most 32 bytes) and
    /// its ELF file. Repeat for each program.
    #[arg(long = "program", value_name = "NAME=ELF", required = true)]
    pub programs: Vec<String>,
    /// The manifest's init line: the first program and its arguments, or a stack of
    /// nesters (`pager > procmgr > work memory 1000`). Default: the first --program.
    #[arg(long, value_name = "STACK")]
    pub init: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ImageDefaultArgs {
    /// The image file to write (IMAGE.debug/ is written beside it).
    #[arg(short, long, value_name = "IMAGE")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Also write the records as a JSON array to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also write the table as markdown to this file.
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,
    /// Runs per benchmark.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub samples: u32,
    /// The image to benchmark; without it, the default image built into this binary.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// Also write an SVG plot of the nesting slowdown against depth to this file.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Run only the benchmarks whose names start with one of these comma-separated prefixes
    /// (e.g. `vmm.,boot.`).
    #[arg(long, value_name = "PREFIXES", value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Rounds: runs per benchmark, interleaved.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub samples: u32,
    /// Also write the comparison as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also write the table as markdown to this file.
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,
    /// Also write an SVG bar plot of the cost per operation of each model to this file.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Compare only these comma-separated services: ipc, paging, checkpoint, debug,
    /// confinement, process.
    #[arg(long, value_name = "SERVICES", value_delimiter = ',')]
    pub only: Vec<String>,
    /// The image to run; without it, the default image built into this binary.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<PathBuf>,
}

impl BenchArgs {
    /// Whether the benchmark `name` is selected by `--only`.
    pub fn selects(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| name.starts_with(p.as_str()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["fluke-vmm", "run"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.memory, 128);
        assert_eq!(a.vm.serial, "stdio");
        assert_eq!(a.vm.timeout, None);
        assert_eq!(a.vm.log_level, LogLevel::Warn);
        assert!(a.image.is_none());
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        assert!(Cli::try_parse_from(["fluke-vmm", "run", "--log-level", "loud"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "run", "--memory", "lots"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "inspect"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "ctl", "pause"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "ctl", "--api-sock", "/s", "nap"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "ctl", "--api-sock", "/s", "pause"]).is_ok());
        // --gdb-wait needs --gdb.
        assert!(Cli::try_parse_from(["fluke-vmm", "run", "--gdb-wait"]).is_err());
        assert!(
            Cli::try_parse_from(["fluke-vmm", "run", "--gdb", "unix:/g", "--gdb-wait"]).is_ok()
        );
        // `image build` needs an output and at least one program.
        assert!(Cli::try_parse_from(["fluke-vmm", "image"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "image", "build", "-o", "x.img"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "image", "build", "--program", "a=b"]).is_err());
        assert!(Cli::try_parse_from(["fluke-vmm", "image", "default"]).is_err());
    }

    #[test]
    fn compare_arguments() {
        let cli = Cli::try_parse_from([
            "fluke-vmm",
            "compare",
            "--samples",
            "2",
            "--only",
            "ipc,process",
            "--json",
            "c.json",
        ])
        .unwrap();
        let Command::Compare(c) = cli.command else {
            panic!("not compare")
        };
        assert_eq!(
            (c.samples, c.only.as_slice()),
            (2, &["ipc".to_string(), "process".into()][..])
        );
        assert_eq!(c.json, Some(PathBuf::from("c.json")));
        assert!(c.markdown.is_none() && c.plot.is_none() && c.image.is_none());
        let d = Cli::try_parse_from(["fluke-vmm", "compare"]).unwrap();
        assert!(matches!(
            d.command,
            Command::Compare(CompareArgs { samples: 10, .. })
        ));
    }

    #[test]
    fn image_build_arguments() {
        let cli = Cli::try_parse_from([
            "fluke-vmm",
            "image",
            "build",
            "-o",
            "x.img",
            "--program",
            "a=a.elf",
            "--program",
            "b=b.elf",
            "--init",
            "a > b 1",
        ])
        .unwrap();
        let Command::Image(ImageArgs {
            action: ImageAction::Build(b),
        }) = cli.command
        else {
            panic!("not image build")
        };
        assert_eq!(b.output, PathBuf::from("x.img"));
        assert_eq!(b.programs, ["a=a.elf", "b=b.elf"]);
        assert_eq!(b.init.as_deref(), Some("a > b 1"));
        assert!(b.kernel.is_none());
    }
}
