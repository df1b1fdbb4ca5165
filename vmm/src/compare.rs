//! `fluke-vmm compare`: for each service, the microkernel model's implementation (a kernel
//! mechanism or a nester inside one guest) and the VMM model's (virtual machines under this
//! VMM) run in the same invocation, in the same interleaved rounds (`bench`'s runner), and
//! are reported side by side: time, cost per operation, memory, the ratio VMM/microkernel
//! with its interval from the paired rounds, the platform. What is not built yet is marked
//! missing, never given a number.
//!
//! The interface is narrow: [`SERVICES`] says what is compared, [`compare`] runs it,
//! [`report`] turns records into a [`Report`] (pure, so the harness is tested on synthetic
//! records), and [`table`], [`markdown`] and [`plot`] render a report.

use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::{self, Benchmark, Measured, Record, Sample};
use crate::bootstrap;
use crate::cli::CompareArgs;
use crate::error::{Error, Result};
use crate::logger::{to_stderr, to_stdout};

/// One figure of one model: a benchmark record, how many operations one sample is, and what
/// an operation is.
#[derive(Clone, Copy, Debug)]
pub struct Measure {
    pub record: &'static str,
    pub ops: f64,
    pub op: &'static str,
}

/// One model's side of a row.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Built(Measure),
    /// Not built yet (why): no figure, never zero.
    Missing(&'static str),
    /// This row is a figure of the other model only.
    Nothing,
}

/// Whether a row's two figures are the same workload (then they have a ratio).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Same,
    Different(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub microkernel: Side,
    pub vmm: Side,
    pub comparison: Comparison,
}

/// A service both models provide.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    /// What `--only` takes.
    pub key: &'static str,
    pub name: &'static str,
    pub microkernel_model: &'static str,
    pub vmm_model: &'static str,
    pub rows: &'static [Row],
}

const fn m(record: &'static str, ops: f64, op: &'static str) -> Side {
    Side::Built(Measure { record, ops, op })
}

/// Operations per sample of the paging workloads (`bench::NEST_WORKLOADS`).
const MEMORY_PAGES: f64 = 500.0;
const DEFLATE_ROUNDS: f64 = 2.0;
const BTREE_WINDOWS: f64 = 100_000.0;

const NOT_THE_SAME: &str = "different operations: no ratio";

/// What is compared, in report order.
pub const SERVICES: &[Service] = &[
    Service {
        key: "ipc",
        name: "isolation + communication",
        microkernel_model: "two processes, IPC call/reply",
        vmm_model: "two VMs, shared-memory channel",
        rows: &[Row {
            microkernel: m("ipc.call_reply", 1.0, "round trip"),
            vmm: m("vmm.channel_roundtrip", 1.0, "round trip"),
            comparison: Comparison::Same,
        }],
    },
    Service {
        key: "paging",
        name: "paging beyond physical memory",
        microkernel_model: "pager nester (256 frames)",
        vmm_model: "host-level demand paging (2 MiB resident)",
        rows: &[
            Row {
                microkernel: m("nest.memory.pager-x1", MEMORY_PAGES, "page"),
                vmm: m("nest.memory.vmm-paged", MEMORY_PAGES, "page"),
                comparison: Comparison::Same,
            },
            Row {
                microkernel: m("nest.deflate.pager-x1", DEFLATE_ROUNDS, "deflate+inflate"),
                vmm: m("nest.deflate.vmm-paged", DEFLATE_ROUNDS, "deflate+inflate"),
                comparison: Comparison::Same,
            },
            Row {
                microkernel: m("nest.btree.pager-x1", BTREE_WINDOWS, "window"),
                vmm: m("nest.btree.vmm-paged", BTREE_WINDOWS, "window"),
                comparison: Comparison::Same,
            },
        ],
    },
    Service {
        key: "checkpoint",
        name: "checkpoint / restore",
        microkernel_model: "ckpt nester",
        vmm_model: "VM snapshot / restore",
        rows: &[
            Row {
                microkernel: Side::Missing("ckpt nester not built"),
                vmm: m("vm.snapshot_create", 1.0, "snapshot"),
                comparison: Comparison::Same,
            },
            Row {
                microkernel: Side::Missing("ckpt nester not built"),
                vmm: m("vm.restore_copy", 1.0, "restore"),
                comparison: Comparison::Same,
            },
            Row {
                microkernel: Side::Missing("ckpt nester not built"),
                vmm: m("vm.restore_ondemand", 1.0, "restore"),
                comparison: Comparison::Same,
            },
        ],
    },
    Service {
        key: "debug",
        name: "debugging / tracing",
        microkernel_model: "trace and debug nesters",
        vmm_model: "gdb stub; VM exits",
        rows: &[Row {
            microkernel: Side::Missing("trace and debug nesters not built"),
            vmm: m("vmm.exit_roundtrip", 1.0, "exit"),
            comparison: Comparison::Same,
        }],
    },
    Service {
        key: "confinement",
        name: "confinement of untrusted code",
        microkernel_model: "secmon nester",
        vmm_model: "a VM of its own + seccomp",
        rows: &[Row {
            microkernel: Side::Missing("secmon nester not built"),
            vmm: m("vmm.seccomp_overhead", 1.0, "host system call"),
            comparison: Comparison::Same,
        }],
    },
    Service {
        key: "process",
        name: "process management",
        microkernel_model: "procmgr nester: spawn + wait",
        vmm_model: "one VM per process",
        rows: &[
            Row {
                microkernel: m("proc.spawn_wait", 1.0, "process"),
                vmm: m("vm.boot_to_exit", 1.0, "process"),
                comparison: Comparison::Same,
            },
            Row {
                microkernel: Side::Nothing,
                vmm: m("boot.to_init", 1.0, "boot to init"),
                comparison: Comparison::Different(
                    "VMM process start to init start, a part of vm.boot_to_exit",
                ),
            },
        ],
    },
];

/// The services `only` names (all for none); an unknown name is an error.
pub fn select(only: &[String]) -> Result<Vec<&'static Service>> {
    if let Some(bad) = only.iter().find(|k| !SERVICES.iter().any(|s| s.key == *k)) {
        let keys: Vec<&str> = SERVICES.iter().map(|s| s.key).collect();
        return Err(Error::Bench(format!(
            "compare --only: no service {bad:?} (services: {})",
            keys.join(", ")
        )));
    }
    Ok(SERVICES
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|k| k == s.key))
        .collect())
}

fn measures(services: &[&Service]) -> Vec<Measure> {
    services
        .iter()
        .flat_map(|s| s.rows)
        .flat_map(|r| [r.microkernel, r.vmm])
        .filter_map(|side| match side {
            Side::Built(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// The names of the companion records of `record`: the peak RSS and the VMM's own RSS of
/// the same runs.
fn peak_name(record: &str) -> String {
    format!("{record}@peak_rss")
}
fn own_name(record: &str) -> String {
    format!("{record}@vmm_rss")
}

fn leak(s: String) -> &'static str {
    // A few short names for the life of this one-shot command.
    Box::leak(s.into_boxed_str())
}

/// The guest benchmarks the services need, each followed by its memory companions (same
/// command line, so the same runs), and the names of the host benchmarks they need.
fn plan(services: &[&Service]) -> (Vec<Benchmark>, Vec<&'static str>) {
    let all = bench::all_benchmarks();
    let mut guest: Vec<Benchmark> = Vec::new();
    let mut host = Vec::new();
    for m in measures(services) {
        if guest.iter().any(|b| b.name == m.record) || host.contains(&m.record) {
            continue;
        }
        if let Some(b) = all.iter().find(|b| b.name == m.record) {
            guest.push(b.clone());
            // What the bench process measured through the API (snapshots, restores) is not
            // the run's own process: its memory would be another's.
            if matches!(b.sample, Sample::Api(_)) {
                continue;
            }
            for (name, sample) in [
                (
                    peak_name(m.record),
                    Sample::Stats(|s| s.peak_rss_kib.map(|k| k as f64)),
                ),
                (
                    own_name(m.record),
                    Sample::Stats(|s| s.vmm_rss_kib.map(|k| k as f64)),
                ),
            ] {
                guest.push(Benchmark {
                    name: leak(name),
                    unit: "KiB",
                    sample,
                    ..b.clone()
                });
            }
        } else if bench::HOST_BENCHMARKS.iter().any(|h| h.0 == m.record) {
            host.push(m.record);
        }
    }
    (guest, host)
}

/// A model's side of a row in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum SideReport {
    Measured {
        record: String,
        platform: String,
        median: f64,
        unit: String,
        ci95: Option<[f64; 2]>,
        samples: usize,
        operation: String,
        ops_per_sample: f64,
        per_op_ns: f64,
        per_op_ci95_ns: Option<[f64; 2]>,
        /// Median peak RSS of the measured VMM process (guest RAM touched included), KiB.
        peak_rss_kib: Option<f64>,
        /// Median RSS of the VMM beyond guest RAM at the guest's exit, KiB.
        vmm_rss_kib: Option<f64>,
    },
    /// Not built yet.
    Missing { why: String },
    /// Built, but this invocation did not measure it.
    Failed { record: String, why: String },
    /// The row is the other model's figure only.
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RatioReport {
    /// VMM / microkernel, per operation: the median of the paired rounds' ratios.
    pub value: f64,
    pub ci95: [f64; 2],
    pub within_noise: bool,
    /// Whether the rounds were paired (both records have a sample of every round).
    pub paired: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowReport {
    pub microkernel: SideReport,
    pub vmm: SideReport,
    pub ratio: Option<RatioReport>,
    /// Why there is no ratio, or "same workload".
    pub comparison: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceReport {
    pub key: String,
    pub service: String,
    pub microkernel_model: String,
    pub vmm_model: String,
    pub rows: Vec<RowReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The platforms the records were measured on (normally one).
    pub platform: String,
    pub rounds: u32,
    pub services: Vec<ServiceReport>,
    /// Every record measured, companions included.
    pub records: Vec<Record>,
}

/// ns per `unit`, for the time units the records use.
fn ns_per(unit: &str) -> Option<f64> {
    match unit {
        "ns" => Some(1.0),
        "us" => Some(1e3),
        "ms" => Some(1e6),
        "s" => Some(1e9),
        _ => None,
    }
}

fn side_report(side: Side, records: &[Record], failures: &[String]) -> SideReport {
    let m = match side {
        Side::Built(m) => m,
        Side::Missing(why) => return SideReport::Missing { why: why.into() },
        Side::Nothing => return SideReport::None,
    };
    let find = |n: &str| records.iter().find(|r| r.name == n);
    let Some(r) = find(m.record) else {
        let prefix = format!("{}: ", m.record);
        let why = failures
            .iter()
            .find_map(|f| f.strip_prefix(&prefix))
            .unwrap_or("not measured");
        return SideReport::Failed {
            record: m.record.into(),
            why: why.into(),
        };
    };
    let Some(scale) = ns_per(&r.unit).map(|n| n / m.ops) else {
        return SideReport::Failed {
            record: m.record.into(),
            why: format!("unit {} is not a time", r.unit),
        };
    };
    SideReport::Measured {
        record: r.name.clone(),
        platform: r.platform.clone(),
        median: r.value,
        unit: r.unit.clone(),
        ci95: r.ci95,
        samples: r.samples.len(),
        operation: m.op.into(),
        ops_per_sample: m.ops,
        per_op_ns: r.value * scale,
        per_op_ci95_ns: r.ci95.map(|[l, h]| [l * scale, h * scale]),
        peak_rss_kib: find(&peak_name(m.record)).map(|c| c.value),
        vmm_rss_kib: find(&own_name(m.record)).map(|c| c.value),
    }
}

/// Per-operation ns samples of a measured side.
fn per_op_samples(side: Side, records: &[Record]) -> Option<Vec<f64>> {
    let Side::Built(m) = side else { return None };
    let r = records.iter().find(|r| r.name == m.record)?;
    let scale = ns_per(&r.unit)? / m.ops;
    Some(r.samples.iter().map(|s| s * scale).collect())
}

/// The ratio VMM / microkernel of a row whose two sides are the same workload and were
/// both measured.
fn ratio(row: &Row, records: &[Record]) -> Option<RatioReport> {
    if row.comparison != Comparison::Same {
        return None;
    }
    let v = per_op_samples(row.vmm, records)?;
    let k = per_op_samples(row.microkernel, records)?;
    if v.is_empty() || k.is_empty() || k.iter().any(|&x| x <= 0.0) {
        return None;
    }
    let paired = v.len() == k.len();
    let value = if paired {
        let rounds: Vec<f64> = v.iter().zip(&k).map(|(a, b)| a / b).collect();
        bench::median(&rounds)?
    } else {
        bench::median(&v)? / bench::median(&k)?
    };
    let i = bootstrap::ratio_interval(&v, &k)?;
    // The percentile interval of a median holds the sample's own median except, rarely, with
    // a handful of rounds; widened to hold it, so the interval is never beside the figure.
    let ci95 = [i.low.min(value), i.high.max(value)];
    Some(RatioReport {
        value,
        ci95,
        within_noise: ci95[0] <= 1.0 && 1.0 <= ci95[1],
        paired,
    })
}

fn comparison_text(
    row: &Row,
    ratio: &Option<RatioReport>,
    mk: &SideReport,
    vmm: &SideReport,
) -> String {
    match (row.comparison, ratio) {
        (Comparison::Different(why), _) => format!("{NOT_THE_SAME} ({why})"),
        (Comparison::Same, Some(_)) => "same workload".into(),
        (Comparison::Same, None) => {
            if matches!(mk, SideReport::Missing { .. }) || matches!(vmm, SideReport::Missing { .. })
            {
                "missing: no ratio".into()
            } else {
                "not measured: no ratio".into()
            }
        }
    }
}

/// The report of `services` from the records measured (and the failures of those that
/// were not), over `rounds` rounds.
pub fn report(
    services: &[&Service],
    records: &[Record],
    failures: &[String],
    rounds: u32,
) -> Report {
    let mut platforms: Vec<&str> = records.iter().map(|r| r.platform.as_str()).collect();
    platforms.sort_unstable();
    platforms.dedup();
    let services = services
        .iter()
        .map(|s| ServiceReport {
            key: s.key.into(),
            service: s.name.into(),
            microkernel_model: s.microkernel_model.into(),
            vmm_model: s.vmm_model.into(),
            rows: s
                .rows
                .iter()
                .map(|row| {
                    let microkernel = side_report(row.microkernel, records, failures);
                    let vmm = side_report(row.vmm, records, failures);
                    let ratio = ratio(row, records);
                    RowReport {
                        comparison: comparison_text(row, &ratio, &microkernel, &vmm),
                        microkernel,
                        vmm,
                        ratio,
                    }
                })
                .collect(),
        })
        .collect();
    Report {
        platform: if platforms.is_empty() {
            "unknown".into()
        } else {
            platforms.join("+")
        },
        rounds,
        services,
        records: records.to_vec(),
    }
}

/// The unit that suits a duration of `ns`, and ns per that unit.
fn unit_for(ns: f64) -> (&'static str, f64) {
    if ns >= 1e6 {
        ("ms", 1e6)
    } else if ns >= 1e3 {
        ("us", 1e3)
    } else {
        ("ns", 1.0)
    }
}

/// A duration in ns, in the unit that suits it.
fn human_ns(ns: f64) -> String {
    let (unit, per) = unit_for(ns);
    format!("{:.2} {unit}", ns / per)
}

/// A median in ns and its interval, in the unit that suits the median.
fn human_interval(ns: f64, ci: Option<[f64; 2]>) -> String {
    let (unit, per) = unit_for(ns);
    let ci = ci.map_or_else(String::new, |[l, h]| {
        format!(" [{:.2}, {:.2}]", l / per, h / per)
    });
    format!("{:.2} {unit}{ci}", ns / per)
}

const COLUMNS: [&str; 11] = [
    "service",
    "microkernel model",
    "median [95%]",
    "per op",
    "memory",
    "VMM model",
    "median [95%]",
    "per op",
    "memory",
    "VMM / microkernel [95%]",
    "platform",
];

/// A side's cells: record, median with interval, per op, memory.
fn side_cells(side: &SideReport) -> [String; 4] {
    match side {
        SideReport::Measured {
            record,
            median,
            unit,
            ci95,
            operation,
            per_op_ns,
            peak_rss_kib,
            vmm_rss_kib,
            ..
        } => {
            let to_ns = ns_per(unit).unwrap_or(1.0);
            let ci95 = ci95.map(|[l, h]| [l * to_ns, h * to_ns]);
            let mib = |k: f64| format!("{:.1} MiB", k / 1024.0);
            let memory = match (peak_rss_kib, vmm_rss_kib) {
                (Some(p), Some(o)) => format!("peak {}, VMM {}", mib(*p), mib(*o)),
                (Some(p), None) => format!("peak {}", mib(*p)),
                (None, Some(o)) => format!("VMM {}", mib(*o)),
                (None, None) => "-".into(),
            };
            [
                record.clone(),
                human_interval(median * to_ns, ci95),
                format!("{} / {operation}", human_ns(*per_op_ns)),
                memory,
            ]
        }
        SideReport::Missing { why } => [
            format!("missing ({why})"),
            "missing".into(),
            "missing".into(),
            "missing".into(),
        ],
        SideReport::Failed { record, why } => [
            format!("{record}: failed ({why})"),
            "failed".into(),
            "failed".into(),
            "-".into(),
        ],
        SideReport::None => ["-".into(), "-".into(), "-".into(), "-".into()],
    }
}

fn row_cells(service: &ServiceReport, row: &RowReport) -> [String; 11] {
    let [mr, mv, mo, mm] = side_cells(&row.microkernel);
    let [vr, vv, vo, vm] = side_cells(&row.vmm);
    let ratio = match &row.ratio {
        Some(r) => format!(
            "{:.2}x [{:.2}, {:.2}]{}",
            r.value,
            r.ci95[0],
            r.ci95[1],
            if r.within_noise { ", within noise" } else { "" }
        ),
        None => row.comparison.clone(),
    };
    let platform = [&row.vmm, &row.microkernel]
        .iter()
        .find_map(|s| match s {
            SideReport::Measured { platform, .. } => Some(platform.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "-".into());
    [
        service.service.clone(),
        mr,
        mv,
        mo,
        mm,
        vr,
        vv,
        vo,
        vm,
        ratio,
        platform,
    ]
}

fn all_rows(r: &Report) -> Vec<[String; 11]> {
    r.services
        .iter()
        .flat_map(|s| s.rows.iter().map(move |row| row_cells(s, row)))
        .collect()
}

/// The plain-text table printed to stdout.
pub fn table(r: &Report) -> String {
    let rows = all_rows(r);
    let mut widths = COLUMNS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut s = format!(
        "fluke-vmm compare: platform {}, {} interleaved rounds\n",
        r.platform, r.rounds
    );
    for cells in core::iter::once(COLUMNS.map(String::from)).chain(rows) {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(s, "{}", line.join("  ").trim_end());
    }
    s
}

/// The table as markdown, under a line naming the platform and the rounds.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Platform `{}`, {} interleaved rounds; medians with bootstrap 95% intervals; \
         ratio VMM / microkernel per operation, from the paired rounds.\n\n",
        r.platform, r.rounds
    );
    let _ = writeln!(s, "| {} |", COLUMNS.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(COLUMNS.len()));
    for row in all_rows(r) {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    s
}

/// An SVG bar plot: per row, the microkernel model's and the VMM model's cost per
/// operation (log scale), "missing" written where a model has no figure.
pub fn plot(r: &Report) -> String {
    let per_op = |s: &SideReport| match s {
        SideReport::Measured { per_op_ns, .. } if *per_op_ns > 0.0 => Some(*per_op_ns),
        _ => None,
    };
    let bars: Vec<(String, &SideReport, &SideReport)> = r
        .services
        .iter()
        .flat_map(|s| {
            s.rows.iter().map(move |row| {
                let label = match (&row.vmm, &row.microkernel) {
                    (SideReport::Measured { record, .. }, _)
                    | (_, SideReport::Measured { record, .. }) => record.clone(),
                    _ => s.key.clone(),
                };
                (label, &row.microkernel, &row.vmm)
            })
        })
        .collect();
    let values: Vec<f64> = bars
        .iter()
        .flat_map(|(_, a, b)| [per_op(a), per_op(b)])
        .flatten()
        .collect();
    let vmax = values.iter().copied().fold(1.0_f64, f64::max) * 2.0;
    let vmin = values.iter().copied().fold(vmax, f64::min) / 2.0;
    let (left, right, top, bottom, slot) = (70.0, 20.0, 50.0, 150.0, 56.0);
    let w = left + right + slot * bars.len().max(1) as f64;
    let h = 460.0;
    let y = |v: f64| top + (vmax.ln() - v.ln()) / (vmax.ln() - vmin.ln()) * (h - top - bottom);
    let colors = ["#1f77b4", "#d62728"];
    let mut svg = crate::bench::svg_start(
        w,
        h,
        &format!(
            "cost per operation, microkernel vs VMM model ({}, log scale)",
            r.platform
        ),
    );
    for (i, (name, color)) in ["microkernel model", "VMM model"]
        .iter()
        .zip(colors)
        .enumerate()
    {
        let x = left + i as f64 * 150.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="28" width="10" height="10" fill="{color}"/><text x="{}" y="37">{name}</text>"#,
            x + 14.0
        );
    }
    let (y0, y1) = (y(vmin), y(vmax));
    let _ = writeln!(
        svg,
        r#"<line x1="{left}" y1="{y0}" x2="{}" y2="{y0}" stroke="black"/><line x1="{left}" y1="{y0}" x2="{left}" y2="{y1}" stroke="black"/>"#,
        w - right
    );
    let mut tick = 10f64.powf(vmin.log10().ceil());
    while tick <= vmax {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y(tick) + 4.0,
            human_ns(tick)
        );
        tick *= 10.0;
    }
    for (i, (label, mk, vmm)) in bars.iter().enumerate() {
        let x0 = left + slot * i as f64 + 6.0;
        for (j, (side, color)) in [mk, vmm].iter().zip(colors).enumerate() {
            let x = x0 + j as f64 * 22.0;
            match per_op(side) {
                Some(v) => {
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{x:.1}" y="{:.1}" width="20" height="{:.1}" fill="{color}"/>"#,
                        y(v),
                        y0 - y(v)
                    );
                }
                None => {
                    let text = match side {
                        SideReport::Missing { .. } => "missing",
                        SideReport::Failed { .. } => "failed",
                        _ => "-",
                    };
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" transform="rotate(-90 {:.1} {:.1})" fill="{color}">{text}</text>"#,
                        x + 14.0,
                        y0 - 4.0,
                        x + 14.0,
                        y0 - 4.0
                    );
                }
            }
        }
        let lx = x0 + 22.0;
        let ly = y0 + 12.0;
        let _ = writeln!(
            svg,
            r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-50 {lx:.1} {ly:.1})">{label}</text>"#
        );
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn compare(args: &CompareArgs) -> Result<u8> {
    bench::check_samples(args.samples)?;
    let services = select(&args.only)?;
    let (bytes, what) = crate::run::read_image(args.image.as_deref())?;
    crate::boot::validate(&bytes, &what)?;
    let exe = bench::own_exe()?;
    let (guest, host) = plan(&services);
    let selected: Vec<&Benchmark> = guest.iter().collect();
    let measured = bench::run_interleaved(
        &exe,
        args.image.as_deref(),
        &selected,
        args.samples,
        "compare",
    );
    let platform = measured.platform();
    let Measured {
        mut records,
        failures,
    } = measured;
    records.extend(bench::host_records(
        |n| host.contains(&n),
        args.samples,
        &platform,
    ));
    let r = report(&services, &records, &failures, args.samples);
    to_stdout(&table(&r));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&r)
            .map_err(|e| Error::Bench(format!("cannot encode the comparison: {e}")))?;
        bench::write_file(path, &(json + "\n"))?;
    }
    if let Some(path) = &args.markdown {
        bench::write_file(path, &markdown(&r))?;
    }
    if let Some(path) = &args.plot {
        bench::write_file(path, &plot(&r))?;
    }
    if failures.is_empty() {
        Ok(0)
    } else {
        for f in &failures {
            to_stderr(&format!("fluke-vmm: compare: {f}\n"));
        }
        Err(Error::Bench(format!(
            "{} of {} records failed",
            failures.len(),
            selected.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Model;

    /// Records for every figure the services name: `value(record)` per sample, times the
    /// round's noise factor (shared by all records of a round, as a noisy host would).
    fn records(samples: usize, value: impl Fn(&str) -> f64) -> Vec<Record> {
        let (guest, host) = plan(&SERVICES.iter().collect::<Vec<_>>());
        let noise = |i: usize| 1.0 + 0.05 * ((i * 7 % 5) as f64 - 2.0);
        guest
            .iter()
            .map(|b| (b.name, b.model, b.unit))
            .chain(host.iter().map(|&n| (n, Model::Vmm, "ns")))
            .map(|(name, model, unit)| {
                let v = value(name);
                let s: Vec<f64> = (0..samples).map(|i| v * noise(i)).collect();
                Record::of(name, model, "kvm_pvm", unit, s)
            })
            .collect()
    }

    fn all() -> Vec<&'static Service> {
        SERVICES.iter().collect()
    }

    fn row<'a>(r: &'a Report, key: &str, i: usize) -> &'a RowReport {
        &r.services.iter().find(|s| s.key == key).unwrap().rows[i]
    }

    #[test]
    fn every_service_and_row_is_reported() {
        let r = report(&all(), &records(5, |_| 100.0), &[], 5);
        let keys: Vec<&str> = r.services.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "ipc",
                "paging",
                "checkpoint",
                "debug",
                "confinement",
                "process"
            ]
        );
        for (s, spec) in r.services.iter().zip(SERVICES) {
            assert_eq!(s.rows.len(), spec.rows.len(), "{}", s.key);
        }
        assert_eq!(r.platform, "kvm_pvm");
        let rows: usize = SERVICES.iter().map(|s| s.rows.len()).sum();
        let t = table(&r);
        // A title line and a header, then a line per row.
        assert_eq!(t.lines().count(), rows + 2, "{t}");
        let md = markdown(&r);
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), rows + 1);
        for s in SERVICES {
            assert!(t.contains(s.name) && md.contains(s.name), "{}", s.name);
        }
        assert!(md.contains("Platform `kvm_pvm`, 5 interleaved rounds"));
    }

    #[test]
    fn what_is_not_built_is_missing_never_zero() {
        let r = report(&all(), &records(3, |_| 100.0), &[], 3);
        for key in ["checkpoint", "debug", "confinement"] {
            let s = r.services.iter().find(|s| s.key == key).unwrap();
            for row in &s.rows {
                assert!(
                    matches!(&row.microkernel, SideReport::Missing { why } if why.contains("not built")),
                    "{key}: {:?}",
                    row.microkernel
                );
                assert!(matches!(row.vmm, SideReport::Measured { .. }), "{key}");
                assert_eq!(row.ratio, None);
                assert_eq!(row.comparison, "missing: no ratio");
                let cells = row_cells(s, row);
                assert!(cells[1].starts_with("missing ("), "{cells:?}");
                assert!(cells[2..5].iter().all(|c| c == "missing"), "{cells:?}");
                assert_eq!(cells[9], "missing: no ratio");
            }
        }
        // In JSON a missing side has a status and a reason, and no number at all.
        let v = serde_json::to_value(row(&r, "checkpoint", 0)).unwrap();
        assert_eq!(v["microkernel"]["status"], "missing");
        assert_eq!(
            v["microkernel"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["status", "why"]
        );
        assert!(v["ratio"].is_null());
        // A built record this run did not measure fails, with the runner's reason: not 0.
        let mut rs = records(3, |_| 100.0);
        rs.retain(|r| r.name != "ipc.call_reply");
        let failures = ["ipc.call_reply: run 1: the VMM exited with status 125".to_string()];
        let r = report(&all(), &rs, &failures, 3);
        let ipc = row(&r, "ipc", 0);
        assert_eq!(
            ipc.microkernel,
            SideReport::Failed {
                record: "ipc.call_reply".into(),
                why: "run 1: the VMM exited with status 125".into()
            }
        );
        assert_eq!(ipc.ratio, None);
        assert_eq!(ipc.comparison, "not measured: no ratio");
        let t = table(&r);
        assert!(t.contains("ipc.call_reply: failed (run 1:"), "{t}");
    }

    #[test]
    fn ratios_come_from_the_right_pair_per_operation() {
        // Every record its own value, so a ratio from the wrong pair shows.
        let value = |n: &str| match n {
            "ipc.call_reply" => 100.0,                // ns
            "vmm.channel_roundtrip" => 800.0,         // ns
            "nest.memory.pager-x1" => 2_000_000.0,    // ns for 500 pages
            "nest.memory.vmm-paged" => 3_000_000.0,   // ns
            "nest.deflate.pager-x1" => 40_000_000.0,  // ns for 2 rounds
            "nest.deflate.vmm-paged" => 30_000_000.0, // ns
            "nest.btree.pager-x1" => 50_000_000.0,    // ns
            "nest.btree.vmm-paged" => 35_000_000.0,   // ns
            "proc.spawn_wait" => 5_000_000.0,         // ns per process
            "vm.boot_to_exit" => 10.0,                // ms per VM
            "boot.to_init" => 6.0,                    // ms
            n if n.ends_with("@peak_rss") => 5120.0,  // KiB
            n if n.ends_with("@vmm_rss") => 3072.0,   // KiB
            _ => 42.0,
        };
        let r = report(&all(), &records(6, value), &[], 6);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
        for (key, i, want) in [
            ("ipc", 0, 8.0),
            ("paging", 0, 1.5),
            ("paging", 1, 0.75),
            ("paging", 2, 0.7),
            ("process", 0, 2.0),
        ] {
            let ratio = row(&r, key, i).ratio.as_ref().unwrap();
            assert!(close(ratio.value, want), "{key} {i}: {ratio:?}");
            // The host's noise hit both alike in each round: the paired interval is a point.
            assert!(
                close(ratio.ci95[0], want) && close(ratio.ci95[1], want),
                "{ratio:?}"
            );
            assert!(ratio.paired && !ratio.within_noise);
        }
        // Per operation in ns whatever the record's unit (the rounds' noise: the median
        // of 0.9, 0.9, 0.95, 1.0, 1.05, 1.1 times the value).
        let noisy = 0.975;
        let SideReport::Measured {
            median,
            per_op_ns,
            peak_rss_kib,
            vmm_rss_kib,
            ..
        } = &row(&r, "paging", 0).microkernel
        else {
            panic!("not measured")
        };
        assert!(close(*median, 2e6 * noisy), "{median}");
        assert!(close(*per_op_ns, 4000.0 * noisy), "{per_op_ns}");
        assert!(close(peak_rss_kib.unwrap(), 5120.0 * noisy));
        assert!(close(vmm_rss_kib.unwrap(), 3072.0 * noisy));
        let SideReport::Measured { per_op_ns, .. } = &row(&r, "process", 0).vmm else {
            panic!("not measured")
        };
        assert!(close(*per_op_ns, 10e6 * noisy), "{per_op_ns}");
        // Not the same operation: no ratio, said so.
        let other = row(&r, "process", 1);
        assert_eq!(other.ratio, None);
        assert!(other
            .comparison
            .starts_with("different operations: no ratio"));
        assert_eq!(other.microkernel, SideReport::None);
        // The same figure twice is within noise.
        let same = report(&all(), &records(6, |_| 100.0), &[], 6);
        let ratio = row(&same, "ipc", 0).ratio.clone().unwrap();
        assert!(ratio.within_noise && close(ratio.value, 1.0));
        assert!(row_cells(&same.services[0], row(&same, "ipc", 0))[9].ends_with(", within noise"));
    }

    #[test]
    fn intervals_hold_their_point_estimates() {
        for samples in [1, 2, 3, 5, 10] {
            // Independent noise in the two records, so the ratios' interval has width.
            let mut rs = records(samples, |_| 100.0);
            for r in rs.iter_mut().filter(|r| r.name == "vmm.channel_roundtrip") {
                let s: Vec<f64> = (0..samples)
                    .map(|i| 800.0 + ((i * 37) % 11) as f64 * 30.0)
                    .collect();
                *r = Record::of(&r.name, r.model, "kvm_pvm", "ns", s);
            }
            let r = report(&all(), &rs, &[], samples as u32);
            for s in &r.services {
                for row in &s.rows {
                    if let Some(ratio) = &row.ratio {
                        assert!(
                            ratio.ci95[0] <= ratio.value && ratio.value <= ratio.ci95[1],
                            "{samples} {}: {ratio:?}",
                            s.key
                        );
                    }
                    for side in [&row.microkernel, &row.vmm] {
                        if let SideReport::Measured {
                            per_op_ns,
                            per_op_ci95_ns: Some([l, h]),
                            median,
                            ci95: Some([ml, mh]),
                            ..
                        } = side
                        {
                            assert!(l <= per_op_ns && per_op_ns <= h, "{side:?}");
                            assert!(ml <= median && median <= mh, "{side:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_runs_planned_are_the_services_records_and_their_memory() {
        let (guest, host) = plan(&all());
        let known = bench::all_benchmarks();
        for m in measures(&all()) {
            assert!(
                known.iter().any(|b| b.name == m.record)
                    || bench::HOST_BENCHMARKS.iter().any(|h| h.0 == m.record),
                "{} is no benchmark",
                m.record
            );
        }
        assert_eq!(host, ["vmm.seccomp_overhead"]);
        // A companion runs with its record's command line and options (the same runs).
        for b in guest.iter().filter(|b| b.name.contains('@')) {
            let (base, _) = b.name.split_once('@').unwrap();
            let of = guest.iter().find(|g| g.name == base).unwrap();
            assert_eq!((b.cmdline, b.vmm_args), (of.cmdline, of.vmm_args));
            assert!(!matches!(of.sample, Sample::Api(_)), "{}", b.name);
        }
        assert!(guest.iter().any(|b| b.name == "proc.spawn_wait@peak_rss"));
        assert!(!guest.iter().any(|b| b.name == "vm.restore_copy@peak_rss"));
        // No record twice.
        let mut names: Vec<&str> = guest.iter().map(|b| b.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), guest.len());
        // --only picks services; an unknown one is an error.
        let some = select(&["process".into(), "ipc".into()]).unwrap();
        let keys: Vec<&str> = some.iter().map(|s| s.key).collect();
        assert_eq!(keys, ["ipc", "process"]);
        assert_eq!(select(&[]).unwrap().len(), SERVICES.len());
        assert!(select(&["gpu".into()]).is_err());
    }

    #[test]
    fn the_plot_has_a_bar_per_figure_and_says_missing() {
        let r = report(
            &all(),
            &records(3, |n| if n == "boot.to_init" { 6.0 } else { 100.0 }),
            &[],
            3,
        );
        let svg = plot(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let measured = r
            .services
            .iter()
            .flat_map(|s| &s.rows)
            .flat_map(|row| [&row.microkernel, &row.vmm])
            .filter(|s| matches!(s, SideReport::Measured { .. }))
            .count();
        assert_eq!(
            svg.matches("<rect x=").count(),
            measured + 2,
            "bars and legend"
        );
        assert_eq!(svg.matches(">missing</text>").count(), 5);
    }
}
