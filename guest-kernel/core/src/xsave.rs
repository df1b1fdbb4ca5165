//! Where a thread's extended (XSAVE) state lives: which of the components the host's XCR0
//! enables the kernel switches between threads, where each sits in the standard
//! (non-compacted) format, and how large a thread's save area must be.
//!
//! Two sources say where a component lives: CPUID leaf 0xD and the architectural places
//! every x86-64 CPU uses for the components it has. XSAVE writes at the hardware's places,
//! so those win where known: an area sized from a CPUID answer that places a component too
//! low would be overrun (on kvm_pvm CPUID answers from the VMM's table, which may also leave
//! components out). CPUID places only a component with no architectural place here.

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

/// The architectural places of the user components above SSE: AVX, MPX bounds and config,
/// opmask, ZMM_Hi256, Hi16_ZMM and PKRU.
pub const ARCHITECTURAL: [(u32, Place); 7] = [
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
    /// Bytes of a thread's save area: every switched component fits, a multiple of 64.
    pub area_bytes: usize,
    /// Where each switched component above SSE lives, by component number.
    pub places: [Option<Place>; 64],
    /// XCR0 components left unswitched: AMX, and any with no place that fits.
    pub unswitched: u64,
    /// Components CPUID places elsewhere than their architectural place (which is used).
    pub cpuid_disagrees: u64,
}

/// Plans the save area for a CPU whose XCR0 is `xcr0`, keeping it within `max_bytes`.
/// `cpuid(n)` is CPUID leaf 0xD sub-leaf `n`: (EAX, EBX), the component's size and its
/// standard-format offset (0, 0 where CPUID does not describe it).
pub fn plan(xcr0: u64, max_bytes: usize, mut cpuid: impl FnMut(u32) -> (u32, u32)) -> Layout {
    let mut layout = Layout {
        mask: xcr0 & (X87 | SSE),
        area_bytes: HEADER_END,
        places: [None; 64],
        unswitched: xcr0 & AMX,
        cpuid_disagrees: 0,
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
        let architectural = ARCHITECTURAL.iter().find(|c| c.0 == bit).map(|c| c.1);
        if architectural.is_some() && reported.is_some() && reported != architectural {
            layout.cpuid_disagrees |= feature;
        }
        match architectural.or(reported) {
            Some(place) if place.offset.saturating_add(place.size) <= max_bytes => {
                layout.mask |= feature;
                layout.places[bit as usize] = Some(place);
                end = end.max(place.offset + place.size);
            }
            _ => layout.unswitched |= feature,
        }
    }
    layout.area_bytes = end.next_multiple_of(64);
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    /// CPUID as a CPU with the architectural layout answers it.
    fn honest(bit: u32) -> (u32, u32) {
        match ARCHITECTURAL.iter().find(|c| c.0 == bit) {
            Some((_, p)) => (p.size as u32, p.offset as u32),
            None => (0, 0),
        }
    }

    #[test]
    fn avx_host_switches_avx_in_832_bytes() {
        let l = plan(0x7, MAX, honest);
        assert_eq!(
            (l.mask, l.area_bytes, l.unswitched, l.cpuid_disagrees),
            (0x7, 832, 0, 0)
        );
        assert_eq!(l.places[2], Some(at(576, 256)));
    }

    #[test]
    fn amx_is_never_switched_and_avx512_fits_one_frame() {
        let l = plan(0x600e7, MAX, honest);
        assert_eq!((l.mask, l.area_bytes, l.unswitched), (0xe7, 2688, 0x60000));
    }

    #[test]
    fn components_cpuid_leaves_out_get_their_architectural_places() {
        assert_eq!(plan(0x2e7, MAX, |_| (0, 0)), plan(0x2e7, MAX, honest));
        assert_eq!(plan(0x2e7, MAX, |_| (0, 0)).area_bytes, 2752);
    }

    #[test]
    fn a_cpuid_answer_placing_a_component_too_low_cannot_shrink_the_area() {
        // CPUID claims ZMM_Hi256 and Hi16_ZMM sit right after AVX: XSAVE would still write
        // them at 1152 and 1664, so the area must reach 2688.
        let lying = |bit| match bit {
            6 => (512, 832),
            7 => (64, 1344),
            b => honest(b),
        };
        let l = plan(0xe7, MAX, lying);
        assert_eq!((l.area_bytes, l.cpuid_disagrees), (2688, 0xc0));
        assert_eq!(l.places[7], Some(at(1664, 1024)));
    }

    #[test]
    fn an_unknown_component_is_placed_by_cpuid_within_the_bound() {
        // APX's extended registers (component 19) where CPUs put them.
        let l = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (128, 960)
            } else {
                honest(bit)
            }
        });
        assert_eq!((l.mask, l.unswitched), (0x8_0007, 0));
        assert_eq!(l.places[19], Some(at(960, 128)));
        assert_eq!(l.area_bytes, 1088);
    }

    #[test]
    fn an_unknown_component_without_a_fitting_place_is_left_unswitched() {
        let far = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (512, 4000)
            } else {
                honest(bit)
            }
        });
        assert_eq!(
            (far.mask, far.unswitched, far.area_bytes),
            (0x7, 0x8_0000, 832)
        );
        let huge = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (u32::MAX, u32::MAX)
            } else {
                honest(bit)
            }
        });
        assert_eq!((huge.mask, huge.unswitched), (0x7, 0x8_0000));
        let unknown = plan(0x8_0007, MAX, honest);
        assert_eq!((unknown.mask, unknown.unswitched), (0x7, 0x8_0000));
        // A place inside the legacy region or header is no place.
        let low = plan(0x8_0007, MAX, |bit| {
            if bit == 19 {
                (64, 512)
            } else {
                honest(bit)
            }
        });
        assert_eq!(low.unswitched, 0x8_0000);
    }

    #[test]
    fn x87_and_sse_only() {
        let l = plan(0x3, MAX, honest);
        assert_eq!((l.mask, l.area_bytes, l.unswitched), (0x3, 576, 0));
    }
}
