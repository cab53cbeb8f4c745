//! What the VMM told us: `hvm_start_info` (command line, memory map, RSDP)
//! and the ACPI tables (CPUs, ECAM, how to power off).

use crate::io::{self, mmio};
use crate::rt::FixedString;

const START_INFO_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const MIB: u64 = 1 << 20;
/// The PCI hole: RAM above it is not usable for DMA buffers below 4 GiB.
const LOW_RAM_LIMIT: u64 = 0xc000_0000;

pub struct Platform {
    pub cmdline: FixedString<4096>,
    /// 1 MiB (the legacy area, counted whole as the VMMs size it) plus all
    /// RAM above 1 MiB: equals the configured memory size on both VMMs.
    pub mem_bytes: u64,
    /// The largest RAM range above the image and below the PCI hole.
    pub free_ram: (u64, u64),
    pub rsdp: u64,
    pub cpus: u32,
    pub ecam: Option<u64>,
    pub sleep: Option<SleepRegister>,
    /// The ACPI Generic Event Device, where the DSDT has one with an I/O
    /// status register.
    pub ged: Option<Ged>,
    /// The CMOS real-time clock, where the DSDT has a `PNP0B00` device.
    pub rtc: Option<RtcDevice>,
    /// The FADT's `CENTURY`: the RTC register holding the century, or 0.
    pub rtc_century: u8,
    /// The FADT's IAPC_BOOT_ARCH says "CMOS RTC not present".
    pub no_cmos_rtc: bool,
    pub warnings: FixedString<512>,
}

/// A `PNP0B00` device: its index port (data follows) and ISA IRQ.
#[derive(Clone, Copy, Debug)]
pub struct RtcDevice {
    pub port: u16,
    pub irq: u32,
}

/// An `ACPI0013` device: the status byte its `_EVT` reads, and its GSI.
#[derive(Clone, Copy, Debug)]
pub struct Ged {
    pub port: u16,
    pub gsi: u32,
}

/// Where writing SLP_TYP(5) | SLP_EN powers the machine off.
#[derive(Clone, Copy, Debug)]
pub enum SleepRegister {
    /// Hardware-reduced ACPI sleep control register.
    ControlIo(u16),
    ControlMmio(u64),
    /// PM1a control block (SLP_TYP in bits 10..12).
    Pm1aIo(u16),
}

fn read_u64(addr: u64) -> u64 {
    u64::from(mmio::read32(addr)) | (u64::from(mmio::read32(addr + 4)) << 32)
}

pub fn discover(image_end: u64, start_info: u64) -> Result<Platform, crate::rt::Failure> {
    if start_info == 0 || mmio::read32(start_info) != START_INFO_MAGIC {
        crate::bail!("no hvm_start_info (ebx=0x{start_info:x}): not booted through PVH?");
    }
    let mut p = Platform {
        cmdline: FixedString::new(),
        mem_bytes: MIB,
        free_ram: (0, 0),
        rsdp: 0,
        cpus: 1,
        ecam: None,
        sleep: None,
        ged: None,
        rtc: None,
        rtc_century: 0,
        no_cmos_rtc: false,
        warnings: FixedString::new(),
    };

    let cmdline = read_u64(start_info + 24);
    if cmdline != 0 {
        for i in 0..4095 {
            let b = mmio::read8(cmdline + i);
            if b == 0 {
                break;
            }
            let _ = core::fmt::Write::write_char(&mut p.cmdline, b as char);
        }
    }

    let memmap = read_u64(start_info + 40);
    let entries = mmio::read32(start_info + 48);
    if memmap == 0 || entries == 0 {
        crate::bail!("hvm_start_info has no memory map");
    }
    for i in 0..u64::from(entries) {
        let e = memmap + i * 24;
        let (addr, size, kind) = (read_u64(e), read_u64(e + 8), mmio::read32(e + 16));
        if kind != E820_RAM {
            continue;
        }
        let end = addr + size;
        if end > MIB {
            p.mem_bytes += end - addr.max(MIB);
        }
        let usable = (addr.max(image_end), end.min(LOW_RAM_LIMIT));
        if usable.1 > usable.0 && usable.1 - usable.0 > p.free_ram.1 - p.free_ram.0 {
            p.free_ram = usable;
        }
    }

    p.rsdp = read_u64(start_info + 32);
    if p.rsdp == 0 {
        p.rsdp = scan_rsdp().unwrap_or(0);
    }
    if p.rsdp != 0 {
        parse_acpi(&mut p);
    } else {
        let _ = core::fmt::Write::write_str(&mut p.warnings, "no RSDP; ");
    }
    Ok(p)
}

/// The legacy place for the RSDP, for VMMs that leave `rsdp_paddr` zero.
fn scan_rsdp() -> Option<u64> {
    (0xe0000u64..0x100000)
        .step_by(16)
        .find(|&a| read_u64(a) == u64::from_le_bytes(*b"RSD PTR "))
}

fn signature(table: u64) -> [u8; 4] {
    mmio::read32(table).to_le_bytes()
}

fn parse_acpi(p: &mut Platform) {
    let revision = mmio::read8(p.rsdp + 15);
    let (root, entry_size) = if revision >= 2 && read_u64(p.rsdp + 24) != 0 {
        (read_u64(p.rsdp + 24), 8)
    } else {
        (u64::from(mmio::read32(p.rsdp + 16)), 4)
    };
    let len = u64::from(mmio::read32(root + 4));
    let mut dsdt = 0;
    let mut offset = 36;
    while offset + entry_size <= len {
        let table = if entry_size == 8 {
            read_u64(root + offset)
        } else {
            u64::from(mmio::read32(root + offset))
        };
        offset += entry_size;
        match &signature(table) {
            b"APIC" => p.cpus = count_cpus(table),
            b"MCFG" if mmio::read32(table + 4) >= 44 + 16 => {
                p.ecam = Some(read_u64(table + 44));
            }
            b"FACP" => {
                dsdt = fadt_dsdt(table);
                p.sleep = fadt_sleep_register(table);
                if mmio::read32(table + 4) > 110 {
                    p.rtc_century = mmio::read8(table + 108);
                    p.no_cmos_rtc = mmio::read16(table + 109) & (1 << 5) != 0;
                }
            }
            _ => {}
        }
    }
    if p.ecam.is_none() && dsdt != 0 {
        p.ecam = dsdt_ecam(dsdt);
    }
    if dsdt != 0 {
        p.ged = dsdt_ged(dsdt);
        p.rtc = dsdt_rtc(dsdt);
    }
}

/// The `PNP0B00` device after its `_HID`: the first I/O port and the IRQ
/// of its `_CRS`, an `IRQNoFlags` (QEMU) or an extended interrupt (vmm).
fn dsdt_rtc(dsdt: u64) -> Option<RtcDevice> {
    let len = u64::from(mmio::read32(dsdt + 4));
    // DWordConst(EISAID("PNP0B00")).
    let start = dsdt_find(dsdt, &[0x0c, 0x41, 0xd0, 0x0b, 0x00])?;
    let (mut port, mut irq) = (None, None);
    let mut i = start;
    while i + 9 < (start + 256).min(len) && (port.is_none() || irq.is_none()) {
        match mmio::read8(dsdt + i) {
            // IO: tag, decode, min(2), max(2), alignment, length
            0x47 if port.is_none() => {
                port = Some(mmio::read16(dsdt + i + 2));
                i += 8;
            }
            // IRQ: tag (2 or 3 bytes follow), mask(2)
            0x22 | 0x23 if irq.is_none() => {
                let mask = mmio::read16(dsdt + i + 1);
                irq = (mask != 0).then(|| mask.trailing_zeros());
                i += 3;
            }
            // Extended IRQ: tag, len(2) = 6, flags, count = 1, number(4)
            0x89 if irq.is_none()
                && mmio::read8(dsdt + i + 1) == 6
                && mmio::read8(dsdt + i + 4) == 1 =>
            {
                irq = Some(mmio::read32(dsdt + i + 5));
                i += 9;
            }
            _ => i += 1,
        }
    }
    Some(RtcDevice {
        port: port?,
        irq: irq?,
    })
}

/// Where `bytes` first occurs in the DSDT's body.
fn dsdt_find(dsdt: u64, bytes: &[u8]) -> Option<u64> {
    let len = u64::from(mmio::read32(dsdt + 4));
    (36..len.saturating_sub(bytes.len() as u64)).find(|&i| {
        bytes
            .iter()
            .enumerate()
            .all(|(k, &b)| mmio::read8(dsdt + i + k as u64) == b)
    })
}

/// The `ACPI0013` device after its `_HID` string: the GSI its `_CRS`
/// lists (an extended interrupt, the only resource Linux's GED driver
/// takes there) and the status byte, an `OperationRegion` in system I/O
/// that `_EVT` reads.
fn dsdt_ged(dsdt: u64) -> Option<Ged> {
    let len = u64::from(mmio::read32(dsdt + 4));
    let start = dsdt_find(dsdt, b"\x0dACPI0013\0")?;
    let (mut port, mut gsi) = (None, None);
    let mut i = start;
    while i + 12 < (start + 256).min(len) && (port.is_none() || gsi.is_none()) {
        match (mmio::read8(dsdt + i), mmio::read8(dsdt + i + 1)) {
            // Extended IRQ: tag, len(2) = 6, flags, count = 1, number(4)
            (0x89, 0x06) if gsi.is_none() && mmio::read8(dsdt + i + 4) == 1 => {
                gsi = Some(mmio::read32(dsdt + i + 5));
                i += 9;
            }
            // OperationRegion: 5B 80, name(4), space (1 = I/O), offset
            (0x5b, 0x80) if port.is_none() && mmio::read8(dsdt + i + 6) == 1 => {
                let at = dsdt + i + 7;
                port = match mmio::read8(at) {
                    0x0a => Some(u16::from(mmio::read8(at + 1))),
                    0x0b => Some(mmio::read16(at + 1)),
                    0x0c => u16::try_from(mmio::read32(at + 1)).ok(),
                    _ => None,
                };
                i += 8;
            }
            _ => i += 1,
        }
    }
    Some(Ged {
        port: port?,
        gsi: gsi?,
    })
}

fn count_cpus(madt: u64) -> u32 {
    let len = u64::from(mmio::read32(madt + 4));
    let mut offset = 44;
    let mut cpus = 0;
    while offset + 2 <= len {
        let kind = mmio::read8(madt + offset);
        let entry_len = u64::from(mmio::read8(madt + offset + 1));
        if entry_len < 2 {
            break;
        }
        let flags = match kind {
            0 => mmio::read32(madt + offset + 4),
            9 => mmio::read32(madt + offset + 8),
            _ => 0,
        };
        // Enabled, or online-capable (ACPI 6.3).
        if (kind == 0 || kind == 9) && flags & 0b11 != 0 {
            cpus += 1;
        }
        offset += entry_len;
    }
    cpus.max(1)
}

fn fadt_dsdt(fadt: u64) -> u64 {
    let len = mmio::read32(fadt + 4);
    if len >= 148 && read_u64(fadt + 140) != 0 {
        read_u64(fadt + 140)
    } else {
        u64::from(mmio::read32(fadt + 40))
    }
}

fn fadt_sleep_register(fadt: u64) -> Option<SleepRegister> {
    let len = mmio::read32(fadt + 4);
    if len >= 256 {
        let space = mmio::read8(fadt + 244);
        let addr = read_u64(fadt + 248);
        if addr != 0 {
            match space {
                0 => return Some(SleepRegister::ControlMmio(addr)),
                1 => return Some(SleepRegister::ControlIo(addr as u16)),
                _ => {}
            }
        }
    }
    let pm1a = mmio::read32(fadt + 64);
    (pm1a != 0).then_some(SleepRegister::Pm1aIo(pm1a as u16))
}

/// QEMU's microvm has no MCFG: its ECAM is a memory resource of the
/// PNP0C02 device in the DSDT. Finds that id (as an EISA id or, as QEMU
/// writes it, a string) and takes the first memory descriptor after it.
fn dsdt_ecam(dsdt: u64) -> Option<u64> {
    let len = u64::from(mmio::read32(dsdt + 4));
    // DWordConst 0x41d00c02 = EISAID("PNP0C02"), or String "PNP0C02".
    let patterns: [&[u8]; 2] = [&[0x0c, 0x41, 0xd0, 0x0c, 0x02], b"\x0dPNP0C02\0"];
    let found = |i: u64, p: &[u8]| {
        p.iter()
            .enumerate()
            .all(|(k, &b)| mmio::read8(dsdt + i + k as u64) == b)
    };
    let (start, plen) = (36..len.saturating_sub(9)).find_map(|i| {
        patterns
            .iter()
            .find(|p| found(i, p))
            .map(|p| (i, p.len() as u64))
    })?;
    let start = start + plen - 5;
    let mut i = start + 5;
    let limit = (start + 256).min(len);
    while i + 4 < limit {
        match mmio::read8(dsdt + i) {
            // Memory32Fixed: tag, len(2), rw, base(4), size(4)
            0x86 if mmio::read16(dsdt + i + 1) == 9 => {
                return Some(u64::from(mmio::read32(dsdt + i + 4)));
            }
            // DWord memory: tag, len(2), type, flags, tflags, gran(4), min(4)
            0x87 if mmio::read16(dsdt + i + 1) == 23 => {
                return Some(u64::from(mmio::read32(dsdt + i + 10)));
            }
            // QWord memory: tag, len(2), type, flags, tflags, gran(8), min(8)
            0x8a if mmio::read16(dsdt + i + 1) == 43 => {
                return Some(read_u64(dsdt + i + 14));
            }
            _ => i += 1,
        }
    }
    None
}

/// ACPI S5, then the exit port as a last resort (which reads as failure,
/// so a broken power-off path cannot pass). VMMs act on the request
/// asynchronously (QEMU after the vCPU returns to its main loop), so the
/// guest gives them a moment before it declares failure.
pub fn power_off(sleep: Option<SleepRegister>, clock: &crate::Clock) -> ! {
    const SLP_S5: u8 = (5 << 2) | (1 << 5);
    match sleep {
        Some(SleepRegister::ControlIo(port)) => io::outb(port, SLP_S5),
        Some(SleepRegister::ControlMmio(addr)) => mmio::write8(addr, SLP_S5),
        Some(SleepRegister::Pm1aIo(port)) => io::outw(port, (5 << 10) | (1 << 13)),
        None => {}
    }
    let deadline = clock.deadline_ms(3000);
    while !clock.expired(deadline) {
        io::pause();
    }
    crate::record!("result=fail reason=\"ACPI power-off did not stop the machine\"");
    io::exit_failure()
}
