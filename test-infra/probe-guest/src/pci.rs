//! PCI on bus 0: configuration access through ECAM (or 0xcf8/0xcfc),
//! enumeration, BAR sizing and assignment, capability discovery.
//!
//! The probe assigns every BAR itself from one window, so that the same
//! guest sees the same layout under any VMM and exercises the VMM's BAR
//! relocation; or, asked to, keeps the addresses the VMM chose (Cloud
//! Hypervisor cannot move a 64-bit BAR into the 32-bit window).

use core::fmt;

use crate::io::{self, mmio};

pub const MAX_FUNCTIONS: usize = 32;
const CAP_MSIX: u8 = 0x11;
const CAP_VENDOR: u8 = 0x09;
const COMMAND: u16 = 0x04;
const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
const CMD_INTX_DISABLE: u16 = 1 << 10;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// How configuration space is reached.
#[derive(Clone, Copy)]
pub enum ConfigAccess {
    Ecam(u64),
    Legacy,
}

impl ConfigAccess {
    fn ecam_addr(base: u64, bdf: Bdf, offset: u16) -> u64 {
        base + (u64::from(bdf.bus) << 20)
            + (u64::from(bdf.dev) << 15)
            + (u64::from(bdf.func) << 12)
            + u64::from(offset)
    }

    fn legacy_select(bdf: Bdf, offset: u16) {
        let addr = 0x8000_0000
            | (u32::from(bdf.bus) << 16)
            | (u32::from(bdf.dev) << 11)
            | (u32::from(bdf.func) << 8)
            | u32::from(offset & 0xfc);
        io::outl(0xcf8, addr);
    }

    pub fn read32(self, bdf: Bdf, offset: u16) -> u32 {
        match self {
            ConfigAccess::Ecam(base) => mmio::read32(Self::ecam_addr(base, bdf, offset)),
            ConfigAccess::Legacy => {
                Self::legacy_select(bdf, offset);
                io::inl(0xcfc)
            }
        }
    }

    pub fn write32(self, bdf: Bdf, offset: u16, value: u32) {
        match self {
            ConfigAccess::Ecam(base) => mmio::write32(Self::ecam_addr(base, bdf, offset), value),
            ConfigAccess::Legacy => {
                Self::legacy_select(bdf, offset);
                io::outl(0xcfc, value);
            }
        }
    }

    pub fn read16(self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }

    pub fn read8(self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }

    /// 16-bit write as a read-modify-write of the dword, which is what both
    /// access methods support everywhere (command/status: status bits are
    /// write-one-to-clear, so they are written back as zero).
    pub fn write16(self, bdf: Bdf, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let mut dword = self.read32(bdf, offset & !3);
        if offset & !3 == COMMAND {
            dword &= 0xffff;
        }
        dword = (dword & !(0xffff << shift)) | (u32::from(value) << shift);
        self.write32(bdf, offset & !3, dword);
    }
}

#[derive(Clone, Copy, Default)]
pub struct Bar {
    pub addr: u64,
    pub size: u64,
    pub is64: bool,
    pub io: bool,
}

#[derive(Clone, Copy)]
pub struct MsixCap {
    pub offset: u16,
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
}

/// A virtio vendor capability (cfg_type 1..5).
#[derive(Clone, Copy, Default)]
pub struct VirtioCap {
    /// Where the capability is in configuration space.
    pub at: u16,
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
    /// Only for the notify capability.
    pub notify_multiplier: u32,
}

#[derive(Clone, Copy)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub bars: [Bar; 6],
    pub msix: Option<MsixCap>,
    /// Indexed by virtio cfg_type (1 common, 2 notify, 3 isr, 4 device).
    pub virtio: [Option<VirtioCap>; 6],
}

impl Function {
    pub fn is_virtio(&self) -> bool {
        self.vendor == 0x1af4 && (0x1040..=0x107f).contains(&self.device)
    }

    pub fn virtio_id(&self) -> u32 {
        u32::from(self.device) - 0x1040
    }

    pub fn bar_addr(&self, bar: u8) -> u64 {
        self.bars.get(usize::from(bar)).map_or(0, |b| b.addr)
    }
}

pub struct Bus {
    pub access: ConfigAccess,
    pub functions: [Option<Function>; MAX_FUNCTIONS],
    pub count: usize,
}

/// Scans bus 0 and assigns memory BARs from `window`, or keeps those the
/// VMM assigned if `keep` (BARs it left at 0 still come from `window`).
pub fn enumerate(
    access: ConfigAccess,
    window: (u64, u64),
    keep: bool,
) -> Result<Bus, crate::rt::Failure> {
    let mut bus = Bus {
        access,
        functions: [None; MAX_FUNCTIONS],
        count: 0,
    };
    let mut cursor = window.0;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let bdf = Bdf { bus: 0, dev, func };
            let id = access.read32(bdf, 0);
            if id & 0xffff == 0xffff || id == 0 {
                if func == 0 {
                    break;
                }
                continue;
            }
            let header = access.read8(bdf, 0x0e);
            let mut f = Function {
                bdf,
                vendor: id as u16,
                device: (id >> 16) as u16,
                class: access.read32(bdf, 0x08) >> 8,
                bars: [Bar::default(); 6],
                msix: None,
                virtio: [None; 6],
            };
            if header & 0x7f == 0 && f.class >> 16 != 0x06 {
                assign_bars(access, &mut f, &mut cursor, window.1, keep)?;
            }
            read_capabilities(access, &mut f);
            if bus.count == MAX_FUNCTIONS {
                crate::bail!("more than {MAX_FUNCTIONS} PCI functions");
            }
            bus.functions[bus.count] = Some(f);
            bus.count += 1;
            if func == 0 && header & 0x80 == 0 {
                break;
            }
        }
    }
    Ok(bus)
}

fn assign_bars(
    access: ConfigAccess,
    f: &mut Function,
    cursor: &mut u64,
    window_end: u64,
    keep: bool,
) -> Result<(), crate::rt::Failure> {
    let bdf = f.bdf;
    let command = access.read16(bdf, COMMAND);
    access.write16(bdf, COMMAND, command & !(CMD_MEMORY | 1));
    let mut i = 0;
    while i < 6 {
        let offset = 0x10 + 4 * i as u16;
        let orig = access.read32(bdf, offset);
        access.write32(bdf, offset, u32::MAX);
        let lo = access.read32(bdf, offset);
        if orig & 1 == 1 {
            access.write32(bdf, offset, orig);
            let size = u64::from(!(lo & !3) & 0xffff) + 1;
            f.bars[i] = Bar {
                addr: u64::from(orig & !3),
                size: if lo == 0 { 0 } else { size },
                is64: false,
                io: true,
            };
            i += 1;
            continue;
        }
        let is64 = (orig >> 1) & 3 == 2;
        let mut hi = u32::MAX;
        let mut orig_hi = 0;
        if is64 && i < 5 {
            orig_hi = access.read32(bdf, offset + 4);
            access.write32(bdf, offset + 4, u32::MAX);
            hi = access.read32(bdf, offset + 4);
        }
        let mask = (u64::from(hi) << 32) | u64::from(lo & !0xf);
        if lo & !0xf == 0 && (!is64 || hi == 0) {
            access.write32(bdf, offset, orig);
            i += 1;
            continue;
        }
        let size = (!mask).wrapping_add(1);
        let assigned = (u64::from(orig_hi) << 32) | u64::from(orig & !0xf);
        let addr = if keep && assigned != 0 {
            assigned
        } else {
            let addr = cursor.div_ceil(size) * size;
            if addr + size > window_end {
                crate::bail!("BAR {i} of {bdf} (0x{size:x} bytes) does not fit the PCI window");
            }
            *cursor = addr + size;
            addr
        };
        access.write32(bdf, offset, addr as u32 | (orig & 0xf));
        if is64 {
            access.write32(bdf, offset + 4, (addr >> 32) as u32);
        }
        f.bars[i] = Bar {
            addr,
            size,
            is64,
            io: false,
        };
        i += if is64 { 2 } else { 1 };
    }
    access.write16(
        bdf,
        COMMAND,
        (command & !1) | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE,
    );
    Ok(())
}

fn read_capabilities(access: ConfigAccess, f: &mut Function) {
    let bdf = f.bdf;
    if access.read16(bdf, 0x06) & (1 << 4) == 0 {
        return;
    }
    let mut ptr = access.read8(bdf, 0x34) & !3;
    let mut hops = 0;
    while ptr >= 0x40 && hops < 48 {
        let offset = u16::from(ptr);
        let header = access.read32(bdf, offset);
        match header as u8 {
            CAP_MSIX => {
                let table = access.read32(bdf, offset + 4);
                f.msix = Some(MsixCap {
                    offset,
                    table_size: ((header >> 16) & 0x7ff) as u16 + 1,
                    table_bar: (table & 7) as u8,
                    table_offset: table & !7,
                });
            }
            CAP_VENDOR => {
                let cfg_type = (header >> 24) as u8;
                if (1..=5).contains(&cfg_type) && f.virtio[usize::from(cfg_type)].is_none() {
                    let notify_multiplier = if cfg_type == 2 {
                        access.read32(bdf, offset + 16)
                    } else {
                        0
                    };
                    f.virtio[usize::from(cfg_type)] = Some(VirtioCap {
                        at: offset,
                        bar: access.read8(bdf, offset + 4),
                        offset: access.read32(bdf, offset + 8),
                        length: access.read32(bdf, offset + 12),
                        notify_multiplier,
                    });
                }
            }
            _ => {}
        }
        ptr = ((header >> 8) as u8) & !3;
        hops += 1;
    }
}

/// Reads `len` (1, 2 or 4) bytes at `offset` in BAR `bar` through the
/// VIRTIO_PCI_CAP_PCI_CFG capability at `cap` (VIRTIO 1.3, 4.1.4.9):
/// configuration space only, no BAR mapping.
pub fn pci_cfg_read(
    access: ConfigAccess,
    bdf: Bdf,
    cap: u16,
    bar: u8,
    offset: u32,
    len: u32,
) -> u32 {
    let id = access.read8(bdf, cap + 5);
    access.write16(bdf, cap + 4, u16::from(bar) | u16::from(id) << 8);
    access.write32(bdf, cap + 8, offset);
    access.write32(bdf, cap + 12, len);
    let value = access.read32(bdf, cap + 16);
    if len >= 4 {
        value
    } else {
        value & ((1 << (8 * len)) - 1)
    }
}

/// Shows the assigned BARs as `N:ADDR/SIZE,...`.
pub struct Bars<'a>(pub &'a [Bar; 6]);

impl fmt::Display for Bars<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (i, bar) in self.0.iter().enumerate() {
            if bar.size == 0 {
                continue;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            let kind = if bar.io {
                "io"
            } else if bar.is64 {
                "mem64"
            } else {
                "mem32"
            };
            write!(f, "{i}:{kind}:0x{:x}/0x{:x}", bar.addr, bar.size)?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// Programs MSI-X entry `entry` to deliver `vector` to the BSP, unmasked.
/// An entry past the table is left alone: writing there would hit
/// whatever follows it in the BAR (QEMU's virtio-serial has 2 entries and
/// many queues); the device then reads back NO_VECTOR for that queue and
/// the driver polls it.
pub fn msix_set_vector(f: &Function, entry: u16, vector: u8) {
    let Some(msix) = f.msix else { return };
    if entry >= msix.table_size {
        return;
    }
    let table = f.bar_addr(msix.table_bar) + u64::from(msix.table_offset) + u64::from(entry) * 16;
    mmio::write32(table, 0xfee0_0000);
    mmio::write32(table + 4, 0);
    mmio::write32(table + 8, u32::from(vector));
    mmio::write32(table + 12, 0);
}

/// Enables MSI-X (and clears the function mask).
pub fn msix_enable(bus: &Bus, f: &Function, enable: bool) {
    let Some(msix) = f.msix else { return };
    let control = bus.access.read16(f.bdf, msix.offset + 2) & !(1 << 14);
    let control = if enable {
        control | (1 << 15)
    } else {
        control & !(1 << 15)
    };
    bus.access.write16(f.bdf, msix.offset + 2, control);
}
