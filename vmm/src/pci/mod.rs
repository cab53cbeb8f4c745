//! PCI: a single segment with one bus, reached through ECAM (described by the
//! MCFG table) and the legacy 0xcf8/0xcfc ports; devices' memory BARs live on
//! the MMIO bus wherever the guest puts them.

pub mod config;
pub mod host_bridge;
pub mod msix;
pub mod segment;

pub use config::{BarMapping, BarReprogram};
pub use segment::{PciConfigIo, PciEcam, PciSegment};

/// A function on the bus: register offsets into its own 4 KiB configuration
/// space, and offsets into its BARs. It knows nothing of buses or threads.
pub trait PciDevice: Send {
    fn config_read(&mut self, offset: u16, data: &mut [u8]);

    /// Applies a configuration write and says which BARs it moved, mapped or
    /// unmapped, so that the segment can move them on the MMIO bus.
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram>;

    /// The BARs decoded right now (where the segment maps a device it adds).
    fn mapped_bars(&self) -> Vec<BarMapping> {
        Vec::new()
    }

    /// A guest read at `offset` inside BAR `bar`. Devices without BARs are
    /// never mapped, so they never see this.
    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
