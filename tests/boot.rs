//! `vmm` boots the probe guest: vCPU counts, memory sizes, serial output,
//! exit statuses, and the same facts as under QEMU.

use rstest::rstest;
use test_infra::host::{kvm, KvmHost};
use test_infra::qemu::QemuCommand;
use test_infra::tempdir;
use test_infra::vmm::VmmCommand;

#[rstest]
#[case(1)]
#[case(2)]
#[case(4)]
fn boots_with_every_vcpu_started(kvm: Option<KvmHost>, #[case] cpus: u8) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let run = VmmCommand::probe("probe.run=boot,pci")
        .expect("artifacts")
        .args(["--cpus", &format!("boot={cpus}"), "--memory", "size=512M"])
        .run(dir.path())
        .expect("vmm runs");
    let report = run.assert_passed();
    let boot = report.first("boot").expect("boot record");
    assert_eq!(boot.number("cpus"), Some(u64::from(cpus)), "{boot:?}");
    assert_eq!(
        boot.number("cpus_started"),
        Some(u64::from(cpus)),
        "{boot:?}"
    );
}

#[rstest]
#[case("64M", 64 << 20)]
#[case("512M", 512 << 20)]
#[case("3G", 3 << 30)]
#[case("4G", 4 << 30)]
#[case("16G", 16 << 30)]
fn guest_sees_the_configured_memory(kvm: Option<KvmHost>, #[case] size: &str, #[case] bytes: u64) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let run = VmmCommand::probe("probe.run=boot")
        .expect("artifacts")
        .args(["--memory", &format!("size={size}")])
        .run(dir.path())
        .expect("vmm runs");
    let boot = run
        .assert_passed()
        .first("boot")
        .expect("boot record")
        .clone();
    assert_eq!(boot.number("mem_bytes"), Some(bytes), "{boot:?}");
}

#[rstest]
fn pci_host_bridge_is_at_00_00_0_through_ecam(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let run = VmmCommand::probe("probe.run=boot,pci")
        .expect("artifacts")
        .run(dir.path())
        .expect("vmm runs");
    let report = run.assert_passed();
    let boot = report.first("boot").expect("boot record");
    assert_eq!(boot.get("ecam"), Some("0xe0000000"), "{boot:?}");
    let bridge = report
        .first_at("pci", "00:00.0")
        .expect("a function at 00:00.0");
    assert_eq!(bridge.get("class"), Some("0x060000"), "{bridge:?}");
}

#[rstest]
fn serial_to_file_holds_the_report(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let log = dir.path().join("serial.log");
    let run = VmmCommand::probe("probe.run=boot")
        .expect("artifacts")
        .serial(&format!("file={}", log.display()))
        .run(dir.path())
        .expect("vmm runs");
    assert_eq!(run.output.code(), Some(0), "{}", run.output.describe());
    assert!(run.report.records.is_empty(), "nothing on stdout");
    let serial = std::fs::read_to_string(&log).expect("serial log");
    let report = test_infra::ProbeReport::parse(&serial);
    assert!(report.passed(), "{serial}");
    assert!(report.first("boot").is_some());
}

#[rstest]
fn guest_failure_exits_with_the_debug_exit_status(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let run = VmmCommand::probe("probe.run=boot,fail")
        .expect("artifacts")
        .run(dir.path())
        .expect("vmm runs");
    assert!(
        matches!(run.report.result(), Some(Err(_))),
        "{}",
        run.output.describe()
    );
    // The probe writes 1 to port 0xf4: (1 << 1) | 1, as under QEMU.
    assert_eq!(run.output.code(), Some(3), "{}", run.output.describe());
}

#[rstest]
fn sigterm_stops_the_vm_and_every_thread(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    // `probe.run=spin` keeps the guest busy until it is stopped.
    let mut child = VmmCommand::probe("probe.run=boot,spin")
        .expect("artifacts")
        .args(["--cpus", "boot=2"])
        .spawn(dir.path())
        .expect("vmm starts");
    assert!(
        child.wait_until(std::time::Duration::from_secs(30), |c| c
            .stdout_so_far()
            .contains("probe: spin")),
        "guest never reached the spin test: {}",
        child.stdout_so_far()
    );
    child.signal(SIGTERM);
    let output = child
        .wait(std::time::Duration::from_secs(60))
        .expect("wait");
    assert_eq!(output.code(), Some(128 + 15), "{}", output.describe());
}

const SIGTERM: i32 = 15;

/// The facts the issue names (CPU count, memory, host bridge) are the same
/// under QEMU microvm and under `vmm`.
#[rstest]
#[case(1, 512)]
#[case(2, 1024)]
fn same_facts_as_qemu(kvm: Option<KvmHost>, #[case] cpus: u8, #[case] mib: u64) {
    let Some(_kvm) = kvm else { return };
    let cmdline = "probe.run=boot,pci";
    let dir = tempdir();
    let ours = VmmCommand::probe(cmdline)
        .expect("artifacts")
        .args([
            "--cpus".to_string(),
            format!("boot={cpus}"),
            "--memory".into(),
            format!("size={mib}M"),
        ])
        .run(dir.path())
        .expect("vmm runs");
    let qemu = QemuCommand::probe(cmdline)
        .expect("artifacts")
        .cpus(cpus)
        .memory_mib(mib)
        .run(dir.path())
        .expect("qemu runs");
    let ours = ours.assert_passed();
    let theirs = qemu.assert_passed();
    let fact = |r: &test_infra::ProbeReport, key: &str| {
        r.first("boot").and_then(|b| b.get(key)).map(str::to_string)
    };
    for key in ["cpus", "cpus_started", "mem_bytes", "cmdline"] {
        assert_eq!(
            fact(ours, key),
            fact(theirs, key),
            "boot record field {key}"
        );
    }
    let bridge_class = |r: &test_infra::ProbeReport| {
        r.first_at("pci", "00:00.0")
            .and_then(|p| p.get("class").map(str::to_string))
    };
    assert_eq!(bridge_class(ours), bridge_class(theirs));
    assert_eq!(bridge_class(ours).as_deref(), Some("0x060000"));
}
