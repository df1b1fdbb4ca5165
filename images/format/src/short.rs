//! A small copy of untrusted bytes (a program name, a directive) for error messages, so
//! that errors need neither a lifetime nor a heap.

use core::fmt;

const CAP: usize = 32;

/// Up to 32 bytes copied out of an input, displayed with non-printable bytes escaped and
/// `...` appended when the original was longer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortStr {
    buf: [u8; CAP],
    len: u8,
    truncated: bool,
}

impl ShortStr {
    /// Copies the first 32 bytes of `bytes`.
    pub fn new(bytes: &[u8]) -> ShortStr {
        let mut buf = [0u8; CAP];
        let len = bytes.len().min(CAP);
        buf[..len].copy_from_slice(&bytes[..len]);
        ShortStr {
            buf,
            len: len as u8,
            truncated: bytes.len() > CAP,
        }
    }

    /// The bytes kept (at most 32).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Whether the original was longer than what is kept.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        !self.truncated && self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn displays_escaped_and_truncated() {
        assert_eq!(format!("{}", ShortStr::new(b"init")), "init");
        assert_eq!(format!("{}", ShortStr::new(b"a\0\xff")), "a\\x00\\xff");
        let long = [b'x'; 40];
        let s = ShortStr::new(&long);
        assert!(s.is_truncated());
        assert_eq!(s.as_bytes().len(), 32);
        assert_eq!(format!("{s}"), format!("{}...", "x".repeat(32)));
        assert_eq!(format!("{:?}", ShortStr::new(b"ab")), "\"ab\"");
        assert!(ShortStr::new(b"ab") == "ab");
        assert!(s != *"x".repeat(32).as_str());
    }
}
