//! What the fuzz targets in `fuzz/` drive (feature `fuzzing`): the device
//! models and parsers as the program uses them, and fake interrupts and
//! ioeventfds in place of KVM. Nothing here is for the program itself.

pub use crate::api::{parse_stream as parse_api_stream, ApiRequest, HttpError};
pub use crate::arch::x86_64::boot::{load_payload, BootError, Payload};
pub use crate::bus::{Bus, BusDevice, SharedDevice};
pub use crate::interrupt::fake::{FakeIoEvents, FakeMsiGroup};
pub use crate::interrupt::{IoEventRegistry, MsiInterruptGroup};
pub use crate::lifecycle::ManagedDevice;
pub use crate::pci::config::{
    ConfigSpace, PciClass, BAR0, CLASS_HOST_BRIDGE, COMMAND, COMMAND_MEMORY,
};
pub use crate::pci::host_bridge::HostBridge;
pub use crate::pci::msix::{Msix, ENTRY_SIZE as MSIX_ENTRY_SIZE};
pub use crate::pci::segment::{Bdf, PciConfigIo, PciEcam, PciSegment, SharedPciDevice};
pub use crate::pci::{BarMapping, BarReprogram, PciDevice};
pub use crate::virtio::block::disk::{Disk, SECTOR_SIZE};
pub use crate::virtio::block::fuzzing::BlockQueue;
pub use crate::virtio::block::memory_disk::MemoryDisk;
pub use crate::virtio::block::request::{
    process as process_blk_request, Completion, DiskInfo, Refusal, ID_BYTES,
};
pub use crate::virtio::console::fuzzing::ConsoleQueues;
pub use crate::virtio::pci::{msix_vectors, VirtioPciDevice, BAR_SIZE};
pub use crate::virtio::vhost_user::get_config::{get_config, Error as GetConfigError, MAX_SIZE};
pub use crate::virtio::{ActivateContext, ActiveQueue, QueuePlace, VirtioDevice, VirtioInterrupt};
