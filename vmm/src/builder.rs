//! The one recipe that turns a `VmConfig` into a runnable `Vmm`: memory ->
//! VM -> vCPUs -> devices -> ACPI -> payload -> initial vCPU state.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

use crate::arch::x86_64::{acpi, boot, regs};
use crate::config::{ConsoleOutput, GenericVhostUserConfig, VmConfig};
use crate::device_manager::{DeviceManager, DeviceManagerError};
use crate::virtio::vhost_user::{self, GenericVhostUser, VhostUserParams};
use crate::vm_exit::VmExit;
use crate::vmm::Vmm;
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
    #[error("Failed to open serial output file {path}")]
    SerialFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
}

pub fn build_vm(config: &VmConfig) -> Result<Vmm, BuildError> {
    let cpus = config.cpus.boot;
    let memory = create_guest_memory(&config.memory).map_err(BuildError::Memory)?;
    let vm = Vm::new(&memory).map_err(BuildError::Vm)?;
    let exit = Arc::new(VmExit::new().map_err(BuildError::EventFd)?);
    let vcpus = (0..cpus)
        .map(|id| Vcpu::new(&vm, id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::Vcpu)?;

    let mut devices = DeviceManager::new(&vm, &memory)?;
    let serial = devices.add_legacy_devices(&vm, &exit, serial_output(&config.serial)?)?;
    for device in &config.generic_vhost_user {
        let vhost_user =
            GenericVhostUser::new(vhost_user_params(device), &memory).map_err(|source| {
                BuildError::VhostUser {
                    id: device.id.clone(),
                    source,
                }
            })?;
        devices.add_virtio_pci_device(vhost_user)?;
    }
    let buses = devices.into_buses()?;

    let rsdp = acpi::create_acpi_tables(&memory, cpus).map_err(BuildError::Acpi)?;
    let entry = load_payload(&memory, config, rsdp)?;
    let cpuid = vm
        .kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    for vcpu in &vcpus {
        let boot_entry = (vcpu.id() == 0).then_some(entry);
        vcpu.configure(&cpuid, cpus, boot_entry)
            .map_err(BuildError::Vcpu)?;
    }

    Ok(Vmm::new(vm, memory, vcpus, buses, exit, serial))
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
        config: config.config.clone(),
    }
}

fn serial_output(output: &ConsoleOutput) -> Result<Option<Box<dyn Write + Send>>, BuildError> {
    Ok(match output {
        ConsoleOutput::Off => None,
        ConsoleOutput::Null => Some(Box::new(std::io::sink())),
        ConsoleOutput::Tty => Some(Box::new(std::io::stdout())),
        ConsoleOutput::File(path) => Some(Box::new(File::create(path).map_err(|source| {
            BuildError::SerialFile {
                path: path.clone(),
                source,
            }
        })?)),
    })
}
