//! Kicking the vCPU thread out of KVM_RUN: the watchdog and the control channel (pause)
//! send it a real-time signal.
//!
//! The signal is blocked on the vCPU thread while it runs VMM code and unblocked only inside
//! KVM_RUN (KVM_SET_SIGNAL_MASK). So a kick never gets lost in the window between the run
//! loop's last look at its requests and its entry into KVM_RUN: it stays pending, and the
//! next KVM_RUN returns EINTR at once. That is what `kvm_run.immediate_exit` is for, without
//! a signal handler writing into the `kvm_run` page while the run loop may hold a Rust
//! reference to it. After an interrupted KVM_RUN the run loop takes the pending signal
//! ([`take_pending`]), or every later KVM_RUN would return EINTR too.

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being delivered is what interrupts KVM_RUN (or a blocking syscall).
}

/// Installs the no-op handler. Without a handler the signal would kill the process; with
/// SIG_IGN it would not interrupt KVM_RUN. Idempotent.
pub fn install_handler() -> Result<(), i32> {
    register_signal_handler(signal(), handle_kick).map_err(|e| e.errno())
}

/// Sends the kick to `thread`. Returns pthread_kill's error number on failure.
///
/// # Safety
/// `thread` must be a live thread of this process (pthread_kill on a thread that has ended
/// is undefined behaviour).
pub unsafe fn kick(thread: libc::pthread_t) -> Result<(), i32> {
    // SAFETY: the caller guarantees `thread` is alive; the handler is a no-op.
    match unsafe { libc::pthread_kill(thread, signal()) } {
        0 => Ok(()),
        rc => Err(rc),
    }
}

fn kick_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal());
        set
    }
}

/// Makes the calling thread (the vCPU thread) hear kicks only inside KVM_RUN on `vcpu`:
/// blocks the signal here and gives KVM the thread's mask without it for the run.
pub fn deliver_only_in_kvm_run(vcpu: &VcpuFd) -> Result<(), i32> {
    install_handler()?;
    let kick = kick_set();
    // SAFETY: a zeroed sigset_t is a valid out-parameter.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: reads this thread's mask into `mask`, changing nothing.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) };
    if rc != 0 {
        return Err(rc);
    }
    // The mask inside KVM_RUN: the thread's own, with the kick signal deliverable. KVM is
    // told first: blocking the signal without it would leave kicks undeliverable.
    // SAFETY: `mask` is a valid set.
    unsafe { libc::sigdelset(&mut mask, signal()) };
    set_kvm_signal_mask(vcpu, &mask)?;
    // SAFETY: changes only this thread's mask; `kick` is a valid set.
    match unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &kick, std::ptr::null_mut()) } {
        0 => Ok(()),
        rc => Err(rc),
    }
}

/// The kernel's sigset is 64 bits on x86-64 (KVM checks `len == sizeof(sigset_t)` of the
/// kernel, 8, not glibc's 128-byte one).
const KERNEL_SIGSET_BYTES: usize = 8;

#[repr(C)]
struct KvmSignalMask {
    len: u32,
    sigset: [u8; KERNEL_SIGSET_BYTES],
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    kvm_bindings::KVMIO,
    0x8b,
    kvm_bindings::kvm_signal_mask
);

fn set_kvm_signal_mask(vcpu: &VcpuFd, set: &libc::sigset_t) -> Result<(), i32> {
    let mut mask = KvmSignalMask {
        len: KERNEL_SIGSET_BYTES as u32,
        sigset: [0; KERNEL_SIGSET_BYTES],
    };
    // The first 64 bits of glibc's sigset_t are the kernel's (signal n is bit n - 1).
    // SAFETY: sigset_t is at least 8 bytes of plain data.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (set as *const libc::sigset_t).cast::<u8>(),
            KERNEL_SIGSET_BYTES,
        )
    };
    mask.sigset.copy_from_slice(bytes);
    // SAFETY: KVM_SET_SIGNAL_MASK reads a kvm_signal_mask header and `len` bytes after it,
    // all inside `mask`; it changes no memory of ours.
    let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_SET_SIGNAL_MASK(), &mask) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    Ok(())
}

/// Takes every pending kick of the calling thread (blocked there: see the module docs), so
/// the next KVM_RUN enters the guest.
pub fn take_pending() {
    let set = kick_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: sigtimedwait with a zero timeout only dequeues a pending signal of `set` (real-
    // time signals queue, so loop until none is left); a null siginfo pointer is allowed.
    while unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) } == signal() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_kick_stays_pending_until_taken() {
        std::thread::spawn(|| {
            install_handler().unwrap();
            let set = kick_set();
            // SAFETY: blocks the signal on this test thread only.
            assert_eq!(
                unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) },
                0
            );
            // SAFETY: this thread is alive.
            unsafe { kick(libc::pthread_self()) }.unwrap();
            let pending = || {
                // SAFETY: sigpending writes only the local set.
                unsafe {
                    let mut p: libc::sigset_t = std::mem::zeroed();
                    libc::sigpending(&mut p);
                    libc::sigismember(&p, signal()) == 1
                }
            };
            assert!(pending());
            take_pending();
            assert!(!pending());
        })
        .join()
        .unwrap();
    }
}
