//! Host-level demand paging (`run --memory-resident MiB`): guest RAM registered with
//! userfaultfd, at most the cap resident, the rest in the VMM's store. The memory workload
//! over four times the cap reads back every word as an unlimited run does, the host never
//! holds more than the cap of guest RAM, and the pager nester's workload gives the same
//! output with no nester.

mod support;

use support::{default_image, vmm, Run};

/// The `work: memory checksum` line: what must not change.
fn checksum(run: &Run) -> String {
    assert_eq!(run.status, 0, "{}\n{}", run.console, run.stderr);
    run.console
        .lines()
        .find(|l| l.starts_with("work: memory checksum"))
        .unwrap_or_else(|| panic!("no checksum:\n{}", run.console))
        .to_string()
}

fn stats(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn four_times_the_resident_cap_reads_back_every_word_within_the_cap() {
    let image = default_image();
    let workload = "fluke.init=work,memory,32768"; // 128 MiB
    let free = vmm(&image, &["--memory", "256", "--cmdline", workload]);
    let dir = std::env::temp_dir().join(format!("fluke-paging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats_path = dir.join("stats.json");
    let paged = vmm(
        &image,
        &[
            "--memory",
            "256",
            "--memory-resident",
            "32",
            "--cmdline",
            workload,
            "--stats-json",
            stats_path.to_str().unwrap(),
        ],
    );
    assert_eq!(checksum(&paged), checksum(&free));
    let s = stats(&stats_path);
    let _ = std::fs::remove_dir_all(&dir);
    let p = &s["paging"];
    let kib = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{s}"));
    assert_eq!(kib(&p["resident_cap_kib"]), 32 << 10);
    assert!(kib(&p["peak_resident_kib"]) <= 32 << 10, "{p}");
    // Most of the workload went out to the store and came back.
    assert!(
        kib(&p["store_writes"]) > 20_000 && kib(&p["store_reads"]) > 20_000,
        "{p}"
    );
    // The host's own count: the whole process peaked below the cap plus what the VMM uses
    // beyond guest RAM (measured in the same run), with 4 MiB for what moves in between.
    let peak = kib(&s["peak_rss_kib"]);
    let own = kib(&s["vmm_rss_kib"]);
    assert!(
        peak <= (32 << 10) + own + (4 << 10),
        "peak RSS {peak} KiB, cap 32 MiB, VMM's own {own} KiB"
    );
}

#[test]
fn the_pager_nesters_workload_gives_the_same_output_paged_by_the_vmm() {
    let image = default_image();
    let under_nester = vmm(&image, &["--cmdline", "fluke.init=pager>work,memory,500"]);
    let vmm_paged = vmm(
        &image,
        &[
            "--memory-resident",
            "2",
            "--cmdline",
            "fluke.init=work,memory,500",
        ],
    );
    assert_eq!(checksum(&vmm_paged), checksum(&under_nester));
}

#[test]
fn a_bad_resident_size_is_one_line() {
    for bad in ["0", "1", "129", "x"] {
        let run = vmm(&default_image(), &["--memory-resident", bad]);
        assert!(run.status == 126 || run.status == 2, "{bad}: {run:?}");
        assert!(run.console.is_empty(), "{bad}: the guest ran");
        assert!(
            run.stderr.contains("--memory-resident"),
            "{bad}: {}",
            run.stderr
        );
    }
}
