//! Linux tier: Debian's cloud kernel boots under `vmm` (directly with
//! hardware virtualization, else nested in an L1 under QEMU TCG) and
//! reports what it found: CPUs online, memory, how it ended.

use test_infra::linux::GuestInit;
use test_infra::{Scenario, ScenarioRun};

/// What the boot tests' guests report: online CPUs and the RAM ranges
/// Linux took from our e820 map.
const FACTS: &str = "report cpus online=$(cat /sys/devices/system/cpu/online) \
                     count=$(grep -c ^processor /proc/cpuinfo)\n\
                     grep 'System RAM' /proc/iomem | while read -r range _; do \
                     report ram range=$range; done";

/// Boots one guest reporting [`FACTS`] with `vmm_args` and returns the run.
fn boot(name: &str, kernel_var: &str, vmm_args: &str, l1_memory_mib: u64) -> ScenarioRun {
    let mut s = Scenario::new(name).expect("scenario");
    s.guest("guest.cpio", &GuestInit::new(FACTS))
        .expect("initramfs")
        .script(&format!(
            "run_vmm guest 180 --kernel \"${kernel_var}\" --initramfs \"$IN/guest.cpio\" \
             --cmdline 'console=ttyS0 quiet panic=-1' --console off {vmm_args}"
        ))
        .l1(l1_memory_mib, 1);
    s.run_completed()
}

/// The guest's online CPU list and count.
fn cpus(run: &ScenarioRun, name: &str) -> (String, u64) {
    let guest = run.guest(name);
    let r = guest
        .first("cpus")
        .unwrap_or_else(|| panic!("the guest reported no CPUs\n{}", run.describe()));
    (
        r.get("online").unwrap_or_default().to_string(),
        r.number("count").unwrap_or(0),
    )
}

/// The RAM ranges Linux reports in /proc/iomem, as (start, end inclusive).
fn ram(run: &ScenarioRun, name: &str) -> Vec<(u64, u64)> {
    run.guest(name)
        .all("ram")
        .filter_map(|r| {
            let (a, b) = r.get("range")?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// Asserts that the guest `name` has all of `mib` as RAM but the legacy
/// hole under 1 MiB (EBDA, VGA, BIOS area), none of it in the 32-bit PCI
/// hole, and returns its ranges.
fn assert_ram(run: &ScenarioRun, name: &str, mib: u64) -> Vec<(u64, u64)> {
    let ram = ram(run, name);
    let total: u64 = ram.iter().map(|(a, b)| b - a + 1).sum();
    assert!(
        total <= mib * MIB && total > (mib - 1) * MIB,
        "{name}: RAM ranges {ram:x?} add up to {total:#x}\n{}",
        run.describe()
    );
    assert!(
        ram.iter()
            .all(|&(start, end)| end < 0xc000_0000 || start >= 0x1_0000_0000),
        "{name}: RAM inside the PCI hole: {ram:x?}"
    );
    ram
}

const MIB: u64 = 1 << 20;

#[test]
fn pvh_vmlinux_boots_with_one_cpu_and_512m() {
    let run = boot(
        "pvh-1cpu",
        "VMLINUX",
        "--cpus boot=1 --memory size=512M",
        2048,
    );
    assert_eq!(
        cpus(&run, "guest"),
        ("0".to_string(), 1),
        "{}",
        run.describe()
    );
    assert_ram(&run, "guest", 512);
    assert_eq!(run.vmm_exit("guest"), Some(0), "{}", run.describe());
}

#[test]
fn bzimage_boots_with_two_cpus() {
    let run = boot(
        "bzimage-2cpus",
        "BZIMAGE",
        "--cpus boot=2 --memory size=512M",
        2048,
    );
    assert_eq!(
        cpus(&run, "guest"),
        ("0-1".to_string(), 2),
        "{}",
        run.describe()
    );
    assert_eq!(run.vmm_exit("guest"), Some(0), "{}", run.describe());
}

/// 3 GiB fills RAM up to the 32-bit PCI hole exactly; 4 GiB crosses it,
/// and Linux must find the rest above 4 GiB. Two guests in one L1.
#[test]
fn four_cpus_online_with_3g_and_4g_across_the_pci_hole() {
    let mut s = Scenario::new("4cpus-3g-4g").expect("scenario");
    s.guest("guest.cpio", &GuestInit::new(FACTS))
        .expect("initramfs")
        .l1(6144, 1);
    for size in ["3G", "4G"] {
        s.script(&format!(
            "run_vmm guest-{size} 180 --kernel \"$VMLINUX\" --initramfs \"$IN/guest.cpio\" \
             --cmdline 'console=ttyS0 quiet panic=-1' --console off --cpus boot=4 --memory size={size}"
        ));
    }
    let run = s.run_completed();
    for (size, gib) in [("3G", 3u64), ("4G", 4)] {
        let name = format!("guest-{size}");
        assert_eq!(
            cpus(&run, &name),
            ("0-3".to_string(), 4),
            "{}",
            run.describe()
        );
        assert_ram(&run, &name, gib * 1024);
        assert_eq!(run.vmm_exit(&name), Some(0), "{}", run.describe());
    }
    assert!(
        ram(&run, "guest-4G").contains(&(0x1_0000_0000, 0x1_3fff_ffff)),
        "4G: no 1 GiB above 4 GiB\n{}",
        run.describe()
    );
}

/// Power-off, `reboot -f` and a kernel panic (with `panic=-1`, a reboot)
/// each end `vmm` with status 0, as the README's exit-status table says;
/// three guests in one L1.
#[test]
fn poweroff_reboot_and_panic_each_end_vmm() {
    let endings = [
        ("poweroff", "report ending how=poweroff; poweroff -f"),
        ("reboot", "report ending how=reboot; reboot -f"),
        (
            "panic",
            "report ending how=panic; echo c > /proc/sysrq-trigger",
        ),
    ];
    let mut s = Scenario::new("endings").expect("scenario");
    for (name, script) in endings {
        s.guest(&format!("{name}.cpio"), &GuestInit::new(script))
            .expect("initramfs")
            .script(&format!(
                "run_vmm {name} 120 --kernel \"$VMLINUX\" --initramfs \"$IN/{name}.cpio\" \
                 --cmdline 'console=ttyS0 quiet panic=-1' --console off --memory size=512M"
            ));
    }
    let run = s.run_completed();
    for (name, _) in endings {
        let ending = run.guest(name);
        assert_eq!(
            ending.first("ending").and_then(|r| r.get("how")),
            Some(name),
            "{name}: the guest did not get there\n{}",
            run.describe()
        );
        assert_eq!(run.vmm_exit(name), Some(0), "{name}\n{}", run.describe());
    }
    assert!(
        run.serial("panic").contains("Kernel panic - not syncing"),
        "the panic guest did not panic\n{}",
        run.describe()
    );
}
