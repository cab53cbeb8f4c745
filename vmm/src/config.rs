//! The validated VM configuration: plain structs, the limits they keep,
//! and the rules across options. How the values are spelled on the command
//! line is `cli`'s business; nothing here opens files.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use virtio_types::VirtioDeviceType;

mod platform;
pub mod schema;
pub use platform::{PlatformError, MAX_VIRTIO_ID};

/// Guest RAM bounds and granularity.
pub const MIN_MEMORY_SIZE: u64 = 2 << 20;
pub const MAX_MEMORY_SIZE: u64 = 1 << 40;
pub const DEFAULT_MEMORY_SIZE: u64 = 512 << 20;
pub const PAGE_SIZE: u64 = 4 << 10;
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;
pub const MAX_VCPUS: u8 = 254;
/// Queues per vhost-user device: our MSI-X table has a vector per queue.
pub const MAX_QUEUES: usize = 64;
/// Largest virtqueue the split ring format allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest device config window (`config_size=`, `config=`).
pub const MAX_CONFIG_SIZE: u32 = 4096;

// The limits of single values, which the command line and the API check
// alike and each say in their own words.
pub const VCPUS: RangeInclusive<u64> = 1..=MAX_VCPUS as u64;
pub const DISK_QUEUES: RangeInclusive<u64> = 1..=MAX_QUEUES as u64;
pub const CONFIG_SIZES: RangeInclusive<u64> = 0..=MAX_CONFIG_SIZE as u64;

/// A generic vhost-user queue: a power of two the split ring takes.
pub fn is_queue_size(size: u64) -> bool {
    size.is_power_of_two() && size <= u64::from(MAX_QUEUE_SIZE)
}

/// A virtio-blk queue: two entries hold no request of header, data and
/// status without indirect descriptors (QEMU refuses 2 as well).
pub fn is_disk_queue_size(size: u64) -> bool {
    size.is_power_of_two() && (4..=u64::from(MAX_DISK_QUEUE_SIZE)).contains(&size)
}

/// Why a guest RAM size is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySizeError {
    NotPageMultiple,
    NotHugePageMultiple,
    OutOfRange,
}

pub fn check_memory_size(size: u64, hugepages: bool) -> Result<(), MemorySizeError> {
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(MemorySizeError::NotPageMultiple);
    }
    if hugepages && !size.is_multiple_of(HUGE_PAGE_SIZE) {
        return Err(MemorySizeError::NotHugePageMultiple);
    }
    if !(MIN_MEMORY_SIZE..=MAX_MEMORY_SIZE).contains(&size) {
        return Err(MemorySizeError::OutOfRange);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    pub payload: PayloadConfig,
    pub serial: ConsoleOutput,
    pub console: ConsoleOutput,
    pub generic_vhost_user: Vec<GenericVhostUserConfig>,
    pub disks: Vec<DiskConfig>,
}

/// Where a restore comes from and how it ends (`--restore`, `vm.restore`,
/// with Cloud Hypervisor's keys `source_url` and `resume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfig {
    /// The snapshot directory (`source_url=file:///DIR`).
    pub source: PathBuf,
    /// Run at once rather than wait paused for vm.resume.
    pub resume: bool,
    /// Allocate all of guest memory before the guest runs, not as it
    /// touches it.
    pub prefault: bool,
    /// New sockets for vhost-user devices, by device id: the backends of
    /// the restored VM need not listen where the snapshot's did.
    pub sockets: Vec<(String, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
#[error("no vhost-user device has id {0:?}")]
pub struct NoSuchVhostUserDevice(pub String);

impl VmConfig {
    /// The configuration with every relative path made absolute against
    /// `cwd`, for a snapshot: a restore from another directory must open
    /// the same disk image, not a file of the same name there.
    pub fn with_absolute_paths(&self, cwd: &Path) -> VmConfig {
        let absolute = |path: &Path| cwd.join(path);
        let mut config = self.clone();
        config.payload.kernel = absolute(&config.payload.kernel);
        if let Some(initramfs) = &mut config.payload.initramfs {
            *initramfs = absolute(initramfs);
        }
        for output in [&mut config.serial, &mut config.console] {
            if let ConsoleOutput::File(path) = output {
                *path = absolute(path);
            }
        }
        for device in &mut config.generic_vhost_user {
            device.socket = absolute(&device.socket);
        }
        for disk in &mut config.disks {
            match &mut disk.backend {
                DiskBackend::Image { path, .. } => *path = absolute(path),
                DiskBackend::VhostUser { socket } => *socket = absolute(socket),
            }
        }
        config
    }
}

impl VmConfig {
    /// Device `id`'s vhost-user backend is at `socket` (a restore's
    /// `vhost_user_sockets`).
    pub fn set_socket(&mut self, id: &str, socket: PathBuf) -> Result<(), NoSuchVhostUserDevice> {
        if let Some(device) = self.generic_vhost_user.iter_mut().find(|d| d.id == id) {
            device.socket = socket;
            return Ok(());
        }
        match self.disks.iter_mut().find(|d| d.id == id) {
            Some(DiskConfig {
                backend: DiskBackend::VhostUser { socket: at },
                ..
            }) => {
                *at = socket;
                Ok(())
            }
            _ => Err(NoSuchVhostUserDevice(id.to_owned())),
        }
    }
}

impl VmConfig {
    /// Every file the VM reads, or writes as a disk, with the option that
    /// names it and whether the guest writes it: no output may be one of
    /// them, and a file the guest writes serves no other use.
    pub fn input_files(&self) -> Vec<InputFile> {
        let mut files = vec![InputFile {
            path: self.payload.kernel.clone(),
            what: format!("--kernel {}", self.payload.kernel.display()),
            written: false,
        }];
        if let Some(initramfs) = &self.payload.initramfs {
            files.push(InputFile {
                path: initramfs.clone(),
                what: format!("--initramfs {}", initramfs.display()),
                written: false,
            });
        }
        files.extend(self.devices().iter().flat_map(|d| d.inputs()));
        files
    }

    /// Every device the configuration lists, in the order their PCI slots
    /// are given: a new kind joins here, and the rules across devices
    /// (ids, sockets, slots, vectors, shared memory) reach it.
    pub fn devices(&self) -> Vec<&dyn DeviceSpec> {
        let generic = self.generic_vhost_user.iter().map(|d| d as &dyn DeviceSpec);
        let disks = self.disks.iter().map(|d| d as &dyn DeviceSpec);
        generic.chain(disks).collect()
    }
}

/// What the rules across devices need of one device's configuration.
pub trait DeviceSpec {
    fn kind(&self) -> DeviceKind;
    /// Unique among all devices.
    fn id(&self) -> &str;
    /// Its virtio queues: one MSI-X vector each, beside the config one.
    fn queues(&self) -> usize;
    /// The vhost-user backend's socket, if a backend serves it: it maps
    /// guest memory, which must then be shared.
    fn socket(&self) -> Option<&Path>;
    /// The files it opens.
    fn inputs(&self) -> Vec<InputFile> {
        Vec::new()
    }
}

impl DeviceSpec for GenericVhostUserConfig {
    fn kind(&self) -> DeviceKind {
        DeviceKind::GenericVhostUser
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn queues(&self) -> usize {
        self.queue_sizes.len()
    }

    fn socket(&self) -> Option<&Path> {
        Some(&self.socket)
    }
}

impl DeviceSpec for DiskConfig {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Disk
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn queues(&self) -> usize {
        usize::from(self.num_queues)
    }

    fn socket(&self) -> Option<&Path> {
        match &self.backend {
            DiskBackend::VhostUser { socket } => Some(socket),
            DiskBackend::Image { .. } => None,
        }
    }

    fn inputs(&self) -> Vec<InputFile> {
        match &self.backend {
            DiskBackend::Image { path, readonly, .. } => vec![InputFile {
                path: path.clone(),
                what: format!("--disk path={}", path.display()),
                written: !readonly,
            }],
            DiskBackend::VhostUser { .. } => Vec::new(),
        }
    }
}

/// A file the VM opens as an input, for [`VmConfig::input_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    /// The option naming it, for messages: `--disk path=a.img`.
    pub what: String,
    /// The guest writes it (a disk without `readonly=on`).
    pub written: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpusConfig {
    /// 1 to `MAX_VCPUS`.
    pub boot: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bytes: a multiple of 4 KiB (2 MiB with `hugepages`), 2 MiB to 1 TiB.
    pub size: u64,
    /// Backed by a memfd that vhost-user backends can map.
    pub shared: bool,
    pub hugepages: bool,
    /// Transparent huge pages asked for (MADV_HUGEPAGE) or refused
    /// (MADV_NOHUGEPAGE) on RAM that is not `hugepages`.
    pub thp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

/// Where a console's output goes and its input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// No device at all.
    Off,
    /// A device whose output is discarded and which never has input.
    Null,
    /// Output on stdout, input from stdin (in raw mode on a terminal).
    Tty,
    /// A new pseudo-terminal, output and input.
    Pty,
    /// Output to a file, created or truncated; no input.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericVhostUserConfig {
    /// Unique among the devices; `_generic_vhost_user{index}` by default.
    pub id: String,
    pub socket: PathBuf,
    pub device_type: VirtioDeviceType,
    /// One per queue, each a power of two up to `MAX_QUEUE_SIZE`; at least
    /// `device_type.min_queues()` and at most `MAX_QUEUES` of them.
    pub queue_sizes: Vec<u16>,
    /// 0 to `MAX_CONFIG_SIZE`.
    pub config_size: Option<u32>,
    /// Config bytes for backends without the CONFIG protocol feature; never
    /// longer than `config_window_len()`.
    pub config: Option<Vec<u8>>,
}

/// Largest virtio-blk queue: the split ring's limit.
pub const MAX_DISK_QUEUE_SIZE: u16 = MAX_QUEUE_SIZE;
/// Cloud Hypervisor's defaults for `--disk`.
pub const DEFAULT_DISK_QUEUES: u16 = 1;
pub const DEFAULT_DISK_QUEUE_SIZE: u16 = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Unique among all devices; `_disk{index}` by default.
    pub id: String,
    /// 1 to `MAX_QUEUES`.
    pub num_queues: u16,
    /// A power of two from 2 to `MAX_DISK_QUEUE_SIZE`.
    pub queue_size: u16,
    pub backend: DiskBackend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskBackend {
    /// A raw image (or ISO) served by `vmm` itself.
    Image {
        path: PathBuf,
        readonly: bool,
        /// O_DIRECT: bypass the host's page cache.
        direct: bool,
        /// What VIRTIO_BLK_T_GET_ID answers; the guest sees at most 20 bytes.
        serial: Option<String>,
        /// `image_type=raw` was given: the bytes are served as they are,
        /// whatever format they look like; without it a known foreign
        /// format (qcow2, VHD, ...) is refused.
        raw_declared: bool,
    },
    /// A vhost-user-blk backend, served by the generic vhost-user device.
    VhostUser { socket: PathBuf },
}

/// The kinds of device a configuration lists, each with its command-line
/// option and its list in Cloud Hypervisor's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    GenericVhostUser,
    Disk,
}

impl DeviceKind {
    pub fn option(self) -> &'static str {
        match self {
            DeviceKind::GenericVhostUser => "--generic-vhost-user",
            DeviceKind::Disk => "--disk",
        }
    }

    pub fn json_list(self) -> &'static str {
        match self {
            DeviceKind::GenericVhostUser => "generic_vhost_user",
            DeviceKind::Disk => "disks",
        }
    }

    /// What messages call a device of this kind.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::GenericVhostUser => "generic vhost-user device",
            DeviceKind::Disk => "disk",
        }
    }
}

/// Where the value an error is about sits. Messages name the device and
/// the problem; the command line puts the option in front, the API the
/// JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The configuration as a whole (limits of the platform).
    Whole,
    /// A VM-wide value: its option, and its path in the JSON.
    Value {
        option: &'static str,
        json: &'static str,
    },
    /// A key of one device; `key` as the JSON spells it.
    Device {
        kind: DeviceKind,
        id: String,
        key: &'static str,
    },
}

impl Field {
    pub fn option(&self) -> Option<&'static str> {
        match self {
            Field::Whole => None,
            Field::Value { option, .. } => Some(option),
            Field::Device { kind, .. } => Some(kind.option()),
        }
    }

    /// The path in `config`'s JSON: `disks[1].queue_size`. A device is
    /// found by its id; the first of two with one id is named.
    pub fn json_path(&self, config: &VmConfig) -> Option<String> {
        match self {
            Field::Whole => None,
            Field::Value { json, .. } => Some((*json).to_owned()),
            Field::Device { kind, id, key } => {
                let list = kind.json_list();
                let ids = config.devices().into_iter().filter(|d| d.kind() == *kind);
                Some(match ids.map(|d| d.id()).position(|i| i == id) {
                    Some(index) => format!("{list}[{index}].{key}"),
                    None => format!("{list}[id={id:?}].{key}"),
                })
            }
        }
    }
}

/// A configuration whose values each parsed but do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("device {id:?} of type {device_type} needs {queues}: expected at least {min} in queue_sizes, got {count}")]
    TooFewQueues {
        id: String,
        device_type: VirtioDeviceType,
        count: usize,
        min: usize,
        queues: &'static str,
    },
    #[error("device {id:?} has {count} queues: expected at most {MAX_QUEUES}")]
    TooManyQueues { id: String, count: usize },
    #[error("config of device {id:?} has {len} bytes: expected at most {max}, the config window")]
    ConfigTooLong { id: String, len: usize, max: u32 },
    #[error("id {id:?} is given to more than one device: expected unique ids")]
    DuplicateId { id: String, kind: DeviceKind },
    #[error("{} {id:?} has a vhost-user backend, which maps guest memory: expected it shared (shared=on)", kind.name())]
    NeedsSharedMemory { kind: DeviceKind, id: String },
    #[error("both tty: expected at most one of them on the terminal, e.g. a null serial port")]
    DoubleTty,
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

impl ConfigError {
    pub fn field(&self) -> Field {
        let generic = |id: &String, key| Field::Device {
            kind: DeviceKind::GenericVhostUser,
            id: id.clone(),
            key,
        };
        let shared = Field::Value {
            option: "--memory",
            json: "memory.shared",
        };
        match self {
            ConfigError::TooFewQueues { id, .. } | ConfigError::TooManyQueues { id, .. } => {
                generic(id, "queue_sizes")
            }
            ConfigError::ConfigTooLong { id, .. } => generic(id, "config"),
            ConfigError::DuplicateId { id, kind } => Field::Device {
                kind: *kind,
                id: id.clone(),
                key: "id",
            },
            ConfigError::NeedsSharedMemory { .. } => shared,
            ConfigError::DoubleTty => Field::Value {
                option: "--serial and --console",
                json: "serial.mode and console.mode",
            },
            ConfigError::Platform(e) => e.field(),
        }
    }
}

impl VmConfig {
    /// The rules across options; each device's own rules are checked as
    /// it is built (`GenericVhostUserConfig::validate`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.serial == ConsoleOutput::Tty && self.console == ConsoleOutput::Tty {
            return Err(ConfigError::DoubleTty);
        }
        let devices = self.devices();
        if let Some(d) = devices.iter().find(|d| d.socket().is_some()) {
            if !self.memory.shared {
                return Err(ConfigError::NeedsSharedMemory {
                    kind: d.kind(),
                    id: d.id().to_owned(),
                });
            }
        }
        let mut ids = HashSet::new();
        for device in &devices {
            if !ids.insert(device.id()) {
                return Err(ConfigError::DuplicateId {
                    id: device.id().to_owned(),
                    kind: device.kind(),
                });
            }
        }
        self.validate_platform()?;
        Ok(())
    }
}

impl GenericVhostUserConfig {
    /// The queue count fits the type and the MSI-X table, and `config`
    /// fits the window.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let count = self.queue_sizes.len();
        let device_type = self.device_type;
        if count < device_type.min_queues() {
            return Err(ConfigError::TooFewQueues {
                id: self.id.clone(),
                device_type,
                count,
                min: device_type.min_queues(),
                queues: device_type.required_queues(),
            });
        }
        if count > MAX_QUEUES {
            return Err(ConfigError::TooManyQueues {
                id: self.id.clone(),
                count,
            });
        }
        let len = self.config.as_ref().map_or(0, |c| c.len());
        let window = self.config_window_len();
        if window > MAX_CONFIG_SIZE || u32::try_from(len).map_or(true, |len| len > window) {
            return Err(ConfigError::ConfigTooLong {
                id: self.id.clone(),
                len,
                max: window.min(MAX_CONFIG_SIZE),
            });
        }
        Ok(())
    }

    /// The length of the device config region the guest sees:
    /// `config_size` if given; otherwise the spec's config size for the
    /// type, or the length of `config` if that is longer, or 0 for a type
    /// without a known size and no `config`.
    pub fn config_window_len(&self) -> u32 {
        if let Some(size) = self.config_size {
            return size;
        }
        let given = self.config.as_ref().map_or(0, |c| c.len());
        let given = u32::try_from(given).unwrap_or(u32::MAX);
        given.max(self.device_type.spec_config_size().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path a configuration names is made absolute against the
    /// directory given; absolute ones stay as they are.
    #[test]
    fn relative_paths_become_absolute_for_a_snapshot() {
        let config = VmConfig::from_json(
            br#"{"payload":{"kernel":"vmlinux","initramfs":"/boot/initrd"},
                 "memory":{"size":536870912,"shared":true},
                 "serial":{"mode":"File","file":"serial.log"},"console":{"mode":"Off"},
                 "disks":[{"path":"disk.img"},{"vhost_user":true,"vhost_socket":"blk.sock"}],
                 "generic_vhost_user":[{"socket":"/run/fs.sock","device_type":26,"queue_sizes":[512,512]}]}"#,
        )
        .expect("a configuration");
        let absolute = config.with_absolute_paths(Path::new("/work/vm"));
        assert_eq!(absolute.payload.kernel, Path::new("/work/vm/vmlinux"));
        assert_eq!(
            absolute.payload.initramfs.as_deref(),
            Some(Path::new("/boot/initrd"))
        );
        assert_eq!(
            absolute.serial,
            ConsoleOutput::File("/work/vm/serial.log".into())
        );
        assert!(matches!(
            &absolute.disks[0].backend,
            DiskBackend::Image { path, .. } if path == Path::new("/work/vm/disk.img")
        ));
        assert!(matches!(
            &absolute.disks[1].backend,
            DiskBackend::VhostUser { socket } if socket == Path::new("/work/vm/blk.sock")
        ));
        assert_eq!(
            absolute.generic_vhost_user[0].socket,
            Path::new("/run/fs.sock")
        );
    }
}
