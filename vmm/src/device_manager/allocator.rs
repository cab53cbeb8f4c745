//! Guest-physical ranges for BARs: a bump allocator per PCI window, sizes
//! naturally aligned as PCI requires. Devices are never removed yet, so
//! nothing is given back.

/// One window, handed out from the bottom.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    next: u64,
    end: u64,
}

impl AddressAllocator {
    /// The window `start..start + size`.
    pub fn new(start: u64, size: u64) -> Self {
        Self {
            next: start,
            end: start.saturating_add(size),
        }
    }

    /// `size` bytes aligned to `size` (a power of two), or None when the
    /// window has no room left.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let addr = self.next.checked_next_multiple_of(size)?;
        let end = addr.checked_add(size).filter(|end| *end <= self.end)?;
        self.next = end;
        Some(addr)
    }
}

/// The 32- and 64-bit PCI memory windows. BARs go below 4 GiB while there
/// is room, as firmware places them, so that 32-bit guests reach them too.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
}

impl BarAllocator {
    pub fn new(mmio32: (u64, u64), mmio64: (u64, u64)) -> Self {
        Self {
            mmio32: AddressAllocator::new(mmio32.0, mmio32.1),
            mmio64: AddressAllocator::new(mmio64.0, mmio64.1),
        }
    }

    /// A place for a 64-bit BAR of `size` bytes.
    pub fn allocate_bar64(&mut self, size: u64) -> Option<u64> {
        self.mmio32
            .allocate(size)
            .or_else(|| self.mmio64.allocate(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_side_by_side_and_naturally_aligned() {
        let mut window = AddressAllocator::new(0xc000_0000, 0x2_0000);
        assert_eq!(window.allocate(0x8000), Some(0xc000_0000));
        assert_eq!(window.allocate(0x1000), Some(0xc000_8000));
        assert_eq!(window.allocate(0x8000), Some(0xc001_0000), "aligned up");
        assert_eq!(window.allocate(0x8000), Some(0xc001_8000));
        assert_eq!(window.allocate(0x8000), None, "full");
        assert_eq!(window.allocate(0x3000), None, "not a power of two");
    }

    #[test]
    fn the_64bit_window_takes_over_when_the_32bit_one_is_full() {
        let mut bars = BarAllocator::new((0xc000_0000, 0x1_0000), (1 << 41, 1 << 40));
        assert_eq!(bars.allocate_bar64(0x8000), Some(0xc000_0000));
        assert_eq!(bars.allocate_bar64(0x8000), Some(0xc000_8000));
        assert_eq!(bars.allocate_bar64(0x8000), Some(1 << 41));
        assert_eq!(bars.allocate_bar64(1 << 41), None);
    }

    #[test]
    fn a_window_at_the_top_of_the_address_space_does_not_wrap() {
        let mut window = AddressAllocator::new(u64::MAX - 0xfff, 0x1000);
        assert_eq!(window.allocate(0x2000), None);
    }
}
