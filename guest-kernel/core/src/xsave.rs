//! Where a thread's extended (XSAVE) state lives: which of the components the host's XCR0
//! enables the kernel switches between threads, and where each sits in the standard
//! (non-compacted) format the kernel exports.
//!
//! CPUID leaf 0xD says where the hardware puts each component, and it is what XSAVE
//! follows: CPUs differ (AMD Zen 4 has no MPX gap, so its opmask, ZMM and PKRU state sit
//! lower than Intel's). Where CPUID does not describe an enabled component (on kvm_pvm it
//! answers from the VMM's table, which may leave some out) the component gets Intel's
//! offsets as a best guess. Whatever the places, the kernel gives each thread an area of the
//! full bound on such a CPU ([`Layout::area_bytes`]), so a wrong guess can misplace
//! exported bytes but never make XSAVE write past the area.

/// Bytes of the legacy (FXSAVE) region, and of the legacy region plus the XSAVE header.
pub const LEGACY_BYTES: usize = 512;
pub const HEADER_END: usize = 576;

pub const X87: u64 = 1 << 0;
pub const SSE: u64 = 1 << 1;
pub const PKRU: u64 = 1 << 9;
/// AMX tile configuration and data: never switched (user code took #UD on AMX where
/// measured, and the tile data alone is 8 KiB).
pub const AMX: u64 = (1 << 17) | (1 << 18);

/// A component's place in the standard format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub offset: usize,
    pub size: usize,
}

const fn at(offset: usize, size: usize) -> Place {
    Place { offset, size }
}

/// Intel's places for the user components above SSE (AVX, MPX bounds and config, opmask,
/// ZMM_Hi256, Hi16_ZMM, PKRU): the guess for a component CPUID does not describe.
pub const INTEL_PLACES: [(u32, Place); 7] = [
    (2, at(576, 256)),
    (3, at(960, 64)),
    (4, at(1024, 64)),
    (5, at(1088, 64)),
    (6, at(1152, 512)),
    (7, at(1664, 1024)),
    (9, at(2688, 8)),
];

/// The plan for this CPU: what [`plan`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The components switched (x87 and SSE whenever XCR0 has them).
    pub mask: u64,
    /// Bytes of the exported image: every switched component's place ends within it, a
    /// multiple of 64.
    pub image_bytes: usize,
    /// Bytes of a thread's save area: the bound given to [`plan`] as soon as a component
    /// above SSE is switched (XSAVE writes where the hardware places components, which only
    /// CPUID knows), else the image.
    pub area_bytes: usize,
    /// Where each switched component above SSE lives, by component number.
    pub places: [Option<Place>; 64],
    /// XCR0 components left unswitched: AMX, and any with no place that fits.
    pub unswitched: u64,
    /// Components CPUID did not describe, placed at [`INTEL_PLACES`].
    pub guessed: u64,
}

/// Plans the save area for a CPU whose XCR0 is `xcr0`, keeping it within `max_bytes`.
/// `cpuid(n)` is CPUID leaf 0xD sub-leaf `n`: (EAX, EBX), the component's size and its
/// standard-format offset (0, 0 where CPUID does not describe it).
pub fn plan(xcr0: u64, max_bytes: usize, mut cpuid: impl FnMut(u32) -> (u32, u32)) -> Layout {
    let mut layout = Layout {
        mask: xcr0 & (X87 | SSE),
        image_bytes: HEADER_END,
        area_bytes: HEADER_END,
        places: [None; 64],
        unswitched: xcr0 & AMX,
        guessed: 0,
    };
    let mut end = HEADER_END;
    for bit in 2..64u32 {
        let feature = 1u64 << bit;
        if xcr0 & feature == 0 || feature & AMX != 0 {
            continue;
        }
        let (size, offset) = cpuid(bit);
        let reported = (size != 0 && offset as usize >= HEADER_END).then_some(Place {
            offset: offset as usize,
            size: size as usize,
        });
        let guess = INTEL_PLACES.iter().find(|c| c.0 == bit).map(|c| c.1);
        if reported.is_none() && guess.is_some() {
            layout.guessed |= feature;
        }
        // A component with no Intel place (APX's, say) rests on CPUID alone; every user
        // component defined so far but AMX sits below 4096 bytes on real CPUs.
        match reported.or(guess) {
            Some(place) if place.offset.saturating_add(place.size) <= max_bytes => {
                layout.mask |= feature;
                layout.places[bit as usize] = Some(place);
                end = end.max(place.offset + place.size);
            }
            _ => {
                layout.unswitched |= feature;
                layout.guessed &= !feature;
            }
        }
    }
    layout.image_bytes = end.next_multiple_of(64);
    layout.area_bytes = if layout.mask & !(X87 | SSE) != 0 {
        max_bytes.max(layout.image_bytes)
    } else {
        layout.image_bytes
    };
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    /// CPUID as an Intel CPU answers it.
    fn intel(bit: u32) -> (u32, u32) {
        match INTEL_PLACES.iter().find(|c| c.0 == bit) {
            Some((_, p)) => (p.size as u32, p.offset as u32),
            None => (0, 0),
        }
    }

    /// CPUID as AMD Zen 4 answers it: no MPX, so opmask, ZMM and PKRU follow AVX directly.
    fn zen4(bit: u32) -> (u32, u32) {
        match bit {
            2 => (256, 576),
            5 => (64, 832),
            6 => (512, 896),
            7 => (1024, 1408),
            9 => (8, 2432),
            _ => (0, 0),
        }
    }

    #[test]
    fn avx_host_switches_avx_in_an_832_byte_image() {
        let l = plan(0x7, MAX, intel);
        assert_eq!(
            (l.mask, l.image_bytes, l.unswitched, l.guessed),
            (0x7, 832, 0, 0)
        );
        assert_eq!(
            l.places[2],
            Some(Place {
                offset: 576,
                size: 256
            })
        );
        assert_eq!(l.area_bytes, MAX);
    }

    #[test]
    fn amx_is_never_switched_and_avx512_fits_one_frame() {
        let l = plan(0x600e7, MAX, intel);
        assert_eq!((l.mask, l.image_bytes, l.unswitched), (0xe7, 2688, 0x60000));
    }

    #[test]
    fn cpuid_places_components_where_the_cpu_puts_them() {
        let l = plan(0x2e7, MAX, zen4);
        assert_eq!((l.mask, l.guessed, l.image_bytes), (0x2e7, 0, 2496));
        assert_eq!(
            l.places[5],
            Some(Place {
                offset: 832,
                size: 64
            })
        );
        assert_eq!(
            l.places[7],
            Some(Place {
                offset: 1408,
                size: 1024
            })
        );
        assert_eq!(
            l.places[9],
            Some(Place {
                offset: 2432,
                size: 8
            })
        );
    }

    #[test]
    fn components_cpuid_leaves_out_get_intels_places_in_a_full_size_area() {
        let l = plan(0x2e7, MAX, |_| (0, 0));
        assert_eq!(l.places, plan(0x2e7, MAX, intel).places);
        assert_eq!((l.guessed, l.image_bytes, l.area_bytes), (0x2e4, 2752, MAX));
        // Some described, some not: only the others are guesses.
        let l = plan(0x2e7, MAX, |bit| if bit == 9 { (0, 0) } else { zen4(bit) });
        assert_eq!(l.guessed, 0x200);
        assert_eq!(
            l.places[9],
            Some(Place {
                offset: 2688,
                size: 8
            })
        );
    }

    #[test]
    fn an_unknown_component_is_placed_by_cpuid_within_the_bound() {
        // APX's extended registers (component 19) where CPUs put them.
        let l = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (128, 960)
            } else {
                intel(bit)
            }
        });
        assert_eq!((l.mask, l.unswitched), (0x8_0007, 0));
        assert_eq!(
            l.places[19],
            Some(Place {
                offset: 960,
                size: 128
            })
        );
        assert_eq!(l.image_bytes, 1088);
    }

    #[test]
    fn a_component_without_a_fitting_place_is_left_unswitched() {
        let far = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (512, 4000)
            } else {
                intel(bit)
            }
        });
        assert_eq!(
            (far.mask, far.unswitched, far.image_bytes),
            (0x7, 0x8_0000, 832)
        );
        let huge = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (u32::MAX, u32::MAX)
            } else {
                intel(bit)
            }
        });
        assert_eq!((huge.mask, huge.unswitched), (0x7, 0x8_0000));
        let unknown = plan(0x8_0007, MAX, intel);
        assert_eq!((unknown.mask, unknown.unswitched), (0x7, 0x8_0000));
        // A place inside the legacy region or header is no place.
        let low = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (64, 512)
            } else {
                intel(bit)
            }
        });
        assert_eq!(low.unswitched, 0x8_0000);
        // A known component CPUID places out of bounds is not guessed elsewhere.
        let out = plan(
            0x207,
            MAX,
            |bit| if bit == 9 { (8, 8000) } else { intel(bit) },
        );
        assert_eq!((out.mask, out.unswitched, out.guessed), (0x7, 0x200, 0));
    }

    #[test]
    fn x87_and_sse_only_need_no_more_than_the_header() {
        let l = plan(0x3, MAX, intel);
        assert_eq!(
            (l.mask, l.image_bytes, l.area_bytes, l.unswitched),
            (0x3, 576, 576, 0)
        );
    }
}
