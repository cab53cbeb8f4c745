//! What a snapshot keeps of a virtio-pci transport: the PCI configuration
//! space (BARs, command, capabilities), MSI-X (table, control, pending
//! vectors), the common configuration the driver wrote, and the ISR and
//! reset request; and, for a device the driver set running, where each
//! queue stands and what the device holds beyond that. A restored
//! transport places its BAR and its kicks where the guest had them before
//! the device is put on the bus; a running device comes back paused, and
//! its resume is its activation at the saved places.

use serde::{Deserialize, Serialize};

use super::{VirtioPciDevice, BAR};
use crate::pci::config::{ConfigRestoreError, ConfigSpaceSnapshot};
use crate::pci::msix::{MsixRestoreError, MsixSnapshot};
use crate::pci::PciDevice;
use crate::util::error_chain;
use crate::virtio::pci::common::{CommonRestoreError, CommonSnapshot};
use crate::virtio::{QueuePlace, VirtioDevice};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSnapshot {
    pub config_space: ConfigSpaceSnapshot,
    pub msix: MsixSnapshot,
    pub common: CommonSnapshot,
    pub isr: u8,
    pub needs_reset: bool,
    /// None: the driver had not set the device running.
    pub running: Option<RunningSnapshot>,
}

/// A running device, paused: its queues' places and its own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningSnapshot {
    pub queues: Vec<QueuePlace>,
    pub device: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportSaveError {
    #[error("{id}: the device runs: it is saved only while the VM is paused")]
    NotPaused { id: String },
    #[error("{id}: {message}")]
    Device { id: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    #[error("PCI configuration space")]
    ConfigSpace(#[from] ConfigRestoreError),
    #[error("MSI-X")]
    Msix(#[from] MsixRestoreError),
    #[error("virtio common configuration")]
    Common(#[from] CommonRestoreError),
    #[error("the device refused its saved state: {0}")]
    Device(String),
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    pub fn save_transport(&mut self) -> Result<TransportSnapshot, TransportSaveError> {
        let running = if self.activated {
            let id = self.id().to_owned();
            if !self.paused {
                return Err(TransportSaveError::NotPaused { id });
            }
            let device = |e: D::Error| TransportSaveError::Device {
                id: id.clone(),
                message: error_chain(&e),
            };
            // Restored and not resumed since: where the snapshot had them.
            let queues = match &self.restored_places {
                Some(places) => places.clone(),
                None => self.device.queue_places().map_err(device)?,
            };
            Some(RunningSnapshot {
                queues,
                device: self.device.save_state().map_err(device)?,
            })
        } else {
            None
        };
        self.sync_device_state();
        let (isr, needs_reset) = self.interrupt.saved();
        Ok(TransportSnapshot {
            config_space: self.config.save(),
            msix: self.msix.save(),
            common: self.common.save(),
            isr,
            needs_reset,
            running,
        })
    }

    /// Before the transport is on the bus: the segment maps the BAR where
    /// the restored registers put it.
    pub fn restore_transport(
        &mut self,
        saved: &TransportSnapshot,
    ) -> Result<(), TransportRestoreError> {
        // Whether the device runs is what the transport had: the status
        // register is only what the driver wrote (DRIVER_OK without
        // FEATURES_OK activates nothing).
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
        if let Some(running) = &saved.running {
            self.device
                .restore_state(&running.device)
                .map_err(|e| TransportRestoreError::Device(error_chain(&e)))?;
            // Paused, as it was saved: its resume activates it there.
            self.activated = true;
            self.paused = true;
            self.restored_places = Some(running.queues.clone());
        }
        Ok(())
    }
}
