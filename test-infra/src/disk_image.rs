//! Disk images for guests, built without root: a raw image with an MBR
//! partition table and an ext4 partition populated from a directory
//! (`mkfs.ext4 -d` at an offset), ISO 9660 images (xorriso), and the
//! checks the tests make on an image after the guest is done with it
//! (`e2fsck -n`, files read back with `debugfs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The first partition starts at 1 MiB, as partitioning tools put it.
pub const PARTITION_START: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// A raw image of `size` bytes at `path`: an MBR with one Linux partition
/// from 1 MiB to the end, holding an ext4 file system with `root`'s tree.
pub fn ext4_disk(path: &Path, size: u64, root: &Path) -> Result<(), String> {
    if size <= PARTITION_START + (8 << 20) || !size.is_multiple_of(SECTOR) {
        return Err(format!("{size} bytes is too small or not whole sectors"));
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(size)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(file);
    let fs_bytes = size - PARTITION_START;
    run(Command::new(program("mkfs.ext4")?)
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(root)
        .arg("-E")
        .arg(format!("offset={PARTITION_START}"))
        .arg(path)
        .arg(format!("{}k", fs_bytes / 1024)))?;
    // After mkfs, which would not mind a table but writes only its own area.
    let mbr = mbr(PARTITION_START / SECTOR, fs_bytes / SECTOR, 0x83)?;
    write_at(path, 0, &mbr)
}

/// A classic MBR: one primary partition, the rest empty.
fn mbr(first_lba: u64, sectors: u64, kind: u8) -> Result<[u8; 512], String> {
    let (Ok(first), Ok(count)) = (u32::try_from(first_lba), u32::try_from(sectors)) else {
        return Err("the partition does not fit an MBR".into());
    };
    let mut mbr = [0u8; 512];
    // Disk signature, so Linux names the partition PARTUUID=deadbeef-01.
    mbr[440..444].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    let entry = &mut mbr[446..462];
    // CHS fields are ignored by Linux with LBA; 0xfe/0xff/0xff is "use LBA".
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = kind;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&first.to_le_bytes());
    entry[12..16].copy_from_slice(&count.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    Ok(mbr)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(bytes, offset))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The first partition of `disk` copied out to `out`, for the tools that
/// want a file system at offset 0.
pub fn first_partition(disk: &Path, out: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    let start = PARTITION_START as usize;
    let part = bytes
        .get(start..)
        .ok_or_else(|| format!("{} is smaller than 1 MiB", disk.display()))?;
    std::fs::write(out, part).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out.to_path_buf())
}

/// `e2fsck -fn`: Ok with its report when the file system is clean.
pub fn e2fsck_clean(fs: &Path) -> Result<String, String> {
    let output = Command::new(program("e2fsck")?)
        .arg("-fn")
        .arg(fs)
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "e2fsck -fn {} ({}):\n{text}",
            fs.display(),
            output.status
        ))
    }
}

/// A file's bytes out of an ext4 image, by `debugfs -R "dump ..."`.
pub fn ext4_read(fs: &Path, path: &str, scratch: &Path) -> Result<Vec<u8>, String> {
    let out = scratch.join("debugfs.out");
    let _ = std::fs::remove_file(&out);
    run(Command::new(program("debugfs")?)
        .arg("-R")
        .arg(format!("dump {path} {}", out.display()))
        .arg(fs))?;
    std::fs::read(&out).map_err(|e| format!("debugfs found no {path}: {e}"))
}

/// An ISO 9660 image (with Rock Ridge names) of `dir`.
pub fn iso_image(path: &Path, dir: &Path, volume: &str) -> Result<(), String> {
    run(Command::new(program("xorriso")?)
        .args(["-as", "mkisofs", "-quiet", "-R", "-V", volume, "-o"])
        .arg(path)
        .arg(dir))
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("{:?}: {e}", command.get_program()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{:?} failed ({}): {}{}",
        command,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// Debian keeps these in /sbin, outside a normal user's PATH.
fn program(name: &str) -> Result<PathBuf, String> {
    crate::paths::find_program(name)
        .or_else(|| {
            ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| format!("{name} not found (ci/setup installs it)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ext4_disk_holds_its_tree_behind_a_partition_table() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hello"), b"hello\n").unwrap();
        let disk = dir.path().join("disk.img");
        ext4_disk(&disk, 32 << 20, &root).unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(bytes.len(), 32 << 20);
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(bytes[446 + 4], 0x83);
        assert_eq!(
            u32::from_le_bytes(bytes[454..458].try_into().unwrap()),
            2048
        );
        let part = first_partition(&disk, &dir.path().join("part")).unwrap();
        e2fsck_clean(&part).unwrap();
        assert_eq!(
            ext4_read(&part, "/etc/hello", dir.path()).unwrap(),
            b"hello\n"
        );
        assert!(ext4_read(&part, "/etc/missing", dir.path()).is_err());
    }

    #[test]
    fn an_iso_holds_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("readme.txt"), b"iso\n").unwrap();
        let iso = dir.path().join("x.iso");
        iso_image(&iso, &src, "TESTISO").unwrap();
        let bytes = std::fs::read(&iso).unwrap();
        // The primary volume descriptor at sector 16.
        assert_eq!(&bytes[0x8001..0x8006], b"CD001");
        assert!(bytes.windows(4).any(|w| w == b"iso\n"));
    }
}
