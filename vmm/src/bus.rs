//! Address-range buses for port I/O and MMIO: a vCPU exit names an address,
//! the bus finds the device that owns it and hands it the offset.
//!
//! Ranges can change while the guest runs (a guest moving a PCI BAR), so a
//! bus is a shared handle: clones see the same ranges, and a lookup never
//! holds the range lock while a device runs, so a device access may itself
//! move ranges (a config write through ECAM relocating a BAR).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::util::lock;

/// A device on a bus: it sees offsets into its own range and bytes, nothing else.
pub trait BusDevice: Send {
    /// Fill `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Take what the guest writes at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("Range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("Range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
    /// Guest accesses that reached this range (each one a vCPU exit).
    accesses: Arc<AtomicU64>,
}

/// A range's accesses, for exit accounting (`vm.counters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeAccesses {
    pub base: u64,
    pub len: u64,
    pub count: u64,
}

type Ranges = BTreeMap<u64, Entry>;

/// One address space (port I/O or MMIO). Clones are handles to the same
/// ranges.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: Arc<RwLock<Ranges>>,
    /// Accesses nothing on the bus answered.
    unassigned: Arc<AtomicU64>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    fn ranges(&self) -> std::sync::RwLockReadGuard<'_, Ranges> {
        // A panic elsewhere cannot leave the map half-updated: every change
        // is a single insert or remove.
        self.ranges.read().unwrap_or_else(|p| p.into_inner())
    }

    fn ranges_mut(&self) -> std::sync::RwLockWriteGuard<'_, Ranges> {
        self.ranges.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut ranges = self.ranges_mut();
        let overlaps_before = ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps_before {
            return Err(BusError::Overlap { base, len });
        }
        ranges.insert(
            base,
            Entry {
                len,
                device,
                accesses: Arc::default(),
            },
        );
        Ok(())
    }

    /// Takes the range starting at `base` off the bus; false if none starts there.
    pub fn remove(&self, base: u64) -> bool {
        self.ranges_mut().remove(&base).is_some()
    }

    /// Takes every range off the bus, for a VM's teardown: devices refer
    /// back to the bus (the PCI segment moves BARs on it), so the ranges
    /// would otherwise keep every device, its files and its backend
    /// connection alive after the VM is gone.
    pub fn clear(&self) {
        // Dropped after the lock: a device's drop may touch the bus.
        let ranges = std::mem::take(&mut *self.ranges_mut());
        drop(ranges);
    }

    /// The device covering `addr` and the offset of `addr` inside it. The
    /// device is cloned out so that the range lock is released before it runs.
    fn resolve(&self, addr: u64) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges();
        let found = ranges
            .range(..=addr)
            .next_back()
            .filter(|(base, entry)| addr - *base < entry.len);
        let Some((base, entry)) = found else {
            self.unassigned.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        entry.accesses.fetch_add(1, Ordering::Relaxed);
        Some((entry.device.clone(), addr - base))
    }

    /// The ranges the guest reached, with how often (a range a BAR move
    /// re-inserted counts from then), and the accesses nothing answered.
    pub fn accesses(&self) -> (Vec<RangeAccesses>, u64) {
        let reached = self
            .ranges()
            .iter()
            .map(|(base, entry)| RangeAccesses {
                base: *base,
                len: entry.len,
                count: entry.accesses.load(Ordering::Relaxed),
            })
            .filter(|range| range.count > 0)
            .collect();
        (reached, self.unassigned.load(Ordering::Relaxed))
    }

    /// Returns false when nothing lives at `addr`; `data` is then left as is.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(&device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Returns false when nothing lives at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let bus = Bus::new();
        bus.insert(a.clone(), 0x100, 0x10).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x105, &mut buf));
        assert_eq!(buf, [5, 5]);
        assert!(bus.write(0x10f, &[1]));
        assert!(!bus.write(0x110, &[1]));
        assert!(!bus.read(0xff, &mut buf));
        assert_eq!(a.lock().unwrap().writes, vec![(0xf, vec![1])]);
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(d(), 0xf8, 0x9),
            Err(BusError::Overlap { base: 0xf8, len: 9 })
        );
        assert!(bus.insert(d(), 0xf8, 0x8).is_ok());
        assert!(bus.insert(d(), 0x110, 0x8).is_ok());
        assert!(bus.insert(d(), 0x200, 0).is_err());
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
    }

    #[test]
    fn ranges_move_and_clones_see_it() {
        let bus = Bus::new();
        let vcpu_view = bus.clone();
        let d = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d.clone(), 0x1000, 0x100).unwrap();
        assert!(vcpu_view.write(0x1010, &[1]));
        assert!(bus.remove(0x1000));
        assert!(!bus.remove(0x1000), "already gone");
        bus.insert(d.clone(), 0x8000, 0x100).unwrap();
        assert!(!vcpu_view.write(0x1010, &[2]), "old range is empty");
        assert!(vcpu_view.write(0x8010, &[3]));
        assert_eq!(
            d.lock().unwrap().writes,
            vec![(0x10, vec![1]), (0x10, vec![3])]
        );
    }

    /// A device may change the bus it sits on from inside an access, as
    /// the ECAM window does when the guest moves a BAR.
    #[test]
    fn a_device_may_move_ranges_during_its_own_access() {
        struct Mover(Bus);
        impl BusDevice for Mover {
            fn read(&mut self, _offset: u64, data: &mut [u8]) {
                data.fill(0);
            }
            fn write(&mut self, _offset: u64, _data: &[u8]) {
                let target = Arc::new(Mutex::new(Recorder::default()));
                self.0.insert(target, 0x9000, 0x10).unwrap();
            }
        }
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Mover(bus.clone()))), 0, 0x10)
            .unwrap();
        assert!(bus.write(0, &[1]));
        assert!(bus.read(0x9000, &mut [0u8; 1]));
    }

    /// A device that holds the bus it is on (as the PCI segment does) is
    /// let go once the bus is cleared.
    #[test]
    fn accesses_are_counted_by_range_and_unassigned() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3f8, 8)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x600, 3)
            .unwrap();
        let mut byte = [0u8; 1];
        for port in [0x3f8, 0x3fd, 0x3fd, 0x601, 0x80, 0x400] {
            bus.read(port, &mut byte);
        }
        bus.write(0x3f8, &[1]);
        let (reached, unassigned) = bus.accesses();
        assert_eq!(
            reached,
            [
                RangeAccesses {
                    base: 0x3f8,
                    len: 8,
                    count: 4
                },
                RangeAccesses {
                    base: 0x600,
                    len: 3,
                    count: 1
                }
            ]
        );
        assert_eq!(unassigned, 2);
    }

    #[test]
    fn clearing_the_bus_lets_its_devices_go() {
        struct Holder {
            _bus: Bus,
        }
        impl BusDevice for Holder {
            fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
            fn write(&mut self, _offset: u64, _data: &[u8]) {}
        }
        let bus = Bus::new();
        let device = Arc::new(Mutex::new(Holder { _bus: bus.clone() }));
        bus.insert(device.clone(), 0, 0x10).unwrap();
        assert_eq!(Arc::strong_count(&device), 2);
        bus.clear();
        assert_eq!(Arc::strong_count(&device), 1);
        assert!(!bus.write(0, &[0]));
    }
}
