//! Disks for the probe's `blk` test: one virtio-blk device as `vmm --disk`
//! and as QEMU's `-drive` plus `virtio-blk-pci` spell it, deterministic
//! images, and what `probe.blk.write` leaves on them.

use std::path::{Path, PathBuf};

use crate::guest::quote;

pub const SECTOR: u64 = 512;

#[derive(Debug, Clone)]
pub struct Disk {
    path: PathBuf,
    readonly: bool,
    direct: bool,
    num_queues: u16,
    queue_size: u16,
    serial: Option<String>,
}

impl Disk {
    /// A writable raw image with one queue of 128 entries (`vmm`'s
    /// defaults, given to both VMMs so that they describe the same device).
    pub fn new(path: impl Into<PathBuf>) -> Disk {
        Disk {
            path: path.into(),
            readonly: false,
            direct: false,
            num_queues: 1,
            queue_size: 128,
            serial: None,
        }
    }

    pub fn readonly(mut self) -> Self {
        self.readonly = true;
        self
    }

    /// The image opened with O_DIRECT, bypassing the host page cache:
    /// `direct=on` for `vmm`, `cache=none` for QEMU. Without it both use
    /// the page cache (`cache=writeback`), and a FLUSH is an fdatasync
    /// either way.
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }

    pub fn num_queues(mut self, n: u16) -> Self {
        self.num_queues = n;
        self
    }

    pub fn queue_size(mut self, n: u16) -> Self {
        self.queue_size = n;
        self
    }

    /// What GET_ID answers (20 bytes at most).
    pub fn serial(mut self, serial: &str) -> Self {
        self.serial = Some(serial.to_string());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of one `--disk` option, for `vmm` and Cloud Hypervisor
    /// alike (which writes sector 0 of a raw image only when told raw).
    pub fn vmm_arg(&self) -> String {
        let mut arg = format!(
            "path={},readonly={},direct={},num_queues={},queue_size={},image_type=raw",
            quote(&self.path.to_string_lossy()),
            on_off(self.readonly),
            on_off(self.direct),
            self.num_queues,
            self.queue_size
        );
        if let Some(serial) = &self.serial {
            arg.push_str(&format!(",serial={}", quote(serial)));
        }
        arg
    }

    /// `-drive` and `-device` for QEMU; `index` names the drive. Modern
    /// only (`disable-legacy=on`): on microvm's PCIe root bus QEMU would
    /// otherwise make a transitional device (PCI id 0x1001, not 0x1042).
    /// `discard=unmap`: QEMU's default (`ignore`) completes every DISCARD
    /// with OK without looking at it, even on a read-only drive. The cache
    /// mode is spelled out: `writeback` (QEMU's default) is `vmm`'s
    /// `direct=off`, `none` its `direct=on`.
    pub fn qemu_args(&self, index: usize) -> Vec<String> {
        let id = format!("disk{index}");
        let mut drive = format!(
            "if=none,id={id},format=raw,discard=unmap,cache={},file={}",
            if self.direct { "none" } else { "writeback" },
            qemu_escape(&self.path.to_string_lossy())
        );
        if self.readonly {
            drive.push_str(",readonly=on");
        }
        let mut device = format!(
            "virtio-blk-pci,drive={id},num-queues={},queue-size={},disable-legacy=on",
            self.num_queues, self.queue_size
        );
        if let Some(serial) = &self.serial {
            device.push_str(&format!(",serial={}", qemu_escape(serial)));
        }
        vec!["-drive".into(), drive, "-device".into(), device]
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// QEMU's option syntax: a comma inside a value is written twice.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// `bytes` of xorshift output from `seed`: every sector differs, so a
/// misplaced one changes a hash.
pub fn image_bytes(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Byte `offset` of a disk after `probe.blk.write` covered it.
pub fn write_pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// What `probe.blk.write=START:COUNT` writes.
pub fn write_pattern(start: u64, count: u64) -> Vec<u8> {
    (start * SECTOR..(start + count) * SECTOR)
        .map(write_pattern_byte)
        .collect()
}

/// Sectors `start..start+count` of `image`.
pub fn sectors(image: &[u8], start: u64, count: u64) -> &[u8] {
    let from = (start * SECTOR) as usize;
    let to = ((start + count) * SECTOR) as usize;
    &image[from.min(image.len())..to.min(image.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_arg_names_every_key_and_quotes_paths() {
        let disk = Disk::new("/tmp/a,b.img")
            .readonly()
            .num_queues(4)
            .serial("disk0");
        assert_eq!(
            disk.vmm_arg(),
            "path=\"/tmp/a,b.img\",readonly=on,direct=off,num_queues=4,queue_size=128,image_type=raw,serial=disk0"
        );
        assert!(Disk::new("d.img")
            .direct()
            .vmm_arg()
            .contains(",direct=on,"));
    }

    #[test]
    fn qemu_args_escape_commas() {
        let args = Disk::new("/tmp/a,b.img").serial("s").qemu_args(1);
        assert_eq!(
            args,
            [
                "-drive",
                "if=none,id=disk1,format=raw,discard=unmap,cache=writeback,file=/tmp/a,,b.img",
                "-device",
                "virtio-blk-pci,drive=disk1,num-queues=1,queue-size=128,disable-legacy=on,serial=s"
            ]
        );
        let direct = Disk::new("d.img").direct().qemu_args(0);
        assert!(direct[1].contains(",cache=none,"), "{direct:?}");
    }

    #[test]
    fn write_pattern_depends_on_the_disk_offset() {
        let p = write_pattern(1, 1);
        assert_eq!(p.len(), 512);
        assert_eq!(p[0], (512 % 251) as u8);
        assert_eq!(sectors(&write_pattern(0, 2), 1, 1), &p[..]);
    }
}
