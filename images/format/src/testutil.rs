//! Synthetic ELF files and byte patching for the unit tests.

use crate::elf::{
    ProgramHeader, EHDR_SIZE, EM_X86_64, ET_EXEC, PF_R, PF_W, PF_X, PHDR_SIZE, PT_LOAD, PT_NOTE,
};
use alloc::vec;
use alloc::vec::Vec;
use fluke_abi::boot::KERNEL_VIRT_BASE;

/// The synthetic kernel's 32-bit PVH entry point.
pub const KERNEL_ENTRY_PHYS: u32 = 0x10_0040;

pub struct Seg {
    pub p_type: u32,
    pub flags: u32,
    pub vaddr: u64,
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
    pub align: u64,
}

impl Seg {
    /// A PT_LOAD identity-mapped at `paddr`.
    pub fn load(flags: u32, paddr: u64, data: Vec<u8>, memsz: u64) -> Seg {
        Seg {
            p_type: PT_LOAD,
            flags,
            vaddr: paddr,
            paddr,
            data,
            memsz,
            align: 0x1000,
        }
    }

    /// A kernel PT_LOAD linked at KERNEL_VIRT_BASE + paddr.
    pub fn kload(flags: u32, paddr: u64, data: Vec<u8>, memsz: u64) -> Seg {
        Seg {
            vaddr: KERNEL_VIRT_BASE + paddr,
            ..Seg::load(flags, paddr, data, memsz)
        }
    }

    pub fn note(data: Vec<u8>) -> Seg {
        let len = data.len() as u64;
        Seg {
            p_type: PT_NOTE,
            flags: PF_R,
            vaddr: 0,
            paddr: 0,
            data,
            memsz: len,
            align: 4,
        }
    }
}

pub struct ElfSpec {
    entry: u64,
    segs: Vec<Seg>,
}

impl ElfSpec {
    pub fn exec(entry: u64) -> ElfSpec {
        ElfSpec {
            entry,
            segs: Vec::new(),
        }
    }

    pub fn seg(mut self, s: Seg) -> ElfSpec {
        self.segs.push(s);
        self
    }

    /// Header, program headers, then each segment's bytes, 4-aligned, in order.
    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0u8; EHDR_SIZE + PHDR_SIZE * self.segs.len()];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        patch_u16(&mut out, 16, ET_EXEC);
        patch_u16(&mut out, 18, EM_X86_64);
        patch_u32(&mut out, 20, 1);
        patch_u64(&mut out, 24, self.entry);
        patch_u64(&mut out, 32, EHDR_SIZE as u64);
        patch_u16(&mut out, 52, EHDR_SIZE as u16);
        patch_u16(&mut out, 54, PHDR_SIZE as u16);
        patch_u16(&mut out, 56, self.segs.len() as u16);
        for (i, s) in self.segs.iter().enumerate() {
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
            let ph = ProgramHeader {
                p_type: s.p_type,
                flags: s.flags,
                offset: out.len() as u64,
                vaddr: s.vaddr,
                paddr: s.paddr,
                filesz: s.data.len() as u64,
                memsz: s.memsz,
                align: s.align,
            };
            out[phdr_offset(i)..phdr_offset(i) + PHDR_SIZE].copy_from_slice(&ph.to_bytes());
            out.extend_from_slice(&s.data);
        }
        out
    }
}

/// One note with 4-byte padding; `name` includes its NUL.
pub fn note_bytes(name: &[u8], note_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_le_bytes());
    v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    v.extend_from_slice(&note_type.to_le_bytes());
    v.extend_from_slice(name);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v.extend_from_slice(desc);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

pub fn pvh_note(entry: u32) -> Vec<u8> {
    note_bytes(b"Xen\0", 18, &entry.to_le_bytes())
}

fn kernel_text() -> Vec<u8> {
    let mut text = vec![0xaa; 0x200];
    for (i, b) in text.iter_mut().enumerate().skip(1) {
        *b = (i as u8).wrapping_mul(7);
    }
    text
}

/// A synthetic kernel: text (R+X) at 1 MiB, data+bss (R+W, memsz > filesz) at 1 MiB + 4 KiB
/// ending at 0x103f10, and a PT_NOTE with a GNU note and the PVH entry note.
pub fn kernel_elf() -> Vec<u8> {
    let mut notes = note_bytes(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
    notes.extend(pvh_note(KERNEL_ENTRY_PHYS));
    kernel_with_notes(notes)
}

pub fn kernel_with_notes(notes: Vec<u8>) -> Vec<u8> {
    ElfSpec::exec(KERNEL_VIRT_BASE + 0x10_0040)
        .seg(Seg::kload(PF_R | PF_X, 0x10_0000, kernel_text(), 0x200))
        .seg(Seg::kload(PF_R | PF_W, 0x10_1000, vec![0xbb; 0x80], 0x2f10))
        .seg(Seg::note(notes))
        .build()
}

/// A small user program: one R+X PT_LOAD at 4 MiB.
pub fn user_elf(fill: u8, len: usize) -> Vec<u8> {
    ElfSpec::exec(0x40_0000)
        .seg(Seg::load(
            PF_R | PF_X,
            0x40_0000,
            vec![fill; len],
            len as u64 + 0x100,
        ))
        .build()
}

pub fn phdr_offset(index: usize) -> usize {
    EHDR_SIZE + PHDR_SIZE * index
}

pub fn patch_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn patch_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn patch_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Deterministic xorshift64* generator for the mutation tests.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Applies one to four random edits: byte flips, random bytes, interesting 32/64-bit values
/// written at a random offset, truncation or extension.
pub fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    const INTERESTING: [u64; 10] = [
        0,
        1,
        0x40,
        0x1000,
        0x7fff_ffff,
        0xffff_ffff,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - 0xfff,
        56,
    ];
    let mut v = input.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        if v.is_empty() {
            v.push(rng.next_u64() as u8);
            continue;
        }
        let pos = rng.below(v.len());
        match rng.below(6) {
            0 => v[pos] ^= 1 << rng.below(8),
            1 => v[pos] = rng.next_u64() as u8,
            2 => {
                let val = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let n = if rng.below(2) == 0 { 4 } else { 8 };
                let end = (pos + n).min(v.len());
                v[pos..end].copy_from_slice(&val[..end - pos]);
            }
            3 => v.truncate(pos),
            4 => {
                let extra = rng.below(64);
                for _ in 0..extra {
                    v.push(rng.next_u64() as u8);
                }
            }
            _ => {
                // Header-focused: flip a byte in the first 512 bytes.
                let p = rng.below(v.len().min(512));
                v[p] = v[p].wrapping_add(1 + rng.below(255) as u8);
            }
        }
    }
    v
}
