//! The checks on synthetic images: ELF headers and segments, bzImage
//! headers, against small guest RAM.

use std::io::Cursor;

use super::*;

const MIB: u64 = 1 << 20;

/// A PT_LOAD (or other `kind`) segment: physical address, bytes in the
/// file, bytes in memory.
#[derive(Clone, Copy)]
struct Seg {
    kind: u32,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn load(paddr: u64, filesz: u64, memsz: u64) -> Seg {
    Seg {
        kind: PT_LOAD,
        paddr,
        filesz,
        memsz,
    }
}

/// An ELF64 with the program headers right after the header and the
/// segments' bytes after them.
fn elf(class: u8, data: u8, machine: u16, segs: &[Seg]) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[4] = class;
    bytes[5] = data;
    bytes[6] = 1;
    bytes[16..18].copy_from_slice(&2u16.to_le_bytes());
    bytes[18..20].copy_from_slice(&machine.to_le_bytes());
    bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
    bytes[52..54].copy_from_slice(&64u16.to_le_bytes());
    bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
    bytes[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut data_offset = 64 + 56 * segs.len() as u64;
    for seg in segs {
        let mut phdr = [0u8; 56];
        phdr[..4].copy_from_slice(&seg.kind.to_le_bytes());
        phdr[8..16].copy_from_slice(&data_offset.to_le_bytes());
        phdr[16..24].copy_from_slice(&seg.paddr.to_le_bytes());
        phdr[24..32].copy_from_slice(&seg.paddr.to_le_bytes());
        phdr[32..40].copy_from_slice(&seg.filesz.to_le_bytes());
        phdr[40..48].copy_from_slice(&seg.memsz.to_le_bytes());
        bytes.extend_from_slice(&phdr);
        data_offset += seg.filesz;
    }
    for seg in segs {
        bytes.extend(std::iter::repeat_n(0x90u8, seg.filesz as usize));
    }
    bytes
}

fn x86_64(segs: &[Seg]) -> Vec<u8> {
    elf(ELFCLASS64, ELFDATA2LSB, EM_X86_64, segs)
}

fn check(bytes: &[u8], mem_size: u64) -> Result<ElfImage, ImageError> {
    check_elf(
        &mut Cursor::new(bytes),
        bytes.len() as u64,
        PayloadRam::new(mem_size),
    )
}

/// The probe guest's layout: code and data from 1 MiB, then bss.
const PROBE: Seg = Seg {
    kind: PT_LOAD,
    paddr: MIB,
    filesz: 0x28230,
    memsz: 0x243438,
};

#[test]
fn a_kernel_within_ram_passes_and_says_where_it_ends() {
    let image = check(&x86_64(&[PROBE]), 512 * MIB).unwrap();
    assert_eq!(image.end(), MIB + 0x243438);
    image.check_entry(MIB + 0x20).unwrap();
}

#[test]
fn segments_ending_past_ram_are_refused_naming_the_memory_size() {
    for (mem, text) in [(2 * MIB, "size=2M"), (3 * MIB, "size=3M")] {
        let err = check(&x86_64(&[PROBE]), mem).unwrap_err();
        assert!(
            matches!(err, ImageError::SegmentOutsideRam { index: 0, .. }),
            "{err}"
        );
        let text = format!(
            "segment 0 at 0x100000..0x343438 is not within guest RAM 0x100000..{mem:#x} (--memory {text})"
        );
        assert_eq!(err.to_string(), text);
    }
}

#[test]
fn a_segment_below_1m_is_refused() {
    for seg in [load(0, 0x1000, 0x1000), load(0xff000, 0x2000, 0x2000)] {
        let err = check(&x86_64(&[seg]), 512 * MIB).unwrap_err();
        assert!(matches!(err, ImageError::SegmentTooLow { .. }), "{err}");
        assert!(err.to_string().contains("below 1 MiB"), "{err}");
    }
}

#[test]
fn segments_in_holes_or_above_ram_are_refused() {
    let cases = [
        // ECAM, in the 32-bit gap.
        (load(0xe000_0000, 0x1000, 0x1000), 512 * MIB),
        // Above 4G with RAM only below.
        (load(0x1_0000_0000, 0x1000, 0x1000), 512 * MIB),
        // Across the gap: RAM on both sides, but not one range.
        (load(0xbff0_0000, 0x1000, 2 * MIB), 4096 * MIB),
        // An end past 2^64.
        (load(2 * MIB, 0x1000, u64::MAX), 512 * MIB),
    ];
    for (seg, mem) in cases {
        let err = check(&x86_64(&[seg]), mem).unwrap_err();
        assert!(
            matches!(err, ImageError::SegmentOutsideRam { .. }),
            "{:#x}: {err}",
            seg.paddr
        );
    }
    // Above 4G is fine when RAM is there.
    check(&x86_64(&[load(0x1_0000_0000, 0x1000, 0x1000)]), 8192 * MIB).unwrap();
}

#[test]
fn wrong_classes_byte_orders_and_machines_are_refused() {
    let err = check(&elf(1, ELFDATA2LSB, 3, &[PROBE]), 512 * MIB).unwrap_err();
    assert_eq!(
        err.to_string(),
        "it is a 32-bit ELF (ELFCLASS32): expected a 64-bit ELF (ELFCLASS64)"
    );
    let err = check(&elf(ELFCLASS64, 2, EM_X86_64, &[PROBE]), 512 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::BigEndian), "{err}");
    let err = check(&elf(ELFCLASS64, ELFDATA2LSB, 183, &[PROBE]), 512 * MIB).unwrap_err();
    assert_eq!(
        err.to_string(),
        "it is built for AArch64 (ELF machine 183): expected x86_64 (62)"
    );
}

#[test]
fn truncated_files_are_refused() {
    let bytes = x86_64(&[PROBE]);
    // Cut inside the header, inside the program headers, inside the data.
    for len in [40, 100, bytes.len() - 1] {
        let err = check(&bytes[..len], 512 * MIB).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooShort { .. }
                    | ImageError::ProgramHeaders { .. }
                    | ImageError::SegmentPastFile { .. }
            ),
            "{len}: {err}"
        );
    }
}

#[test]
fn malformed_segments_are_refused() {
    let err = check(&x86_64(&[load(MIB, 0x2000, 0x1000)]), 512 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::SegmentSizes { .. }), "{err}");
    let note = Seg { kind: 4, ..PROBE };
    let err = check(&x86_64(&[note]), 512 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::NoSegment), "{err}");
    let mut bytes = x86_64(&[PROBE]);
    bytes[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
    let err = check(&bytes, 512 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::ProgramHeaders { .. }), "{err}");
}

#[test]
fn the_pvh_entry_must_be_loaded_code() {
    let image = check(&x86_64(&[PROBE]), 512 * MIB).unwrap();
    for entry in [0, MIB - 1, MIB + 0x28230, 0x5000_0000] {
        let err = image.check_entry(entry).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("its PVH entry point {entry:#x} is not in any segment it loads")
        );
    }
}

/// A bzImage with `setup_sects` sectors of setup and `kernel` bytes after.
fn bzimage(version: u16, xloadflags: u16, setup_sects: u8, kernel: usize) -> Vec<u8> {
    let setup = (usize::from(setup_sects.max(1)) + 1) * 512;
    let mut bytes = vec![0u8; setup + kernel];
    bytes[0x1f1] = setup_sects;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    bytes[0x211] = LOADED_HIGH;
    bytes[0x214..0x218].copy_from_slice(&(MIB as u32).to_le_bytes());
    bytes[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    bytes[0x258..0x260].copy_from_slice(&(16 * MIB).to_le_bytes());
    bytes[0x260..0x264].copy_from_slice(&(8 * MIB as u32).to_le_bytes());
    bytes
}

fn check_bz(bytes: &[u8], mem_size: u64) -> Result<BzImageLayout, ImageError> {
    check_bzimage(
        &mut Cursor::new(bytes),
        bytes.len() as u64,
        PayloadRam::new(mem_size),
    )
}

#[test]
fn a_bzimage_passes_and_reserves_its_decompression_space() {
    let bytes = bzimage(0x020f, XLF_KERNEL_64, 30, 0x10000);
    let layout = check_bz(&bytes, 512 * MIB).unwrap();
    // pref_address 16M + init_size 8M, beyond the 64K loaded at 1M.
    assert_eq!(layout, BzImageLayout { end: 24 * MIB });
}

#[test]
fn a_truncated_bzimage_is_refused_without_underflow() {
    let bytes = bzimage(0x020f, XLF_KERNEL_64, 30, 0x10000);
    let err = check_bz(&bytes[..31 * 512], 512 * MIB).unwrap_err();
    assert_eq!(
        err.to_string(),
        "it is cut short: 15872 bytes, but its setup code alone takes 15872"
    );
    let err = check_bz(&bytes[..0x250], 512 * MIB).unwrap_err();
    assert!(
        matches!(err, ImageError::TooShort { len: 0x250, .. }),
        "{err}"
    );
    let err = check_bz(&bytes[..3], 512 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::TooShort { len: 3, .. }), "{err}");
}

#[test]
fn a_bzimage_without_a_64_bit_entry_is_refused() {
    for (version, flags) in [(0x020b, XLF_KERNEL_64), (0x020f, 0)] {
        let err = check_bz(&bzimage(version, flags, 30, 0x1000), 512 * MIB).unwrap_err();
        assert!(matches!(err, ImageError::No64BitEntry { .. }), "{err}");
    }
    let err = check_bz(&bzimage(0x020b, 1, 30, 0x1000), 512 * MIB).unwrap_err();
    assert!(err.to_string().contains("boot protocol 2.11"), "{err}");
}

#[test]
fn other_files_are_named_for_what_they_are() {
    let mut arm64 = vec![0u8; 0x1000];
    arm64[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let err = check_bz(&arm64, 512 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::Arm64), "{err}");
    let err = check_bz(&[0u8; 0x1000], 512 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::NotBzImage), "{err}");
}

#[test]
fn a_bzimage_past_ram_is_refused() {
    let bytes = bzimage(0x020f, XLF_KERNEL_64, 30, 2 * MIB as usize);
    let err = check_bz(&bytes, 2 * MIB).unwrap_err();
    assert!(matches!(err, ImageError::KernelOutsideRam { .. }), "{err}");
    assert!(err.to_string().contains("--memory size=2M"), "{err}");
}

#[test]
fn ram_is_described_as_the_user_gave_it() {
    assert_eq!(
        PayloadRam::new(4 << 30).to_string(),
        "0x100000..0xc0000000 and 0x100000000..0x140000000 (--memory size=4G)"
    );
    assert_eq!(PayloadRam::new(3 * MIB + 4096).size_text(), "3076K");
}
