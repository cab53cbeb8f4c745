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
        console_tcp_port: None,
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

/// Third-party backends from crates.io, installed once into target/tools.
fn tool(program: &str) -> String {
    let var = program.to_uppercase().replace('-', "_");
    paths::find_or_install(&var, program, program)
        .unwrap_or_else(|e| panic!("{program}: {e}"))
        .display()
        .to_string()
}

#[test]
fn vhost_device_vsock_carries_a_guest_connection_to_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec(
        19,
        &[256, 256, 256],
        &[
            &tool("vhost-device-vsock"),
            "--guest-cid=3",
            "--socket={socket}",
            "--uds-path={dir}/vm.vsock",
        ],
    );
    s.vsock_host_socket = Some("{dir}/vm.vsock".into());
    assert_all_pass(&linux_tier(&s, dir.path()));
}

#[test]
fn vhost_device_sound_gives_linux_a_card() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = spec(
        25,
        &[64, 64, 64, 64],
        &[
            &tool("vhost-device-sound"),
            "--socket={socket}",
            "--backend=null",
        ],
    );
    assert_all_pass(&linux_tier(&s, dir.path()));
}

#[test]
fn vhost_device_console_carries_hvc0_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec(
        3,
        &[128, 128, 128, 128],
        &[
            &tool("vhost-device-console"),
            "--socket-path={socket}",
            "--backend=network",
            "--tcp-port=12345",
        ],
    );
    s.socket_suffix = "0".into();
    s.console_tcp_port = Some(12345);
    assert_all_pass(&linux_tier(&s, dir.path()));
}

#[test]
fn vhost_device_scsi_gives_linux_a_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("scsi.img");
    std::fs::write(&image, vec![0x33; 8 << 20]).expect("image");
    let s = spec(
        8,
        &[128, 128, 128],
        &[
            &tool("vhost-device-scsi"),
            "--socket-path={socket}",
            &image.display().to_string(),
        ],
    );
    let checks = linux_tier(&s, dir.path());
    eprintln!("{}", test_infra::conformance::table(&checks));
}
