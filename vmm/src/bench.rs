//! `fluke-vmm bench`: boots the guest repeatedly (as child processes of this same binary:
//! `run --serial null --stats-json FILE --cmdline ...`), reads what each run measured and
//! reports the median of each benchmark.
//!
//! Adding a benchmark is one entry in [`BENCHMARKS`]: its name, model, unit, the extra
//! kernel command line of the runs it reads, and how to get one sample out of a run's
//! [`RunStats`]. Benchmarks with the same command line share their runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::boot;
use crate::cli::BenchArgs;
use crate::error::{Error, Result};
use crate::logger::{to_stderr, to_stdout};
use crate::run::read_image;
use crate::stats::RunStats;

/// What a benchmark measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// The host alone.
    Host,
    /// The VMM (and KVM under it).
    Vmm,
    /// The guest microkernel.
    Microkernel,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::Host => "host",
            Model::Vmm => "vmm",
            Model::Microkernel => "microkernel",
        }
    }
}

/// One benchmark.
#[derive(Clone)]
pub struct Benchmark {
    /// Stable record name.
    pub name: &'static str,
    pub model: Model,
    pub unit: &'static str,
    /// Extra kernel command line of the runs this benchmark reads.
    pub cmdline: &'static str,
    /// Extra `fluke-vmm run` options of those runs (e.g. `--memory-resident`).
    pub vmm_args: &'static [&'static str],
    /// One sample from one run; `None` if the run did not measure it.
    pub sample: Sample,
}

/// Where a benchmark's sample comes from.
#[derive(Clone, Copy)]
pub enum Sample {
    /// Something the VMM measured during the run.
    Stats(fn(&RunStats) -> Option<f64>),
    /// A `BENCH <key> <value> ...` line the guest printed.
    Guest(&'static str),
    /// Something the bench process measured through the run's control API
    /// ([`drive_api`]); runs of such a benchmark get `--api-sock`.
    Api(&'static str),
}

impl Sample {
    pub fn get(&self, s: &RunStats) -> Option<f64> {
        match self {
            Sample::Stats(f) => f(s),
            Sample::Guest(key) | Sample::Api(key) => s.guest.get(*key).copied(),
        }
    }
}

/// The guest of `vmm.uffd_fault` and `guest.page_touch`: 16,384 pages written, then read.
const PAGE_TOUCH_WORKLOAD: &str = "fluke.init=bench,touch,16384";

/// The guest of `vm.pause_resume`: a ticker that runs long enough for the cycles.
const PAUSE_WORKLOAD: &str = "fluke.init=work,ticker,150,10";
/// Pause/resume cycles per `vm.pause_resume` run (the sample is their median).
const PAUSE_CYCLES: usize = 20;

/// The guest of the `sel4bench.*` records.
const ONEWAY_WORKLOAD: &str = "fluke.init=bench,oneway,5000";
/// The guest of the `blk.*` records: `disk` starts the user-level driver `blkdrv` on the
/// drive and times 4 KiB reads and writes through it, then a sequential read of the drive.
const BLK_WORKLOAD: &str = "fluke.init=disk,bench,400";
/// A `--drive` argument that [`one_run`] replaces with the bench's own drive file
/// ([`bench_drive`]: 16 MiB, sparse, removed when the bench ends).
const BENCH_DRIVE: &str = "path=@bench-drive";
const BENCH_DRIVE_BYTES: u64 = 16 << 20;
const BLK_ARGS: &[&str] = &["--drive", BENCH_DRIVE];
/// The guest of `vmm.channel_roundtrip`: `chat ping` round trips of a 64-byte message
/// through the user-level channel driver to another VM, whose `chat pong` echoes them.
const CHANNEL_WORKLOAD: &str = "fluke.init=chat,ping,500";
const CHANNEL_PEER: &str = "fluke.init=chat,pong";
/// A `--channel` argument that [`one_run`] replaces with a socket of the run's own, on which
/// it starts the other VM first ([`ChannelPeer`]).
const BENCH_CHANNEL: &str = "path=@bench-channel";
const CHANNEL_ARGS: &[&str] = &["--channel", BENCH_CHANNEL];

/// The guest of `proc.spawn_wait`: 50 processes of `work nop` started and waited for
/// through the process manager.
const PROC_WORKLOAD: &str = "fluke.init=procmgr>work,spawn,50";

/// Every benchmark, in report order. Keep the names stable: they are the records' keys.
pub const BENCHMARKS: &[Benchmark] = &[
    Benchmark {
        name: "boot.to_kernel",
        model: Model::Vmm,
        unit: "ms",
        cmdline: "",
        vmm_args: &[],
        sample: Sample::Stats(|s| s.boot_to_kernel_ms),
    },
    Benchmark {
        name: "boot.to_init",
        model: Model::Vmm,
        unit: "ms",
        cmdline: "",
        vmm_args: &[],
        sample: Sample::Stats(|s| s.boot_to_init_ms),
    },
    // One VM per process, the VMM model's process management: a VM booted to run `work nop`
    // (which exits at once), from the VMM's process start to the guest's exit. The
    // microkernel model's counterpart is `proc.spawn_wait`.
    Benchmark {
        name: "vm.boot_to_exit",
        model: Model::Vmm,
        unit: "ms",
        cmdline: "fluke.init=work,nop",
        vmm_args: &[],
        sample: Sample::Stats(|s| s.boot_to_exit_ms),
    },
    Benchmark {
        name: "vmm.exit_roundtrip",
        model: Model::Vmm,
        unit: "us",
        cmdline: "fluke.bench=exit_roundtrip",
        vmm_args: &[],
        sample: Sample::Stats(|s| s.exit_roundtrip_us),
    },
    // The same with no seccomp filters: each exit is a KVM_RUN through the vCPU's filter.
    Benchmark {
        name: "vmm.exit_roundtrip_seccomp_off",
        model: Model::Vmm,
        unit: "us",
        cmdline: "fluke.bench=exit_roundtrip",
        vmm_args: &["--seccomp", "off"],
        sample: Sample::Stats(|s| s.exit_roundtrip_us),
    },
    Benchmark {
        name: "vm.pause_resume",
        model: Model::Vmm,
        unit: "us",
        cmdline: PAUSE_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Api("vm.pause_resume"),
    },
    Benchmark {
        name: "vm.snapshot_create",
        model: Model::Vmm,
        unit: "ms",
        cmdline: PAUSE_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Api("vm.snapshot_create"),
    },
    Benchmark {
        name: "vm.snapshot_bytes",
        model: Model::Vmm,
        unit: "bytes",
        cmdline: PAUSE_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Api("vm.snapshot_bytes"),
    },
    Benchmark {
        name: "vm.restore_copy",
        model: Model::Vmm,
        unit: "ms",
        cmdline: PAUSE_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Api("vm.restore_copy"),
    },
    Benchmark {
        name: "vm.restore_ondemand",
        model: Model::Vmm,
        unit: "ms",
        cmdline: PAUSE_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Api("vm.restore_ondemand"),
    },
    Benchmark {
        name: "vm.restore_ondemand_full",
        model: Model::Vmm,
        unit: "ms",
        cmdline: PAUSE_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Api("vm.restore_ondemand_full"),
    },
    Benchmark {
        name: "vmm.rss",
        model: Model::Vmm,
        unit: "KiB",
        cmdline: "",
        vmm_args: &[],
        sample: Sample::Stats(|s| s.vmm_rss_kib.map(|k| k as f64)),
    },
    // In-guest measurements: the `bench` program of the image runs as init and prints them.
    Benchmark {
        name: "guest.null_call",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,null,20000",
        vmm_args: &[],
        sample: Sample::Guest("guest.null_call"),
    },
    Benchmark {
        name: "platform.syscall_floor",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,floor,20000",
        vmm_args: &[],
        sample: Sample::Guest("platform.syscall_floor"),
    },
    Benchmark {
        name: "guest.user_fault",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,fault,2000",
        vmm_args: &[],
        sample: Sample::Guest("guest.user_fault"),
    },
    Benchmark {
        name: "guest.space_switch",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,switch,5000",
        vmm_args: &[],
        sample: Sample::Guest("guest.space_switch"),
    },
    Benchmark {
        name: "platform.switch_floor",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,switch-floor,5000",
        vmm_args: &[],
        sample: Sample::Guest("platform.switch_floor"),
    },
    Benchmark {
        name: "ipc.call_reply",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,ipc,5000",
        vmm_args: &[],
        sample: Sample::Guest("ipc.call_reply"),
    },
    Benchmark {
        name: "ipc.send",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,ipc-send,5000",
        vmm_args: &[],
        sample: Sample::Guest("ipc.send"),
    },
    Benchmark {
        name: "keeper.fault",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,keeper,1000",
        vmm_args: &[],
        sample: Sample::Guest("keeper.fault"),
    },
    // The VMM model's pager: one page the host brings back from its store at a guest read
    // (`bench touch`: 64 MiB written, read back with 16 MiB resident), and the same reads
    // with all of it resident, in the same run of the table.
    Benchmark {
        name: "vmm.uffd_fault",
        model: Model::Vmm,
        unit: "ns",
        cmdline: PAGE_TOUCH_WORKLOAD,
        vmm_args: &["--memory", "256", "--memory-resident", "16"],
        sample: Sample::Guest("guest.page_touch"),
    },
    Benchmark {
        name: "guest.page_touch",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: PAGE_TOUCH_WORKLOAD,
        vmm_args: &["--memory", "256"],
        sample: Sample::Guest("guest.page_touch"),
    },
    Benchmark {
        name: "thread.state_roundtrip",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,state,5000",
        vmm_args: &[],
        sample: Sample::Guest("thread.state_roundtrip"),
    },
    Benchmark {
        name: "ipc.cap_transfer",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,ipc-cap,5000",
        vmm_args: &[],
        sample: Sample::Guest("ipc.cap_transfer"),
    },
    // sel4bench's one-way IPC: each direction of a call alone, from TSC stamps in the
    // message, the timer read's cost subtracted (measured in the same run), ns and cycles.
    Benchmark {
        name: "sel4bench.timer_overhead",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: ONEWAY_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Guest("sel4bench.timer_overhead"),
    },
    Benchmark {
        name: "sel4bench.ipc_call_oneway",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: ONEWAY_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Guest("sel4bench.ipc_call_oneway"),
    },
    Benchmark {
        name: "sel4bench.ipc_reply_oneway",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: ONEWAY_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Guest("sel4bench.ipc_reply_oneway"),
    },
    Benchmark {
        name: "sel4bench.ipc_call_oneway_cycles",
        model: Model::Microkernel,
        unit: "cycles",
        cmdline: ONEWAY_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Guest("sel4bench.ipc_call_oneway_cycles"),
    },
    Benchmark {
        name: "sel4bench.ipc_reply_oneway_cycles",
        model: Model::Microkernel,
        unit: "cycles",
        cmdline: ONEWAY_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Guest("sel4bench.ipc_reply_oneway_cycles"),
    },
    // lmbench's lat_ctx (a ring of processes passing a token; here 8 over IPC), per hop.
    Benchmark {
        name: "lmbench.lat_ctx",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: "fluke.init=bench,ring,500",
        vmm_args: &[],
        sample: Sample::Guest("lmbench.lat_ctx"),
    },
    // Process management, the microkernel model's way: `work nop` spawned and waited for
    // through the procmgr nester, one process after the other (per process).
    Benchmark {
        name: "proc.spawn_wait",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: PROC_WORKLOAD,
        vmm_args: &[],
        sample: Sample::Guest("proc.spawn_wait"),
    },
    // Isolation and communication, the VMM model's way: two VMs, a message and its echo
    // over the shared-memory channel, each end a user-level driver (the microkernel
    // model's counterpart is `ipc.call_reply`, in the same run).
    Benchmark {
        name: "vmm.channel_roundtrip",
        model: Model::Vmm,
        unit: "ns",
        cmdline: CHANNEL_WORKLOAD,
        vmm_args: CHANNEL_ARGS,
        sample: Sample::Guest("vmm.channel_roundtrip"),
    },
    // The block device through its user-level driver: a client's call, the driver's
    // virtqueue request, the VMM's device thread (ioeventfd in, pread/pwrite, irqfd out),
    // the interrupt as a message, the reply.
    Benchmark {
        name: "blk.read_4k",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: BLK_WORKLOAD,
        vmm_args: BLK_ARGS,
        sample: Sample::Guest("blk.read_4k"),
    },
    Benchmark {
        name: "blk.write_4k",
        model: Model::Microkernel,
        unit: "ns",
        cmdline: BLK_WORKLOAD,
        vmm_args: BLK_ARGS,
        sample: Sample::Guest("blk.write_4k"),
    },
    Benchmark {
        name: "blk.mib_s",
        model: Model::Microkernel,
        unit: "MiB/s",
        cmdline: BLK_WORKLOAD,
        vmm_args: BLK_ARGS,
        sample: Sample::Guest("blk.mib_s"),
    },
];

/// Workloads of the nesting comparison: `(name, arguments of the guest's work program)`.
pub const NEST_WORKLOADS: &[(&str, &str)] = &[
    ("syscall", "syscall,5000"),
    ("ipc", "ipc,2000"),
    ("memory", "memory,500"),
    ("compute", "compute,200000"),
    // Maintained crates on real data: the bytes of the image's ktest program (143 KB).
    ("deflate", "deflate,2"),
    ("sha256", "sha256,50"),
    ("btree", "btree,100000"),
];

/// The workloads that also run with no nester and guest RAM paged by the VMM instead
/// (`nest.WORKLOAD.vmm-paged`, the VMM model's counterpart of the pager): the ones whose
/// memory the pager interposes on.
pub const VMM_PAGED_WORKLOADS: &[&str] = &["memory", "deflate", "btree"];

/// One stack the workloads run under: `nest.WORKLOAD.LABEL`, a nester `kind`, its number
/// of layers, and the `fluke.init` prefix that builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestStack {
    pub label: String,
    pub kind: &'static str,
    pub depth: usize,
    pub prefix: String,
}

/// The nesters measured alone, in plot order ("mixed" is [`MIXED_STACK`]).
const NEST_KINDS: [&str; 4] = ["passthru", "procmgr", "pager", "mixed"];
const NEST_DEPTHS: [usize; 4] = [1, 2, 4, 8];
/// All three nesters stacked eight deep.
const MIXED_STACK: [&str; 8] = [
    "pager", "procmgr", "passthru", "pager", "procmgr", "passthru", "pager", "procmgr",
];

/// The stacks: bare; each nester alone 1, 2, 4 and 8 deep; the mixed stack. The pager
/// holds 256 frames: the memory workload (500 pages) is the one it interposes on heavily.
pub fn nest_stacks() -> Vec<NestStack> {
    let stack = |label: String, kind, layers: &[&str]| NestStack {
        label,
        kind,
        depth: layers.len(),
        prefix: layers.iter().map(|n| format!("{n}>")).collect(),
    };
    let mut all = vec![stack("bare".into(), "bare", &[])];
    for kind in &NEST_KINDS[..3] {
        for depth in NEST_DEPTHS {
            all.push(stack(format!("{kind}-x{depth}"), kind, &vec![*kind; depth]));
        }
    }
    all.push(stack("mixed-x8".into(), "mixed", &MIXED_STACK));
    all
}

fn leak(s: String) -> &'static str {
    // A few dozen short strings for the life of this one-shot command.
    Box::leak(s.into_boxed_str())
}

/// Every benchmark: the fixed list, then `nest.WORKLOAD.STACK` for each workload and stack.
pub fn all_benchmarks() -> Vec<Benchmark> {
    let mut all = BENCHMARKS.to_vec();
    for &(workload, work_args) in NEST_WORKLOADS {
        let key = leak(format!("work.{workload}"));
        for NestStack { label, prefix, .. } in nest_stacks() {
            all.push(Benchmark {
                name: leak(format!("nest.{workload}.{label}")),
                model: Model::Microkernel,
                unit: "ns",
                cmdline: leak(format!("fluke.init={prefix}work,{work_args}")),
                vmm_args: &[],
                sample: Sample::Guest(key),
            });
        }
    }
    // No nester, guest RAM paged by the VMM instead: 2 MiB resident (the least it allows)
    // for the kernel, the program and its data.
    for &(workload, work_args) in NEST_WORKLOADS {
        if !VMM_PAGED_WORKLOADS.contains(&workload) {
            continue;
        }
        all.push(Benchmark {
            name: leak(format!("nest.{workload}.vmm-paged")),
            model: Model::Vmm,
            unit: "ns",
            cmdline: leak(format!("fluke.init=work,{work_args}")),
            vmm_args: &["--memory-resident", "2"],
            sample: Sample::Guest(leak(format!("work.{workload}"))),
        });
    }
    all
}

/// The Fluke-style table: each workload bare and under each stack, the slowdown and the
/// cost per layer (the slowdown's geometric mean over the stack's layers).
pub fn nest_table(records: &[Record]) -> String {
    let find = |n: &str| records.iter().find(|r| r.name == n);
    let mut s = String::new();
    let mut any = false;
    for &(workload, _) in NEST_WORKLOADS {
        let Some(bare_record) = find(&format!("nest.{workload}.bare")).filter(|b| b.value > 0.0)
        else {
            continue;
        };
        let bare = bare_record.value;
        if !any {
            let _ = writeln!(
                s,
                "\n| workload | stack | time (ms) | slowdown | 95% interval | per layer |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|");
            any = true;
        }
        for NestStack { label, depth, .. } in nest_stacks() {
            let Some(record) = find(&format!("nest.{workload}.{label}")) else {
                continue;
            };
            let v = record.value;
            let interval = if depth == 0 {
                String::new()
            } else {
                interval_text(record, bare_record, 1.0)
            };
            let interval = interval.trim_start();
            let interval = if interval.is_empty() { "-" } else { interval };
            let slowdown = v / bare;
            let per_layer = if depth == 0 {
                "-".to_string()
            } else {
                format!("{:+.2}%", (slowdown.powf(1.0 / depth as f64) - 1.0) * 100.0)
            };
            let _ = writeln!(
                s,
                "| {workload} | {label} | {:.2} | {slowdown:.3}x | {interval} | {per_layer} |",
                v / 1e6
            );
        }
        // The VMM model's counterpart, where there is one (no nester: the VMM pages).
        if let Some(record) = find(&format!("nest.{workload}.vmm-paged")) {
            let interval = interval_text(record, bare_record, 1.0);
            let _ = writeln!(
                s,
                "| {workload} | vmm-paged (VMM model) | {:.2} | {:.3}x | {} | - |",
                record.value / 1e6,
                record.value / bare,
                interval.trim_start()
            );
        }
    }
    s
}

/// An SVG document's opening of `w` x `h` on white, with `title` centred at the top (the
/// plots of `bench` and `compare`); the caller appends its shapes and `</svg>`.
pub fn svg_start(w: f64, h: f64, title: &str) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{title}</text>"#,
        w / 2.0
    );
    svg
}

/// An SVG plot of each workload's slowdown against the number of layers, a line per
/// workload (colour) and nester (dash).
pub fn nest_plot(records: &[Record]) -> String {
    let value = |n: &str| records.iter().find(|r| r.name == n).map(|r| r.value);
    let (w, h, left, bottom, top, right) = (760.0, 440.0, 60.0, 50.0, 30.0, 160.0);
    let stacks = nest_stacks();
    let max_depth = stacks.iter().map(|s| s.depth).max().unwrap_or(1) as f64;
    let mut series = Vec::new();
    for (wi, &(workload, _)) in NEST_WORKLOADS.iter().enumerate() {
        let Some(bare) = value(&format!("nest.{workload}.bare")).filter(|&b| b > 0.0) else {
            continue;
        };
        for (ki, kind) in NEST_KINDS.iter().enumerate() {
            let points: Vec<(f64, f64)> = core::iter::once((0.0, 1.0))
                .chain(stacks.iter().filter(|s| s.kind == *kind).filter_map(|s| {
                    value(&format!("nest.{workload}.{}", s.label))
                        .map(|v| (s.depth as f64, v / bare))
                }))
                .collect();
            if points.len() > 1 {
                series.push((format!("{workload} {kind}"), wi, ki, points));
            }
        }
    }
    let ymax = series
        .iter()
        .flat_map(|(_, _, _, p)| p.iter().map(|&(_, y)| y))
        .fold(1.1_f64, f64::max)
        * 1.05;
    let ymin = series
        .iter()
        .flat_map(|(_, _, _, p)| p.iter().map(|&(_, y)| y))
        .fold(0.9_f64, f64::min)
        * 0.95;
    let x = |d: f64| left + d / max_depth * (w - left - right);
    // A logarithmic axis once one line leaves the others far behind (the pager on the
    // memory workload), so that the small slowdowns stay readable.
    let log = ymax / ymin > 2.0;
    let scale = |v: f64| if log { v.ln() } else { v };
    let y =
        |v: f64| top + (scale(ymax) - scale(v)) / (scale(ymax) - scale(ymin)) * (h - top - bottom);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
    ];
    let mut svg = svg_start(
        w,
        h,
        &format!(
            "slowdown vs nesting depth{}",
            if log { " (log scale)" } else { "" }
        ),
    );
    let (x0, x1, y0, y1) = (x(0.0), x(max_depth), y(ymin), y(ymax));
    let _ = writeln!(
        svg,
        r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
    );
    for d in [0usize, 1, 2, 4, 8] {
        let xd = x(d as f64);
        let _ = writeln!(
            svg,
            r#"<text x="{xd}" y="{}" text-anchor="middle">{d}</text>"#,
            y0 + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">layers</text>"#,
        (x0 + x1) / 2.0,
        h - 8.0
    );
    for i in 0..=4 {
        let at = scale(ymin) + (scale(ymax) - scale(ymin)) * f64::from(i) / 4.0;
        let v = if log { at.exp() } else { at };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{v:.2}x</text>"#,
            x0 - 6.0,
            y(v) + 4.0
        );
    }
    let one = y(1.0);
    let _ = writeln!(
        svg,
        r#"<line x1="{x0}" y1="{one}" x2="{x1}" y2="{one}" stroke="gray" stroke-dasharray="4 4"/>"#
    );
    let dashes = ["", "6 3", "2 3", "10 3 2 3"];
    for (i, (name, wi, ki, points)) in series.iter().enumerate() {
        let color = colors[wi % colors.len()];
        let dash = dashes[ki % dashes.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(d, v)| format!("{:.1},{:.1}", x(d), y(v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
            path.join(" ")
        );
        for &(d, v) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(d),
                y(v)
            );
        }
        let ly = top + 12.0 + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{ly}" fill="{color}">{name}</text>"#,
            w - right + 20.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A benchmark measured in this process, no guest: `(name, model, unit, one sample)`.
pub type HostBenchmark = (&'static str, Model, &'static str, fn() -> f64);

pub const HOST_BENCHMARKS: &[HostBenchmark] = &[
    ("host.getppid", Model::Host, "ns", getppid_ns),
    // What the vCPU thread's seccomp filter adds to each system call it lets through.
    (
        "vmm.seccomp_overhead",
        Model::Vmm,
        "ns",
        crate::seccomp::overhead_ns,
    ),
];

/// A ratio reported under the table: `numerator / (factor * denominator)`, against a target
/// where the project has one (`None`: a comparison of the two models, with no goal).
pub struct Ratio {
    pub what: &'static str,
    pub numerator: &'static str,
    pub denominator: &'static str,
    pub factor: f64,
    pub target: Option<f64>,
}

pub const RATIOS: &[Ratio] = &[
    Ratio {
        what: "null call vs. syscall floor",
        numerator: "guest.null_call",
        denominator: "platform.syscall_floor",
        factor: 1.0,
        target: Some(1.25),
    },
    Ratio {
        what: "space switch vs. switch floor",
        numerator: "guest.space_switch",
        denominator: "platform.switch_floor",
        factor: 1.0,
        target: Some(1.25),
    },
    // Round trips all: a call/reply crosses A->B->A, as the floor's bare switch pair does.
    Ratio {
        what: "call/reply round trip vs. switch floor",
        numerator: "ipc.call_reply",
        denominator: "platform.switch_floor",
        factor: 1.0,
        target: Some(1.5),
    },
    // The two models' isolation + communication: a message and its answer between two VMs
    // (each end a user-level driver) against a call and its reply between two processes.
    Ratio {
        what: "VM-to-VM channel round trip vs. in-guest IPC call/reply",
        numerator: "vmm.channel_roundtrip",
        denominator: "ipc.call_reply",
        factor: 1.0,
        target: None,
    },
];

/// ns per `getppid` system call: the host's own kernel-entry floor.
fn getppid_ns() -> f64 {
    const N: u32 = 200_000;
    let start = std::time::Instant::now();
    for _ in 0..N {
        // SAFETY: getppid has no preconditions and cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(N)
}

/// `platform` is the one the guest runs measured on: the host record is its baseline.
fn host_record(
    name: &str,
    model: Model,
    unit: &str,
    f: fn() -> f64,
    n: u32,
    platform: &str,
) -> Record {
    let samples: Vec<f64> = (0..n).map(|_| f()).collect();
    Record::of(name, model, platform, unit, samples)
}

/// The ratio lines for the records present.
pub fn ratios(records: &[Record]) -> Vec<String> {
    let find = |n: &str| records.iter().find(|r| r.name == n);
    RATIOS
        .iter()
        .filter_map(|r| {
            let (num, den_record) = (find(r.numerator)?, find(r.denominator)?);
            let (a, b) = (num.value, den_record.value * r.factor);
            let den = if r.factor == 1.0 {
                r.denominator.to_string()
            } else {
                format!("({} x {})", r.factor, r.denominator)
            };
            (b > 0.0).then(|| {
                format!(
                    "{}: {} / {den} = {:.2}x{}{}",
                    r.what,
                    r.numerator,
                    a / b,
                    interval_text(num, den_record, r.factor),
                    r.target
                        .map_or_else(String::new, |t| format!(" (target {t:.2}x)"))
                )
            })
        })
        .collect()
}

/// ` [low, high]` of `a / (factor * b)` (the rounds' own ratios when both ran in the same
/// interleaved rounds), with `, within noise` when the interval includes 1.
fn interval_text(a: &Record, b: &Record, factor: f64) -> String {
    let scaled: Vec<f64> = b.samples.iter().map(|x| x * factor).collect();
    match crate::bootstrap::ratio_interval(&a.samples, &scaled) {
        Some(i) => format!(
            " [{:.2}, {:.2}]{}",
            i.low,
            i.high,
            if i.includes_one() {
                ", within noise"
            } else {
                ""
            }
        ),
        None => String::new(),
    }
}

/// A benchmark's result: the JSON record `--json` writes (one per benchmark, in an array).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub model: Model,
    /// `kvm_pvm`, `kvm` or `qemu`.
    pub platform: String,
    /// The median of `samples`.
    pub value: f64,
    pub unit: String,
    pub samples: Vec<f64>,
    /// The bootstrap 95% confidence interval of the median, `[low, high]`.
    #[serde(default)]
    pub ci95: Option<[f64; 2]>,
}

impl Record {
    /// A record of `samples`: their median and its interval.
    pub fn of(name: &str, model: Model, platform: &str, unit: &str, samples: Vec<f64>) -> Record {
        Record {
            name: name.to_string(),
            model,
            platform: platform.to_string(),
            value: median(&samples).unwrap_or(0.0),
            unit: unit.to_string(),
            ci95: crate::bootstrap::median_interval(&samples).map(|i| [i.low, i.high]),
            samples,
        }
    }

    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The median; `None` for no samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Runs per benchmark: at least 1, at most this.
pub const MAX_SAMPLES: u32 = 10_000;
/// Per-run timeout passed to the child `run`.
pub const RUN_TIMEOUT_SECS: u32 = 60;

/// Fails unless `samples` is a usable number of rounds.
pub fn check_samples(samples: u32) -> Result<()> {
    if !(1..=MAX_SAMPLES).contains(&samples) {
        return Err(Error::Bench(format!(
            "--samples must be between 1 and {MAX_SAMPLES}, got {samples}"
        )));
    }
    Ok(())
}

/// This executable, which the runs boot the guest with.
pub fn own_exe() -> Result<PathBuf> {
    std::env::current_exe().map_err(|source| Error::HostIo {
        what: "benchmark runner (cannot find own executable)",
        source,
    })
}

/// What [`run_interleaved`] measured: a record per benchmark that every run reported, and
/// a line per benchmark that failed (`NAME: why`).
pub struct Measured {
    pub records: Vec<Record>,
    pub failures: Vec<String>,
}

impl Measured {
    /// The platform the guest runs measured on (the host records' baseline): the first
    /// record's, or "kvm" when none ran.
    pub fn platform(&self) -> String {
        self.records
            .first()
            .map_or_else(|| "kvm".into(), |r| r.platform.clone())
    }
}

/// Runs the guest benchmarks `selected` (in that order) over `samples` interleaved rounds:
/// the benchmarks with the same command line and VMM options share their runs, and round `i`
/// runs every command line once before round `i + 1` runs any. `what` names the caller in
/// the progress lines on stderr. Records come in the order of `selected`.
pub fn run_interleaved(
    exe: &Path,
    image: Option<&Path>,
    selected: &[&Benchmark],
    samples: u32,
    what: &str,
) -> Measured {
    let mut records = Vec::new();
    let mut failures = Vec::new();
    // A group per distinct command line (with its VMM options), in the order of `selected`.
    let mut seen: Vec<(&str, &[&str])> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    for spec in selected.iter().map(|b| (b.cmdline, b.vmm_args)) {
        if seen.contains(&spec) {
            continue;
        }
        seen.push(spec);
        let (cmdline, vmm_args) = spec;
        let benches: Vec<&Benchmark> = selected
            .iter()
            .copied()
            .filter(|b| (b.cmdline, b.vmm_args) == spec)
            .collect();
        let names: Vec<&str> = benches.iter().map(|b| b.name).collect();
        to_stderr(&format!(
            "fluke-vmm: {what}: {}{}{} ({})\n",
            if cmdline.is_empty() { "boot" } else { cmdline },
            if vmm_args.is_empty() { "" } else { " " },
            vmm_args.join(" "),
            names.join(", ")
        ));
        let driven = benches.iter().any(|b| matches!(b.sample, Sample::Api(_)));
        groups.push(Group {
            spec,
            benches,
            driven,
            runs: Vec::new(),
            failed: None,
        });
    }
    // Interleaved: round i runs every group once before round i + 1 runs any, so what the
    // host does over the minutes of a bench falls on every variant alike, and round i of
    // one variant can be compared with round i of another (`bootstrap::ratio_interval`).
    to_stderr(&format!(
        "fluke-vmm: {what}: {samples} rounds over {} command lines, interleaved\n",
        groups.len()
    ));
    for round in 0..samples {
        for g in groups.iter_mut().filter(|g| g.failed.is_none()) {
            match sample_run(exe, image, g.spec, round, g.driven) {
                Ok(run) => g.runs.push(run),
                Err(e) => g.failed = Some(e),
            }
        }
    }
    let _ = std::fs::remove_file(bench_drive_path());
    for g in groups {
        if let Some(e) = g.failed {
            failures.extend(g.benches.iter().map(|b| format!("{}: {e}", b.name)));
            continue;
        }
        for b in g.benches {
            match record(b, &g.runs) {
                Ok(r) => records.push(r),
                Err(e) => failures.push(format!("{}: {e}", b.name)),
            }
        }
    }
    // In the order of `selected`, not in the order the runs were grouped.
    records.sort_by_key(|r| selected.iter().position(|b| b.name == r.name));
    Measured { records, failures }
}

/// The [`HOST_BENCHMARKS`] that `selects`, `samples` each, measured in this process;
/// `platform` is the guests' (the host records are their baseline).
pub fn host_records(selects: impl Fn(&str) -> bool, samples: u32, platform: &str) -> Vec<Record> {
    HOST_BENCHMARKS
        .iter()
        .filter(|b| selects(b.0))
        .map(|&(name, model, unit, f)| host_record(name, model, unit, f, samples, platform))
        .collect()
}

pub fn bench(args: &BenchArgs) -> Result<u8> {
    check_samples(args.samples)?;
    // Fail early and clearly on a bad image rather than N times in the children.
    let (bytes, what) = read_image(args.image.as_deref())?;
    boot::validate(&bytes, &what)?;
    let exe = own_exe()?;

    let all = all_benchmarks();
    let selected: Vec<&Benchmark> = all.iter().filter(|b| args.selects(b.name)).collect();
    let measured = run_interleaved(
        &exe,
        args.image.as_deref(),
        &selected,
        args.samples,
        "bench",
    );
    let platform = measured.platform();
    let Measured {
        mut records,
        mut failures,
    } = measured;
    records.extend(host_records(|n| args.selects(n), args.samples, &platform));
    if args.selects(IMAGE_BYTES) {
        let size = vec![bytes.len() as f64];
        records.push(Record::of(
            IMAGE_BYTES,
            Model::Vmm,
            &platform,
            "bytes",
            size,
        ));
    }
    if args.selects(BOOT_TO_INIT_QEMU) {
        match qemu_record(args, &bytes) {
            Ok(r) => records.push(r),
            Err(e) => failures.push(format!("{BOOT_TO_INIT_QEMU}: {e}")),
        }
    }
    to_stdout(&table(&records));
    for line in ratios(&records) {
        to_stdout(&format!("{line}\n"));
    }
    let nest = nest_table(&records);
    to_stdout(&nest);
    if let Some(path) = &args.plot {
        write_file(path, &nest_plot(&records))?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&records)
            .map_err(|e| Error::Bench(format!("cannot encode records: {e}")))?;
        write_file(path, &(json + "\n"))?;
    }
    if let Some(path) = &args.markdown {
        let mut md = markdown(&records);
        for line in ratios(&records) {
            md.push_str(&format!("\n- {line}"));
        }
        md.push_str("\n\n");
        md.push_str(&nest_table(&records));
        write_file(path, &md)?;
    }
    if failures.is_empty() {
        Ok(0)
    } else {
        for f in &failures {
            to_stderr(&format!("fluke-vmm: bench: {f}\n"));
        }
        Err(Error::Bench(format!(
            "{} of {} benchmarks failed",
            failures.len(),
            selected.len()
        )))
    }
}

/// The size of the image benchmarked (the built-in one unless `--image`).
const IMAGE_BYTES: &str = "image.bytes";
/// The same image's boot under QEMU (TCG), from its process start to init ([`crate::qemu_boot`]).
const BOOT_TO_INIT_QEMU: &str = "boot.to_init_qemu";

/// `boot.to_init_qemu` over `args.samples` boots of the image (the built-in one is written
/// to a temporary file for QEMU).
fn qemu_record(args: &BenchArgs, bytes: &[u8]) -> std::result::Result<Record, String> {
    let temp = std::env::temp_dir().join(format!("fluke-bench-{}.img", std::process::id()));
    let image = match &args.image {
        Some(path) => path.clone(),
        None => {
            std::fs::write(&temp, bytes)
                .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
            temp.clone()
        }
    };
    let timeout = std::time::Duration::from_secs(u64::from(RUN_TIMEOUT_SECS));
    let samples: std::result::Result<Vec<f64>, String> = (0..args.samples)
        .map(|_| crate::qemu_boot::to_init_ms(&image, timeout))
        .collect();
    let _ = std::fs::remove_file(&temp);
    Ok(Record::of(
        BOOT_TO_INIT_QEMU,
        Model::Vmm,
        "qemu",
        "ms",
        samples?,
    ))
}

pub fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::WriteOutput {
        path: path.to_path_buf(),
        source,
    })
}

/// The benchmarks that share one command line, and its runs so far.
struct Group<'a> {
    spec: (&'a str, &'a [&'a str]),
    benches: Vec<&'a Benchmark>,
    driven: bool,
    runs: Vec<RunStats>,
    failed: Option<String>,
}

/// Builds a record from the runs of its command line.
fn record(b: &Benchmark, runs: &[RunStats]) -> std::result::Result<Record, String> {
    let samples: Vec<f64> = runs.iter().filter_map(|r| b.sample.get(r)).collect();
    if samples.len() != runs.len() {
        return Err(format!(
            "the guest did not report it in {} of {} runs",
            runs.len() - samples.len(),
            runs.len()
        ));
    }
    if samples.is_empty() {
        return Err("no samples".into());
    }
    let platform = runs.first().map(|r| r.platform.clone()).unwrap_or_default();
    Ok(Record::of(b.name, b.model, &platform, b.unit, samples))
}

/// Boots the guest once with `(cmdline, vmm_args)` (round `i`) and returns what it measured.
fn sample_run(
    exe: &Path,
    image: Option<&Path>,
    spec: (&str, &[&str]),
    i: u32,
    driven: bool,
) -> std::result::Result<RunStats, String> {
    let stats_path = temp_stats_path(i);
    let console_path = stats_path.with_extension("console");
    let sock = driven.then(|| stats_path.with_extension("sock"));
    let paths = (
        stats_path.as_path(),
        console_path.as_path(),
        sock.as_deref(),
    );
    let result = one_run(exe, image, spec, paths);
    if let Some(sock) = &sock {
        let _ = std::fs::remove_file(sock);
    }
    let _ = std::fs::remove_file(&stats_path);
    let _ = std::fs::remove_file(&console_path);
    result.map_err(|e| format!("run {}: {e}", i + 1))
}

/// The other VM of a channel benchmark: `run --channel path=SOCK` with [`CHANNEL_PEER`],
/// started before the measured VM and ended after it (it ends itself when the measured VM
/// has gone: the channel says so).
struct ChannelPeer {
    child: std::process::Child,
    sock: PathBuf,
}

impl ChannelPeer {
    fn start(exe: &Path, image: Option<&Path>, sock: &Path) -> std::result::Result<Self, String> {
        let _ = std::fs::remove_file(sock);
        let mut cmd = Command::new(exe);
        cmd.arg("run");
        if let Some(image) = image {
            cmd.arg(image);
        }
        let child = cmd
            .args(["--serial", "null", "--log-level", "error", "--timeout"])
            .arg(RUN_TIMEOUT_SECS.to_string())
            .arg("--channel")
            .arg(format!("path={}", sock.display()))
            .args(["--cmdline", CHANNEL_PEER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the channel's other VM: {e}"))?;
        Ok(ChannelPeer {
            child,
            sock: sock.to_path_buf(),
        })
    }

    /// Waits (10 s at most) for the other VM to end on its own, else kills it.
    fn finish(&mut self) -> std::result::Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => break None,
            }
        };
        let _ = std::fs::remove_file(&self.sock);
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("the channel's other VM exited with {s}")),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err("the channel's other VM did not end".into())
            }
        }
    }
}

impl Drop for ChannelPeer {
    /// A run that failed before [`ChannelPeer::finish`] does not leave the other VM running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn bench_drive_path() -> PathBuf {
    std::env::temp_dir().join(format!("fluke-bench-{}-drive.img", std::process::id()))
}

/// The drive of the `blk.*` runs, made (sparse) at its first use.
fn bench_drive() -> std::result::Result<PathBuf, String> {
    let path = bench_drive_path();
    if !path.exists() {
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(BENCH_DRIVE_BYTES))
            .map_err(|e| format!("cannot make the bench drive {}: {e}", path.display()))?;
    }
    Ok(path)
}

fn temp_stats_path(i: u32) -> PathBuf {
    std::env::temp_dir().join(format!("fluke-bench-{}-{i}.json", std::process::id()))
}

/// One run: `(stats, console, API socket)` paths; with a socket, [`drive_api`] measures
/// through it while the guest runs.
fn one_run(
    exe: &Path,
    image: Option<&Path>,
    (cmdline, vmm_args): (&str, &[&str]),
    (stats_path, console_path, sock): (&Path, &Path, Option<&Path>),
) -> std::result::Result<RunStats, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("run");
    if let Some(image) = image {
        cmd.arg(image);
    }
    let mut peer = None;
    for &arg in vmm_args {
        if arg == BENCH_DRIVE {
            cmd.arg(format!("path={}", bench_drive()?.display()));
        } else if arg == BENCH_CHANNEL {
            let sock = stats_path.with_extension("chan");
            peer = Some(ChannelPeer::start(exe, image, &sock)?);
            cmd.arg(format!("path={}", sock.display()));
        } else {
            cmd.arg(arg);
        }
    }
    let serial = format!("file:{}", console_path.display());
    cmd.args(["--serial", &serial, "--log-level", "error", "--timeout"])
        .arg(RUN_TIMEOUT_SECS.to_string())
        .arg("--stats-json")
        .arg(stats_path)
        .arg("--cmdline")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(sock) = sock {
        let _ = std::fs::remove_file(sock);
        cmd.arg("--api-sock").arg(sock);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let snap_dir = stats_path.with_extension("snap");
    let driven = sock.map(|sock| drive_api(sock, console_path, &snap_dir));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for {}: {e}", exe.display()))?;
    if let Some(mut peer) = peer {
        peer.finish()?;
    }
    let restored = driven
        .as_ref()
        .is_some_and(|d| d.is_ok())
        .then(|| time_restores(exe, &snap_dir, stats_path));
    let _ = std::fs::remove_dir_all(&snap_dir);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr
            .lines()
            .find(|l| l.contains("error:"))
            .unwrap_or("no message");
        let status = out
            .status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
        return Err(format!("the VMM exited with {status}: {why}"));
    }
    let json = std::fs::read_to_string(stats_path)
        .map_err(|e| format!("no statistics from the run: {e}"))?;
    let mut stats: RunStats =
        serde_json::from_str(&json).map_err(|e| format!("unreadable statistics: {e}"))?;
    let console = std::fs::read_to_string(console_path).unwrap_or_default();
    stats.guest = crate::stats::parse_guest_bench(&console);
    if let Some(driven) = driven {
        stats.guest.extend(driven?);
    }
    if let Some(restored) = restored {
        stats.guest.extend(restored?);
    }
    Ok(stats)
}

/// Restores the snapshot `drive_api` wrote, once with each memory mode: until the vCPU is
/// ready to run (both), and until the last page the guest touched came in (on demand).
fn time_restores(
    exe: &Path,
    snap: &Path,
    stats_path: &Path,
) -> std::result::Result<Vec<(String, f64)>, String> {
    let mut out = Vec::new();
    for mode in ["copy", "ondemand"] {
        let stats = stats_path.with_extension(format!("restore-{mode}.json"));
        let run = Command::new(exe)
            .arg("restore")
            .arg(snap)
            .args([
                "--resume",
                "--serial",
                "null",
                "--log-level",
                "error",
                "--memory-restore",
                mode,
            ])
            .args(["--timeout", &RUN_TIMEOUT_SECS.to_string()])
            .arg("--stats-json")
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot start a restore: {e}"))?;
        let json = std::fs::read_to_string(&stats);
        let _ = std::fs::remove_file(&stats);
        if !run.status.success() {
            return Err(format!(
                "restore ({mode}) failed: {}",
                String::from_utf8_lossy(&run.stderr).trim()
            ));
        }
        let s: RunStats =
            serde_json::from_str(&json.map_err(|e| format!("restore ({mode}): {e}"))?)
                .map_err(|e| format!("restore ({mode}): {e}"))?;
        let ready = s.restore_ms.ok_or("a restore did not report its latency")?;
        out.push((format!("vm.restore_{mode}"), ready));
        if mode == "ondemand" {
            let full = s.ondemand_last_ms.ok_or("no on-demand paging figures")?;
            out.push(("vm.restore_ondemand_full".to_string(), full));
        }
    }
    Ok(out)
}

/// What the bench process measures through a run's control API: once the guest has
/// started ticking, [`PAUSE_CYCLES`] pause/resume cycles, each from the pause request to
/// the resume's answer (what a user of the API waits for; the median in µs), then one
/// snapshot of the paused VM into `snap` (ms for `PUT /snapshot/create`, and its bytes).
fn drive_api(
    sock: &Path,
    console: &Path,
    snap: &Path,
) -> std::result::Result<Vec<(String, f64)>, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ticking = || std::fs::read_to_string(console).is_ok_and(|c| c.contains("work: tick 2 "));
    while !(sock.exists() && ticking()) {
        if std::time::Instant::now() > deadline {
            return Err("the guest never started ticking under the API".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let patch = |state: &str| {
        let body = format!("{{\"state\": \"{state}\"}}");
        match crate::ctl::request(sock, "PATCH", "/vm", Some(&body)) {
            Ok((204, _)) => Ok(()),
            Ok((status, body)) => Err(format!("PATCH /vm {state}: {status} {body}")),
            Err(e) => Err(format!("PATCH /vm {state}: {e}")),
        }
    };
    let mut cycles = Vec::with_capacity(PAUSE_CYCLES);
    for _ in 0..PAUSE_CYCLES {
        let start = std::time::Instant::now();
        patch("Paused")?;
        patch("Resumed")?;
        cycles.push(start.elapsed().as_secs_f64() * 1e6);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let median = median(&cycles).ok_or("no cycles")?;
    patch("Paused")?;
    let _ = std::fs::remove_dir_all(snap);
    let body = serde_json::json!({ "snapshot_dir": snap }).to_string();
    let start = std::time::Instant::now();
    match crate::ctl::request(sock, "PUT", "/snapshot/create", Some(&body)) {
        Ok((204, _)) => {}
        Ok((status, body)) => return Err(format!("PUT /snapshot/create: {status} {body}")),
        Err(e) => return Err(format!("PUT /snapshot/create: {e}")),
    }
    let create_ms = start.elapsed().as_secs_f64() * 1e3;
    patch("Resumed")?;
    let bytes: u64 = ["vmstate", "memory"]
        .iter()
        .filter_map(|f| std::fs::metadata(snap.join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(vec![
        ("vm.pause_resume".to_string(), median),
        ("vm.snapshot_create".to_string(), create_ms),
        ("vm.snapshot_bytes".to_string(), bytes as f64),
    ])
}

const COLUMNS: [&str; 8] = [
    "name", "model", "platform", "median", "unit", "samples", "min", "max",
];

fn row(r: &Record) -> [String; 8] {
    [
        r.name.clone(),
        r.model.name().to_string(),
        r.platform.clone(),
        format!("{:.3}", r.value),
        r.unit.clone(),
        r.samples.len().to_string(),
        format!("{:.3}", r.min()),
        format!("{:.3}", r.max()),
    ]
}

/// The plain-text table printed to stdout.
pub fn table(records: &[Record]) -> String {
    let rows: Vec<[String; 8]> = records.iter().map(row).collect();
    let mut widths = COLUMNS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                // Text columns left-aligned, numbers right-aligned.
                if matches!(i, 3 | 5 | 6 | 7) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        let _ = writeln!(s, "{}", parts.join("  ").trim_end());
    };
    line(&mut s, COLUMNS.to_vec());
    for r in &rows {
        line(&mut s, r.iter().map(String::as_str).collect());
    }
    s
}

/// The table as markdown.
pub fn markdown(records: &[Record]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", COLUMNS.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(COLUMNS.len()));
    for r in records {
        let _ = writeln!(s, "| {} |", row(r).join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record::of(
            "vmm.exit_roundtrip",
            Model::Vmm,
            "kvm_pvm",
            "us",
            vec![40.0, 35.0, 36.0],
        )
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn record_json_shape() {
        let v = serde_json::to_value(vec![rec()]).unwrap();
        let o = v[0].as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort();
        // The fields records always had, and the median's interval added (issue 17).
        assert_eq!(
            keys,
            ["ci95", "model", "name", "platform", "samples", "unit", "value"]
        );
        let ci = o["ci95"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() <= 36.0 && 36.0 <= ci[1].as_f64().unwrap());
        assert_eq!(o["model"], "vmm");
        assert_eq!(o["platform"], "kvm_pvm");
        assert_eq!(o["samples"].as_array().unwrap().len(), 3);
        assert_eq!(o["value"], 36.0);
    }

    #[test]
    fn nest_benchmarks_cover_every_workload_and_stack() {
        let all = all_benchmarks();
        let nest: Vec<&Benchmark> = all
            .iter()
            .filter(|b| b.name.starts_with("nest.") && b.model == Model::Microkernel)
            .collect();
        assert_eq!(nest.len(), NEST_WORKLOADS.len() * nest_stacks().len());
        // The workloads of maintained crates on the image's bytes (issue 17) among them.
        for workload in ["deflate", "sha256", "btree"] {
            for stack in nest_stacks() {
                let name = format!("nest.{workload}.{}", stack.label);
                let b = nest.iter().find(|b| b.name == name).unwrap();
                assert!(
                    b.cmdline
                        .starts_with(&format!("fluke.init={}work,{workload},", stack.prefix)),
                    "{name}: {}",
                    b.cmdline
                );
                assert!(
                    matches!(b.sample, Sample::Guest(k) if k == format!("work.{workload}")),
                    "{name}"
                );
            }
        }
        // The VMM model's counterpart of the pager: the same workload, no nester, for each
        // workload whose memory the pager interposes on.
        let paged: Vec<&Benchmark> = all
            .iter()
            .filter(|b| b.name.ends_with(".vmm-paged"))
            .collect();
        assert_eq!(paged.len(), VMM_PAGED_WORKLOADS.len());
        for workload in ["memory", "deflate", "btree"] {
            let name = format!("nest.{workload}.vmm-paged");
            let b = paged.iter().find(|b| b.name == name).unwrap();
            let (_, args) = NEST_WORKLOADS.iter().find(|(w, _)| *w == workload).unwrap();
            assert_eq!(b.cmdline, format!("fluke.init=work,{args}"));
            assert_eq!(b.vmm_args, ["--memory-resident", "2"]);
            assert_eq!(b.model, Model::Vmm);
            assert!(
                matches!(b.sample, Sample::Guest(k) if k == format!("work.{workload}")),
                "{name}"
            );
        }
        assert_eq!(
            all.iter()
                .find(|b| b.name == "nest.memory.vmm-paged")
                .unwrap()
                .cmdline,
            "fluke.init=work,memory,500"
        );
        assert_eq!(nest_stacks().len(), 14);
        let b = all
            .iter()
            .find(|b| b.name == "nest.ipc.passthru-x2")
            .unwrap();
        assert_eq!(b.cmdline, "fluke.init=passthru>passthru>work,ipc,2000");
        let b = all
            .iter()
            .find(|b| b.name == "nest.memory.mixed-x8")
            .unwrap();
        assert_eq!(
            b.cmdline.matches('>').count(),
            8,
            "eight layers: {}",
            b.cmdline
        );
        for NestStack {
            label,
            kind,
            depth,
            prefix,
        } in nest_stacks()
        {
            assert_eq!(prefix.matches('>').count(), depth, "{label}");
            assert!(
                kind == "mixed" || prefix.split('>').all(|n| n.is_empty() || n == kind),
                "{label}"
            );
        }
        let mut names: Vec<&str> = all.iter().map(|b| b.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "names are unique");
    }

    #[test]
    fn nest_table_and_plot() {
        let rec =
            |name: &str, value: f64| Record::of(name, Model::Microkernel, "kvm", "ns", vec![value]);
        let records = [
            rec("nest.compute.bare", 100.0),
            rec("nest.compute.passthru-x4", 121.0),
        ];
        let t = nest_table(&records);
        assert!(
            t.contains("| compute | passthru-x4 | 0.00 | 1.210x | [1.21, 1.21] | +4.88% |"),
            "{t}"
        );
        // Rounds in which the stack was as fast as bare: within noise, said so.
        let bare = Record::of(
            "nest.ipc.bare",
            Model::Microkernel,
            "kvm",
            "ns",
            vec![100.0, 110.0, 90.0, 105.0],
        );
        let same = Record::of(
            "nest.ipc.passthru-x1",
            Model::Microkernel,
            "kvm",
            "ns",
            vec![101.0, 108.0, 92.0, 104.0],
        );
        let t = nest_table(&[bare, same]);
        assert!(t.contains(", within noise |"), "{t}");
        let svg = nest_plot(&records);
        assert!(
            svg.starts_with("<svg")
                && svg.contains("<polyline")
                && svg.trim_end().ends_with("</svg>")
        );
        assert!(!svg.contains("log scale"));
        let far = [
            rec("nest.memory.bare", 100.0),
            rec("nest.memory.pager-x1", 780.0),
            rec("nest.memory.passthru-x1", 101.0),
        ];
        let svg = nest_plot(&far);
        assert!(svg.contains("(log scale)") && !svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn benchmark_names_are_unique_and_stable() {
        let names: Vec<&str> = BENCHMARKS.iter().map(|b| b.name).collect();
        assert_eq!(
            names,
            [
                "boot.to_kernel",
                "boot.to_init",
                "vm.boot_to_exit",
                "vmm.exit_roundtrip",
                "vmm.exit_roundtrip_seccomp_off",
                "vm.pause_resume",
                "vm.snapshot_create",
                "vm.snapshot_bytes",
                "vm.restore_copy",
                "vm.restore_ondemand",
                "vm.restore_ondemand_full",
                "vmm.rss",
                "guest.null_call",
                "platform.syscall_floor",
                "guest.user_fault",
                "guest.space_switch",
                "platform.switch_floor",
                "ipc.call_reply",
                "ipc.send",
                "keeper.fault",
                "vmm.uffd_fault",
                "guest.page_touch",
                "thread.state_roundtrip",
                "ipc.cap_transfer",
                "sel4bench.timer_overhead",
                "sel4bench.ipc_call_oneway",
                "sel4bench.ipc_reply_oneway",
                "sel4bench.ipc_call_oneway_cycles",
                "sel4bench.ipc_reply_oneway_cycles",
                "lmbench.lat_ctx",
                "proc.spawn_wait",
                "vmm.channel_roundtrip",
                "blk.read_4k",
                "blk.write_4k",
                "blk.mib_s"
            ]
        );
    }

    #[test]
    fn records_come_from_run_stats() {
        let run = |k: f64, rt: Option<f64>| RunStats {
            platform: "kvm".into(),
            boot_to_kernel_ms: Some(k),
            exit_roundtrip_us: rt,
            ..Default::default()
        };
        let runs = [run(3.0, None), run(1.0, None), run(2.0, None)];
        let r = record(&BENCHMARKS[0], &runs).unwrap();
        assert_eq!(
            (r.value, r.platform.as_str(), r.unit.as_str()),
            (2.0, "kvm", "ms")
        );
        assert_eq!(r.samples, [3.0, 1.0, 2.0]);
        assert!(record(&BENCHMARKS[2], &runs).is_err());
    }

    #[test]
    fn table_and_markdown() {
        let t = table(&[rec()]);
        let mut lines = t.lines();
        let head = lines.next().unwrap();
        assert!(head.starts_with("name"));
        assert!(head.contains("median"));
        let body = lines.next().unwrap();
        assert!(body.contains("vmm.exit_roundtrip") && body.contains("36.000"));
        assert!(body.contains("35.000") && body.contains("40.000"));
        let m = markdown(&[rec()]);
        assert!(m.starts_with("| name | model | platform | median |"));
        assert!(m.contains(
            "| vmm.exit_roundtrip | vmm | kvm_pvm | 36.000 | us | 3 | 35.000 | 40.000 |"
        ));
    }
}
