//! Booting the same guest under QEMU's `microvm` machine, the independent
//! cross-check: the probe must report the same facts under both VMMs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::paths;
use crate::probe::ProbeReport;
use crate::process::Child;
use crate::vmm::{error_text, GuestRun, DEFAULT_TIMEOUT};

pub fn qemu_binary() -> Option<PathBuf> {
    paths::find_program("qemu-system-x86_64")
}

#[derive(Debug, Clone)]
pub struct QemuCommand {
    kernel: PathBuf,
    cmdline: String,
    cpus: u8,
    memory_mib: u64,
    extra: Vec<OsString>,
    shared_memory: bool,
    timeout: Duration,
}

impl QemuCommand {
    pub fn probe(cmdline: &str) -> Result<QemuCommand, String> {
        Ok(QemuCommand {
            kernel: paths::probe_guest()?,
            cmdline: cmdline.to_string(),
            cpus: 1,
            memory_mib: 512,
            extra: Vec::new(),
            shared_memory: false,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn cpus(&mut self, cpus: u8) -> &mut Self {
        self.cpus = cpus;
        self
    }

    pub fn memory_mib(&mut self, mib: u64) -> &mut Self {
        self.memory_mib = mib;
        self
    }

    /// memfd-backed guest RAM, needed by vhost-user devices.
    pub fn shared_memory(&mut self) -> &mut Self {
        self.shared_memory = true;
        self
    }

    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.extra.push(arg.into());
        self
    }

    pub fn command(&self) -> Result<Command, String> {
        let qemu = qemu_binary().ok_or("qemu-system-x86_64 not found: run ci/setup")?;
        let mut cmd = Command::new(qemu);
        let mem = format!("{}M", self.memory_mib);
        let machine = if self.shared_memory {
            cmd.args(["-object"])
                .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"));
            "microvm,pcie=on,acpi=on,memory-backend=mem"
        } else {
            "microvm,pcie=on,acpi=on"
        };
        cmd.args(["-M", machine, "-enable-kvm", "-m", &mem])
            .args(["-smp", &self.cpus.to_string()])
            .args([
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
                "-serial",
                "stdio",
            ])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-kernel")
            .arg(&self.kernel)
            .args(["-append", &self.cmdline])
            .args(&self.extra);
        Ok(cmd)
    }

    pub fn run(&self, dir: &Path) -> Result<GuestRun, String> {
        let output = Child::spawn("qemu", self.command()?, dir)
            .map_err(|e| error_text(&e))?
            .wait(self.timeout)
            .map_err(|e| error_text(&e))?;
        let report = ProbeReport::parse(&output.stdout);
        Ok(GuestRun { output, report })
    }
}
