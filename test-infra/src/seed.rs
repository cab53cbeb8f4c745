//! The seed's command line, exactly as Cloud Hypervisor's generic
//! vhost-user documentation gives it, with a real root disk:
//!
//! ```text
//! vmm --cpus boot=1 --memory size=1G,shared=on --disk path=ROOT.img \
//!     --kernel vmlinux --cmdline "console=hvc0 root=/dev/vda1 rw" \
//!     --generic-vhost-user "socket=SOCK,virtio_id=26,queue_sizes=[512,512]" \
//!     --initramfs INITRD
//! ```
//!
//! Debian's kernel has virtio_blk, virtio_console and virtiofs as modules,
//! so the initramfs loads them, reopens /dev/console (hvc0 exists only
//! from then on), mounts `root=` and switches to it. The root is an ext4
//! partition of a raw image whose `/sbin/init` is the test's script.

use std::path::{Path, PathBuf};

use crate::disk_image;
use crate::linux::{self, GuestInit, GUEST_PREFIX};

/// Modules the initramfs loads (their dependencies come along).
pub const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_console", "virtiofs"];

/// The initramfs: load the modules, take hvc0 as the console, mount the
/// `root=` the command line names (read-write with `rw`) and switch to it.
pub fn initramfs() -> GuestInit {
    GuestInit::new(
        r#"exec 0</dev/console 1>/dev/console 2>&1
report initramfs console=$(cat /sys/class/tty/console/active)
root= mode=ro
for w in $(cat /proc/cmdline); do
  case $w in root=*) root=${w#root=} ;; rw) mode=rw ;; esac
done
n=0
while [ ! -b "$root" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o $mode "$root" /newroot; then
  report error what=\"cannot mount root=$root\"
  poweroff -f
fi
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init"#,
    )
    .modules(MODULES)
}

/// A root tree at `dir`: static busybox, the usual mount points and
/// `/sbin/init` running `script` with `report` defined, then powering off.
pub fn root_tree(dir: &Path, script: &str) -> Result<PathBuf, String> {
    let create = |p: &Path| std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()));
    for sub in ["bin", "sbin", "dev", "proc", "sys", "tmp", "mount_dir"] {
        create(&dir.join(sub))?;
    }
    let busybox = linux::read(&linux::busybox()?)?;
    write(&dir.join("bin/busybox"), &busybox, 0o755)?;
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         report() {{ echo \"{GUEST_PREFIX}$*\"; }}\n\
         {script}\n\
         poweroff -f\n"
    );
    write(&dir.join("sbin/init"), init.as_bytes(), 0o755)?;
    Ok(dir.to_path_buf())
}

/// A raw image of `size` bytes with the root tree at `tree` on partition 1.
pub fn root_disk(path: &Path, size: u64, tree: &Path) -> Result<PathBuf, String> {
    disk_image::ext4_disk(path, size, tree)?;
    Ok(path.to_path_buf())
}

/// The seed's `vmm` arguments, paths filled in, as a shell word list.
pub fn command_line(kernel: &str, disk: &str, socket: &str, initramfs: &str) -> String {
    format!(
        "--cpus boot=1 --memory size=1G,shared=on --disk path={disk} \
         --kernel {kernel} --cmdline \"console=hvc0 root=/dev/vda1 rw\" \
         --generic-vhost-user \"socket=\\\"{socket}\\\",virtio_id=26,queue_sizes=[512,512]\" \
         --initramfs {initramfs}"
    )
}

fn write(path: &Path, body: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| format!("{}: {e}", path.display()))
}
