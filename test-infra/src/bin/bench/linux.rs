//! Debian's kernel and a busybox initramfs that prints a line and powers
//! off, under `vmm`, Cloud Hypervisor (when given) and QEMU `-accel kvm`
//! (`microvm` and `q35`), in one L1 (or on the host with hardware KVM),
//! the VMMs taking turns run by run. `stamp-run` starts each the same way
//! and times the guest's userspace line and the VMM's exit, with the VMM's
//! peak RSS; the L1 kernel's `kvm` trace events
//! count the exits, all of them and those that reached the VMM. The first
//! round warms the page cache and is not counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use test_infra::linux::{self, GuestInit};
use test_infra::probe::Record;
use test_infra::{paths, static_c, Scenario, ScenarioRun};

use super::*;

const CMDLINE: &str = "console=ttyS0 quiet panic=-1";
/// What the guest prints from userspace (`report up`).
const MARK: &str = "linux: up";

/// One VMM's command line, with the host's paths for programs run as on
/// the host.
struct Contender {
    name: &'static str,
    command: String,
}

fn contenders(
    ch: Option<&PathBuf>,
    qemu: Option<PathBuf>,
    vmlinux: &Path,
    cpio: &Path,
) -> Vec<Contender> {
    let (vmlinux, cpio) = (vmlinux.display(), cpio.display());
    let mut all = vec![Contender {
        name: "vmm",
        command: format!(
            "\"$VMM\" --kernel \"$VMLINUX\" --initramfs \"$IN/up.cpio\" --cmdline '{CMDLINE}' \
             --cpus boot=1 --memory size=512M --serial tty --console off"
        ),
    }];
    if let Some(ch) = ch {
        all.push(Contender {
            name: "cloud-hypervisor",
            command: format!(
                "$ON_HOST {} --kernel {vmlinux} --initramfs {cpio} --cmdline '{CMDLINE}' \
                 --cpus boot=1 --memory size=512M --serial tty --console off",
                ch.display()
            ),
        });
    }
    if let Some(qemu) = qemu {
        for (name, machine) in [
            ("qemu-microvm", "microvm,pcie=on,acpi=on"),
            ("qemu-q35", "q35"),
        ] {
            all.push(Contender {
                name,
                command: format!(
                    "$ON_HOST {} -M {machine} -accel kvm -cpu host -smp 1 -m 512M -nodefaults \
                     -no-reboot -display none -serial stdio -kernel {vmlinux} -initrd {cpio} \
                     -append '{CMDLINE}'",
                    qemu.display()
                ),
            });
        }
    }
    all
}

/// The L1 script: tracefs histograms of exits around each boot.
const PRELUDE: &str = r#"host_mounts
chmod +x "$IN/stamp-run"
T=/sys/kernel/tracing
[ -d $T/events/kvm ] || mount -t tracefs nodev $T
EXITS=$T/events/kvm/kvm_exit/trigger
UEXITS=$T/events/kvm/kvm_userspace_exit/trigger
# boot NAME COMMAND...: one boot under stamp-run, with its exit counts
boot() {
  name=$1; shift
  echo 'hist:keys=exit_reason' > $EXITS
  echo 'hist:keys=reason' > $UEXITS
  "$IN/stamp-run" '__MARK__' 300 "$OUT/$name.log" -- "$@" > "$OUT/$name.serial" 2> "$OUT/$name.stamp"
  cat $T/events/kvm/kvm_exit/hist > "$OUT/$name.exits"
  cat $T/events/kvm/kvm_userspace_exit/hist > "$OUT/$name.uexits"
  echo '!hist:keys=exit_reason' > $EXITS
  echo '!hist:keys=reason' > $UEXITS
  record booted "$name"
}"#;

/// `{ key: N } hitcount: M` lines of a trace histogram, by key.
fn histogram(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (key, count) = l.strip_prefix('{')?.split_once('}')?;
            let key = key.split(':').nth(1)?.trim().parse().ok()?;
            let count = count.split(':').nth(1)?.trim().parse().ok()?;
            Some((key, count))
        })
        .collect()
}

/// KVM's exit reasons to user space (`KVM_EXIT_*`) that a boot shows.
fn userspace_reason(reason: u64) -> String {
    match reason {
        2 => "io".into(),
        5 => "hlt".into(),
        6 => "mmio".into(),
        8 => "shutdown".into(),
        10 => "intr".into(),
        24 => "system-event".into(),
        other => format!("reason-{other}"),
    }
}

/// SVM's exit codes (the L1 under QEMU TCG is an AMD machine) that a
/// boot shows most.
fn exit_reason(code: u64) -> String {
    match code {
        0x60 => "intr".into(),
        0x64 => "vintr".into(),
        0x6e => "rdtsc".into(),
        0x72 => "cpuid".into(),
        0x77 => "pause".into(),
        0x78 => "hlt".into(),
        0x7b => "ioio".into(),
        0x7c => "msr".into(),
        0x400 => "npf".into(),
        0x401 => "avic-ipi".into(),
        0x402 => "avic-access".into(),
        other => format!("{other:#x}"),
    }
}

/// One boot's figures.
struct Boot {
    userspace_ms: f64,
    exit_ms: f64,
    maxrss_kib: f64,
    exits: Vec<(u64, u64)>,
    to_vmm: Vec<(u64, u64)>,
}

impl Boot {
    fn total(counts: &[(u64, u64)]) -> u64 {
        counts.iter().map(|(_, n)| n).sum()
    }
}

/// `counts` by `name`, the largest first, at most `top`.
fn by_reason(counts: &[(u64, u64)], name: fn(u64) -> String, top: usize) -> String {
    let mut counts = counts.to_vec();
    counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    counts
        .iter()
        .take(top)
        .map(|&(reason, n)| format!("{} {n}", name(reason)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn boot_figures(run: &ScenarioRun, name: &str) -> Result<Boot, String> {
    let stamp = run.out_file(&format!("{name}.stamp"));
    let record = stamp
        .lines()
        .find_map(|l| Record::parse_prefixed("", l))
        .filter(|r| r.kind == "stamp")
        .ok_or_else(|| format!("{name}: no stamp: {stamp}"))?;
    let number = |key: &str| -> Result<f64, String> {
        let value: i64 = record
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name}: no {key} in {stamp}"))?;
        if value < 0 {
            return Err(format!(
                "{name}: never came: {key}\n{}",
                run.out_file(&format!("{name}.serial"))
            ));
        }
        Ok(value as f64)
    };
    if record.get("status") != Some("0") {
        return Err(format!(
            "{name}: exited with {:?}\n{}",
            record.get("status"),
            run.out_file(&format!("{name}.log"))
        ));
    }
    Ok(Boot {
        userspace_ms: number("mark_ms")?,
        exit_ms: number("exit_ms")?,
        maxrss_kib: number("maxrss_kb")?,
        exits: histogram(&run.out_file(&format!("{name}.exits"))),
        to_vmm: histogram(&run.out_file(&format!("{name}.uexits"))),
    })
}

pub fn linux_bench(runs: usize, ch: Option<&PathBuf>) -> Result<(), String> {
    println!("\n## Linux to userspace: vmm, Cloud Hypervisor and QEMU in one place\n");
    let runs = runs.max(1);
    let qemu = paths::find_program("qemu-system-x86_64");
    let vmlinux = linux::debian_vmlinux()?;
    let mut s = Scenario::new("bench-linux")?;
    s.guest("up.cpio", &GuestInit::new("report up"))?
        .host_programs()
        .l1(4096, 1);
    let tools = s.scratch_dir("tools")?;
    let stamp = static_c::build("stamp-run", static_c::STAMP_RUN, &tools)?;
    s.input("stamp-run", &stamp)?;
    let cpio = s.input_path("up.cpio");
    let all = contenders(ch, qemu, &vmlinux, &cpio);
    s.script(&PRELUDE.replace("__MARK__", MARK));
    for round in 0..=runs {
        for c in &all {
            s.script(&format!("boot {}-{round} {}", c.name, c.command));
        }
    }
    s.timeout(Duration::from_secs(
        300 + 120 * (runs as u64 + 1) * all.len() as u64,
    ));
    let run = s.run()?;
    println!(
        "{}, 1 vCPU, 512 MiB, `{CMDLINE}`, a busybox initramfs that prints `{MARK}` and \
         powers off; {runs} runs each after a warm-up round, the VMMs taking turns. \
         Times from the VMM's start (stamp-run), medians with the range.\n",
        match run.tier {
            test_infra::LinuxTier::Nested => "Nested in an L1 under QEMU TCG (emulated SVM)",
            test_infra::LinuxTier::Direct => "On the host's KVM",
        }
    );
    println!(
        "| VMM | userspace ms | power-off ms | exits | most exits | exits to the VMM | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut userspace = Vec::new();
    for c in &all {
        let boots: Vec<Boot> = (1..=runs)
            .map(|round| boot_figures(&run, &format!("{}-{round}", c.name)))
            .collect::<Result<_, _>>()?;
        let column = |f: fn(&Boot) -> f64| median_spread(boots.iter().map(f).collect());
        let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.0} ({lo:.0}-{hi:.0})");
        // The median boot by exits, and its exits by reason.
        let mut by_exits: Vec<&Boot> = boots.iter().collect();
        by_exits.sort_by_key(|b| Boot::total(&b.exits));
        let typical = by_exits[by_exits.len() / 2];
        let rss = median(boots.iter().map(|b| b.maxrss_kib).collect()) / 1024.0;
        let up = column(|b| b.userspace_ms);
        println!(
            "| {} | {} | {} | {} | {} | {} | {rss:.1} |",
            c.name,
            show(up),
            show(column(|b| b.exit_ms)),
            Boot::total(&typical.exits),
            by_reason(&typical.exits, exit_reason, 5),
            by_reason(&typical.to_vmm, userspace_reason, 4),
        );
        userspace.push((c.name, up.0));
    }
    if let Some((_, ours)) = userspace.first().copied() {
        println!("\n| time to userspace | vmm / it |");
        println!("|---|---|");
        for (name, theirs) in userspace.iter().skip(1) {
            println!("| {name} | {:.2} |", ours / theirs);
        }
    }
    if ch.is_none() {
        println!(
            "\nCloud Hypervisor not given (--cloud-hypervisor PATH or CLOUD_HYPERVISOR=PATH)."
        );
    }
    Ok(())
}
