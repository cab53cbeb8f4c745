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
//! (blk.rs), the API's round trips and pause latency (api.rs), and Linux
//! to userspace under vmm, Cloud Hypervisor and QEMU (linux.rs), and
//! snapshot and restore times and memory file sizes (snapshot.rs). Last,
//! the wall time of the whole integration suite (built first, so only the
//! run is timed).
//!
//! Usage: bench [--runs N] [--fs-runs N] [--only startup|fs|echo|blk|api|nested|linux|snapshot|suite]
//! [--cloud-hypervisor PATH] (or CLOUD_HYPERVISOR=PATH). `--runs` is per
//! start-up row (default 20), per blk row and per Linux VMM (default 5). Ratios within one
//! run are what count: the machines are shared and absolute figures are
//! noisy.

mod api;
mod blk;
mod echo;
mod fs;
mod linux;
mod nested;
mod snapshot;
mod startup;

use std::path::PathBuf;

use test_infra::paths;
use test_infra::vmm::GuestRun;

fn median_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    (median, values[0], values[values.len() - 1])
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
                    "bench [--runs N] [--fs-runs N] [--only startup|fs|echo|blk|api|nested|linux|snapshot|suite] [--cloud-hypervisor PATH]"
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
        startup::startup(runs.unwrap_or(20), ch.as_ref(), &vmm, &probe);
    }
    if wanted("fs") {
        fs::fs_bench(fs_runs, ch.as_ref());
    }
    if wanted("echo") {
        echo::echo_bench(fs_runs);
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
        if let Err(e) = nested::nested_bench(fs_runs) {
            eprintln!("bench: nested: {e}");
        }
    }
    if wanted("linux") {
        if let Err(e) = linux::linux_bench(runs.unwrap_or(5), ch.as_ref()) {
            eprintln!("bench: linux: {e}");
        }
    }
    if wanted("snapshot") {
        if let Err(e) = snapshot::snapshot_bench(runs.unwrap_or(5), ch.as_ref()) {
            eprintln!("bench: snapshot: {e}");
        }
    }
    if wanted("suite") {
        if let Err(e) = nested::suite_time() {
            eprintln!("bench: suite: {e}");
        }
    }
}
