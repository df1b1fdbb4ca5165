//! The kernel command line: space-separated `key=value` or bare `key` words.
//!
//! Keys the kernel understands:
//! - `fluke.platform=kvm_pvm|kvm` (written by fluke-vmm from its own detection; the kernel
//!   confirms it with its own probe and trusts the probe),
//! - `fluke.test=NAME` (kernel self-tests used by the integration tests),
//! - `fluke.bench=NAME` (in-guest benchmarks used by `fluke-vmm bench`),
//! - `fluke.init=PROGRAM[,ARG...]` (start another program of the image as init),
//! - `fluke.tsc_khz=N` (the TSC frequency, written by fluke-vmm from KVM_GET_TSC_KHZ).

pub const PLATFORM: &str = "fluke.platform";
pub const TEST: &str = "fluke.test";
pub const BENCH: &str = "fluke.bench";
/// `fluke.init=PROGRAM[,ARG...]`: start this program instead of the manifest's init.
pub const INIT: &str = "fluke.init";
/// `fluke.tsc_khz=N`: the TSC frequency, when the VMM knows it.
pub const TSC_KHZ: &str = "fluke.tsc_khz";

/// Iterates over `(key, value)` pairs; a bare word has the value `""`.
pub fn words(cmdline: &str) -> impl Iterator<Item = (&str, &str)> {
    cmdline
        .split_ascii_whitespace()
        .map(|w| w.split_once('=').unwrap_or((w, "")))
}

/// The value of the last occurrence of `key`, as Linux does for repeated parameters.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    words(cmdline)
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words() {
        let c = "  fluke.platform=kvm_pvm quiet fluke.test=panic fluke.test=spin ";
        assert_eq!(get(c, PLATFORM), Some("kvm_pvm"));
        assert_eq!(get(c, "quiet"), Some(""));
        assert_eq!(get(c, TEST), Some("spin"));
        assert_eq!(get(c, BENCH), None);
        assert_eq!(words("").count(), 0);
    }
}
