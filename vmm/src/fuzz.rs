//! Fuzzing of every parser that reads untrusted bytes, on stable Rust, in the unit tests:
//! the image and its bundle (`fluke_image`), the kernel command line (`fluke_abi::cmdline`),
//! the snapshot format (`snapshot::file::decode`) and the control API's request parsing and
//! routing (`api`). Each target starts from a committed seed corpus (`vmm/fuzz-corpus/`,
//! plus the default image) and feeds mutants of it (bit flips, byte sets, insertions,
//! deletions, splices, interesting integers) to the parser, which must return, never panic.
//!
//! The mutator is deterministic (xorshift, the seed `FLUKE_FUZZ_SEED`, default fixed): a
//! failure reproduces. Each target runs its default number of mutants (seconds in
//! `.ci/run`) times `FLUKE_FUZZ_SCALE`; `scripts/fuzz-parsers.sh` runs long ones.

#![cfg(test)]

use std::path::PathBuf;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
    1 << 40,
];

/// One mutant of `seed` (with `other` for splices), at most `max` bytes.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8], max: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                v.drain(i..i + n);
            }
            4 if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                v.splice(i..i, other[from..from + n].iter().copied());
            }
            5 if v.len() >= 8 => {
                let i = rng.below(v.len() - 7);
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.below(4)];
                v[i..i + width].copy_from_slice(&x.to_le_bytes()[..width]);
            }
            _ => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
        }
    }
    v.truncate(max);
    v
}

fn iterations(default: usize) -> usize {
    let scale: usize = std::env::var("FLUKE_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    default.saturating_mul(scale)
}

fn base_seed() -> u64 {
    std::env::var("FLUKE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "empty seed corpus {}", dir.display());
    seeds
}

/// Feeds `n` mutants of `seeds` to `target`.
fn run(name: &str, seeds: &[Vec<u8>], n: usize, max: usize, mut target: impl FnMut(&[u8])) {
    let mut rng = Rng((base_seed() ^ name.len() as u64) | 1);
    for s in seeds {
        target(s);
    }
    for i in 0..n {
        let seed = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed, other, max);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        if caught.is_err() {
            let path = std::env::temp_dir().join(format!("fluke-fuzz-{name}-{i}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "{name}: input {i} panicked the parser (saved to {})",
                path.display()
            );
        }
    }
}

#[test]
fn fuzz_image_and_bundle_parsing() {
    // The default image is the seed; mutants hit its headers and its bundle.
    let image = fluke_images::default_image().to_vec();
    assert!(!image.is_empty());
    let head = image[..image.len().min(64 * 1024)].to_vec();
    let seeds = vec![image.clone(), head];
    run("image", &seeds, iterations(2_000), 2 << 20, |b| {
        if let Ok(img) = fluke_image::image::Image::parse(b) {
            let bundle = img.bundle();
            for p in bundle.programs() {
                let _ = fluke_image::elf::Elf::parse(p.data);
            }
            let m = bundle.manifest();
            let _ = (m.init(), m.args().count());
        }
        let _ = crate::boot::validate(b, "fuzz");
        let _ = crate::inspect::describe(b, "fuzz");
    });
}

#[test]
fn fuzz_kernel_command_line_parsing() {
    run(
        "cmdline",
        &corpus("cmdline"),
        iterations(100_000),
        4096,
        |b| {
            let text = String::from_utf8_lossy(b);
            for key in [
                "fluke.init",
                "fluke.platform",
                "fluke.test",
                "fluke.tsc_khz",
            ] {
                if let Some(v) = fluke_abi::cmdline::get(&text, key) {
                    let _ = fluke_abi::cmdline::init_words(v).count();
                }
            }
            let _ = fluke_abi::cmdline::init_words(&text).count();
        },
    );
}

#[test]
fn fuzz_snapshot_vmstate_decoding() {
    let mut seeds = corpus("vmstate");
    seeds.push(crate::snapshot::file::encode(&crate::snapshot::VmSnapshot::for_tests()).unwrap());
    run("vmstate", &seeds, iterations(20_000), 1 << 20, |b| {
        // Re-checksum some mutants so the JSON body itself is reached, not only the CRC.
        let _ = crate::snapshot::file::decode(b);
        if b.len() >= crate::snapshot::file::HEADER_LEN {
            let mut fixed = b.to_vec();
            let body = &b[crate::snapshot::file::HEADER_LEN..];
            fixed[12..16].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
            fixed[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
            let _ = crate::snapshot::file::decode(&fixed);
        }
    });
}

#[test]
fn fuzz_api_request_parsing_and_routing() {
    use crate::api::http::Connection;
    use std::io::Write;
    let control = crate::control::VmControl::default();
    control.ended(); // routes answer without waiting for a vCPU
    let info = crate::api::InstanceInfo {
        id: "fuzz".into(),
        platform: "kvm",
        vcpus: 1,
        memory_mib: 128,
    };
    run(
        "http",
        &corpus("http"),
        iterations(20_000),
        64 * 1024,
        |b| {
            let (a, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
            w.write_all(b).unwrap();
            drop(w); // end of stream: the reader never waits
            let mut conn = Connection::new(a).unwrap();
            let never = || false;
            while let Ok(req) = conn.read_request(&never) {
                let _ = crate::api::route(&req, &info, &control);
            }
        },
    );
}

#[test]
fn the_mutator_is_deterministic() {
    let mut a = Rng(1);
    let mut b = Rng(1);
    let s = b"seed bytes".to_vec();
    assert_eq!(mutate(&mut a, &s, &s, 64), mutate(&mut b, &s, &s, 64));
}

/// The device specs of the command line (`--drive`, `--channel`), the device words the
/// kernel reads from its command line, and the messages another VMM sends on a
/// channel's socket: untrusted text and bytes, each parser's error a value, never a panic.
#[test]
fn fuzz_device_specs_words_and_channel_messages() {
    use crate::devices::channel::wire::Message;
    run(
        "devices",
        &corpus("devices"),
        iterations(100_000),
        512,
        |b| {
            let _ = Message::decode(b).map(|m| m.check_compatible());
            let text = String::from_utf8_lossy(b);
            let _ = crate::devices::virtio::block::disk::DriveSpec::parse(&text);
            let _ = crate::devices::channel::ChannelSpec::parse(&text);
            // (The kernel's checks of a parsed word are fluke-kcore's, host-tested there.)
            for d in fluke_abi::devices::device_words(&text).flatten() {
                let _ = d.word().to_string();
            }
            let _ = fluke_abi::devices::irq_words(&text).count();
        },
    );
}
