//! The host bridge at 00:00.0: a function that only identifies itself, so
//! that guests find a PCI root where the ACPI tables say there is one.

use super::config::{ConfigRestoreError, ConfigSpace, ConfigSpaceSnapshot, CLASS_HOST_BRIDGE};
use super::{BarReprogram, PciDevice};

/// Intel's ID for a generic host bridge, as Cloud Hypervisor presents.
const VENDOR_INTEL: u16 = 0x8086;
const DEVICE_HOST_BRIDGE: u16 = 0x0d57;

pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    pub fn new() -> Self {
        Self {
            config: ConfigSpace::new(VENDOR_INTEL, DEVICE_HOST_BRIDGE, CLASS_HOST_BRIDGE, 0),
        }
    }
}

impl HostBridge {
    pub fn save(&self) -> ConfigSpaceSnapshot {
        self.config.save()
    }

    pub fn restore(&mut self, saved: &ConfigSpaceSnapshot) -> Result<(), ConfigRestoreError> {
        self.config.restore(saved)
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        self.config.write(offset, data)
    }
}
