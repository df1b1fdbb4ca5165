//! The VMM's error type. Every variant carries enough context to be printed as one line
//! (`fluke-vmm: error: ...`) and ends the process with [`fluke_abi::status::VMM_ERROR`].
//!
//! Guest misbehaviour is not an error of this kind: it is a [`crate::vcpu::Outcome`] with its
//! own exit status.

use std::io;
use std::path::PathBuf;

use fluke_abi::status::VMM_ERROR;
use thiserror::Error;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot read image {}: {}", path.display(), strerror(source))]
    ReadImage { path: PathBuf, source: io::Error },

    #[error("invalid image {what}: {msg}")]
    InvalidImage { what: String, msg: String },

    #[error("{what}: {msg}")]
    UnsupportedImage { what: String, msg: String },

    #[error("no default image is built into this fluke-vmm (the guest has not been built); pass an IMAGE path")]
    NoDefaultImage,

    #[error("the image needs {need_mib} MiB of guest memory but --memory is {have_mib} MiB")]
    MemoryTooSmall { need_mib: u64, have_mib: u64 },

    #[error("--memory must be between {min} and {max} MiB, got {got}")]
    InvalidMemorySize { got: u64, min: u64, max: u64 },

    #[error("--timeout must be a positive number of seconds (at most {max}), got {got}")]
    InvalidTimeout { got: f64, max: f64 },

    #[error("invalid --serial {spec:?}: {reason} (expected stdio, null or file:PATH)")]
    InvalidSerial { spec: String, reason: &'static str },

    #[error("cannot open serial output file {}: {}", path.display(), strerror(source))]
    SerialFile { path: PathBuf, source: io::Error },

    #[error("the kernel command line is {len} bytes, at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },

    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,

    #[error("cannot open /dev/kvm: {} (is KVM enabled on this host?)", strerror_errno(*.0))]
    KvmUnavailable(i32),

    #[error(
        "permission denied opening /dev/kvm: add your user to the kvm group or fix its permissions"
    )]
    KvmPermission,

    #[error("KVM {op} failed: {}", strerror_errno(source.errno()))]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },

    #[error("cannot allocate {mib} MiB of guest memory: {msg}")]
    GuestMemory { mib: u64, msg: String },

    #[error(
        "cannot set up the {kib} KiB memory area (DMA or shared) of the device at {gpa:#x}: {msg}"
    )]
    DeviceMemory { gpa: u64, kib: u64, msg: String },

    #[error("cannot write {what} into guest memory: {msg}")]
    GuestWrite { what: &'static str, msg: String },

    #[error("cannot load the kernel: {0}")]
    Load(#[from] linux_loader::loader::Error),

    #[error("cannot write the PVH boot information: {0}")]
    BootParams(#[from] linux_loader::configurator::Error),

    #[error("cannot set up the {what}: {}", strerror(source))]
    HostIo {
        what: &'static str,
        source: io::Error,
    },

    #[error("cannot set up the watchdog signal: {}", strerror_errno(*.0))]
    Signal(i32),

    #[error("cannot write {}: {}", path.display(), strerror(source))]
    WriteOutput { path: PathBuf, source: io::Error },

    #[error("{0}")]
    Bench(String),

    #[error("--api-sock {}: the path exists (remove it, or choose another)", path.display())]
    ApiSocketExists { path: PathBuf },

    #[error("cannot serve the API on {}: {}", path.display(), strerror(source))]
    ApiSocket { path: PathBuf, source: io::Error },

    #[error("cannot reach the API at {}: {}", path.display(), strerror(source))]
    ApiConnect { path: PathBuf, source: io::Error },

    #[error("API: {0}")]
    ApiAnswer(String),

    #[error("{0}")]
    Snapshot(String),

    #[error("invalid --gdb {spec:?}: {reason} (expected unix:PATH or tcp:127.0.0.1:PORT)")]
    InvalidGdbSpec { spec: String, reason: String },

    #[error("--gdb unix:{}: the path exists (remove it, or choose another)", path.display())]
    GdbSocketExists { path: PathBuf },

    #[error("cannot listen for gdb on {spec}: {}", strerror(source))]
    GdbListen { spec: String, source: io::Error },

    #[error("{0}")]
    Seccomp(String),
    #[error("cannot page guest memory from the host: {0}")]
    HostPaging(String),
    #[error("{0}")]
    ImageTool(#[from] crate::image_tool::ImageToolError),
    #[error("invalid --drive {spec:?}: {reason} (expected path=FILE[,readonly])")]
    InvalidDrive { spec: String, reason: String },
    #[error("--drive {}: {reason}", path.display())]
    Drive { path: PathBuf, reason: String },
    #[error("invalid --channel {spec:?}: {reason} (expected path=SOCKET)")]
    InvalidChannel { spec: String, reason: String },
    #[error("--channel {}: {reason}", path.display())]
    Channel { path: PathBuf, reason: String },
    #[error("--channel {}: the other VM {reason}", path.display())]
    ChannelPeer { path: PathBuf, reason: String },
    #[error("{got} devices (--drive and --channel), at most {max} fit")]
    TooManyDevices { got: usize, max: usize },
    #[error("--memory-resident must be between {min} MiB and --memory ({max} MiB), got {got}")]
    ResidentSize { min: u64, max: u64, got: u64 },
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        status_u8(VMM_ERROR)
    }

    /// Shorthand for a failed KVM ioctl.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}

/// Converts one of the `fluke_abi::status` VMM statuses (an `i32` for `std::process::exit`
/// compatibility) to the byte an [`std::process::ExitCode`] takes.
pub fn status_u8(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(u8::MAX)
}

/// `strerror` text of an I/O error, without Rust's " (os error N)" suffix.
pub fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => strerror_errno(errno),
        None => e.to_string(),
    }
}

/// `strerror` text of an errno value.
pub fn strerror_errno(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_plain() {
        let e = Error::KvmUnavailable(libc::ENOENT);
        assert_eq!(
            e.to_string(),
            "cannot open /dev/kvm: No such file or directory (is KVM enabled on this host?)"
        );
        let e = Error::ReadImage {
            path: "/nope".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            e.to_string(),
            "cannot read image /nope: No such file or directory"
        );
        assert_eq!(e.exit_code(), 126);
        let e = Error::MemoryTooSmall {
            need_mib: 3,
            have_mib: 2,
        };
        assert_eq!(
            e.to_string(),
            "the image needs 3 MiB of guest memory but --memory is 2 MiB"
        );
    }
}
