//! What a kernel image must be before any of it is loaded: a 64-bit x86_64
//! ELF whose PVH entry lies in what it loads, or a bzImage with a 64-bit
//! entry point; either way, every byte it places lands in guest RAM at or
//! above 1 MiB (below is vmm's: boot structures, the command line, the ACPI
//! tables). linux-loader trusts the file's headers, so these checks run
//! first and say which limit the file breaks.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

use super::layout::{ram_ranges, HIGH_RAM_START};

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ELF_HEADER_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;
const PT_LOAD: u32 = 1;

/// Linux boot protocol: the setup header's fields, by offset in the file.
const SETUP_SECTS: u64 = 0x1f1;
const HDRS_OFFSET: u64 = 0x202;
const HDRS: &[u8; 4] = b"HdrS";
const SETUP_HEADER_END: u64 = 0x268;
/// Protocol 2.12 added `xloadflags`, which says whether there is a 64-bit
/// entry point (the one vmm jumps to).
const MIN_PROTOCOL: u16 = 0x020c;
const LOADED_HIGH: u8 = 1;
const XLF_KERNEL_64: u16 = 1;
/// arm64 `Image` files carry "ARM\x64" here.
const ARM64_MAGIC_OFFSET: u64 = 0x38;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

/// Guest RAM that a kernel or an initramfs may occupy: all of it from
/// 1 MiB up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadRam {
    size: u64,
}

impl PayloadRam {
    pub fn new(size: u64) -> Self {
        Self { size }
    }

    /// All of guest RAM, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The usable ranges, `[start, end)`.
    fn ranges(&self) -> impl Iterator<Item = (u64, u64)> {
        ram_ranges(self.size)
            .into_iter()
            .map(|(start, len)| (start.0.max(HIGH_RAM_START), start.0 + len))
            .filter(|(start, end)| start < end)
    }

    /// Whether `[start, end)` lies within one range.
    pub fn holds(&self, start: u64, end: u64) -> bool {
        self.ranges().any(|(s, e)| s <= start && end <= e)
    }

    /// The `--memory size=` that gave this RAM, as the user would write it.
    pub fn size_text(&self) -> String {
        let size = self.size;
        for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if size != 0 && size.is_multiple_of(1 << shift) {
                return format!("{}{suffix}", size >> shift);
            }
        }
        size.to_string()
    }
}

impl fmt::Display for PayloadRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self
            .ranges()
            .map(|(start, end)| format!("{start:#x}..{end:#x}"))
            .collect();
        write!(
            f,
            "{} (--memory size={})",
            ranges.join(" and "),
            self.size_text()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("it is {len} bytes long, too short for {what}")]
    TooShort { len: u64, what: &'static str },
    #[error("the file could not be read")]
    Read(#[source] std::io::Error),
    #[error("it is {}: expected a 64-bit ELF (ELFCLASS64)", class_name(*.0))]
    ElfClass(u8),
    #[error("it is a big-endian ELF: expected a little-endian x86_64 one")]
    BigEndian,
    #[error("it is built for {name} (ELF machine {machine}): expected x86_64 ({EM_X86_64})", name = machine_name(*.0), machine = .0)]
    Machine(u16),
    #[error("its program headers ({count} at {offset:#x}, {size} bytes each) are not within the file ({len} bytes)")]
    ProgramHeaders {
        count: u16,
        offset: u64,
        size: u16,
        len: u64,
    },
    #[error("it has no loadable segment")]
    NoSegment,
    #[error("segment {index} has {filesz:#x} bytes in the file but only {memsz:#x} in memory")]
    SegmentSizes {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("segment {index}: {filesz} bytes at file offset {offset:#x} go past the end of the file ({len} bytes)")]
    SegmentPastFile {
        index: usize,
        offset: u64,
        filesz: u64,
        len: u64,
    },
    #[error("segment {index} at {start:#x}..{end:#x} is below 1 MiB, where vmm keeps its boot structures and ACPI tables")]
    SegmentTooLow { index: usize, start: u64, end: u64 },
    #[error("segment {index} at {start:#x}..{end:#x} is not within guest RAM {ram}")]
    SegmentOutsideRam {
        index: usize,
        start: u64,
        end: u64,
        ram: PayloadRam,
    },
    #[error("its PVH entry point {entry:#x} is not in any segment it loads")]
    EntryOutside { entry: u64 },
    #[error("it is an arm64 kernel Image: expected an x86_64 kernel")]
    Arm64,
    #[error("it is neither an ELF nor a bzImage (no \"HdrS\" at {HDRS_OFFSET:#x})")]
    NotBzImage,
    #[error("its boot protocol {}.{} has no 64-bit entry point: expected 2.12 or later with XLF_KERNEL_64", .version >> 8, .version & 0xff)]
    No64BitEntry { version: u16 },
    #[error("it does not load at 1 MiB (LOADED_HIGH is clear): zImage kernels are not supported")]
    NotLoadedHigh,
    #[error("it is cut short: {len} bytes, but its setup code alone takes {setup}")]
    CutShort { len: u64, setup: u64 },
    #[error("its kernel at {start:#x}..{end:#x} is not within guest RAM {ram}")]
    KernelOutsideRam {
        start: u64,
        end: u64,
        ram: PayloadRam,
    },
}

fn class_name(class: u8) -> String {
    match class {
        1 => "a 32-bit ELF (ELFCLASS32)".into(),
        other => format!("an ELF of unknown class {other}"),
    }
}

fn machine_name(machine: u16) -> &'static str {
    match machine {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "ARM",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "another machine",
    }
}

/// One PT_LOAD segment, as guest-physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: u64,
    /// End of the bytes read from the file.
    file_end: u64,
    /// End including what is only zeroed (bss).
    end: u64,
}

/// An ELF kernel that passed the checks.
#[derive(Debug)]
pub struct ElfImage {
    segments: Vec<Segment>,
}

impl ElfImage {
    /// Where the last segment ends: the kernel's footprint.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(|s| s.end).max().unwrap_or(0)
    }

    /// The PVH entry must be code the image loads.
    pub fn check_entry(&self, entry: u64) -> Result<(), ImageError> {
        if self
            .segments
            .iter()
            .any(|s| (s.start..s.file_end).contains(&entry))
        {
            Ok(())
        } else {
            Err(ImageError::EntryOutside { entry })
        }
    }
}

/// A bzImage that passed the checks.
#[derive(Debug, PartialEq, Eq)]
pub struct BzImageLayout {
    /// Where the kernel and its decompression need memory up to: past the
    /// loaded bytes, and past `init_size` from the preferred address.
    pub end: u64,
}

fn read_at<R: Read + Seek>(file: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(ImageError::Read)
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

/// Checks an ELF kernel of `len` bytes (its magic already seen) against
/// `ram`: class, byte order, machine, and every PT_LOAD segment.
pub fn check_elf<R: Read + Seek>(
    file: &mut R,
    len: u64,
    ram: PayloadRam,
) -> Result<ElfImage, ImageError> {
    if len < ELF_HEADER_LEN {
        return Err(ImageError::TooShort {
            len,
            what: "an ELF header",
        });
    }
    let mut header = [0u8; ELF_HEADER_LEN as usize];
    read_at(file, 0, &mut header)?;
    // The machine is at the same offset in both classes.
    let machine = u16_at(&header, 18);
    if header[4] != ELFCLASS64 {
        return Err(ImageError::ElfClass(header[4]));
    }
    if header[5] != ELFDATA2LSB {
        return Err(ImageError::BigEndian);
    }
    if machine != EM_X86_64 {
        return Err(ImageError::Machine(machine));
    }
    let offset = u64_at(&header, 32);
    let size = u16_at(&header, 54);
    let count = u16_at(&header, 56);
    let table_end = u64::from(count)
        .checked_mul(PHDR_LEN)
        .and_then(|bytes| offset.checked_add(bytes));
    if u64::from(size) != PHDR_LEN || table_end.is_none_or(|end| end > len) {
        return Err(ImageError::ProgramHeaders {
            count,
            offset,
            size,
            len,
        });
    }
    let mut segments = Vec::new();
    for index in 0..usize::from(count) {
        let mut phdr = [0u8; PHDR_LEN as usize];
        read_at(file, offset + index as u64 * PHDR_LEN, &mut phdr)?;
        if u32_at(&phdr, 0) != PT_LOAD {
            continue;
        }
        if let Some(segment) = check_segment(index, &phdr, len, ram)? {
            segments.push(segment);
        }
    }
    if segments.is_empty() {
        return Err(ImageError::NoSegment);
    }
    Ok(ElfImage { segments })
}

/// One PT_LOAD header; None for an empty one.
fn check_segment(
    index: usize,
    phdr: &[u8],
    len: u64,
    ram: PayloadRam,
) -> Result<Option<Segment>, ImageError> {
    let offset = u64_at(phdr, 8);
    let start = u64_at(phdr, 24);
    let filesz = u64_at(phdr, 32);
    let memsz = u64_at(phdr, 40);
    if memsz == 0 && filesz == 0 {
        return Ok(None);
    }
    if filesz > memsz {
        return Err(ImageError::SegmentSizes {
            index,
            filesz,
            memsz,
        });
    }
    if offset.checked_add(filesz).is_none_or(|end| end > len) {
        return Err(ImageError::SegmentPastFile {
            index,
            offset,
            filesz,
            len,
        });
    }
    // An end past 2^64 is outside RAM as much as any.
    let end = start.saturating_add(memsz);
    if start < HIGH_RAM_START {
        return Err(ImageError::SegmentTooLow { index, start, end });
    }
    if !ram.holds(start, end) {
        return Err(ImageError::SegmentOutsideRam {
            index,
            start,
            end,
            ram,
        });
    }
    Ok(Some(Segment {
        start,
        file_end: start + filesz,
        end,
    }))
}

/// Checks a file of `len` bytes that is not an ELF: it must be an x86_64
/// bzImage with a 64-bit entry whose kernel fits `ram`.
pub fn check_bzimage<R: Read + Seek>(
    file: &mut R,
    len: u64,
    ram: PayloadRam,
) -> Result<BzImageLayout, ImageError> {
    if len >= ARM64_MAGIC_OFFSET + 4 {
        let mut magic = [0u8; 4];
        read_at(file, ARM64_MAGIC_OFFSET, &mut magic)?;
        if &magic == ARM64_MAGIC {
            return Err(ImageError::Arm64);
        }
    }
    if len < SETUP_HEADER_END {
        return Err(ImageError::TooShort {
            len,
            what: "a bzImage setup header",
        });
    }
    let mut header = [0u8; (SETUP_HEADER_END - SETUP_SECTS) as usize];
    read_at(file, SETUP_SECTS, &mut header)?;
    let at = |offset: u64| (offset - SETUP_SECTS) as usize;
    if &header[at(HDRS_OFFSET)..at(HDRS_OFFSET) + 4] != HDRS {
        return Err(ImageError::NotBzImage);
    }
    let version = u16_at(&header, at(0x206));
    if version < MIN_PROTOCOL || u16_at(&header, at(0x236)) & XLF_KERNEL_64 == 0 {
        return Err(ImageError::No64BitEntry { version });
    }
    if header[at(0x211)] & LOADED_HIGH == 0 {
        return Err(ImageError::NotLoadedHigh);
    }
    // 0 means 4, for old images.
    let setup_sects = match header[0] {
        0 => 4,
        n => u64::from(n),
    };
    let setup = (setup_sects + 1) * 512;
    if len <= setup {
        return Err(ImageError::CutShort { len, setup });
    }
    let start = u64::from(u32_at(&header, at(0x214)));
    let end = start + (len - setup);
    if start < HIGH_RAM_START || !ram.holds(start, end) {
        return Err(ImageError::KernelOutsideRam { start, end, ram });
    }
    let pref_address = u64_at(&header, at(0x258));
    let init_size = u64::from(u32_at(&header, at(0x260)));
    Ok(BzImageLayout {
        end: end.max(pref_address.saturating_add(init_size)),
    })
}

#[cfg(test)]
mod tests;
