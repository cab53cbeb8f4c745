//! Snapshot and restore: the probe guest ticking every millisecond with
//! little memory touched, paused and snapshotted through the API; then a
//! new VMM process restores it with `resume`. Per VMM and memory size:
//! the time `vm.snapshot` takes to answer, the memory file's size as
//! written (apparent and allocated on disk), and the time from the
//! restoring process's start to the guest's next tick on its serial
//! port. Against Cloud Hypervisor, same guest, same client, when given.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_infra::api::{put, wait_for_socket};
use test_infra::paths;

const DEADLINE: Duration = Duration::from_secs(60);

struct Figures {
    snapshot_ms: Vec<f64>,
    restore_ms: Vec<f64>,
    apparent: u64,
    allocated: u64,
}

fn last_tick(serial: &Path) -> Option<u64> {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("probe: tick "))
        .find_map(|n| n.trim().parse().ok())
}

fn spawn(program: &Path, args: &[String]) -> Result<Child, String> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One snapshot and one restore of a `mib` MiB guest under `program`.
fn once(
    program: &Path,
    probe: &Path,
    mib: u64,
    dir: &Path,
    figures: &mut Figures,
) -> Result<(), String> {
    let serial = dir.join("serial.log");
    let socket = dir.join("api.sock");
    let snap = dir.join("snap");
    let _ = std::fs::remove_dir_all(&snap);
    let args = vec![
        "--kernel".into(),
        probe.display().to_string(),
        "--cmdline".into(),
        "probe.run=tick probe.tick_ms=1".into(),
        "--memory".into(),
        format!("size={mib}M"),
        "--serial".into(),
        format!("file={}", serial.display()),
        "--console".into(),
        "off".into(),
        "--api-socket".into(),
        format!("path={}", socket.display()),
    ];
    let child = spawn(program, &args)?;
    let ran = (|| {
        wait_for_socket(&socket, DEADLINE)?;
        let start = Instant::now();
        while last_tick(&serial).unwrap_or(0) < 100 {
            if start.elapsed() > DEADLINE {
                return Err("the guest did not tick".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        put(&socket, "vm.pause", None)?;
        let body = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
        let start = Instant::now();
        put(&socket, "vm.snapshot", Some(&body))?;
        figures
            .snapshot_ms
            .push(start.elapsed().as_secs_f64() * 1e3);
        Ok(last_tick(&serial).unwrap_or(0))
    })();
    stop(child);
    let saved_tick = ran?;
    let memory = std::fs::metadata(snap.join("memory-ranges")).map_err(|e| e.to_string())?;
    figures.apparent = memory.len();
    figures.allocated = memory.blocks() * 512;

    let _ = std::fs::remove_file(&socket);
    let start = Instant::now();
    let child = spawn(
        program,
        &[
            "--api-socket".into(),
            format!("path={}", socket.display()),
            "--restore".into(),
            format!("source_url=file://{},resume=true", snap.display()),
        ],
    )?;
    let mut ran = Err("the restored guest did not tick".to_string());
    while start.elapsed() < DEADLINE {
        if last_tick(&serial).is_some_and(|t| t > saved_tick) {
            ran = Ok(start.elapsed().as_secs_f64() * 1e3);
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    stop(child);
    figures.restore_ms.push(ran?);
    Ok(())
}

pub fn snapshot_bench(runs: usize, ch: Option<&PathBuf>) -> Result<(), String> {
    println!("\n## Snapshot and restore (probe guest ticking every ms, little memory touched)\n");
    let probe = paths::probe_guest()?;
    let mut peers = vec![("vmm", paths::vmm_binary()?)];
    if let Some(ch) = ch {
        peers.push(("cloud-hypervisor", ch.clone()));
    }
    println!("| VMM | memory | vm.snapshot ms (median, min-max) | restore to the next tick ms (median, min-max) | memory file: apparent / on disk |");
    println!("|---|---|---|---|---|");
    for mib in [512u64, 4096] {
        for (name, program) in &peers {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let mut figures = Figures {
                snapshot_ms: Vec::new(),
                restore_ms: Vec::new(),
                apparent: 0,
                allocated: 0,
            };
            let failed = (0..runs)
                .map(|_| once(program, &probe, mib, dir.path(), &mut figures))
                .find_map(Result::err);
            if let Some(why) = failed {
                // A peer that cannot snapshot here is a figure too.
                let why: String = why
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                println!("| {name} | {mib} MiB | failed: {why} | | |");
                continue;
            }
            let (s, smin, smax) = super::median_spread(figures.snapshot_ms);
            let (r, rmin, rmax) = super::median_spread(figures.restore_ms);
            println!(
                "| {name} | {mib} MiB | {s:.1} ({smin:.1}-{smax:.1}) | {r:.1} ({rmin:.1}-{rmax:.1}) | {} MiB / {:.1} MiB |",
                figures.apparent >> 20,
                figures.allocated as f64 / f64::from(1u32 << 20)
            );
        }
    }
    println!(
        "\n{runs} snapshots and restores per row, the VMMs taking turns by memory size; the restoring process is started with the snapshot and resume on, and timed to the guest's first tick past the saved one."
    );
    Ok(())
}
