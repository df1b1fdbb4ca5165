//! The paravirtual console (`fluke_abi::ports::CONSOLE_PV`): one 32-bit OUT hands over the
//! guest-physical address of a record (`fluke_abi::ports::pv_console`), whose bytes go to
//! the serial console's sink, so the kernel prints a line with one exit instead of one per
//! byte (as uhyve's buffered serial write does). Only kernel text can write the port (the
//! run loop checks every OUT), so a malformed record is a kernel bug and ends the run with
//! its reason.

use fluke_abi::ports::pv_console::{FROM_KERNEL, HEADER, MAX_LEN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Whose bytes a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Kernel,
    /// A program's `console_write` (or a source this VMM does not know).
    Program,
}

/// Reads the record at `gpa` (the OUT's value) into `out` (cleared first); whose it is.
pub fn read_record(
    memory: &GuestMemoryMmap,
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<Source, String> {
    let gpa = match value {
        [a, b, c, d] => u64::from(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => {
            return Err(format!(
                "console record address written with a {}-byte OUT (a 32-bit one is required)",
                value.len()
            ))
        }
    };
    if gpa % 8 != 0 {
        return Err(format!("console record at {gpa:#x} is not 8-aligned"));
    }
    let mut header = [0u8; HEADER];
    memory
        .read_slice(&mut header, GuestAddress(gpa))
        .map_err(|_| format!("console record at {gpa:#x} is outside guest memory"))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let source = match u32::from_le_bytes([header[4], header[5], header[6], header[7]]) {
        FROM_KERNEL => Source::Kernel,
        _ => Source::Program,
    };
    if len > MAX_LEN {
        return Err(format!(
            "console record at {gpa:#x} claims {len} bytes (at most {MAX_LEN})"
        ));
    }
    out.clear();
    out.resize(len, 0);
    memory
        .read_slice(out, GuestAddress(gpa + HEADER as u64))
        .map_err(|_| {
            format!("console record at {gpa:#x} of {len} bytes ends outside guest memory")
        })?;
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, at: u64, len: u32, bytes: &[u8]) {
        m.write_slice(&len.to_le_bytes(), GuestAddress(at)).unwrap();
        m.write_slice(&FROM_KERNEL.to_le_bytes(), GuestAddress(at + 4))
            .unwrap();
        m.write_slice(bytes, GuestAddress(at + HEADER as u64))
            .unwrap();
    }

    #[test]
    fn a_record_is_read_whole() {
        let m = memory();
        put(&m, 0x1000, 6, b"hello\n");
        let mut out = vec![1, 2, 3];
        let source = read_record(&m, &0x1000u32.to_le_bytes(), &mut out).unwrap();
        assert_eq!((out.as_slice(), source), (&b"hello\n"[..], Source::Kernel));
        let program = fluke_abi::ports::pv_console::FROM_PROGRAM;
        m.write_slice(&program.to_le_bytes(), GuestAddress(0x1004))
            .unwrap();
        let source = read_record(&m, &0x1000u32.to_le_bytes(), &mut out).unwrap();
        assert_eq!(source, Source::Program);
        put(&m, 0x2000, 0, b"");
        read_record(&m, &0x2000u32.to_le_bytes(), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        let m = memory();
        let mut out = Vec::new();
        let err = |value: &[u8], out: &mut Vec<u8>| read_record(&m, value, out).unwrap_err();
        assert!(err(&[0, 0x10], &mut out).contains("2-byte OUT"));
        assert!(err(&0x1004u32.to_le_bytes(), &mut out).contains("not 8-aligned"));
        assert!(err(&0x20000u32.to_le_bytes(), &mut out).contains("outside guest memory"));
        put(&m, 0x1000, MAX_LEN as u32 + 1, b"");
        assert!(err(&0x1000u32.to_le_bytes(), &mut out).contains("at most 4088"));
        // The bytes run past the end of RAM.
        put(&m, 0xfff8, 16, b"");
        assert!(err(&0xfff8u32.to_le_bytes(), &mut out).contains("ends outside"));
    }
}
