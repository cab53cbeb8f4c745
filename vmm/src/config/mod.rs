//! The validated VM configuration, built from `cli::Args`: what each
//! option's keys mean and the rules across options (the `key=value,...`
//! syntax itself is `options`). It opens no files.

use std::collections::HashSet;
use std::num::{IntErrorKind, ParseIntError};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use self::options::{OptionForm, Options};
use crate::cli::Args;
use crate::virtio::device_type::{DeviceTypeError, VirtioDeviceType};

mod options;

/// Guest RAM bounds and granularity.
pub const MIN_MEMORY_SIZE: u64 = 2 << 20;
pub const MAX_MEMORY_SIZE: u64 = 1 << 40;
pub const DEFAULT_MEMORY_SIZE: u64 = 512 << 20;
const PAGE_SIZE: u64 = 4 << 10;
const HUGE_PAGE_SIZE: u64 = 2 << 20;
pub const MAX_VCPUS: u8 = 254;
/// Queues per vhost-user device: our MSI-X table has a vector per queue.
pub const MAX_QUEUES: usize = 64;
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest device config window (`config_size=`, `config=`).
pub const MAX_CONFIG_SIZE: u32 = 4096;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutput {
    Off,
    Null,
    Tty,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{option}: empty value: expected {form}")]
    Empty {
        option: &'static str,
        form: &'static str,
    },
    #[error("{option}: empty item (a stray comma) in {value:?}: expected {form}")]
    EmptyItem {
        option: &'static str,
        value: String,
        form: &'static str,
    },
    #[error("{option}: {item:?} is not key=value: expected {form}")]
    NotKeyValue {
        option: &'static str,
        item: String,
        form: &'static str,
    },
    #[error("{option}: unbalanced quote in {value:?}: expected key=\"...\" with \"\" for a literal quote")]
    UnbalancedQuote { option: &'static str, value: String },
    #[error("{option}: unbalanced bracket in {value:?}: expected a list such as key=[1,2]")]
    UnbalancedBracket { option: &'static str, value: String },
    #[error("{option}: {key}= has an empty value: expected {form}")]
    EmptyValue {
        option: &'static str,
        key: String,
        form: &'static str,
    },
    #[error("{option}: unknown key {key:?}: expected {form}")]
    UnknownKey {
        option: &'static str,
        key: String,
        form: &'static str,
    },
    #[error("{option}: {key}= is given twice: expected {form}")]
    DuplicateKey {
        option: &'static str,
        key: String,
        form: &'static str,
    },
    #[error("{option}: missing {key}=: expected {form}")]
    MissingKey {
        option: &'static str,
        key: &'static str,
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
    #[error(
        "--generic-vhost-user: virtio_id= and device_type= are synonyms: expected only one of them"
    )]
    DeviceTypeTwice,
    #[error("--generic-vhost-user: device {id:?} of type {device_type} needs {queues}: expected at least {min} in queue_sizes, got {count}")]
    TooFewQueues {
        id: String,
        device_type: VirtioDeviceType,
        count: usize,
        min: usize,
        queues: &'static str,
    },
    #[error(
        "--generic-vhost-user: device {id:?} has {count} queues: expected at most {MAX_QUEUES}"
    )]
    TooManyQueues { id: String, count: usize },
    #[error("--generic-vhost-user: config= of device {id:?} has {len} bytes: expected at most {max}, the config window")]
    ConfigTooLong { id: String, len: usize, max: u32 },
    #[error(
        "--generic-vhost-user: id {id:?} is given to more than one device: expected unique ids"
    )]
    DuplicateId { id: String },
    #[error("--generic-vhost-user needs guest memory shared with the backends: expected --memory with shared=on")]
    NeedsSharedMemory,
    #[error("{option}: empty path: expected a file name")]
    EmptyPath { option: &'static str },
}

const CPUS: OptionForm = OptionForm {
    name: "--cpus",
    keys: &["boot"],
    form: "boot=N",
};
const MEMORY: OptionForm = OptionForm {
    name: "--memory",
    keys: &["size", "shared", "hugepages"],
    form: "size=SIZE[,shared=on|off][,hugepages=on|off]",
};
const SERIAL: OptionForm = OptionForm {
    name: "--serial",
    keys: &["file"],
    form: "off, null, tty or file=PATH",
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
const DISK: OptionForm = OptionForm {
    name: "--disk",
    keys: &["path", "readonly"],
    form: "path=PATH[,readonly=on|off]",
};

impl TryFrom<&Args> for VmConfig {
    type Error = ConfigError;

    fn try_from(args: &Args) -> Result<Self, ConfigError> {
        let config = VmConfig {
            cpus: parse_cpus(&args.cpus)?,
            memory: parse_memory(&args.memory)?,
            payload: PayloadConfig {
                kernel: non_empty_path("--kernel", &args.kernel)?,
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
                .map(|value| parse_disk(value))
                .collect::<Result<_, _>>()?,
        };
        config.check_across_options()?;
        Ok(config)
    }
}

impl VmConfig {
    fn check_across_options(&self) -> Result<(), ConfigError> {
        if !self.generic_vhost_user.is_empty() && !self.memory.shared {
            return Err(ConfigError::NeedsSharedMemory);
        }
        let mut ids = HashSet::new();
        for device in &self.generic_vhost_user {
            if !ids.insert(device.id.as_str()) {
                return Err(ConfigError::DuplicateId {
                    id: device.id.clone(),
                });
            }
        }
        Ok(())
    }
}

impl GenericVhostUserConfig {
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

fn parse_cpus(value: &str) -> Result<CpusConfig, ConfigError> {
    let options = Options::parse(&CPUS, value)?;
    let boot = options.require("boot")?;
    let boot = parse_number(
        &CPUS,
        "boot",
        boot,
        1..=u64::from(MAX_VCPUS),
        "a number from 1 to 254, e.g. boot=2",
    )?;
    Ok(CpusConfig {
        boot: u8::try_from(boot).unwrap_or(MAX_VCPUS),
    })
}

fn parse_memory(value: &str) -> Result<MemoryConfig, ConfigError> {
    let options = Options::parse(&MEMORY, value)?;
    let shared = options.toggle("shared")?.unwrap_or(false);
    let hugepages = options.toggle("hugepages")?.unwrap_or(false);
    let size = match options.get("size") {
        Some(size) => parse_memory_size(size, hugepages)?,
        None => DEFAULT_MEMORY_SIZE,
    };
    Ok(MemoryConfig {
        size,
        shared,
        hugepages,
    })
}

fn parse_memory_size(value: &str, hugepages: bool) -> Result<u64, ConfigError> {
    let invalid = |expected, source| ConfigError::InvalidValue {
        option: MEMORY.name,
        what: "size",
        value: value.to_owned(),
        expected,
        source,
    };
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
    if size % PAGE_SIZE != 0 {
        return Err(invalid("a multiple of 4K, e.g. size=512M", None));
    }
    if hugepages && size % HUGE_PAGE_SIZE != 0 {
        return Err(invalid("a multiple of 2M with hugepages=on", None));
    }
    if !(MIN_MEMORY_SIZE..=MAX_MEMORY_SIZE).contains(&size) {
        return Err(invalid(OUT_OF_RANGE, None));
    }
    Ok(size)
}

fn non_empty_path(option: &'static str, path: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::EmptyPath { option });
    }
    Ok(path.to_path_buf())
}

fn parse_console_output(form: &OptionForm, value: &str) -> Result<ConsoleOutput, ConfigError> {
    Ok(match value {
        "off" => ConsoleOutput::Off,
        "null" => ConsoleOutput::Null,
        "tty" => ConsoleOutput::Tty,
        _ => ConsoleOutput::File(Options::parse(form, value)?.require("file")?.into()),
    })
}

fn parse_generic_vhost_user(
    index: usize,
    value: &str,
) -> Result<GenericVhostUserConfig, ConfigError> {
    let options = Options::parse(&GENERIC_VHOST_USER, value)?;
    let socket = options.require("socket")?.into();
    let device_type = match (options.get("virtio_id"), options.get("device_type")) {
        (Some(_), Some(_)) => return Err(ConfigError::DeviceTypeTwice),
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
                0..=u64::from(MAX_CONFIG_SIZE),
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

    let count = device.queue_sizes.len();
    if count < device_type.min_queues() {
        return Err(ConfigError::TooFewQueues {
            id: device.id,
            device_type,
            count,
            min: device_type.min_queues(),
            queues: device_type.required_queues(),
        });
    }
    if count > MAX_QUEUES {
        return Err(ConfigError::TooManyQueues {
            id: device.id,
            count,
        });
    }
    let len = device.config.as_ref().map_or(0, |c| c.len());
    let window = device.config_window_len();
    if window > MAX_CONFIG_SIZE || u32::try_from(len).map_or(true, |len| len > window) {
        return Err(ConfigError::ConfigTooLong {
            id: device.id,
            len,
            max: window.min(MAX_CONFIG_SIZE),
        });
    }
    Ok(device)
}

fn parse_device_type(key: &'static str, value: &str) -> Result<VirtioDeviceType, ConfigError> {
    value
        .parse()
        .map_err(|source| ConfigError::InvalidDeviceType {
            key,
            value: value.to_owned(),
            source,
        })
}

/// `[N,N,...]`, or a single `N`; the count is checked by the caller.
fn parse_queue_sizes(value: &str) -> Result<Vec<u16>, ConfigError> {
    const EXPECTED: &str = "a power of two from 1 to 32768 per queue, e.g. queue_sizes=[256,256]";
    let list = match value.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').ok_or(ConfigError::InvalidValue {
            option: GENERIC_VHOST_USER.name,
            what: "queue_sizes",
            value: value.to_owned(),
            expected: EXPECTED,
            source: None,
        })?,
        None => value,
    };
    if list.is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|size| {
            let invalid = |source| ConfigError::InvalidValue {
                option: GENERIC_VHOST_USER.name,
                what: "queue size",
                value: size.to_owned(),
                expected: EXPECTED,
                source,
            };
            match size.parse::<u16>() {
                Ok(n) if n.is_power_of_two() && n <= MAX_QUEUE_SIZE => Ok(n),
                Ok(_) => Err(invalid(None)),
                Err(e) if *e.kind() == IntErrorKind::PosOverflow => Err(invalid(None)),
                Err(e) => Err(invalid(Some(e))),
            }
        })
        .collect()
}

fn parse_hex(value: &str) -> Result<Vec<u8>, ConfigError> {
    fn nibble(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let pairs = value.as_bytes().chunks_exact(2);
    let parsed = if pairs.remainder().is_empty() {
        pairs
            .map(|pair| match pair {
                [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
    } else {
        None
    };
    parsed.ok_or_else(|| ConfigError::InvalidValue {
        option: GENERIC_VHOST_USER.name,
        what: "config",
        value: value.to_owned(),
        expected: "an even number of hex digits, e.g. config=0a0b0c0d",
        source: None,
    })
}

fn parse_disk(value: &str) -> Result<DiskConfig, ConfigError> {
    let options = Options::parse(&DISK, value)?;
    Ok(DiskConfig {
        path: options.require("path")?.into(),
        readonly: options.toggle("readonly")?.unwrap_or(false),
    })
}

/// A decimal number in `range`.
fn parse_number(
    form: &OptionForm,
    what: &'static str,
    value: &str,
    range: RangeInclusive<u64>,
    expected: &'static str,
) -> Result<u64, ConfigError> {
    let invalid = |source| ConfigError::InvalidValue {
        option: form.name,
        what,
        value: value.to_owned(),
        expected,
        source,
    };
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        Ok(_) => Err(invalid(None)),
        Err(e) if *e.kind() == IntErrorKind::PosOverflow => Err(invalid(None)),
        Err(e) => Err(invalid(Some(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use proptest::prelude::*;
    use rstest::rstest;
    use std::error::Error;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn parse(extra: &[&str]) -> Result<VmConfig, ConfigError> {
        let argv = ["vmm", "--kernel", "/boot/vmlinux"].iter().chain(extra);
        VmConfig::try_from(&Args::try_parse_from(argv).expect("clap accepts the arguments"))
    }

    fn parse_ok(extra: &[&str]) -> VmConfig {
        parse(extra).expect("valid configuration")
    }

    fn vhost(values: &[&str]) -> Result<Vec<GenericVhostUserConfig>, ConfigError> {
        let mut argv = vec!["--memory", "size=1G,shared=on"];
        for value in values {
            argv.extend(["--generic-vhost-user", value]);
        }
        parse(&argv).map(|config| config.generic_vhost_user)
    }

    fn vhost_one(value: &str) -> Result<GenericVhostUserConfig, ConfigError> {
        vhost(&[value]).map(|mut devices| devices.remove(0))
    }

    fn vhost_ok(value: &str) -> GenericVhostUserConfig {
        vhost_one(value).expect("valid device")
    }

    fn device_type(id: u32) -> VirtioDeviceType {
        VirtioDeviceType::new(id).expect("non-zero")
    }

    #[test]
    fn defaults() {
        assert_eq!(
            parse_ok(&[]),
            VmConfig {
                cpus: CpusConfig { boot: 1 },
                memory: MemoryConfig {
                    size: 512 * MIB,
                    shared: false,
                    hugepages: false,
                },
                payload: PayloadConfig {
                    kernel: "/boot/vmlinux".into(),
                    initramfs: None,
                    cmdline: String::new(),
                },
                serial: ConsoleOutput::Tty,
                console: ConsoleOutput::Off,
                generic_vhost_user: vec![],
                disks: vec![],
            }
        );
    }

    #[test]
    fn payload() {
        let config = parse_ok(&[
            "--initramfs",
            "/i.cpio",
            "--cmdline",
            "console=ttyS0 a=\"b,c\"",
        ]);
        assert_eq!(config.payload.initramfs, Some("/i.cpio".into()));
        assert_eq!(config.payload.cmdline, "console=ttyS0 a=\"b,c\"");
        assert!(matches!(
            non_empty_path("--kernel", Path::new("")),
            Err(ConfigError::EmptyPath { option: "--kernel" })
        ));
    }

    #[rstest]
    #[case("boot=1", 1)]
    #[case("boot=2", 2)]
    #[case("boot=08", 8)]
    #[case("boot=254", 254)]
    fn cpus(#[case] value: &str, #[case] boot: u8) {
        assert_eq!(parse_ok(&["--cpus", value]).cpus.boot, boot);
    }

    #[rstest]
    #[case("boot=0", "invalid boot \"0\": expected a number from 1 to 254")]
    #[case("boot=255", "invalid boot \"255\"")]
    #[case("boot=99999999999999999999999", "invalid boot")]
    #[case("boot=-1", "invalid boot \"-1\"")]
    #[case("boot=two", "invalid boot \"two\"")]
    #[case("boot=", "boot= has an empty value")]
    #[case("two", "\"two\" is not key=value: expected boot=N")]
    #[case("", "empty value: expected boot=N")]
    #[case("max=2", "unknown key \"max\"")]
    #[case("boot=1,boot=2", "boot= is given twice")]
    fn cpus_refused(#[case] value: &str, #[case] message: &str) {
        let err = parse(&["--cpus", value]).expect_err("refused");
        assert!(err.to_string().starts_with("--cpus: "), "{err}");
        assert!(err.to_string().contains(message), "{err}");
    }

    #[rstest]
    #[case("size=512M", 512 * MIB, false, false)]
    #[case("size=1G", GIB, false, false)]
    #[case("size=16G", 16 * GIB, false, false)]
    #[case("size=4096M", 4 * GIB, false, false)]
    #[case("size=2097152", 2 * MIB, false, false)]
    #[case("size=2048K", 2 * MIB, false, false)]
    #[case("size=1T", 1 << 40, false, false)]
    #[case("size=1g", GIB, false, false)]
    #[case("size=1G,shared=on", GIB, true, false)]
    #[case("size=1G,shared=off,hugepages=on", GIB, false, true)]
    #[case("hugepages=on,shared=on,size=4M", 4 * MIB, true, true)]
    #[case("shared=on", 512 * MIB, true, false)]
    fn memory(
        #[case] value: &str,
        #[case] size: u64,
        #[case] shared: bool,
        #[case] hugepages: bool,
    ) {
        assert_eq!(
            parse_ok(&["--memory", value]).memory,
            MemoryConfig {
                size,
                shared,
                hugepages
            }
        );
    }

    #[rstest]
    #[case("", "empty value")]
    #[case("size=", "size= has an empty value")]
    #[case("size=0", "invalid size \"0\": expected 2M to 1T")]
    #[case("size=4096", "invalid size \"4096\": expected 2M to 1T")]
    #[case("size=1M", "expected 2M to 1T")]
    #[case("size=1025G", "expected 2M to 1T")]
    #[case("size=2T", "expected 2M to 1T")]
    #[case("size=99999999999999T", "expected 2M to 1T")]
    #[case("size=18446744073709551615K", "expected 2M to 1T")]
    #[case("size=99999999999999999999999", "expected 2M to 1T")]
    #[case(
        "size=12Q",
        "invalid size \"12Q\": expected a number with optional K, M, G or T"
    )]
    #[case("size=1.5G", "invalid size \"1.5G\"")]
    #[case("size=1GB", "invalid size \"1GB\"")]
    #[case("size=G", "invalid size \"G\"")]
    #[case("size=-1G", "invalid size \"-1G\"")]
    #[case("size=0x1000", "invalid size \"0x1000\"")]
    #[case("size= 1G", "invalid size \" 1G\"")]
    #[case("size=5000", "invalid size \"5000\": expected a multiple of 4K")]
    #[case("size=2097153", "expected a multiple of 4K")]
    #[case("size=3M,hugepages=on", "expected a multiple of 2M with hugepages=on")]
    #[case("size=1G,shared=yes", "invalid shared \"yes\": expected on or off")]
    #[case("size=1G,hugepages=ON", "invalid hugepages \"ON\"")]
    #[case("1G", "\"1G\" is not key=value: expected size=SIZE")]
    #[case("size=1G,", "empty item")]
    #[case("size=1G,size=2G", "size= is given twice")]
    #[case("sizes=1G", "unknown key \"sizes\"")]
    fn memory_refused(#[case] value: &str, #[case] message: &str) {
        let err = parse(&["--memory", value]).expect_err("refused");
        assert!(err.to_string().starts_with("--memory: "), "{err}");
        assert!(err.to_string().contains(message), "{err}");
    }

    #[test]
    fn memory_message_is_one_line_with_the_cause_as_source() {
        let err = parse(&["--memory", "size=12Q"]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "--memory: invalid size \"12Q\": expected a number with optional K, M, G or T \
             suffix, e.g. size=512M"
        );
        let source = err.source().expect("the parse error is the source");
        assert!(!err.to_string().contains(&source.to_string()));
    }

    #[rstest]
    #[case("off", ConsoleOutput::Off)]
    #[case("null", ConsoleOutput::Null)]
    #[case("tty", ConsoleOutput::Tty)]
    #[case("file=/tmp/serial.log", ConsoleOutput::File("/tmp/serial.log".into()))]
    #[case("file=\"/tmp/a b,c=d\"", ConsoleOutput::File("/tmp/a b,c=d".into()))]
    #[case("file=\"a\"\"b\"", ConsoleOutput::File("a\"b".into()))]
    #[case("file=relative", ConsoleOutput::File("relative".into()))]
    fn serial_and_console(#[case] value: &str, #[case] output: ConsoleOutput) {
        let config = parse_ok(&["--serial", value, "--console", value]);
        assert_eq!(config.serial, output);
        assert_eq!(config.console, output);
    }

    #[rstest]
    #[case("", "empty value: expected off, null, tty or file=PATH")]
    #[case("file=", "file= has an empty value")]
    #[case("file", "\"file\" is not key=value")]
    #[case(
        "pty",
        "\"pty\" is not key=value: expected off, null, tty or file=PATH"
    )]
    #[case("OFF", "\"OFF\" is not key=value")]
    #[case("tty,file=/x", "\"tty\" is not key=value")]
    #[case("socket=/x", "unknown key \"socket\"")]
    #[case("file=/a,file=/b", "file= is given twice")]
    #[case("file=\"/a", "unbalanced quote")]
    fn serial_and_console_refused(#[case] value: &str, #[case] message: &str) {
        for option in ["--serial", "--console"] {
            let err = parse(&[option, value]).expect_err("refused");
            assert!(err.to_string().starts_with(&format!("{option}: ")), "{err}");
            assert!(err.to_string().contains(message), "{err}");
        }
    }

    #[test]
    fn generic_vhost_user() {
        assert_eq!(
            vhost_ok("socket=/run/fs.sock,virtio_id=fs,queue_sizes=[1024,1024],id=myfs"),
            GenericVhostUserConfig {
                id: "myfs".into(),
                socket: "/run/fs.sock".into(),
                device_type: device_type(26),
                queue_sizes: vec![1024, 1024],
                config_size: None,
                config: None,
            }
        );
    }

    #[rstest]
    #[case("virtio_id=26")]
    #[case("virtio_id=fs")]
    #[case("virtio_id=FS")]
    #[case("virtio_id=virtio-fs")]
    #[case("device_type=26")]
    #[case("device_type=fs")]
    fn device_type_by_number_or_name(#[case] ty: &str) {
        let by_number = vhost_ok("socket=/s,virtio_id=26,queue_sizes=[256,256]");
        assert_eq!(
            vhost_ok(&format!("socket=/s,{ty},queue_sizes=[256,256]")),
            by_number
        );
    }

    #[rstest]
    #[case("queue_sizes=[1]", &[1])]
    #[case("queue_sizes=[64]", &[64])]
    #[case("queue_sizes=[256]", &[256])]
    #[case("queue_sizes=[32768]", &[32768])]
    #[case("queue_sizes=256", &[256])]
    #[case("queue_sizes=\"[2,4]\"", &[2, 4])]
    #[case("queue_sizes=[1,2,4,8,16,32768]", &[1, 2, 4, 8, 16, 32768])]
    fn queue_sizes(#[case] queues: &str, #[case] sizes: &[u16]) {
        let device = vhost_ok(&format!("socket=/s,virtio_id=rng,{queues}"));
        assert_eq!(device.queue_sizes, sizes);
    }

    #[test]
    fn queue_count_bounds() {
        let sizes = |n| {
            format!(
                "socket=/s,virtio_id=1000,queue_sizes=[{}]",
                ["8"; 65][..n].join(",")
            )
        };
        assert_eq!(vhost_ok(&sizes(64)).queue_sizes.len(), MAX_QUEUES);
        let err = vhost_one(&sizes(65)).expect_err("too many");
        assert!(
            matches!(err, ConfigError::TooManyQueues { count: 65, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("expected at most 64"), "{err}");
    }

    #[rstest]
    #[case(
        "queue_sizes=[3]",
        "invalid queue size \"3\": expected a power of two from 1 to 32768"
    )]
    #[case("queue_sizes=[65536]", "invalid queue size \"65536\"")]
    #[case("queue_sizes=[0]", "invalid queue size \"0\"")]
    #[case("queue_sizes=[-1]", "invalid queue size \"-1\"")]
    #[case("queue_sizes=[ 256]", "invalid queue size \" 256\"")]
    #[case("queue_sizes=[256,]", "invalid queue size \"\"")]
    #[case("queue_sizes=[256,,256]", "invalid queue size \"\"")]
    #[case("queue_sizes=[[256]]", "invalid queue size \"[256]\"")]
    #[case("queue_sizes=[256]x", "invalid queue_sizes \"[256]x\"")]
    #[case("queue_sizes=x[256]", "invalid queue size \"x[256]\"")]
    #[case("queue_sizes=[256", "unbalanced bracket")]
    #[case("queue_sizes=256]", "unbalanced bracket")]
    #[case(
        "queue_sizes=[]",
        "needs a request queue: expected at least 1 in queue_sizes, got 0"
    )]
    #[case("queue_sizes=", "queue_sizes= has an empty value")]
    fn queue_sizes_refused(#[case] queues: &str, #[case] message: &str) {
        let err = vhost_one(&format!("socket=/s,virtio_id=rng,{queues}")).expect_err("refused");
        assert!(
            err.to_string().starts_with("--generic-vhost-user: "),
            "{err}"
        );
        assert!(err.to_string().contains(message), "{err}");
    }

    #[test]
    fn virtio_fs_needs_a_request_queue() {
        let err = vhost_one("socket=/s,virtio_id=fs,queue_sizes=[1024]").expect_err("refused");
        assert!(
            matches!(
                err,
                ConfigError::TooFewQueues {
                    count: 1,
                    min: 2,
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("hiprio") && message.contains("request queue"),
            "{message}"
        );
        assert!(message.contains("_generic_vhost_user0") && message.contains("fs (26)"));
    }

    #[rstest]
    #[case("socket=\"/tmp/a b\"", "/tmp/a b")]
    #[case("socket=\"/tmp/a,b\"", "/tmp/a,b")]
    #[case("socket=\"a,\"\"b\"\"\"", "a,\"b\"")]
    #[case("socket=/tmp/x\"y, z\"", "/tmp/xy, z")]
    #[case("socket=\"a=b\"", "a=b")]
    #[case("socket=a=b", "a=b")]
    #[case("socket=\"[x\"", "[x")]
    #[case("socket=/tmp/é ü", "/tmp/é ü")]
    fn socket_quoting(#[case] socket: &str, #[case] path: &str) {
        let device = vhost_ok(&format!("{socket},virtio_id=rng,queue_sizes=[1]"));
        assert_eq!(device.socket, PathBuf::from(path));
    }

    #[rstest]
    #[case(
        "virtio_id=rng,queue_sizes=[1]",
        "missing socket=: expected socket=PATH,virtio_id=ID"
    )]
    #[case("socket=/s,queue_sizes=[1]", "missing virtio_id=")]
    #[case("socket=/s,virtio_id=rng", "missing queue_sizes=")]
    #[case(
        "socket=/s,virtio_id=4,device_type=4,queue_sizes=[1]",
        "virtio_id= and device_type= are synonyms"
    )]
    #[case(
        "socket=/s,virtio_id=0,queue_sizes=[1]",
        "invalid virtio_id \"0\": expected a VIRTIO device ID or name"
    )]
    #[case(
        "socket=/s,device_type=floppy,queue_sizes=[1]",
        "invalid device_type \"floppy\""
    )]
    #[case("socket=\"/s,virtio_id=rng,queue_sizes=[1]", "unbalanced quote")]
    #[case("socket=,virtio_id=rng,queue_sizes=[1]", "socket= has an empty value")]
    #[case(
        "socket=\"\",virtio_id=rng,queue_sizes=[1]",
        "socket= has an empty value"
    )]
    #[case("socket=/s,virtio_id=rng,queue_sizes=[1],tag=x", "unknown key \"tag\"")]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],id=",
        "id= has an empty value"
    )]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],config_size=4097",
        "invalid config_size \"4097\": expected a number from 0 to 4096"
    )]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],config_size=x",
        "invalid config_size \"x\""
    )]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],config=abc",
        "invalid config \"abc\": expected an even number of hex digits"
    )]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],config=zz",
        "invalid config \"zz\""
    )]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],config=0x00",
        "invalid config \"0x00\""
    )]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],config=é0",
        "invalid config \"é0\""
    )]
    #[case(
        "socket=/s,virtio_id=rng,queue_sizes=[1],config=0011,config_size=1",
        "has 2 bytes: expected at most 1"
    )]
    fn generic_vhost_user_refused(#[case] value: &str, #[case] message: &str) {
        let err = vhost_one(value).expect_err("refused");
        assert!(
            err.to_string().starts_with("--generic-vhost-user: "),
            "{err}"
        );
        assert!(err.to_string().contains(message), "{err}");
    }

    #[test]
    fn device_type_error_is_the_source() {
        let err = vhost_one("socket=/s,virtio_id=0,queue_sizes=[1]").expect_err("refused");
        let source = err.source().expect("a source");
        assert_eq!(source.to_string(), DeviceTypeError::Reserved.to_string());
    }

    #[test]
    fn ids_default_by_index_and_must_be_unique() {
        let fs = "socket=/s,virtio_id=fs,queue_sizes=[1,1]";
        let devices = vhost(&[fs, fs]).expect("valid");
        assert_eq!(devices[0].id, "_generic_vhost_user0");
        assert_eq!(devices[1].id, "_generic_vhost_user1");

        let named = format!("{fs},id=a");
        let err = vhost(&[&named, &named]).expect_err("duplicate");
        assert!(
            matches!(&err, ConfigError::DuplicateId { id } if id == "a"),
            "{err}"
        );

        let clash = format!("{fs},id=_generic_vhost_user1");
        let err = vhost(&[&clash, fs]).expect_err("duplicate");
        assert!(matches!(&err, ConfigError::DuplicateId { .. }), "{err}");
    }

    #[rstest]
    #[case(&[])]
    #[case(&["--memory", "size=1G"])]
    #[case(&["--memory", "size=1G,shared=off"])]
    #[case(&["--memory", "size=1G,hugepages=on"])]
    fn generic_vhost_user_needs_shared_memory(#[case] memory: &[&str]) {
        let device = [
            "--generic-vhost-user",
            "socket=/s,virtio_id=fs,queue_sizes=[1,1]",
        ];
        let argv: Vec<&str> = memory.iter().chain(&device).copied().collect();
        let err = parse(&argv).expect_err("refused");
        assert!(matches!(err, ConfigError::NeedsSharedMemory));
        let message = err.to_string();
        assert!(
            message.contains("--generic-vhost-user")
                && message.contains("--memory")
                && message.contains("shared=on"),
            "{message}"
        );
    }

    #[rstest]
    #[case("virtio_id=fs", None, None, 40)]
    #[case("virtio_id=block", None, None, 60)]
    #[case("virtio_id=rng", None, None, 0)]
    #[case("virtio_id=1000", None, None, 0)]
    #[case("virtio_id=1000,config_size=16", Some(16), None, 16)]
    #[case("virtio_id=1000,config=0a0B", None, Some(vec![0x0a, 0x0b]), 2)]
    #[case("virtio_id=block,config=0102030405060708", None, Some((1..=8).collect()), 60)]
    #[case("virtio_id=block,config_size=8", Some(8), None, 8)]
    #[case("virtio_id=fs,config_size=4096", Some(4096), None, 4096)]
    #[case("virtio_id=fs,config_size=0", Some(0), None, 0)]
    fn config_window(
        #[case] keys: &str,
        #[case] config_size: Option<u32>,
        #[case] config: Option<Vec<u8>>,
        #[case] window: u32,
    ) {
        let device = vhost_ok(&format!("socket=/s,{keys},queue_sizes=[1,1]"));
        assert_eq!(device.config_size, config_size);
        assert_eq!(device.config, config);
        assert_eq!(device.config_window_len(), window);
    }

    #[test]
    fn config_longer_than_the_spec_struct_widens_the_window() {
        let hex = "ab".repeat(70);
        let device = vhost_ok(&format!(
            "socket=/s,virtio_id=block,queue_sizes=[1],config={hex}"
        ));
        assert_eq!(device.config_window_len(), 70);
        let hex = "ab".repeat(4097);
        let err = vhost_one(&format!(
            "socket=/s,virtio_id=1000,queue_sizes=[1],config={hex}"
        ))
        .expect_err("too long");
        assert!(
            err.to_string()
                .contains("has 4097 bytes: expected at most 4096"),
            "{err}"
        );
    }

    #[rstest]
    #[case("path=/d.img", "/d.img", false)]
    #[case("path=/d.img,readonly=on", "/d.img", true)]
    #[case("readonly=off,path=\"/a b.img\"", "/a b.img", false)]
    fn disks(#[case] value: &str, #[case] path: &str, #[case] readonly: bool) {
        let config = parse_ok(&["--disk", value, "--disk", "path=/other"]);
        assert_eq!(
            config.disks,
            [
                DiskConfig {
                    path: path.into(),
                    readonly
                },
                DiskConfig {
                    path: "/other".into(),
                    readonly: false
                }
            ]
        );
    }

    #[rstest]
    #[case("readonly=on", "missing path=: expected path=PATH[,readonly=on|off]")]
    #[case("path=/d,readonly=yes", "invalid readonly \"yes\": expected on or off")]
    #[case("/d.img", "\"/d.img\" is not key=value")]
    #[case("path=/d,id=x", "unknown key \"id\"")]
    fn disks_refused(#[case] value: &str, #[case] message: &str) {
        let err = parse(&["--disk", value]).expect_err("refused");
        assert!(err.to_string().starts_with("--disk: "), "{err}");
        assert!(err.to_string().contains(message), "{err}");
    }

    /// Every message is one line naming the option and the expected form.
    #[rstest]
    #[case(&["--cpus", "boot=0"])]
    #[case(&["--memory", "size=5000"])]
    #[case(&["--memory", "size=1G,"])]
    #[case(&["--serial", "file=\"x"])]
    #[case(&["--console", "bad"])]
    #[case(&["--disk", "path=[x"])]
    #[case(&["--disk", "path=x,path=y"])]
    #[case(&["--memory", "size=1G,shared=on", "--generic-vhost-user", "socket=/s,virtio_id=fs,queue_sizes=[1]"])]
    #[case(&["--memory", "size=1G,shared=on", "--generic-vhost-user", "socket=/s,virtio_id=fs,device_type=fs"])]
    #[case(&["--memory", "size=1G,shared=on", "--generic-vhost-user", "socket=/s,virtio_id=x,queue_sizes=[1]"])]
    #[case(&["--generic-vhost-user", "socket=/s,virtio_id=fs,queue_sizes=[1,1]"])]
    fn messages_are_one_line(#[case] argv: &[&str]) {
        let message = parse(argv).expect_err("refused").to_string();
        assert!(message.starts_with("--"), "{message}");
        assert!(message.contains("expected"), "{message}");
        assert!(
            !message.contains('\n') && !message.ends_with('.'),
            "{message}"
        );
    }

    const KEYS: &[&str] = &[
        "boot",
        "size",
        "shared",
        "hugepages",
        "file",
        "socket",
        "virtio_id",
        "device_type",
        "queue_sizes",
        "id",
        "config_size",
        "config",
        "path",
        "readonly",
        "x",
    ];

    fn key_value_ish() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            "[0-9a-zA-Z,=\\[\\]\" .-]{0,12}",
            "[0-9]{1,25}[KMGTkmgt]?",
            "\\[[0-9,]{0,20}\\]",
            Just("on".to_owned()),
            Just("fs".to_owned()),
        ];
        prop::collection::vec((prop::sample::select(KEYS), value), 0..6).prop_map(|pairs| {
            let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            items.join(",")
        })
    }

    fn every_parser(value: &str) {
        let _ = options::split_options(&GENERIC_VHOST_USER, value);
        let _ = parse_cpus(value);
        let _ = parse_memory(value);
        let _ = parse_console_output(&SERIAL, value);
        let _ = parse_generic_vhost_user(0, value);
        let _ = parse_generic_vhost_user(usize::MAX, value);
        let _ = parse_disk(value);
        let _ = parse_queue_sizes(value);
        let _ = parse_hex(value);
        let _ = parse_memory_size(value, true);
    }

    proptest! {
        #[test]
        fn random_strings_never_panic(value in any::<String>()) {
            every_parser(&value);
        }

        #[test]
        fn key_value_strings_never_panic(value in key_value_ish()) {
            every_parser(&value);
            for option in ["--cpus", "--memory", "--serial", "--console", "--disk"] {
                let _ = parse(&[&format!("{option}={value}")]);
            }
            let _ = parse(&[
                "--memory=shared=on",
                &format!("--generic-vhost-user={value}"),
                &format!("--generic-vhost-user={value}"),
            ]);
        }
    }
}
