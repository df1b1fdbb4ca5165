//! Processes: spawn, wait, kill, list. Under a process manager (the program holds its port
//! at [`procmgr::PORT_NAME`], however many nesters lie between) every call goes to the
//! manager; a program started bare by the kernel uses the kernel's `spawn` and `wait`,
//! and has no `kill` or `list` (`NoSuchCall`). A program cannot tell which it got except
//! by those two.

use crate::sys::{self, NO_CAP};
use crate::Error;
use core::sync::atomic::{AtomicU8, Ordering};
pub use fluke_abi::procmgr::{self, ProcInfo, KILLED_STATUS};

static MANAGED: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 yes, 2 no

/// Whether this program runs under a process manager.
pub fn managed() -> bool {
    match MANAGED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let yes = sys::holds(procmgr::PORT_NAME, fluke_abi::syscall::objstate::PORT);
            MANAGED.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
    }
}

fn request(words: [u64; 4], cap: u64, data: &[u8], reply: &mut [u8]) -> Result<sys::Msg, Error> {
    let m = sys::ipc_call_data(procmgr::PORT_NAME, words, cap, data, reply)?;
    procmgr::check_reply(m.words[0])?;
    Ok(m)
}

/// Starts program `name` with `args`; `cap` (moved, if given) becomes the child's name 0.
/// Returns the process id for [`wait`] and [`kill`].
pub fn spawn(name: &str, args: &[&str], cap: Option<u64>) -> Result<u64, Error> {
    if !managed() {
        let caps = cap.map(|c| [c]);
        return sys::spawn_with_caps(name, args, caps.as_ref().map_or(&[], |c| &c[..]));
    }
    let mut buf = [0u8; 1024];
    let mut len = 0;
    for w in core::iter::once(name).chain(args.iter().copied()) {
        let b = w.as_bytes();
        if len + b.len() + 1 > buf.len() {
            return Err(Error::InvalidArgument);
        }
        buf[len..len + b.len()].copy_from_slice(b);
        len += b.len() + 1;
    }
    let m = request(
        [procmgr::SPAWN, 0, 0, 0],
        cap.unwrap_or(NO_CAP),
        &buf[..len],
        &mut [],
    )?;
    Ok(m.words[1])
}

/// Waits for process `id` to end and returns its exit status (once: it is then forgotten).
pub fn wait(id: u64) -> Result<i32, Error> {
    if !managed() {
        return sys::wait(id);
    }
    let handle = request([procmgr::WAIT_HANDLE, id, 0, 0], NO_CAP, &[], &mut [])?.cap;
    loop {
        // The manager holds the mutex while the process runs.
        let locked = sys::mutex_lock(handle);
        if locked.is_ok() {
            let _ = sys::mutex_unlock(handle);
        }
        let m = request(
            [procmgr::STATUS, id, procmgr::REAP, 0],
            NO_CAP,
            &[],
            &mut [],
        );
        match m {
            Ok(m) if m.words[1] == procmgr::EXITED => {
                let _ = sys::cap_drop(handle);
                return Ok(m.words[2] as i64 as i32);
            }
            // Taken before the manager's helper held it: look again shortly.
            Ok(_) => sys::yield_now(),
            Err(e) => {
                let _ = sys::cap_drop(handle);
                return Err(e);
            }
        }
    }
}

/// Ends process `id` (its status becomes [`KILLED_STATUS`]).
pub fn kill(id: u64) -> Result<(), Error> {
    if !managed() {
        return Err(Error::NoSuchCall);
    }
    request([procmgr::KILL, id, 0, 0], NO_CAP, &[], &mut []).map(|_| ())
}

/// Fills `out` with the manager's processes; returns how many there are in `out`.
pub fn list(out: &mut [ProcInfo]) -> Result<usize, Error> {
    if !managed() {
        return Err(Error::NoSuchCall);
    }
    let mut buf = [0u8; fluke_abi::syscall::ipc::MAX_DATA];
    let m = request([procmgr::LIST, 0, 0, 0], NO_CAP, &[], &mut buf)?;
    let got = (m.data_got as usize).min(buf.len()) / ProcInfo::SIZE;
    let n = (m.words[1] as usize).min(got).min(out.len());
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        *slot = ProcInfo::from_bytes(&buf[i * ProcInfo::SIZE..]).ok_or(Error::InvalidArgument)?;
    }
    Ok(n)
}
