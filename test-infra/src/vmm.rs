//! Booting a guest under our `vmm`: a command builder with the probe guest
//! as default payload, serial on stdout, and a deadline.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::paths;
use crate::probe::ProbeReport;
use crate::process::{Child, Output, RunError};

/// Generous: the probe guest finishes in well under a second here.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct VmmCommand {
    args: Vec<OsString>,
    /// Kept apart because `vmm` accepts `--serial` once.
    serial: Option<String>,
    /// Likewise `--console`.
    console: Option<String>,
    /// stdin a pipe (`Child::take_stdin`) instead of /dev/null.
    stdin_piped: bool,
    timeout: Duration,
}

/// A finished run: the process output and the guest's records.
#[derive(Debug)]
pub struct GuestRun {
    pub output: Output,
    pub report: ProbeReport,
}

impl GuestRun {
    /// Panics with every log when the guest did not pass.
    pub fn assert_passed(&self) -> &ProbeReport {
        assert!(
            self.report.passed() && self.output.code() == Some(0),
            "guest run did not pass: {:?}\n{}",
            self.report.result(),
            self.output.describe()
        );
        &self.report
    }
}

impl VmmCommand {
    /// The probe guest with `cmdline`, 1 vCPU, 512 MiB, serial on stdout.
    pub fn probe(cmdline: &str) -> Result<VmmCommand, String> {
        let kernel = paths::probe_guest()?;
        let mut cmd = VmmCommand::bare();
        cmd.arg("--kernel")
            .arg(kernel)
            .arg("--cmdline")
            .arg(cmdline);
        cmd.console = Some("off".into());
        cmd.serial = Some("tty".into());
        Ok(cmd)
    }

    /// No arguments at all, for CLI tests.
    pub fn bare() -> VmmCommand {
        VmmCommand {
            args: Vec::new(),
            serial: None,
            console: None,
            stdin_piped: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(&mut self, args: I) -> &mut Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Where the guest's serial port goes (`tty` for probe runs).
    pub fn serial(&mut self, spec: &str) -> &mut Self {
        self.serial = Some(spec.to_string());
        self
    }

    /// Where the virtio console goes (`off` for probe runs).
    pub fn console(&mut self, spec: &str) -> &mut Self {
        self.console = Some(spec.to_string());
        self
    }

    /// stdin a pipe the test writes through (`Child::take_stdin`), for
    /// `--console tty`.
    pub fn stdin_piped(&mut self) -> &mut Self {
        self.stdin_piped = true;
        self
    }

    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    pub fn command(&self) -> Result<Command, String> {
        let mut command = Command::new(paths::vmm_binary()?);
        command.args(&self.args);
        if let Some(serial) = &self.serial {
            command.arg("--serial").arg(serial);
        }
        if let Some(console) = &self.console {
            command.arg("--console").arg(console);
        }
        Ok(command)
    }

    /// Starts `vmm` in `dir` (relative paths it is given land there).
    pub fn spawn(&self, dir: &Path) -> Result<Child, String> {
        let mut command = self.command()?;
        command.current_dir(dir);
        let child = if self.stdin_piped {
            Child::spawn_piped("vmm", command, dir)
        } else {
            Child::spawn("vmm", command, dir)
        };
        child.map_err(|e| error_text(&e))
    }

    /// Runs to the end (or the deadline) and parses the serial output.
    pub fn run(&self, dir: &Path) -> Result<GuestRun, String> {
        let output = self
            .spawn(dir)?
            .wait(self.timeout)
            .map_err(|e| error_text(&e))?;
        let report = ProbeReport::parse(&output.stdout);
        Ok(GuestRun { output, report })
    }
}

pub(crate) fn error_text(e: &RunError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
