//! Wiring: the port and MMIO buses, PCI segment 0, the MSI router and the
//! BAR windows, and one way to add a virtio-pci device of any kind. Device
//! models know nothing of this; the builder asks for what it wants placed.
//! Once built, what stays for the VM's life is `Devices`: the buses, and
//! every device by id with its PCI address, for pause and `vm.info`.

mod allocator;
mod persist;

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use self::allocator::BarAllocator;
pub use self::persist::{DevicesSnapshot, RestoreError, SaveError};
use crate::arch::x86_64::layout::*;
use crate::bus::{Bus, BusError, SharedDevice};
use crate::devices::acpi_ged::{acpi_ged, GedEvents};
use crate::devices::{
    acpi_power::AcpiPower, cmos::Cmos, debug_exit::DebugExit, i8042::I8042, serial::Serial,
};
use crate::lifecycle::{Counter, ManagedDevice};
use crate::pci::host_bridge::HostBridge;
use crate::pci::segment::{Bdf, SegmentError};
use crate::pci::{PciConfigIo, PciEcam, PciSegment};
use crate::virtio::pci::{self as virtio_pci, TransportError, VirtioPciDevice};
use crate::virtio::VirtioDevice;
use crate::vm_exit::VmExit;
use crate::vstate::interrupts::{KvmInterruptError, KvmIoEvents, KvmMsiGroup, MsiRouter};
use crate::vstate::vcpu::Buses;
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("Failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("Failed to connect the serial port's interrupt")]
    SerialIrq(#[source] VmError),
    #[error("Failed to connect the ACPI event device's interrupt")]
    GedIrq(#[source] VmError),
    #[error("Failed to connect the real-time clock's interrupt")]
    RtcIrq(#[source] VmError),
    #[error("Failed to place a device on a bus")]
    Bus(#[source] BusError),
    #[error("Failed to add a PCI device")]
    Pci(#[source] SegmentError),
    #[error("Failed to set up the virtio-pci transport of {id}")]
    Transport {
        id: String,
        #[source]
        source: TransportError,
    },
    #[error("Failed to allocate MSI-X vectors for {id}")]
    Msix {
        id: String,
        #[source]
        source: KvmInterruptError,
    },
    #[error("No room for device {id}'s BAR in the PCI window")]
    PciWindowFull { id: String },
    #[error("Failed to restore the devices' state")]
    Restore(#[source] RestoreError),
}

/// The serial device, shared with the run loop that feeds it input.
pub type SharedSerial = Arc<Mutex<Serial>>;

/// What the VMM drives of the platform devices: the UART's input, and
/// the ACPI events and the RTC (for `finish`).
pub struct PlatformDevices {
    pub serial: Option<SharedSerial>,
    pub acpi_events: GedEvents,
    cmos: Arc<Mutex<Cmos>>,
}

/// A device of the VM, as the VMM finds it after boot.
pub struct DeviceNode {
    /// The user's `id=`, or the one given in its place (`_disk0`).
    pub id: String,
    pub bdf: Bdf,
    device: Arc<Mutex<dyn ManagedDevice>>,
}

/// What the device manager leaves once the VM is built.
pub struct Devices {
    pub buses: Buses,
    nodes: Vec<DeviceNode>,
    /// The ACPI events the VMM raises (the power button).
    pub acpi_events: GedEvents,
    /// The platform devices with a state of their own, for snapshots.
    platform: Platform,
}

/// The platform devices that keep a state (the debug exit port, the ACPI
/// power registers and the i8042 keep none: each write acts at once).
struct Platform {
    serial: Option<SharedSerial>,
    cmos: Arc<Mutex<Cmos>>,
    host_bridge: Arc<Mutex<HostBridge>>,
}

/// The buses and the PCI segment refer to each other (ECAM reaches the
/// segment, the segment moves BARs on the bus): cleared, they let every
/// device go, and with it its image's lock, its threads and its backend
/// connection, before the next VM is built.
impl Drop for Devices {
    fn drop(&mut self) {
        self.nodes.clear();
        self.buses.io.clear();
        self.buses.mmio.clear();
    }
}

impl Devices {
    /// In the order they were added (their PCI slots' order).
    pub fn iter(&self) -> impl Iterator<Item = &DeviceNode> {
        self.nodes.iter()
    }

    /// Pauses every device, the last added first.
    pub fn pause(&self) {
        for node in self.nodes.iter().rev() {
            crate::util::lock(&node.device).pause();
        }
    }

    /// Resumes every device, in the order they were added.
    pub fn resume(&self) {
        for node in &self.nodes {
            crate::util::lock(&node.device).resume();
        }
    }

    /// Every device's counters, by id.
    pub fn counters(&self) -> Vec<(String, Vec<Counter>)> {
        self.nodes
            .iter()
            .map(|node| (node.id.clone(), crate::util::lock(&node.device).counters()))
            .collect()
    }
}

pub struct DeviceManager {
    vm_fd: Arc<VmFd>,
    /// What devices get at activation.
    memory: GuestMemoryMmap,
    io: Bus,
    mmio: Bus,
    segment: PciSegment,
    router: Arc<MsiRouter>,
    bars: BarAllocator,
    nodes: Vec<DeviceNode>,
    host_bridge: Arc<Mutex<HostBridge>>,
    /// The states a restore puts into the devices as they are added;
    /// each is taken once, and `finish` refuses any left over.
    saved: Option<DevicesSnapshot>,
}

impl DeviceManager {
    /// Empty buses and a segment holding the host bridge. `saved`: the
    /// devices' states from a snapshot, for a restore.
    pub fn new(
        vm: &Vm,
        memory: &GuestMemoryMmap,
        saved: Option<DevicesSnapshot>,
    ) -> Result<Self, DeviceManagerError> {
        let mmio = Bus::new();
        let mut segment = PciSegment::new(mmio.clone());
        let mut bridge = HostBridge::new();
        if let Some(saved) = &saved {
            bridge
                .restore(&saved.pci_host_bridge)
                .map_err(|e| DeviceManagerError::Restore(RestoreError::HostBridge(e)))?;
        }
        let host_bridge = Arc::new(Mutex::new(bridge));
        segment
            .add(host_bridge.clone())
            .map_err(DeviceManagerError::Pci)?;
        Ok(Self {
            vm_fd: vm.shared_fd(),
            memory: memory.clone(),
            io: Bus::new(),
            mmio,
            segment,
            router: MsiRouter::new(vm.shared_fd()),
            bars: BarAllocator::new(
                (PCI_MMIO32_START, PCI_MMIO32_SIZE),
                (PCI_MMIO64_START, PCI_MMIO64_SIZE),
            ),
            nodes: Vec::new(),
            host_bridge,
            saved,
        })
    }

    /// The exit port, ACPI power registers and event device, the i8042,
    /// the real-time clock and, given an output, the COM1 UART on its IRQ.
    pub fn add_legacy_devices(
        &mut self,
        vm: &Vm,
        exit: &Arc<VmExit>,
        serial_output: Option<Box<dyn Write + Send>>,
    ) -> Result<PlatformDevices, DeviceManagerError> {
        let serial = match serial_output {
            Some(out) => {
                let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
                vm.register_irqfd(&irq, COM1_IRQ)
                    .map_err(DeviceManagerError::SerialIrq)?;
                let mut serial = Serial::new(irq, out);
                if let Some(saved) = &self.saved {
                    let state = saved
                        .serial
                        .as_ref()
                        .ok_or(DeviceManagerError::Restore(RestoreError::Missing("serial")))?;
                    serial
                        .restore(state)
                        .map_err(|e| DeviceManagerError::Restore(RestoreError::Serial(e)))?;
                }
                let serial = Arc::new(Mutex::new(serial));
                self.add_port_device(serial.clone(), PORT_COM1, PORT_COM1_LEN)?;
                Some(serial)
            }
            None => None,
        };
        self.add_port_device(
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
            PORT_DEBUG_EXIT,
            PORT_DEBUG_EXIT_LEN,
        )?;
        self.add_port_device(
            Arc::new(Mutex::new(AcpiPower::new(exit.clone()))),
            PORT_ACPI_POWER,
            PORT_ACPI_POWER_LEN,
        )?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irq, GED_IRQ)
            .map_err(DeviceManagerError::GedIrq)?;
        let (ged, acpi_events) = acpi_ged(irq);
        if let Some(saved) = &self.saved {
            acpi_events.restore_pending(saved.acpi_ged_pending);
        }
        self.add_port_device(Arc::new(Mutex::new(ged)), PORT_ACPI_GED, PORT_ACPI_GED_LEN)?;
        self.add_port_device(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            PORT_I8042_DATA,
            PORT_I8042_COMMAND - PORT_I8042_DATA + 1,
        )?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irq, RTC_IRQ)
            .map_err(DeviceManagerError::RtcIrq)?;
        let mut cmos = Cmos::new(irq);
        if let Some(saved) = &self.saved {
            cmos.restore(&saved.rtc)
                .map_err(|e| DeviceManagerError::Restore(RestoreError::Rtc(e)))?;
        }
        let cmos = Arc::new(Mutex::new(cmos));
        self.add_port_device(cmos.clone(), PORT_CMOS, PORT_CMOS_LEN)?;
        Ok(PlatformDevices {
            serial,
            acpi_events,
            cmos,
        })
    }

    fn add_port_device(
        &self,
        device: SharedDevice,
        port: u16,
        len: u16,
    ) -> Result<(), DeviceManagerError> {
        self.io
            .insert(device, u64::from(port), u64::from(len))
            .map_err(DeviceManagerError::Bus)
    }

    /// Puts `device` behind a virtio-pci transport in the next free slot:
    /// MSI-X vectors for its queues and config changes, kicks as
    /// ioeventfds, and its BAR placed as firmware would (the guest may move
    /// it).
    pub fn add_virtio_pci_device<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
    ) -> Result<Bdf, DeviceManagerError> {
        let id = device.id().to_owned();
        let vectors = KvmMsiGroup::new(
            &self.router,
            virtio_pci::msix_vectors(device.queue_sizes().len()),
        )
        .map_err(|source| DeviceManagerError::Msix {
            id: id.clone(),
            source,
        })?;
        let mut transport = VirtioPciDevice::new(
            device,
            self.memory.clone(),
            Arc::new(vectors),
            Box::new(KvmIoEvents::new(self.vm_fd.clone())),
        )
        .map_err(|source| DeviceManagerError::Transport {
            id: id.clone(),
            source,
        })?;
        let bar = self
            .bars
            .allocate_bar64(virtio_pci::BAR_SIZE)
            .ok_or_else(|| DeviceManagerError::PciWindowFull { id: id.clone() })?;
        transport.place_bar(bar);
        let saved = self.take_saved_pci(&id)?;
        if let Some(saved) = &saved {
            ManagedDevice::restore(&mut transport, &saved.state).map_err(|source| {
                DeviceManagerError::Restore(RestoreError::Device {
                    id: id.clone(),
                    source,
                })
            })?;
        }
        let transport = Arc::new(Mutex::new(transport));
        let bdf = self
            .segment
            .add(transport.clone())
            .map_err(DeviceManagerError::Pci)?;
        if let Some(saved) = saved.filter(|s| s.bdf != bdf.to_string()) {
            return Err(DeviceManagerError::Restore(RestoreError::Moved {
                id,
                saved: saved.bdf,
                built: bdf.to_string(),
            }));
        }
        log::info!("{id}: virtio-pci at {bdf}, BAR 0 at {bar:#x}");
        self.nodes.push(DeviceNode {
            id,
            bdf,
            device: transport,
        });
        Ok(bdf)
    }

    /// Opens the segment's configuration space (ECAM and ports
    /// 0xcf8/0xcfc): the buses for the vCPUs, and the devices by id.
    pub fn finish(self, platform: PlatformDevices) -> Result<Devices, DeviceManagerError> {
        if let Some(left) = self.saved.as_ref().and_then(|s| s.pci.keys().next()) {
            return Err(DeviceManagerError::Restore(RestoreError::Unknown(
                left.clone(),
            )));
        }
        let segment = Arc::new(self.segment);
        self.mmio
            .insert(
                Arc::new(Mutex::new(PciEcam::new(segment.clone()))),
                PCI_ECAM_START,
                PCI_ECAM_SIZE,
            )
            .map_err(DeviceManagerError::Bus)?;
        self.io
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(segment))),
                u64::from(PORT_PCI_CONFIG_ADDRESS),
                u64::from(PORT_PCI_CONFIG_LEN),
            )
            .map_err(DeviceManagerError::Bus)?;
        Ok(Devices {
            buses: Buses {
                io: self.io,
                mmio: self.mmio,
            },
            nodes: self.nodes,
            acpi_events: platform.acpi_events,
            platform: Platform {
                serial: platform.serial,
                cmos: platform.cmos,
                host_bridge: self.host_bridge,
            },
        })
    }
}
