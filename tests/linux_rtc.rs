//! Linux tier: Debian's rtc_cmos driver on vmm's real-time clock. The
//! guest's `hwclock -r` shows the time of the host vmm runs on (L1 when
//! nested), an alarm set through `/dev/rtc0` interrupts, and a boot costs
//! few exits on the clock's ports.

use test_infra::linux::GuestInit;
use test_infra::{static_c, Scenario, ScenarioRun};

/// Boots `init` in an L1 that notes its own clock (`l1-clock start=`)
/// before vmm starts and again (`seen=`) once the guest printed `line`.
fn boot(mut s: Scenario, init: &GuestInit, line: &str) -> ScenarioRun {
    s.guest("guest.cpio", init)
        .expect("initramfs")
        .script(&format!(
            r#"record l1-clock start=$(date +%s)
start_vmm guest 300 --kernel "$VMLINUX" --initramfs "$IN/guest.cpio" \
  --cmdline 'console=ttyS0 quiet panic=-1' --console off --memory size=512M
wait_line "$OUT/guest.serial" '{line}' 240 && record l1-clock seen=$(date +%s)
wait_vmm guest 300"#
        ));
    s.run_completed()
}

fn l1_clock(run: &ScenarioRun, key: &str) -> i64 {
    run.records
        .all("l1-clock")
        .find_map(|r| r.number(key))
        .unwrap_or_else(|| panic!("no l1-clock {key}=\n{}", run.describe())) as i64
}

/// busybox's `hwclock -r -u`: `Mon Dec  7 19:55:01 2026  0.000000 seconds`.
fn hwclock_time(text: &str) -> Option<i64> {
    let (date, _) = text.split_once("  0.")?;
    chrono::NaiveDateTime::parse_from_str(date.trim(), "%a %b %e %H:%M:%S %Y")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// The exits on `io 0x70+0x2` in the `Exits to vmm` line vmm logs at exit.
fn rtc_port_exits(log: &str) -> Option<u64> {
    let json = log.lines().find_map(|l| l.split_once("Exits to vmm: "))?.1;
    let exits: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    exits["io 0x70+0x2"].as_u64()
}

#[test]
fn hwclock_reads_the_hosts_time() {
    let init = GuestInit::new(
        "up=$(cut -d' ' -f1 /proc/uptime)\n\
         report \"rtc-read uptime=$up text=\\\"$(hwclock -r -u)\\\"\"\n\
         report rtc-device name=$(cat /sys/class/rtc/rtc0/name) \
         hctosys=$(cat /sys/class/rtc/rtc0/hctosys)",
    );
    let run = boot(
        Scenario::new("rtc-hwclock").expect("scenario"),
        &init,
        "rtc-read",
    );
    assert_eq!(run.vmm_exit("guest"), Some(0), "{}", run.describe());
    let guest = run.guest("guest");
    let read = guest
        .first("rtc-read")
        .unwrap_or_else(|| panic!("no rtc-read\n{}", run.describe()));
    let text = read.get("text").unwrap_or_default();
    let shown = hwclock_time(text)
        .unwrap_or_else(|| panic!("hwclock printed {text:?}\n{}", run.describe()));
    let uptime: f64 = read
        .get("uptime")
        .and_then(|u| u.parse().ok())
        .expect("uptime");
    // The guest's clock starts after vmm does, so the RTC was read no
    // earlier than L1's start plus the guest's uptime, and no later than
    // when L1 saw the line: the RTC must show a second in between (one
    // second either side for truncation). A slow machine widens the
    // window, never fails it.
    let earliest = l1_clock(&run, "start") + uptime as i64;
    let latest = l1_clock(&run, "seen");
    assert!(
        (earliest - 1..=latest + 1).contains(&shown),
        "hwclock showed {shown} ({text}); L1 bounds {earliest}..={latest}\n{}",
        run.describe()
    );
    eprintln!("hwclock showed {shown}; L1 bounds {earliest}..={latest}");
    let device = guest.first("rtc-device").expect("rtc-device");
    assert_eq!(device.get("name"), Some("rtc_cmos"), "{device:?}");
    // Linux set its clock from ours at boot.
    assert_eq!(device.get("hctosys"), Some("1"), "{device:?}");
    let exits = rtc_port_exits(&run.out_file("guest.vmm.log"))
        .unwrap_or_else(|| panic!("no exit counts for 0x70\n{}", run.describe()));
    eprintln!("{exits} exits on ports 0x70-0x71 in the boot");
    assert!(exits < 200, "{exits} exits on ports 0x70-0x71 in one boot");
}

#[test]
fn an_alarm_set_through_dev_rtc0_interrupts() {
    let s = Scenario::new("rtc-alarm").expect("scenario");
    let dir = s.scratch_dir("tools").expect("scratch");
    let alarm = static_c::build("rtc-alarm", static_c::RTC_ALARM, &dir).expect("rtc-alarm");
    let init = GuestInit::new(
        "report $(/bin/rtc-alarm)\n\
         report rtc-irq $(grep rtc0 /proc/interrupts)",
    )
    .file("bin/rtc-alarm", alarm);
    let run = boot(s, &init, "rtc-irq");
    assert_eq!(run.vmm_exit("guest"), Some(0), "{}", run.describe());
    let guest = run.guest("guest");
    let fired = guest
        .first("rtc-alarm")
        .unwrap_or_else(|| panic!("no rtc-alarm\n{}", run.describe()));
    assert_eq!(
        fired.get("fired"),
        Some("1"),
        "{fired:?}\n{}",
        run.describe()
    );
    // RTC_AF | RTC_IRQF, one interrupt.
    assert_eq!(fired.get("flags"), Some("0xa0"), "{fired:?}");
    assert_eq!(fired.get("count"), Some("1"), "{fired:?}");
    // /proc/interrupts counted it, from IOAPIC pin 8, edge-triggered
    // (`26: 1 IO-APIC 8-edge rtc0`: Linux numbers its IRQs as it likes).
    let irq = guest.first("rtc-irq").expect("rtc-irq");
    assert_eq!(
        irq.positional.get(1..),
        Some(&["1", "IO-APIC", "8-edge", "rtc0"].map(String::from)[..]),
        "{irq:?}\n{}",
        run.describe()
    );
}
