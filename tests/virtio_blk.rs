//! virtio-blk as the probe guest drives it, under `vmm --disk` and under
//! QEMU's virtio-blk-pci: what it reads matches the image, what it writes
//! is in the image file afterwards, the requests that must fail fail with
//! the status QEMU gives, and both VMMs report the same facts.

use std::collections::BTreeMap;
use std::path::Path;

use rstest::rstest;
use test_infra::digest::sha256_hex;
use test_infra::disk::{image_bytes, sectors, write_pattern};
use test_infra::host::{kvm, KvmHost};
use test_infra::tempdir;
use test_infra::{Disk, Guest, Hypervisor, ProbeReport, Record};

const MIB: usize = 1 << 20;
/// VIRTIO_BLK_S_IOERR and VIRTIO_BLK_S_UNSUPP.
const IOERR: &str = "1";
const UNSUPP: &str = "2";

fn sha(bytes: &[u8]) -> String {
    sha256_hex(bytes).expect("sha256sum")
}

/// Writes a deterministic image of `mib` MiB and returns its bytes.
fn make_image(path: &Path, mib: usize, seed: u64) -> Vec<u8> {
    let bytes = image_bytes(mib * MIB, seed);
    std::fs::write(path, &bytes).expect("write the image");
    bytes
}

/// The probe's command line that reads (sha256) and writes the sector
/// ranges `(start, count)` given.
fn blk_cmdline(reads: &[(u64, u64)], writes: &[(u64, u64)]) -> String {
    let list = |ranges: &[(u64, u64)]| {
        ranges
            .iter()
            .map(|(s, c)| format!("{s}:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "probe.run=blk probe.blk.sha={} probe.blk.write={}",
        list(reads),
        list(writes)
    )
}

fn run_blk(guest: Guest, dir: &Path) -> ProbeReport {
    guest.run(dir).expect("guest runs").assert_passed().clone()
}

/// The PCI address of the disk whose GET_ID answered `serial`.
fn bdf_of(report: &ProbeReport, serial: &str) -> String {
    report
        .all("blk")
        .find(|r| {
            r.positional.first().map(String::as_str) == Some("id")
                && r.get("serial") == Some(serial)
        })
        .and_then(|r| r.positional.get(1).cloned())
        .unwrap_or_else(|| panic!("no `blk id` record with serial {serial}: {report:?}"))
}

/// The `blk SUB BDF ...` records of the disk `serial`.
fn blk_records<'a>(report: &'a ProbeReport, sub: &str, serial: &str) -> Vec<&'a Record> {
    let bdf = bdf_of(report, serial);
    report
        .all("blk")
        .filter(|r| r.positional.first().map(String::as_str) == Some(sub))
        .filter(|r| r.positional.get(1) == Some(&bdf))
        .collect()
}

fn blk_record<'a>(report: &'a ProbeReport, sub: &str, serial: &str) -> &'a Record {
    blk_records(report, sub, serial)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `blk {sub}` record for {serial}: {report:?}"))
}

/// The record of `sub` for `serial` whose `start` is `start`.
fn blk_at<'a>(report: &'a ProbeReport, sub: &str, serial: &str, start: u64) -> &'a Record {
    blk_records(report, sub, serial)
        .into_iter()
        .find(|r| r.number("start") == Some(start))
        .unwrap_or_else(|| panic!("no `blk {sub}` record at {start} for {serial}: {report:?}"))
}

/// What every disk must answer whatever it holds.
fn assert_errors_and_id(report: &ProbeReport, serial: &str, capacity: u64) {
    let id = blk_record(report, "id", serial);
    assert_eq!(id.get("status"), Some("0"), "{id:?}");
    let errors = blk_record(report, "errors", serial);
    assert_eq!(errors.number("capacity"), Some(capacity), "{errors:?}");
    assert_eq!(errors.get("read_at_end"), Some(IOERR), "{errors:?}");
    assert_eq!(errors.get("read_across_end"), Some(IOERR), "{errors:?}");
    assert_eq!(errors.get("undefined_type"), Some(UNSUPP), "{errors:?}");
}

#[rstest]
fn reads_writes_and_flushes_a_disk(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("disk.img");
    let original = make_image(&path, 4, 17);
    let capacity = (4 * MIB / 512) as u64;
    let reads = [(0, capacity), (100, 3), (capacity - 1, 1)];
    let writes = [(2048, 1000), (5000, 1), (capacity - 8, 8)];
    let cmdline = blk_cmdline(&reads, &writes);
    let report = run_blk(
        Guest::probe(hv, &cmdline).disk(Disk::new(&path).serial("disk0")),
        dir.path(),
    );

    let config = blk_record(&report, "config", "disk0");
    assert_eq!(config.number("capacity"), Some(capacity), "{config:?}");
    assert_eq!(config.get("ro"), Some("0"), "{config:?}");
    assert_eq!(config.get("flush"), Some("1"), "{config:?}");
    assert_eq!(config.get("blk_size"), Some("512"), "{config:?}");
    assert_eq!(config.get("queues"), None, "one queue, no MQ: {config:?}");
    assert_eq!(config.get("vqs"), Some("1"), "{config:?}");
    assert_errors_and_id(&report, "disk0", capacity);

    let image = std::fs::read(&path).expect("read the image back");
    assert_data(
        &report,
        &hv.to_string(),
        "disk0",
        &original,
        &image,
        &reads,
        &writes,
    );

    let flush = blk_record(&report, "flush", "disk0");
    assert_eq!(flush.get("status"), Some("0"), "{flush:?}");
    let queue = blk_record(&report, "queue", "disk0");
    assert_eq!(queue.get("status"), Some("0"), "{queue:?}");
}

/// Each read's sha256 is `original`'s, each write's is what the guest
/// wrote and what `image` (the file as the host reads it afterwards) holds,
/// and nothing else of `image` changed.
fn assert_data(
    report: &ProbeReport,
    label: &str,
    serial: &str,
    original: &[u8],
    image: &[u8],
    reads: &[(u64, u64)],
    writes: &[(u64, u64)],
) {
    for &(start, count) in reads {
        let read = blk_at(report, "read", serial, start);
        assert_eq!(read.get("status"), Some("0"), "{read:?}");
        assert_eq!(
            read.get("sha256"),
            Some(sha(sectors(original, start, count)).as_str()),
            "{label}: sectors {start}:{count}: {read:?}"
        );
    }
    let mut expected = original.to_vec();
    for &(start, count) in writes {
        let write = blk_at(report, "write", serial, start);
        assert_eq!(write.get("status"), Some("0"), "{write:?}");
        assert_eq!(write.get("readback"), Some("ok"), "{write:?}");
        let pattern = write_pattern(start, count);
        assert_eq!(
            write.get("sha256"),
            Some(sha(&pattern).as_str()),
            "{write:?}"
        );
        assert_eq!(
            write.get("sha256"),
            Some(sha(sectors(image, start, count)).as_str()),
            "{label}: the image file holds what the guest wrote at {start}:{count}"
        );
        let from = (start * 512) as usize;
        expected[from..from + pattern.len()].copy_from_slice(&pattern);
    }
    assert!(
        image == expected,
        "{label}: the image changed outside the written ranges"
    );
}

/// A loop device with `block`-byte logical blocks over a file (a 4Kn disk
/// for the test), detached when dropped.
struct LoopDevice(std::path::PathBuf);

impl LoopDevice {
    fn attach(file: &Path, block: u32) -> LoopDevice {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--sector-size", &block.to_string()])
            .arg(file)
            .output()
            .expect("losetup runs (util-linux)");
        assert!(
            out.status.success(),
            "losetup (needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(String::from_utf8_lossy(&out.stdout).trim().into())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// Issue 21, finding 3: `direct=on` on a disk with 4 KiB logical blocks
/// told the guest of 512-byte blocks and failed every smaller request with
/// IOERR. Now the guest is told the disk's block size, and the probe's
/// single-sector and unaligned requests (smaller than Linux would send)
/// still land, through the whole blocks around them.
#[rstest]
fn direct_io_on_a_disk_with_4k_logical_blocks(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let backing = dir.path().join("4kn.img");
    let original = make_image(&backing, 4, 29);
    let capacity = (4 * MIB / 512) as u64;
    let reads = [(0, capacity), (1, 1), (capacity - 1, 1)];
    let writes = [(3, 1), (7, 2), (2048, 8), (capacity - 9, 9)];
    let cmdline = blk_cmdline(&reads, &writes);
    let device = LoopDevice::attach(&backing, 4096);
    let report = run_blk(
        Guest::probe(Hypervisor::Vmm, &cmdline).disk(Disk::new(&device.0).direct().serial("4kn")),
        dir.path(),
    );
    drop(device);
    let config = blk_record(&report, "config", "4kn");
    assert_eq!(config.get("blk_size"), Some("4096"), "{config:?}");
    let image = std::fs::read(&backing).expect("read the image back");
    assert_data(&report, "4Kn", "4kn", &original, &image, &reads, &writes);
}

#[rstest]
fn a_read_only_disk_refuses_writes(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("ro.img");
    let original = make_image(&path, 1, 5);
    let capacity = (MIB / 512) as u64;
    let report = run_blk(
        Guest::probe(
            hv,
            &format!("probe.run=blk probe.blk.sha=0:{capacity} probe.blk.write=16:8,{capacity}:1"),
        )
        .disk(Disk::new(&path).readonly().serial("ro-disk")),
        dir.path(),
    );
    let config = blk_record(&report, "config", "ro-disk");
    assert_eq!(config.get("ro"), Some("1"), "{config:?}");
    assert_errors_and_id(&report, "ro-disk", capacity);
    let read = blk_at(&report, "read", "ro-disk", 0);
    assert_eq!(
        read.get("sha256"),
        Some(sha(&original).as_str()),
        "{read:?}"
    );

    let write = blk_at(&report, "write", "ro-disk", 16);
    assert_eq!(write.get("status"), Some(IOERR), "{hv}: {write:?}");
    assert_eq!(write.get("unchanged"), Some("yes"), "{write:?}");
    // Past the end of a read-only disk: refused either way.
    let beyond = blk_at(&report, "write", "ro-disk", capacity);
    assert_eq!(beyond.get("status"), Some(IOERR), "{hv}: {beyond:?}");
    assert!(
        std::fs::read(&path).expect("read the image") == original,
        "{hv}: the read-only image changed"
    );
}

#[rstest]
fn write_zeroes_and_discard(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    let rw_original = make_image(&rw, 2, 11);
    let ro_original = make_image(&ro, 2, 12);
    let report = run_blk(
        Guest::probe(
            hv,
            "probe.run=blk probe.blk.zero=64:16 probe.blk.discard=1024:64",
        )
        .disk(Disk::new(&rw).serial("rw"))
        .disk(Disk::new(&ro).readonly().serial("ro")),
        dir.path(),
    );

    let zero = blk_record(&report, "zero", "rw");
    assert_eq!(zero.get("status"), Some("0"), "{zero:?}");
    assert_eq!(zero.get("readback"), Some("zero"), "{zero:?}");
    let discard = blk_record(&report, "discard", "rw");
    assert_eq!(discard.get("status"), Some("0"), "{discard:?}");
    let image = std::fs::read(&rw).expect("read the image");
    assert!(
        sectors(&image, 64, 16).iter().all(|&b| b == 0),
        "{hv}: WRITE_ZEROES left data in the file"
    );
    assert!(
        sectors(&image, 0, 64) == sectors(&rw_original, 0, 64)
            && sectors(&image, 80, 944) == sectors(&rw_original, 80, 944),
        "{hv}: WRITE_ZEROES touched sectors outside its range"
    );

    let zero = blk_record(&report, "zero", "ro");
    assert_eq!(zero.get("status"), Some(IOERR), "{hv}: {zero:?}");
    let discard = blk_record(&report, "discard", "ro");
    assert_eq!(discard.get("status"), Some(IOERR), "{hv}: {discard:?}");
    assert!(
        std::fs::read(&ro).expect("read the image") == ro_original,
        "{hv}: the read-only image changed"
    );
}

#[rstest]
fn every_queue_serves_requests(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
    #[values(2, 4)] queues: u16,
    #[values("irq", "poll")] mode: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("mq.img");
    let original = make_image(&path, 1, u64::from(queues));
    let report = run_blk(
        Guest::probe(hv, &format!("probe.run=blk probe.virtio.mode={mode}"))
            .disk(Disk::new(&path).num_queues(queues).serial("mq")),
        dir.path(),
    );
    let config = blk_record(&report, "config", "mq");
    assert_eq!(
        config.number("queues"),
        Some(u64::from(queues)),
        "{config:?}"
    );
    assert_eq!(config.number("vqs"), Some(u64::from(queues)), "{config:?}");
    let records = blk_records(&report, "queue", "mq");
    assert_eq!(records.len(), usize::from(queues), "{report:?}");
    for (q, record) in records.iter().enumerate() {
        assert_eq!(record.number("q"), Some(q as u64), "{record:?}");
        assert_eq!(
            record.get("status"),
            Some("0"),
            "{hv} queue {q}: {record:?}"
        );
        let start = record.number("start").expect("start");
        assert_eq!(
            record.get("sha256"),
            Some(sha(sectors(&original, start, 8)).as_str()),
            "{hv} queue {q}: {record:?}"
        );
    }
}

/// `probe.blk.bench` as `ci/bench` runs it (EVENT_IDX, several requests
/// in flight), but short: every measurement reports a figure, and what
/// the writes wrote is in the image.
#[rstest]
fn the_bench_reports_every_measurement(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
    #[values("irq", "poll")] mode: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("bench.img");
    let original = make_image(&path, 4, 31);
    let report = run_blk(
        Guest::probe(
            hv,
            &format!(
                "probe.run=blk probe.virtio.mode={mode} probe.virtio.features=20000000 \
                 probe.blk.bench=randread,randwrite,seqread,seqwrite,flush \
                 probe.blk.bench_ms=50 probe.blk.bench_depth=8 probe.blk.bench_flushes=10"
            ),
        )
        .disk(Disk::new(&path).serial("bench")),
        dir.path(),
    );
    let bench = blk_records(&report, "bench", "bench");
    let op = |name: &str| {
        bench
            .iter()
            .find(|r| r.get("op") == Some(name))
            .unwrap_or_else(|| panic!("{hv}: no `blk bench op={name}` record: {report:?}"))
    };
    for (name, bytes) in [
        ("randread", 4096),
        ("randwrite", 4096),
        ("seqread", MIB as u64),
        ("seqwrite", MIB as u64),
    ] {
        let r = op(name);
        assert_eq!(r.number("bytes"), Some(bytes), "{r:?}");
        assert_eq!(r.number("depth"), Some(8), "{r:?}");
        assert!(r.number("ops").unwrap_or(0) >= 8, "{hv}: {r:?}");
        assert!(r.number("iops").unwrap_or(0) > 0, "{hv}: {r:?}");
    }
    let flush = op("flush");
    assert_eq!(flush.number("n"), Some(10), "{flush:?}");
    assert!(
        flush.number("median_us") <= flush.number("p99_us"),
        "{flush:?}"
    );
    let image = std::fs::read(&path).expect("read the image back");
    assert_eq!(image.len(), original.len(), "{hv}: the image changed size");
    assert!(image != original, "{hv}: no bench write reached the image");
}

/// A request that fails ends the bench with the status, never a figure:
/// writes to a read-only disk.
#[rstest]
fn a_failed_bench_request_fails_the_run(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("ro.img");
    make_image(&path, 2, 32);
    let run = Guest::probe(
        hv,
        "probe.run=blk probe.blk.bench=randread,randwrite probe.blk.bench_ms=50",
    )
    .disk(Disk::new(&path).readonly().serial("ro"))
    .run(dir.path())
    .expect("guest runs");
    let reason = match run.report.result() {
        Some(Err(reason)) => reason,
        other => panic!(
            "{hv}: want a failure, got {other:?}\n{}",
            run.output.describe()
        ),
    };
    assert!(
        reason.contains("bench randwrite") && reason.contains(&format!("status {IOERR}")),
        "{hv}: {reason}"
    );
    assert!(
        blk_records(&run.report, "bench", "ro")
            .iter()
            .all(|r| r.get("op") != Some("randwrite")),
        "{hv}: a figure for writes that failed: {:?}",
        run.report
    );
}

/// Fields that describe an implementation's choices, not the device the
/// specification defines: the features offered (QEMU offers GEOMETRY,
/// TOPOLOGY, CONFIG_WCE, ...), seg_max and the discard and write-zeroes
/// limits, interrupt counts, and the number of requests (it follows
/// seg_max).
const IMPLEMENTATION_FIELDS: &[&str] = &[
    "offered",
    "seg_max",
    "max_discard_sectors",
    "max_discard_seg",
    "discard_sector_alignment",
    "max_write_zeroes_sectors",
    "max_write_zeroes_seg",
    "write_zeroes_may_unmap",
    "irqs",
    "requests",
];

/// The `blk` records with each PCI address replaced by the disk's serial
/// and the implementation's fields left out.
fn blk_facts(report: &ProbeReport) -> Vec<(Vec<String>, BTreeMap<String, String>)> {
    let serials: BTreeMap<String, String> = report
        .all("blk")
        .filter(|r| r.positional.first().map(String::as_str) == Some("id"))
        .filter_map(|r| Some((r.positional.get(1)?.clone(), r.get("serial")?.to_string())))
        .collect();
    report
        .all("blk")
        .map(|r| {
            let positional = r
                .positional
                .iter()
                .map(|p| serials.get(p).cloned().unwrap_or_else(|| p.clone()))
                .collect();
            let mut fields = r.fields.clone();
            fields.retain(|k, _| !IMPLEMENTATION_FIELDS.contains(&k.as_str()));
            (positional, fields)
        })
        .collect()
}

#[rstest]
fn same_facts_under_both_vmms(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let cmdline = "probe.run=blk probe.blk.sha=0:4096,4000:200 probe.blk.write=300:70 \
                   probe.blk.zero=900:8 probe.blk.discard=1500:16";
    let run = |hv: Hypervisor| {
        let dir = tempdir();
        let rw = dir.path().join("rw.img");
        let ro = dir.path().join("ro.img");
        make_image(&rw, 2, 21);
        make_image(&ro, 1, 22);
        let guest = Guest::probe(hv, cmdline)
            .disk(Disk::new(&rw).num_queues(3).serial("rw-disk"))
            .disk(Disk::new(&ro).readonly().serial("ro-disk"));
        let report = run_blk(guest, dir.path());
        (
            blk_facts(&report),
            std::fs::read(&rw).expect("read the image"),
        )
    };
    let (qemu, qemu_image) = run(Hypervisor::Qemu);
    let (vmm, vmm_image) = run(Hypervisor::Vmm);
    assert_eq!(vmm, qemu, "blk facts differ (left: vmm, right: qemu)");
    assert!(
        vmm_image == qemu_image,
        "the disk differs after the same requests"
    );
}

/// `--disk vhost_user=on,socket=PATH` with Debian's qemu-storage-daemon
/// exporting the image: the generic device with virtio id 2 serves it.
/// Its vhost-user-blk server (QEMU's libvhost-user) answers GET_CONFIG
/// from offset 0 whatever offset is asked; vmm reads the whole window and
/// slices it, as QEMU does, so the capacity and queue count come out right.
#[rstest]
fn a_vhost_user_blk_backend_serves_the_disk(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let Some(qsd) = test_infra::paths::find_program("qemu-storage-daemon") else {
        panic!("qemu-storage-daemon not found (ci/setup installs qemu-system-x86)");
    };
    let dir = tempdir();
    let path = dir.path().join("disk.img");
    let original = make_image(&path, 4, 23);
    let capacity = (4 * MIB / 512) as u64;
    let socket = dir.path().join("blk.sock");
    let mut command = std::process::Command::new(qsd);
    command
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=disk,filename={}",
            path.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ));
    let mut backend = test_infra::process::Child::spawn("qemu-storage-daemon", command, dir.path())
        .expect("qemu-storage-daemon starts");
    assert!(
        backend.wait_until(std::time::Duration::from_secs(60), |_| socket.exists()),
        "no socket: {}",
        backend.stderr_so_far()
    );
    let mut vmm = test_infra::vmm::VmmCommand::probe(
        "probe.run=blk,config probe.blk.sha=0:8,100:3 probe.blk.write=2048:16",
    )
    .expect("probe");
    vmm.args([
        "--memory",
        "size=512M,shared=on",
        "--disk",
        &format!("vhost_user=on,socket={}", socket.display()),
    ]);
    let run = vmm.run(dir.path()).expect("vmm runs");
    let report = run.assert_passed();
    // The window is what the backend's features bring (60 bytes: no
    // SECURE_ERASE or ZONED), not VIRTIO 1.3's 96, past which it would
    // refuse the guest's reads.
    let window = report.first("config").expect("config record");
    assert_eq!(window.number("len"), Some(60), "{window:?}");
    assert_eq!(window.get("needs_reset"), Some("no"), "{window:?}");
    let config = report.first_at("blk", "config").expect("blk config");
    assert_eq!(config.number("capacity"), Some(capacity), "{config:?}");
    assert_eq!(config.number("vqs"), Some(1), "{config:?}");
    for (start, count) in [(0, 8), (100, 3)] {
        let read = report
            .all("blk")
            .find(|r| {
                r.positional.first().map(String::as_str) == Some("read")
                    && r.number("start") == Some(start)
            })
            .expect("blk read");
        assert_eq!(
            read.get("sha256"),
            Some(sha(sectors(&original, start, count)).as_str()),
            "{read:?}"
        );
    }
    drop(backend);
    let image = std::fs::read(&path).expect("image");
    assert_eq!(
        sectors(&image, 2048, 16),
        write_pattern(2048, 16).as_slice()
    );
}
