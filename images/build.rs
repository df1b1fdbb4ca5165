//! Builds the guest (kernel and user programs, each a workspace of its own for
//! x86_64-unknown-none) with a nested cargo, then packs the images this crate exposes.
//! See shared/platform/build.md for why it is done this way on stable cargo.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

/// Programs packed into the default image; the first one listed in the manifest is init.
const DEFAULT_PROGRAMS: &[&str] = &[
    "hello", "ktest", "victim", "spinner", "bench", "passthru", "work", "procmgr", "pager",
    "blkdrv", "disk", "chandrv", "chat",
];
const DEFAULT_MANIFEST: &str =
    "# the default image: the first program and its arguments\ninit hello\n";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // One guest target directory next to the host's, shared by all host profiles.
    let guest_target = out_dir.ancestors().nth(4).unwrap().join("guest");

    ensure_guest_target();
    for dir in [
        "guest-kernel/abi",
        "guest-kernel/core",
        "guest-kernel/kernel",
        "guest-nesters",
        "images/format",
    ] {
        watch(&root.join(dir));
    }

    cargo_build(&root.join("guest-nesters"), &guest_target);
    cargo_build(&root.join("guest-kernel/kernel"), &guest_target);
    let bin_dir = guest_target.join(GUEST_TARGET).join("release");

    let kernel_elf = bin_dir.join("fluke-kernel");
    let kernel = read(&kernel_elf);
    // Programs go into the image stripped to their segments; their unstripped ELFs (and the
    // kernel's: the image holds only its segments anyway) go to the debug directory beside
    // the image, for fault reports and gdb.
    let image_path = out_dir.join("default.img");
    let debug_dir = sidecar_dir(&image_path);
    let programs_dir = debug_dir.join(fluke_image::image::DEBUG_PROGRAMS_DIR);
    if debug_dir.exists() {
        std::fs::remove_dir_all(&debug_dir)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", debug_dir.display())));
    }
    std::fs::create_dir_all(&programs_dir)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", programs_dir.display())));
    let mut bundle = fluke_image::bundle::BundleBuilder::new();
    for name in DEFAULT_PROGRAMS {
        let elf = read(&bin_dir.join(name));
        let stripped = fluke_image::elf::strip_to_segments(&elf)
            .unwrap_or_else(|e| fail(&format!("{name}: {e}")));
        bundle
            .add_program(name, &stripped)
            .unwrap_or_else(|e| fail(&format!("{name}: {e}")));
        write(&programs_dir.join(format!("{name}.elf")), &elf);
    }
    bundle.manifest(DEFAULT_MANIFEST);
    let bundle = bundle
        .build()
        .unwrap_or_else(|e| fail(&format!("bundle: {e}")));
    let image = fluke_image::image::build_image(&kernel, &bundle)
        .unwrap_or_else(|e| fail(&format!("image: {e}")));
    write(&image_path, &image);
    write(
        &debug_dir.join(fluke_image::image::DEBUG_KERNEL_FILE),
        &kernel,
    );
    let _ = std::fs::remove_file(out_dir.join("fluke-kernel.elf")); // the old location
}

/// `IMAGE.debug` beside `IMAGE`.
fn sidecar_dir(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(fluke_image::image::DEBUG_DIR_SUFFIX);
    PathBuf::from(name)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| fail(&format!("write {}: {e}", path.display())));
}

fn fail(msg: &str) -> ! {
    eprintln!("error: building the guest images: {msg}");
    std::process::exit(1);
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())))
}

fn watch(dir: &Path) {
    for entry in [
        "src",
        "Cargo.toml",
        "build.rs",
        "link.ld",
        ".cargo",
        "runtime",
        "programs",
    ] {
        let p = dir.join(entry);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

/// `RUSTUP_AUTO_INSTALL=0` machines do not install `targets` from rust-toolchain.toml, so
/// the build installs the guest target itself when its core library is missing.
fn ensure_guest_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()));
    let has_core = libdir
        .and_then(|d| std::fs::read_dir(d).ok())
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false);
    if has_core {
        return;
    }
    eprintln!("installing the {GUEST_TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        fail(&format!(
            "the {GUEST_TARGET} target is missing and `rustup target add {GUEST_TARGET}` failed"
        ));
    }
}

/// Runs `cargo build --release` inside a guest workspace (cargo reads the workspace's
/// .cargo/config.toml from the current directory), with the host build's flags removed.
fn cargo_build(workspace: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--target-dir"])
        .arg(target_dir)
        .stdout(std::process::Stdio::from(std::io::stderr()));
    for (key, _) in std::env::vars() {
        let host_only = key.starts_with("CARGO_ENCODED_RUSTFLAGS")
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_CFG_")
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "DEBUG"
            );
        if host_only {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail(&format!("cargo build in {} failed", workspace.display()));
    }
}
