//! Loading the payload: a PVH ELF (`vmlinux`, the probe guest) or a bzImage
//! through the Linux boot protocol, with the command line, the initramfs and
//! the memory map each protocol expects.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap as GuestMemory};

use super::image::{self, ImageError, PayloadRam};
use super::layout::*;
use super::regs::BootEntry;
use crate::files::{open_input, FileError};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// Offset of the 64-bit entry point (`startup_64`) in a loaded bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const PAGE_SIZE: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Failed to open the {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("Failed to read the kernel image {path}")]
    ReadKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to load the ELF kernel {path}")]
    LoadElf {
        path: PathBuf,
        #[source]
        source: LoaderCause,
    },
    #[error("Kernel {path} cannot be loaded")]
    Kernel {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("ELF kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry(PathBuf),
    #[error("Failed to load the bzImage kernel {path}")]
    LoadBzImage {
        path: PathBuf,
        #[source]
        source: LoaderCause,
    },
    #[error("Invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("Failed to write the kernel command line to guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("Initramfs {path} ({size} bytes) does not fit in guest RAM between the kernel's end at {floor:#x} and {limit:#x} (--memory size={memory})")]
    InitramfsTooLarge {
        path: PathBuf,
        size: u64,
        floor: u64,
        limit: u64,
        memory: String,
    },
    #[error("Failed to load the initramfs {path}")]
    LoadInitramfs {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("Failed to write boot parameters to guest memory")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
    #[error("Failed to write boot structures to guest memory")]
    WriteMemory(#[source] vm_memory::GuestMemoryError),
}

/// What linux-loader says went wrong. Its errors nest the same text two or
/// three times, each prefixed "Kernel Loader: " ("failed to load bzImage
/// kernel image: Kernel Loader: Invalid bzImage: Kernel Loader: Invalid
/// bzImage"); only the innermost message says something new.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoaderCause(String);

impl LoaderCause {
    fn of(error: &linux_loader::loader::Error) -> LoaderCause {
        let mut innermost: &dyn std::error::Error = error;
        while let Some(source) = innermost.source() {
            innermost = source;
        }
        let text = innermost.to_string();
        LoaderCause(text.trim_start_matches("Kernel Loader: ").to_owned())
    }
}

/// The guest memory map given to the kernel (PVH memmap or e820).
pub fn memory_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        // The legacy BIOS area holds our ACPI tables.
        (EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_size) {
        // Below 1 MiB only the part up to the EBDA is RAM (listed above).
        let end = start.raw_value() + len;
        let start = start.raw_value().max(HIGH_RAM_START);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    // Reserved so that Linux trusts the MCFG region (it checks e820).
    map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    map.sort_by_key(|e| e.0);
    map
}

pub struct Payload<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
}

/// Opens the kernel or the initramfs (`what`).
fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    open_input(path).map_err(|source| BootError::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Loads kernel, command line and initramfs, writes the boot protocol's
/// structures, and says where the boot vCPU starts.
pub fn load_payload(
    mem: &GuestMemory,
    mem_size: u64,
    payload: &Payload,
    rsdp: u64,
) -> Result<BootEntry, BootError> {
    let mut kernel = open("kernel", payload.kernel)?;
    let mut magic = [0u8; 4];
    let read_err = |source| BootError::ReadKernel {
        path: payload.kernel.to_owned(),
        source,
    };
    kernel.read_exact(&mut magic).map_err(read_err)?;
    let len = kernel.metadata().map_err(read_err)?.len();
    let ram = PayloadRam::new(mem_size);
    let unusable = |source| BootError::Kernel {
        path: payload.kernel.to_owned(),
        source,
    };

    let cmdline = build_cmdline(payload.cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BootError::WriteCmdline)?;

    if magic == ELF_MAGIC {
        // linux-loader trusts the headers: check them against RAM first.
        let image = image::check_elf(&mut kernel, len, ram).map_err(unusable)?;
        kernel.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let loaded = Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIGH_RAM_START)))
            .map_err(|e| BootError::LoadElf {
                path: payload.kernel.to_owned(),
                source: LoaderCause::of(&e),
            })?;
        let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
            return Err(BootError::NoPvhEntry(payload.kernel.to_owned()));
        };
        image.check_entry(entry.raw_value()).map_err(unusable)?;
        let initramfs = load_initramfs(mem, ram, payload.initramfs, image.end(), u64::MAX)?;
        write_pvh_start_info(mem, mem_size, initramfs, rsdp)?;
        log::info!("PVH entry at {:#x}", entry.raw_value());
        Ok(BootEntry::Pvh {
            entry: entry.raw_value(),
            start_info: PVH_INFO_START,
        })
    } else {
        let layout = image::check_bzimage(&mut kernel, len, ram).map_err(unusable)?;
        kernel.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let loaded = BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIGH_RAM_START)))
            .map_err(|e| BootError::LoadBzImage {
                path: payload.kernel.to_owned(),
                source: LoaderCause::of(&e),
            })?;
        let mut params = boot_params::default();
        if let Some(hdr) = loaded.setup_header {
            params.hdr = hdr;
        }
        let initrd_max = u64::from(params.hdr.initrd_addr_max);
        let initramfs = load_initramfs(mem, ram, payload.initramfs, layout.end, initrd_max)?;
        fill_boot_params(&mut params, mem_size, &cmdline, initramfs, rsdp);
        LinuxBootConfigurator::write_bootparams(
            &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
            mem,
        )
        .map_err(BootError::WriteBootParams)?;
        write_identity_page_tables(mem)?;
        let entry = loaded.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET;
        log::info!("bzImage 64-bit entry at {entry:#x}");
        Ok(BootEntry::Linux64 {
            entry,
            zero_page: ZERO_PAGE_START,
        })
    }
}

fn build_cmdline(text: &str) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    if !text.is_empty() {
        cmdline.insert_str(text).map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Places the initramfs at the top of low RAM (below `limit`), page
/// aligned, and above `floor`: the end of what the kernel occupies.
fn load_initramfs(
    mem: &GuestMemory,
    ram: PayloadRam,
    path: Option<&Path>,
    floor: u64,
    limit: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    let Some(path) = path else { return Ok(None) };
    let mut file = open("initramfs", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initramfs",
            path: path.to_owned(),
            source: source.into(),
        })?
        .len();
    let low_ram_end = ram
        .size()
        .min(MEM_32BIT_GAP_START)
        .min(limit.saturating_add(1));
    let too_large = || BootError::InitramfsTooLarge {
        path: path.to_owned(),
        size,
        floor,
        limit: low_ram_end,
        memory: ram.size_text(),
    };
    let start = low_ram_end
        .checked_sub(size)
        .map(|s| s & !(PAGE_SIZE - 1))
        .ok_or_else(too_large)?;
    if start < floor {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, size as usize)
        .map_err(|source| BootError::LoadInitramfs {
            path: path.to_owned(),
            source,
        })?;
    log::info!("Initramfs at {start:#x}, {size} bytes");
    Ok(Some((start, size)))
}

fn write_pvh_start_info(
    mem: &GuestMemory,
    mem_size: u64,
    initramfs: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem_size)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((paddr, size)) = initramfs {
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::WriteBootParams)
}

fn fill_boot_params(
    params: &mut boot_params,
    mem_size: u64,
    cmdline: &Cmdline,
    initramfs: Option<(u64, u64)>,
    rsdp: u64,
) {
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline
        .as_cstring()
        .map_or(0, |c| c.as_bytes().len() as u32);
    if let Some((start, size)) = initramfs {
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let map = memory_map(mem_size);
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
}

/// Identity map of the first GiB with 2 MiB pages, for the 64-bit entry.
fn write_identity_page_tables(mem: &GuestMemory) -> Result<(), BootError> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_WRITABLE, GuestAddress(PML4_START))
        .map_err(BootError::WriteMemory)?;
    mem.write_obj(PDE_START | PRESENT_WRITABLE, GuestAddress(PDPTE_START))
        .map_err(BootError::WriteMemory)?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PRESENT_WRITABLE | HUGE,
            GuestAddress(PDE_START + i * 8),
        )
        .map_err(BootError::WriteMemory)?;
    }
    Ok(())
}

/// Writes the GDT matching the initial segment registers.
pub fn write_boot_gdt(mem: &GuestMemory, gdt: &[u64]) -> Result<(), BootError> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(BootError::WriteMemory)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_total_above_1m(map: &[(u64, u64, u32)]) -> u64 {
        map.iter()
            .filter(|e| e.2 == E820_RAM && e.0 >= HIGH_RAM_START)
            .map(|e| e.1)
            .sum()
    }

    #[test]
    fn memory_map_describes_exactly_the_configured_ram() {
        for size in [64u64 << 20, 512 << 20, 3 << 30, 16 << 30] {
            let map = memory_map(size);
            assert_eq!(ram_total_above_1m(&map) + HIGH_RAM_START, size, "{size:#x}");
            for pair in map.windows(2) {
                assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap in {map:x?}");
            }
        }
    }

    #[test]
    fn memory_map_reserves_bios_area_and_ecam() {
        let map = memory_map(512 << 20);
        assert!(map.contains(&(EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED)));
        assert!(map.contains(&(PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED)));
        assert!(map.contains(&(HIGH_RAM_START, (512 << 20) - HIGH_RAM_START, E820_RAM)));
    }
}
