//! Start-up benchmark: `vmm` against QEMU (and Cloud Hypervisor when given)
//! booting the probe guest. Prints, per VMM and memory size, the median and
//! spread of the time from process start to the guest's first serial byte
//! and to `probe: result=pass`, and the VMM's peak RSS.
//!
//! Then, through real virtiofsd, the FUSE operations the probe guest times
//! itself (`vmm`'s generic device against QEMU's vhost-user-fs-pci and
//! Cloud Hypervisor's generic device, same virtiofsd, same guest), the
//! notification round trip through the echo mock by queue size and device
//! count, with `vmm`'s exits per round trip, and virtio-blk on one image
//! (blk.rs), and the API's round trips and pause latency (api.rs). Last,
//! the wall time of the whole integration suite (built first, so only the
//! run is timed).
//!
//! Usage: bench [--runs N] [--fs-runs N] [--only startup|fs|echo|blk|api|nested|suite]
//! [--cloud-hypervisor PATH] (or CLOUD_HYPERVISOR=PATH). `--runs` is per
//! start-up row (default 20) and per blk row (default 5). Ratios within one
//! run are what count: the machines are shared and absolute figures are
//! noisy.

mod api;
mod blk;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_infra::guest::{Guest, Hypervisor};
use test_infra::virtiofsd::Virtiofsd;
use test_infra::vmm::{GuestRun, VmmCommand};
use test_infra::{paths, MockOptions};

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

fn median_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    (median, values[0], values[values.len() - 1])
}

fn startup(runs: usize, ch: Option<&PathBuf>, vmm: &PathBuf, probe: &PathBuf) {
    println!("## Start-up: process start to the probe's first serial byte and to result=pass\n");
    let qemu = paths::find_program("qemu-system-x86_64");
    let cmdline = "probe.run=boot";

    let mut rows = Vec::new();
    for size_mib in [512u64, 16384] {
        let mut peers: Vec<(&str, Command)> = Vec::new();
        let mut c = Command::new(vmm);
        c.arg("--kernel").arg(probe).args(["--cmdline", cmdline]);
        c.args([
            "--memory",
            &format!("size={size_mib}M"),
            "--serial",
            "tty",
            "--console",
            "off",
        ]);
        peers.push(("vmm", c));
        if let Some(ch) = ch {
            let mut c = Command::new(ch);
            c.arg("--kernel").arg(probe).args(["--cmdline", cmdline]);
            c.args([
                "--memory",
                &format!("size={size_mib}M"),
                "--serial",
                "tty",
                "--console",
                "off",
            ]);
            peers.push(("cloud-hypervisor", c));
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

/// Median of the values, or 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `vmm`'s exits to user space, from its `-v` log.
fn vmm_exits(run: &GuestRun) -> Option<u64> {
    run.output
        .stderr
        .lines()
        .filter(|l| l.contains("exits to vmm"))
        .map(|l| {
            l.split(" after ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .reduce(|a, b| a + b)
}

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

fn fs_bench(runs: usize, ch: Option<&PathBuf>) {
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

fn echo_run(devices: usize, qsize: u32, rounds: u32) -> Result<(f64, f64, u64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mocks = (0..devices)
        .map(|i| {
            MockOptions::new(&format!("echo{i}"))
                .queue_max(32768)
                .start(dir.path())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut cmd = VmmCommand::probe(&format!(
        "probe.run=echo probe.echo.rounds={rounds} probe.echo.bytes=256"
    ))?;
    cmd.args(["--memory", "size=512M,shared=on", "-v"]);
    for m in &mocks {
        cmd.arg("--generic-vhost-user")
            .arg(format!("{},config_size=0", m.device("60", &[qsize, qsize])));
    }
    let run = cmd.run(dir.path())?;
    if !run.report.passed() {
        return Err(run.output.describe());
    }
    let summaries: Vec<_> = run
        .report
        .all("echo")
        .filter(|r| r.get("checked").is_some())
        .collect();
    let avg = median(
        summaries
            .iter()
            .map(|r| r.number("rtt_ns_avg").unwrap_or(0) as f64)
            .collect(),
    );
    let min = median(
        summaries
            .iter()
            .map(|r| r.number("rtt_ns_min").unwrap_or(0) as f64)
            .collect(),
    );
    Ok((avg, min, vmm_exits(&run).unwrap_or(0)))
}

fn echo_bench(runs: usize) {
    println!("\n## Notification round trip through vhost-user-mock (guest kick -> backend -> call -> guest interrupt), 256 bytes, median of {runs} runs\n");
    println!("| devices | queue size | round trip us (avg) | round trip us (min) | exits to vmm per round trip |");
    println!("|---|---|---|---|---|");
    const ROUNDS: u32 = 256;
    for (devices, qsize) in [(1, 64), (1, 256), (1, 1024), (4, 256), (16, 256)] {
        let mut avgs = Vec::new();
        let mut mins = Vec::new();
        let mut per_round = Vec::new();
        for _ in 0..runs {
            // The same VM with 16 round trips: the difference is what the
            // data path costs in exits.
            let outcome = echo_run(devices, qsize, ROUNDS)
                .and_then(|many| echo_run(devices, qsize, 16).map(|few| (many, few)));
            match outcome {
                Ok(((avg, min, exits), (_, _, base))) => {
                    avgs.push(avg / 1000.0);
                    mins.push(min / 1000.0);
                    let extra = exits.saturating_sub(base) as f64;
                    per_round.push(extra / f64::from((ROUNDS - 16) * devices as u32));
                }
                Err(e) => {
                    eprintln!("bench: echo {devices}x{qsize}: {e}");
                    break;
                }
            }
        }
        if avgs.is_empty() {
            continue;
        }
        println!(
            "| {devices} | {qsize} | {:.1} | {:.1} | {:.3} |",
            median(avgs),
            median(mins),
            median(per_round)
        );
    }
}

fn main() {
    let mut runs: Option<usize> = None;
    let mut fs_runs = 5usize;
    let mut only: Option<String> = None;
    let mut ch = std::env::var_os("CLOUD_HYPERVISOR").map(PathBuf::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).or(runs),
            "--fs-runs" => fs_runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(fs_runs),
            "--only" => only = args.next(),
            "--cloud-hypervisor" => ch = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!(
                    "bench [--runs N] [--fs-runs N] [--only startup|fs|echo|blk|api|nested|suite] [--cloud-hypervisor PATH]"
                );
                return;
            }
            other => {
                eprintln!("bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let (vmm, probe) = match (paths::vmm_binary(), paths::probe_guest()) {
        (Ok(v), Ok(p)) => (v, p),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let wanted = |s: &str| only.as_deref().is_none_or(|o| o == s);
    if wanted("startup") {
        startup(runs.unwrap_or(20), ch.as_ref(), &vmm, &probe);
    }
    if wanted("fs") {
        fs_bench(fs_runs, ch.as_ref());
    }
    if wanted("echo") {
        echo_bench(fs_runs);
    }
    if wanted("blk") {
        if let Err(e) = blk::blk_bench(runs.unwrap_or(5), ch.as_ref()) {
            eprintln!("bench: blk: {e}");
        }
    }
    if wanted("api") {
        if let Err(e) = api::api_bench(runs.unwrap_or(100), ch.as_ref()) {
            eprintln!("bench: api: {e}");
        }
    }
    if wanted("nested") {
        if let Err(e) = nested_bench(fs_runs) {
            eprintln!("bench: nested: {e}");
        }
    }
    if wanted("suite") {
        if let Err(e) = suite_time() {
            eprintln!("bench: suite: {e}");
        }
    }
}

/// Times `cargo nextest run` of the integration suite, as `ci/test` runs
/// it, after building it so that compilation is not counted.
fn suite_time() -> Result<(), String> {
    println!("\n## The integration suite (cargo nextest run -p integration-tests --release)\n");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let nextest = |extra: &[&str]| {
        let mut c = Command::new(&cargo);
        c.current_dir(paths::workspace_root())
            .args(["nextest", "run", "-p", "integration-tests", "--release"])
            .args(extra);
        c
    };
    let built = nextest(&["--no-run", "--cargo-quiet"])
        .status()
        .map_err(|e| format!("cargo nextest: {e}"))?;
    if !built.success() {
        return Err(format!("building the suite failed ({built})"));
    }
    let start = Instant::now();
    let output = nextest(&["--no-fail-fast", "--cargo-quiet"])
        .output()
        .map_err(|e| format!("cargo nextest: {e}"))?;
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stderr
        .lines()
        .find(|l| l.contains("Summary ["))
        .map(|l| l.split("] ").nth(1).unwrap_or(l).trim().to_string())
        .ok_or_else(|| format!("no summary from nextest:\n{stderr}"))?;
    println!("| wall time s | cores | tests |");
    println!("|---|---|---|");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("| {:.1} | {cores} | {summary} |", wall.as_secs_f64());
    let mut failed: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("FAIL ["))
        .collect();
    failed.sort_unstable();
    failed.dedup();
    for line in failed {
        println!("\n{line}");
    }
    Ok(())
}

/// The time `vmm` logged when the guest powered off, from its own start.
fn stop_ms(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("VM stopping"))?;
    line.split_once('+')?.1.split_once("ms")?.0.parse().ok()
}

/// Inside one L1 (nested runner): `vmm` with 512M and 16G taking turns,
/// and Debian's kernel to userspace, each timed by `vmm`'s own log from
/// its start to the guest's power-off. TCG timings: only the ratios mean
/// anything.
fn nested_bench(runs: usize) -> Result<(), String> {
    use test_infra::linux::GuestInit;
    println!("\n## Nested: inside one L1 under QEMU TCG (emulated SVM, TDP MMU)\n");
    println!(
        "Absolute times are emulator times, tens of times slower than hardware; \
         compare within a row only.\n"
    );
    let mut s = test_infra::Scenario::new("bench")?;
    s.guest("up.cpio", &GuestInit::new("report up"))?
        .l1(4096, 1)
        .timeout(Duration::from_secs(120 + 60 * runs as u64));
    for i in 0..runs {
        for size in ["512M", "16G"] {
            s.script(&format!(
                "run_vmm probe-{size}-{i} 60 --kernel \"$PROBE\" --cmdline probe.run=boot \
                 --memory size={size} --console off"
            ));
        }
        s.script(&format!(
            "run_vmm linux-{i} 120 --kernel \"$VMLINUX\" --initramfs \"$IN/up.cpio\" \
             --cmdline 'console=ttyS0 quiet panic=-1' --memory size=512M --console off"
        ));
    }
    let run = s.run()?;
    let times = |prefix: &str| -> Vec<f64> {
        (0..runs)
            .filter_map(|i| stop_ms(&run.out_file(&format!("{prefix}-{i}.vmm.log"))))
            .collect()
    };
    let (small, large, linux) = (times("probe-512M"), times("probe-16G"), times("linux"));
    if small.len() != runs || large.len() != runs || linux.len() != runs {
        return Err(format!("some runs did not finish\n{}", run.describe()));
    }
    let (small, large, linux) = (median(small), median(large), median(linux));
    println!("| what | median ms ({runs} runs) |");
    println!("|---|---|");
    println!("| probe guest powered off, 512M | {small:.1} |");
    println!("| probe guest powered off, 16G | {large:.1} |");
    println!("| 16G / 512M | {:.2} |", large / small);
    println!("| Linux (vmlinux, 512M) to userspace and power-off | {linux:.0} |");
    println!(
        "\nNot measured yet: QEMU `-accel kvm` in the same L1 (its binary, libraries and \
         firmware are not in the L1 image)."
    );
    Ok(())
}
