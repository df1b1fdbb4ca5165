//! What a run measured (`run --stats-json PATH`, read back by `bench`), and the VMM's
//! resident memory beyond guest RAM.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The JSON object `run --stats-json` writes. Fields the run could not measure are `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// `kvm_pvm` or `kvm`.
    pub platform: String,
    /// How the run ended: `exit`, `crash` or `timeout`.
    pub outcome: String,
    /// The process exit status.
    pub exit_code: u8,
    /// ms from VMM process start to the guest's KernelEntry boot mark.
    pub boot_to_kernel_ms: Option<f64>,
    /// ms from VMM process start to the guest's InitStart boot mark.
    pub boot_to_init_ms: Option<f64>,
    /// ms from VMM process start until the guest's run ended (its exit, crash or timeout).
    #[serde(default)]
    pub boot_to_exit_ms: Option<f64>,
    /// BENCH_TICKs between BENCH_BEGIN and BENCH_END.
    pub bench_ticks: Option<u64>,
    /// µs between BENCH_BEGIN and BENCH_END.
    pub bench_elapsed_us: Option<f64>,
    /// µs per guest exit to the VMM and back (BENCH port measurement).
    pub exit_roundtrip_us: Option<f64>,
    /// KiB of VMM resident memory beyond guest RAM, at guest exit.
    pub vmm_rss_kib: Option<u64>,
    /// KiB of the VMM process's peak resident memory, guest RAM included (VmHWM).
    #[serde(default)]
    pub peak_rss_kib: Option<u64>,
    /// `run --memory-resident`: what host paging did.
    #[serde(default)]
    pub paging: Option<crate::paging::PagingSummary>,
    /// Exits to the VMM handled by the run loop.
    pub exits: u64,
    /// ms the vCPU ran (first KVM_RUN to the end of the run loop).
    pub run_ms: f64,
    /// A restore: ms from VMM process start until the vCPU was ready to run again.
    #[serde(default)]
    pub restore_ms: Option<f64>,
    /// `--memory-restore ondemand`: pages brought in, and ms from process start until the
    /// last of them came in.
    #[serde(default)]
    pub ondemand_pages: Option<u64>,
    #[serde(default)]
    pub ondemand_last_ms: Option<f64>,
    /// Measurements the guest printed as `BENCH <name> <value> <unit> ...` lines on its
    /// console (filled in by `bench` from the run's serial output, not by `run`).
    #[serde(default)]
    pub guest: std::collections::BTreeMap<String, f64>,
}

/// The process's peak resident memory (VmHWM), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_kib(&status, "VmHWM:")
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The `BENCH <name> <value> ...` lines of a guest's console output.
pub fn parse_guest_bench(console: &str) -> std::collections::BTreeMap<String, f64> {
    console
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("BENCH")).then_some(())?;
            let name = w.next()?;
            let value: f64 = w.next()?.parse().ok()?;
            value.is_finite().then(|| (name.to_string(), value))
        })
        .collect()
}

impl RunStats {
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Bench(format!("cannot encode run statistics: {e}")))?;
        std::fs::write(path, json + "\n").map_err(|source| Error::WriteOutput {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `VmRSS` of this process in KiB, from `/proc/self/status`.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS:")
}

/// Sum of the `Rss` of the mappings in `/proc/self/smaps` that start inside one of the
/// host ranges `(start, len)`.
fn mapped_rss_kib(smaps: &str, ranges: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _end)) = first.split_once('-') {
            if let Ok(start) = u64::from_str_radix(start, 16) {
                inside = ranges
                    .iter()
                    .any(|&(s, len)| start >= s && start < s.saturating_add(len));
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("Rss:") {
                total += v
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// The VMM's resident memory beyond guest memory, in KiB: VmRSS minus the Rss of the
/// mappings of guest RAM and of the devices' DMA areas (`ranges` are their host addresses).
pub fn vmm_rss_kib(ranges: &[(u64, u64)]) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let rss = vm_rss_kib(&status)?;
    Some(rss.saturating_sub(mapped_rss_kib(&smaps, ranges)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_bench_lines() {
        let m = parse_guest_bench(
            "fluke: boot\nBENCH guest.null_call 2400.5 ns 1000\nBENCH bad x\nBENCH\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m["guest.null_call"], 2400.5);
    }

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tfluke-vmm\nVmPeak:\t  9999 kB\nVmRSS:\t    4321 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_kib(status), Some(4321));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
        let smaps = "\
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                1200 kB
Pss:                1200 kB
7f0008000000-7f0008001000 r--p 00000000 00:00 0 
Size:                  4 kB
Rss:                   4 kB
";
        assert_eq!(
            mapped_rss_kib(smaps, &[(0x7f00_0000_0000, 128 << 20)]),
            1200
        );
        assert_eq!(mapped_rss_kib(smaps, &[(0x1000, 0x1000)]), 0);
    }

    #[test]
    fn own_rss_is_measurable() {
        assert!(vmm_rss_kib(&[]).unwrap() > 0);
    }

    #[test]
    fn stats_json_shape() {
        let s = RunStats {
            platform: "kvm_pvm".into(),
            outcome: "exit".into(),
            exit_code: 0,
            boot_to_kernel_ms: Some(12.5),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["platform"], "kvm_pvm");
        assert_eq!(v["boot_to_kernel_ms"], 12.5);
        assert!(v["boot_to_init_ms"].is_null());
        assert!(v["vmm_rss_kib"].is_null());
        let back: RunStats = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
