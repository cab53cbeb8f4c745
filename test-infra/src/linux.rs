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
    initramfs(dir, &[], script)
}

/// An initramfs that loads virtio-pci and virtio-fs (with what they need)
/// from the Debian kernel's modules, mounts the virtio-fs device `tag` on
/// `/mnt`, prints `vmm-virtiofs-mounted`, runs `script` and powers off.
pub fn virtiofs_initramfs(dir: &Path, tag: &str, script: &str) -> Result<PathBuf, String> {
    let modules = module_closure(&["virtio_pci", "virtiofs"])?;
    let mut prelude = String::new();
    for (name, _) in &modules {
        prelude.push_str(&format!("insmod /lib/modules/{name}.ko\n"));
    }
    prelude.push_str(&format!(
        "mount -t virtiofs {tag} /mnt && echo vmm-virtiofs-mounted\n{script}"
    ));
    let files: Vec<(String, Vec<u8>)> = modules
        .into_iter()
        .map(|(name, path)| {
            std::fs::read(&path)
                .map(|bytes| (format!("lib/modules/{name}.ko"), bytes))
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect::<Result<_, _>>()?;
    initramfs(dir, &files, &prelude)
}

/// The kernel modules directory of the unpacked Debian kernel.
fn modules_dir() -> Result<PathBuf, String> {
    let base = paths::workspace_root().join("target/linux/root/lib/modules");
    std::fs::read_dir(&base)
        .map_err(|e| format!("{}: {e} (run ci/setup)", base.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path().join("kernel"))
        .find(|p| p.is_dir())
        .ok_or_else(|| format!("no kernel modules under {}", base.display()))
}

fn module_files(dir: &Path, found: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.is_dir() {
            module_files(&path, found);
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            found.push((stem.replace('-', "_"), path.clone()));
        }
    }
}

/// The `depends=` field of a module's .modinfo section.
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// `names` and everything they depend on, dependencies first. Built-in
/// modules have no file and need no loading.
pub fn module_closure(names: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut all = Vec::new();
    module_files(&modules_dir()?, &mut all);
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        all: &[(String, PathBuf)],
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<(), String> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(format!("module dependencies too deep at {name}"));
        }
        let Some((_, path)) = all.iter().find(|(n, _)| n == name) else {
            return Ok(()); // built in
        };
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for dep in module_depends(&bytes) {
            visit(&dep, all, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for name in names {
        if !all.iter().any(|(n, _)| n == name) {
            return Err(format!("module {name} not found in the Debian kernel"));
        }
        visit(name, &all, &mut order, 0)?;
    }
    Ok(order)
}

fn initramfs(dir: &Path, files: &[(String, Vec<u8>)], script: &str) -> Result<PathBuf, String> {
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
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "mnt",
        "tmp",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", 0o755, &binary)
        .symlink("bin/sh", "busybox")
        .file("init", 0o755, init.as_bytes());
    for (name, body) in files {
        cpio.file(name, 0o644, body);
    }
    let path = dir.join("initramfs.cpio");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&cpio.finish()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
