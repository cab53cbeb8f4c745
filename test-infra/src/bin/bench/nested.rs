//! The integration suite's wall time, and the nested runner's.

use std::process::Command;
use std::time::{Duration, Instant};

use test_infra::paths;

use super::*;

/// Times `cargo nextest run` of the integration suite, as `ci/test` runs
/// it, after building it so that compilation is not counted.
pub fn suite_time() -> Result<(), String> {
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
pub fn nested_bench(runs: usize) -> Result<(), String> {
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
