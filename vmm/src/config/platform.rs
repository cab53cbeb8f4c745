//! What the platform can hold, checked from the command line alone so that
//! a configuration that cannot be built is refused before vmm connects to
//! any backend: PCI slots and MSI vectors for the virtio-pci devices, one
//! backend per socket and paths that fit `sun_path`, a kernel command line
//! Linux takes, and the device IDs virtio-pci can carry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use virtio_types::VirtioDeviceType;

use super::{ConsoleOutput, DeviceKind, Field, VmConfig};
use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
use crate::pci::segment::DEVICES_PER_BUS;
use crate::virtio::pci::msix_vectors;
use crate::vstate::interrupts::MSI_GSI_COUNT;

/// Largest VIRTIO device ID: virtio-pci devices have PCI device IDs 0x1040
/// plus the ID, and VIRTIO 1.x (4.1.2) and Linux take 0x1041 to 0x107f.
pub const MAX_VIRTIO_ID: u32 = 0x3f;
/// Slot 0 of PCI bus 0 holds the host bridge.
pub const MAX_PCI_DEVICES: usize = DEVICES_PER_BUS - 1;
/// MSI-X vectors of all devices together.
pub const MAX_MSI_VECTORS: usize = MSI_GSI_COUNT;
/// A Unix socket path, less the NUL that `sun_path` (108 bytes) keeps.
pub const MAX_SOCKET_PATH_LEN: usize = 107;
/// The kernel command line, less its NUL.
pub const MAX_CMDLINE_LEN: usize = CMDLINE_MAX_SIZE - 1;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{count} virtio-pci devices ({devices}): expected at most {MAX_PCI_DEVICES}, the free slots of PCI bus 0")]
    TooManyDevices { count: usize, devices: String },
    #[error("the virtio-pci devices need {count} MSI-X vectors (one per queue plus one per device): expected at most {MAX_MSI_VECTORS}")]
    TooManyVectors { count: usize },
    #[error("device {id:?}: socket path {path:?} is {len} bytes long: expected at most {MAX_SOCKET_PATH_LEN} (the sun_path limit)")]
    SocketPathTooLong {
        kind: DeviceKind,
        id: String,
        path: PathBuf,
        len: usize,
    },
    #[error("device {id:?} uses socket {path:?}, as device {other:?} does: expected one device per backend socket")]
    DuplicateSocket {
        kind: DeviceKind,
        id: String,
        path: PathBuf,
        other: String,
    },
    #[error("{len} bytes long: expected at most {MAX_CMDLINE_LEN} (Linux's COMMAND_LINE_SIZE less the NUL)")]
    CmdlineTooLong { len: usize },
    #[error("{character:?} at byte {offset} is not printable ASCII: expected characters from ' ' to '~'")]
    CmdlineNotAscii { character: char, offset: usize },
}

impl PlatformError {
    pub fn field(&self) -> Field {
        match self {
            PlatformError::TooManyDevices { .. } | PlatformError::TooManyVectors { .. } => {
                Field::Whole
            }
            PlatformError::SocketPathTooLong { kind, id, .. }
            | PlatformError::DuplicateSocket { kind, id, .. } => Field::Device {
                kind: *kind,
                id: id.clone(),
                key: match kind {
                    DeviceKind::GenericVhostUser => "socket",
                    DeviceKind::Disk => "vhost_socket",
                },
            },
            PlatformError::CmdlineTooLong { .. } | PlatformError::CmdlineNotAscii { .. } => {
                Field::Value {
                    option: "--cmdline",
                    json: "payload.cmdline",
                }
            }
        }
    }
}

/// One virtio-pci device as the platform sees it.
struct PciDevice {
    option: &'static str,
    queues: usize,
}

impl VmConfig {
    /// Everything above, for the whole configuration.
    pub(super) fn validate_platform(&self) -> Result<(), PlatformError> {
        check_cmdline(&self.payload.cmdline)?;
        self.check_sockets()?;
        let devices = self.pci_devices();
        if devices.len() > MAX_PCI_DEVICES {
            return Err(PlatformError::TooManyDevices {
                count: devices.len(),
                devices: count_by_option(&devices),
            });
        }
        let vectors: usize = devices
            .iter()
            .map(|d| usize::from(msix_vectors(d.queues)))
            .sum();
        if vectors > MAX_MSI_VECTORS {
            return Err(PlatformError::TooManyVectors { count: vectors });
        }
        Ok(())
    }

    fn pci_devices(&self) -> Vec<PciDevice> {
        let listed = self.devices().into_iter().map(|d| PciDevice {
            option: d.kind().option(),
            queues: d.queues(),
        });
        // virtio-console without multiport: receiveq and transmitq.
        let console = (self.console != ConsoleOutput::Off).then(|| PciDevice {
            option: "--console",
            queues: VirtioDeviceType::new(3).map_or(2, |t| t.min_queues()),
        });
        listed.chain(console).collect()
    }

    /// Each backend socket fits `sun_path` and serves one device: a second
    /// connection to a backend that serves one would wait for a reply
    /// that never comes.
    fn check_sockets(&self) -> Result<(), PlatformError> {
        let mut seen: HashMap<&Path, &str> = HashMap::new();
        for device in self.devices() {
            let Some(path) = device.socket() else {
                continue;
            };
            let (kind, id) = (device.kind(), device.id().to_owned());
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH_LEN {
                return Err(PlatformError::SocketPathTooLong {
                    kind,
                    id,
                    path: path.to_owned(),
                    len,
                });
            }
            if let Some(other) = seen.insert(path, device.id()) {
                return Err(PlatformError::DuplicateSocket {
                    kind,
                    id,
                    path: path.to_owned(),
                    other: other.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// "31 from --generic-vhost-user, 1 from --console".
fn count_by_option(devices: &[PciDevice]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for device in devices {
        match counts
            .iter_mut()
            .find(|(option, _)| *option == device.option)
        {
            Some((_, n)) => *n += 1,
            None => counts.push((device.option, 1)),
        }
    }
    counts
        .iter()
        .map(|(option, n)| format!("{n} from {option}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What linux-loader would refuse at start-up, refused here instead: a
/// line longer than Linux takes, or a character that is not printable
/// ASCII. Surrounding whitespace does not count: the loader trims it.
fn check_cmdline(cmdline: &str) -> Result<(), PlatformError> {
    let trimmed = cmdline.trim();
    let start = cmdline.len() - cmdline.trim_start().len();
    if let Some((offset, character)) = trimmed
        .char_indices()
        .find(|(_, c)| !matches!(c, ' '..='~'))
    {
        return Err(PlatformError::CmdlineNotAscii {
            character,
            offset: start + offset,
        });
    }
    if trimmed.len() > MAX_CMDLINE_LEN {
        return Err(PlatformError::CmdlineTooLong { len: trimmed.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
