//! Seccomp: each VMM thread confines itself, once set up and before the guest runs, to the
//! system calls its job needs (`seccompiler`), as Firecracker's threads do. A call outside
//! the thread's list traps (SIGSYS); the handler names the thread and the call and ends the
//! VMM (status 126). `--seccomp log` lets such calls through and has the kernel log them
//! (audit); `--seccomp off` installs nothing.
//!
//! Filters stack: a thread spawned after its parent confined itself is held to both lists.
//! The VMM's threads are all spawned before the vCPU thread (the main thread) confines
//! itself, right before its first KVM_RUN.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// `--seccomp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// A call outside the thread's list stops the VMM with a report.
    On,
    /// Such calls are allowed and logged by the kernel (audit).
    Log,
    /// No filters.
    Off,
}

/// The VMM's threads, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ThreadKind {
    Vcpu = 1,
    Api,
    Watchdog,
    Stdin,
    Console,
    HostPager,
    RestorePager,
    Gdb,
    VirtioBlock,
    Channel,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::Watchdog => "watchdog",
            ThreadKind::Stdin => "stdin",
            ThreadKind::Console => "console",
            ThreadKind::HostPager => "host pager",
            ThreadKind::RestorePager => "restore pager",
            ThreadKind::Gdb => "gdb",
            ThreadKind::VirtioBlock => "virtio-blk",
            ThreadKind::Channel => "channel",
        }
    }

    const ALL: [ThreadKind; 10] = [
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Watchdog,
        ThreadKind::Stdin,
        ThreadKind::Console,
        ThreadKind::HostPager,
        ThreadKind::RestorePager,
        ThreadKind::Gdb,
        ThreadKind::VirtioBlock,
        ThreadKind::Channel,
    ];
}

/// The process's mode, set once from the command line before any thread starts.
static MODE: OnceLock<SeccompMode> = OnceLock::new();

/// Sets the mode (the first call wins) and, unless it is off, the SIGSYS handler.
pub fn init(mode: SeccompMode) -> Result<(), String> {
    let _ = MODE.set(mode);
    if mode == SeccompMode::On {
        install_sigsys_handler()?;
        // A panic's backtrace (RUST_BACKTRACE) reads the executable and /proc, which a
        // confined thread may not: it would end as a seccomp report instead of the panic's
        // own message. Confined threads print the message alone.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONFINED_AS.with(|c| c.get()) != 0 {
                crate::logger::to_stderr(&format!(
                    "fluke-vmm: a VMM thread panicked (no backtrace under seccomp): {info}\n"
                ));
            } else {
                default_hook(info);
            }
        }));
    }
    Ok(())
}

fn mode() -> SeccompMode {
    // Not set (a unit test, `bench`'s own process): nothing is filtered.
    MODE.get().copied().unwrap_or(SeccompMode::Off)
}

thread_local! {
    /// Which list this thread is held to, for the SIGSYS report (a const-initialised
    /// thread local: reading it in a signal handler allocates nothing).
    static CONFINED_AS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Confines the calling thread to `kind`'s list (per the process's mode).
pub fn confine(kind: ThreadKind) -> Result<(), String> {
    let action = match mode() {
        SeccompMode::Off => return Ok(()),
        SeccompMode::On => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let program = filter(kind, action.clone())?;
    CONFINED_AS.with(|c| c.set(kind as u8));
    seccompiler::apply_filter(&program).map_err(|e| {
        format!(
            "cannot install the {} thread's seccomp filter: {e} (where seccomp is not available, --seccomp off)",
            kind.name()
        )
    })?;
    log::debug!(
        "seccomp: the {} thread keeps to its list ({})",
        kind.name(),
        if action == SeccompAction::Log {
            "log"
        } else {
            "on"
        }
    );
    probe_if_asked(kind);
    Ok(())
}

/// [`confine`] for a helper thread, which has no one to return an error to: a filter that
/// cannot be installed ends the VMM with a report.
pub fn confine_or_exit(kind: ThreadKind) {
    if let Err(e) = confine(kind) {
        crate::logger::to_stderr(&format!("fluke-vmm: error: {e}\n"));
        std::process::exit(fluke_abi::status::VMM_ERROR);
    }
}

/// For the test that shows a forbidden call is stopped: with
/// `FLUKE_SECCOMP_PROBE=<thread name>` in the environment, that thread makes a call outside
/// its list (`socket(AF_INET)`, which no VMM thread needs) right after confining itself.
fn probe_if_asked(kind: ThreadKind) {
    // `panic:<thread>`: that thread panics instead (what a panic prints under seccomp).
    if std::env::var("FLUKE_SECCOMP_PROBE")
        .is_ok_and(|t| t.strip_prefix("panic:") == Some(kind.name()))
    {
        panic!("seccomp probe");
    }
    if std::env::var("FLUKE_SECCOMP_PROBE").is_ok_and(|t| t == kind.name()) {
        // SAFETY: socket has no memory-safety preconditions; the fd, if any, is closed.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: closes the descriptor just made.
            unsafe { libc::close(fd) };
        }
    }
}

/// System calls every thread makes: memory, locks, signals, time, its own end, the SIGSYS
/// report.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    // Debug builds of std check a descriptor with F_GETFD before closing it.
    libc::SYS_fcntl,
];

/// Files: the vCPU thread writes snapshots and statistics, removes the API socket, reads
/// /proc/self for its memory figures.
const FILES: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_mkdirat,
    libc::SYS_mkdir,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_rmdir,
    libc::SYS_access,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_getdents64,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_ftruncate,
    libc::SYS_getrandom,
    libc::SYS_mincore,
    libc::SYS_readlinkat,
];

/// A thread serving a listening socket: accept, wait, read, write, time-outs, close.
const SOCKET_SERVER: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
];

/// Which `ioctl`s a thread may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ioctl {
    /// Every request of one ioctl type (the byte in bits 8..15 of the request).
    OfType(u64),
    /// One request.
    Exactly(u64),
}

impl Ioctl {
    fn rule(self) -> Result<SeccompRule, String> {
        let (op, value) = match self {
            Ioctl::OfType(ty) => (SeccompCmpOp::MaskedEq(0xff00), ty << 8),
            Ioctl::Exactly(request) => (SeccompCmpOp::Eq, request),
        };
        let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, op, value)
            .map_err(|e| e.to_string())?;
        SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
    }
}

const KVM_IOCTLS: Ioctl = Ioctl::OfType(0xae);
const UFFD_IOCTLS: Ioctl = Ioctl::OfType(0xaa);
/// `set_nonblocking` on a socket.
const FIONBIO: Ioctl = Ioctl::Exactly(libc::FIONBIO);

/// The list of `kind`: every call allowed outright, and the `ioctl`s it may make.
fn allowed(kind: ThreadKind) -> (Vec<i64>, Vec<Ioctl>) {
    let mut calls = COMMON.to_vec();
    let mut ioctl_types = Vec::new();
    match kind {
        ThreadKind::Vcpu => {
            calls.extend_from_slice(FILES);
            // Kicks and the watchdog's signal reach this thread; it joins the others.
            calls.extend_from_slice(&[libc::SYS_poll, libc::SYS_ppoll, libc::SYS_rt_sigtimedwait]);
            ioctl_types.push(KVM_IOCTLS);
        }
        // The API's and the gdb stub's connections (the stub's KVM part is the vCPU's).
        ThreadKind::Api | ThreadKind::Gdb => {
            ioctl_types.push(FIONBIO);
            calls.extend_from_slice(SOCKET_SERVER);
        }
        ThreadKind::Watchdog => {}
        ThreadKind::Stdin => calls.extend_from_slice(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_fcntl,
            libc::SYS_poll,
        ]),
        ThreadKind::Console => calls.extend_from_slice(&[libc::SYS_poll, libc::SYS_fsync]),
        ThreadKind::HostPager => {
            calls.extend_from_slice(&[libc::SYS_poll, libc::SYS_pread64, libc::SYS_pwrite64]);
            ioctl_types.push(UFFD_IOCTLS);
        }
        // Waits on its queues' eventfds (read, write: in COMMON), does the guest's I/O on
        // its drive, and raises the interrupt by writing the irqfd.
        ThreadKind::VirtioBlock => calls.extend_from_slice(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
        ]),
        // Holds a channel's socket: accepts the other VMM (getsockopt: SO_PEERCRED, its
        // user, against geteuid), sends it the descriptors
        // (sendmsg, SCM_RIGHTS), reads its answer and waits for its end (epoll); raises
        // the guest's line by writing an eventfd. No ioctl (the listener was made
        // non-blocking before).
        ThreadKind::Channel => calls.extend_from_slice(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_accept4,
            libc::SYS_getsockopt,
            libc::SYS_geteuid,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_recvfrom,
        ]),
        ThreadKind::RestorePager => {
            calls.extend_from_slice(&[libc::SYS_poll, libc::SYS_pread64]);
            ioctl_types.push(UFFD_IOCTLS);
        }
    }
    calls.sort_unstable();
    calls.dedup();
    (calls, ioctl_types)
}

/// Builds `kind`'s filter; a call outside the list gets `mismatch`.
fn filter(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let (calls, ioctl_types) = allowed(kind);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.into_iter().map(|c| (c, Vec::new())).collect();
    if !ioctl_types.is_empty() {
        let by_type = ioctl_types
            .into_iter()
            .map(Ioctl::rule)
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, by_type);
    }
    let arg_is = |index: u8, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| e.to_string())
    };
    // Signals only within this process: the kicks, the watchdog's, abort()'s own.
    rules.insert(
        libc::SYS_tgkill,
        vec![arg_is(0, u64::from(std::process::id()))?],
    );
    if kind == ThreadKind::Vcpu {
        // Whether a process lives (kill with signal 0: a snapshot's stale temporaries).
        rules.insert(libc::SYS_kill, vec![arg_is(1, 0)?]);
    }
    SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| format!("the {} thread's seccomp filter: {e}", kind.name()))
}

fn install_sigsys_handler() -> Result<(), String> {
    // SAFETY: a zeroed sigaction is valid; the handler only formats into a stack buffer,
    // write(2)s it and _exit(2)s, all async-signal-safe and in every thread's list.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "cannot set the SIGSYS handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86-64 (after signo, errno, code and
/// padding to 16, then `_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; si_syscall is an int at
    // SI_SYSCALL_OFFSET in it.
    let call = unsafe { *(info as *const u8).add(SI_SYSCALL_OFFSET).cast::<i32>() };
    let kind = CONFINED_AS.with(|c| c.get());
    let thread = ThreadKind::ALL
        .iter()
        .find(|k| **k as u8 == kind)
        .map_or("unconfined", |k| k.name());
    let mut buf = [0u8; 256];
    let mut w = Cursor {
        buf: &mut buf,
        len: 0,
    };
    w.put(b"fluke-vmm: error: the ");
    w.put(thread.as_bytes());
    w.put(b" thread made system call ");
    w.put_num(call as i64);
    w.put(b", outside its seccomp filter; stopping (--seccomp log lets it through and logs it)\n");
    let len = w.len;
    // SAFETY: writes our own buffer to stderr and ends the process; both async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(fluke_abi::status::VMM_ERROR);
    }
}

/// Formatting without allocation, for the signal handler.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn put_num(&mut self, mut v: i64) {
        if v < 0 {
            self.put(b"-");
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }
}

/// ns per allowed system call added by the vCPU thread's filter: a raw `clock_gettime`
/// timed in two threads, one confined, in alternating batches (`vmm.seccomp_overhead`).
pub fn overhead_ns() -> f64 {
    const BATCH: u32 = 20_000;
    let time_batch = || {
        let start = std::time::Instant::now();
        for _ in 0..BATCH {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: the raw system call (not the vDSO) writes one timespec we own.
            unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
        }
        start.elapsed().as_nanos() as f64 / f64::from(BATCH)
    };
    let spawn = |confined: bool| {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<f64>();
        let handle = std::thread::spawn(move || {
            if confined {
                let Ok(program) = filter(ThreadKind::Vcpu, SeccompAction::Trap) else {
                    return;
                };
                if seccompiler::apply_filter(&program).is_err() {
                    return;
                }
            }
            while go_rx.recv().unwrap_or(false) {
                if done_tx.send(time_batch()).is_err() {
                    return;
                }
            }
        });
        (go_tx, done_rx, handle)
    };
    let (free_go, free_done, free) = spawn(false);
    let (conf_go, conf_done, conf) = spawn(true);
    let mut diffs = Vec::new();
    for _ in 0..7 {
        let batch = |go: &std::sync::mpsc::Sender<bool>, done: &std::sync::mpsc::Receiver<f64>| {
            go.send(true).ok()?;
            done.recv().ok()
        };
        let (Some(a), Some(b)) = (batch(&free_go, &free_done), batch(&conf_go, &conf_done)) else {
            break;
        };
        diffs.push(b - a);
    }
    let _ = (free_go.send(false), conf_go.send(false));
    let _ = (free.join(), conf.join());
    diffs.sort_by(f64::total_cmp);
    diffs.get(diffs.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_threads_filter_builds_and_the_vcpu_may_use_kvm_ioctls_only() {
        for kind in ThreadKind::ALL {
            filter(kind, SeccompAction::Trap).unwrap();
            let (calls, ioctls) = allowed(kind);
            assert!(calls.contains(&libc::SYS_exit_group) && calls.contains(&libc::SYS_write));
            assert!(
                !calls.contains(&libc::SYS_ioctl),
                "{kind:?}: ioctl only by type"
            );
            assert!(!calls.contains(&libc::SYS_socket), "{kind:?}");
            // Signals are allowed only by their arguments (filter()), never outright.
            assert!(!calls.contains(&libc::SYS_tgkill) && !calls.contains(&libc::SYS_kill));
            assert!(!calls.contains(&libc::SYS_execve), "{kind:?}");
            let expected: &[Ioctl] = match kind {
                ThreadKind::Vcpu => &[KVM_IOCTLS],
                ThreadKind::Api | ThreadKind::Gdb => &[FIONBIO],
                ThreadKind::HostPager | ThreadKind::RestorePager => &[UFFD_IOCTLS],
                _ => &[],
            };
            assert_eq!(ioctls, expected, "{kind:?}");
        }
    }

    #[test]
    fn a_confined_thread_may_make_its_calls_and_is_stopped_at_others() {
        // In a thread of its own, with Errno instead of Trap so the test process lives.
        std::thread::spawn(|| {
            let program = filter(ThreadKind::Watchdog, SeccompAction::Errno(1)).unwrap();
            seccompiler::apply_filter(&program).unwrap();
            // SAFETY: plain system calls; the fd, if any, is closed.
            unsafe {
                assert!(libc::syscall(libc::SYS_gettid) > 0);
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                assert_eq!(fd, -1);
                assert_eq!(*libc::__errno_location(), 1);
                // An ioctl of any kind is refused here (the watchdog has none).
                assert_eq!(libc::ioctl(0, libc::FIONREAD, &mut 0i32), -1);
                // A signal to this process may be sent (signal 0: nothing happens), one to
                // another process may not.
                let me = libc::getpid();
                assert_eq!(
                    libc::syscall(libc::SYS_tgkill, me, libc::syscall(libc::SYS_gettid), 0),
                    0
                );
                assert_eq!(libc::syscall(libc::SYS_tgkill, 1, 1, 0), -1);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_report_formats_numbers_without_allocating() {
        let mut buf = [0u8; 32];
        let mut c = Cursor {
            buf: &mut buf,
            len: 0,
        };
        c.put(b"call ");
        c.put_num(41);
        c.put(b" ");
        c.put_num(-7);
        let len = c.len;
        assert_eq!(&buf[..len], b"call 41 -7");
    }
}
