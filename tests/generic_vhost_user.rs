//! `--generic-vhost-user` against real virtiofsd: the option's forms, what
//! start-up refuses (before the guest runs), several devices in one VM, and
//! the same `probe: virtio` record as QEMU's vhost-user-fs-pci.

use std::path::Path;

use rstest::rstest;
use test_infra::guest::quote;
use test_infra::host::{kvm, KvmHost};
use test_infra::tempdir;
use test_infra::virtiofsd::Virtiofsd;
use test_infra::vmm::VmmCommand;
use test_infra::{Guest, Hypervisor, Record};

fn vmm_with_device(cmdline: &str, memory: &str, device: &str) -> VmmCommand {
    let mut cmd = VmmCommand::probe(cmdline).expect("artifacts");
    cmd.args(["--memory", memory, "--generic-vhost-user", device]);
    cmd
}

fn virtio_record(report: &test_infra::ProbeReport) -> Record {
    report.first("virtio").expect("virtio record").clone()
}

#[rstest]
#[case::by_number("virtio_id", "26")]
#[case::by_name("virtio_id", "fs")]
#[case::device_type_synonym("device_type", "fs")]
fn virtio_id_by_number_or_name(kvm: Option<KvmHost>, #[case] key: &str, #[case] id: &str) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd");
    std::fs::write(fs.shared_dir().join("f"), b"abc").expect("write");
    let device = format!(
        "socket={},{key}={id},queue_sizes=[512,512]",
        fs.socket().display()
    );
    let run = vmm_with_device(
        "probe.run=pci,virtio,fs probe.fs.read=f",
        "size=512M,shared=on",
        &device,
    )
    .run(dir.path())
    .expect("vmm runs");
    let report = run.assert_passed();
    let virtio = virtio_record(report);
    assert_eq!(virtio.get("id"), Some("26"), "{virtio:?}");
    assert_eq!(virtio.get("queues"), Some("2"), "{virtio:?}");
    assert!(
        virtio
            .get("config")
            .is_some_and(|c| c.starts_with("6d796673")),
        "{virtio:?}"
    );
}

#[rstest]
fn queue_sizes_from_64_to_32768(
    kvm: Option<KvmHost>,
    #[values(64, 256, 1024, 4096, 32768)] size: u32,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd");
    let device = format!(
        "socket={},virtio_id=fs,queue_sizes=[{size},{size}]",
        fs.socket().display()
    );
    let run = vmm_with_device("probe.run=virtio,fs", "size=512M,shared=on", &device)
        .run(dir.path())
        .expect("vmm runs");
    let virtio = virtio_record(run.assert_passed());
    assert_eq!(
        virtio.get("qsize"),
        Some(format!("{size},{size}").as_str()),
        "{virtio:?}"
    );
}

/// Start-up refusals: exit status, and one line naming the problem.
#[rstest]
#[case::one_queue_for_fs(
    "virtio_id=fs,queue_sizes=[512]",
    "shared=on",
    2,
    "at least 2 in queue_sizes"
)]
#[case::not_a_power_of_two("virtio_id=fs,queue_sizes=[500,512]", "shared=on", 2, "power of two")]
#[case::too_large("virtio_id=fs,queue_sizes=[65536,512]", "shared=on", 2, "queue_sizes")]
#[case::memory_not_shared("virtio_id=fs,queue_sizes=[512,512]", "shared=off", 2, "shared=on")]
#[case::more_queues_than_the_backend(
    "virtio_id=fs,queue_sizes=[512,512,512]",
    "shared=on",
    1,
    "GET_QUEUE_NUM"
)]
fn refused_before_the_guest_runs(
    kvm: Option<KvmHost>,
    #[case] device: &str,
    #[case] shared: &str,
    #[case] status: i32,
    #[case] message: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd");
    let device = format!("socket={},{device}", fs.socket().display());
    let run = vmm_with_device("probe.run=boot", &format!("size=512M,{shared}"), &device)
        .run(dir.path())
        .expect("vmm runs");
    assert_eq!(run.output.code(), Some(status), "{}", run.output.describe());
    assert!(
        run.report.records.is_empty(),
        "the guest must not run: {:?}",
        run.report
    );
    assert!(
        run.output.stderr.contains(message),
        "{message:?} not in:\n{}",
        run.output.stderr
    );
}

#[rstest]
fn missing_socket_is_a_clear_error_naming_the_path(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let socket = dir.path().join("nobody-listens.sock");
    let device = format!(
        "socket={},virtio_id=fs,queue_sizes=[512,512]",
        socket.display()
    );
    let run = vmm_with_device("probe.run=boot", "size=512M,shared=on", &device)
        .run(dir.path())
        .expect("vmm runs");
    assert_eq!(run.output.code(), Some(1), "{}", run.output.describe());
    assert!(
        run.output.stderr.contains(&socket.display().to_string()),
        "{}",
        run.output.stderr
    );
    assert!(run.report.records.is_empty());
}

#[rstest]
#[case::spaces("with spaces")]
#[case::commas("with,commas")]
#[case::quotes("with\"quotes\"")]
fn socket_paths_with_awkward_characters(kvm: Option<KvmHost>, #[case] name: &str) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let sub = dir.path().join(name);
    std::fs::create_dir(&sub).expect("mkdir");
    let fs = Virtiofsd::start(&sub, "myfs").expect("virtiofsd");
    let device = format!(
        "socket={},virtio_id=fs,queue_sizes=[512,512]",
        quote(&fs.socket().to_string_lossy())
    );
    let run = vmm_with_device("probe.run=fs", "size=512M,shared=on", &device)
        .run(dir.path())
        .expect("vmm runs");
    run.assert_passed();
}

fn write_tagged(dir: &Path, tag: &str) {
    std::fs::write(dir.join("whoami"), tag).expect("write");
}

fn add_fs_devices(cmd: &mut VmmCommand, devices: &[&Virtiofsd]) {
    cmd.args(["--memory", "size=512M,shared=on"]);
    for fs in devices {
        cmd.arg("--generic-vhost-user").arg(format!(
            "socket={},virtio_id=fs,queue_sizes=[256,256]",
            fs.socket().display()
        ));
    }
}

#[rstest]
fn two_virtio_fs_devices_in_one_vm(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let a = Virtiofsd::start(dir.path(), "alpha").expect("virtiofsd alpha");
    let b = Virtiofsd::start(dir.path(), "beta").expect("virtiofsd beta");
    write_tagged(a.shared_dir(), "alpha");
    write_tagged(b.shared_dir(), "beta");
    // Two fs passes, one per tag, each reading its share and writing to it.
    let mut cmd = VmmCommand::probe(
        "probe.run=fs probe.fs.tag=alpha probe.fs.read=whoami probe.fs.write=from-guest:12345",
    )
    .expect("artifacts");
    add_fs_devices(&mut cmd, &[&a, &b]);
    let report = cmd
        .run(dir.path())
        .expect("vmm runs")
        .assert_passed()
        .clone();
    let sessions: Vec<&Record> = report
        .all("fs")
        .filter(|r| r.get("tag").is_some())
        .collect();
    assert_eq!(
        sessions.len(),
        1,
        "probe.fs.tag=alpha selects one device: {report:?}"
    );
    assert_eq!(sessions[0].get("tag"), Some("alpha"));
    assert!(a.shared_dir().join("from-guest").exists());
    assert!(!b.shared_dir().join("from-guest").exists());

    // The same VM shape again, now using beta: both devices work.
    let dir2 = tempdir();
    let a = Virtiofsd::start(dir2.path(), "alpha").expect("virtiofsd alpha");
    let b = Virtiofsd::start(dir2.path(), "beta").expect("virtiofsd beta");
    write_tagged(b.shared_dir(), "beta");
    let mut cmd = VmmCommand::probe("probe.run=virtio,fs probe.fs.tag=beta probe.fs.read=whoami")
        .expect("artifacts");
    add_fs_devices(&mut cmd, &[&a, &b]);
    let report = cmd
        .run(dir2.path())
        .expect("vmm runs")
        .assert_passed()
        .clone();
    assert_eq!(report.all("virtio").count(), 2, "{report:?}");
    let read = report.first_at("fs", "read").expect("read record");
    assert_eq!(
        read.get("size"),
        Some("4"),
        "beta's whoami is 4 bytes: {read:?}"
    );
}

#[rstest]
fn same_virtio_record_as_qemu(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let mut records = Vec::new();
    for hv in [Hypervisor::Vmm, Hypervisor::Qemu] {
        let dir = tempdir();
        let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd");
        let run = Guest::probe(hv, "probe.run=pci,virtio")
            .virtiofs(&fs)
            .run(dir.path())
            .expect("guest runs");
        records.push(virtio_record(run.assert_passed()));
    }
    let (ours, qemu) = (&records[0], &records[1]);
    for key in ["id", "queues", "features", "status", "pci_cfg", "reinit"] {
        assert_eq!(
            ours.get(key),
            qemu.get(key),
            "{key}: vmm {ours:?}\nqemu {qemu:?}"
        );
    }
    // virtiofsd's config is 40 bytes (tag[36], num_request_queues); QEMU's
    // window is a page that reads as ones past it. Ours is VIRTIO 1.3's
    // layout for the features virtiofsd offers: without
    // VIRTIO_FS_F_NOTIFICATION, no notify_buf_size (40 bytes, not 44).
    let config = |r: &Record| r.get("config").map(|c| c[..80].to_string());
    assert_eq!(config(ours), config(qemu));
    assert_eq!(ours.get("config_len"), Some("40"));
    // VIRTIO 1.3, 4.1.4.9: every device has the PCI_CFG window, and what
    // it reads matches the BAR (the probe fails otherwise).
    assert_eq!(ours.get("pci_cfg"), Some("yes"), "{ours:?}");
}
