//! The notification round trip through the echo mock, by queue size and
//! device count.

use test_infra::vmm::VmmCommand;
use test_infra::MockOptions;

use super::*;

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

pub fn echo_bench(runs: usize) {
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
