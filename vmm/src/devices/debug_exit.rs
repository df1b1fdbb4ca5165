//! The VMM's own ports (`fluke_abi::ports`): the debug-exit port (handled by the run loop:
//! the written byte is the exit status), the boot timer and the benchmark counter.

use std::time::{Duration, Instant};

use fluke_abi::ports::{BootMark, BENCH_BEGIN, BENCH_END, BENCH_TICK};

/// Records when the guest reaches its [`BootMark`]s, relative to the VMM's start.
pub struct BootTimer {
    start: Instant,
    print: bool,
    kernel_entry: Option<Duration>,
    init_start: Option<Duration>,
    warnings: GuestWarnings,
}

impl BootTimer {
    /// `start` is the VMM process start (the first thing `main` does); with `print` each
    /// milestone is logged to stderr (`--boot-timer`).
    pub fn new(start: Instant, print: bool) -> BootTimer {
        BootTimer {
            start,
            print,
            kernel_entry: None,
            init_start: None,
            warnings: GuestWarnings::default(),
        }
    }

    /// The guest wrote `value` to the boot timer port. The first time of each mark counts.
    pub fn mark(&mut self, value: u8) {
        let elapsed = self.start.elapsed();
        let (slot, what) = match BootMark::from_byte(value) {
            Some(BootMark::KernelEntry) => (&mut self.kernel_entry, "kernel entry"),
            Some(BootMark::InitStart) => (&mut self.init_start, "init start"),
            None => {
                self.warnings
                    .warn(format_args!("boot-timer: unknown boot mark {value}"));
                return;
            }
        };
        // Only the first time of each mark counts, and is printed: a guest repeating one
        // cannot flood the VMM's stderr.
        if slot.is_some() {
            return;
        }
        *slot = Some(elapsed);
        if self.print {
            crate::logger::to_stderr(&format!("boot-timer: {what} after {:.3} ms\n", ms(elapsed)));
        }
    }

    pub fn kernel_entry(&self) -> Option<Duration> {
        self.kernel_entry
    }

    pub fn init_start(&self) -> Option<Duration> {
        self.init_start
    }
}

/// Warnings a guest can cause by what it writes, limited so that it cannot flood the VMM's
/// stderr: the first [`GuestWarnings::SHOWN`], then one line saying the rest are not shown.
#[derive(Debug, Default)]
pub struct GuestWarnings {
    count: u64,
}

impl GuestWarnings {
    pub const SHOWN: u64 = 10;

    pub fn warn(&mut self, message: std::fmt::Arguments) {
        self.count = self.count.saturating_add(1);
        match self.count {
            n if n <= Self::SHOWN => log::warn!("{message}"),
            n if n == Self::SHOWN + 1 => {
                log::warn!(
                    "{message} (the guest keeps doing this: further such warnings are not shown)"
                )
            }
            _ => {}
        }
    }
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A completed BEGIN..END measurement of the benchmark port.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchResult {
    /// TICK writes between BEGIN and END.
    pub ticks: u64,
    /// Host time from handling BEGIN to handling END.
    pub elapsed: Duration,
}

impl BenchResult {
    /// Microseconds per guest exit to the VMM and back. BEGIN..END spans `ticks + 1` round
    /// trips: every TICK and the END itself (the guest resumes after BEGIN, exits for each
    /// TICK, and once more for END).
    pub fn roundtrip_us(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / (self.ticks + 1) as f64
    }
}

/// The benchmark counter port: BEGIN starts a measurement, TICK counts, END stops it.
#[derive(Default)]
pub struct BenchPort {
    begin: Option<Instant>,
    ticks: u64,
    result: Option<BenchResult>,
    warnings: GuestWarnings,
}

impl BenchPort {
    pub fn write(&mut self, value: u8) {
        self.write_at(value, Instant::now());
    }

    fn write_at(&mut self, value: u8, now: Instant) {
        match value {
            BENCH_BEGIN => {
                self.begin = Some(now);
                self.ticks = 0;
            }
            BENCH_TICK => self.ticks = self.ticks.saturating_add(1),
            BENCH_END => match self.begin.take() {
                Some(begin) => {
                    self.result = Some(BenchResult {
                        ticks: self.ticks,
                        elapsed: now.saturating_duration_since(begin),
                    })
                }
                None => self.warnings.warn(format_args!("bench: END without BEGIN")),
            },
            other => self
                .warnings
                .warn(format_args!("bench: unknown value {other}")),
        }
    }

    /// The last completed measurement.
    pub fn result(&self) -> Option<BenchResult> {
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timer_keeps_the_first_mark() {
        let mut t = BootTimer::new(Instant::now(), false);
        assert!(t.kernel_entry().is_none());
        t.mark(BootMark::KernelEntry as u8);
        let first = t.kernel_entry().unwrap();
        t.mark(BootMark::KernelEntry as u8);
        assert_eq!(t.kernel_entry(), Some(first));
        assert!(t.init_start().is_none());
        t.mark(BootMark::InitStart as u8);
        assert!(t.init_start().unwrap() >= first);
        t.mark(77); // ignored
    }

    #[test]
    fn bench_counts_ticks_between_begin_and_end() {
        let mut b = BenchPort::default();
        let t0 = Instant::now();
        b.write_at(BENCH_TICK, t0); // before BEGIN: not counted
        b.write_at(BENCH_BEGIN, t0);
        for _ in 0..9 {
            b.write_at(BENCH_TICK, t0);
        }
        b.write_at(BENCH_END, t0 + Duration::from_micros(400));
        let r = b.result().unwrap();
        assert_eq!(r.ticks, 9);
        assert!((r.roundtrip_us() - 40.0).abs() < 1e-9);
        // END without BEGIN keeps the last result.
        b.write_at(BENCH_END, t0);
        assert_eq!(b.result(), Some(r));
    }
}
