//! One description of a probe-guest VM, runnable under `vmm` or QEMU, so
//! that a test states what it boots once and cross-checks both VMMs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::qemu::QemuCommand;
use crate::virtiofsd::Virtiofsd;
use crate::vmm::{GuestRun, VmmCommand, DEFAULT_TIMEOUT};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    /// Our `vmm`, with `--generic-vhost-user` devices.
    Vmm,
    /// QEMU `microvm`, with `vhost-user-fs-pci` devices.
    Qemu,
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hypervisor::Vmm => "vmm",
            Hypervisor::Qemu => "qemu",
        })
    }
}

#[derive(Debug, Clone)]
struct FsDevice {
    socket: PathBuf,
    tag: String,
}

#[derive(Debug, Clone)]
pub struct Guest {
    hypervisor: Hypervisor,
    cmdline: String,
    cpus: u8,
    memory_mib: u64,
    fs: Vec<FsDevice>,
    /// Queue sizes given to `vmm` for each virtio-fs device.
    fs_queue_sizes: String,
    timeout: Duration,
}

impl Guest {
    pub fn probe(hypervisor: Hypervisor, cmdline: &str) -> Guest {
        Guest {
            hypervisor,
            cmdline: cmdline.to_string(),
            cpus: 1,
            memory_mib: 512,
            fs: Vec::new(),
            fs_queue_sizes: "[512,512]".into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn cpus(mut self, cpus: u8) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// A virtio-fs device served by `fs` (memory becomes shared).
    pub fn virtiofs(mut self, fs: &Virtiofsd) -> Self {
        self.fs.push(FsDevice {
            socket: fs.socket().to_path_buf(),
            tag: fs.tag().to_string(),
        });
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn run(&self, dir: &Path) -> Result<GuestRun, String> {
        match self.hypervisor {
            Hypervisor::Vmm => self.vmm_command()?.run(dir),
            Hypervisor::Qemu => self.qemu_command()?.run(dir),
        }
    }

    pub fn vmm_command(&self) -> Result<VmmCommand, String> {
        let mut cmd = VmmCommand::probe(&self.cmdline)?;
        let shared = if self.fs.is_empty() { "off" } else { "on" };
        cmd.args(["--cpus".to_string(), format!("boot={}", self.cpus)])
            .args([
                "--memory".to_string(),
                format!("size={}M,shared={shared}", self.memory_mib),
            ])
            .timeout(self.timeout);
        for fs in &self.fs {
            cmd.arg("--generic-vhost-user").arg(format!(
                "socket={},virtio_id=fs,queue_sizes={}",
                quote(&fs.socket.to_string_lossy()),
                self.fs_queue_sizes
            ));
        }
        Ok(cmd)
    }

    pub fn qemu_command(&self) -> Result<QemuCommand, String> {
        let mut cmd = QemuCommand::probe(&self.cmdline)?;
        cmd.cpus(self.cpus)
            .memory_mib(self.memory_mib)
            .timeout(self.timeout);
        if !self.fs.is_empty() {
            cmd.shared_memory();
        }
        for (i, fs) in self.fs.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!("socket,id=fs{i},path={}", fs.socket.display()))
                .arg("-device")
                .arg(format!("vhost-user-fs-pci,chardev=fs{i},tag={}", fs.tag));
        }
        Ok(cmd)
    }
}

/// Cloud Hypervisor's quoting for option values: wrap in double quotes when
/// the value holds a separator or a quote, doubling inner quotes.
pub fn quote(value: &str) -> String {
    if value.contains([',', '"', '=', '[', ']']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}
