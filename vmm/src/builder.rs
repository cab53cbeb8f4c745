//! The one recipe that turns a `VmConfig` into a runnable `Vmm`: memory ->
//! VM -> vCPUs -> devices -> ACPI -> payload -> initial vCPU state.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use virtio_types::VirtioDeviceType;

use crate::arch::x86_64::{acpi, boot, regs};
use crate::config::{ConsoleOutput, DiskBackend, DiskConfig, GenericVhostUserConfig, VmConfig};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::files::{open_output, FileError, FilesInUse};
use crate::snapshot::{Snapshot, SnapshotError, StateError};
use crate::terminal::{Pty, RawMode, WindowSize};
use crate::virtio::block::disk::{DiskError, DiskFile};
use crate::virtio::block::{self, Block, BlockParams};
use crate::virtio::console::{Console, ConsoleParams};
use crate::virtio::vhost_user::{self, GenericVhostUser, VhostUserParams};
use crate::vm_exit::VmExit;
use crate::vmm::{VmParts, Vmm};
use crate::vstate::memory::{create_guest_memory, GuestMemory, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Failed to create guest memory")]
    Memory(#[source] MemoryError),
    #[error("Failed to create the VM")]
    Vm(#[source] VmError),
    #[error("Failed to query KVM's supported CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("Failed to create or configure a vCPU")]
    Vcpu(#[source] VcpuError),
    #[error("Failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("{option}: cannot open output file {path}")]
    OutputFile {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("{option}: cannot set up the terminal")]
    Terminal {
        option: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("--disk {id}")]
    Disk {
        id: String,
        #[source]
        source: DiskError,
    },
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("Generic vhost-user device {id}")]
    VhostUser {
        id: String,
        #[source]
        source: vhost_user::Error,
    },
    #[error("Failed to create ACPI tables")]
    Acpi(#[source] acpi::AcpiError),
    #[error("Failed to load the payload")]
    Boot(#[source] boot::BootError),
    #[error("Internal error: {0}")]
    Internal(&'static str),
    #[error("Failed to read the snapshot")]
    Snapshot(#[source] SnapshotError),
    #[error("Cannot restore from {}", dir.display())]
    RestoreState {
        dir: PathBuf,
        #[source]
        source: StateError,
    },
    #[error("The snapshot has {saved} vCPUs, its configuration {configured}")]
    VcpuCount { saved: usize, configured: u8 },
}

/// How the VM starts: booted from its payload, or restored from a
/// snapshot (paused unless `resume`).
pub enum Start<'a> {
    Boot,
    Restore {
        snapshot: &'a Snapshot,
        resume: bool,
        /// All of guest memory allocated before the guest runs.
        prefault: bool,
    },
}

/// How this build stands to the configuration's earlier ones.
/// `in_use` holds the VM's inputs (and the log file): no console output
/// is opened over one of them. `terminals` holds the consoles' host ends
/// across the configuration's builds: a reboot keeps the user's pty, the
/// file with the earlier boots' output, the terminal in raw mode.
pub fn build_vm(
    config: &VmConfig,
    mut in_use: FilesInUse,
    terminals: &mut Terminals,
    start: Start,
) -> Result<Vmm, BuildError> {
    let cpus = config.cpus.boot;
    let memory = create_guest_memory(&config.memory).map_err(BuildError::Memory)?;
    let saved = match &start {
        Start::Boot => None,
        Start::Restore {
            snapshot, prefault, ..
        } => {
            let saved = snapshot.vm_state().map_err(BuildError::Snapshot)?;
            if saved.vcpus.len() != usize::from(cpus) {
                return Err(BuildError::VcpuCount {
                    saved: saved.vcpus.len(),
                    configured: cpus,
                });
            }
            if *prefault {
                crate::vstate::memory::prefault(&memory).map_err(BuildError::Memory)?;
            }
            snapshot
                .load_memory(&memory)
                .map_err(BuildError::Snapshot)?;
            Some(saved)
        }
    };
    let vm = Vm::new(&memory).map_err(BuildError::Vm)?;
    let exit = Arc::new(VmExit::new().map_err(BuildError::EventFd)?);
    let mut vcpus = (0..cpus)
        .map(|id| Vcpu::new(&vm, id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::Vcpu)?;

    let serial_end = terminals.open("--serial", &config.serial, &mut in_use)?;
    let console_end = terminals.open("--console", &config.console, &mut in_use)?;

    let mut devices = DeviceManager::new(&vm, &memory, saved.as_ref().map(|s| s.devices.clone()))?;
    let (serial_output, serial_input) = match serial_end {
        Some(end) => (Some(end.output), end.input),
        None => (None, None),
    };
    let platform = devices.add_legacy_devices(&vm, &exit, serial_output)?;
    let serial = platform.serial.clone();
    for device in &config.generic_vhost_user {
        add_vhost_user(&mut devices, vhost_user_params(device), &memory)?;
    }
    for disk in &config.disks {
        add_disk(&mut devices, disk, &memory)?;
    }
    if let Some(end) = console_end {
        devices.add_virtio_pci_device(Console::new(ConsoleParams {
            id: "_console".into(),
            output: end.output,
            input: end.input,
            window: end.window,
        }))?;
    }
    let devices = devices.finish(platform)?;

    let cpuid = vm
        .kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    if let (Some(saved), Start::Restore { snapshot, .. }) = (&saved, &start) {
        let restore_error = |source| BuildError::RestoreState {
            dir: snapshot.dir().to_owned(),
            source,
        };
        // Memory holds the tables and the payload as the guest left them.
        saved.vm.restore(vm.fd()).map_err(restore_error)?;
        for (vcpu, state) in vcpus.iter_mut().zip(&saved.vcpus) {
            let mut host = cpuid.clone();
            crate::arch::x86_64::cpuid::fix_up(&mut host, vcpu.id(), cpus);
            state.check_cpu(&host, vcpu.id()).map_err(restore_error)?;
            vcpu.configure(&cpuid, cpus, None)
                .map_err(BuildError::Vcpu)?;
            vcpu.restore_state(state).map_err(restore_error)?;
        }
    } else {
        let rsdp = acpi::create_acpi_tables(&memory, cpus).map_err(BuildError::Acpi)?;
        let entry = load_payload(&memory, config, rsdp)?;
        for vcpu in &mut vcpus {
            let boot_entry = (vcpu.id() == 0).then_some(entry);
            vcpu.configure(&cpuid, cpus, boot_entry)
                .map_err(BuildError::Vcpu)?;
        }
    }

    Ok(Vmm::new(VmParts {
        vm,
        memory,
        vcpus,
        devices,
        exit,
        serial: serial.map(|s| (s, serial_input)),
        config: config.clone(),
        restored: saved.is_some(),
        paused: matches!(start, Start::Restore { resume: false, .. }),
    }))
}

fn add_vhost_user(
    devices: &mut DeviceManager,
    params: VhostUserParams,
    memory: &GuestMemory,
) -> Result<(), BuildError> {
    let id = params.id.clone();
    let device = GenericVhostUser::new(params, memory)
        .map_err(|source| BuildError::VhostUser { id, source })?;
    devices.add_virtio_pci_device(device)?;
    Ok(())
}

/// An image `vmm` serves, or a vhost-user-blk backend behind the generic
/// device: the backend answers for the config and the data alike.
fn add_disk(
    devices: &mut DeviceManager,
    disk: &DiskConfig,
    memory: &GuestMemory,
) -> Result<(), BuildError> {
    match &disk.backend {
        DiskBackend::Image {
            path,
            readonly,
            direct,
            serial,
            raw_declared,
        } => {
            let disk_error = |source| BuildError::Disk {
                id: disk.id.clone(),
                source,
            };
            // Opened (never waiting, a FIFO refused) and locked first.
            let file = DiskFile::open(path, *readonly, *direct).map_err(disk_error)?;
            if !raw_declared {
                let foreign = block::format::probe(path).map_err(|source| {
                    disk_error(DiskError::Probe {
                        path: path.clone(),
                        source,
                    })
                })?;
                if let Some(foreign) = foreign {
                    return Err(disk_error(DiskError::NotRaw {
                        path: path.clone(),
                        format: foreign.format,
                        evidence: foreign.evidence,
                    }));
                }
            }
            log::info!(
                "{}: {} ({} bytes{})",
                disk.id,
                path.display(),
                file.size(),
                if *readonly { ", read-only" } else { "" }
            );
            devices.add_virtio_pci_device(Block::new(BlockParams {
                id: disk.id.clone(),
                disk: file,
                readonly: *readonly,
                serial: serial.clone(),
                num_queues: disk.num_queues,
                queue_size: disk.queue_size,
            }))?;
            Ok(())
        }
        DiskBackend::VhostUser { socket } => {
            let device_type = VirtioDeviceType::new(block::DEVICE_TYPE)
                .ok_or(BuildError::Internal("virtio-blk's device type"))?;
            let params = VhostUserParams {
                id: disk.id.clone(),
                socket: socket.clone(),
                device_type,
                queue_sizes: vec![disk.queue_size; usize::from(disk.num_queues)],
                config_len: device_type.spec_config_size().unwrap_or(0),
                config_len_by_features: true,
                config: None,
            };
            add_vhost_user(devices, params, memory)
        }
    }
}

/// One end of a console: where the guest's output goes, where its input
/// comes from, and the terminal it is on (for its size).
struct ConsoleEnd {
    output: Box<dyn Write + Send>,
    input: Option<File>,
    window: Option<WindowSize>,
}

/// The consoles' host ends, opened at a configuration's first build and
/// lent to each build after it: the user's terminal in raw mode, the ptys
/// we made (both ends), the output files. Dropped with the configuration
/// (vm.delete, the end of vmm), which gives the terminal back as it was.
#[derive(Default)]
pub struct Terminals {
    _raw: Option<RawMode>,
    /// The far ends of our ptys: while one is open, the near end never
    /// reads EOF, whoever comes and goes on the far one.
    _ptys: Vec<File>,
    /// Each option's end as first opened.
    opened: Vec<(&'static str, Opened)>,
}

/// What a console's end is, to hand out again.
enum Opened {
    Null,
    Tty,
    /// The near end of a pty: output and input.
    Pty(File),
    File(File),
}

impl Terminals {
    /// The end `option` (`--serial`) has for this build: opened now if this
    /// is the configuration's first build, else the same one again.
    fn open(
        &mut self,
        option: &'static str,
        output: &ConsoleOutput,
        in_use: &mut FilesInUse,
    ) -> Result<Option<ConsoleEnd>, BuildError> {
        let terminal_error = |source| BuildError::Terminal { option, source };
        if !self.opened.iter().any(|(o, _)| *o == option) {
            let Some(opened) = self.open_first(option, output, in_use)? else {
                return Ok(None);
            };
            self.opened.push((option, opened));
        }
        let Some((_, opened)) = self.opened.iter().find(|(o, _)| *o == option) else {
            return Ok(None);
        };
        Ok(Some(match opened {
            Opened::Null => ConsoleEnd {
                output: Box::new(std::io::sink()),
                input: None,
                window: None,
            },
            Opened::Tty => ConsoleEnd {
                output: Box::new(std::io::stdout()),
                input: Some(stdin_file().map_err(terminal_error)?),
                window: match WindowSize::watch(libc::STDOUT_FILENO).map_err(terminal_error)? {
                    Some(window) => Some(window),
                    None => WindowSize::watch(libc::STDIN_FILENO).map_err(terminal_error)?,
                },
            },
            Opened::Pty(near) => ConsoleEnd {
                output: Box::new(near.try_clone().map_err(terminal_error)?),
                input: Some(near.try_clone().map_err(terminal_error)?),
                window: None,
            },
            Opened::File(file) => ConsoleEnd {
                output: Box::new(file.try_clone().map_err(terminal_error)?),
                input: None,
                window: None,
            },
        }))
    }

    fn open_first(
        &mut self,
        option: &'static str,
        output: &ConsoleOutput,
        in_use: &mut FilesInUse,
    ) -> Result<Option<Opened>, BuildError> {
        let terminal_error = |source| BuildError::Terminal { option, source };
        Ok(Some(match output {
            ConsoleOutput::Off => return Ok(None),
            ConsoleOutput::Null => Opened::Null,
            ConsoleOutput::Tty => {
                let stdin = stdin_file().map_err(terminal_error)?;
                self._raw = RawMode::enable(stdin.as_raw_fd()).map_err(terminal_error)?;
                Opened::Tty
            }
            ConsoleOutput::Pty => {
                let pty = Pty::open().map_err(terminal_error)?;
                eprintln!("vmm: {option} pty: {}", pty.path.display());
                log::info!("{option} pty: {}", pty.path.display());
                self._ptys.push(pty.peer);
                Opened::Pty(pty.controller)
            }
            ConsoleOutput::File(path) => Opened::File(
                open_output(
                    path,
                    false,
                    in_use,
                    format!("{option} file={}", path.display()),
                )
                .map_err(|source| BuildError::OutputFile {
                    option,
                    path: path.clone(),
                    source,
                })?,
            ),
        }))
    }
}

/// A descriptor of our own for stdin, for the device that reads it.
fn stdin_file() -> std::io::Result<File> {
    use std::os::fd::AsFd;
    Ok(File::from(std::io::stdin().as_fd().try_clone_to_owned()?))
}

/// The kernel, initramfs and command line in guest memory, and the GDT the
/// boot vCPU starts with.
fn load_payload(
    memory: &GuestMemory,
    config: &VmConfig,
    rsdp: u64,
) -> Result<regs::BootEntry, BuildError> {
    let payload = boot::Payload {
        kernel: &config.payload.kernel,
        initramfs: config.payload.initramfs.as_deref(),
        cmdline: &config.payload.cmdline,
    };
    let entry =
        boot::load_payload(memory, config.memory.size, &payload, rsdp).map_err(BuildError::Boot)?;
    boot::write_boot_gdt(memory, &regs::boot_gdt(entry)).map_err(BuildError::Boot)?;
    Ok(entry)
}

/// What the generic device needs of its configuration.
fn vhost_user_params(config: &GenericVhostUserConfig) -> VhostUserParams {
    VhostUserParams {
        id: config.id.clone(),
        socket: config.socket.clone(),
        device_type: config.device_type,
        queue_sizes: config.queue_sizes.clone(),
        config_len: config.config_window_len(),
        config_len_by_features: config.config_size.is_none(),
        config: config.config.clone(),
    }
}
