//! virtio-fs through real virtiofsd: the FUSE operations the probe times.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use test_infra::guest::{Guest, Hypervisor};
use test_infra::paths;
use test_infra::virtiofsd::Virtiofsd;
use test_infra::vmm::GuestRun;

use super::*;

const FS_METRICS: [(&str, &str); 6] = [
    ("getattr_ns", "GETATTR ns"),
    ("creates_per_s", "creates/s"),
    ("write_4k_mbps", "WRITE 4K MB/s"),
    ("write_large_mbps", "WRITE 1M MB/s"),
    ("read_4k_mbps", "READ 4K MB/s"),
    ("read_large_mbps", "READ 1M MB/s"),
];

fn fs_run(peer: &str, ch: Option<&PathBuf>, dir: &std::path::Path) -> Result<GuestRun, String> {
    let fs = Virtiofsd::start(dir, "myfs")?;
    let cmdline = "probe.run=fs probe.fs.ops=off probe.fs.bench=on";
    // Cloud Hypervisor cannot move its 64-bit BARs into the probe's window.
    let ch_cmdline = format!("{cmdline} probe.pci.bars=keep");
    let run = match peer {
        "vmm" => {
            let mut cmd = Guest::probe(Hypervisor::Vmm, cmdline)
                .virtiofs(&fs)
                .vmm_command()?;
            cmd.arg("-v");
            cmd.run(dir)?
        }
        "qemu" => Guest::probe(Hypervisor::Qemu, cmdline)
            .virtiofs(&fs)
            .run(dir)?,
        _ => {
            let ch = ch.ok_or("no cloud-hypervisor")?;
            let mut cmd = Command::new(ch);
            cmd.arg("--kernel")
                .arg(paths::probe_guest()?)
                .args(["--cmdline", &ch_cmdline])
                .args([
                    "--memory",
                    "size=512M,shared=on",
                    "--serial",
                    "tty",
                    "--console",
                    "off",
                ])
                .arg("--generic-vhost-user")
                .arg(format!(
                    "socket={},virtio_id=26,queue_sizes=[512,512]",
                    test_infra::guest::quote(&fs.socket().to_string_lossy())
                ));
            let output = test_infra::process::Child::spawn("cloud-hypervisor", cmd, dir)
                .map_err(|e| e.to_string())?
                .wait(Duration::from_secs(120))
                .map_err(|e| e.to_string())?;
            let report = test_infra::ProbeReport::parse(&output.stdout);
            GuestRun { output, report }
        }
    };
    if !run.report.passed() {
        return Err(format!("{peer}: {}", run.output.describe()));
    }
    Ok(run)
}

pub fn fs_bench(runs: usize, ch: Option<&PathBuf>) {
    println!("\n## virtio-fs through virtiofsd: FUSE operations timed by the guest (median of {runs} runs)\n");
    let mut peers = vec!["vmm", "qemu"];
    if ch.is_some() {
        peers.push("cloud-hypervisor");
    }
    // Runs take turns between the VMMs, so that a machine that slows down
    // or speeds up during the bench weighs on every VMM alike.
    struct Samples {
        values: Vec<Vec<f64>>,
        exits: Vec<f64>,
        failed: bool,
    }
    let mut samples: Vec<Samples> = peers
        .iter()
        .map(|_| Samples {
            values: vec![Vec::new(); FS_METRICS.len()],
            exits: Vec::new(),
            failed: false,
        })
        .collect();
    for _ in 0..runs {
        for (peer, s) in peers.iter().zip(samples.iter_mut()) {
            if s.failed {
                continue;
            }
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("bench: {e}");
                    return;
                }
            };
            match fs_run(peer, ch, dir.path()) {
                Ok(run) => {
                    if let Some(record) = run.report.first_at("fs", "bench") {
                        for (i, (key, _)) in FS_METRICS.iter().enumerate() {
                            s.values[i].push(record.number(key).unwrap_or(0) as f64);
                        }
                    }
                    if let Some(n) = vmm_exits(&run) {
                        s.exits.push(n as f64);
                    }
                }
                Err(e) => {
                    eprintln!("bench: {e}");
                    s.failed = true;
                }
            }
        }
    }
    let rows: Vec<(&str, Vec<f64>, f64)> = peers
        .iter()
        .zip(samples)
        .filter(|(_, s)| !s.values[0].is_empty())
        .map(|(peer, s)| {
            (
                *peer,
                s.values.into_iter().map(median).collect(),
                median(s.exits),
            )
        })
        .collect();
    let header: Vec<&str> = FS_METRICS.iter().map(|(_, h)| *h).collect();
    println!("| VMM | {} | exits to VMM |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(FS_METRICS.len()));
    for (peer, values, exits) in &rows {
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
        let exits = if *exits > 0.0 {
            format!("{exits:.0}")
        } else {
            "-".into()
        };
        println!("| {peer} | {} | {exits} |", cells.join(" | "));
    }
    if let Some((_, ours, _)) = rows.iter().find(|r| r.0 == "vmm") {
        for (peer, theirs, _) in rows.iter().filter(|r| r.0 != "vmm") {
            let ratios: Vec<String> = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| {
                    if *b > 0.0 {
                        format!("{:.2}", a / b)
                    } else {
                        "-".into()
                    }
                })
                .collect();
            println!(
                "\nvmm/{peer} ({}): {}",
                header.join(", "),
                ratios.join(", ")
            );
        }
    }
}
