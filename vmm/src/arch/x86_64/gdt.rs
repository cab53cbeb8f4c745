//! Segment descriptors for the initial vCPU state: the same value goes into
//! the in-memory GDT and into the hidden part of the segment registers.

use kvm_bindings::kvm_segment;

/// Descriptor flags as they sit in bits 40..56 of a GDT entry (access byte
/// and the granularity/size nibble).
pub const CODE32: u16 = 0xc09b;
pub const DATA32: u16 = 0xc093;
pub const CODE64: u16 = 0xa09b;
pub const TSS32_BUSY: u16 = 0x008b;

pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    // With 4 KiB granularity the limit counts pages.
    if entry & (1 << 55) != 0 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The `kvm_segment` for GDT entry `index` holding `entry`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from(bit(47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_round_trips() {
        let entry = gdt_entry(CODE32, 0, 0xfffff);
        assert_eq!(entry, 0x00cf_9b00_0000_ffff);
        let seg = segment_from_gdt(entry, 1);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.selector, 8);
        assert_eq!(
            (seg.type_, seg.present, seg.db, seg.s, seg.g),
            (0xb, 1, 1, 1, 1)
        );
    }

    #[test]
    fn long_mode_code_segment() {
        let seg = segment_from_gdt(gdt_entry(CODE64, 0, 0xfffff), 1);
        assert_eq!((seg.l, seg.db), (1, 0));
    }

    #[test]
    fn base_and_byte_granular_limit() {
        let entry = gdt_entry(TSS32_BUSY, 0x1234_5678, 0x67);
        let seg = segment_from_gdt(entry, 3);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0x67);
        assert_eq!(seg.s, 0);
    }
}
