//! Start-up: process start to the probe's first serial byte and to its
//! pass, and peak RSS, per VMM and memory size.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_infra::paths;

use super::*;

struct Sample {
    first_byte: Duration,
    pass: Duration,
    max_rss_kib: i64,
}

fn run_once(mut command: Command) -> Result<Sample, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = command.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut first_byte = None;
    let mut pass = None;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| start.elapsed());
        seen.extend_from_slice(&buf[..n]);
        if pass.is_none() && seen.windows(18).any(|w| w == b"probe: result=pass") {
            pass = Some(start.elapsed());
        }
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let status = std::process::ExitStatus::from_raw(status);
    if !status.success() {
        return Err(format!(
            "exited with {status}: {}",
            String::from_utf8_lossy(&seen)
        ));
    }
    Ok(Sample {
        first_byte: first_byte.ok_or("no serial output")?,
        pass: pass.ok_or("no result=pass")?,
        max_rss_kib: usage.ru_maxrss,
    })
}

pub fn startup(runs: usize, ch: Option<&PathBuf>, vmm: &Path, probe: &Path) {
    println!("## Start-up: process start to the probe's first serial byte and to result=pass\n");
    let qemu = paths::find_program("qemu-system-x86_64");
    let cmdline = "probe.run=boot";

    let mut rows = Vec::new();
    for size_mib in [512u64, 16384] {
        let mut peers: Vec<(&str, Command)> = Vec::new();
        // vmm and Cloud Hypervisor take the same command line.
        let ch_style = |binary: &Path| {
            let mut c = Command::new(binary);
            c.arg("--kernel").arg(probe).args(["--cmdline", cmdline]);
            c.args([
                "--memory",
                &format!("size={size_mib}M"),
                "--serial",
                "tty",
                "--console",
                "off",
            ]);
            c
        };
        peers.push(("vmm", ch_style(vmm)));
        if let Some(ch) = ch {
            peers.push(("cloud-hypervisor", ch_style(ch)));
        }
        if let Some(qemu) = &qemu {
            let mut c = Command::new(qemu);
            c.args([
                "-M",
                "microvm,pcie=on,acpi=on",
                "-enable-kvm",
                "-m",
                &format!("{size_mib}M"),
            ]);
            c.args([
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
                "-serial",
                "stdio",
            ]);
            c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
                .arg(probe);
            c.args(["-append", cmdline]);
            peers.push(("qemu", c));
        }
        // Runs take turns between the VMMs, as in the virtio-fs bench.
        let mut samples: Vec<Vec<Sample>> = peers.iter().map(|_| Vec::new()).collect();
        let mut failed = vec![false; peers.len()];
        for _ in 0..runs {
            for (i, (name, command)) in peers.iter().enumerate() {
                if failed[i] {
                    continue;
                }
                let mut cmd = Command::new(command.get_program());
                cmd.args(command.get_args());
                match run_once(cmd) {
                    Ok(s) => samples[i].push(s),
                    Err(e) => {
                        eprintln!("bench: {name} {size_mib} MiB: {e}");
                        failed[i] = true;
                    }
                }
            }
        }
        for ((name, _), samples) in peers.into_iter().zip(samples) {
            if samples.is_empty() {
                continue;
            }
            let ms = |f: fn(&Sample) -> Duration| {
                median_spread(samples.iter().map(|s| f(s).as_secs_f64() * 1e3).collect())
            };
            let first = ms(|s| s.first_byte);
            let pass = ms(|s| s.pass);
            let rss = median_spread(
                samples
                    .iter()
                    .map(|s| s.max_rss_kib as f64 / 1024.0)
                    .collect(),
            );
            rows.push((name, size_mib, first, pass, rss, samples.len()));
        }
    }

    println!("| VMM | memory | runs | first serial byte ms (median [min-max]) | result=pass ms (median [min-max]) | peak RSS MiB (median) |");
    println!("|---|---|---|---|---|---|");
    for (name, size, first, pass, rss, n) in &rows {
        println!(
            "| {name} | {size} MiB | {n} | {:.2} [{:.2}-{:.2}] | {:.2} [{:.2}-{:.2}] | {:.1} |",
            first.0, first.1, first.2, pass.0, pass.1, pass.2, rss.0
        );
    }
    println!();
    for size in [512u64, 16384] {
        let get = |n: &str| rows.iter().find(|r| r.0 == n && r.1 == size);
        if let Some(ours) = get("vmm") {
            for peer in ["qemu", "cloud-hypervisor"] {
                if let Some(p) = get(peer) {
                    println!(
                        "{size} MiB: vmm/{peer}: first byte {:.2}x, RSS {:.2}x",
                        ours.2 .0 / p.2 .0,
                        ours.4 .0 / p.4 .0
                    );
                }
            }
        }
    }
    let get = |size| {
        rows.iter()
            .find(|r| r.0 == "vmm" && r.1 == size)
            .map(|r| r.2 .0)
    };
    if let (Some(small), Some(big)) = (get(512), get(16384)) {
        println!("vmm first byte, 16 GiB vs 512 MiB: {:.2}x", big / small);
    }
}
