//! The nested runner: an L1 Linux under QEMU's emulator (TCG, `-cpu max`)
//! whose emulated AMD SVM with nested paging gives it a real `/dev/kvm`, so
//! that `vmm` can boot real Linux guests on hosts without hardware
//! virtualization (PVM, or no `/dev/kvm` at all).
//!
//! L1 is the Debian kernel with an initramfs assembled here from what the
//! host has: busybox, the modules for KVM and for a virtio-fs share, `vmm`,
//! the backends with their shared libraries, and the guest kernels. The
//! image is cached by content under `target/nested/`. A host directory is
//! shared into L1 through virtiofsd as `/host`: the scenario's inputs come
//! in through it and its logs go out through it as they are written, so
//! they survive an L1 that hangs. L1's console carries `nested: ` records.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::linux::{self, Cpio};
use crate::paths;
use crate::process::{Child, Output};
use crate::virtiofsd::Virtiofsd;

/// The prefix of L1's own records on its console.
pub const L1_PREFIX: &str = "nested: ";

/// L1's modules: KVM on emulated SVM, and virtio-fs for the host share.
const L1_MODULES: &[&str] = &["kvm_amd", "virtio_pci", "virtiofs"];

/// Where each program lands in L1, and the environment variable that names
/// it for scenarios (the same variables name host paths in direct mode).
pub struct Payload {
    pub var: &'static str,
    pub l1_path: &'static str,
    pub host_path: PathBuf,
    /// Copy its shared libraries too (`ldd`).
    pub dynamic: bool,
}

/// Everything a Linux-tier scenario may use, found on the host.
pub fn payloads() -> Result<Vec<Payload>, String> {
    let program = |var, l1_path, host_path| Payload {
        var,
        l1_path,
        host_path,
        dynamic: true,
    };
    let data = |var, l1_path, host_path| Payload {
        var,
        l1_path,
        host_path,
        dynamic: false,
    };
    Ok(vec![
        program("VMM", "/bin/vmm", paths::vmm_binary()?),
        program(
            "VIRTIOFSD",
            "/bin/virtiofsd",
            crate::virtiofsd::virtiofsd_binary()?,
        ),
        program("MOCK", "/bin/vhost-user-mock", crate::mock::mock_binary()?),
        data("PROBE", "/boot/probe-guest.elf", paths::probe_guest()?),
        data("BZIMAGE", "/boot/bzImage", linux::debian_kernel()?),
        data("VMLINUX", "/boot/vmlinux", linux::debian_vmlinux()?),
    ])
}

/// L1's `/init`: modules, the share, the scenario, power-off. Every step
/// that can fail says so on the console, where the host reads it.
fn l1_init(modules: &[String], payloads: &[Payload]) -> String {
    let exports: Vec<String> = payloads
        .iter()
        .map(|p| format!("{}={}", p.var, p.l1_path))
        .collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
say() {{ echo "{L1_PREFIX}$*"; }}
for m in {modules}; do
  insmod /lib/modules/$m.ko || say error what="insmod $m failed"
done
if [ ! -c /dev/kvm ]; then
  say error what="no /dev/kvm in L1"; poweroff -f
fi
mkdir -p /host /work
if ! mount -t virtiofs host /host; then
  say error what="cannot mount the host share"; poweroff -f
fi
HOSTROOT=
mkdir -p /hostroot
if mount -t virtiofs hostroot /hostroot 2>/dev/null; then HOSTROOT=/hostroot; fi
say l1-ready uptime=$(cut -d' ' -f1 /proc/uptime) kvm=$(grep -c -w svm /proc/cpuinfo)
export {exports} IN=/host/in OUT=/host/out WORK=/work HOSTROOT
cd /work
sh /host/in/scenario.sh
say scenario-exit=$?
sync
poweroff -f
"#,
        modules = modules.join(" "),
        exports = exports.join(" "),
    )
}

/// The shared libraries `ldd` lists for `binary`, by absolute path.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("running ldd {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` give their paths; the vDSO has
/// none.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The L1 initramfs for these payloads, built once per content and kept
/// under `target/nested/`.
pub fn l1_image(payloads: &[Payload]) -> Result<PathBuf, String> {
    let modules = linux::module_closure(L1_MODULES)?;
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let init = l1_init(&names, payloads);

    // Every file of the image with its place in it; the key hashes them all.
    let busybox = linux::read(&linux::busybox()?)?;
    let mut files: Vec<(String, PathBuf, u32)> = Vec::new();
    for (name, path) in &modules {
        files.push((format!("lib/modules/{name}.ko"), path.clone(), 0o644));
    }
    for p in payloads {
        let inside = p.l1_path.trim_start_matches('/').to_string();
        files.push((inside, p.host_path.clone(), 0o755));
        if p.dynamic {
            for lib in shared_libraries(&p.host_path)? {
                let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
                if !files.iter().any(|(f, _, _)| *f == inside) {
                    files.push((inside, lib, 0o755));
                }
            }
        }
    }
    let mut contents = Vec::with_capacity(files.len());
    let mut key = std::hash::DefaultHasher::new();
    key.write(init.as_bytes());
    key.write(&busybox);
    for (inside, path, _) in &files {
        let body = linux::read(path)?;
        key.write(inside.as_bytes());
        key.write(&body);
        contents.push(body);
    }
    let dir = paths::workspace_root().join("target/nested");
    let image = dir.join(format!("l1-{:016x}.cpio", key.finish()));
    if image.is_file() {
        return Ok(image);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut cpio = Cpio::new();
    cpio.busybox_root(&busybox, &init);
    for ((inside, _, mode), body) in files.iter().zip(&contents) {
        cpio.parents(inside).file(inside, *mode, body);
    }
    // Written aside and renamed: tests that start together may build the
    // same image at once, and none may boot half of one.
    let partial = dir.join(format!(".l1-{}.partial", std::process::id()));
    std::fs::write(&partial, cpio.finish())
        .and_then(|()| std::fs::rename(&partial, &image))
        .map_err(|e| format!("{}: {e}", image.display()))?;
    // Older images are of binaries that no longer exist.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for old in entries.filter_map(Result::ok).map(|e| e.path()) {
            let name = old.file_name().map(|n| n.to_string_lossy().into_owned());
            if old != image && name.is_some_and(|n| n.starts_with("l1-")) {
                let _ = std::fs::remove_file(&old);
            }
        }
    }
    Ok(image)
}

/// How L1 is sized.
#[derive(Debug, Clone, Copy)]
pub struct L1Shape {
    pub memory_mib: u64,
    pub cpus: u8,
    /// Share the host's `/` as `$HOSTROOT`.
    pub host_root: bool,
}

/// Boots L1 with `share` (holding `in/scenario.sh`) mounted at `/host`,
/// and returns its console once it powers off or `timeout` passes.
pub fn boot_l1(
    dir: &Path,
    share: &Path,
    shape: L1Shape,
    timeout: Duration,
) -> Result<(Output, String), String> {
    let payloads = payloads()?;
    let image = l1_image(&payloads)?;
    let kernel = linux::debian_kernel()?;
    let fs = Virtiofsd::start_sharing(dir, "host", share)?;
    // The host's whole file system, for programs of the host run in L1
    // (`start_host_program` chroots into it): only when asked.
    let root = if shape.host_root {
        Some(Virtiofsd::start_sharing(dir, "hostroot", Path::new("/"))?)
    } else {
        None
    };
    let mut qemu = crate::qemu::QemuCommand::linux(&kernel, &image, "console=ttyS0 quiet panic=-1");
    qemu.tcg()
        .memory_mib(shape.memory_mib)
        .cpus(shape.cpus)
        .shared_memory()
        .arg("-chardev")
        .arg(format!("socket,id=host,path={}", fs.socket().display()))
        .arg("-device")
        .arg("vhost-user-fs-pci,chardev=host,tag=host");
    if let Some(root) = &root {
        qemu.arg("-chardev")
            .arg(format!(
                "socket,id=hostroot,path={}",
                root.socket().display()
            ))
            .arg("-device")
            .arg("vhost-user-fs-pci,chardev=hostroot,tag=hostroot");
    }
    let command = qemu.command()?;
    let output = Child::spawn("l1", command, dir)
        .map_err(|e| e.to_string())?
        .wait(timeout)
        .map_err(|e| e.to_string())?;
    let share_log = fs.log();
    Ok((output, share_log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_without_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn l1_init_exports_every_payload_and_loads_modules_in_order() {
        let payloads = [Payload {
            var: "VMM",
            l1_path: "/bin/vmm",
            host_path: PathBuf::from("/x/vmm"),
            dynamic: true,
        }];
        let init = l1_init(
            &["irqbypass".into(), "kvm".into(), "kvm_amd".into()],
            &payloads,
        );
        assert!(
            init.contains("for m in irqbypass kvm kvm_amd; do"),
            "{init}"
        );
        assert!(init.contains("export VMM=/bin/vmm IN=/host/in"), "{init}");
        assert!(init.contains("sh /host/in/scenario.sh"), "{init}");
    }
}
