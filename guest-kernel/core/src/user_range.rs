//! Splitting a user buffer into the pieces that lie in one page each: how the kernel copies
//! to and from user memory, page by page through the space's own tables.

use fluke_abi::syscall::layout::USER_MAP_END;
use fluke_abi::syscall::Error;

const PAGE: u64 = crate::PAGE_SIZE;

/// One page's part of a user range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The page (aligned).
    pub page: u64,
    /// Offset of the piece in the page.
    pub in_page: u64,
    /// Offset of the piece in the buffer.
    pub in_buffer: usize,
    pub len: usize,
}

/// The pieces of `[addr, addr + len)`, in order; `BadAddress` if the range wraps or
/// reaches past the user half's mappable end.
pub fn pieces(addr: u64, len: usize) -> Result<impl Iterator<Item = Piece>, Error> {
    let end = addr.checked_add(len as u64).ok_or(Error::BadAddress)?;
    if end > USER_MAP_END {
        return Err(Error::BadAddress);
    }
    let mut va = addr;
    Ok(core::iter::from_fn(move || {
        if va >= end {
            return None;
        }
        let page = va & !(PAGE - 1);
        let n = (page + PAGE).min(end) - va;
        let piece = Piece {
            page,
            in_page: va - page,
            in_buffer: (va - addr) as usize,
            len: n as usize,
        };
        va += n;
        Some(piece)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn a_range_is_cut_at_page_boundaries() {
        let p: Vec<Piece> = pieces(0x1ff0, 0x2020).unwrap().collect();
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[0],
            Piece {
                page: 0x1000,
                in_page: 0xff0,
                in_buffer: 0,
                len: 0x10
            }
        );
        assert_eq!(
            p[1],
            Piece {
                page: 0x2000,
                in_page: 0,
                in_buffer: 0x10,
                len: 0x1000
            }
        );
        assert_eq!(
            p[2],
            Piece {
                page: 0x3000,
                in_page: 0,
                in_buffer: 0x1010,
                len: 0x1000
            }
        );
        assert_eq!(
            p[3],
            Piece {
                page: 0x4000,
                in_page: 0,
                in_buffer: 0x2010,
                len: 0x10
            }
        );
        assert_eq!(p.iter().map(|p| p.len).sum::<usize>(), 0x2020);
        assert_eq!(pieces(0x5000, 0).unwrap().count(), 0);
    }

    #[test]
    fn wrapping_or_kernel_ranges_are_refused() {
        assert!(pieces(u64::MAX - 4, 16).is_err());
        assert!(pieces(USER_MAP_END - 8, 16).is_err());
        assert!(pieces(USER_MAP_END - 16, 16).is_ok());
    }
}
