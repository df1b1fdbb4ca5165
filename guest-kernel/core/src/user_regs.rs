//! The checks on user registers a thread's state is set to (`thread_set_state`), and the
//! RFLAGS every return to user mode gets: nothing the kernel later loads from them may
//! fault in kernel mode or give user code a privilege.

use fluke_abi::syscall::layout::USER_END;
use fluke_abi::syscall::{Error, ThreadRegs};

/// RFLAGS bits user code may hold: CF PF AF ZF SF TF DF OF AC ID. IF is always set; IOPL,
/// NT, RF and VM never are (IOPL 3 would give user code port I/O natively). entry.S's
/// floor path has the same mask (`USER_RFLAGS_MASK`).
pub const USER_RFLAGS_MASK: u64 = 0x0024_0dd5;
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_FIXED1: u64 = 1 << 1;

/// The RFLAGS a thread returns to user mode with.
pub const fn sanitize_rflags(rflags: u64) -> u64 {
    (rflags & USER_RFLAGS_MASK) | RFLAGS_IF | RFLAGS_FIXED1
}

/// Whether `v` is a canonical 48-bit address.
pub const fn canonical(v: u64) -> bool {
    (((v << 16) as i64) >> 16) as u64 == v
}

/// Checks and sanitises registers a user supplies for a thread, on the way in: RIP must be
/// a user-half address, the FS and GS bases canonical (a non-canonical one makes the
/// kernel's WRFSBASE or WRMSR take a #GP; any canonical value is one user code could set
/// itself on kvm_pvm), and RFLAGS keeps only the bits user code may hold. A bad RSP only
/// faults in user mode. On error nothing is changed.
pub fn sanitize_regs(regs: &mut ThreadRegs) -> Result<(), Error> {
    if regs.rip >= USER_END || !canonical(regs.fs_base) || !canonical(regs.gs_base) {
        return Err(Error::InvalidArgument);
    }
    regs.rflags = sanitize_rflags(regs.rflags);
    Ok(())
}

/// Length of the SYSCALL instruction.
pub const SYSCALL_INSN_LEN: u64 = 2;

/// The atomic API's restart: the thread's call is to be re-executed when it next runs, so
/// its RIP goes back onto its `syscall` (no kernel state is kept for the pending call), and
/// RCX follows, as SYSCALL would have set it, so the return can take the direct SYSRETQ
/// path.
pub fn restart_call(r: &mut ThreadRegs) {
    r.rip = r.rip.wrapping_sub(SYSCALL_INSN_LEN);
    r.rcx = r.rip;
}

/// A blocked call in restart form completes: RIP past its `syscall` again (the result is
/// the caller's to set in RAX).
pub fn complete_call(r: &mut ThreadRegs) {
    r.rip = r.rip.wrapping_add(SYSCALL_INSN_LEN);
    r.rcx = r.rip;
}

/// Whether a thread's registers are those of a call in restart form.
pub fn in_restart_form(r: &ThreadRegs) -> bool {
    r.rcx == r.rip && r.rip >= SYSCALL_INSN_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOPL3: u64 = 3 << 12;
    const NT: u64 = 1 << 14;
    const RF: u64 = 1 << 16;
    const VM: u64 = 1 << 17;
    const VIF_VIP: u64 = 3 << 19;

    #[test]
    fn privileged_rflags_bits_never_reach_user_mode() {
        for bits in [IOPL3, NT, RF, VM, VIF_VIP, u64::MAX & !USER_RFLAGS_MASK] {
            let f = sanitize_rflags(bits);
            assert_eq!(f & !(RFLAGS_IF | RFLAGS_FIXED1), 0, "{bits:#x} -> {f:#x}");
        }
        assert_eq!(sanitize_rflags(0), RFLAGS_IF | RFLAGS_FIXED1);
        assert_eq!(
            sanitize_rflags(u64::MAX),
            USER_RFLAGS_MASK | RFLAGS_IF | RFLAGS_FIXED1
        );
    }

    #[test]
    fn user_rflags_bits_are_kept() {
        // CF PF AF ZF SF TF DF OF AC ID
        for bit in [0, 2, 4, 6, 7, 8, 10, 11, 18, 21] {
            assert_ne!(sanitize_rflags(1 << bit) & (1 << bit), 0, "bit {bit}");
        }
    }

    #[test]
    fn registers_are_checked_before_anything_changes() {
        let good = ThreadRegs {
            rip: 0x40_0000,
            rflags: IOPL3 | 1,
            fs_base: 0x7fff_ffff_f000,
            gs_base: 0xffff_8000_0000_0000,
            ..ThreadRegs::default()
        };
        let mut r = good;
        assert_eq!(sanitize_regs(&mut r), Ok(()));
        assert_eq!(r.rflags, 1 | RFLAGS_IF | RFLAGS_FIXED1);
        for bad in [
            ThreadRegs {
                rip: USER_END,
                ..good
            },
            ThreadRegs {
                rip: u64::MAX,
                ..good
            },
            ThreadRegs {
                fs_base: 0x8000_0000_0000,
                ..good
            },
            ThreadRegs {
                gs_base: 0x0001_0000_0000_0000,
                ..good
            },
        ] {
            let mut r = bad;
            assert_eq!(sanitize_regs(&mut r), Err(Error::InvalidArgument));
            assert_eq!(r.rflags, bad.rflags, "changed on error");
        }
    }

    #[test]
    fn a_call_restarted_then_completed_returns_past_its_syscall() {
        // As SYSCALL leaves them: RIP after the instruction, RCX the same.
        let at_entry = ThreadRegs {
            rip: 0x40_1002,
            rcx: 0x40_1002,
            rax: 5,
            ..ThreadRegs::default()
        };
        let mut r = at_entry;
        restart_call(&mut r);
        assert_eq!((r.rip, r.rcx, r.rax), (0x40_1000, 0x40_1000, 5));
        assert!(in_restart_form(&r));
        complete_call(&mut r);
        assert_eq!(r, at_entry);
        let interrupted = ThreadRegs {
            rip: 0x40_1000,
            rcx: 7,
            ..ThreadRegs::default()
        };
        assert!(!in_restart_form(&interrupted));
    }

    #[test]
    fn canonical_addresses() {
        assert!(canonical(0));
        assert!(canonical(0x7fff_ffff_ffff));
        assert!(canonical(0xffff_8000_0000_0000));
        assert!(!canonical(0x8000_0000_0000));
        assert!(!canonical(0xfff7_ffff_ffff_ffff));
    }
}
