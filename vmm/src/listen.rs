//! Unix-socket listeners that appear at their path only once they listen. `UnixListener::
//! bind` binds (the path exists) and then listens; a client that sees the path in between
//! (as scripts waiting for `--api-sock` or `--gdb` do) gets ECONNREFUSED. So the socket is
//! bound under a hidden sibling name, listens, and is then renamed into place without
//! replacing anything (renameat2 RENAME_NOREPLACE).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The hidden name `path`'s socket is bound under first.
fn temporary(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".{}.binding", std::process::id()));
    Some(path.with_file_name(hidden))
}

/// A listening socket at `path`, which must not exist (EEXIST if it does, even if it
/// appears meanwhile).
pub fn bind_listening(path: &Path) -> io::Result<UnixListener> {
    // sun_path holds 108 bytes: a hidden name that does not fit binds in place instead.
    let Some(tmp) = temporary(path).filter(|t| t.as_os_str().len() < 100) else {
        return UnixListener::bind(path);
    };
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))
    };
    let (from, to) = (c(&tmp)?, c(path)?);
    // SAFETY: both are NUL-terminated paths alive across the call; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_listening_when_its_path_appears_and_nothing_is_replaced() {
        let dir = std::env::temp_dir().join(format!("fluke-listen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let listener = bind_listening(&path).unwrap();
        // Connectable as soon as it exists; no hidden name left behind.
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(listener.accept().is_ok());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["api.sock"]);
        // An existing path is not replaced.
        let taken = dir.join("taken");
        std::fs::write(&taken, b"mine").unwrap();
        let e = bind_listening(&taken).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&taken).unwrap(), b"mine");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
