//! The byte encoding of an object's state (`obj_get_state` / `obj_set_state`): the
//! [`WORDS`] words of `fluke_abi::syscall::objstate`, little-endian.

use fluke_abi::syscall::objstate::WORDS;

pub const BYTES: usize = WORDS * 8;

pub fn encode(words: &[u64; WORDS]) -> [u8; BYTES] {
    let mut bytes = [0u8; BYTES];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    bytes
}

pub fn decode(bytes: &[u8; BYTES]) -> [u64; WORDS] {
    let mut words = [0u64; WORDS];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_little_endian() {
        let mut words = [0u64; WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = 0x0102_0304_0506_0708u64.rotate_left(i as u32 * 8) ^ i as u64;
        }
        let bytes = encode(&words);
        assert_eq!(bytes[0], 0x08);
        assert_eq!(bytes[7], 0x01);
        assert_eq!(decode(&bytes), words);
    }
}
