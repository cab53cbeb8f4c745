//! The one recipe that turns a `VmConfig` into a runnable `Vmm`: memory ->
//! VM -> vCPUs -> devices -> ACPI -> payload -> initial vCPU state.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::*;
use crate::arch::x86_64::{acpi, boot, regs};
use crate::bus::{Bus, BusError};
use crate::config::{ConsoleOutput, VmConfig};
use crate::devices::{acpi_power::AcpiPower, debug_exit::DebugExit, i8042::I8042, serial::Serial};
use crate::pci::host_bridge::HostBridge;
use crate::pci::{PciConfigIo, PciEcam, PciSegment};
use crate::virtio::pci::{self as virtio_pci, VirtioPciDevice};
use crate::virtio::vhost_user::{GenericVhostUser, VhostUserParams};
use crate::vm_exit::VmExit;
use crate::vmm::Vmm;
use crate::vstate::interrupts::{KvmInterruptError, KvmIoEvents, KvmMsiGroup, MsiRouter};
use crate::vstate::memory::{create_guest_memory, GuestMemory, MemoryError};
use crate::vstate::vcpu::{Buses, Vcpu, VcpuError};
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
    #[error("Failed to place a device on a bus")]
    Bus(#[source] BusError),
    #[error("Failed to add a PCI device")]
    Pci(#[source] crate::pci::segment::SegmentError),
    #[error("Generic vhost-user device {id}")]
    VhostUser {
        id: String,
        #[source]
        source: crate::virtio::vhost_user::Error,
    },
    #[error("Failed to set up the virtio-pci transport of {id}")]
    Transport {
        id: String,
        #[source]
        source: crate::virtio::pci::TransportError,
    },
    #[error("Failed to allocate MSI-X vectors for {id}")]
    Msix {
        id: String,
        #[source]
        source: KvmInterruptError,
    },
    #[error("No room for device {id}'s BAR in the PCI window")]
    PciWindowFull { id: String },
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

    let (buses, serial) = attach_devices(&vm, &memory, config, &exit)?;

    let rsdp = acpi::create_acpi_tables(&memory, cpus).map_err(BuildError::Acpi)?;
    let payload = boot::Payload {
        kernel: &config.payload.kernel,
        initramfs: config.payload.initramfs.as_deref(),
        cmdline: &config.payload.cmdline,
    };
    let entry = boot::load_payload(&memory, config.memory.size, &payload, rsdp)
        .map_err(BuildError::Boot)?;
    boot::write_boot_gdt(&memory, &regs::boot_gdt(entry)).map_err(BuildError::Boot)?;

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

/// The serial device, if the guest has one.
type SharedSerial = Option<Arc<Mutex<Serial>>>;

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

/// Legacy devices on the port bus, the PCI segment on both buses.
fn attach_devices(
    vm: &Vm,
    memory: &GuestMemory,
    config: &VmConfig,
    exit: &Arc<VmExit>,
) -> Result<(Buses, SharedSerial), BuildError> {
    let io = Bus::new();
    let mmio = Bus::new();

    let serial = match serial_output(&config.serial)? {
        Some(out) => {
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
            vm.register_irqfd(&irq, COM1_IRQ).map_err(BuildError::Vm)?;
            let serial = Arc::new(Mutex::new(Serial::new(irq, out)));
            io.insert(
                serial.clone(),
                u64::from(PORT_COM1),
                u64::from(PORT_COM1_LEN),
            )
            .map_err(BuildError::Bus)?;
            Some(serial)
        }
        None => None,
    };
    let legacy: [(crate::bus::SharedDevice, u16, u16); 3] = [
        (
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
            PORT_DEBUG_EXIT,
            PORT_DEBUG_EXIT_LEN,
        ),
        (
            Arc::new(Mutex::new(AcpiPower::new(exit.clone()))),
            PORT_ACPI_POWER,
            PORT_ACPI_POWER_LEN,
        ),
        (
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            PORT_I8042_DATA,
            PORT_I8042_COMMAND - PORT_I8042_DATA + 1,
        ),
    ];
    for (device, port, len) in legacy {
        io.insert(device, u64::from(port), u64::from(len))
            .map_err(BuildError::Bus)?;
    }

    let mut segment = PciSegment::new(mmio.clone());
    segment
        .add(Arc::new(Mutex::new(HostBridge::new())))
        .map_err(BuildError::Pci)?;
    let router = MsiRouter::new(vm.shared_fd());
    for (index, device_config) in config.generic_vhost_user.iter().enumerate() {
        let id = &device_config.id;
        let params = VhostUserParams {
            id: id.clone(),
            socket: device_config.socket.clone(),
            device_type: device_config.device_type,
            queue_sizes: device_config.queue_sizes.clone(),
            config_len: device_config.config_window_len(),
            config: device_config.config.clone(),
        };
        let device =
            GenericVhostUser::new(params, memory).map_err(|source| BuildError::VhostUser {
                id: id.clone(),
                source,
            })?;
        let vectors = KvmMsiGroup::new(
            &router,
            virtio_pci::msix_vectors(device_config.queue_sizes.len()),
        )
        .map_err(|source| BuildError::Msix {
            id: id.clone(),
            source,
        })?;
        let mut device = VirtioPciDevice::new(
            device,
            Arc::new(vectors),
            Box::new(KvmIoEvents::new(vm.shared_fd())),
        )
        .map_err(|source| BuildError::Transport {
            id: id.clone(),
            source,
        })?;
        // A firmware-style initial placement, BARs side by side from the
        // start of the window, decoding on; guests may move them.
        let bar = PCI_MMIO32_START + index as u64 * virtio_pci::BAR_SIZE;
        if bar + virtio_pci::BAR_SIZE > PCI_MMIO32_START + PCI_MMIO32_SIZE {
            return Err(BuildError::PciWindowFull { id: id.clone() });
        }
        device.place_bar(bar);
        let device = Arc::new(Mutex::new(device));
        VirtioPciDevice::watch_device(&device);
        let bdf = segment.add(device).map_err(BuildError::Pci)?;
        log::info!("{id}: virtio-pci at {bdf}, BAR 0 at {bar:#x}");
    }
    let segment = Arc::new(segment);
    mmio.insert(
        Arc::new(Mutex::new(PciEcam::new(segment.clone()))),
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
    )
    .map_err(BuildError::Bus)?;
    io.insert(
        Arc::new(Mutex::new(PciConfigIo::new(segment))),
        u64::from(PORT_PCI_CONFIG_ADDRESS),
        u64::from(PORT_PCI_CONFIG_LEN),
    )
    .map_err(BuildError::Bus)?;

    Ok((Buses { io, mmio }, serial))
}
