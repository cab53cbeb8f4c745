//! A type-0 configuration space: plain registers with per-byte write masks,
//! so that read-only fields stay read-only whatever the guest writes; memory
//! BARs whose size the guest probes by writing all ones and whose decoded
//! address it may change at any time; and the capability list.

pub const CONFIG_SPACE_SIZE: usize = 4096;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;

pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
pub const BAR_COUNT: usize = 6;
/// Memory BAR type bits: 64-bit, not prefetchable.
const BAR_MEM64: u32 = 0b100;
const BAR_FLAGS: u32 = 0xf;
/// Capabilities go after the type-0 header.
const FIRST_CAPABILITY: usize = 0x40;
/// The standard capability list lives in the first 256 bytes.
const CAPABILITIES_END: usize = 0x100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigSpaceError {
    #[error("BAR {index} cannot hold a 64-bit BAR or is already in use")]
    BarIndex { index: usize },
    #[error("BAR size {size:#x} is not a power of two of at least 16 bytes")]
    BarSize { size: u64 },
    #[error("No room for a {len}-byte capability in configuration space")]
    CapabilitySpace { len: usize },
}

/// Where a BAR is decoded on the MMIO bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMapping {
    pub bar: u8,
    pub addr: u64,
    pub len: u64,
}

/// A configuration write changed where a BAR is decoded: `None` means not
/// decoded (memory space disabled, address 0, or being sized). Whoever owns
/// the MMIO bus moves the device's range accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarReprogram {
    pub bar: u8,
    pub old: Option<u64>,
    pub new: Option<u64>,
    pub len: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciClass {
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
}

pub const CLASS_HOST_BRIDGE: PciClass = PciClass {
    class: 0x06,
    subclass: 0x00,
    prog_if: 0x00,
};

/// What a snapshot keeps of a configuration space: the registers as the
/// guest left them (BAR addresses, command, capabilities' fields) and
/// which BARs it was sizing. The layout (write masks, BAR sizes,
/// capabilities) comes from the device as built.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpaceSnapshot {
    #[serde(with = "crate::util::hex_bytes")]
    pub regs: Vec<u8>,
    pub sizing: Vec<bool>,
}

/// Why a saved configuration space does not fit the device built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigRestoreError {
    #[error("{found} bytes of configuration space saved, the device has {expected}")]
    Size { expected: usize, found: usize },
    #[error("the saved device is {saved}, this one is {built}: not the same device")]
    Identity { saved: String, built: String },
}

pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    write_mask: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// 64-bit BARs by their first index.
    bars: [Option<Bar>; BAR_COUNT],
    /// Per BAR register: the guest's last write to it was all ones, i.e. it
    /// is sizing the BAR and the register holds the size mask, not an address.
    sizing: [bool; BAR_COUNT],
    /// Where the next capability goes, and the last one's offset (to link it).
    next_capability: usize,
    last_capability: Option<usize>,
}

impl ConfigSpace {
    pub fn new(vendor: u16, device: u16, class: PciClass, revision: u8) -> Self {
        let mut space = Self {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            write_mask: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; BAR_COUNT],
            sizing: [false; BAR_COUNT],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        space.set_u16(VENDOR_ID, vendor);
        space.set_u16(DEVICE_ID, device);
        space.regs[REVISION_ID] = revision;
        space.regs[CLASS_PROG] = class.prog_if;
        space.regs[CLASS_PROG + 1] = class.subclass;
        space.regs[CLASS_PROG + 2] = class.class;
        // Memory space, bus master and INTx-disable are the command bits a
        // guest may set on our devices; the rest read back as zero.
        space.set_write_mask_u16(COMMAND, (1 << 1) | (1 << 2) | (1 << 10));
        space.write_mask[INTERRUPT_LINE] = 0xff;
        space
    }

    pub fn save(&self) -> ConfigSpaceSnapshot {
        ConfigSpaceSnapshot {
            regs: self.regs.to_vec(),
            sizing: self.sizing.to_vec(),
        }
    }

    /// The guest's registers back, into a device built the same way: its
    /// vendor, device, class, revision and subsystem must be the saved
    /// ones.
    pub fn restore(&mut self, saved: &ConfigSpaceSnapshot) -> Result<(), ConfigRestoreError> {
        let size = |found| ConfigRestoreError::Size {
            expected: CONFIG_SPACE_SIZE,
            found,
        };
        let regs: &[u8; CONFIG_SPACE_SIZE] = saved
            .regs
            .as_slice()
            .try_into()
            .map_err(|_| size(saved.regs.len()))?;
        let sizing: [bool; BAR_COUNT] = saved
            .sizing
            .as_slice()
            .try_into()
            .map_err(|_| size(saved.sizing.len()))?;
        let identity = |regs: &[u8; CONFIG_SPACE_SIZE]| {
            let word = |at: usize| u16::from_le_bytes([regs[at], regs[at + 1]]);
            format!(
                "{:04x}:{:04x} class {:02x}{:02x}{:02x} rev {} subsystem {:04x}:{:04x}",
                word(VENDOR_ID),
                word(DEVICE_ID),
                regs[CLASS_PROG + 2],
                regs[CLASS_PROG + 1],
                regs[CLASS_PROG],
                regs[REVISION_ID],
                word(SUBSYSTEM_VENDOR_ID),
                word(SUBSYSTEM_ID)
            )
        };
        let (saved_id, built_id) = (identity(regs), identity(&self.regs));
        if saved_id != built_id {
            return Err(ConfigRestoreError::Identity {
                saved: saved_id,
                built: built_id,
            });
        }
        *self.regs = *regs;
        self.sizing = sizing;
        Ok(())
    }

    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.regs[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    pub fn set_write_mask_u32(&mut self, offset: usize, mask: u32) {
        self.write_mask[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    pub fn set_write_mask_u16(&mut self, offset: usize, mask: u16) {
        self.write_mask[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    /// Reads outside the space (a guest bug) return all ones, like absent hardware.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let start = usize::from(offset);
        match self.regs.get(start..start + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0xff),
        }
    }

    /// Applies a guest write and reports every BAR whose decoding it
    /// changed (moved, enabled or disabled through the command register).
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        let before = self.mapped_bars();
        let start = usize::from(offset);
        for (i, &byte) in data.iter().enumerate() {
            let Some(mask) = self.write_mask.get(start + i).copied() else {
                break;
            };
            let reg = &mut self.regs[start + i];
            *reg = (*reg & !mask) | (byte & mask);
        }
        for (index, sizing) in self.sizing.iter_mut().enumerate() {
            let reg = BAR0 + 4 * index;
            if start < reg + 4 && start + data.len() > reg {
                *sizing = start == reg && data.len() == 4 && data.iter().all(|&b| b == 0xff);
            }
        }
        let after = self.mapped_bars();
        let find = |list: &[BarMapping], bar: u8| list.iter().find(|m| m.bar == bar).copied();
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(index, bar)| {
                let bar = bar.as_ref()?;
                let index = index as u8;
                let (old, new) = (find(&before, index), find(&after, index));
                (old != new).then_some(BarReprogram {
                    bar: index,
                    old: old.map(|m| m.addr),
                    new: new.map(|m| m.addr),
                    len: bar.size,
                })
            })
            .collect()
    }

    /// Declares a 64-bit memory BAR at `index` (and `index + 1`) of `size`
    /// bytes. Writes of all ones then read back the size mask.
    pub fn add_mem_bar64(&mut self, index: usize, size: u64) -> Result<(), ConfigSpaceError> {
        if index + 1 >= BAR_COUNT || self.bar_in_use(index) || self.bar_in_use(index + 1) {
            return Err(ConfigSpaceError::BarIndex { index });
        }
        if !size.is_power_of_two() || size < 16 {
            return Err(ConfigSpaceError::BarSize { size });
        }
        let reg = BAR0 + 4 * index;
        let mask = !(size - 1);
        self.set_u32(reg, BAR_MEM64);
        self.set_write_mask_u32(reg, mask as u32 & !BAR_FLAGS);
        self.set_write_mask_u32(reg + 4, (mask >> 32) as u32);
        self.bars[index] = Some(Bar { size });
        Ok(())
    }

    /// Whether register `index` already belongs to a BAR (either half).
    fn bar_in_use(&self, index: usize) -> bool {
        self.bars[index].is_some() || index > 0 && self.bars[index - 1].is_some()
    }

    /// Places a BAR as firmware would, before the guest runs.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        if self.bars.get(index).is_some_and(Option::is_some) {
            let reg = BAR0 + 4 * index;
            let flags = self.u32_at(reg) & BAR_FLAGS;
            self.set_u32(reg, (addr as u32 & !BAR_FLAGS) | flags);
            self.set_u32(reg + 4, (addr >> 32) as u32);
        }
    }

    /// The address programmed into a 64-bit BAR, decoded or not.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        self.bars.get(index)?.as_ref()?;
        let reg = BAR0 + 4 * index;
        Some((u64::from(self.u32_at(reg + 4)) << 32) | u64::from(self.u32_at(reg) & !BAR_FLAGS))
    }

    pub fn memory_enabled(&self) -> bool {
        self.u16_at(COMMAND) & COMMAND_MEMORY != 0
    }

    /// BARs the device decodes now: memory space enabled, a non-zero
    /// address, not in the middle of being sized, and not wrapping around.
    pub fn mapped_bars(&self) -> Vec<BarMapping> {
        if !self.memory_enabled() {
            return Vec::new();
        }
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(index, bar)| {
                let bar = bar.as_ref()?;
                let addr = self.bar_address(index)?;
                let sizing = self.sizing[index] || self.sizing[index + 1];
                let fits = addr.checked_add(bar.size).is_some();
                (addr != 0 && !sizing && fits).then_some(BarMapping {
                    bar: index as u8,
                    addr,
                    len: bar.size,
                })
            })
            .collect()
    }

    /// Appends a capability: `body` is everything after the ID and next
    /// pointer. Its bytes are read-only to the guest unless the caller sets
    /// write masks. Returns the capability's offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, ConfigSpaceError> {
        let len = body.len() + 2;
        let at = self.next_capability;
        if at + len > CAPABILITIES_END {
            return Err(ConfigSpaceError::CapabilitySpace { len });
        }
        self.regs[at] = id;
        self.regs[at + 1] = 0;
        self.regs[at + 2..at + len].copy_from_slice(body);
        match self.last_capability {
            Some(last) => self.regs[last + 1] = at as u8,
            None => self.regs[CAPABILITIES_POINTER] = at as u8,
        }
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        self.last_capability = Some(at);
        // The next one starts dword aligned, as the spec asks.
        self.next_capability = (at + len).next_multiple_of(4);
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut cs = ConfigSpace::new(0x8086, 0x0d57, CLASS_HOST_BRIDGE, 0);
        cs.write(VENDOR_ID as u16, &[0xff, 0xff, 0xff, 0xff]);
        let mut id = [0u8; 4];
        cs.read(0, &mut id);
        assert_eq!(id, [0x86, 0x80, 0x57, 0x0d]);
        cs.write(COMMAND as u16, &[0xff, 0xff]);
        let mut command = [0u8; 2];
        cs.read(COMMAND as u16, &mut command);
        assert_eq!(u16::from_le_bytes(command), 0x0406);
    }

    #[test]
    fn class_code_layout() {
        let cs = ConfigSpace::new(1, 2, CLASS_HOST_BRIDGE, 3);
        let mut dword = [0u8; 4];
        cs.read(REVISION_ID as u16, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x0600_0003);
    }

    fn dword(cs: &ConfigSpace, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        cs.read(offset as u16, &mut b);
        u32::from_le_bytes(b)
    }

    fn write_dword(cs: &mut ConfigSpace, offset: usize, value: u32) -> Vec<BarReprogram> {
        cs.write(offset as u16, &value.to_le_bytes())
    }

    fn device_with_bar(size: u64) -> ConfigSpace {
        let mut cs = ConfigSpace::new(0x1af4, 0x105a, CLASS_HOST_BRIDGE, 1);
        cs.add_mem_bar64(0, size).unwrap();
        cs
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut cs = device_with_bar(0x8000);
        assert_eq!(dword(&cs, BAR0), 0x4, "64-bit memory BAR, not prefetchable");
        write_dword(&mut cs, BAR0, u32::MAX);
        write_dword(&mut cs, BAR0 + 4, u32::MAX);
        assert_eq!(dword(&cs, BAR0), 0xffff_8004);
        assert_eq!(dword(&cs, BAR0 + 4), u32::MAX);
        let mask = (u64::from(dword(&cs, BAR0 + 4)) << 32) | u64::from(dword(&cs, BAR0) & !0xf);
        assert_eq!((!mask).wrapping_add(1), 0x8000);
        // Unimplemented BARs and the ROM BAR size as zero.
        for offset in [BAR0 + 8, BAR0 + 20, 0x30] {
            write_dword(&mut cs, offset, u32::MAX);
            assert_eq!(dword(&cs, offset), 0, "offset {offset:#x}");
        }
    }

    #[test]
    fn bar_decoding_follows_address_and_memory_enable() {
        let mut cs = device_with_bar(0x4000);
        write_dword(&mut cs, BAR0, 0xc000_0000);
        assert!(cs.mapped_bars().is_empty(), "memory space still disabled");
        let changes = cs.write(COMMAND as u16, &COMMAND_MEMORY.to_le_bytes());
        let mapped = BarReprogram {
            bar: 0,
            old: None,
            new: Some(0xc000_0000),
            len: 0x4000,
        };
        assert_eq!(changes, vec![mapped]);

        // Moving the BAR while decoding: one relocation from old to new.
        let changes = write_dword(&mut cs, BAR0 + 4, 0x1);
        assert_eq!(changes[0].old, Some(0xc000_0000));
        assert_eq!(changes[0].new, Some(0x1_c000_0000));
        assert!(write_dword(&mut cs, BAR0 + 4, 0x1).is_empty(), "same value");

        // Sizing with decoding left on takes the BAR off the bus until the
        // guest writes an address back.
        let changes = write_dword(&mut cs, BAR0, u32::MAX);
        assert_eq!(changes[0].new, None);
        let changes = write_dword(&mut cs, BAR0, 0xd000_0000);
        assert_eq!(changes[0].new, Some(0x1_d000_0000));

        let changes = cs.write(COMMAND as u16, &[0, 0]);
        assert_eq!(changes[0].old, Some(0x1_d000_0000));
        assert_eq!(changes[0].new, None);
    }

    #[test]
    fn firmware_placement_and_bad_bars() {
        let mut cs = device_with_bar(0x8000);
        cs.set_bar_address(0, 0xc000_8000);
        assert_eq!(dword(&cs, BAR0), 0xc000_8004);
        assert_eq!(cs.bar_address(0), Some(0xc000_8000));
        assert_eq!(cs.bar_address(2), None);
        assert_eq!(
            cs.add_mem_bar64(0, 0x1000),
            Err(ConfigSpaceError::BarIndex { index: 0 })
        );
        assert_eq!(
            cs.add_mem_bar64(1, 0x1000),
            Err(ConfigSpaceError::BarIndex { index: 1 })
        );
        assert_eq!(
            cs.add_mem_bar64(5, 0x1000),
            Err(ConfigSpaceError::BarIndex { index: 5 })
        );
        assert_eq!(
            cs.add_mem_bar64(2, 0x3000),
            Err(ConfigSpaceError::BarSize { size: 0x3000 })
        );
        assert!(cs.add_mem_bar64(2, 0x1000).is_ok());
    }

    #[test]
    fn capabilities_form_a_read_only_chain() {
        let mut cs = ConfigSpace::new(1, 2, CLASS_HOST_BRIDGE, 0);
        let mut status = [0u8; 2];
        cs.read(STATUS as u16, &mut status);
        assert_eq!(u16::from_le_bytes(status) & STATUS_CAPABILITIES, 0);
        let first = cs.add_capability(0x09, &[16, 1, 0, 0, 0, 0]).unwrap();
        let second = cs.add_capability(0x11, &[0; 10]).unwrap();
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x48, "dword aligned after an 8-byte capability");
        cs.read(STATUS as u16, &mut status);
        assert_ne!(u16::from_le_bytes(status) & STATUS_CAPABILITIES, 0);
        assert_eq!(dword(&cs, CAPABILITIES_POINTER) & 0xff, 0x40);
        assert_eq!(dword(&cs, first), 0x0110_4809);
        assert_eq!(dword(&cs, second) & 0xffff, 0x0011);
        cs.write(first as u16, &[0xff; 8]);
        assert_eq!(dword(&cs, first), 0x0110_4809);
        assert_eq!(
            cs.add_capability(0x09, &[0; 200]),
            Err(ConfigSpaceError::CapabilitySpace { len: 202 })
        );
    }

    #[test]
    fn out_of_range_reads_all_ones() {
        let cs = ConfigSpace::new(1, 2, CLASS_HOST_BRIDGE, 0);
        let mut data = [0u8; 4];
        cs.read(4094, &mut data);
        assert_eq!(data, [0xff; 4]);
    }
}
