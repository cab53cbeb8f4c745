//! The CMOS real-time clock as the probe guest's driver finds and uses it:
//! the host's time, an update cycle and its UIP bit, the alarm and
//! periodic interrupts, CMOS RAM, setting the time as Linux does; and the
//! same facts under QEMU's microvm with its RTC.

use std::time::{SystemTime, UNIX_EPOCH};

use rstest::rstest;
use test_infra::host::{kvm, KvmHost};
use test_infra::qemu::QemuCommand;
use test_infra::vmm::VmmCommand;
use test_infra::{tempdir, ProbeReport};

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// `2026-12-07T19:48:34` as seconds since the epoch (UTC).
fn unix_time(text: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .and_utc()
        .timestamp()
}

fn field<'a>(report: &'a ProbeReport, word: &str, key: &str) -> &'a str {
    report
        .first_at("rtc", word)
        .and_then(|r| r.get(key))
        .unwrap_or_else(|| panic!("no `rtc {word} ... {key}=` record"))
}

fn run_rtc_probe() -> (ProbeReport, i64, i64) {
    let dir = tempdir();
    let before = unix_now();
    let run = VmmCommand::probe("probe.run=rtc")
        .expect("artifacts")
        .run(dir.path())
        .expect("vmm runs");
    let after = unix_now();
    (run.assert_passed().clone(), before, after)
}

#[rstest]
fn the_clock_shows_the_host_time_as_firmware_leaves_it(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let (report, before, after) = run_rtc_probe();
    let shown = unix_time(field(&report, "clock", "time"));
    // Read while the guest ran, and truncated to the second.
    assert!(
        (before..=after).contains(&shown),
        "the RTC showed {shown}, the host went from {before} to {after}"
    );
    assert_eq!(field(&report, "device", "port"), "0x70");
    assert_eq!(field(&report, "device", "irq"), "8");
    assert_eq!(field(&report, "device", "found"), "dsdt");
    assert_eq!(field(&report, "device", "century"), "0x32");
    // 32.768 kHz divider at 1024 Hz, 24-hour BCD, valid RAM and time.
    assert_eq!(field(&report, "clock", "a"), "0x26");
    assert_eq!(field(&report, "clock", "b"), "0x02");
    assert_eq!(field(&report, "clock", "d"), "0x80");
}

#[rstest]
fn an_update_cycle_and_the_alarm_and_periodic_interrupts(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let (report, _, _) = run_rtc_probe();
    for (key, want) in [
        ("second_advanced", "true"),
        // An update in progress ends (the unit tests time UIP's window
        // exactly; a guest's poll may miss it when descheduled).
        ("uip_after_update", "false"),
        ("interrupts", "1"),
        // IRQF, AF and UF.
        ("c", "0xb0"),
    ] {
        assert_eq!(field(&report, "update", key), want, "update {key}");
    }
    assert_eq!(field(&report, "periodic", "interrupts"), "1");
    assert_eq!(field(&report, "periodic", "c"), "0xc0", "IRQF and PF");
}

#[rstest]
fn cmos_ram_keeps_bytes_and_the_guest_sets_the_time(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let (report, _, _) = run_rtc_probe();
    assert_eq!(field(&report, "nvram", "kept"), "16");
    // Set to 03:04:05, then one update half a second after the divider
    // was released.
    assert_eq!(field(&report, "set", "time"), "2030-01-02T03:04:06");
    assert_eq!(
        field(&report, "set", "first_update"),
        "half-second",
        "{:?}",
        report.first_at("rtc", "timing")
    );
}

/// QEMU's microvm names no century register in its FADT, and with an
/// alarm armed it latches UIP until its own update timer runs, which on a
/// loaded host is after the second has moved (4 runs in 15 here); the
/// rest of what the probe judges is the same.
#[rstest]
fn same_facts_as_qemu(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let (ours, before, _) = run_rtc_probe();
    let dir = tempdir();
    let qemu = QemuCommand::probe("probe.run=rtc")
        .expect("artifacts")
        .rtc()
        .run(dir.path())
        .expect("qemu runs");
    let after = unix_now();
    let theirs = qemu.assert_passed();
    for (word, key) in [
        ("device", "port"),
        ("device", "irq"),
        ("device", "found"),
        ("clock", "a"),
        ("clock", "b"),
        ("clock", "d"),
        ("update", "second_advanced"),
        ("update", "interrupts"),
        ("update", "c"),
        ("periodic", "interrupts"),
        ("periodic", "c"),
        ("nvram", "kept"),
        ("set", "time"),
        ("set", "first_update"),
    ] {
        assert_eq!(
            field(&ours, word, key),
            field(theirs, word, key),
            "rtc {word} {key}"
        );
    }
    for report in [&ours, theirs] {
        let shown = unix_time(field(report, "clock", "time"));
        assert!((before..=after).contains(&shown), "{shown}");
    }
}
