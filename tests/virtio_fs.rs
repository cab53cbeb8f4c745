//! The probe guest mounts a real virtiofsd share, under `vmm`'s generic
//! vhost-user device and under QEMU's vhost-user-fs-pci, and reads and
//! writes the host's files byte for byte.

use std::path::Path;
use std::process::Command;

use rstest::rstest;
use test_infra::host::{kvm, KvmHost};
use test_infra::tempdir;
use test_infra::virtiofsd::Virtiofsd;
use test_infra::{Guest, Hypervisor, ProbeReport, Record};

const MIB: usize = 1 << 20;

/// The host's own sha256, from coreutils: independent of the guest's.
fn host_sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Content that differs at every offset (xorshift), so misplaced chunks
/// change the hash.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the probe writes for `probe.fs.write=PATH:N`.
fn probe_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn fs_record<'a>(report: &'a ProbeReport, op: &str, path: &str) -> &'a Record {
    report
        .all("fs")
        .find(|r| {
            r.positional.first().map(String::as_str) == Some(op) && r.get("path") == Some(path)
        })
        .unwrap_or_else(|| panic!("no `fs {op}` record for {path}: {report:?}"))
}

fn run_with_logs(guest: &Guest, dir: &Path, fs: &[&Virtiofsd]) -> ProbeReport {
    let run = guest.run(dir).expect("guest runs");
    if !(run.report.passed() && run.output.code() == Some(0)) {
        let logs: Vec<String> = fs
            .iter()
            .map(|f| format!("--- {} log:\n{}", f.tag(), f.log()))
            .collect();
        panic!(
            "guest run did not pass: {:?}\n{}\n{}",
            run.report.result(),
            run.output.describe(),
            logs.join("\n")
        );
    }
    run.report
}

#[rstest]
#[case::empty(0)]
#[case::one_byte(1)]
#[case::one_page(4096)]
#[case::one_mib_plus_one(MIB + 1)]
#[case::eight_mib(8 * MIB)]
fn reads_and_writes_host_files_byte_for_byte(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
    #[case] size: usize,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd starts");
    let input = fs.shared_dir().join("input.bin");
    std::fs::write(&input, pseudo_random(size, size as u64 + 7)).expect("write input");
    let cmdline = format!(
        "probe.run=boot,pci,virtio,fs probe.fs.read=input.bin probe.fs.write=output.bin:{size}"
    );
    let report = run_with_logs(
        &Guest::probe(hv, &cmdline).virtiofs(&fs),
        dir.path(),
        &[&fs],
    );

    let read = fs_record(&report, "read", "input.bin");
    assert_eq!(read.number("size"), Some(size as u64), "{read:?}");
    assert_eq!(
        read.get("sha256"),
        Some(host_sha256(&input).as_str()),
        "{read:?}"
    );

    let output = fs.shared_dir().join("output.bin");
    let written = std::fs::read(&output).expect("the guest's file is on the host");
    assert!(
        written == probe_pattern(size),
        "{hv}: output.bin differs from the pattern"
    );
    let write = fs_record(&report, "write", "output.bin");
    assert_eq!(
        write.get("sha256"),
        Some(host_sha256(&output).as_str()),
        "{write:?}"
    );
    assert_eq!(write.get("readback"), Some("ok"), "{write:?}");
}

#[rstest]
fn lists_a_directory_with_many_entries(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
) {
    let Some(_kvm) = kvm else { return };
    const ENTRIES: usize = 1500;
    let dir = tempdir();
    let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd starts");
    let many = fs.shared_dir().join("many");
    std::fs::create_dir(&many).expect("mkdir");
    for i in 0..ENTRIES {
        std::fs::write(many.join(format!("entry-with-a-longish-name-{i:05}")), b"x")
            .expect("create");
    }
    std::fs::create_dir(fs.shared_dir().join("few")).expect("mkdir");
    for name in ["alpha", "beta", "gamma"] {
        std::fs::write(fs.shared_dir().join("few").join(name), name).expect("create");
    }
    let report = run_with_logs(
        &Guest::probe(hv, "probe.run=fs probe.fs.list=many,few").virtiofs(&fs),
        dir.path(),
        &[&fs],
    );
    let lists: Vec<&Record> = report
        .all("fs")
        .filter(|r| r.positional.first().map(String::as_str) == Some("list"))
        .collect();
    let many = lists
        .iter()
        .find(|r| r.get("dir") == Some("many"))
        .expect("list record for many");
    assert_eq!(many.number("entries"), Some(ENTRIES as u64), "{many:?}");
    let few = lists
        .iter()
        .find(|r| r.get("dir") == Some("few"))
        .expect("list record for few");
    let mut names: Vec<&str> = few.get("names").unwrap_or("").split('/').collect();
    names.sort_unstable();
    assert_eq!(names, ["alpha", "beta", "gamma"], "{few:?}");
}

#[rstest]
fn namespace_operations_leave_the_share_as_it_was(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd starts");
    std::fs::write(fs.shared_dir().join("keep"), b"keep").expect("create");
    let report = run_with_logs(
        &Guest::probe(hv, "probe.run=fs").virtiofs(&fs),
        dir.path(),
        &[&fs],
    );
    let ops = report.first_at("fs", "ops").expect("fs ops record");
    for op in ["mkdir", "create", "write", "rename", "unlink", "rmdir"] {
        assert_eq!(ops.get(op), Some("ok"), "{op}: {ops:?}");
    }
    let left: Vec<_> = std::fs::read_dir(fs.shared_dir())
        .expect("read share")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["keep"], "the scratch directory is gone");
}
