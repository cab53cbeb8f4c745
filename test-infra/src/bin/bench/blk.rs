//! The virtio-blk section: the probe's own `probe.blk.bench` on one image
//! under `vmm --disk`, QEMU's virtio-blk-pci and, when given, Cloud
//! Hypervisor's `--disk`; once through the host page cache and once with
//! O_DIRECT, the VMMs taking turns run by run.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_infra::disk::image_bytes;
use test_infra::guest::{Guest, Hypervisor};
use test_infra::vmm::GuestRun;
use test_infra::{paths, Disk, ProbeReport};

use super::{median_spread, vmm_exits};

const IMAGE_MIB: usize = 256;
/// Every measurement, with EVENT_IDX accepted as Linux's driver does; the
/// probe's defaults: 1 s each, 32 requests in flight, 200 flushes.
const CMDLINE: &str = "probe.run=blk probe.blk.bench=randread,randwrite,seqread,seqwrite,flush \
                       probe.virtio.features=20000000";
const TIMEOUT: Duration = Duration::from_secs(120);

/// (measurement, record field, column).
const METRICS: [(&str, &str, &str); 6] = [
    ("randread", "iops", "4K randread IOPS"),
    ("randwrite", "iops", "4K randwrite IOPS"),
    ("seqread", "mib_s", "1M seqread MiB/s"),
    ("seqwrite", "mib_s", "1M seqwrite MiB/s"),
    ("flush", "median_us", "flush median us"),
    ("flush", "p99_us", "flush p99 us"),
];
/// Flush latencies: lower is better.
const LATENCIES: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// `vmm` direct=off, QEMU cache=writeback.
    Host,
    /// `vmm` direct=on, QEMU cache=none.
    Direct,
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Cache::Host => "page cache",
            Cache::Direct => "O_DIRECT",
        }
    }

    fn disk(self, image: &Path) -> Disk {
        let disk = Disk::new(image).num_queues(1).queue_size(128);
        match self {
            Cache::Host => disk,
            Cache::Direct => disk.direct(),
        }
    }
}

/// What one run measured.
struct Sample {
    values: [f64; METRICS.len()],
    /// 4 KiB random reads per interrupt and per notification.
    reads_per_irq: f64,
    reads_per_notify: f64,
    exits: Option<u64>,
}

/// The `blk bench` record of measurement `op`.
fn bench_record<'a>(report: &'a ProbeReport, op: &str) -> Option<&'a test_infra::Record> {
    report.all("blk").find(|r| {
        r.positional.first().map(String::as_str) == Some("bench") && r.get("op") == Some(op)
    })
}

fn sample(run: &GuestRun) -> Result<Sample, String> {
    let mut values = [0.0; METRICS.len()];
    for (value, (op, key, _)) in values.iter_mut().zip(METRICS) {
        *value = bench_record(&run.report, op)
            .and_then(|r| r.number(key))
            .ok_or_else(|| format!("no `blk bench op={op}` record with {key}"))?
            as f64;
    }
    let reads = bench_record(&run.report, "randread").ok_or("no randread record")?;
    let per = |key: &str| {
        let n = reads.number(key).unwrap_or(0);
        let ops = reads.number("ops").unwrap_or(0);
        if n == 0 {
            f64::NAN
        } else {
            ops as f64 / n as f64
        }
    };
    Ok(Sample {
        values,
        reads_per_irq: per("irqs"),
        reads_per_notify: per("notifies"),
        exits: vmm_exits(run),
    })
}

fn blk_run(peer: &str, ch: Option<&PathBuf>, disk: &Disk, dir: &Path) -> Result<Sample, String> {
    let run = match peer {
        "vmm" => {
            let mut cmd = Guest::probe(Hypervisor::Vmm, CMDLINE)
                .disk(disk.clone())
                .timeout(TIMEOUT)
                .vmm_command()?;
            cmd.arg("-v");
            cmd.run(dir)?
        }
        "qemu" => Guest::probe(Hypervisor::Qemu, CMDLINE)
            .disk(disk.clone())
            .timeout(TIMEOUT)
            .run(dir)?,
        _ => {
            let ch = ch.ok_or("no cloud-hypervisor")?;
            let mut cmd = Command::new(ch);
            // Cloud Hypervisor cannot move its 64-bit BARs into the
            // probe's window; its --disk takes the same keys as ours.
            cmd.arg("--kernel")
                .arg(paths::probe_guest()?)
                .args(["--cmdline", &format!("{CMDLINE} probe.pci.bars=keep")])
                .args([
                    "--memory",
                    "size=512M",
                    "--serial",
                    "tty",
                    "--console",
                    "off",
                ])
                .arg("--disk")
                .arg(disk.vmm_arg());
            let output = test_infra::process::Child::spawn("cloud-hypervisor", cmd, dir)
                .map_err(|e| e.to_string())?
                .wait(TIMEOUT)
                .map_err(|e| e.to_string())?;
            let report = ProbeReport::parse(&output.stdout);
            GuestRun { output, report }
        }
    };
    if !run.report.passed() {
        return Err(format!("{peer}: {}", run.output.describe()));
    }
    sample(&run).map_err(|e| format!("{peer}: {e}\n{}", run.output.describe()))
}

/// A raw image of `IMAGE_MIB` MiB, every block written (no holes a read
/// could skip) and on disk before the first run.
fn make_image(path: &Path) -> Result<(), String> {
    let chunk = image_bytes(1 << 20, 0x5eed);
    let mut file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for _ in 0..IMAGE_MIB {
        file.write_all(&chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    file.sync_all()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The type of the file system `dir` is on, as `findmnt` names it
/// (`stat -f` says ext2/ext3 for ext4).
fn fs_type(dir: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn cell((median, min, max): (f64, f64, f64)) -> String {
    format!("{median:.0} [{min:.0}-{max:.0}]")
}

pub fn blk_bench(runs: usize, ch: Option<&PathBuf>) -> Result<(), String> {
    println!("\n## virtio-blk: the probe's own 4 KiB random, 1 MiB sequential and FLUSH figures (median [min-max] of {runs} runs)\n");
    // In target/, on the disk the checkout is on: /tmp may be a tmpfs,
    // which has no O_DIRECT.
    let dir = tempfile::Builder::new()
        .prefix("bench-blk-")
        .tempdir_in(paths::workspace_root().join("target"))
        .map_err(|e| format!("a directory in target/: {e}"))?;
    let image = dir.path().join("disk.img");
    make_image(&image)?;
    println!(
        "One {IMAGE_MIB} MiB raw image in target/ ({}), one queue of 128, 32 requests in flight, \
         EVENT_IDX; `vmm` direct=off vs QEMU cache=writeback (both through the host page cache, \
         FLUSH an fdatasync), then `vmm` direct=on vs QEMU cache=none (O_DIRECT).\n",
        fs_type(dir.path())
    );
    let mut peers = vec!["vmm", "qemu"];
    if ch.is_some() {
        peers.push("cloud-hypervisor");
    }
    let headers: Vec<&str> = METRICS.iter().map(|m| m.2).collect();
    let mut rows = Vec::new();
    for cache in [Cache::Host, Cache::Direct] {
        let disk = cache.disk(&image);
        let mut samples: Vec<Vec<Sample>> = peers.iter().map(|_| Vec::new()).collect();
        let mut failed = vec![false; peers.len()];
        // Runs take turns between the VMMs, so that a machine that slows
        // down or speeds up weighs on every VMM alike.
        for _ in 0..runs {
            for (i, peer) in peers.iter().enumerate() {
                if failed[i] {
                    continue;
                }
                // No run pays for the dirty pages the previous one left.
                File::open(&image)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| format!("{}: {e}", image.display()))?;
                match blk_run(peer, ch, &disk, dir.path()) {
                    Ok(s) => samples[i].push(s),
                    Err(e) => {
                        eprintln!("bench: blk {}: {e}", cache.name());
                        failed[i] = true;
                    }
                }
            }
        }
        for (peer, samples) in peers.iter().zip(samples) {
            if samples.is_empty() {
                continue;
            }
            let spread = |f: &dyn Fn(&Sample) -> f64| {
                median_spread(samples.iter().map(f).collect::<Vec<_>>())
            };
            let values: Vec<(f64, f64, f64)> = (0..METRICS.len())
                .map(|m| spread(&|s: &Sample| s.values[m]))
                .collect();
            let per_irq = spread(&|s: &Sample| s.reads_per_irq).0;
            let per_notify = spread(&|s: &Sample| s.reads_per_notify).0;
            let exits = samples
                .iter()
                .filter_map(|s| s.exits)
                .map(|e| e as f64)
                .collect::<Vec<_>>();
            let exits = (!exits.is_empty()).then(|| median_spread(exits).0);
            rows.push((
                cache,
                *peer,
                samples.len(),
                values,
                per_irq,
                per_notify,
                exits,
            ));
        }
    }

    println!(
        "| cache | VMM | runs | {} | 4K reads per interrupt | per notify | exits to VMM |",
        headers.join(" | ")
    );
    println!("|---|---|---|{}---|---|---|", "---|".repeat(METRICS.len()));
    for (cache, peer, n, values, per_irq, per_notify, exits) in &rows {
        let cells: Vec<String> = values.iter().copied().map(cell).collect();
        let exits = exits.map_or("-".into(), |e| format!("{e:.0}"));
        println!(
            "| {} | {peer} | {n} | {} | {per_irq:.1} | {per_notify:.1} | {exits} |",
            cache.name(),
            cells.join(" | ")
        );
    }
    for cache in [Cache::Host, Cache::Direct] {
        let find = |p: &str| rows.iter().find(|r| r.0 == cache && r.1 == p);
        let Some(ours) = find("vmm") else { continue };
        for peer in peers.iter().filter(|p| **p != "vmm") {
            let Some(theirs) = find(peer) else { continue };
            let ratios: Vec<String> = ours
                .3
                .iter()
                .zip(&theirs.3)
                .map(|(a, b)| {
                    if b.0 > 0.0 {
                        format!("{:.2}", a.0 / b.0)
                    } else {
                        "-".into()
                    }
                })
                .collect();
            println!(
                "\n{}: vmm/{peer} ({}): {}",
                cache.name(),
                headers.join(", "),
                ratios.join(", ")
            );
        }
    }
    println!(
        "\n(Rates: above 1 is faster. The last {LATENCIES} columns' ratios are latencies: below 1 is faster.)"
    );
    Ok(())
}
