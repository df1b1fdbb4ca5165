//! The snapshot files: `vmstate` (a versioned, checksummed header and the machine state as
//! JSON) and `memory` (guest RAM byte for byte, then a 32-byte [`MemoryTrailer`]; the CRC-32
//! of each 1 MiB chunk is in the vmstate), and writing them so that a VMM killed at any
//! moment leaves the previous snapshot whole.
//!
//! `vmstate` layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FLUKESNP` |
//! | 8 | 4 | format version ([`VERSION`]) |
//! | 12 | 4 | CRC-32 (IEEE) of the body |
//! | 16 | 8 | body length in bytes (at most [`MAX_BODY`]) |
//! | 24 | n | body: [`super::VmSnapshot`] as JSON |
//!
//! `memory` trailer, after the RAM's `memory_bytes` (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FLUKEMEM` |
//! | 8 | 4 | trailer version (1) |
//! | 12 | 4 | zero |
//! | 16 | 8 | the snapshot's random `memory_id`, also in the vmstate |
//! | 24 | 8 | `memory_bytes`, also in the vmstate |
//!
//! A snapshot directory (`ctl snapshot DIR`, `PUT /snapshot/create {"snapshot_dir"}`) is
//! written as a whole into a sibling temporary directory, each file fsynced, and then swapped
//! with DIR in one `renameat2(RENAME_EXCHANGE)` (or renamed, if DIR did not exist): DIR is at
//! every moment the old snapshot or the new one. Two separately named files (Firecracker's
//! `snapshot_path` and `mem_file_path`) are each replaced atomically (temporary name, fsync,
//! rename), memory first; the vmstate holds the memory's size and checksum, so a pair torn by
//! a kill between the two renames is refused at restore rather than run (neither snapshot is
//! then restorable: the directory form has no such window).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::VmSnapshot;

pub const MAGIC: [u8; 8] = *b"FLUKESNP";
/// 2: memory checksummed per chunk, the memory file's trailer; 1 (a whole-file CRC) is
/// not read.
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 24;
/// The largest vmstate body accepted (the real one is tens of KiB).
pub const MAX_BODY: u64 = 16 << 20;

/// The end of the memory file: which snapshot its RAM belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryTrailer {
    pub memory_id: u64,
    pub memory_bytes: u64,
}

pub const MEMORY_MAGIC: [u8; 8] = *b"FLUKEMEM";
pub const TRAILER_LEN: u64 = 32;

impl MemoryTrailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN as usize] {
        let mut out = [0u8; TRAILER_LEN as usize];
        out[..8].copy_from_slice(&MEMORY_MAGIC);
        out[8..12].copy_from_slice(&1u32.to_le_bytes());
        out[16..24].copy_from_slice(&self.memory_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.memory_bytes.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8; TRAILER_LEN as usize]) -> Result<MemoryTrailer, String> {
        if b[..8] != MEMORY_MAGIC {
            return Err("no fluke-vmm memory trailer at its end".into());
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != 1 || b[12..16] != [0; 4] {
            return Err(format!(
                "memory trailer version {version}, this fluke-vmm reads 1"
            ));
        }
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        Ok(MemoryTrailer {
            memory_id: word(16),
            memory_bytes: word(24),
        })
    }

    /// Reads the trailer of a memory file said to hold `memory_bytes` of RAM.
    pub fn read(file: &File, memory_bytes: u64) -> Result<MemoryTrailer, String> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut b, memory_bytes)
            .map_err(|e| format!("cannot read its trailer: {e}"))?;
        MemoryTrailer::decode(&b)
    }
}

/// The two files of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `DIR/vmstate` and `DIR/memory`, replaced together.
    Dir(PathBuf),
    /// Separately named files, each replaced atomically.
    Files { vmstate: PathBuf, memory: PathBuf },
}

impl Target {
    pub fn vmstate(&self) -> PathBuf {
        match self {
            Target::Dir(d) => d.join("vmstate"),
            Target::Files { vmstate, .. } => vmstate.clone(),
        }
    }

    pub fn memory(&self) -> PathBuf {
        match self {
            Target::Dir(d) => d.join("memory"),
            Target::Files { memory, .. } => memory.clone(),
        }
    }
}

/// Encodes a vmstate file.
pub fn encode(snapshot: &VmSnapshot) -> Result<Vec<u8>, String> {
    let body = serde_json::to_vec(snapshot).map_err(|e| format!("cannot encode the state: {e}"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a vmstate file, refusing anything that is not exactly what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<VmSnapshot, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "truncated: {} bytes, the header alone is {HEADER_LEN}",
            bytes.len()
        ));
    }
    if bytes[..8] != MAGIC {
        return Err("not a fluke-vmm snapshot (bad magic)".into());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let version = word(8);
    if version != VERSION {
        return Err(format!(
            "format version {version}, this fluke-vmm reads version {VERSION}"
        ));
    }
    let crc = word(12);
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or([0; 8]));
    if len > MAX_BODY {
        return Err(format!(
            "state of {len} bytes, more than the {MAX_BODY} allowed"
        ));
    }
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(format!(
            "truncated or padded: the header says {len} bytes of state, the file has {}",
            body.len()
        ));
    }
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch: the state is corrupt".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("unreadable state: {e}"))
}

/// Reads and decodes a vmstate file.
pub fn read_vmstate(path: &Path) -> Result<VmSnapshot, String> {
    // A FIFO would block the open, a device never end: only regular files are read.
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    Read::by_ref(&mut f)
        .take(MAX_BODY + HEADER_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A crash point for the tests of atomic writing: with `FLUKE_SNAPSHOT_CRASH_AT=<point>`
/// in its environment the VMM kills itself (SIGKILL, as `kill -9` would) there.
fn crash_point(point: &str) {
    if std::env::var("FLUKE_SNAPSHOT_CRASH_AT").is_ok_and(|p| p == point) {
        // SAFETY: raise has no memory-safety preconditions; SIGKILL ends the process here.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("cannot {what} {}: {e}", path.display())
}

/// Writes `bytes` (given as pieces, written in turn) to a new file `path` and fsyncs it.
fn write_synced(path: &Path, pieces: &[&[u8]]) -> Result<(), String> {
    let mut f = File::create(path).map_err(|e| io("create", path, e))?;
    for p in pieces {
        f.write_all(p).map_err(|e| io("write", path, e))?;
    }
    f.sync_all().map_err(|e| io("sync", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes a snapshot: its vmstate bytes and guest memory (given as pieces: the RAM regions).
pub fn write(target: &Target, vmstate: &[u8], memory: &[&[u8]]) -> Result<(), String> {
    match target {
        Target::Dir(dir) => write_dir(dir, vmstate, memory),
        Target::Files {
            vmstate: vpath,
            memory: mpath,
        } => {
            let tmp = |p: &Path| {
                let mut name = p.as_os_str().to_owned();
                name.push(format!(".tmp-{}", std::process::id()));
                PathBuf::from(name)
            };
            let (vtmp, mtmp) = (tmp(vpath), tmp(mpath));
            remove_stale_temporaries(vpath, Leftover::Vmstate);
            remove_stale_temporaries(mpath, Leftover::Memory);
            write_synced(&mtmp, memory)?;
            crash_point("memory-written");
            write_synced(&vtmp, &[vmstate])?;
            crash_point("vmstate-written");
            std::fs::rename(&mtmp, mpath).map_err(|e| io("rename into place", mpath, e))?;
            crash_point("memory-renamed");
            std::fs::rename(&vtmp, vpath).map_err(|e| io("rename into place", vpath, e))?;
            sync_dir(&parent(mpath))?;
            sync_dir(&parent(vpath))
        }
    }
}

fn write_dir(dir: &Path, vmstate: &[u8], memory: &[&[u8]]) -> Result<(), String> {
    let name = dir
        .file_name()
        .ok_or_else(|| format!("{}: not a directory name", dir.display()))?;
    let parent = parent(dir);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    remove_stale_temporaries(
        &parent.join({
            let mut hidden = std::ffi::OsString::from(".");
            hidden.push(name);
            hidden
        }),
        Leftover::Dir,
    );
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io("create", &tmp, e))?;
    write_synced(&tmp.join("memory"), memory)?;
    crash_point("memory-written");
    write_synced(&tmp.join("vmstate"), &[vmstate])?;
    sync_dir(&tmp)?;
    crash_point("vmstate-written");
    if dir.symlink_metadata().is_ok() {
        exchange(&tmp, dir)?;
        crash_point("exchanged");
        sync_dir(&parent)?;
        // `tmp` now holds the previous snapshot.
        std::fs::remove_dir_all(&tmp).map_err(|e| io("remove the previous snapshot", &tmp, e))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| io("rename into place", dir, e))?;
    }
    sync_dir(&parent)
}

/// What a temporary left beside a snapshot path would be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leftover {
    /// `.DIR.tmp-<pid>`: a directory of `vmstate` and `memory` at most.
    Dir,
    /// `VMSTATE.tmp-<pid>`: a file starting with the vmstate magic.
    Vmstate,
    /// `MEMORY.tmp-<pid>`: a file ending in a memory trailer.
    Memory,
}

/// Whether `path` is, by its content, a temporary a VMM of ours wrote.
fn is_our_leftover(path: &Path, kind: Leftover) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(meta) = path.symlink_metadata() else {
        return false;
    };
    let starts_with_magic = |p: &Path| {
        let mut head = [0u8; 8];
        File::open(p)
            .and_then(|f| f.read_exact_at(&mut head, 0))
            .is_ok_and(|()| head == MAGIC)
    };
    let ends_in_trailer = |p: &Path, len: u64| {
        len >= TRAILER_LEN
            && File::open(p).is_ok_and(|f| {
                let mut t = [0u8; TRAILER_LEN as usize];
                f.read_exact_at(&mut t, len - TRAILER_LEN).is_ok()
                    && MemoryTrailer::decode(&t).is_ok_and(|t| t.memory_bytes == len - TRAILER_LEN)
            })
    };
    match kind {
        // Nothing but `vmstate` and `memory`, and at least one of them recognisable.
        Leftover::Dir => {
            let Ok(entries) = std::fs::read_dir(path) else {
                return false;
            };
            let (mut recognised, mut foreign) = (false, false);
            for e in entries.flatten() {
                let (name, p) = (e.file_name(), e.path());
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                match (name.to_str(), e.file_type().is_ok_and(|t| t.is_file())) {
                    (Some("vmstate"), true) => recognised |= starts_with_magic(&p),
                    (Some("memory"), true) => recognised |= ends_in_trailer(&p, len),
                    _ => foreign = true,
                }
            }
            meta.is_dir() && recognised && !foreign
        }
        Leftover::Vmstate => meta.is_file() && starts_with_magic(path),
        Leftover::Memory => meta.is_file() && ends_in_trailer(path, meta.len()),
    }
}

/// Removes what VMMs killed while writing `path` left beside it: `<path>.tmp-<pid>`
/// whose process is gone (a live one may be writing its own) and whose content shows it
/// is one (a name alone proves nothing: `backup.tmp-2024` could be anyone's). A memory
/// temporary cut short before its trailer cannot be told apart and is left. The pid is
/// judged in this pid namespace: VMMs of other hosts or containers writing the same
/// directory are not told apart.
fn remove_stale_temporaries(path: &Path, kind: Leftover) {
    let (Some(name), dir) = (path.file_name(), parent(path)) else {
        return;
    };
    let mut prefix = name.as_bytes().to_vec();
    prefix.extend_from_slice(b".tmp-");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .as_bytes()
            .strip_prefix(prefix.as_slice())
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
            .filter(|&p| p > 0)
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let stale = entry.path();
        if !gone || !is_our_leftover(&stale, kind) {
            continue;
        }
        let removed = match kind {
            Leftover::Dir => std::fs::remove_dir_all(&stale),
            Leftover::Vmstate | Leftover::Memory => std::fs::remove_file(&stale),
        };
        match removed {
            Ok(()) => log::info!(
                "snapshot: removed {}, left by a VMM that died writing it",
                stale.display()
            ),
            Err(e) => log::warn!("snapshot: cannot remove {}: {e}", stale.display()),
        }
    }
}

/// Swaps two paths atomically (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> Result<(), String> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are NUL-terminated paths that live across the call; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(io(
            "swap the new snapshot into",
            b,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmSnapshot {
        VmSnapshot::for_tests()
    }

    #[test]
    fn a_vmstate_round_trips_and_every_corruption_is_refused() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(encode(&decode(&bytes).unwrap()).unwrap(), bytes);
        let refused = |b: &[u8]| decode(b).unwrap_err();
        assert!(refused(&bytes[..10]).contains("truncated"));
        assert!(refused(&bytes[..bytes.len() - 1]).contains("truncated"));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(refused(&bad).contains("magic"));
        let mut bad = bytes.clone();
        bad[8] = 1;
        assert!(refused(&bad).contains("version 1"));
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        assert!(refused(&bad).contains("checksum"));
        let mut bad = bytes.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(refused(&bad).contains("more than"));
        assert!(refused(b"").contains("truncated"));
    }

    #[test]
    fn a_memory_trailer_round_trips_and_is_refused_when_foreign() {
        let t = MemoryTrailer {
            memory_id: 0xfeed_f00d,
            memory_bytes: 128 << 20,
        };
        let b = t.encode();
        assert_eq!(MemoryTrailer::decode(&b), Ok(t));
        let mut bad = b;
        bad[0] = 0;
        assert!(MemoryTrailer::decode(&bad)
            .unwrap_err()
            .contains("no fluke-vmm"));
        let mut bad = b;
        bad[8] = 2;
        assert!(MemoryTrailer::decode(&bad)
            .unwrap_err()
            .contains("version 2"));
    }

    #[test]
    fn a_directory_snapshot_replaces_the_old_one_whole() {
        let base = std::env::temp_dir().join(format!("fluke-snapfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("snap");
        let target = Target::Dir(dir.clone());
        write(&target, b"one", &[b"mem", b"ory1"]).unwrap();
        assert_eq!(std::fs::read(dir.join("memory")).unwrap(), b"memory1");
        write(&target, b"two", &[b"memory2"]).unwrap();
        assert_eq!(std::fs::read(dir.join("vmstate")).unwrap(), b"two");
        assert_eq!(std::fs::read(dir.join("memory")).unwrap(), b"memory2");
        // No temporary left beside it.
        let names: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["snap"]);
        let files = Target::Files {
            vmstate: base.join("vs"),
            memory: base.join("mem"),
        };
        write(&files, b"three", &[b"memory3"]).unwrap();
        assert_eq!(std::fs::read(base.join("vs")).unwrap(), b"three");
        // What a VMM killed mid-write left (its process gone) is removed by the next write;
        // a live process's temporaries, unrelated names, and anything whose content does
        // not show it is a snapshot's are not.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::os::unix::process::parent_id(); // alive: it waits for this test
        let left_dir = base.join(format!(".snap.tmp-{dead}"));
        std::fs::create_dir(&left_dir).unwrap();
        std::fs::write(left_dir.join("vmstate"), MAGIC).unwrap(); // cut short after its magic
        std::fs::write(left_dir.join("memory"), b"ram").unwrap();
        std::fs::write(
            base.join(format!("vs.tmp-{dead}")),
            encode(&sample()).unwrap(),
        )
        .unwrap();
        let mut mem = vec![7u8; 4096];
        mem.extend_from_slice(
            &MemoryTrailer {
                memory_id: 1,
                memory_bytes: 4096,
            }
            .encode(),
        );
        std::fs::write(base.join(format!("mem.tmp-{dead}")), &mem).unwrap();
        std::fs::write(base.join(format!("vs.tmp-{live}")), b"x").unwrap();
        std::fs::write(base.join("vs.tmp-notapid"), b"x").unwrap();
        // Empty ones, or a directory holding only an unrecognisable memory file: kept.
        std::fs::write(base.join(format!("vs.tmp-{}", dead + 4)), b"").unwrap();
        let bare_dir = base.join(format!(".snap.tmp-{}", dead + 5));
        std::fs::create_dir(&bare_dir).unwrap();
        std::fs::write(bare_dir.join("memory"), b"raw").unwrap();
        // Not ours, though named like ours: someone's directory and files.
        let theirs = base.join(format!("vs.tmp-{}", dead + 1));
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("thesis.txt"), b"precious").unwrap();
        std::fs::write(base.join(format!("mem.tmp-{}", dead + 2)), b"raw bytes").unwrap();
        let their_dir = base.join(format!(".snap.tmp-{}", dead + 3));
        std::fs::create_dir(&their_dir).unwrap();
        std::fs::write(their_dir.join("notes"), b"mine").unwrap();
        write(&target, b"four", &[b"memory4"]).unwrap();
        write(&files, b"five", &[b"memory5"]).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected = ["mem", "snap", "vs", "vs.tmp-notapid"]
            .map(String::from)
            .to_vec();
        expected.push(format!("vs.tmp-{live}"));
        expected.push(format!("vs.tmp-{}", dead + 1));
        expected.push(format!("mem.tmp-{}", dead + 2));
        expected.push(format!(".snap.tmp-{}", dead + 3));
        expected.push(format!("vs.tmp-{}", dead + 4));
        expected.push(format!(".snap.tmp-{}", dead + 5));
        expected.sort();
        assert_eq!(names, expected);
        let _ = std::fs::remove_dir_all(&base);
    }
}
