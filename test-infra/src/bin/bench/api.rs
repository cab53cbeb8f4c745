//! The API's round trips: `vmm.ping` on one kept-alive connection and on
//! a new connection each time (as curl and ch-remote make them), and the
//! time from `PUT vm.pause` to its answer (every vCPU parked, every
//! device stopped) and from `PUT vm.resume` to its answer, with the probe
//! guest ticking. Against Cloud Hypervisor, same guest, same client, when
//! it is given.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_infra::api::wait_for_socket;
use test_infra::paths;

/// One request on `stream`; returns the status.
fn exchange(stream: &mut UnixStream, method: &str, name: &str) -> Result<u16, String> {
    test_infra::api::exchange(stream, method, name, None).map(|(status, _)| status)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(at).copied().unwrap_or(f64::NAN)
}

fn micros(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6
}

struct Figures {
    ping_kept: Vec<f64>,
    ping_new: Vec<f64>,
    pause: Vec<f64>,
    resume: Vec<f64>,
}

fn measure(socket: &Path, runs: usize) -> Result<Figures, String> {
    let connect = || UnixStream::connect(socket).map_err(|e| format!("connect: {e}"));
    let mut figures = Figures {
        ping_kept: Vec::new(),
        ping_new: Vec::new(),
        pause: Vec::new(),
        resume: Vec::new(),
    };
    let mut kept = connect()?;
    for _ in 0..runs * 10 {
        let start = Instant::now();
        exchange(&mut kept, "GET", "vmm.ping")?;
        figures.ping_kept.push(micros(start));
    }
    for _ in 0..runs * 10 {
        let start = Instant::now();
        exchange(&mut connect()?, "GET", "vmm.ping")?;
        figures.ping_new.push(micros(start));
    }
    for _ in 0..runs {
        let start = Instant::now();
        let status = exchange(&mut connect()?, "PUT", "vm.pause")?;
        figures.pause.push(micros(start));
        let start = Instant::now();
        let resumed = exchange(&mut connect()?, "PUT", "vm.resume")?;
        figures.resume.push(micros(start));
        if !(200..300).contains(&status) || !(200..300).contains(&resumed) {
            return Err(format!("pause answered {status}, resume {resumed}"));
        }
        // The guest runs a little between two pauses.
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(figures)
}

/// Starts `program` with the probe ticking and an API socket in `dir`.
fn start(program: &Path, probe: &Path, dir: &Path) -> Result<(Child, PathBuf), String> {
    let socket = dir.join("api.sock");
    let child = Command::new(program)
        .arg("--kernel")
        .arg(probe)
        .args(["--cmdline", "probe.run=tick probe.tick_ms=100"])
        .args(["--cpus", "boot=2", "--memory", "size=512M"])
        .args(["--serial", "null", "--console", "off"])
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    wait_for_socket(&socket, Duration::from_secs(30))?;
    Ok((child, socket))
}

pub fn api_bench(runs: usize, ch: Option<&PathBuf>) -> Result<(), String> {
    println!("\n## The API: round trips over its Unix socket (µs; probe guest ticking, 2 vCPUs)\n");
    let probe = paths::probe_guest()?;
    let mut peers = vec![("vmm", paths::vmm_binary()?)];
    if let Some(ch) = ch {
        peers.push(("cloud-hypervisor", ch.clone()));
    }
    println!("| VMM | ping, one connection p50 / p99 | ping, new connection p50 / p99 | pause p50 / p99 | resume p50 / p99 |");
    println!("|---|---|---|---|---|");
    for (name, program) in peers {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (mut child, socket) = start(&program, &probe, dir.path())?;
        let measured = measure(&socket, runs);
        let _ = child.kill();
        let _ = child.wait();
        let mut f = measured.map_err(|e| format!("{name}: {e}"))?;
        let cell = |values: &mut Vec<f64>| {
            format!(
                "{:.0} / {:.0}",
                percentile(values, 0.5),
                percentile(values, 0.99)
            )
        };
        println!(
            "| {name} | {} | {} | {} | {} |",
            cell(&mut f.ping_kept),
            cell(&mut f.ping_new),
            cell(&mut f.pause),
            cell(&mut f.resume)
        );
    }
    println!(
        "\n{} pings each way and {runs} pause/resume pairs per VMM; a pause answers once every vCPU is parked and every device stopped.",
        runs * 10
    );
    Ok(())
}
