//! The conformance checks for a vhost-user backend: what the probe guest
//! must have reported for the backend to pass. The runner
//! (`vhost-user-conformance`) boots the guests; this module only judges
//! what they said. `preflight` talks to the backend itself before any
//! guest, `backend` judges what it answered, `catalogue` lists every
//! check, `report` writes the results (a table, JSON, JUnit XML) and
//! `progress` says on stderr what is going on.

pub mod backend;
pub mod catalogue;
pub mod kernel_log;
pub mod means;
pub mod preflight;
pub mod progress;
pub mod report;

use std::time::Duration;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::probe::{ProbeReport, Record};
use crate::vmm::GuestRun;

pub use report::{json, junit, table, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// A deviation, reported with its evidence; it does not fail the run
    /// by itself.
    Warn,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// What a check saw, as named values (hex bytes, counts), in the order
/// they were added: a JSON object, JUnit properties, lines in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence(Vec<(&'static str, String)>);

impl Evidence {
    pub fn new() -> Evidence {
        Evidence::default()
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Evidence {
        self.0.push((key, value.into()));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

impl Serialize for Evidence {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn as_ms<S: Serializer>(elapsed: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((elapsed.as_secs_f64() * 10_000.0).round() / 10.0)
}

/// One check's verdict. In JSON: `tier`, `check`, `status`, `ms`,
/// `detail` and, when there is any, `evidence`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub tier: &'static str,
    #[serde(rename = "check")]
    pub name: &'static str,
    pub status: Status,
    /// The boot (or the pre-flight) that decided it.
    #[serde(rename = "ms", serialize_with = "as_ms")]
    pub elapsed: Duration,
    /// Why it failed or was skipped; what was seen when it passed.
    pub detail: String,
    #[serde(skip_serializing_if = "Evidence::is_empty")]
    pub evidence: Evidence,
}

impl Check {
    pub fn new(
        tier: &'static str,
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
    ) -> Check {
        Check {
            tier,
            name,
            status,
            elapsed: Duration::ZERO,
            detail: detail.into(),
            evidence: Evidence::new(),
        }
    }

    pub fn with_evidence(mut self, evidence: Evidence) -> Check {
        self.evidence = evidence;
        self
    }

    pub fn after(mut self, elapsed: Duration) -> Check {
        self.elapsed = elapsed;
        self
    }
}

/// What the backend should look like, from the runner's command line.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub virtio_id: u32,
    pub queue_sizes: Vec<u32>,
}

struct Judge<'a> {
    tier: &'static str,
    run: &'a GuestRun,
    checks: Vec<Check>,
}

impl Judge<'_> {
    /// A failure in a guest that ran out of time says so first: the
    /// missing facts are the timeout's, which `--timeout-secs` sets.
    fn check(&mut self, name: &'static str, outcome: Result<String, String>) {
        let (status, detail) = match outcome {
            Ok(seen) => (Status::Pass, seen),
            Err(why) if self.run.output.timed_out() => (
                Status::Fail,
                format!(
                    "timeout: the guest did not finish within {} s (--timeout-secs; raise it for a slow backend or host): {why}",
                    self.run.output.elapsed.as_secs()
                ),
            ),
            Err(why) => (Status::Fail, why),
        };
        self.checks
            .push(Check::new(self.tier, name, status, detail).after(self.run.output.elapsed));
    }

    fn report(&self) -> &ProbeReport {
        &self.run.report
    }
}

/// The line `vmm` printed when it refused to start, if it did.
fn start_up_error(run: &GuestRun) -> Option<String> {
    run.output
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: error: "))
        .map(str::to_string)
}

fn guest_failure(report: &ProbeReport) -> Option<String> {
    match report.result() {
        Some(Err(reason)) => Some(reason),
        _ => None,
    }
}

/// The record of `kind` whose first word is the device's PCI address.
fn device_record<'a>(report: &'a ProbeReport, kind: &'a str, bdf: &str) -> Option<&'a Record> {
    report
        .all(kind)
        .find(|r| r.positional.len() == 1 && r.positional[0] == bdf)
}

/// The generic tier, from a run of `probe.run=pci,virtio,config`.
pub fn generic_tier(run: &GuestRun, want: &Expectation) -> Vec<Check> {
    let mut j = Judge {
        tier: "generic",
        run,
        checks: Vec::new(),
    };
    if let Some(error) = start_up_error(run) {
        j.check("connect-and-negotiate", Err(error));
        return j.checks;
    }
    j.check(
        "connect-and-negotiate",
        Ok("vmm connected and negotiated".into()),
    );
    let pci_id = format!("{:04x}", 0x1040 + want.virtio_id);
    let function = j
        .report()
        .all("pci")
        .find(|r| r.get("vendor") == Some("1af4") && r.get("device") == Some(pci_id.as_str()))
        .and_then(|r| r.positional.first().cloned());
    let Some(bdf) = function else {
        j.check(
            "pci-identity",
            Err(format!(
                "no PCI function 1af4:{pci_id}; guest said {:?}",
                guest_failure(j.report())
            )),
        );
        return j.checks;
    };
    j.check("pci-identity", Ok(format!("1af4:{pci_id} at {bdf}")));
    let Some(virtio) = device_record(j.report(), "virtio", &bdf).cloned() else {
        let why = guest_failure(j.report()).unwrap_or_else(|| "no virtio record".into());
        j.check("driver-ok", Err(why));
        return j.checks;
    };
    let features = virtio.number("features").unwrap_or(0);
    j.check(
        "features",
        if features & (1 << 32) != 0 {
            Ok(format!("{features:#x}"))
        } else {
            Err(format!("VIRTIO_F_VERSION_1 missing from {features:#x}"))
        },
    );
    let sizes: Vec<String> = want.queue_sizes.iter().map(u32::to_string).collect();
    let sizes = sizes.join(",");
    j.check(
        "queues",
        if virtio.get("qsize") == Some(sizes.as_str()) {
            Ok(queues_text(&want.queue_sizes))
        } else {
            Err(format!(
                "guest saw queue sizes {:?}, configured {sizes}",
                virtio.get("qsize")
            ))
        },
    );
    let status = virtio.number("status").unwrap_or(0);
    j.check(
        "driver-ok",
        if status == 0x0f {
            Ok("status 0x0f after DRIVER_OK".into())
        } else {
            Err(format!(
                "status {status:#04x} after DRIVER_OK (0x40: the device needs reset)"
            ))
        },
    );
    match device_record(j.report(), "config", &bdf).cloned() {
        Some(config) => {
            let bytes = config.get("bytes").unwrap_or("");
            let all_ones = !bytes.is_empty() && bytes.chars().all(|c| c == 'f');
            j.check(
                "config-read",
                if config.get("needs_reset") == Some("no") && !all_ones {
                    Ok(format!(
                        "{} bytes: {bytes}",
                        config.get("len").unwrap_or("?")
                    ))
                } else {
                    Err(format!(
                        "read {bytes} with status {}: the access failed",
                        config.get("status").unwrap_or("?")
                    ))
                },
            );
        }
        None => j.check(
            "config-read",
            Err(guest_failure(j.report()).unwrap_or_else(|| "no config record".into())),
        ),
    }
    j.check(
        "reset-and-reinit",
        if virtio.get("reinit") == Some("ok") {
            Ok("reset, then the whole bring-up again".into())
        } else {
            Err("the second bring-up did not complete".into())
        },
    );
    j.check(
        "clean-exit",
        match (j.report().passed(), run.output.code()) {
            (true, Some(0)) => Ok("the guest powered off".into()),
            _ => Err(format!(
                "guest result {:?}, vmm exit status {:?}",
                j.report().result(),
                run.output.code()
            )),
        },
    );
    j.checks
}

/// The virtio-fs tier, from a run of `probe.run=fs` with a write, a list
/// and the namespace operations.
pub fn fs_tier(run: &GuestRun) -> Vec<Check> {
    let mut j = Judge {
        tier: "fs",
        run,
        checks: Vec::new(),
    };
    let report = j.report().clone();
    let fs: Vec<&Record> = report.all("fs").collect();
    let first = |word: &str| report.first_at("fs", word);
    let failure = || guest_failure(&report).unwrap_or_else(|| "no record".into());
    let session = fs.iter().find(|r| r.get("fuse").is_some());
    j.check(
        "fuse-init",
        session
            .map(|r| {
                format!(
                    "FUSE {} max_write {}",
                    r.get("fuse").unwrap_or("?"),
                    r.get("max_write").unwrap_or("?")
                )
            })
            .ok_or_else(failure),
    );
    j.check(
        "write-and-read-back",
        match (first("write"), first("remove")) {
            (Some(r), Some(gone)) if r.get("readback") == Some("ok") => {
                if gone.get("gone") == Some("1") {
                    Ok(format!(
                        "{} bytes, then removed from the share",
                        r.get("bytes").unwrap_or("?")
                    ))
                } else {
                    Err("the written file is still in the share after its unlink".into())
                }
            }
            (Some(r), None) if r.get("readback") == Some("ok") => {
                Err(format!("the written file was not removed: {}", failure()))
            }
            (Some(r), _) => Err(format!("read back {:?}", r.get("readback"))),
            (None, _) => Err(failure()),
        },
    );
    j.check(
        "list",
        first("list")
            .map(|r| format!("{} entries", r.get("entries").unwrap_or("?")))
            .ok_or_else(failure),
    );
    j.check(
        "namespace-operations",
        first("ops")
            .map(|_| "mkdir create rename unlink rmdir".into())
            .ok_or_else(failure),
    );
    j.check(
        "destroy",
        fs.iter()
            .find(|r| r.positional.get(1).map(String::as_str) == Some("done"))
            .map(|r| format!("{} requests", r.get("requests").unwrap_or("?")))
            .ok_or_else(failure),
    );
    j.checks
}

/// The echo tier (for backends that echo, such as vhost-user-mock).
pub fn echo_tier(run: &GuestRun) -> Vec<Check> {
    let mut j = Judge {
        tier: "echo",
        run,
        checks: Vec::new(),
    };
    let report = j.report().clone();
    let summary = report.all("echo").find(|r| r.get("checked").is_some());
    j.check(
        "round-trips",
        match summary {
            Some(r) => Ok(format!(
                "{} rounds, {} bytes checked, {} ns average",
                r.get("rounds").unwrap_or("?"),
                r.get("checked").unwrap_or("?"),
                r.get("rtt_ns_avg").unwrap_or("?")
            )),
            None => Err(guest_failure(&report).unwrap_or_else(|| "no echo record".into())),
        },
    );
    j.checks
}

/// The virtio-rng tier, from a run of `probe.run=rng`.
pub fn rng_tier(run: &GuestRun) -> Vec<Check> {
    let mut j = Judge {
        tier: "rng",
        run,
        checks: Vec::new(),
    };
    let report = j.report().clone();
    let outcome = match report.first("rng") {
        // 1 KiB of random bytes holds nearly every value; a device that
        // fills buffers with a constant or a short pattern does not.
        Some(r) if r.number("distinct").unwrap_or(0) >= 128 => Ok(format!(
            "{} bytes in {} requests, {} distinct values",
            r.get("bytes").unwrap_or("?"),
            r.get("requests").unwrap_or("?"),
            r.get("distinct").unwrap_or("?")
        )),
        Some(r) => Err(format!(
            "only {} distinct values in {} bytes",
            r.get("distinct").unwrap_or("?"),
            r.get("bytes").unwrap_or("?")
        )),
        None => Err(guest_failure(&report).unwrap_or_else(|| "no rng record".into())),
    };
    j.check("entropy", outcome);
    j.checks
}

/// The generic tier's reconnect, from a run of `probe.run=pci,reconnect`
/// whose backend was killed and started again: the guest saw the device
/// ask for a reset and brought it up again through the new backend.
pub fn reconnect_check(run: &GuestRun) -> Check {
    let report = &run.report;
    let outcome = match report
        .all("reconnect")
        .find(|r| r.get("needs_reset").is_some())
    {
        Some(r) if r.get("status") == Some("0x0f") && report.passed() => Ok(format!(
            "backend restarted: DEVICE_NEEDS_RESET after {} ms, up again after {} bring-up(s)",
            r.get("waited_ms").unwrap_or("?"),
            r.get("attempts").unwrap_or("?")
        )),
        Some(r) => Err(format!(
            "status {} after the backend restarted",
            r.get("status").unwrap_or("?")
        )),
        None => Err(guest_failure(report).unwrap_or_else(|| {
            format!(
                "no reconnect record (vmm exit status {:?})",
                run.output.code()
            )
        })),
    };
    let (status, detail) = match outcome {
        Ok(seen) => (Status::Pass, seen),
        Err(why) => (Status::Fail, why),
    };
    Check::new("generic", "reconnect", status, detail).after(run.output.elapsed)
}

/// A guest snapshotted mid-run and restored against a new backend: what
/// the first vmm's guest printed, the restored run, whether the device
/// was running at the snapshot, and its saved state.
pub struct SnapshotRun {
    pub before: String,
    pub after: GuestRun,
    pub running: bool,
    pub device: serde_json::Value,
}

/// The generic device's saved state in the snapshot at `dir`.
pub fn snapshot_device(dir: &std::path::Path) -> Result<serde_json::Value, String> {
    let path = dir.join("state.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    state["body"]["state"]["devices"]["pci"]
        .as_object()
        .and_then(|devices| devices.values().next())
        .map(|device| device["state"].clone())
        .ok_or_else(|| format!("{}: no device state", path.display()))
}

fn round_numbers(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("probe: round "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The generic tier's snapshot: the restored guest's rounds of device work
/// follow the last one before the snapshot and none fails. Says whether
/// the backend's own state went with the snapshot (DEVICE_STATE).
pub fn snapshot_check(run: &SnapshotRun) -> Check {
    let report = &run.after.report;
    let (before, after) = (
        round_numbers(&run.before),
        round_numbers(&run.after.output.stdout),
    );
    let state = &run.device["running"]["device"]["backend_state"];
    let device_state = match state.as_str() {
        Some(hex) => format!("DEVICE_STATE offered: {} bytes of backend state saved and loaded", hex.len() / 2),
        None if run.running => "no DEVICE_STATE: the backend's own state is not saved (its rings restart at their places)".to_owned(),
        None => "the device was between two rounds at every pause: rings and backend state not exercised".to_owned(),
    };
    let outcome = if let Some(why) = start_up_error(&run.after) {
        Err(format!("the restore failed: {why}"))
    } else if let Some(why) = guest_failure(report) {
        Err(format!("after the restore: {why}"))
    } else if after.len() < 2 {
        Err(format!(
            "the restored guest did {} round(s) of device work (vmm exit status {:?})",
            after.len(),
            run.after.output.code()
        ))
    } else if before.last().map(|n| n + 1) != after.first().copied() {
        Err(format!(
            "the rounds do not go on: {:?} before, {:?} after",
            before.last(),
            after.first()
        ))
    } else {
        Ok(format!(
            "{} rounds after the restore; {device_state}",
            after.len()
        ))
    };
    let evidence = Evidence::new().with("device_state", device_state.clone());
    let (status, detail) = match outcome {
        Ok(seen) => (Status::Pass, seen),
        Err(why) => (Status::Fail, why),
    };
    Check::new("generic", "snapshot", status, detail)
        .with_evidence(evidence)
        .after(run.after.output.elapsed)
}

pub fn skipped(tier: &'static str, name: &'static str, why: &str) -> Check {
    Check::new(tier, name, Status::Skip, why)
}

/// A check the runner could not even run to the end.
pub fn failed(tier: &'static str, name: &'static str, why: &str) -> Check {
    Check::new(tier, name, Status::Fail, why)
}

/// Whether the run passes: no check failed (warnings do not fail it).
pub fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// "1 queue of 256", "2 queues of 512,512".
pub fn queues_text(sizes: &[u32]) -> String {
    let list: Vec<String> = sizes.iter().map(u32::to_string).collect();
    let noun = if sizes.len() == 1 { "queue" } else { "queues" };
    format!("{} {noun} of {}", sizes.len(), list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Output;

    fn run(stdout: &str, stderr: &str, code: i32) -> GuestRun {
        use std::os::unix::process::ExitStatusExt;
        GuestRun {
            output: Output {
                name: "vmm".into(),
                status: Some(std::process::ExitStatus::from_raw(code << 8)),
                stdout: stdout.into(),
                stderr: stderr.into(),
                elapsed: Duration::from_millis(42),
            },
            report: ProbeReport::parse(stdout),
        }
    }

    const GOOD: &str = "\
probe: pci 00:01.0 vendor=1af4 device=105a class=0x018000 msix=3 bars=0:mem64:0xc0000000/0x8000
probe: virtio 00:01.0 id=26 features=0x100000000 queues=2 qsize=512,512 config_len=40 config=6d79 status=0x0f mode=irq isr=yes config_irqs=0 reinit=ok
probe: config 00:01.0 id=26 len=40 bytes=6d796673 beyond=00000000 status=0x0f needs_reset=no config_irqs=0
probe: result=pass
";

    fn fs() -> Expectation {
        Expectation {
            virtio_id: 26,
            queue_sizes: vec![512, 512],
        }
    }

    #[test]
    fn a_good_report_passes_every_generic_check() {
        let checks = generic_tier(&run(GOOD, "", 0), &fs());
        assert_eq!(checks.len(), 8, "{checks:?}");
        assert!(
            checks.iter().all(|c| c.status == Status::Pass),
            "{checks:?}"
        );
    }

    #[test]
    fn a_start_up_refusal_fails_with_vmm_s_reason() {
        let checks = generic_tier(
            &run(
                "",
                "vmm: error: device x: the backend lacks VHOST_USER_PROTOCOL_F_CONFIG\n",
                1,
            ),
            &fs(),
        );
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].detail.contains("PROTOCOL_F_CONFIG"));
        assert!(!all_passed(&checks));
    }

    #[test]
    fn a_failed_config_read_and_wrong_queues_fail_their_checks() {
        let bad = GOOD
            .replace("bytes=6d796673", "bytes=ffffffff")
            .replace("needs_reset=no", "needs_reset=yes")
            .replace("qsize=512,512", "qsize=256,256");
        let checks = generic_tier(&run(&bad, "", 0), &fs());
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, vec!["queues", "config-read"]);
    }

    #[test]
    fn a_reconnect_passes_only_when_the_device_came_back() {
        let back = "\
probe: reconnect 00:01.0 ready
probe: reconnect 00:01.0 needs_reset=yes waited_ms=3 attempts=1 status=0x0f
probe: result=pass
";
        let check = reconnect_check(&run(back, "", 0));
        assert_eq!(check.status, Status::Pass, "{check:?}");
        assert!(check.detail.contains("after 3 ms"), "{check:?}");

        let never = "\
probe: reconnect 00:01.0 ready
probe: result=fail reason=\"00:01.0: no DEVICE_NEEDS_RESET within 30000 ms\"
";
        let check = reconnect_check(&run(never, "", 3));
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("no DEVICE_NEEDS_RESET"), "{check:?}");

        let broken = back.replace("status=0x0f", "status=0x4f");
        let check = reconnect_check(&run(&broken, "", 0));
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("0x4f"), "{check:?}");

        // Killed at the runner's deadline: no record at all.
        let check = reconnect_check(&run("probe: reconnect 00:01.0 ready\n", "", 137));
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("no reconnect record"), "{check:?}");
        assert_eq!(failed("generic", "reconnect", "gone").status, Status::Fail);
    }

    #[test]
    fn reports_are_well_formed() {
        let mut checks = generic_tier(&run(GOOD, "", 0), &fs());
        checks.push(skipped("fs", "list", "a \"quoted\" <reason> & more"));
        checks.push(
            Check::new("backend", "config-offset", Status::Warn, "ignores it")
                .with_evidence(Evidence::new().with("offset", "4").with("returned", "6d79")),
        );
        let j = json(&checks);
        assert!(j.starts_with("{\"passed\":true,\"checks\":[{\"tier\":\"generic\""));
        assert!(j.contains("\"check\":\"features\",\"status\":\"pass\",\"ms\":42.0"));
        let value: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(value["checks"][8]["detail"], "a \"quoted\" <reason> & more");
        assert_eq!(value["checks"][9]["status"], "warn");
        assert_eq!(value["checks"][9]["evidence"]["returned"], "6d79");
        assert!(value["checks"][0].get("evidence").is_none());
        assert_eq!(value["summary"]["warned"], 1);
        assert_eq!(value["summary"]["skipped"], 1);

        let x = junit(&checks).expect("XML");
        assert!(x.contains("tests=\"10\""), "{x}");
        assert!(x.contains("failures=\"0\""), "{x}");
        assert!(x.contains("skipped=\"1\""), "{x}");
        assert!(
            x.contains("&quot;quoted&quot; &lt;reason&gt; &amp; more"),
            "{x}"
        );
        assert!(
            x.contains("<system-out>warn: ignores it</system-out>"),
            "{x}"
        );
        assert!(
            x.contains("<property name=\"returned\" value=\"6d79\"/>"),
            "{x}"
        );

        let t = table(&checks);
        assert!(
            t.contains("10 checks: 8 passed, 1 warned, 0 failed, 1 skipped"),
            "{t}"
        );
        assert!(t.contains("config-offset            warn"), "{t}");
        assert!(t.contains("returned: 6d79"), "{t}");
        assert!(all_passed(&checks), "a warning does not fail the run");
        checks.push(failed("fs", "destroy", "gone"));
        assert!(!all_passed(&checks));
        assert!(junit(&checks).expect("XML").contains("failures=\"1\""));
    }

    #[test]
    fn every_check_a_judge_reports_is_in_the_catalogue() {
        use super::backend::{judge, Asked, NoAnswers};
        let mut checks = generic_tier(&run(GOOD, "", 0), &fs());
        let nothing = run("", "", 0);
        checks.push(reconnect_check(&nothing));
        checks.push(snapshot_check(&SnapshotRun {
            before: String::new(),
            after: run("", "", 0),
            running: false,
            device: serde_json::Value::Null,
        }));
        checks.extend(fs_tier(&nothing));
        checks.extend(rng_tier(&nothing));
        checks.extend(echo_tier(&nothing));
        let asked = Asked {
            device_type: "fs".parse().expect("type"),
            queue_sizes: None,
            config_size: None,
        };
        checks.extend(judge(&asked, Err(&NoAnswers::UserSocket), Duration::ZERO).0);
        checks.extend(crate::conformance_linux::every_check());
        for c in &checks {
            assert!(
                catalogue::knows(c.tier, c.name),
                "{}/{} is not listed",
                c.tier,
                c.name
            );
        }
        assert_eq!(checks.len(), catalogue::CHECKS.len());
    }

    /// The restored guest's rounds must follow the last one before the
    /// snapshot; the line says what the backend's state was.
    #[test]
    fn a_snapshot_passes_only_when_the_rounds_go_on() {
        let snapshot = |before: &str, after: &str, state: serde_json::Value| {
            snapshot_check(&SnapshotRun {
                before: before.to_owned(),
                after: run(after, "", 0),
                running: true,
                device: serde_json::json!({ "running": { "device": { "backend_state": state } } }),
            })
        };
        let good = snapshot(
            "probe: round 3\nprobe: round 4\n",
            "probe: round 5\nprobe: round 6\n",
            serde_json::json!("0a0b"),
        );
        assert_eq!(good.status, Status::Pass, "{}", good.detail);
        assert!(
            good.detail.contains("2 bytes of backend state"),
            "{}",
            good.detail
        );
        let stateless = snapshot(
            "probe: round 4\n",
            "probe: round 5\nprobe: round 6\n",
            serde_json::Value::Null,
        );
        assert_eq!(stateless.status, Status::Pass);
        assert!(
            stateless.detail.contains("no DEVICE_STATE"),
            "{}",
            stateless.detail
        );
        let gap = snapshot(
            "probe: round 4\n",
            "probe: round 9\nprobe: round 10\n",
            serde_json::Value::Null,
        );
        assert_eq!(gap.status, Status::Fail);
        let stopped = snapshot(
            "probe: round 4\n",
            "probe: round 5\n",
            serde_json::Value::Null,
        );
        assert_eq!(stopped.status, Status::Fail, "one round is not going on");
        let failing = snapshot(
            "probe: round 4\n",
            "probe: round 5\nprobe: round 6\nprobe: result=fail reason=\"echo\"\n",
            serde_json::Value::Null,
        );
        assert_eq!(failing.status, Status::Fail);
    }

    #[test]
    fn one_queue_is_one_queue() {
        assert_eq!(queues_text(&[256]), "1 queue of 256");
        assert_eq!(queues_text(&[512, 512]), "2 queues of 512,512");
    }
}
