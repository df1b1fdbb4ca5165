//! A tiny `log` backend: one line per record on stderr, `fluke-vmm: <level>: <message>`.

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // The gdbstub crate reports each packet it does not implement at info level, which
        // gdb's normal probing is full of; virtio-queue logs each malformed ring the guest
        // hands it as an error, which a guest could flood stderr with: their records show
        // from debug up.
        let max = log::max_level();
        let target = metadata.target();
        if (target.starts_with("gdbstub") || target.starts_with("virtio_queue"))
            && max < LevelFilter::Debug
        {
            return false;
        }
        metadata.level() <= max
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            to_stderr(&format!("fluke-vmm: {level}: {}\n", record.args()));
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. Calling it twice only changes the level.
pub fn init(level: LevelFilter) {
    // set_logger fails only if a logger is already installed, which is fine.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes `text` to stderr. Unlike `eprint!` it never panics: if stderr is gone, the text is.
pub fn to_stderr(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
}

/// Writes `text` to stdout and flushes. Never panics (e.g. on a closed pipe).
pub fn to_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, text.as_bytes());
    let _ = std::io::Write::flush(&mut out);
}
