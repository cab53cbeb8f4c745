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
    dirs: Vec<String>,
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
            dirs: Vec::new(),
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
        if !self.dirs.iter().any(|d| d == name) {
            self.dirs.push(name.to_string());
            self.entry(name, 0o040755, &[]);
        }
        self
    }

    /// What every `/init` here needs: the mount points and module
    /// directory, static `busybox` as `/bin/busybox` and `/bin/sh`, and
    /// `init` as `/init`.
    pub fn busybox_root(&mut self, busybox: &[u8], init: &str) -> &mut Self {
        for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
            self.dir(d);
        }
        self.file("bin/busybox", 0o755, busybox)
            .symlink("bin/sh", "busybox")
            .file("init", 0o755, init.as_bytes())
    }

    /// Every directory above `path`: the kernel's unpacker creates none.
    pub fn parents(&mut self, path: &str) -> &mut Self {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for end in 1..parts.len() {
            self.dir(&parts[..end].join("/"));
        }
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
    GuestInit::new(script).write(&dir.join("initramfs.cpio"))
}

/// An initramfs that loads virtio-pci and virtio-fs (with what they need)
/// from the Debian kernel's modules, mounts the virtio-fs device `tag` on
/// `/mnt`, prints `vmm-virtiofs-mounted`, runs `script` and powers off.
pub fn virtiofs_initramfs(dir: &Path, tag: &str, script: &str) -> Result<PathBuf, String> {
    GuestInit::new(&format!(
        "mount -t virtiofs {tag} /mnt && echo vmm-virtiofs-mounted\n{script}"
    ))
    .modules(&["virtio_pci", "virtiofs"])
    .write(&dir.join("initramfs.cpio"))
}

/// The prefix of the records a Linux guest's `/init` prints with `report`.
pub const GUEST_PREFIX: &str = "linux: ";

/// A Linux guest's initramfs: static busybox, modules of the Debian kernel
/// loaded dependencies first, and an `/init` that runs a shell script and
/// powers off. The script reports facts with `report KIND key=value ...`,
/// which prints a `linux: ` record on the console. A value with spaces
/// must reach the console in double quotes, so the shell needs them
/// escaped: `report mount line=\"$(grep myfs /proc/mounts)\"`.
#[derive(Debug, Clone)]
pub struct GuestInit {
    script: String,
    modules: Vec<String>,
    /// Loaded when the script calls `load_late`.
    late_modules: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl GuestInit {
    pub fn new(script: &str) -> GuestInit {
        GuestInit {
            script: script.to_string(),
            modules: Vec::new(),
            late_modules: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Modules to load before the script, by name; their dependencies come
    /// along and load first.
    pub fn modules(mut self, names: &[&str]) -> Self {
        self.modules.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// Modules the script loads itself, when it calls `load_late` (after
    /// it has noted the kernel log, say); dependencies the early modules
    /// brought are not loaded twice.
    pub fn late_modules(mut self, names: &[&str]) -> Self {
        self.late_modules
            .extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// A file at `path` (relative, e.g. `bin/tool`), mode 0755.
    pub fn file(mut self, path: &str, body: Vec<u8>) -> Self {
        self.files.push((path.to_string(), body));
        self
    }

    /// The archive's bytes.
    pub fn build(&self) -> Result<Vec<u8>, String> {
        let closure = |names: &[String]| -> Result<Vec<(String, PathBuf)>, String> {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            if names.is_empty() {
                Ok(Vec::new())
            } else {
                module_closure(&names)
            }
        };
        let modules = closure(&self.modules)?;
        let late: Vec<(String, PathBuf)> = closure(&self.late_modules)?
            .into_iter()
            .filter(|(name, _)| !modules.iter().any(|(early, _)| early == name))
            .collect();
        let insmod = |list: &[(String, PathBuf)]| {
            list.iter()
                .map(|(name, _)| {
                    format!(
                        "insmod /lib/modules/{name}.ko || report error what=\"insmod {name} failed\"\n"
                    )
                })
                .collect::<String>()
        };
        let load = insmod(&modules);
        let load_late = format!("load_late() {{\n{}:\n}}\n", insmod(&late));
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev\n\
             report() {{ echo \"{GUEST_PREFIX}$*\"; }}\n\
             {load_late}{load}{script}\n\
             poweroff -f\n",
            script = self.script
        );
        let mut cpio = Cpio::new();
        cpio.busybox_root(&read(&busybox()?)?, &init).dir("mnt");
        for (name, path) in modules.iter().chain(&late) {
            cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &read(path)?);
        }
        for (path, body) in &self.files {
            cpio.parents(path).file(path, 0o755, body);
        }
        Ok(cpio.finish())
    }

    /// Writes the archive to `path` and returns it.
    pub fn write(&self, path: &Path) -> Result<PathBuf, String> {
        let bytes = self.build()?;
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path.to_path_buf())
    }
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The static busybox that `ci/setup` installs.
pub(crate) fn busybox() -> Result<PathBuf, String> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| "busybox not found (ci/setup installs busybox-static)".to_string())
}

/// The Debian kernel's `vmlinux`: the ELF inside the bzImage, with the PVH
/// entry note, as Cloud Hypervisor's users pass it to `--kernel`. Unpacked
/// once (`lz4`, which ci/setup installs) into `target/linux/vmlinux`.
pub fn debian_vmlinux() -> Result<PathBuf, String> {
    let bzimage = debian_kernel()?;
    let out = paths::workspace_root().join("target/linux/vmlinux");
    let fresh = |p: &Path| {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        modified(p).is_some_and(|m| Some(m) >= modified(&bzimage))
    };
    if fresh(&out) {
        return Ok(out);
    }
    let image = read(&bzimage)?;
    let elf = extract_vmlinux(&image)
        .map_err(|e| format!("unpacking vmlinux from {}: {e}", bzimage.display()))?;
    // Another test may be unpacking it at the same time: write aside, then
    // rename, so nobody reads half a file.
    let partial = out.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, &elf)
        .and_then(|()| std::fs::rename(&partial, &out))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// The ELF in an LZ4-compressed bzImage (Debian's): the payload starts at
/// the LZ4 legacy frame magic; `lz4` reads past its end with a complaint
/// about the trailing bytes, which is why only the output is checked.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    use std::process::{Command, Stdio};
    const LZ4_LEGACY: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
    let at = bzimage
        .windows(4)
        .position(|w| w == LZ4_LEGACY)
        .ok_or("no LZ4 payload in the bzImage")?;
    let mut child = Command::new("lz4")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running lz4 (ci/setup installs it): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("lz4 has no stdin")?;
    let payload = bzimage[at..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for lz4: {e}"))?;
    // lz4 may stop reading before the trailing bytes: a broken pipe then
    // is expected.
    let _ = writer.join();
    if output.stdout.starts_with(b"\x7fELF") {
        Ok(output.stdout)
    } else {
        Err(format!(
            "lz4 gave {} bytes that are not an ELF",
            output.stdout.len()
        ))
    }
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
