//! The guest as the attacker: `probe.run=chaos` makes random reads and
//! writes of random widths over every BAR, the configuration space, the
//! virtio common config and the MSI-X table of one device, then
//! re-enumerates, resets every device and checks each one works again.
//! `vmm` must never panic or hang, the device under attack must recover,
//! and the device next to it, which chaos spared, must work throughout.
//!
//! Seeds are printed; replay one with `CHAOS_SEED=N`, and run longer with
//! `CHAOS_OPS=N` (docs/fuzzing.md records a run of a million).

use std::path::Path;
use std::time::Duration;

use rstest::rstest;
use test_infra::host::{kvm, KvmHost};
use test_infra::virtiofsd::Virtiofsd;
use test_infra::vmm::{GuestRun, VmmCommand};
use test_infra::{MockBackend, MockOptions};

/// Accesses per run: a few seconds of chaos.
const DEFAULT_OPS: u64 = 20_000;
/// Far more than DEFAULT_OPS needs: a hang is a failure, not a wait.
const DEADLINE: Duration = Duration::from_secs(120);
/// A VIRTIO device ID the specification does not assign: the echo mock.
const ECHO_ID: &str = "60";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn ops() -> u64 {
    env_u64("CHAOS_OPS").unwrap_or(DEFAULT_OPS)
}

fn seed(default: u64) -> u64 {
    let seed = env_u64("CHAOS_SEED").unwrap_or(default);
    eprintln!(
        "chaos seed={seed} ops={} (replay: CHAOS_SEED={seed})",
        ops()
    );
    seed
}

fn echo_mock(dir: &Path, name: &str) -> MockBackend {
    MockOptions::new(name)
        .relisten()
        .start(dir)
        .expect("vhost-user-mock starts")
}

/// Chaos on device 1, then the checks; `devices` are `--generic-vhost-user`
/// values in slot order from 1; `extra` more probe keys.
fn run(dir: &Path, seed: u64, devices: &[String], extra: &str) -> GuestRun {
    let cmdline = format!(
        "probe.run=pci,chaos probe.chaos.seed={seed} probe.chaos.ops={} probe.chaos.devices=1 \
         probe.echo.id={ECHO_ID} probe.echo.recover=3 probe.echo.rounds=4 {extra}",
        ops()
    );
    let mut cmd = VmmCommand::probe(&cmdline).expect("artifacts");
    cmd.args(["--memory", "size=512M,shared=on", "-v"]);
    for device in devices {
        cmd.arg("--generic-vhost-user").arg(device);
    }
    let deadline = DEADLINE.max(Duration::from_millis(ops() / 5));
    cmd.timeout(deadline);
    cmd.run(dir).expect("vmm runs")
}

/// Passed, by power-off: no panic (SIGABRT), no kill at the deadline.
fn assert_survived(run: &GuestRun, logs: &[String]) {
    let logs = logs.join("\n");
    assert!(
        !run.output.timed_out(),
        "vmm hung (killed at the deadline):\n{}\n{logs}",
        run.output.describe()
    );
    assert!(
        !run.output.stderr.contains("panicked"),
        "vmm panicked:\n{}",
        run.output.describe()
    );
    run.assert_passed();
    let chaos = run.report.first("chaos").expect("a chaos record");
    let done: u64 = chaos.number("ops").expect("ops=");
    assert!(done >= ops(), "{chaos:?}");
    assert_eq!(chaos.get("targets"), Some("00:01.0"), "{chaos:?}");
}

/// Every device's post-check passed, the spared one's included.
fn assert_checked(run: &GuestRun, bdfs: &[&str]) {
    for bdf in bdfs {
        let check = run
            .report
            .all("chaos")
            .find(|r| r.positional.iter().map(String::as_str).eq(["check", *bdf]))
            .unwrap_or_else(|| panic!("no check of {bdf}:\n{}", run.output.describe()));
        assert_eq!(check.get("result"), Some("ok"), "{check:?}");
    }
}

#[rstest]
fn two_echo_devices_one_attacked(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = test_infra::tempdir();
    let attacked = echo_mock(dir.path(), "attacked");
    let spared = echo_mock(dir.path(), "spared");
    let seed = seed(1);
    let devices = [
        format!("{},config_size=8", attacked.device(ECHO_ID, &[256, 256])),
        format!("{},config_size=8", spared.device(ECHO_ID, &[256, 256])),
    ];
    let run = run(dir.path(), seed, &devices, "");
    assert_survived(&run, &[attacked.log(), spared.log()]);
    assert_checked(&run, &["00:01.0", "00:02.0"]);
    let echoes = run
        .report
        .all("echo")
        .filter(|r| r.get("checked").is_some())
        .count();
    assert_eq!(echoes, 2, "both devices echo after chaos");
}

#[rstest]
fn virtiofsd_attacked_next_to_an_echo_device(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = test_infra::tempdir();
    let fs = Virtiofsd::start(dir.path(), "chaosfs").expect("virtiofsd starts");
    let spared = echo_mock(dir.path(), "spared");
    let seed = seed(2);
    let devices = [
        format!(
            "socket={},virtio_id=fs,queue_sizes=[512,512]",
            test_infra::guest::quote(&fs.socket().to_string_lossy())
        ),
        format!("{},config_size=8", spared.device(ECHO_ID, &[256, 256])),
    ];
    // Empty rings: virtiofsd 1.14 does not survive garbage in them (it
    // spins on an available index past the queue size and answers no more
    // requests), and what a backend does with its rings is not vmm's to
    // test.
    let run = run(dir.path(), seed, &devices, "probe.chaos.rings=empty");
    assert_survived(&run, &[fs.log(), spared.log()]);
    assert_checked(&run, &["00:01.0", "00:02.0"]);
    let fs_check = run
        .report
        .first_at("chaos", "fs")
        .expect("a FUSE session after chaos");
    assert!(
        fs_check.get("fuse").is_some_and(|v| v.starts_with("7.")),
        "{fs_check:?}"
    );
}

#[rstest]
fn the_same_seed_makes_the_same_accesses(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = test_infra::tempdir();
    let counts = |run: &GuestRun| {
        let c = run.report.first("chaos").expect("a chaos record");
        [
            "bar_reads",
            "bar_writes",
            "config_reads",
            "config_writes",
            "kicks",
        ]
        .map(|k| c.get(k).unwrap_or_default().to_string())
    };
    let mut seen = Vec::new();
    for name in ["first", "second"] {
        let mock = echo_mock(dir.path(), name);
        let device = format!("{},config_size=8", mock.device(ECHO_ID, &[256, 256]));
        let run = run(dir.path(), 7, &[device], "");
        assert_survived(&run, &[mock.log()]);
        seen.push(counts(&run));
    }
    assert_eq!(seen[0], seen[1], "seed 7 replays");
}
