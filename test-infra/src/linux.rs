//! Real Linux guests: Debian's cloud kernel (unpacked by `ci/setup` under
//! `target/linux/`) and a busybox initramfs written here as a newc cpio.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::paths;

/// The Debian cloud kernel's bzImage, or why there is none.
pub fn debian_kernel() -> Result<PathBuf, String> {
    let boot = paths::workspace_root().join("target/linux/root/boot");
    let entries = std::fs::read_dir(&boot).map_err(|e| {
        format!(
            "{}: {e} (run ci/setup to unpack linux-image-cloud-amd64)",
            boot.display()
        )
    })?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("no vmlinuz-* in {} (run ci/setup)", boot.display()))
}

/// A newc cpio archive under construction.
pub struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Default for Cpio {
    fn default() -> Self {
        Cpio::new()
    }
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio {
            data: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        let name_len = name.len() + 1;
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, body.len(), 0, 0, 0, 0, name_len, 0
        );
        self.ino += 1;
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, 0o040755, &[]);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, body: &[u8]) -> &mut Self {
        self.entry(name, 0o100000 | mode, body);
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, 0o120777, target.as_bytes());
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

/// An initramfs with static busybox whose `/init` runs `script` (sh) and
/// powers off.
pub fn busybox_initramfs(dir: &Path, script: &str) -> Result<PathBuf, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox not found (ci/setup installs busybox-static)")?;
    let binary = std::fs::read(&busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n{script}\npoweroff -f\n"
    );
    let mut cpio = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "mnt", "tmp"] {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", 0o755, &binary)
        .symlink("bin/sh", "busybox")
        .file("init", 0o755, init.as_bytes());
    let path = dir.join("initramfs.cpio");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&cpio.finish()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
