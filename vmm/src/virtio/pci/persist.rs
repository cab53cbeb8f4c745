//! What a snapshot keeps of a virtio-pci transport: the PCI configuration
//! space (BARs, command, capabilities), MSI-X (table, control, pending
//! vectors), the common configuration the driver wrote, and the ISR and
//! reset request. A restored transport places its BAR and its kicks where
//! the guest had them before the device is put on the bus.

use serde::{Deserialize, Serialize};

use super::{VirtioPciDevice, BAR};
use crate::pci::config::{ConfigRestoreError, ConfigSpaceSnapshot};
use crate::pci::msix::{MsixRestoreError, MsixSnapshot};
use crate::pci::PciDevice;
use crate::virtio::pci::common::{CommonRestoreError, CommonSnapshot};
use crate::virtio::VirtioDevice;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSnapshot {
    pub config_space: ConfigSpaceSnapshot,
    pub msix: MsixSnapshot,
    pub common: CommonSnapshot,
    pub isr: u8,
    pub needs_reset: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportSaveError {
    /// The queues' places live in the device's workers or its backend;
    /// until they are saved, a running device is refused rather than
    /// saved without them.
    #[error("{id}: the driver has the device running, and saving a running device's queues is not supported yet")]
    Running { id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    #[error("PCI configuration space")]
    ConfigSpace(#[from] ConfigRestoreError),
    #[error("MSI-X")]
    Msix(#[from] MsixRestoreError),
    #[error("virtio common configuration")]
    Common(#[from] CommonRestoreError),
    #[error("the snapshot has the device running, which this vmm does not restore yet")]
    Running,
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    pub fn save_transport(&mut self) -> Result<TransportSnapshot, TransportSaveError> {
        if self.activated {
            return Err(TransportSaveError::Running {
                id: self.id().to_owned(),
            });
        }
        self.sync_device_state();
        let (isr, needs_reset) = self.interrupt.saved();
        Ok(TransportSnapshot {
            config_space: self.config.save(),
            msix: self.msix.save(),
            common: self.common.save(),
            isr,
            needs_reset,
        })
    }

    /// Before the transport is on the bus: the segment maps the BAR where
    /// the restored registers put it.
    pub fn restore_transport(
        &mut self,
        saved: &TransportSnapshot,
    ) -> Result<(), TransportRestoreError> {
        if saved.common.status & super::common::STATUS_DRIVER_OK != 0 {
            return Err(TransportRestoreError::Running);
        }
        self.config.restore(&saved.config_space)?;
        self.common.restore(&saved.common)?;
        self.msix.restore(&saved.msix)?;
        self.interrupt.set_config_vector(self.common.msix_config);
        self.interrupt.restore(saved.isr, saved.needs_reset);
        let notify = self
            .mapped_bars()
            .into_iter()
            .find(|m| m.bar == BAR)
            .map(|m| m.addr);
        self.move_notify(notify);
        Ok(())
    }
}
