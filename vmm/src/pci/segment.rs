//! PCI segment 0, bus 0: device slots and the two ways into their
//! configuration space (ECAM over MMIO, mechanism #1 over ports 0xcf8/0xcfc).

use std::sync::{Arc, Mutex};

use super::PciDevice;
use crate::bus::{lock, BusDevice};

pub const DEVICES_PER_BUS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("No free PCI slot on bus 0")]
    BusFull,
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

/// Bus 0 with single-function devices in slots 0..32.
#[derive(Default)]
pub struct PciSegment {
    slots: [Option<SharedPciDevice>; DEVICES_PER_BUS],
}

impl PciSegment {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` in the lowest free slot and returns its address.
    pub fn add(&mut self, device: SharedPciDevice) -> Result<Bdf, SegmentError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(SegmentError::BusFull)?;
        self.slots[slot] = Some(device);
        Ok(Bdf {
            bus: 0,
            device: slot as u8,
            function: 0,
        })
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
        if let Some(dev) = self.device(bdf) {
            lock(dev).config_write(offset, data);
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
    use crate::pci::host_bridge::HostBridge;

    fn segment_with_bridge() -> Arc<PciSegment> {
        let mut seg = PciSegment::new();
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
}
