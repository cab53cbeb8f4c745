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
    /// The queues a driver usually sets up without optional features or
    /// extra request queues, e.g. 2 for virtio-fs (hiprio and one request
    /// queue), 2 for a console without MULTIPORT.
    usual_queues: usize,
    /// The queues a driver needs, for error messages.
    queues: &'static str,
    config: Option<Layout>,
}

/// A device configuration layout: the bytes every device has, and fields
/// at its end that exist only with a feature bit.
#[derive(Debug, Clone, Copy)]
struct Layout {
    base: u32,
    /// (feature bit, end of the layout when the device offers it).
    tails: &'static [(u32, u32)],
}

const fn entry(
    id: u32,
    names: &'static [&'static str],
    min_queues: usize,
    usual_queues: usize,
    queues: &'static str,
    config: Option<Layout>,
) -> Entry {
    Entry {
        id,
        names,
        min_queues,
        usual_queues,
        queues,
        config,
    }
}

/// A layout without feature-dependent fields at its end.
const fn fixed(size: u32) -> Option<Layout> {
    Some(Layout {
        base: size,
        tails: &[],
    })
}

/// A layout of `base` bytes and fields after them that exist only with a
/// feature: `tails` gives, per feature bit, where the layout then ends.
const fn tiered(base: u32, tails: &'static [(u32, u32)]) -> Option<Layout> {
    Some(Layout { base, tails })
}

/// The VIRTIO 1.3 device ID list (section 5), with the size of each
/// device configuration layout, section 5.N.4 ("Device configuration
/// layout") unless said otherwise. `fixed(0)` for types whose section
/// defines no configuration; `None` where the spec has no layout (no
/// device section, or a variable length).
#[rustfmt::skip]
const TABLE: &[Entry] = &[
    // 5.1.4: mac[6]; status (STATUS, 16); max_virtqueue_pairs (MQ, 22);
    // mtu (MTU, 3); speed, duplex (SPEED_DUPLEX, 63); rss_max_key_size,
    // rss_max_indirection_table_length, supported_hash_types (RSS, 60, or
    // HASH_REPORT, 57); supported_tunnel_types (HASH_TUNNEL, 51).
    entry(1, &["net"], 2, 2, "receiveq and transmitq",
        tiered(6, &[(16, 8), (22, 10), (3, 12), (63, 17), (60, 24), (57, 24), (51, 28)])),
    // 5.2.4: up to num_queues, 36 bytes; the discard fields (DISCARD, 13);
    // the write-zeroes fields and unused1[3] (WRITE_ZEROES, 14); the
    // secure-erase fields (SECURE_ERASE, 16); zoned (ZONED, 17).
    entry(2, &["block", "blk"], 1, 1, "a request queue",
        tiered(36, &[(13, 48), (14, 60), (16, 72), (17, 96)])),
    // 5.3.4: cols, rows, max_nr_ports, emerg_wr.
    entry(3, &["console"], 2, 2, "receiveq and transmitq", fixed(12)),
    // 5.4.4: none.
    entry(4, &["rng", "entropy"], 1, 1, "a request queue", fixed(0)),
    // 5.5.4: num_pages, actual; free_page_hint_cmd_id (FREE_PAGE_HINT, 3);
    // poison_val (PAGE_POISON, 4).
    entry(5, &["balloon"], 2, 2, "inflateq and deflateq", tiered(8, &[(3, 12), (4, 16)])),
    entry(6, &["iomem"], 1, 1, "a queue", None),
    entry(7, &["rpmsg"], 1, 1, "a queue", None),
    // 5.6.4: num_queues .. cdb_size (7 x le32), max_channel, max_target,
    // max_lun.
    entry(8, &["scsi"], 3, 3, "controlq, eventq and a request queue", fixed(36)),
    // A variable-length tag; no section in 1.3.
    entry(9, &["9p"], 1, 1, "a request queue", None),
    entry(10, &["mac80211-wlan"], 1, 1, "a queue", None),
    entry(11, &["rproc-serial"], 1, 1, "a queue", None),
    entry(12, &["caif"], 1, 1, "a queue", None),
    entry(13, &["memory-balloon"], 1, 1, "a queue", None),
    // 5.7.4: events_read, events_clear, num_scanouts, num_capsets.
    entry(16, &["gpu"], 2, 2, "controlq and cursorq", fixed(16)),
    entry(17, &["clock", "timer"], 1, 1, "a queue", None),
    // 5.8.4: select, subsel, size, reserved[5], the 128-byte union.
    entry(18, &["input"], 2, 2, "eventq and statusq", fixed(136)),
    // 5.10.4: guest_cid.
    entry(19, &["vsock", "socket"], 3, 3, "rx, tx and event queues", fixed(8)),
    // 5.9.5 (5.9.4 is the services): 12 x le32 and max_size (le64).
    entry(20, &["crypto"], 2, 2, "a data queue and controlq", fixed(56)),
    entry(21, &["signal-distribution"], 1, 1, "a queue", None),
    entry(22, &["pstore"], 1, 1, "a queue", None),
    // 5.13.4: page_size_mask, input_range, domain_range, probe_size,
    // bypass, reserved[3].
    entry(23, &["iommu"], 2, 2, "requestq and eventq", fixed(40)),
    // 5.15.4: block_size, node_id, padding[6], addr, region_size,
    // usable_region_size, plugged_size, requested_size.
    entry(24, &["mem", "memory"], 1, 1, "a request queue", fixed(56)),
    // 5.14.4: jacks, streams, chmaps; controls (CTLS, 0).
    entry(25, &["sound", "snd", "audio"], 4, 4, "controlq, eventq, txq and rxq", tiered(12, &[(0, 16)])),
    // 5.11.4: tag[36], num_request_queues; notify_buf_size
    // (NOTIFICATION, 0).
    entry(26, &["fs", "virtiofs"], 2, 2, "hiprio and at least one request queue", tiered(40, &[(0, 44)])),
    // 5.19.4: start, size.
    entry(27, &["pmem"], 1, 1, "a request queue", fixed(16)),
    // 5.12.4: capacity, max_wr_cnt, max_rd_cnt.
    entry(28, &["rpmb"], 1, 1, "a request queue", fixed(3)),
    entry(29, &["mac80211-hwsim"], 1, 1, "a queue", None),
    entry(30, &["video-encoder"], 1, 1, "a queue", None),
    entry(31, &["video-decoder"], 1, 1, "a queue", None),
    // 5.17.4: none. eventq only with P2A_CHANNELS, which backends offer.
    entry(32, &["scmi"], 1, 2, "cmdq", fixed(0)),
    entry(33, &["nitro-secure-module", "nsm"], 1, 1, "a request queue", None),
    // 5.16.4: none.
    entry(34, &["i2c"], 1, 1, "a request queue", fixed(0)),
    entry(35, &["watchdog"], 1, 1, "a queue", None),
    // No section in 1.3; VIRTIO 1.4, 5.20.4: status.
    entry(36, &["can"], 3, 3, "txq, rxq and controlq", fixed(2)),
    entry(38, &["parameter-server"], 1, 1, "a queue", None),
    entry(39, &["audio-policy"], 1, 1, "a queue", None),
    entry(40, &["bluetooth"], 1, 1, "a queue", None),
    // 5.18.4: ngpio, padding[2], gpio_names_size. eventq only with IRQ,
    // which backends offer.
    entry(41, &["gpio"], 1, 2, "requestq", fixed(8)),
    entry(42, &["rdma"], 1, 1, "a queue", None),
    entry(43, &["camera"], 1, 1, "a queue", None),
    entry(44, &["ism"], 1, 1, "a queue", None),
    // No section in 1.3; VIRTIO 1.4, 5.21.4: four u8 fields, seven le32.
    entry(45, &["spi"], 1, 1, "a request queue", fixed(32)),
];

impl Layout {
    /// The whole layout: every field, whatever the features.
    fn full(&self) -> u32 {
        self.tails
            .iter()
            .map(|&(_, end)| end)
            .fold(self.base, u32::max)
    }

    /// The layout a device offering `features` has, as QEMU sizes it
    /// (`virtio_get_config_size`): the base and every field whose feature
    /// is offered.
    fn for_features(&self, features: u64) -> u32 {
        self.tails
            .iter()
            .filter(|&&(bit, _)| bit < 64 && features & (1 << bit) != 0)
            .map(|&(_, end)| end)
            .fold(self.base, u32::max)
    }
}

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
    ///
    /// This is the whole VIRTIO 1.3 layout, fields that exist only with a
    /// feature bit included (see `config_size_for`).
    pub fn spec_config_size(&self) -> Option<u32> {
        self.entry().and_then(|e| e.config).map(|l| l.full())
    }

    /// The length of the configuration layout of a device offering
    /// `features`: the fields every device has and those whose feature is
    /// offered, as QEMU sizes a device's window. A backend whose
    /// structure ends before the whole layout (qemu-storage-daemon's
    /// virtio-blk ends after the write-zeroes fields) serves this much.
    pub fn config_size_for(&self, features: u64) -> Option<u32> {
        self.entry()
            .and_then(|e| e.config)
            .map(|l| l.for_features(features))
    }

    /// The queues a driver usually sets up (without optional features
    /// or extra request queues), if the spec lists this ID.
    pub fn usual_queues(&self) -> Option<usize> {
        self.entry().map(|e| e.usual_queues)
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

    /// The whole VIRTIO 1.3 layout, feature-dependent fields included.
    #[rstest]
    #[case("fs", Some(44), 2)]
    #[case("block", Some(96), 1)]
    #[case("net", Some(28), 2)]
    #[case("console", Some(12), 2)]
    #[case("rng", Some(0), 1)]
    #[case("balloon", Some(16), 2)]
    #[case("vsock", Some(8), 3)]
    #[case("sound", Some(16), 4)]
    #[case("gpu", Some(16), 2)]
    #[case("input", Some(136), 2)]
    #[case("scsi", Some(36), 3)]
    #[case("crypto", Some(56), 2)]
    #[case("iommu", Some(40), 2)]
    #[case("mem", Some(56), 1)]
    #[case("pmem", Some(16), 1)]
    #[case("rpmb", Some(3), 1)]
    #[case("gpio", Some(8), 1)]
    #[case("i2c", Some(0), 1)]
    #[case("scmi", Some(0), 1)]
    #[case("can", Some(2), 3)]
    #[case("spi", Some(32), 1)]
    #[case("9p", None, 1)]
    #[case("1000", None, 1)]
    fn spec_facts(#[case] input: &str, #[case] config: Option<u32>, #[case] queues: usize) {
        let t: VirtioDeviceType = input.parse().expect("valid type");
        assert_eq!(t.spec_config_size(), config);
        assert_eq!(t.min_queues(), queues);
    }

    /// What a device offering these features has, as QEMU sizes it.
    #[rstest]
    #[case("block", 0, 36)]
    #[case("block", 1 << 12, 36)]
    // qemu-storage-daemon 7.2: DISCARD and WRITE_ZEROES, no SECURE_ERASE.
    #[case("block", 0x1_7500_7e46, 60)]
    #[case("block", 1 << 17, 96)]
    #[case("fs", 0, 40)]
    #[case("fs", 1, 44)]
    #[case("sound", 0, 12)]
    #[case("sound", 1, 16)]
    #[case("net", 1 << 5, 6)]
    #[case("net", (1 << 5) | (1 << 16), 8)]
    #[case("net", 1 << 63, 17)]
    #[case("net", (1 << 51) | (1 << 60), 28)]
    #[case("balloon", 1 << 4, 16)]
    #[case("console", 0, 12)]
    #[case("rng", u64::MAX, 0)]
    fn config_size_for_features(#[case] input: &str, #[case] features: u64, #[case] size: u32) {
        let t: VirtioDeviceType = input.parse().expect("valid type");
        assert_eq!(t.config_size_for(features), Some(size));
        assert_eq!(t.config_size_for(u64::MAX), t.spec_config_size());
    }

    #[rstest]
    #[case("fs", Some(2))]
    #[case("block", Some(1))]
    #[case("net", Some(2))]
    #[case("console", Some(2))]
    #[case("rng", Some(1))]
    #[case("vsock", Some(3))]
    #[case("sound", Some(4))]
    #[case("scsi", Some(3))]
    #[case("gpio", Some(2))]
    #[case("i2c", Some(1))]
    #[case("scmi", Some(2))]
    #[case("input", Some(2))]
    #[case("1000", None)]
    fn usual_queues(#[case] input: &str, #[case] queues: Option<usize>) {
        let t: VirtioDeviceType = input.parse().expect("valid type");
        assert_eq!(t.usual_queues(), queues);
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
            assert!(e.usual_queues >= e.min_queues, "{}", e.id);
            if let Some(layout) = e.config {
                for &(bit, end) in layout.tails {
                    assert!(bit < 64 && end > layout.base, "{}: {bit}", e.id);
                }
            }
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
