//! Exit statuses. A guest writes 0..=127 to [`crate::ports::DEBUG_EXIT`] (QEMU's encoding
//! `(v << 1) | 1` keeps only seven bits). fluke-vmm's own failures use 124..=126 so that
//! they stay distinct from the kernel's statuses below.

/// The first program exited with status 0 / the kernel finished its job.
pub const SUCCESS: u8 = 0;
/// The guest kernel panicked (the panic message precedes it on the serial console).
pub const KERNEL_PANIC: u8 = 101;
/// The guest kernel took an unexpected exception in kernel mode.
pub const KERNEL_FAULT: u8 = 102;

/// fluke-vmm: the guest did not finish within `--timeout`.
pub const VMM_TIMEOUT: i32 = 124;
/// fluke-vmm: the guest crashed (triple fault, unexpected exit, failed entry).
pub const VMM_GUEST_CRASH: i32 = 125;
/// fluke-vmm: bad input or a host error before or while running the guest.
pub const VMM_ERROR: i32 = 126;
/// fluke-vmm: the guest exited with a status in [`GUEST_STATUS_RESERVED`]..=[`VMM_ERROR`],
/// which fluke-vmm's own statuses would make ambiguous; stderr names the guest's status.
pub const GUEST_STATUS_RESERVED: i32 = 123;

/// Maps QEMU's `isa-debug-exit` process exit code back to the status the guest wrote.
/// Returns `None` for codes QEMU produces itself (0 for a normal shutdown, 1 on error
/// without a debug-exit write is indistinguishable from status 0 and is reported as 0).
pub const fn from_qemu_exit_code(code: i32) -> Option<u8> {
    if code & 1 == 1 && code >= 1 && code <= 255 {
        Some(((code - 1) >> 1) as u8)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_codes_map_back() {
        assert_eq!(from_qemu_exit_code(1), Some(0));
        assert_eq!(from_qemu_exit_code((42 << 1) | 1), Some(42));
        assert_eq!(
            from_qemu_exit_code(((KERNEL_PANIC as i32) << 1) | 1),
            Some(KERNEL_PANIC)
        );
        assert_eq!(from_qemu_exit_code(0), None);
        assert_eq!(from_qemu_exit_code(2), None);
    }
}
