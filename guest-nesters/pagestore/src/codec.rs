//! Page compression: a page is a sequence of tokens, `[kind, count (u16 LE)]` and then
//! for a literal run `count` words, for a progression `first, step` (the words
//! `first + i * step`, wrapping). Runs of three words or more become progressions.

use crate::{PAGE, WORDS};

const LITERAL: u8 = 0;
const PROGRESSION: u8 = 1;
const HEADER: usize = 3;
const MIN_RUN: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// The data ends inside a token.
    Truncated,
    /// An unknown token kind, a zero count, or more than a page of words.
    Malformed,
}

/// Compresses `page` into `out`; `None` if the result would not be smaller than the page
/// (store it raw then).
pub fn compress(page: &[u64; WORDS], out: &mut [u8; PAGE]) -> Option<usize> {
    let mut len = 0;
    let mut lit_start = 0;
    let mut i = 0;
    let emit = |out: &mut [u8; PAGE], len: &mut usize, bytes: &[u8]| -> Option<()> {
        let end = *len + bytes.len();
        if end >= PAGE {
            return None;
        }
        out[*len..end].copy_from_slice(bytes);
        *len = end;
        Some(())
    };
    let flush = |out: &mut [u8; PAGE], len: &mut usize, words: &[u64]| -> Option<()> {
        if words.is_empty() {
            return Some(());
        }
        let n = words.len() as u16;
        emit(out, len, &[LITERAL, n as u8, (n >> 8) as u8])?;
        for w in words {
            emit(out, len, &w.to_le_bytes())?;
        }
        Some(())
    };
    while i < WORDS {
        let run = if i + 1 < WORDS {
            let step = page[i + 1].wrapping_sub(page[i]);
            let mut j = i + 1;
            while j + 1 < WORDS && page[j + 1].wrapping_sub(page[j]) == step {
                j += 1;
            }
            Some((j - i + 1, step))
        } else {
            None
        };
        match run {
            Some((r, step)) if r >= MIN_RUN => {
                flush(out, &mut len, &page[lit_start..i])?;
                let n = r as u16;
                emit(out, &mut len, &[PROGRESSION, n as u8, (n >> 8) as u8])?;
                emit(out, &mut len, &page[i].to_le_bytes())?;
                emit(out, &mut len, &step.to_le_bytes())?;
                i += r;
                lit_start = i;
            }
            _ => i += 1,
        }
    }
    flush(out, &mut len, &page[lit_start..])?;
    Some(len)
}

/// Rebuilds a page from [`compress`]'s output; checks every bound (a corrupt blob is an
/// error, never a panic or a write outside the page).
pub fn decompress(data: &[u8], page: &mut [u64; WORDS]) -> Result<(), CodecError> {
    let mut at = 0;
    let mut filled = 0;
    let word = |at: usize| -> Result<u64, CodecError> {
        let b = data.get(at..at + 8).ok_or(CodecError::Truncated)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| CodecError::Truncated)?,
        ))
    };
    while at < data.len() {
        let h = data.get(at..at + HEADER).ok_or(CodecError::Truncated)?;
        let count = usize::from(h[1]) | usize::from(h[2]) << 8;
        if count == 0 || filled + count > WORDS {
            return Err(CodecError::Malformed);
        }
        at += HEADER;
        match h[0] {
            LITERAL => {
                for k in 0..count {
                    page[filled + k] = word(at + k * 8)?;
                }
                at += count * 8;
            }
            PROGRESSION => {
                let (first, step) = (word(at)?, word(at + 8)?);
                for k in 0..count {
                    page[filled + k] = first.wrapping_add(step.wrapping_mul(k as u64));
                }
                at += 16;
            }
            _ => return Err(CodecError::Malformed),
        }
        filled += count;
    }
    if filled != WORDS {
        return Err(CodecError::Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(page: &[u64; WORDS]) -> Option<usize> {
        let mut out = [0u8; PAGE];
        let n = compress(page, &mut out)?;
        let mut back = [0xdead_u64; WORDS];
        decompress(&out[..n], &mut back).expect("decodes");
        assert_eq!(&back, page);
        Some(n)
    }

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn regular_pages_shrink() {
        assert_eq!(round_trip(&[0; WORDS]), Some(19));
        let counter: [u64; WORDS] = core::array::from_fn(|i| 1000 + i as u64);
        assert_eq!(round_trip(&counter), Some(19));
        let down: [u64; WORDS] = core::array::from_fn(|i| 5u64.wrapping_sub(i as u64 * 3));
        assert_eq!(round_trip(&down), Some(19));
        // Sparse: a few words in a zero page (the memory workload's pages).
        let mut sparse = [0u64; WORDS];
        for w in 0..8 {
            sparse[w * 64] = 12345 + w as u64;
        }
        assert!(round_trip(&sparse).unwrap() < 300);
    }

    #[test]
    fn random_pages_are_left_raw_and_mixed_ones_decode() {
        let mut seed = 0x1234_5678_9abc_def1;
        let random: [u64; WORDS] = core::array::from_fn(|_| xorshift(&mut seed));
        assert_eq!(round_trip(&random), None);
        for trial in 0..2000u32 {
            // Random mixtures of runs and noise, of every length.
            let mut page = [0u64; WORDS];
            let mut i = 0;
            while i < WORDS {
                let r = (xorshift(&mut seed) % 40) as usize + 1;
                let (first, step) = (xorshift(&mut seed) % 4, xorshift(&mut seed) % 3);
                let noisy = xorshift(&mut seed).is_multiple_of(3);
                for k in 0..r.min(WORDS - i) {
                    page[i + k] = if noisy {
                        xorshift(&mut seed)
                    } else {
                        first + step * k as u64
                    };
                }
                i += r;
            }
            if trial.is_multiple_of(7) {
                page[WORDS - 1] = xorshift(&mut seed);
            }
            round_trip(&page);
        }
    }

    #[test]
    fn corrupt_blobs_are_errors() {
        let mut out = [0u8; PAGE];
        let page: [u64; WORDS] = core::array::from_fn(|i| (i as u64 % 5) * 7);
        let n = compress(&page, &mut out).unwrap();
        let mut back = [0u64; WORDS];
        for cut in 0..n {
            assert!(decompress(&out[..cut], &mut back).is_err(), "cut at {cut}");
        }
        let mut seed = 99;
        for _ in 0..5000 {
            let mut bad = out;
            let at = (xorshift(&mut seed) as usize) % n;
            bad[at] ^= (xorshift(&mut seed) as u8) | 1;
            let _ = decompress(&bad[..n], &mut back); // never panics
        }
        assert_eq!(
            decompress(&[9, 1, 0], &mut back),
            Err(CodecError::Malformed)
        );
        assert_eq!(
            decompress(&[1, 0, 0], &mut back),
            Err(CodecError::Malformed)
        );
        assert_eq!(
            decompress(&[1, 0x01, 0x02, 0], &mut back),
            Err(CodecError::Malformed)
        );
    }
}
