//! From `Args` to a validated `VmConfig`: what each option's keys mean,
//! read from the pairs `options` splits. The values' limits and the rules
//! across options are `config`'s.

use std::num::{IntErrorKind, ParseIntError};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use virtio_types::{DeviceTypeError, VirtioDeviceType};

use super::options::{OptionForm, Options};
use super::Args;
use crate::config::*;
use crate::files::PathOrFd;

#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// The value breaks the `key=value,...` syntax or the option's keys.
    #[error("{option}: {problem}: expected {form}")]
    Syntax {
        option: &'static str,
        problem: String,
        form: &'static str,
    },
    #[error("{option}: invalid {what} {value:?}: expected {expected}")]
    InvalidValue {
        option: &'static str,
        what: &'static str,
        value: String,
        expected: &'static str,
        #[source]
        source: Option<ParseIntError>,
    },
    #[error("--generic-vhost-user: invalid {key} {value:?}: expected a VIRTIO device ID or name, e.g. virtio_id=fs")]
    InvalidDeviceType {
        key: &'static str,
        value: String,
        #[source]
        source: DeviceTypeError,
    },
    #[error("--generic-vhost-user: invalid {key} {id}: expected 1 to {MAX_VIRTIO_ID}, the device IDs virtio-pci carries (PCI device IDs 0x1041 to 0x107f)")]
    DeviceIdOutOfRange { key: &'static str, id: u32 },
    #[error(
        "--generic-vhost-user: virtio_id= and device_type= are synonyms: expected only one of them"
    )]
    DeviceTypeTwice,
    /// The configuration's own words, behind the option they are about.
    #[error("{}", spelled_for_the_command_line(.0))]
    Config(#[from] ConfigError),
    #[error("{option}: empty path: expected a file name")]
    EmptyPath { option: &'static str },
    #[error("--kernel is missing: expected the kernel to boot, or --api-socket alone to create the VM later with vm.create")]
    NoKernel,
    #[error("{options} given without --kernel: expected --kernel to boot the VM they describe (with --api-socket alone, vm.create brings the whole configuration)")]
    VmOptionsWithoutKernel { options: String },
    #[error("{options} given with --restore: the snapshot holds the VM's configuration")]
    VmOptionsWithRestore { options: String },
}

fn spelled_for_the_command_line(e: &ConfigError) -> String {
    match e.field().option() {
        Some(option) => format!("{option}: {e}"),
        None => e.to_string(),
    }
}

const CPUS: OptionForm = OptionForm {
    name: "--cpus",
    keys: &["boot"],
    form: "boot=N",
};
const MEMORY: OptionForm = OptionForm {
    name: "--memory",
    keys: &["size", "shared", "hugepages", "thp"],
    form: "size=SIZE[,shared=on|off][,hugepages=on|off][,thp=on|off]",
};
const SERIAL: OptionForm = OptionForm {
    name: "--serial",
    keys: &["file"],
    form: "off, null, tty, pty or file=PATH",
};
const CONSOLE: OptionForm = OptionForm {
    name: "--console",
    ..SERIAL
};
const GENERIC_VHOST_USER: OptionForm = OptionForm {
    name: "--generic-vhost-user",
    keys: &[
        "socket",
        "virtio_id",
        "device_type",
        "queue_sizes",
        "id",
        "config_size",
        "config",
    ],
    form: "socket=PATH,virtio_id=ID,queue_sizes=[N,N,...][,id=NAME][,config_size=N][,config=HEX]",
};
const API_SOCKET: OptionForm = OptionForm {
    name: "--api-socket",
    keys: &["path", "fd"],
    form: "path=PATH or fd=N",
};
const RESTORE: OptionForm = OptionForm {
    name: "--restore",
    keys: &["source_url", "resume", "prefault", "vhost_user_sockets"],
    form: "source_url=file:///DIR[,resume=on|off][,prefault=on|off][,vhost_user_sockets=[ID@PATH,...]]",
};
const EVENT_MONITOR: OptionForm = OptionForm {
    name: "--event-monitor",
    ..API_SOCKET
};
const DISK: OptionForm = OptionForm {
    name: "--disk",
    keys: &[
        "path",
        "readonly",
        "direct",
        "num_queues",
        "queue_size",
        "serial",
        "id",
        "image_type",
        "vhost_user",
        "socket",
    ],
    form: "path=PATH[,readonly=on|off][,direct=on|off][,num_queues=N][,queue_size=N][,serial=STR][,id=NAME][,image_type=raw], or vhost_user=on,socket=PATH",
};

/// Every key of every `key=value` option, once each: what the parse
/// tests' and the fuzz target's generators draw from, so a new key is
/// exercised as soon as an option takes it.
#[cfg(any(test, feature = "fuzzing"))]
pub fn every_key() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = [CPUS, MEMORY, SERIAL, CONSOLE, GENERIC_VHOST_USER, DISK]
        .iter()
        .flat_map(|form| form.keys.iter().copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// `path=PATH`, `fd=N`, or (as Cloud Hypervisor also takes it) a bare path.
fn parse_path_or_fd(form: &OptionForm, value: &str) -> Result<PathOrFd, OptionError> {
    if !value.contains('=') {
        return Ok(PathOrFd::Path(non_empty_path(form.name, Path::new(value))?));
    }
    let options = Options::parse(form, value)?;
    match (options.get("path"), options.get("fd")) {
        (Some(path), None) => Ok(PathOrFd::Path(non_empty_path(form.name, Path::new(path))?)),
        (None, Some(fd)) => {
            let fd = parse_number(
                form,
                "fd",
                fd,
                3..=i32::MAX as u64,
                "an open descriptor from 3 up",
            )?;
            Ok(PathOrFd::Fd(fd as i32))
        }
        _ => Err(form.error("expected exactly one of path= and fd=")),
    }
}

impl Args {
    /// Where the API listens, if anywhere.
    pub fn api_socket(&self) -> Result<Option<PathOrFd>, OptionError> {
        self.api_socket
            .as_deref()
            .map(|value| parse_path_or_fd(&API_SOCKET, value))
            .transpose()
    }

    /// The snapshot to restore, if any.
    pub fn restore(&self) -> Result<Option<RestoreConfig>, OptionError> {
        let Some(value) = self.restore.as_deref() else {
            return Ok(None);
        };
        let options = Options::parse(&RESTORE, value)?;
        let url = options.require("source_url")?;
        let source = crate::snapshot::file_url_path(url).ok_or_else(|| {
            RESTORE.invalid(
                "source_url",
                url,
                "a file:// URL of an absolute path, e.g. file:///var/snap",
                None,
            )
        })?;
        let sockets = match options.get("vhost_user_sockets") {
            Some(list) => parse_sockets(list)?,
            None => Vec::new(),
        };
        Ok(Some(RestoreConfig {
            source,
            resume: options.toggle("resume")?.unwrap_or(false),
            prefault: options.toggle("prefault")?.unwrap_or(false),
            sockets,
        }))
    }

    /// Where events go, if anywhere.
    pub fn event_monitor(&self) -> Result<Option<PathOrFd>, OptionError> {
        self.event_monitor
            .as_deref()
            .map(|value| parse_path_or_fd(&EVENT_MONITOR, value))
            .transpose()
    }
}

impl Args {
    /// The VM the command line describes; None when vmm starts without
    /// one, waiting for `vm.create` on its API socket.
    pub fn vm_config(&self) -> Result<Option<VmConfig>, OptionError> {
        if self.restore.is_some() {
            let mut given = self.vm_options_given.clone();
            if self.kernel.is_some() {
                given.insert(0, "--kernel".into());
            }
            if !given.is_empty() {
                return Err(OptionError::VmOptionsWithRestore {
                    options: given.join(", "),
                });
            }
            return Ok(None);
        }
        if self.kernel.is_some() || self.api_socket.is_none() {
            return VmConfig::try_from(self).map(Some);
        }
        if !self.vm_options_given.is_empty() {
            return Err(OptionError::VmOptionsWithoutKernel {
                options: self.vm_options_given.join(", "),
            });
        }
        Ok(None)
    }
}

impl TryFrom<&Args> for VmConfig {
    type Error = OptionError;

    fn try_from(args: &Args) -> Result<Self, OptionError> {
        let kernel = args.kernel.as_deref().ok_or(OptionError::NoKernel)?;
        let config = VmConfig {
            cpus: parse_cpus(&args.cpus)?,
            memory: parse_memory(&args.memory)?,
            payload: PayloadConfig {
                kernel: non_empty_path("--kernel", kernel)?,
                initramfs: args
                    .initramfs
                    .as_deref()
                    .map(|path| non_empty_path("--initramfs", path))
                    .transpose()?,
                cmdline: args.cmdline.clone(),
            },
            serial: parse_console_output(&SERIAL, &args.serial)?,
            console: parse_console_output(&CONSOLE, &args.console)?,
            generic_vhost_user: args
                .generic_vhost_user
                .iter()
                .enumerate()
                .map(|(index, value)| parse_generic_vhost_user(index, value))
                .collect::<Result<_, _>>()?,
            disks: args
                .disk
                .iter()
                .enumerate()
                .map(|(index, value)| parse_disk(index, value))
                .collect::<Result<_, _>>()?,
        };
        config.validate()?;
        Ok(config)
    }
}

fn parse_cpus(value: &str) -> Result<CpusConfig, OptionError> {
    let options = Options::parse(&CPUS, value)?;
    let boot = options.require("boot")?;
    let boot = parse_number(
        &CPUS,
        "boot",
        boot,
        VCPUS,
        "a number from 1 to 254, e.g. boot=2",
    )?;
    Ok(CpusConfig {
        boot: u8::try_from(boot).unwrap_or(MAX_VCPUS),
    })
}

fn parse_memory(value: &str) -> Result<MemoryConfig, OptionError> {
    let options = Options::parse(&MEMORY, value)?;
    let shared = options.toggle("shared")?.unwrap_or(false);
    let hugepages = options.toggle("hugepages")?.unwrap_or(false);
    let thp = options.toggle("thp")?.unwrap_or(true);
    let size = match options.get("size") {
        Some(size) => parse_memory_size(size, hugepages)?,
        None => DEFAULT_MEMORY_SIZE,
    };
    Ok(MemoryConfig {
        size,
        shared,
        hugepages,
        thp,
    })
}

fn parse_memory_size(value: &str, hugepages: bool) -> Result<u64, OptionError> {
    let invalid = |expected, source| MEMORY.invalid("size", value, expected, source);
    const OUT_OF_RANGE: &str = "2M to 1T, e.g. size=512M";
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (value.get(..value.len() - 1), 10),
        Some(b'M' | b'm') => (value.get(..value.len() - 1), 20),
        Some(b'G' | b'g') => (value.get(..value.len() - 1), 30),
        Some(b'T' | b't') => (value.get(..value.len() - 1), 40),
        _ => (Some(value), 0),
    };
    let number = match digits.unwrap_or_default().parse::<u64>() {
        Ok(number) => number,
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => {
            return Err(invalid(OUT_OF_RANGE, None))
        }
        Err(e) => {
            return Err(invalid(
                "a number with optional K, M, G or T suffix, e.g. size=512M",
                Some(e),
            ))
        }
    };
    let size = number
        .checked_mul(1 << shift)
        .ok_or_else(|| invalid(OUT_OF_RANGE, None))?;
    match check_memory_size(size, hugepages) {
        Ok(()) => {}
        Err(MemorySizeError::NotPageMultiple) => {
            return Err(invalid("a multiple of 4K, e.g. size=512M", None))
        }
        Err(MemorySizeError::NotHugePageMultiple) => {
            return Err(invalid("a multiple of 2M with hugepages=on", None))
        }
        Err(MemorySizeError::OutOfRange) => return Err(invalid(OUT_OF_RANGE, None)),
    }
    Ok(size)
}

fn non_empty_path(option: &'static str, path: &Path) -> Result<PathBuf, OptionError> {
    if path.as_os_str().is_empty() {
        return Err(OptionError::EmptyPath { option });
    }
    Ok(path.to_path_buf())
}

fn parse_console_output(form: &OptionForm, value: &str) -> Result<ConsoleOutput, OptionError> {
    Ok(match value {
        "off" => ConsoleOutput::Off,
        "null" => ConsoleOutput::Null,
        "tty" => ConsoleOutput::Tty,
        "pty" => ConsoleOutput::Pty,
        _ => ConsoleOutput::File(Options::parse(form, value)?.require("file")?.into()),
    })
}

fn parse_generic_vhost_user(
    index: usize,
    value: &str,
) -> Result<GenericVhostUserConfig, OptionError> {
    let options = Options::parse(&GENERIC_VHOST_USER, value)?;
    let socket = options.require("socket")?.into();
    let device_type = match (options.get("virtio_id"), options.get("device_type")) {
        (Some(_), Some(_)) => return Err(OptionError::DeviceTypeTwice),
        (Some(id), None) => parse_device_type("virtio_id", id)?,
        (None, Some(id)) => parse_device_type("device_type", id)?,
        (None, None) => return Err(options.missing("virtio_id")),
    };
    let queue_sizes = parse_queue_sizes(options.require("queue_sizes")?)?;
    let config_size = options
        .get("config_size")
        .map(|size| {
            parse_number(
                &GENERIC_VHOST_USER,
                "config_size",
                size,
                CONFIG_SIZES,
                "a number from 0 to 4096",
            )
        })
        .transpose()?
        .map(|size| u32::try_from(size).unwrap_or(MAX_CONFIG_SIZE));
    let config = options.get("config").map(parse_hex).transpose()?;
    let device = GenericVhostUserConfig {
        id: options
            .get("id")
            .map_or_else(|| format!("_generic_vhost_user{index}"), str::to_owned),
        socket,
        device_type,
        queue_sizes,
        config_size,
        config,
    };

    device.validate()?;
    Ok(device)
}

fn parse_device_type(key: &'static str, value: &str) -> Result<VirtioDeviceType, OptionError> {
    let device_type: VirtioDeviceType =
        value
            .parse()
            .map_err(|source| OptionError::InvalidDeviceType {
                key,
                value: value.to_owned(),
                source,
            })?;
    if device_type.id() > MAX_VIRTIO_ID {
        return Err(OptionError::DeviceIdOutOfRange {
            key,
            id: device_type.id(),
        });
    }
    Ok(device_type)
}

/// `[N,N,...]`, or a single `N`; the count is checked by the caller.
fn parse_queue_sizes(value: &str) -> Result<Vec<u16>, OptionError> {
    const EXPECTED: &str = "a power of two from 1 to 32768 per queue, e.g. queue_sizes=[256,256]";
    let list = match value.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| GENERIC_VHOST_USER.invalid("queue_sizes", value, EXPECTED, None))?,
        None => value,
    };
    if list.is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|size| {
            let invalid = |source| GENERIC_VHOST_USER.invalid("queue size", size, EXPECTED, source);
            match size.parse::<u16>() {
                Ok(n) if is_queue_size(n.into()) => Ok(n),
                Ok(_) => Err(invalid(None)),
                Err(e) if *e.kind() == IntErrorKind::PosOverflow => Err(invalid(None)),
                Err(e) => Err(invalid(Some(e))),
            }
        })
        .collect()
}

/// `[ID@PATH,...]`, as Cloud Hypervisor's `net_fds=[ID@FDS,...]`.
fn parse_sockets(value: &str) -> Result<Vec<(String, PathBuf)>, OptionError> {
    const EXPECTED: &str =
        "a list of device ids and socket paths, e.g. vhost_user_sockets=[fs0@/run/fs.sock]";
    let invalid = || RESTORE.invalid("vhost_user_sockets", value, EXPECTED, None);
    let list = value
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or_else(invalid)?;
    list.split(',')
        .map(|item| match item.split_once('@') {
            Some((id, path)) if !id.is_empty() && !path.is_empty() => {
                Ok((id.to_owned(), PathBuf::from(path)))
            }
            _ => Err(invalid()),
        })
        .collect()
}

fn parse_hex(value: &str) -> Result<Vec<u8>, OptionError> {
    let expected = "an even number of hex digits, e.g. config=0a0b0c0d";
    crate::util::parse_hex(value)
        .ok_or_else(|| GENERIC_VHOST_USER.invalid("config", value, expected, None))
}

fn parse_disk(index: usize, value: &str) -> Result<DiskConfig, OptionError> {
    let options = Options::parse(&DISK, value)?;
    let num_queues = options
        .get("num_queues")
        .map(|n| parse_number(&DISK, "num_queues", n, DISK_QUEUES, "a number from 1 to 64"))
        .transpose()?
        .map_or(DEFAULT_DISK_QUEUES, |n| u16::try_from(n).unwrap_or(1));
    let queue_size = match options.get("queue_size") {
        None => DEFAULT_DISK_QUEUE_SIZE,
        Some(size) => {
            const EXPECTED: &str = "a power of two from 4 to 32768, e.g. queue_size=128";
            let n = parse_number(&DISK, "queue_size", size, 0..=u64::MAX, EXPECTED)?;
            if !is_disk_queue_size(n) {
                return Err(DISK.invalid("queue_size", size, EXPECTED, None));
            }
            u16::try_from(n).unwrap_or(DEFAULT_DISK_QUEUE_SIZE)
        }
    };
    let backend = if options.toggle("vhost_user")?.unwrap_or(false) {
        // The backend owns the image: what it is and how it is opened.
        for key in ["path", "readonly", "direct", "serial", "image_type"] {
            if options.get(key).is_some() {
                return Err(DISK.error(format!(
                    "{key}= is the backend's business with vhost_user=on"
                )));
            }
        }
        DiskBackend::VhostUser {
            socket: non_empty_path("--disk socket=", Path::new(options.require("socket")?))?,
        }
    } else {
        if options.get("socket").is_some() {
            return Err(DISK.error("socket= needs vhost_user=on"));
        }
        // Cloud Hypervisor's formats: we serve raw images (an ISO is one),
        // so saying so is welcome and any other format is refused.
        match options.get("image_type") {
            None | Some("raw") => {}
            Some(other @ ("qcow2" | "vhd" | "vhdx")) => {
                return Err(DISK.error(format!(
                    "image_type={other}: vmm serves raw images only (convert with qemu-img convert -O raw)"
                )))
            }
            Some(other) => {
                return Err(DISK.invalid(
                    "image_type",
                    other,
                    "raw (or Cloud Hypervisor's qcow2, vhd, vhdx, which vmm does not serve)",
                    None,
                ))
            }
        }
        DiskBackend::Image {
            path: non_empty_path("--disk path=", Path::new(options.require("path")?))?,
            readonly: options.toggle("readonly")?.unwrap_or(false),
            direct: options.toggle("direct")?.unwrap_or(false),
            serial: options.get("serial").map(str::to_owned),
            raw_declared: options.get("image_type") == Some("raw"),
        }
    };
    Ok(DiskConfig {
        id: options
            .get("id")
            .map_or_else(|| format!("_disk{index}"), str::to_owned),
        num_queues,
        queue_size,
        backend,
    })
}

/// A decimal number in `range`.
fn parse_number(
    form: &OptionForm,
    what: &'static str,
    value: &str,
    range: RangeInclusive<u64>,
    expected: &'static str,
) -> Result<u64, OptionError> {
    let invalid = |source| form.invalid(what, value, expected, source);
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        Ok(_) => Err(invalid(None)),
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => Err(invalid(None)),
        Err(e) => Err(invalid(Some(e))),
    }
}

#[cfg(test)]
mod tests;
