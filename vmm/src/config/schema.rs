//! The configuration as Cloud Hypervisor's API writes it (the field names
//! of its OpenAPI `VmConfig`): what `vm.info` answers and what `vm.create`
//! takes. Fields Cloud Hypervisor has and `vmm` does not are refused by
//! name, never ignored; errors name the JSON path of the value.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_types::VirtioDeviceType;

use super::*;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigJson {
    #[serde(default)]
    pub cpus: CpusJson,
    #[serde(default)]
    pub memory: MemoryJson,
    pub payload: PayloadJson,
    #[serde(default)]
    pub disks: Option<Vec<DiskJson>>,
    #[serde(default)]
    pub generic_vhost_user: Option<Vec<GenericVhostUserJson>>,
    #[serde(default = "ConsoleJson::serial_default")]
    pub serial: ConsoleJson,
    #[serde(default = "ConsoleJson::console_default")]
    pub console: ConsoleJson,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusJson {
    pub boot_vcpus: u32,
    /// Cloud Hypervisor requires it; without vCPU hotplug it can only
    /// equal `boot_vcpus`, which is what it defaults to here.
    #[serde(default)]
    pub max_vcpus: Option<u32>,
}

impl Default for CpusJson {
    fn default() -> Self {
        CpusJson {
            boot_vcpus: 1,
            max_vcpus: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryJson {
    pub size: u64,
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub hugepages: bool,
    /// Cloud Hypervisor's default: on.
    #[serde(default = "default_thp")]
    pub thp: bool,
}

fn default_thp() -> bool {
    true
}

impl Default for MemoryJson {
    fn default() -> Self {
        MemoryJson {
            size: DEFAULT_MEMORY_SIZE,
            shared: false,
            hugepages: false,
            thp: true,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadJson {
    /// Known so that it is refused with a reason: vmm boots a kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskJson {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub direct: bool,
    #[serde(default = "default_disk_queues")]
    pub num_queues: usize,
    #[serde(default = "default_disk_queue_size")]
    pub queue_size: u16,
    #[serde(default)]
    pub vhost_user: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Cloud Hypervisor's `ImageType`: `Raw`, or `Unknown` for "look".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
}

fn default_disk_queues() -> usize {
    DEFAULT_DISK_QUEUES.into()
}

fn default_disk_queue_size() -> u16 {
    DEFAULT_DISK_QUEUE_SIZE
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericVhostUserJson {
    #[serde(default)]
    pub id: Option<String>,
    pub socket: PathBuf,
    /// Cloud Hypervisor's name; `virtio_id`, the command line's older
    /// synonym, is taken too.
    #[serde(alias = "virtio_id")]
    pub device_type: u32,
    pub queue_sizes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_size: Option<u32>,
    /// vmm's own: config bytes in hex, for backends without the CONFIG
    /// protocol feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// Cloud Hypervisor's `ConsoleOutputMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Pty,
    Tty,
    File,
    Socket,
    Null,
}

/// Cloud Hypervisor's `ConsoleConfig`: a mode, and the file for `File`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleJson {
    pub mode: ConsoleMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl ConsoleJson {
    fn serial_default() -> Self {
        ConsoleJson {
            mode: ConsoleMode::Null,
            file: None,
        }
    }

    fn console_default() -> Self {
        ConsoleJson {
            mode: ConsoleMode::Tty,
            file: None,
        }
    }
}

/// A `vm.create` body refused: where, and why.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: {problem}")]
    Field { path: String, problem: String },
    #[error("the body is not a VmConfig: {0}")]
    Json(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn field(path: impl Into<String>, problem: impl Into<String>) -> SchemaError {
    SchemaError::Field {
        path: path.into(),
        problem: problem.into(),
    }
}

impl VmConfig {
    /// A `vm.create` body: Cloud Hypervisor's JSON, checked as the command
    /// line is (the same limits, the same rules across devices).
    pub fn from_json(body: &[u8]) -> Result<VmConfig, SchemaError> {
        let json: VmConfigJson =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
                .map_err(|e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    if path == "." || path == "?" {
                        SchemaError::Json(inner.to_string())
                    } else {
                        field(path, inner.to_string())
                    }
                })?;
        let config = VmConfig::try_from(json)?;
        config
            .validate()
            .map_err(|e| match e.field().json_path(&config) {
                Some(path) => field(path, e.to_string()),
                None => SchemaError::Config(e),
            })?;
        Ok(config)
    }
}

impl TryFrom<VmConfigJson> for VmConfig {
    type Error = SchemaError;

    fn try_from(json: VmConfigJson) -> Result<VmConfig, SchemaError> {
        let boot = u64::from(json.cpus.boot_vcpus);
        if !VCPUS.contains(&boot) {
            return Err(field(
                "cpus.boot_vcpus",
                format!("{boot}: expected 1 to {MAX_VCPUS}"),
            ));
        }
        if let Some(max) = json.cpus.max_vcpus.filter(|max| u64::from(*max) != boot) {
            return Err(field(
                "cpus.max_vcpus",
                format!("{max}: expected {boot}, as boot_vcpus: vmm has no vCPU hotplug"),
            ));
        }
        let memory = &json.memory;
        if let Err(e) = check_memory_size(memory.size, memory.hugepages) {
            let expected = match e {
                MemorySizeError::NotPageMultiple => "a multiple of 4096",
                MemorySizeError::NotHugePageMultiple => "a multiple of 2 MiB with hugepages",
                MemorySizeError::OutOfRange => "2 MiB to 1 TiB",
            };
            return Err(field(
                "memory.size",
                format!("{}: expected {expected}", memory.size),
            ));
        }
        if json.payload.firmware.is_some() {
            return Err(field(
                "payload.firmware",
                "vmm boots a kernel directly and loads no firmware: expected payload.kernel",
            ));
        }
        let kernel = non_empty(json.payload.kernel, "payload.kernel")?
            .ok_or_else(|| field("payload.kernel", "missing: expected the kernel to boot"))?;
        let config = VmConfig {
            cpus: CpusConfig {
                boot: u8::try_from(boot).unwrap_or(MAX_VCPUS),
            },
            memory: MemoryConfig {
                size: memory.size,
                shared: memory.shared,
                hugepages: memory.hugepages,
                thp: memory.thp,
            },
            payload: PayloadConfig {
                kernel,
                initramfs: non_empty(json.payload.initramfs, "payload.initramfs")?,
                cmdline: json.payload.cmdline.unwrap_or_default(),
            },
            serial: console_output(json.serial, "serial")?,
            console: console_output(json.console, "console")?,
            generic_vhost_user: json
                .generic_vhost_user
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(index, device)| generic_vhost_user(index, device))
                .collect::<Result<_, _>>()?,
            disks: json
                .disks
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(index, disk)| disk_config(index, disk))
                .collect::<Result<_, _>>()?,
        };
        Ok(config)
    }
}

fn non_empty(path: Option<PathBuf>, at: &str) -> Result<Option<PathBuf>, SchemaError> {
    match path {
        Some(path) if path.as_os_str().is_empty() => {
            Err(field(at, "empty path: expected a file name"))
        }
        other => Ok(other),
    }
}

fn console_output(json: ConsoleJson, at: &str) -> Result<ConsoleOutput, SchemaError> {
    if json.mode != ConsoleMode::File && json.file.is_some() {
        return Err(field(
            format!("{at}.file"),
            format!(
                "given with mode {:?}: expected it with mode File only",
                json.mode
            ),
        ));
    }
    Ok(match json.mode {
        ConsoleMode::Off => ConsoleOutput::Off,
        ConsoleMode::Null => ConsoleOutput::Null,
        ConsoleMode::Tty => ConsoleOutput::Tty,
        ConsoleMode::Pty => ConsoleOutput::Pty,
        ConsoleMode::File => ConsoleOutput::File(
            non_empty(json.file, &format!("{at}.file"))?
                .ok_or_else(|| field(format!("{at}.file"), "missing: mode File needs it"))?,
        ),
        ConsoleMode::Socket => {
            return Err(field(
                format!("{at}.mode"),
                "Socket: vmm has no socket console: expected Off, Null, Tty, Pty or File",
            ))
        }
    })
}

fn generic_vhost_user(
    index: usize,
    json: GenericVhostUserJson,
) -> Result<GenericVhostUserConfig, SchemaError> {
    let at = |key: &str| format!("generic_vhost_user[{index}].{key}");
    let device_type = VirtioDeviceType::new(json.device_type)
        .filter(|t| t.id() <= MAX_VIRTIO_ID)
        .ok_or_else(|| {
            field(
                at("device_type"),
                format!(
                    "{}: expected 1 to {MAX_VIRTIO_ID}, the device IDs virtio-pci carries",
                    json.device_type
                ),
            )
        })?;
    if let Some(size) = json
        .queue_sizes
        .iter()
        .find(|s| !is_queue_size(u64::from(**s)))
    {
        return Err(field(
            at("queue_sizes"),
            format!("{size}: expected a power of two from 1 to {MAX_QUEUE_SIZE} per queue"),
        ));
    }
    if let Some(size) = json
        .config_size
        .filter(|size| !CONFIG_SIZES.contains(&u64::from(*size)))
    {
        return Err(field(
            at("config_size"),
            format!("{size}: expected 0 to {MAX_CONFIG_SIZE}"),
        ));
    }
    let config = json
        .config
        .map(|hex| {
            crate::util::parse_hex(&hex).ok_or_else(|| {
                field(
                    at("config"),
                    format!("{hex:?}: expected an even number of hex digits"),
                )
            })
        })
        .transpose()?;
    let device = GenericVhostUserConfig {
        id: json
            .id
            .unwrap_or_else(|| format!("_generic_vhost_user{index}")),
        socket: non_empty(Some(json.socket), &at("socket"))?.unwrap_or_default(),
        device_type,
        queue_sizes: json.queue_sizes,
        config_size: json.config_size,
        config,
    };
    device.validate().map_err(|e| match e.field() {
        Field::Device { key, .. } => field(at(key), e.to_string()),
        _ => SchemaError::Config(e),
    })?;
    Ok(device)
}

fn disk_config(index: usize, json: DiskJson) -> Result<DiskConfig, SchemaError> {
    let at = |key: &str| format!("disks[{index}].{key}");
    if !DISK_QUEUES.contains(&(json.num_queues as u64)) {
        return Err(field(
            at("num_queues"),
            format!("{}: expected 1 to {MAX_QUEUES}", json.num_queues),
        ));
    }
    if !is_disk_queue_size(json.queue_size.into()) {
        return Err(field(
            at("queue_size"),
            format!(
                "{}: expected a power of two from 4 to {MAX_DISK_QUEUE_SIZE}",
                json.queue_size
            ),
        ));
    }
    let raw_declared = match json.image_type.as_deref() {
        None | Some("Unknown") => false,
        Some("Raw") => true,
        Some(other @ ("Qcow2" | "Vhdx" | "FixedVhd" | "FlatVmdk")) => {
            return Err(field(
                at("image_type"),
                format!(
                    "{other}: vmm serves raw images only (convert with qemu-img convert -O raw)"
                ),
            ))
        }
        Some(other) => {
            return Err(field(
                at("image_type"),
                format!("{other:?}: expected Raw or Unknown"),
            ))
        }
    };
    let backend = if json.vhost_user {
        // The backend owns the image: what it is and how it is opened.
        let given = [
            ("path", json.path.is_some()),
            ("readonly", json.readonly),
            ("direct", json.direct),
            ("serial", json.serial.is_some()),
            ("image_type", raw_declared),
        ];
        if let Some((key, _)) = given.iter().find(|(_, given)| *given) {
            return Err(field(
                at(key),
                "the backend's business with vhost_user true: expected it left out",
            ));
        }
        DiskBackend::VhostUser {
            socket: non_empty(json.vhost_socket, &at("vhost_socket"))?
                .ok_or_else(|| field(at("vhost_socket"), "missing: vhost_user true needs it"))?,
        }
    } else {
        if json.vhost_socket.is_some() {
            return Err(field(at("vhost_socket"), "given without vhost_user true"));
        }
        DiskBackend::Image {
            path: non_empty(json.path, &at("path"))?
                .ok_or_else(|| field(at("path"), "missing: expected the image's path"))?,
            readonly: json.readonly,
            direct: json.direct,
            serial: json.serial,
            raw_declared,
        }
    };
    Ok(DiskConfig {
        id: json.id.unwrap_or_else(|| format!("_disk{index}")),
        num_queues: u16::try_from(json.num_queues).unwrap_or(DEFAULT_DISK_QUEUES),
        queue_size: json.queue_size,
        backend,
    })
}

impl From<&ConsoleOutput> for ConsoleJson {
    fn from(output: &ConsoleOutput) -> ConsoleJson {
        let (mode, file) = match output {
            ConsoleOutput::Off => (ConsoleMode::Off, None),
            ConsoleOutput::Null => (ConsoleMode::Null, None),
            ConsoleOutput::Tty => (ConsoleMode::Tty, None),
            ConsoleOutput::Pty => (ConsoleMode::Pty, None),
            ConsoleOutput::File(path) => (ConsoleMode::File, Some(path.clone())),
        };
        ConsoleJson { mode, file }
    }
}

impl From<&VmConfig> for VmConfigJson {
    fn from(config: &VmConfig) -> VmConfigJson {
        VmConfigJson {
            cpus: CpusJson {
                boot_vcpus: config.cpus.boot.into(),
                max_vcpus: Some(config.cpus.boot.into()),
            },
            memory: MemoryJson {
                size: config.memory.size,
                shared: config.memory.shared,
                hugepages: config.memory.hugepages,
                thp: config.memory.thp,
            },
            payload: PayloadJson {
                firmware: None,
                kernel: Some(config.payload.kernel.clone()),
                initramfs: config.payload.initramfs.clone(),
                cmdline: Some(config.payload.cmdline.clone()),
            },
            disks: Some(config.disks.iter().map(DiskJson::from).collect()),
            generic_vhost_user: Some(
                config
                    .generic_vhost_user
                    .iter()
                    .map(|device| GenericVhostUserJson {
                        id: Some(device.id.clone()),
                        socket: device.socket.clone(),
                        device_type: device.device_type.id(),
                        queue_sizes: device.queue_sizes.clone(),
                        config_size: device.config_size,
                        config: device.config.as_deref().map(crate::util::to_hex),
                    })
                    .collect(),
            ),
            serial: (&config.serial).into(),
            console: (&config.console).into(),
        }
    }
}

impl From<&DiskConfig> for DiskJson {
    fn from(disk: &DiskConfig) -> DiskJson {
        let mut json = DiskJson {
            id: Some(disk.id.clone()),
            path: None,
            readonly: false,
            direct: false,
            num_queues: disk.num_queues.into(),
            queue_size: disk.queue_size,
            vhost_user: false,
            vhost_socket: None,
            serial: None,
            image_type: None,
        };
        match &disk.backend {
            DiskBackend::Image {
                path,
                readonly,
                direct,
                serial,
                raw_declared,
            } => {
                json.path = Some(path.clone());
                json.readonly = *readonly;
                json.direct = *direct;
                json.serial = serial.clone();
                json.image_type = raw_declared.then(|| "Raw".to_owned());
            }
            DiskBackend::VhostUser { socket } => {
                json.vhost_user = true;
                json.vhost_socket = Some(socket.clone());
            }
        }
        json
    }
}

#[cfg(test)]
mod tests;
