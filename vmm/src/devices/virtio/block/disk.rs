//! A drive's host side: `--drive path=FILE[,readonly]` parsed and checked, the file opened
//! (O_RDONLY for a read-only drive) and judged by `fstat` on the opened descriptor (no race
//! between the check and the open), and positioned I/O on it (pread/pwrite, fdatasync).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::error::{strerror, Error, Result};

/// The virtio-blk sector: capacity and request offsets count in these.
pub const SECTOR_SIZE: u64 = 512;
/// The length of a GET_ID answer (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// One `--drive` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveSpec {
    pub path: PathBuf,
    pub readonly: bool,
}

impl DriveSpec {
    /// Parses `path=FILE[,readonly]` (also `readonly=on|off`, as Cloud Hypervisor writes it).
    /// A path cannot hold a comma.
    pub fn parse(spec: &str) -> Result<DriveSpec> {
        let bad = |reason: String| Error::InvalidDrive {
            spec: spec.to_string(),
            reason,
        };
        let mut path = None;
        let mut readonly = None;
        for (key, value) in crate::devices::spec_options(spec) {
            match (key, value) {
                ("path", Some(v)) if !v.is_empty() => {
                    if path.replace(PathBuf::from(v)).is_some() {
                        return Err(bad("path given twice".into()));
                    }
                }
                ("path", _) => return Err(bad("an empty path".into())),
                ("readonly", v) => {
                    let on = match v {
                        None | Some("on") | Some("true") => true,
                        Some("off") | Some("false") => false,
                        Some(other) => {
                            return Err(bad(format!("readonly={other} (expected on or off)")))
                        }
                    };
                    if readonly.replace(on).is_some() {
                        return Err(bad("readonly given twice".into()));
                    }
                }
                ("", None) => return Err(bad("an empty option".into())),
                (other, _) => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        Ok(DriveSpec {
            path: path.ok_or_else(|| bad("no path=FILE".into()))?,
            readonly: readonly.unwrap_or(false),
        })
    }
}

/// An open drive file.
#[derive(Debug)]
pub struct Disk {
    file: File,
    len: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Opens and checks the drive: a regular file whose size is a whole, non-zero number of
    /// sectors.
    pub fn open(spec: &DriveSpec) -> Result<Disk> {
        let refuse = |reason: String| Error::Drive {
            path: spec.path.clone(),
            reason,
        };
        // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
        let file = OpenOptions::new()
            .read(true)
            .write(!spec.readonly)
            .custom_flags(libc::O_NONBLOCK)
            .open(&spec.path)
            .map_err(|e| match e.raw_os_error() {
                // A directory opened for writing: the same words as one opened read-only.
                Some(libc::EISDIR) => refuse("is a directory".into()),
                _ => refuse(strerror(&e)),
            })?;
        let meta = file.metadata().map_err(|e| refuse(strerror(&e)))?;
        if meta.is_dir() {
            return Err(refuse("is a directory".into()));
        }
        if !meta.is_file() {
            return Err(refuse("not a regular file".into()));
        }
        let len = meta.len();
        if len == 0 {
            return Err(refuse("is empty".into()));
        }
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(refuse(format!(
                "its size ({len} bytes) is not a multiple of {SECTOR_SIZE}"
            )));
        }
        Ok(Disk {
            file,
            len,
            readonly: spec.readonly,
            id: serial_from(meta.dev(), meta.ino()),
        })
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.len / SECTOR_SIZE
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The GET_ID answer: stable for the same file across runs.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Fills `buf` from byte `offset`; a short file (it shrank under us) is an error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes every completed write durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A second handle on the same open file.
    #[cfg(test)]
    pub fn clone_for_test(&self) -> Disk {
        Disk {
            file: self.file.try_clone().unwrap(),
            ..*self
        }
    }

    /// Whether `len` bytes from `sector` lie inside the disk.
    pub fn in_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.len)
    }
}

/// The device's serial number: the file's device and inode numbers (NUL-padded, cut at
/// [`ID_BYTES`]).
fn serial_from(dev: u64, ino: u64) -> [u8; ID_BYTES] {
    let text = format!("fluke{dev:x}.{ino:x}");
    let mut id = [0u8; ID_BYTES];
    let n = text.len().min(ID_BYTES);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_specs_parse() {
        assert_eq!(
            DriveSpec::parse("path=/a/b.img").unwrap(),
            DriveSpec {
                path: "/a/b.img".into(),
                readonly: false
            }
        );
        for ro in ["path=x,readonly", "readonly,path=x", "path=x,readonly=on"] {
            assert!(DriveSpec::parse(ro).unwrap().readonly, "{ro}");
        }
        assert!(!DriveSpec::parse("path=x,readonly=off").unwrap().readonly);
        for (bad, why) in [
            ("", "an empty option"),
            ("x.img", "unknown option \"x.img\""),
            ("readonly", "no path=FILE"),
            ("path=", "an empty path"),
            ("path=a,path=b", "path given twice"),
            ("path=a,readonly,readonly", "readonly given twice"),
            ("path=a,readonly=yes", "readonly=yes"),
            ("path=a,cache=none", "unknown option \"cache\""),
        ] {
            let e = DriveSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn files_that_are_not_disks_are_refused() {
        let dir = std::env::temp_dir().join(format!("fluke-disk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let open = |name: &str, readonly| {
            Disk::open(&DriveSpec {
                path: dir.join(name),
                readonly,
            })
        };
        let err = |name: &str, readonly| open(name, readonly).unwrap_err().to_string();
        assert!(err("missing", false).ends_with("No such file or directory"));
        std::fs::create_dir_all(dir.join("subdir")).unwrap();
        assert!(err("subdir", true).ends_with("is a directory"));
        std::fs::write(dir.join("odd"), [0u8; 513]).unwrap();
        assert!(err("odd", false).contains("(513 bytes) is not a multiple of 512"));
        std::fs::write(dir.join("empty"), []).unwrap();
        assert!(err("empty", false).ends_with("is empty"));
        std::fs::write(dir.join("ok"), [7u8; 1024]).unwrap();
        let disk = open("ok", true).unwrap();
        assert_eq!((disk.sectors(), disk.readonly()), (2, true));
        assert!(disk.in_range(1, 512) && !disk.in_range(1, 513) && !disk.in_range(u64::MAX, 0));
        assert!(disk.id().starts_with(b"fluke"));
        // Read-only means opened O_RDONLY: the descriptor itself refuses writes.
        assert!(disk.write_all_at(&[1], 0).is_err());
        assert!(err("/dev/null", false).ends_with("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
