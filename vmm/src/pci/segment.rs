//! PCI segment 0, bus 0: device slots, the two ways into their
//! configuration space (ECAM over MMIO, mechanism #1 over ports 0xcf8/0xcfc),
//! and the BARs' ranges on the MMIO bus, which follow the guest's writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{BarMapping, BarReprogram, PciDevice};
use crate::bus::{Bus, BusDevice, BusError};
use crate::util::lock;

pub const DEVICES_PER_BUS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("No free PCI slot on bus 0")]
    BusFull,
    #[error("BAR {bar} of {bdf} at {addr:#x} cannot go on the MMIO bus")]
    MapBar {
        bdf: Bdf,
        bar: u8,
        addr: u64,
        #[source]
        source: BusError,
    },
}

/// A bus address: device and function on bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// One BAR's range on the MMIO bus: accesses become `bar_read`/`bar_write`
/// at the offset inside the BAR.
struct BarRegion {
    device: SharedPciDevice,
    bar: u8,
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).bar_write(self.bar, offset, data);
    }
}

/// Where the BARs the devices decode are, by (slot, BAR).
#[derive(Default)]
struct Mappings {
    /// On the MMIO bus, at this address.
    mapped: BTreeMap<(u8, u8), u64>,
    /// Decoded at (address, length) but refused by the bus, because the
    /// range overlaps another: put on the bus once the other is gone.
    waiting: BTreeMap<(u8, u8), (u64, u64)>,
}

/// Bus 0 with single-function devices in slots 0..32.
pub struct PciSegment {
    slots: [Option<SharedPciDevice>; DEVICES_PER_BUS],
    mmio: Bus,
    /// Also serialises configuration writes, so that two vCPUs moving
    /// BARs at once apply their changes in the order the device saw them.
    mappings: Mutex<Mappings>,
}

impl PciSegment {
    /// `mmio` is where BARs go; it is shared with the vCPUs.
    pub fn new(mmio: Bus) -> Self {
        Self {
            slots: Default::default(),
            mmio,
            mappings: Mutex::new(Mappings::default()),
        }
    }

    /// Puts `device` in the lowest free slot, maps the BARs it already
    /// decodes (placed as firmware would), and returns its address.
    pub fn add(&mut self, device: SharedPciDevice) -> Result<Bdf, SegmentError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(SegmentError::BusFull)?;
        let bdf = Bdf {
            bus: 0,
            device: slot as u8,
            function: 0,
        };
        let bars = lock(&device).mapped_bars();
        for BarMapping { bar, addr, len } in bars {
            let region = Arc::new(Mutex::new(BarRegion {
                device: device.clone(),
                bar,
            }));
            self.mmio
                .insert(region, addr, len)
                .map_err(|source| SegmentError::MapBar {
                    bdf,
                    bar,
                    addr,
                    source,
                })?;
            lock(&self.mappings).mapped.insert((bdf.device, bar), addr);
            log::debug!("{bdf}: BAR {bar} at {addr:#x}+{len:#x}");
        }
        self.slots[slot] = Some(device);
        Ok(bdf)
    }

    fn device(&self, bdf: Bdf) -> Option<&SharedPciDevice> {
        if bdf.bus != 0 || bdf.function != 0 {
            return None;
        }
        self.slots.get(usize::from(bdf.device))?.as_ref()
    }

    /// Absent functions read as all ones (vendor 0xffff), which is how
    /// guests learn that a slot is empty.
    pub fn config_read(&self, bdf: Bdf, offset: u16, data: &mut [u8]) {
        match self.device(bdf) {
            Some(dev) => lock(dev).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn config_write(&self, bdf: Bdf, offset: u16, data: &[u8]) {
        let Some(dev) = self.device(bdf) else {
            return;
        };
        let mut mappings = lock(&self.mappings);
        // The device lock is released before the bus changes: a vCPU may be
        // waiting for it inside a BAR access.
        let changes = lock(dev).config_write(offset, data);
        if !changes.is_empty() {
            self.apply(&mut mappings, bdf, &changes);
        }
    }

    /// Removals first, so that a guest swapping two BARs' addresses works;
    /// then the new places; then whatever was waiting for a range this
    /// write freed.
    fn apply(&self, mappings: &mut Mappings, bdf: Bdf, changes: &[BarReprogram]) {
        let mut freed = false;
        for change in changes {
            let key = (bdf.device, change.bar);
            // Only what we inserted is removed: a BAR the guest had placed
            // over another device was never on the bus.
            if let Some(addr) = mappings.mapped.remove(&key) {
                self.mmio.remove(addr);
                freed = true;
            }
            mappings.waiting.remove(&key);
        }
        for change in changes {
            let Some(addr) = change.new else {
                log::debug!("{bdf}: BAR {} unmapped", change.bar);
                continue;
            };
            match self.map(mappings, bdf.device, change.bar, addr, change.len) {
                Ok(()) => log::debug!(
                    "{bdf}: BAR {} at {addr:#x}+{:#x} (was {:x?})",
                    change.bar,
                    change.len,
                    change.old
                ),
                Err(e) => log::warn!(
                    "{bdf}: guest placed BAR {} at {addr:#x}+{:#x}; not decoded while it overlaps: {e}",
                    change.bar,
                    change.len
                ),
            }
        }
        if freed {
            let waiting: Vec<_> = mappings.waiting.iter().map(|(k, v)| (*k, *v)).collect();
            for ((slot, bar), (addr, len)) in waiting {
                if self.map(mappings, slot, bar, addr, len).is_ok() {
                    log::debug!("slot {slot}: BAR {bar} at {addr:#x}+{len:#x} decoded now");
                }
            }
        }
    }

    /// Puts BAR `bar` of `slot` on the bus, or in the waiting list if the
    /// range is taken.
    fn map(
        &self,
        mappings: &mut Mappings,
        slot: u8,
        bar: u8,
        addr: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let Some(device) = self.slots.get(usize::from(slot)).and_then(Option::as_ref) else {
            return Ok(());
        };
        let region = Arc::new(Mutex::new(BarRegion {
            device: device.clone(),
            bar,
        }));
        match self.mmio.insert(region, addr, len) {
            Ok(()) => {
                mappings.waiting.remove(&(slot, bar));
                mappings.mapped.insert((slot, bar), addr);
                Ok(())
            }
            Err(e) => {
                mappings.waiting.insert((slot, bar), (addr, len));
                Err(e)
            }
        }
    }
}

/// Only naturally aligned 1, 2 and 4 byte accesses are PCI configuration
/// cycles; anything else reads all ones and is dropped.
fn is_valid_access(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64)
}

/// ECAM: the address itself encodes bus, device, function and register.
pub struct PciEcam {
    segment: Arc<PciSegment>,
}

impl PciEcam {
    pub fn new(segment: Arc<PciSegment>) -> Self {
        Self { segment }
    }

    fn decode(offset: u64) -> (Bdf, u16) {
        let bdf = Bdf {
            bus: ((offset >> 20) & 0xff) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        };
        (bdf, (offset & 0xfff) as u16)
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !is_valid_access(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let (bdf, reg) = Self::decode(offset);
        self.segment.config_read(bdf, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if is_valid_access(offset, data.len()) {
            let (bdf, reg) = Self::decode(offset);
            self.segment.config_write(bdf, reg, data);
        }
    }
}

/// Configuration mechanism #1: an address latch at 0xcf8, data at 0xcfc..0xcff.
pub struct PciConfigIo {
    segment: Arc<PciSegment>,
    address: u32,
}

const ENABLE_BIT: u32 = 1 << 31;

impl PciConfigIo {
    pub fn new(segment: Arc<PciSegment>) -> Self {
        Self {
            segment,
            address: 0,
        }
    }

    /// The target of a data-port access at `data_offset` (0..4), if enabled.
    fn target(&self, data_offset: u64) -> Option<(Bdf, u16)> {
        if self.address & ENABLE_BIT == 0 {
            return None;
        }
        let bdf = Bdf {
            bus: ((self.address >> 16) & 0xff) as u8,
            device: ((self.address >> 11) & 0x1f) as u8,
            function: ((self.address >> 8) & 0x7) as u8,
        };
        let reg = (self.address & 0xfc) as u16 + data_offset as u16;
        Some((bdf, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 if is_valid_access(offset - 4, data.len()) => match self.target(offset - 4) {
                Some((bdf, reg)) => self.segment.config_read(bdf, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(data);
                self.address = u32::from_le_bytes(bytes);
            }
            4..=7 if is_valid_access(offset - 4, data.len()) => {
                if let Some((bdf, reg)) = self.target(offset - 4) {
                    self.segment.config_write(bdf, reg, data);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{ConfigSpace, CLASS_HOST_BRIDGE, COMMAND, COMMAND_MEMORY};
    use crate::pci::host_bridge::HostBridge;

    fn segment_with_bridge() -> Arc<PciSegment> {
        let mut seg = PciSegment::new(Bus::new());
        let bdf = seg.add(Arc::new(Mutex::new(HostBridge::new()))).unwrap();
        assert_eq!(bdf.to_string(), "00:00.0");
        Arc::new(seg)
    }

    #[test]
    fn ecam_reads_ids_and_empty_slots() {
        let mut ecam = PciEcam::new(segment_with_bridge());
        let mut id = [0u8; 4];
        ecam.read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0d57_8086);
        ecam.read(1 << 15, &mut id);
        assert_eq!(id, [0xff; 4], "slot 1 is empty");
        ecam.read(1 << 20, &mut id);
        assert_eq!(id, [0xff; 4], "bus 1 does not exist");
        ecam.read(2, &mut id);
        assert_eq!(id, [0xff; 4], "misaligned dword");
    }

    #[test]
    fn legacy_mechanism_reads_through_latch() {
        let mut io = PciConfigIo::new(segment_with_bridge());
        let mut word = [0u8; 2];
        io.read(4, &mut word);
        assert_eq!(word, [0xff; 2], "latch disabled");
        io.write(0, &(ENABLE_BIT | 0x08).to_le_bytes());
        let mut class = [0u8; 4];
        io.read(4, &mut class);
        assert_eq!(u32::from_le_bytes(class) >> 8, 0x06_0000);
        io.write(0, &ENABLE_BIT.to_le_bytes());
        io.read(6, &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x0d57);
        let mut latch = [0u8; 4];
        io.read(0, &mut latch);
        assert_eq!(u32::from_le_bytes(latch), ENABLE_BIT);
    }

    /// A device with one 64-bit BAR whose accesses report the BAR offset.
    struct BarDevice {
        config: ConfigSpace,
    }

    impl BarDevice {
        fn new(addr: u64, decoding: bool) -> Self {
            let mut config = ConfigSpace::new(0x1af4, 0x105a, CLASS_HOST_BRIDGE, 1);
            config.add_mem_bar64(0, 0x1000).unwrap();
            config.set_bar_address(0, addr);
            if decoding {
                config.write(COMMAND as u16, &COMMAND_MEMORY.to_le_bytes());
            }
            Self { config }
        }
    }

    impl PciDevice for BarDevice {
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            self.config.read(offset, data);
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
            self.config.write(offset, data)
        }
        fn mapped_bars(&self) -> Vec<BarMapping> {
            self.config.mapped_bars()
        }
        fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(0);
            data[0] = bar;
            data[1] = offset as u8;
        }
    }

    fn read_at(bus: &Bus, addr: u64) -> Option<[u8; 2]> {
        let mut data = [0u8; 2];
        bus.read(addr, &mut data).then_some(data)
    }

    fn ecam_write32(ecam: &mut PciEcam, slot: u64, reg: u64, value: u32) {
        ecam.write((slot << 15) | reg, &value.to_le_bytes());
    }

    #[test]
    fn added_devices_are_mapped_where_firmware_put_them() {
        let mmio = Bus::new();
        let mut seg = PciSegment::new(mmio.clone());
        seg.add(Arc::new(Mutex::new(HostBridge::new()))).unwrap();
        let bdf = seg
            .add(Arc::new(Mutex::new(BarDevice::new(0xc000_0000, true))))
            .unwrap();
        assert_eq!(bdf.device, 1);
        assert_eq!(read_at(&mmio, 0xc000_0010), Some([0, 0x10]));
        // Not decoding: not on the bus.
        seg.add(Arc::new(Mutex::new(BarDevice::new(0xc000_1000, false))))
            .unwrap();
        assert_eq!(read_at(&mmio, 0xc000_1000), None);
        // Firmware placement colliding with another device is refused.
        let clash = seg.add(Arc::new(Mutex::new(BarDevice::new(0xc000_0000, true))));
        assert!(matches!(clash, Err(SegmentError::MapBar { bar: 0, .. })));
    }

    #[test]
    fn guest_relocation_through_ecam_and_legacy_ports_moves_the_range() {
        let mmio = Bus::new();
        let mut seg = PciSegment::new(mmio.clone());
        seg.add(Arc::new(Mutex::new(HostBridge::new()))).unwrap();
        seg.add(Arc::new(Mutex::new(BarDevice::new(0xc000_0000, true))))
            .unwrap();
        let seg = Arc::new(seg);
        let mut ecam = PciEcam::new(seg.clone());

        // The guest's sequence: decoding off, size, place, decoding on.
        ecam_write32(&mut ecam, 1, COMMAND as u64, 0);
        assert_eq!(read_at(&mmio, 0xc000_0000), None);
        ecam_write32(&mut ecam, 1, 0x10, u32::MAX);
        ecam_write32(&mut ecam, 1, 0x14, u32::MAX);
        ecam_write32(&mut ecam, 1, 0x10, 0xd000_0000);
        ecam_write32(&mut ecam, 1, 0x14, 0);
        assert_eq!(read_at(&mmio, 0xd000_0000), None, "decoding still off");
        ecam_write32(&mut ecam, 1, COMMAND as u64, u32::from(COMMAND_MEMORY));
        assert_eq!(read_at(&mmio, 0xd000_0004), Some([0, 4]));
        assert_eq!(read_at(&mmio, 0xc000_0004), None);

        // A move while decoding, through 0xcf8/0xcfc, above 4 GiB.
        let mut io = PciConfigIo::new(seg.clone());
        io.write(0, &(ENABLE_BIT | (1 << 11) | 0x14).to_le_bytes());
        io.write(4, &2u32.to_le_bytes());
        assert_eq!(read_at(&mmio, 0xd000_0004), None);
        assert_eq!(read_at(&mmio, 0x2_d000_0004), Some([0, 4]));
    }

    #[test]
    fn a_bar_placed_over_another_device_is_not_decoded_until_moved_away() {
        let mmio = Bus::new();
        let mut seg = PciSegment::new(mmio.clone());
        seg.add(Arc::new(Mutex::new(BarDevice::new(0xc000_0000, true))))
            .unwrap();
        seg.add(Arc::new(Mutex::new(BarDevice::new(0xc000_1000, true))))
            .unwrap();
        let mut ecam = PciEcam::new(Arc::new(seg));
        ecam_write32(&mut ecam, 1, 0x10, 0xc000_0000);
        // Slot 0's range is intact; slot 1 is nowhere.
        assert_eq!(read_at(&mmio, 0xc000_0000), Some([0, 0]));
        assert_eq!(read_at(&mmio, 0xc000_1000), None);
        ecam_write32(&mut ecam, 1, 0x10, 0xc000_2000);
        assert_eq!(read_at(&mmio, 0xc000_2008), Some([0, 8]));
        assert_eq!(read_at(&mmio, 0xc000_0000), Some([0, 0]), "slot 0 kept");
    }

    /// Decoding follows the registers, as on hardware: a BAR the bus
    /// refused because another range was there is decoded as soon as that
    /// range is gone. It used to stay dead until the guest wrote it again,
    /// so a guest that swapped two devices' BARs, or moved one BAR of a
    /// device off another, lost a device. Found by the bus_bars fuzz target.
    #[test]
    fn a_bar_stacked_on_another_is_decoded_once_that_one_moves_away() {
        let mmio = Bus::new();
        let mut seg = PciSegment::new(mmio.clone());
        seg.add(Arc::new(Mutex::new(BarDevice::new(0xc000_0000, true))))
            .unwrap();
        seg.add(Arc::new(Mutex::new(BarDevice::new(0xc000_1000, true))))
            .unwrap();
        let mut ecam = PciEcam::new(Arc::new(seg));
        // Slot 1 onto slot 0: refused for now.
        ecam_write32(&mut ecam, 1, 0x10, 0xc000_0000);
        assert_eq!(read_at(&mmio, 0xc000_0008), Some([0, 8]));
        // Slot 0 moves away: slot 1 is reached where the guest put it.
        ecam_write32(&mut ecam, 0, 0x10, 0xc000_4000);
        assert_eq!(read_at(&mmio, 0xc000_4008), Some([0, 8]));
        let mut seen = [0u8; 2];
        assert!(mmio.read(0xc000_0008, &mut seen), "slot 1 decoded");
        // And likewise when the one in the way stops decoding: swap them
        // back through a moment where both want 0xc000_4000.
        ecam_write32(&mut ecam, 1, 0x10, 0xc000_4000);
        ecam_write32(&mut ecam, 0, COMMAND as u64, 0);
        assert_eq!(read_at(&mmio, 0xc000_4008), Some([0, 8]), "slot 1 now");
        assert_eq!(read_at(&mmio, 0xc000_0008), None);
    }
}
