//! `fluke-vmm compare` for real: it boots guests of both models in interleaved rounds and
//! reports them side by side. Checks the table's rows and the JSON's shape, not the speed.
//! A subset of the services (`--only`) keeps it to a few seconds.

mod support;

use std::process::Command;

use support::VMM;

#[test]
fn compare_reports_both_models_per_service() {
    let dir = std::env::temp_dir().join(format!("fluke-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (json, md, svg) = (dir.join("c.json"), dir.join("c.md"), dir.join("c.svg"));
    let o = Command::new(VMM)
        .args([
            "compare",
            "--samples",
            "2",
            "--only",
            "process,ipc,debug,confinement",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("fluke-vmm compare: platform "),
        "{stdout}"
    );
    assert!(lines[1].starts_with("service") && lines[1].contains("VMM / microkernel"));
    // Rows in service order (the services' own, not --only's): ipc, debug, confinement,
    // then process management's two.
    let services: Vec<&str> = lines[2..]
        .iter()
        .map(|l| l.split("  ").next().unwrap())
        .collect();
    assert_eq!(
        services,
        [
            "isolation + communication",
            "debugging / tracing",
            "confinement of untrusted code",
            "process management",
            "process management"
        ],
        "{stdout}"
    );
    assert!(lines[3].contains("missing (trace and debug nesters not built)"));
    assert!(
        lines[6].contains("different operations: no ratio"),
        "{stdout}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["rounds"], 2);
    let platform = v["platform"].as_str().unwrap();
    assert!(["kvm_pvm", "kvm"].contains(&platform), "{platform}");
    let services = v["services"].as_array().unwrap();
    let keys: Vec<&str> = services
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ipc", "debug", "confinement", "process"]);
    let row =
        |key: &str, i: usize| &services[keys.iter().position(|k| *k == key).unwrap()]["rows"][i];
    // The pairs of the same workload: both measured in both rounds, a ratio inside its
    // interval, and the memory of the runs.
    for (key, mk, vmm) in [
        ("ipc", "ipc.call_reply", "vmm.channel_roundtrip"),
        ("process", "proc.spawn_wait", "vm.boot_to_exit"),
    ] {
        let r = row(key, 0);
        for (side, record) in [("microkernel", mk), ("vmm", vmm)] {
            let s = &r[side];
            assert_eq!(s["status"], "measured", "{key} {side}: {s}");
            assert_eq!(s["record"], record);
            assert_eq!(s["samples"], 2);
            assert_eq!(s["platform"], platform);
            assert!(s["per_op_ns"].as_f64().unwrap() > 0.0, "{s}");
            assert!(s["peak_rss_kib"].as_f64().unwrap() > 0.0, "{s}");
        }
        let ratio = &r["ratio"];
        let value = ratio["value"].as_f64().unwrap();
        let ci = ratio["ci95"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() <= value && value <= ci[1].as_f64().unwrap());
        assert_eq!(ratio["paired"], true);
        assert!(ratio["within_noise"].is_boolean());
        assert_eq!(r["comparison"], "same workload");
    }
    // What is not built: missing, with no figure and no ratio.
    for key in ["debug", "confinement"] {
        let r = row(key, 0);
        assert_eq!(r["microkernel"]["status"], "missing", "{r}");
        assert!(r["microkernel"].get("median").is_none());
        assert!(r["ratio"].is_null());
        assert_eq!(r["vmm"]["status"], "measured");
    }
    assert_eq!(row("process", 1)["microkernel"]["status"], "none");
    assert!(v["records"].as_array().unwrap().len() >= 5);

    let md = std::fs::read_to_string(&md).unwrap();
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        6,
        "{md}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">missing</text>"));
    let _ = std::fs::remove_dir_all(&dir);
}
