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
    initramfs: Option<PathBuf>,
    /// Software emulation instead of KVM.
    tcg: bool,
    /// The MC146818 clock, which microvm leaves out unless asked.
    rtc: bool,
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
            initramfs: None,
            tcg: false,
            rtc: false,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// A Linux kernel with an initramfs, serial on stdout.
    pub fn linux(kernel: &Path, initramfs: &Path, cmdline: &str) -> QemuCommand {
        QemuCommand {
            kernel: kernel.to_path_buf(),
            cmdline: cmdline.to_string(),
            cpus: 1,
            memory_mib: 512,
            extra: Vec::new(),
            shared_memory: false,
            initramfs: Some(initramfs.to_path_buf()),
            tcg: false,
            rtc: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// QEMU's software emulation (TCG) instead of KVM: guest ring 0 runs
    /// at full speed where KVM has no hardware virtualization (PVM hosts),
    /// so Linux can boot there.
    pub fn tcg(&mut self) -> &mut Self {
        self.tcg = true;
        self
    }

    /// A CMOS real-time clock at 0x70, listed in the DSDT (q35 always
    /// has one).
    pub fn rtc(&mut self) -> &mut Self {
        self.rtc = true;
        self
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
        // Under TCG on a busy host, Linux fails to calibrate the TSC against
        // microvm's PIT and, with no HPET or PM timer to fall back on,
        // hangs (seen here, 1 run in 3, next to a PVM Linux boot): q35 has
        // both.
        let base = match (self.tcg, self.rtc) {
            (true, _) => "q35",
            (false, false) => "microvm,pcie=on,acpi=on",
            (false, true) => "microvm,pcie=on,acpi=on,rtc=on",
        };
        let machine = if self.shared_memory {
            cmd.args(["-object"])
                .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"));
            format!("{base},memory-backend=mem")
        } else {
            base.to_string()
        };
        let accel = if self.tcg { "tcg" } else { "kvm" };
        cmd.args(["-M", &machine, "-accel", accel, "-m", &mem])
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
        if self.tcg {
            cmd.args(["-cpu", "max"]);
        }
        if let Some(initramfs) = &self.initramfs {
            cmd.arg("-initrd").arg(initramfs);
        }
        Ok(cmd)
    }

    /// Starts QEMU in `dir` (relative paths it is given land there, as
    /// for `vmm`).
    pub fn spawn(&self, dir: &Path) -> Result<Child, String> {
        let mut command = self.command()?;
        command.current_dir(dir);
        Child::spawn("qemu", command, dir).map_err(|e| error_text(&e))
    }

    pub fn run(&self, dir: &Path) -> Result<GuestRun, String> {
        let output = self
            .spawn(dir)?
            .wait(self.timeout)
            .map_err(|e| error_text(&e))?;
        let report = ProbeReport::parse(&output.stdout);
        Ok(GuestRun { output, report })
    }
}
