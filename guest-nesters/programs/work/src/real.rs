//! Workloads that run maintained crates no one here wrote, on real data that exists in the
//! image: the bytes of one of its programs (real machine code and ELF structure) as the
//! kernel hands them out (`program_read`), `ktest` unless named.
//!
//! - `deflate N [PROGRAM]`: N rounds of compressing the input with `miniz_oxide` (zlib,
//!   level 6) and decompressing it again; every round's result must equal the input,
//! - `sha256 N [PROGRAM]`: N SHA-256 digests of the input with `sha2`,
//! - `btree N [PROGRAM]`: counts N 4-byte windows of the input (each offset in turn, from
//!   the start again after the last) in an `alloc::collections::BTreeMap`, then removes
//!   the keys seen once: allocation-heavy and pointer-chasing (a node allocated every few
//!   new keys, freed again in the removal and the drop, each window a walk down the tree).
//!   The checksum is FNV-1a over the remaining (key, count) pairs in key order.
//!
//! Each returns its result line's text (after `work: KIND checksum `).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use fluke_rt::{println, sys};
use sha2::{Digest, Sha256};

/// One of these workloads: the input and N, the result line's text or `None` (reported).
pub type Workload = fn(&[u8], u64) -> Option<String>;

/// The input of every real workload unless the command line names another program.
pub const DEFAULT_INPUT: &str = "ktest";

/// The whole of program `name` of the image.
pub fn read_input(name: &str) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match sys::program_read(name, data.len() as u64, &mut chunk) {
            Ok(n) => n,
            Err(e) => {
                println!("work: cannot read program {name}: {e:?}");
                return None;
            }
        };
        if n == 0 {
            break;
        }
        data.extend_from_slice(&chunk[..n]);
    }
    if data.is_empty() {
        println!("work: program {name} is empty");
        return None;
    }
    Some(data)
}

/// FNV-1a, 64 bits: the round-tripped data's checksum, which the tests recompute from the
/// image on the host.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn deflate(input: &[u8], rounds: u64) -> Option<String> {
    let mut result = None;
    for round in 0..rounds {
        let compressed = miniz_oxide::deflate::compress_to_vec_zlib(input, 6);
        let restored = match miniz_oxide::inflate::decompress_to_vec_zlib(&compressed) {
            Ok(r) => r,
            Err(e) => {
                println!("work: deflate: round {round}: decompression failed: {e:?}");
                return None;
            }
        };
        if restored != input {
            let at = restored.iter().zip(input).position(|(a, b)| a != b);
            println!(
                "work: deflate: round {round}: {} bytes back for {}, first difference at {at:?}",
                restored.len(),
                input.len()
            );
            return None;
        }
        result = Some(format!(
            "{:#018x} bytes {} compressed {} round-trip identical",
            fnv1a(&restored),
            input.len(),
            compressed.len()
        ));
    }
    result
}

pub fn sha256(input: &[u8], rounds: u64) -> Option<String> {
    let mut digest = [0u8; 32];
    for _ in 0..rounds {
        digest = Sha256::digest(input).into();
    }
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    Some(format!("{hex} bytes {}", input.len()))
}

pub fn btree(input: &[u8], windows: u64) -> Option<String> {
    let count = input.len().checked_sub(3).filter(|&c| c > 0)?;
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for i in 0..windows {
        let at = (i % count as u64) as usize;
        let w = &input[at..at + 4];
        let key = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        *counts.entry(key).or_insert(0) += 1;
    }
    let distinct = counts.len();
    counts.retain(|_, c| *c > 1);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (k, c) in &counts {
        for b in k.to_le_bytes().into_iter().chain(c.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(format!(
        "{h:#018x} windows {windows} distinct {distinct} repeated {}",
        counts.len()
    ))
}
