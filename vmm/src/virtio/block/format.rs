//! What an image file holds when the user did not say (`image_type=`):
//! `vmm` serves raw images, and serving a qcow2 or VHD file as raw lets
//! the guest's first write destroy its header. Cloud Hypervisor detects the
//! format when `image_type` is absent and QEMU probes; so do we, by the
//! magic each format starts (or, for a fixed VHD, ends) with.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How much of the head and the tail the magics need.
const PROBE_LEN: usize = 512;

/// A format `vmm` does not serve, and where its magic was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Foreign {
    pub format: &'static str,
    pub evidence: &'static str,
}

/// `(format, offset, magic)` at the image's start.
const HEAD_MAGICS: &[(&str, usize, &[u8], &str)] = &[
    ("qcow2", 0, b"QFI\xfb", "magic QFI\\xfb at offset 0"),
    ("qed", 0, b"QED\0", "magic QED at offset 0"),
    ("vhdx", 0, b"vhdxfile", "signature vhdxfile at offset 0"),
    ("vhd", 0, b"conectix", "footer copy conectix at offset 0"),
    ("vmdk", 0, b"KDMV", "magic KDMV at offset 0"),
    (
        "vmdk",
        0,
        b"# Disk DescriptorFile",
        "descriptor at offset 0",
    ),
    (
        "vdi",
        0x40,
        b"\x7f\x10\xda\xbe",
        "signature 0xbeda107f at offset 0x40",
    ),
    (
        "parallels",
        0,
        b"WithoutFreeSpace",
        "magic WithoutFreeSpace at offset 0",
    ),
    (
        "parallels",
        0,
        b"WithouFreSpacExt",
        "magic WithouFreSpacExt at offset 0",
    ),
];

/// The foreign format `head` (the first bytes) and `tail` (the last
/// 512, for a fixed VHD's footer) show, if any. Raw data that merely
/// starts like nothing known is raw; an ISO or a LUKS volume is raw media.
pub fn detect(head: &[u8], tail: &[u8]) -> Option<Foreign> {
    let found = HEAD_MAGICS
        .iter()
        .find(|(_, at, magic, _)| head.get(*at..at + magic.len()) == Some(magic));
    if let Some((format, _, _, evidence)) = found {
        return Some(Foreign { format, evidence });
    }
    (tail.len() == PROBE_LEN && tail.starts_with(b"conectix")).then_some(Foreign {
        format: "vhd",
        evidence: "footer conectix in the last 512 bytes",
    })
}

/// Reads `path`'s head and tail and detects its format (a block device
/// or a file alike).
pub fn probe(path: &Path) -> io::Result<Option<Foreign>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let size = if size == 0 {
        // A block device: its size is where its end is.
        use std::io::{Seek, SeekFrom};
        (&file).seek(SeekFrom::End(0))?
    } else {
        size
    };
    let mut head = vec![0u8; PROBE_LEN.min(usize::try_from(size).unwrap_or(PROBE_LEN))];
    file.read_exact_at(&mut head, 0)?;
    let mut tail = Vec::new();
    if size >= 2 * PROBE_LEN as u64 {
        tail = vec![0u8; PROBE_LEN];
        file.read_exact_at(&mut tail, size - PROBE_LEN as u64)?;
    }
    Ok(detect(&head, &tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(at: usize, magic: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; PROBE_LEN];
        bytes[at..at + magic.len()].copy_from_slice(magic);
        bytes
    }

    #[test]
    fn every_known_magic_is_named() {
        for (format, at, magic, _) in HEAD_MAGICS {
            let found = detect(&head(*at, magic), &[]).expect(format);
            assert_eq!(found.format, *format);
        }
        let footer = head(0, b"conectix");
        assert_eq!(detect(&[0; PROBE_LEN], &footer).unwrap().format, "vhd");
    }

    #[test]
    fn raw_media_is_raw() {
        assert_eq!(detect(&[0; PROBE_LEN], &[0; PROBE_LEN]), None);
        // A LUKS volume and an MBR are a guest's business.
        assert_eq!(detect(&head(0, b"LUKS\xba\xbe"), &[]), None);
        let mut mbr = vec![0u8; PROBE_LEN];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(detect(&mbr, &[]), None);
        // Short images and a magic cut short.
        assert_eq!(detect(b"QF", &[]), None);
        assert_eq!(detect(&[], &[]), None);
        assert_eq!(
            detect(&head(0, b"conectix")[..8], b"conectix"),
            Some(Foreign {
                format: "vhd",
                evidence: "footer copy conectix at offset 0",
            })
        );
    }

    #[test]
    fn a_file_is_probed_at_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let qcow = dir.path().join("a.qcow2");
        let mut bytes = b"QFI\xfb\0\0\0\x03".to_vec();
        bytes.resize(196_608, 0);
        std::fs::write(&qcow, &bytes).unwrap();
        assert_eq!(probe(&qcow).unwrap().unwrap().format, "qcow2");

        let fixed = dir.path().join("fixed.vhd");
        let mut bytes = vec![0u8; 1 << 20];
        let at = bytes.len() - PROBE_LEN;
        bytes[at..at + 8].copy_from_slice(b"conectix");
        std::fs::write(&fixed, &bytes).unwrap();
        assert_eq!(probe(&fixed).unwrap().unwrap().format, "vhd");

        let tiny = dir.path().join("tiny.raw");
        std::fs::write(&tiny, b"abc").unwrap();
        assert_eq!(probe(&tiny).unwrap(), None);
        let empty = dir.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(probe(&empty).unwrap(), None);
    }
}
