//! The generic tier's snapshot: a guest doing rounds of device work is
//! snapshotted while the device runs, vmm and the backend are killed,
//! and a new vmm restores it against a new backend.

use std::time::Duration;

use test_infra::api::{put, wait_for_socket};
use test_infra::conformance;
use test_infra::vmm::{GuestRun, VmmCommand};
use test_infra::ProbeReport;

use super::Runner;

impl Runner<'_> {
    /// A guest running `cmdline` (rounds of device work, repeated) is
    /// paused and snapshotted while the device runs (paused again a
    /// little later when a pause finds it between two rounds); vmm and the
    /// backend are killed; a new backend starts on the same socket and a
    /// new vmm restores the snapshot, running. Only for a backend the
    /// runner starts.
    pub(super) fn snapshot_and_restore(
        &mut self,
        cmdline: &str,
    ) -> Result<conformance::SnapshotRun, String> {
        self.progress.stage(&format!(
            "generic: booting the probe guest for the snapshot ({cmdline}); then vmm and the backend are killed, and the snapshot restored against a new backend"
        ));
        let timeout = Duration::from_secs(self.args.timeout_secs);
        let given = self.next_socket();
        let first = self.start_backend(&given, &format!("backend-{}", self.boots))?;
        let api = self.dir.join(format!("api-{}.sock", self.boots));
        let mut cmd = self.vmm(cmdline, &self.listening_at(&given))?;
        cmd.arg("--api-socket")
            .arg(format!("path={}", api.display()));
        let mut vmm = cmd.spawn(self.dir)?;
        wait_for_socket(&api, timeout)?;
        let rounds = |out: &str| {
            out.lines()
                .filter(|l| l.starts_with("probe: round "))
                .count()
        };
        if !vmm.wait_until(timeout, |c| rounds(&c.stdout_so_far()) >= 1) {
            return Err(format!(
                "the guest did no round of device work before the snapshot\n{}",
                vmm.stdout_so_far()
            ));
        }
        let snap = self.dir.join(format!("snapshot-{}", self.boots));
        let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
        let mut running = false;
        for _ in 0..50 {
            put(&api, "vm.pause", None)?;
            put(&api, "vm.snapshot", Some(&url))?;
            let device = conformance::snapshot_device(&snap)?;
            running = !device["running"].is_null();
            if running {
                break;
            }
            std::fs::remove_dir_all(&snap).map_err(|e| e.to_string())?;
            put(&api, "vm.resume", None)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        let device = conformance::snapshot_device(&snap)?;
        put(&api, "vmm.shutdown", None)?;
        let before = vmm.wait(timeout).map_err(|e| e.to_string())?;
        first.signal(libc::SIGKILL);
        drop(first);
        let name = format!("backend-{}-restored", self.boots);
        let _second = self
            .start_backend(&given, &name)
            .map_err(|e| format!("the backend did not start again: {e}"))?;
        let api = self.dir.join(format!("api-{}-restored.sock", self.boots));
        let mut restore = VmmCommand::bare();
        restore
            .arg("--restore")
            .arg(format!("source_url=file://{},resume=on", snap.display()))
            .arg("--api-socket")
            .arg(format!("path={}", api.display()))
            .timeout(timeout);
        let mut vmm = restore.spawn(self.dir)?;
        let went_on = vmm.wait_until(timeout, |c| rounds(&c.stdout_so_far()) >= 2);
        if went_on {
            put(&api, "vmm.shutdown", None)?;
        }
        let after = vmm.wait(timeout).map_err(|e| e.to_string())?;
        let report = ProbeReport::parse(&after.stdout);
        Ok(conformance::SnapshotRun {
            before: before.stdout,
            after: GuestRun {
                output: after,
                report,
            },
            running,
            device,
        })
    }
}
