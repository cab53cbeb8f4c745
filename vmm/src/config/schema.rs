//! The configuration as Cloud Hypervisor's API writes it (the field names
//! of its OpenAPI `VmConfig`): what `vm.info` answers. Fields Cloud
//! Hypervisor has and `vmm` does not are left out rather than invented.

use std::path::PathBuf;

use serde::Serialize;

use super::{ConsoleOutput, DiskBackend, VmConfig};

#[derive(Debug, Serialize)]
pub struct VmConfigJson {
    pub cpus: CpusJson,
    pub memory: MemoryJson,
    pub payload: PayloadJson,
    pub disks: Vec<DiskJson>,
    pub generic_vhost_user: Vec<GenericVhostUserJson>,
    pub serial: ConsoleJson,
    pub console: ConsoleJson,
}

#[derive(Debug, Serialize)]
pub struct CpusJson {
    pub boot_vcpus: u8,
    pub max_vcpus: u8,
}

#[derive(Debug, Serialize)]
pub struct MemoryJson {
    pub size: u64,
    pub shared: bool,
    pub hugepages: bool,
}

#[derive(Debug, Serialize)]
pub struct PayloadJson {
    pub kernel: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Debug, Serialize)]
pub struct DiskJson {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub readonly: bool,
    pub direct: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    pub vhost_user: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct GenericVhostUserJson {
    pub id: String,
    pub socket: PathBuf,
    pub virtio_id: u32,
    pub queue_sizes: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_size: Option<u32>,
}

/// Cloud Hypervisor's `ConsoleConfig`: a mode, and the file for `File`.
#[derive(Debug, Serialize)]
pub struct ConsoleJson {
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl From<&ConsoleOutput> for ConsoleJson {
    fn from(output: &ConsoleOutput) -> ConsoleJson {
        let (mode, file) = match output {
            ConsoleOutput::Off => ("Off", None),
            ConsoleOutput::Null => ("Null", None),
            ConsoleOutput::Tty => ("Tty", None),
            ConsoleOutput::Pty => ("Pty", None),
            ConsoleOutput::File(path) => ("File", Some(path.clone())),
        };
        ConsoleJson { mode, file }
    }
}

impl From<&VmConfig> for VmConfigJson {
    fn from(config: &VmConfig) -> VmConfigJson {
        VmConfigJson {
            cpus: CpusJson {
                boot_vcpus: config.cpus.boot,
                max_vcpus: config.cpus.boot,
            },
            memory: MemoryJson {
                size: config.memory.size,
                shared: config.memory.shared,
                hugepages: config.memory.hugepages,
            },
            payload: PayloadJson {
                kernel: config.payload.kernel.clone(),
                initramfs: config.payload.initramfs.clone(),
                cmdline: config.payload.cmdline.clone(),
            },
            disks: config
                .disks
                .iter()
                .map(|disk| {
                    let mut json = DiskJson {
                        id: disk.id.clone(),
                        path: None,
                        readonly: false,
                        direct: false,
                        num_queues: disk.num_queues,
                        queue_size: disk.queue_size,
                        vhost_user: false,
                        vhost_socket: None,
                        serial: None,
                    };
                    match &disk.backend {
                        DiskBackend::Image {
                            path,
                            readonly,
                            direct,
                            serial,
                            ..
                        } => {
                            json.path = Some(path.clone());
                            json.readonly = *readonly;
                            json.direct = *direct;
                            json.serial = serial.clone();
                        }
                        DiskBackend::VhostUser { socket } => {
                            json.vhost_user = true;
                            json.vhost_socket = Some(socket.clone());
                        }
                    }
                    json
                })
                .collect(),
            generic_vhost_user: config
                .generic_vhost_user
                .iter()
                .map(|device| GenericVhostUserJson {
                    id: device.id.clone(),
                    socket: device.socket.clone(),
                    virtio_id: device.device_type.id(),
                    queue_sizes: device.queue_sizes.clone(),
                    config_size: device.config_size,
                })
                .collect(),
            serial: (&config.serial).into(),
            console: (&config.console).into(),
        }
    }
}
