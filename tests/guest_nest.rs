//! Nesting: the nesters (`passthru`, `procmgr`, `pager`, all built on the nester library
//! `guest-nesters/nest`) give their children a complete environment with the same kernel
//! API; stacked in any order up to eight deep, programs and the kernel's own tests behave
//! exactly as bare, the process manager serves processes at any depth below it, and the
//! pager never loses a page.

mod support;

use support::*;

fn stack(depth: usize, program: &str) -> String {
    let mut s = String::from("fluke.init=");
    for _ in 0..depth {
        s.push_str("passthru,");
    }
    s.push_str(program);
    s
}

#[test]
fn eight_pass_through_nesters_run_a_program_unchanged() {
    for (who, run) in both(&stack(8, "hello,deep,args")) {
        assert_eq!(run.status, 0, "{who}: {run:?}");
        run.assert_console("hello from user mode (2 argument(s))\n  arg: deep\n  arg: args");
    }
}

#[test]
fn kernel_tests_pass_unchanged_under_nesters() {
    let cases = [
        (
            3,
            "ktest,preempt",
            "ktest: preempt: spinners exited with Ok(0) and Ok(0)",
        ),
        (
            2,
            "ktest,ipc,500",
            "ktest: ipc server: 501 calls served, 0 bad badges, client exited Ok(0)",
        ),
        (1, "ktest,faults", "ktest: faults: 0 unexpected"),
        (
            2,
            "ktest,pager,16",
            "parent sees 0 mismatches, child exited Ok(0)",
        ),
    ];
    for (depth, program, expect) in cases {
        let run = vmm(
            &default_image(),
            &["--timeout", "100", "--cmdline", &stack(depth, program)],
        );
        assert_eq!(run.status, 0, "{program} under {depth} nesters: {run:?}");
        run.assert_console(expect);
    }
}

#[test]
fn a_nester_reports_a_bad_program() {
    let run = vmm(
        &default_image(),
        &["--timeout", "60", "--cmdline", &stack(2, "no-such-program")],
    );
    assert_eq!(run.status, 1, "{run:?}");
    run.assert_console("passthru: cannot start no-such-program: NoSuchProgram");
}

/// The result line of a workload run.
fn work_result(run: &Run, what: &str) -> String {
    assert_eq!(run.status, 0, "{what}: {run:?}");
    run.console
        .lines()
        .find(|l| l.starts_with("work: ") && l.contains("checksum"))
        .unwrap_or_else(|| panic!("{what} printed no result: {}", run.console))
        .to_string()
}

/// Stacks of every nester and of mixed nesters, 1 to 8 deep (`a>b>` prefixes).
const STACKS: &[&str] = &[
    "passthru>",
    "procmgr>",
    "pager,-frames=32>",
    "pager>procmgr>",
    "procmgr>pager,-frames=32>passthru>",
    "passthru>pager>procmgr>passthru>pager>procmgr>",
    "pager>procmgr>pager>procmgr>passthru>pager>procmgr>passthru>",
    "passthru>passthru>passthru>passthru>passthru>passthru>passthru>passthru>",
];

/// Each workload prints the same result bare, under each nester and under mixed stacks of
/// them 1 to 8 deep. The memory workload touches more pages than a 32-frame pager holds;
/// the IPC workload's server is started through the nearest process manager, if any.
#[test]
fn workloads_give_identical_output_under_every_stack() {
    let mut memory_result = String::new();
    for workload in ["syscall,500", "ipc,200", "memory,200", "compute,20000"] {
        let bare = vmm(
            &default_image(),
            &[
                "--timeout",
                "100",
                "--cmdline",
                &format!("fluke.init=work,{workload}"),
            ],
        );
        let expected = work_result(&bare, workload);
        if workload.starts_with("memory") {
            memory_result.clone_from(&expected);
        }
        for stack in STACKS {
            let cmdline = format!("fluke.init={stack}work,{workload}");
            let run = vmm(
                &default_image(),
                &["--timeout", "100", "--cmdline", &cmdline],
            );
            assert_eq!(work_result(&run, &cmdline), expected, "{cmdline}");
        }
    }
    // The native backend too, at the deepest mixed stack.
    let run = qemu(
        &default_image(),
        &format!("fluke.init={}work,memory,200", STACKS[6]),
    );
    assert_eq!(work_result(&run, "qemu"), memory_result, "{run:?}");
}

/// The process manager's API from a process under it, directly and with other nesters
/// between them (it is reached through the port every nester passes on).
#[test]
fn the_process_manager_serves_processes_at_any_depth() {
    // The last with every process paged through 8 frames: kernel calls that copy several
    // pages (program loading, IPC data) still make progress.
    for stack in [
        "procmgr>",
        "procmgr>passthru>pager>",
        "passthru>procmgr>procmgr>",
        "pager,-frames=8>procmgr>",
    ] {
        let cmdline = format!("fluke.init={stack}ktest,procs");
        let run = vmm(
            &default_image(),
            &["--timeout", "100", "--cmdline", &cmdline],
        );
        assert_eq!(run.status, 0, "{cmdline}: {run:?}");
        run.assert_console("ktest: procs: 0 wrong");
        run.assert_console("ktest: procs: a killed process's status: ok");
    }
    let run = qemu(&default_image(), "fluke.init=procmgr>passthru>ktest,procs");
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("ktest: procs: 0 wrong");
    // Without a manager the API says so rather than pretending.
    let run = vmm(
        &default_image(),
        &["--timeout", "60", "--cmdline", "fluke.init=ktest,procs"],
    );
    assert_eq!(run.status, 1, "{run:?}");
    run.assert_console("ktest: procs: not under a process manager");
}

/// Parses the pager's `-stats` line: (frames, faults, evictions, raw pages).
fn pager_stats(run: &Run) -> (u64, u64, u64, u64) {
    let line = run
        .console
        .lines()
        .find(|l| l.starts_with("pager: ") && l.contains("faults"))
        .unwrap_or_else(|| panic!("no pager stats: {}", run.console));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1], nums[2], nums[4])
}

/// A pattern over every word of 4x the pager's frames is read back intact twice: every
/// page was evicted to the store and brought back (one page in eight does not compress and
/// is stored raw). Directly under the pager, with nesters on both sides of it, and three
/// layers below it.
#[test]
fn the_pager_keeps_every_page_across_four_times_its_frames() {
    let cases = [
        ("pager,-frames=64,-stats>", 256),
        ("procmgr>pager,-frames=32,-stats>passthru>", 128),
        // Three layers below the pager: each nester asks it for its child's memory.
        ("pager,-frames=32,-stats>procmgr>passthru>", 128),
    ];
    for (stack, pages) in cases {
        let cmdline = format!("fluke.init={stack}ktest,pattern,{pages}");
        let run = vmm(
            &default_image(),
            &["--timeout", "100", "--cmdline", &cmdline],
        );
        assert_eq!(run.status, 0, "{cmdline}: {run:?}");
        run.assert_console(&format!(
            "ktest: pattern: {pages} pages ({} KiB) written and read back twice, 0 mismatches",
            pages * 4
        ));
        let (frames, faults, evictions, raw) = pager_stats(&run);
        assert_eq!(frames * 4, pages, "{cmdline}");
        // Each page comes in once written and at least once more read back.
        assert!(faults >= 2 * pages - frames, "{cmdline}: {faults} faults");
        // The written pages beyond the frames went out, and again while read back.
        assert!(
            evictions >= 2 * (pages - frames),
            "{cmdline}: {evictions} evictions"
        );
        assert!(raw >= pages / 8, "{cmdline}: {raw} raw pages");
    }
    let run = qemu(
        &default_image(),
        "fluke.init=pager,-frames=64,-stats>ktest,pattern,256",
    );
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console("256 pages (1024 KiB) written and read back twice, 0 mismatches");
}

/// The memory service hands out windows only for a space, takes them back only from their
/// holders (a look-alike region does not pass), and collects those whose space died.
#[test]
fn pager_windows_are_released_only_by_their_holders() {
    let run = vmm(
        &default_image(),
        &[
            "--timeout",
            "60",
            "--cmdline",
            "fluke.init=pager,-stats>ktest,memsvc",
        ],
    );
    assert_eq!(run.status, 0, "{run:?}");
    run.assert_console(
        "ktest: memsvc: window without a space Ok(3), forged releases [Ok(10), Ok(10), Ok(10), Ok(10)], own [Ok(0), Ok(0)], after a space died Ok(0)",
    );
    // Ours, a's and b's (released), c's (collected once its space died); d's is still in use.
    run.assert_console("5 windows (4 released)");
}

/// A store too small for what the child writes: the pager stops the child with a message
/// instead of dropping a page, and the guest carries on.
#[test]
fn a_full_pager_store_stops_the_child_and_loses_nothing() {
    let run = vmm(
        &default_image(),
        &[
            "--timeout",
            "100",
            "--cmdline",
            "fluke.init=pager,-frames=16,-store=16>ktest,pattern,256",
        ],
    );
    assert_eq!(run.status, 1, "{run:?}");
    run.assert_console("pager: backing store full; stopping ktest");
    assert!(!run.console.contains("mismatches"), "{}", run.console);
    let run = vmm(
        &default_image(),
        &[
            "--timeout",
            "30",
            "--cmdline",
            "fluke.init=pager,-frames=2,>hello",
        ],
    );
    assert_eq!(run.status, 2, "{run:?}");
    run.assert_console("pager: -frames must be 4..=");
}

/// A stack written in an image's manifest (`init pager ... > procmgr > ...`) boots as the
/// same stack on the command line does.
#[test]
fn a_stack_in_the_image_manifest() {
    let default = std::fs::read(default_image()).expect("default image");
    let image = fluke_image::Image::parse(&default).expect("parses");
    let mut bundle = fluke_image::BundleBuilder::new();
    for p in image.bundle().programs() {
        bundle.add_program(p.name, p.data).expect("program");
    }
    bundle.manifest(
        "# a stack\ninit pager -frames=32 -stats > procmgr > passthru > work memory 200\n",
    );
    let kernel = std::fs::read(fluke_images::KERNEL_ELF_PATH).expect("kernel");
    let built = fluke_image::build_image(&kernel, &bundle.build().expect("bundle")).expect("image");
    let path = std::env::temp_dir().join(format!("fluke-stack-{}.img", std::process::id()));
    std::fs::write(&path, built).expect("write image");
    let run = vmm(&path, &["--timeout", "100"]);
    let bare = vmm(
        &default_image(),
        &[
            "--timeout",
            "100",
            "--cmdline",
            "fluke.init=work,memory,200",
        ],
    );
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        work_result(&run, "manifest stack"),
        work_result(&bare, "bare")
    );
    run.assert_console("fluke: started init: pager");
    // procmgr's and passthru's children each had a window of their own, all given back.
    run.assert_console("3 windows (3 released)");
    // Three layers down, the workload's 200 pages went through the 32-frame pager.
    let (frames, faults, evictions, _) = pager_stats(&run);
    assert_eq!(frames, 32);
    assert!(
        faults >= 200 && evictions >= 168,
        "{faults} faults, {evictions} evictions"
    );
}

/// The bytes of program `name` as the default image holds them: what the guest's
/// `program_read` hands the work program (the input of its maintained-crate workloads).
fn image_program(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(default_image()).expect("the default image");
    let image = fluke_image::image::Image::parse(&bytes).expect("a valid image");
    let program = image
        .bundle()
        .program(name)
        .expect("the program in the image");
    program.data.to_vec()
}

/// FNV-1a, 64 bits, as the guest's work program computes it over its round-tripped data.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The SHA-256 of `data` by coreutils' `sha256sum`: an implementation independent of the
/// `sha2` crate the guest runs.
fn sha256sum(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("coreutils' sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sha256sum: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let digest = text.split_whitespace().next().unwrap().to_string();
    assert_eq!(digest.len(), 64, "{text}");
    digest
}

/// What `work btree N` prints for `data`, computed without a map: the N windows sorted,
/// equal runs counted.
fn btree_expected(data: &[u8], windows: usize) -> String {
    let count = data.len() - 3;
    let mut keys: Vec<u32> = (0..windows)
        .map(|i| {
            let at = i % count;
            u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
        })
        .collect();
    keys.sort_unstable();
    let runs: Vec<(u32, u32)> = keys
        .chunk_by(|a, b| a == b)
        .map(|run| (run[0], run.len() as u32))
        .collect();
    let repeated: Vec<u8> = runs
        .iter()
        .filter(|(_, c)| *c > 1)
        .flat_map(|(k, c)| k.to_le_bytes().into_iter().chain(c.to_le_bytes()))
        .collect();
    format!(
        "work: btree checksum {:#018x} windows {windows} distinct {} repeated {}",
        fnv1a(&repeated),
        runs.len(),
        repeated.len() / 8
    )
}

/// Where the maintained-crate workloads run besides bare: each nester alone, a pager that
/// holds less than a deflate round touches (96 frames), and all three mixed seven deep.
/// (At 32 frames a deflate round takes about 30 s: each of its passes over its 300 KiB of
/// compressor state pages.)
const REAL_STACKS: &[&str] = &[
    "passthru>",
    "procmgr>",
    "pager>",
    "pager,-frames=96>",
    "pager>procmgr>pager>procmgr>passthru>pager>procmgr>passthru>",
];

/// Runs `work WORKLOAD` bare, under each of [`REAL_STACKS`], with guest RAM paged by the
/// VMM (`--memory-resident 2`, the VMM model's counterpart of the pager) and under QEMU,
/// and checks that every run prints the bare run's result line; returns it.
fn real_workload_everywhere(workload: &str) -> String {
    let image = default_image();
    let bare_cmdline = format!("fluke.init=work,{workload}");
    let bare = vmm(&image, &["--cmdline", &bare_cmdline]);
    let expected = work_result(&bare, workload);
    for stack in REAL_STACKS {
        let cmdline = format!("fluke.init={stack}work,{workload}");
        let run = vmm(&image, &["--cmdline", &cmdline]);
        assert_eq!(work_result(&run, &cmdline), expected, "{cmdline}");
    }
    let run = vmm(
        &image,
        &["--memory-resident", "2", "--cmdline", &bare_cmdline],
    );
    assert_eq!(
        work_result(&run, "--memory-resident 2"),
        expected,
        "{workload} with guest RAM paged by the VMM"
    );
    let run = qemu(&image, &bare_cmdline);
    assert_eq!(work_result(&run, "qemu"), expected, "{workload} under QEMU");
    expected
}

/// `work sha256` (the `sha2` crate) on the bytes of the image's ktest program prints the
/// digest coreutils computes of the same bytes, bare, under every nester and stack, with
/// the VMM paging and on QEMU's CPU (where `sha2` may pick another implementation).
#[test]
fn sha256_of_image_bytes_matches_an_independent_digest_everywhere() {
    let input = image_program("ktest");
    let expected = format!(
        "work: sha256 checksum {} bytes {}",
        sha256sum(&input),
        input.len()
    );
    assert_eq!(real_workload_everywhere("sha256,3"), expected);
    // Another program of the image as the input, named on the command line.
    let hello = image_program("hello");
    let run = vmm(
        &default_image(),
        &["--cmdline", "fluke.init=work,sha256,1,hello"],
    );
    assert_eq!(
        work_result(&run, "sha256 of hello"),
        format!(
            "work: sha256 checksum {} bytes {}",
            sha256sum(&hello),
            hello.len()
        )
    );
}

/// `work deflate` (`miniz_oxide`) compresses the image's ktest program and decompresses it
/// again; the guest checks that the result equals its input, and the checksum it prints of
/// the result is the host's of the image's bytes: the round trip is the identity
/// everywhere, and the compressed size is the same everywhere.
#[test]
fn deflate_round_trips_image_bytes_identically_everywhere() {
    let input = image_program("ktest");
    let line = real_workload_everywhere("deflate,1");
    let prefix = format!(
        "work: deflate checksum {:#018x} bytes {} compressed ",
        fnv1a(&input),
        input.len()
    );
    let compressed: usize = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(" round-trip identical"))
        .unwrap_or_else(|| panic!("{line:?} is not {prefix:?}<size> round-trip identical"))
        .parse()
        .unwrap();
    // Machine code compresses, but not to nothing.
    assert!(
        compressed > input.len() / 10 && compressed < input.len(),
        "{compressed} of {} bytes",
        input.len()
    );
}

/// `work btree` (`alloc`'s BTreeMap on fluke-rt's allocator: allocation-heavy and
/// pointer-chasing) counts the image's bytes as a sort on the host does, everywhere.
#[test]
fn btree_counts_of_image_bytes_match_a_host_sort_everywhere() {
    let input = image_program("ktest");
    assert_eq!(
        real_workload_everywhere("btree,20000"),
        btree_expected(&input, 20000)
    );
    // More windows than the input has: the count starts over at its beginning.
    let n = input.len() * 2;
    let run = vmm(
        &default_image(),
        &["--cmdline", &format!("fluke.init=work,btree,{n}")],
    );
    assert_eq!(
        work_result(&run, "btree twice over"),
        btree_expected(&input, n)
    );
}
