//! PCI: a single segment with one bus, reached through ECAM (described by the
//! MCFG table) and the legacy 0xcf8/0xcfc ports.

pub mod config;
pub mod host_bridge;
pub mod msix;
pub mod segment;

pub use segment::{PciConfigIo, PciEcam, PciSegment};

/// A function on the bus; it sees register offsets into its own 4 KiB
/// configuration space and nothing else.
pub trait PciDevice: Send {
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    fn config_write(&mut self, offset: u16, data: &[u8]);
}
