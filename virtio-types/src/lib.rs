//! VIRTIO device types: the spec's device ID list (VIRTIO 1.3, section 5),
//! the names users may give them on the command line, and what the VMM must
//! know about a type without a backend: its fewest queues and the length of
//! its device configuration structure.
//!
//! A crate of its own so that `vmm` and the conformance runner read one
//! table.

use std::fmt;
use std::str::FromStr;

/// A VIRTIO device ID: any non-zero number, named or not.
///
/// IDs the spec does not list are accepted: a generic vhost-user device only
/// forwards them, the backend knows what it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtioDeviceType(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceTypeError {
    #[error("Device ID 0 is reserved")]
    Reserved,
    #[error("Not a device ID nor a known device name")]
    Unknown,
}

/// What the spec says about one device type.
struct Entry {
    id: u32,
    /// The first name is the canonical one; the others are aliases.
    names: &'static [&'static str],
    min_queues: usize,
    /// The queues a driver needs, for error messages.
    queues: &'static str,
    config_size: Option<u32>,
}

const fn entry(
    id: u32,
    names: &'static [&'static str],
    min_queues: usize,
    queues: &'static str,
    config_size: Option<u32>,
) -> Entry {
    Entry {
        id,
        names,
        min_queues,
        queues,
        config_size,
    }
}

/// The VIRTIO 1.3 device ID list. `config_size` is `Some(0)` for types
/// without a configuration space and `None` where the spec has no fixed
/// layout (or none at all).
#[rustfmt::skip]
const TABLE: &[Entry] = &[
    // mac, status, max_virtqueue_pairs, mtu, speed, duplex and the RSS
    // fields: the newer supported_tunnel_types is left out.
    entry(1, &["net"], 2, "receiveq and transmitq", Some(24)),
    // Up to write_zeroes_may_unmap and unused1[3]: the secure-erase and
    // zoned fields after it are not implemented by every vhost-user
    // backend, and reading past a backend's struct fails.
    entry(2, &["block", "blk"], 1, "a request queue", Some(60)),
    entry(3, &["console"], 2, "receiveq and transmitq", Some(12)),
    entry(4, &["rng", "entropy"], 1, "a request queue", Some(0)),
    entry(5, &["balloon"], 2, "inflateq and deflateq", Some(16)),
    entry(6, &["iomem"], 1, "a queue", None),
    entry(7, &["rpmsg"], 1, "a queue", None),
    entry(8, &["scsi"], 3, "controlq, eventq and a request queue", Some(36)),
    // A variable-length tag.
    entry(9, &["9p"], 1, "a request queue", None),
    entry(10, &["mac80211-wlan"], 1, "a queue", None),
    entry(11, &["rproc-serial"], 1, "a queue", None),
    entry(12, &["caif"], 1, "a queue", None),
    entry(13, &["memory-balloon"], 1, "a queue", None),
    entry(16, &["gpu"], 2, "controlq and cursorq", Some(16)),
    entry(17, &["clock", "timer"], 1, "a queue", None),
    entry(18, &["input"], 2, "eventq and statusq", Some(136)),
    entry(19, &["vsock", "socket"], 3, "rx, tx and event queues", Some(8)),
    entry(20, &["crypto"], 2, "a data queue and controlq", Some(56)),
    entry(21, &["signal-distribution"], 1, "a queue", None),
    entry(22, &["pstore"], 1, "a queue", None),
    entry(23, &["iommu"], 2, "requestq and eventq", Some(40)),
    entry(24, &["mem", "memory"], 1, "a request queue", Some(56)),
    // jacks, streams, chmaps: `controls` exists only with VIRTIO_SND_F_CTLS.
    entry(25, &["sound", "snd", "audio"], 4, "controlq, eventq, txq and rxq", Some(12)),
    // tag[36] and num_request_queues: notify_buf_size exists only with
    // VIRTIO_FS_F_NOTIFICATION, which no backend implements.
    entry(26, &["fs", "virtiofs"], 2, "hiprio and at least one request queue", Some(40)),
    entry(27, &["pmem"], 1, "a request queue", Some(16)),
    entry(28, &["rpmb"], 1, "a request queue", Some(3)),
    entry(29, &["mac80211-hwsim"], 1, "a queue", None),
    entry(30, &["video-encoder"], 1, "a queue", None),
    entry(31, &["video-decoder"], 1, "a queue", None),
    entry(32, &["scmi"], 1, "cmdq", Some(0)),
    entry(33, &["nitro-secure-module", "nsm"], 1, "a request queue", None),
    entry(34, &["i2c"], 1, "a request queue", Some(0)),
    entry(35, &["watchdog"], 1, "a queue", None),
    // status only.
    entry(36, &["can"], 3, "txq, rxq and controlq", Some(2)),
    entry(38, &["parameter-server"], 1, "a queue", None),
    entry(39, &["audio-policy"], 1, "a queue", None),
    entry(40, &["bluetooth"], 1, "a queue", None),
    // ngpio, padding[2], gpio_names_size.
    entry(41, &["gpio"], 1, "requestq", Some(8)),
    entry(42, &["rdma"], 1, "a queue", None),
    entry(43, &["camera"], 1, "a queue", None),
    entry(44, &["ism"], 1, "a queue", None),
    entry(45, &["spi"], 1, "a request queue", None),
];

impl VirtioDeviceType {
    /// `None` for 0, which the spec reserves.
    pub fn new(id: u32) -> Option<Self> {
        (id != 0).then_some(Self(id))
    }

    /// The device ID, as the transport reports it (virtio-pci device ID
    /// 0x1040 + id).
    pub fn id(&self) -> u32 {
        self.0
    }
}

impl VirtioDeviceType {
    /// The canonical name, if the spec lists this ID.
    pub fn name(&self) -> Option<&'static str> {
        self.entry().and_then(|e| e.names.first().copied())
    }

    /// The fewest queues a driver of this type needs; 1 for types not listed.
    pub fn min_queues(&self) -> usize {
        self.entry().map_or(1, |e| e.min_queues)
    }

    /// The queues behind `min_queues`, e.g. "hiprio and at least one request
    /// queue", for error messages.
    pub fn required_queues(&self) -> &'static str {
        self.entry().map_or("a queue", |e| e.queues)
    }

    /// The length in bytes of the device configuration structure the spec
    /// defines for this type: `Some(0)` if the type has no configuration
    /// space, `None` if this table does not know it. For `None` the user's
    /// `config_size=` decides, and without it the window is 0 bytes.
    pub fn spec_config_size(&self) -> Option<u32> {
        self.entry().and_then(|e| e.config_size)
    }

    fn entry(&self) -> Option<&'static Entry> {
        TABLE.iter().find(|e| e.id == self.0)
    }
}

/// The canonical name of every type the spec lists, by ID.
pub fn names() -> impl Iterator<Item = (u32, &'static str)> {
    TABLE
        .iter()
        .filter_map(|e| e.names.first().map(|name| (e.id, *name)))
}

impl FromStr for VirtioDeviceType {
    type Err = DeviceTypeError;

    /// A decimal ID (1 or more), or a name from the spec's list, in any case,
    /// with `_` for `-` and an optional `virtio-` prefix allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(0) => Err(DeviceTypeError::Reserved),
                Ok(id) => Ok(Self(id)),
                Err(_) => Err(DeviceTypeError::Unknown),
            };
        }
        let name = s.to_ascii_lowercase().replace('_', "-");
        let name = name.strip_prefix("virtio-").unwrap_or(&name);
        TABLE
            .iter()
            .find(|e| e.names.contains(&name))
            .map(|e| Self(e.id))
            .ok_or(DeviceTypeError::Unknown)
    }
}

impl fmt::Display for VirtioDeviceType {
    /// "fs (26)" for a named type, "1234" otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("net", 1)]
    #[case("block", 2)]
    #[case("blk", 2)]
    #[case("console", 3)]
    #[case("rng", 4)]
    #[case("entropy", 4)]
    #[case("balloon", 5)]
    #[case("scsi", 8)]
    #[case("9p", 9)]
    #[case("gpu", 16)]
    #[case("clock", 17)]
    #[case("input", 18)]
    #[case("vsock", 19)]
    #[case("socket", 19)]
    #[case("crypto", 20)]
    #[case("iommu", 23)]
    #[case("mem", 24)]
    #[case("memory", 24)]
    #[case("sound", 25)]
    #[case("snd", 25)]
    #[case("audio", 25)]
    #[case("fs", 26)]
    #[case("FS", 26)]
    #[case("virtio-fs", 26)]
    #[case("virtiofs", 26)]
    #[case("pmem", 27)]
    #[case("rpmb", 28)]
    #[case("video-encoder", 30)]
    #[case("video_decoder", 31)]
    #[case("scmi", 32)]
    #[case("i2c", 34)]
    #[case("watchdog", 35)]
    #[case("can", 36)]
    #[case("parameter-server", 38)]
    #[case("audio-policy", 39)]
    #[case("bluetooth", 40)]
    #[case("gpio", 41)]
    #[case("rdma", 42)]
    #[case("camera", 43)]
    #[case("spi", 45)]
    #[case("26", 26)]
    #[case("1", 1)]
    #[case("4294967295", u32::MAX)]
    #[case("0026", 26)]
    fn parses(#[case] input: &str, #[case] id: u32) {
        assert_eq!(input.parse::<VirtioDeviceType>().map(|t| t.id()), Ok(id));
    }

    #[rstest]
    #[case("0", DeviceTypeError::Reserved)]
    #[case("000", DeviceTypeError::Reserved)]
    #[case("", DeviceTypeError::Unknown)]
    #[case("4294967296", DeviceTypeError::Unknown)]
    #[case("-1", DeviceTypeError::Unknown)]
    #[case("+26", DeviceTypeError::Unknown)]
    #[case(" fs", DeviceTypeError::Unknown)]
    #[case("0x1a", DeviceTypeError::Unknown)]
    #[case("virtio-", DeviceTypeError::Unknown)]
    #[case("floppy", DeviceTypeError::Unknown)]
    fn refuses(#[case] input: &str, #[case] error: DeviceTypeError) {
        assert_eq!(input.parse::<VirtioDeviceType>(), Err(error));
    }

    #[rstest]
    #[case("fs", Some(40), 2)]
    #[case("block", Some(60), 1)]
    #[case("net", Some(24), 2)]
    #[case("console", Some(12), 2)]
    #[case("rng", Some(0), 1)]
    #[case("vsock", Some(8), 3)]
    #[case("sound", Some(12), 4)]
    #[case("gpu", Some(16), 2)]
    #[case("input", Some(136), 2)]
    #[case("scsi", Some(36), 3)]
    #[case("crypto", Some(56), 2)]
    #[case("gpio", Some(8), 1)]
    #[case("i2c", Some(0), 1)]
    #[case("scmi", Some(0), 1)]
    #[case("9p", None, 1)]
    #[case("1000", None, 1)]
    fn spec_facts(#[case] input: &str, #[case] config: Option<u32>, #[case] queues: usize) {
        let t: VirtioDeviceType = input.parse().expect("valid type");
        assert_eq!(t.spec_config_size(), config);
        assert_eq!(t.min_queues(), queues);
    }

    #[test]
    fn names_and_display() {
        assert_eq!(VirtioDeviceType(26).name(), Some("fs"));
        assert_eq!(VirtioDeviceType(2).to_string(), "block (2)");
        assert_eq!(VirtioDeviceType(1000).name(), None);
        assert_eq!(VirtioDeviceType(1000).to_string(), "1000");
        assert_eq!(VirtioDeviceType::new(0), None);
        assert!(VirtioDeviceType(26).required_queues().contains("hiprio"));
    }

    #[test]
    fn table_is_consistent() {
        for (i, e) in TABLE.iter().enumerate() {
            assert!(e.id != 0 && !e.names.is_empty() && e.min_queues >= 1);
            assert!(TABLE[..i].iter().all(|p| p.id < e.id), "sorted, unique");
            for name in e.names {
                assert_eq!(name.to_ascii_lowercase(), *name);
                assert_eq!(name.parse::<VirtioDeviceType>().map(|t| t.id()), Ok(e.id));
            }
        }
        let mut names: Vec<_> = TABLE.iter().flat_map(|e| e.names.iter()).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "names are unique");
    }
}
