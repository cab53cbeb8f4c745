//! What a snapshot keeps of the devices: the platform's by name, every
//! PCI device by id with the address it had. A restore builds the devices
//! from the same configuration and puts each state into its device as it
//! is added, before anything runs; a state left over, or a device without
//! one, is refused by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DeviceManager, DeviceManagerError, Devices};
use crate::devices::cmos::{CmosError, RtcSnapshot};
use crate::devices::serial::{SerialError, SerialSnapshot};
use crate::lifecycle::PersistError;
use crate::pci::config::{ConfigRestoreError, ConfigSpaceSnapshot};
use crate::util::lock;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesSnapshot {
    /// None: the VM had no serial port.
    pub serial: Option<SerialSnapshot>,
    pub rtc: RtcSnapshot,
    /// ACPI events the guest had not read.
    pub acpi_ged_pending: u8,
    pub pci_host_bridge: ConfigSpaceSnapshot,
    /// By device id.
    pub pci: BTreeMap<String, PciNodeSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciNodeSnapshot {
    /// Where it was (`00:03.0`): the same configuration puts it there again.
    pub bdf: String,
    pub state: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
#[error("device {id}")]
pub struct SaveError {
    id: String,
    #[source]
    source: PersistError,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot has no state for the {0}")]
    Missing(&'static str),
    #[error("the snapshot has no state for device {0}")]
    MissingDevice(String),
    #[error("the snapshot has device {0}, which the configuration does not")]
    Unknown(String),
    #[error("device {id} was at {saved}, the configuration puts it at {built}")]
    Moved {
        id: String,
        saved: String,
        built: String,
    },
    #[error("the serial port")]
    Serial(#[source] SerialError),
    #[error("the real-time clock")]
    Rtc(#[source] CmosError),
    #[error("the PCI host bridge")]
    HostBridge(#[source] ConfigRestoreError),
    #[error("device {id}")]
    Device {
        id: String,
        #[source]
        source: PersistError,
    },
}

impl DeviceManager {
    /// The saved state of PCI device `id`, in a restore (None otherwise).
    pub(super) fn take_saved_pci(
        &mut self,
        id: &str,
    ) -> Result<Option<PciNodeSnapshot>, DeviceManagerError> {
        let Some(saved) = &mut self.saved else {
            return Ok(None);
        };
        saved
            .pci
            .remove(id)
            .map(Some)
            .ok_or_else(|| DeviceManagerError::Restore(RestoreError::MissingDevice(id.to_owned())))
    }
}

impl Devices {
    /// Every device's state; the VM is paused.
    pub fn save(&self) -> Result<DevicesSnapshot, SaveError> {
        let pci = self
            .nodes
            .iter()
            .map(|node| {
                let state = lock(&node.device).save().map_err(|source| SaveError {
                    id: node.id.clone(),
                    source,
                })?;
                Ok((
                    node.id.clone(),
                    PciNodeSnapshot {
                        bdf: node.bdf.to_string(),
                        state,
                    },
                ))
            })
            .collect::<Result<_, SaveError>>()?;
        Ok(DevicesSnapshot {
            serial: self.platform.serial.as_ref().map(|s| lock(s).save()),
            rtc: lock(&self.platform.cmos).save(),
            acpi_ged_pending: self.acpi_events.pending(),
            pci_host_bridge: lock(&self.platform.host_bridge).save(),
            pci,
        })
    }
}
