//! The kernel command line: space-separated `key=value` or bare `key` words.
//!
//! Keys the kernel understands:
//! - `fluke.platform=kvm_pvm|kvm` (written by fluke-vmm from its own detection; the kernel
//!   confirms it with its own probe and trusts the probe),
//! - `fluke.test=NAME` (kernel self-tests used by the integration tests),
//! - `fluke.bench=NAME` (in-guest benchmarks used by `fluke-vmm bench`),
//! - `fluke.init=PROGRAM[,ARG...]` (start another program of the image as init),
//! - `fluke.tsc_khz=N` (the TSC frequency, written by fluke-vmm from KVM_GET_TSC_KHZ),
//! - `fluke.console=pv|uart` (written `pv` by fluke-vmm, which has the paravirtual console
//!   port `ports::CONSOLE_PV`; without it, or with `uart`, the kernel prints to COM1).
//!
//! The platform-floor benchmark paths are not a boot option: they sit behind the benchmark
//! capability that only init receives (`syscall::INIT_BENCH_CAP`).

pub const PLATFORM: &str = "fluke.platform";
pub const TEST: &str = "fluke.test";
pub const BENCH: &str = "fluke.bench";
/// `fluke.init=PROGRAM[,ARG...]`: start this program instead of the manifest's init.
pub const INIT: &str = "fluke.init";
/// `fluke.tsc_khz=N`: the TSC frequency, when the VMM knows it.
pub const TSC_KHZ: &str = "fluke.tsc_khz";
/// `fluke.console=pv|uart`: which console the kernel prints to.
pub const CONSOLE: &str = "fluke.console";

/// The words of an init line: `fluke.init`'s comma-separated words, or the manifest's
/// `init` words, with `>` also splitting (and kept as a word of its own), so a stack of
/// nesters reads `pager>procmgr>work,memory,100` on the command line and
/// `pager > procmgr > work memory 100` in the manifest. Each nester takes its own options
/// (`-key=value`), then an optional `>`, then the program it runs and that program's words.
pub fn init_words(spec: &str) -> impl Iterator<Item = &str> {
    spec.split([',', ' ', '\t'])
        .flat_map(|w| {
            let mut rest = w;
            core::iter::from_fn(move || {
                if rest.is_empty() {
                    return None;
                }
                match rest.find('>') {
                    Some(0) => {
                        let (gt, tail) = rest.split_at(1);
                        rest = tail;
                        Some(gt)
                    }
                    Some(i) => {
                        let (head, tail) = rest.split_at(i);
                        rest = tail;
                        Some(head)
                    }
                    None => Some(core::mem::take(&mut rest)),
                }
            })
        })
        .filter(|w| !w.is_empty())
}

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

    #[test]
    fn init_words_split_stacks() {
        let w = |s| init_words(s).collect::<std::vec::Vec<_>>();
        assert_eq!(
            w("pager>procmgr>work,memory,100"),
            ["pager", ">", "procmgr", ">", "work", "memory", "100"]
        );
        assert_eq!(
            w("pager -frames=64 > procmgr >work memory 100"),
            [
                "pager",
                "-frames=64",
                ">",
                "procmgr",
                ">",
                "work",
                "memory",
                "100"
            ]
        );
        assert_eq!(w("hello"), ["hello"]);
        assert_eq!(w(",,a,,>>b"), ["a", ">", ">", "b"]);
        assert_eq!(w(""), [] as [&str; 0]);
    }
}
