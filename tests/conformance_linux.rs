//! The conformance runner's Linux tier on real backends: Debian's own
//! driver for the type binds to the backend through `vmm` and works, and
//! its kernel log stays clean. Nested where this host has no hardware
//! virtualization.

use std::time::Duration;

use test_infra::conformance::Status;
use test_infra::conformance_linux::{linux_tier, LinuxTierSpec};
use test_infra::paths;

fn spec(virtio_id: u32, queues: &[u32], backend: &[&str]) -> LinuxTierSpec {
    LinuxTierSpec {
        virtio_id,
        queue_sizes: queues.to_vec(),
        config_size: None,
        backend: backend.iter().map(|s| s.to_string()).collect(),
        socket_suffix: String::new(),
        fs_tag: None,
        vsock_host_socket: None,
        config: None,
        timeout: Duration::from_secs(400),
    }
}

fn assert_all_pass(checks: &[test_infra::conformance::Check]) {
    let table = test_infra::conformance::table(checks);
    eprintln!("{table}");
    assert!(checks.len() >= 3, "{table}");
    assert!(checks.iter().all(|c| c.status == Status::Pass), "{table}");
}

#[test]
fn virtiofsd_mounts_and_works_under_linux() {
    let dir = tempfile::tempdir().expect("tempdir");
    let virtiofsd = test_infra::virtiofsd::virtiofsd_binary().expect("virtiofsd");
    let mut s = spec(
        26,
        &[512, 512],
        &[
            &virtiofsd.display().to_string(),
            "--socket-path={socket}",
            "--shared-dir={dir}",
            "--tag=myfs",
            "--sandbox=none",
        ],
    );
    s.fs_tag = Some("myfs".into());
    assert_all_pass(&linux_tier(&s, dir.path()));
}

#[test]
fn vhost_device_rng_feeds_dev_hwrng() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rng = paths::find_or_install("VHOST_DEVICE_RNG", "vhost-device-rng", "vhost-device-rng")
        .expect("vhost-device-rng");
    let mut s = spec(
        4,
        &[64],
        &[&rng.display().to_string(), "--socket-path={socket}"],
    );
    s.socket_suffix = "0".into();
    assert_all_pass(&linux_tier(&s, dir.path()));
}

#[test]
fn qemu_storage_daemon_serves_linux_a_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x5a; 8 << 20]).expect("image");
    let qsd = paths::find_program("qemu-storage-daemon").expect("qemu-storage-daemon");
    let s = spec(
        2,
        &[128],
        &[
            &qsd.display().to_string(),
            "--blockdev",
            &format!("driver=file,node-name=disk,filename={}", image.display()),
            "--export",
            "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={socket},writable=on",
        ],
    );
    assert_all_pass(&linux_tier(&s, dir.path()));
    // The check restored what it overwrote.
    assert!(std::fs::read(&image)
        .expect("image")
        .iter()
        .all(|&b| b == 0x5a));
}
