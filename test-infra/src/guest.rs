//! One description of a probe-guest VM, runnable under `vmm` or QEMU, so
//! that a test states what it boots once and cross-checks both VMMs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::console::{Console, ConsoleLink, SERIAL_FILE};
use crate::disk::Disk;
use crate::probe::ProbeReport;
use crate::process::Child;
use crate::qemu::QemuCommand;
use crate::virtiofsd::Virtiofsd;
use crate::vmm::{error_text, GuestRun, VmmCommand, DEFAULT_TIMEOUT};

/// How long QEMU may take to serve an interactive console's socket.
const CONSOLE_SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

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
    disks: Vec<Disk>,
    console: Option<Console>,
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
            disks: Vec::new(),
            console: None,
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

    /// A virtio-blk device (PCI slots follow the order of the calls).
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// A virtio console; its output lands in `DIR/console.out`.
    pub fn console(mut self, console: Console) -> Self {
        self.console = Some(console);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn run(&self, dir: &Path) -> Result<GuestRun, String> {
        if self.console == Some(Console::Interactive) {
            return Err("an interactive console needs Guest::start".into());
        }
        match self.hypervisor {
            Hypervisor::Vmm => self.vmm_command()?.run(dir),
            Hypervisor::Qemu => self.qemu_command()?.run(dir),
        }
    }

    /// Starts a guest with an interactive console: the test waits for a
    /// record, sends input, then `finish`es. In `dir`, as `run`.
    pub fn start(&self, dir: &Path) -> Result<RunningGuest, String> {
        if self.console != Some(Console::Interactive) {
            return Err("Guest::start is for an interactive console; use run".into());
        }
        let (child, link) = match self.hypervisor {
            Hypervisor::Vmm => {
                let mut cmd = self.vmm_command()?;
                let mut child = cmd.stdin_piped().spawn(dir)?;
                let stdin = child.take_stdin();
                (child, ConsoleLink::Stdin(stdin))
            }
            Hypervisor::Qemu => {
                let mut child = self.qemu_command()?.spawn(dir)?;
                let link = ConsoleLink::connect_qemu(dir, &mut child, CONSOLE_SOCKET_TIMEOUT)?;
                (child, link)
            }
        };
        Ok(RunningGuest {
            hypervisor: self.hypervisor,
            child,
            link,
            dir: dir.to_path_buf(),
            deadline: Instant::now() + self.timeout,
        })
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
        for disk in &self.disks {
            cmd.arg("--disk").arg(disk.vmm_arg());
        }
        if let Some(console) = self.console {
            cmd.console(&console.vmm_console());
            if let Some(serial) = console.vmm_serial() {
                cmd.serial(&serial);
            }
        }
        Ok(cmd)
    }

    /// With virtio-fs devices, queues that complete nothing for a second
    /// are notified again (`probe.rekick_ms=1000`, said in a `warn`
    /// record): QEMU 7.2 enables a vhost-user ring (SET_VRING_ENABLE, not
    /// acknowledged) after handing the backend its kick, and a backend
    /// that sees the driver's first kick before the enable drops it, so
    /// the ring stalls now and then (seen with virtiofsd 1.14 on a loaded
    /// machine). `vmm` waits for the backend's answer before the driver
    /// goes on; its runs get no such help.
    pub fn qemu_command(&self) -> Result<QemuCommand, String> {
        let cmdline = if self.fs.is_empty() {
            self.cmdline.clone()
        } else {
            format!("{} probe.rekick_ms=1000", self.cmdline)
        };
        let mut cmd = QemuCommand::probe(&cmdline)?;
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
        for (i, disk) in self.disks.iter().enumerate() {
            for arg in disk.qemu_args(i) {
                cmd.arg(arg);
            }
        }
        if let Some(console) = self.console {
            for arg in console.qemu_args() {
                cmd.arg(arg);
            }
        }
        Ok(cmd)
    }
}

/// A guest started by `Guest::start`, its console open to the test.
pub struct RunningGuest {
    hypervisor: Hypervisor,
    child: Child,
    link: ConsoleLink,
    dir: PathBuf,
    deadline: Instant,
}

impl RunningGuest {
    /// The serial output so far: the probe's records.
    pub fn serial_so_far(&self) -> String {
        serial_text(self.hypervisor, &self.dir, &self.child)
    }

    /// Waits until the serial output has a line starting with `prefix`
    /// (`probe: console ready`); fails when the guest ends first or
    /// `timeout` passes.
    pub fn wait_for_serial(&mut self, prefix: &str, timeout: Duration) -> Result<(), String> {
        let (hypervisor, dir) = (self.hypervisor, self.dir.clone());
        let seen = |child: &Child| {
            serial_text(hypervisor, &dir, child)
                .lines()
                .any(|l| l.starts_with(prefix))
        };
        if self.child.wait_until(timeout, seen) {
            return Ok(());
        }
        let when = if self.child.exited() {
            format!("before {} exited", self.hypervisor)
        } else {
            format!("within {timeout:?}")
        };
        Err(format!(
            "no serial line starting {prefix:?} {when}\n--- serial:\n{}\n--- {} stderr:\n{}",
            self.serial_so_far(),
            self.hypervisor,
            self.child.stderr_so_far()
        ))
    }

    /// Sends `bytes` to the guest's console.
    pub fn send_console(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.link.send(bytes)
    }

    /// Waits for the VMM to end (by the guest's deadline), completes
    /// `DIR/console.out`, and returns the run with the serial output as
    /// its stdout, as `Guest::run` does.
    pub fn finish(self) -> Result<GuestRun, String> {
        let RunningGuest {
            hypervisor,
            child,
            link,
            dir,
            deadline,
        } = self;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut output = child.wait(remaining).map_err(|e| error_text(&e))?;
        link.finish(&dir)?;
        if hypervisor == Hypervisor::Vmm {
            // stdout carried the console; the records went to the file.
            output.stdout = read_lossy(&dir.join(SERIAL_FILE));
        }
        let report = ProbeReport::parse(&output.stdout);
        Ok(GuestRun { output, report })
    }
}

fn serial_text(hypervisor: Hypervisor, dir: &Path, child: &Child) -> String {
    match hypervisor {
        Hypervisor::Vmm => read_lossy(&dir.join(SERIAL_FILE)),
        Hypervisor::Qemu => child.stdout_so_far(),
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
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
