//! The virtio-pci modern transport (VIRTIO 1.3, 4.1): PCI identity, the
//! virtio and MSI-X capabilities, and one 64-bit BAR holding common config,
//! ISR, device config, notify and the MSI-X table and PBA.
//!
//! The data path never comes here: kicks are KVM ioeventfds at the notify
//! addresses (moved with the BAR) and completions are irqfds the backend
//! signals. The VMM sees only set-up, config space and reset.

mod bar;
pub mod common;
mod lifecycle;
mod persist;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use self::common::{CommonConfig, QueueState};
use super::{
    ActivateContext, ActiveQueue, QueuePlace, VirtioDevice, VirtioInterrupt,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::interrupt::{IoEventRegistry, MsiInterruptGroup};
use crate::pci::config::{
    ConfigSpace, ConfigSpaceError, PciClass, COMMAND, COMMAND_MEMORY, SUBSYSTEM_ID,
    SUBSYSTEM_VENDOR_ID,
};
use crate::pci::msix::{self, Msix};
use crate::pci::{BarMapping, BarReprogram, PciDevice};
use crate::util::error_chain;

const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern (non-transitional) device IDs are 0x1040 + the VIRTIO device ID.
const VIRTIO_DEVICE_BASE: u16 = 0x1040;
const VIRTIO_DEVICE_LAST: u16 = 0x107f;
/// Non-transitional devices should have a subsystem ID of 0x40 or more.
const VIRTIO_SUBSYSTEM_ID: u16 = 0x40;
const CAP_VENDOR: u8 = 0x09;

/// The BAR everything lives in, and its layout.
const BAR: u8 = 0;
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const ISR_LEN: u64 = 4;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_MAX: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;

/// virtio_pci_cap cfg_type values.
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;
/// Where the fields of the VIRTIO_PCI_CAP_PCI_CFG capability are, from
/// its start: the BAR, offset and length the driver picks, and the data.
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;
const PCI_CFG_DATA: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "VIRTIO device ID {id} cannot be carried by virtio-pci: PCI device IDs 0x1040 + id must stay within 0x1041..=0x107f (IDs 1 to 63)"
    )]
    DeviceId { id: u32 },
    #[error("{queues} queues need more MSI-X vectors than fit the BAR")]
    TooManyQueues { queues: usize },
    #[error("Failed to lay out the PCI configuration space")]
    ConfigSpace(#[source] ConfigSpaceError),
    #[error("Failed to create a queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Why the transport could not hand the driver's queues to the device.
#[derive(Debug, thiserror::Error)]
enum ActivateError {
    #[error("queue {index} as the driver set it up is not a valid ring")]
    Queue {
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("Failed to share the eventfds of queue {index}")]
    EventFd {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// QEMU's class codes for the types it has, so guests see the same device;
/// "unclassified" otherwise.
fn class_of(virtio_id: u32) -> PciClass {
    let (class, subclass) = match virtio_id {
        1 => (0x02, 0x00),  // net: Ethernet
        2 => (0x01, 0x00),  // block: SCSI storage
        3 => (0x07, 0x80),  // console: other communication
        8 => (0x01, 0x00),  // scsi
        26 => (0x01, 0x80), // fs: other storage
        _ => (0xff, 0x00),
    };
    PciClass {
        class,
        subclass,
        prog_if: 0,
    }
}

/// A virtio_pci_cap body (after ID and next): cap_len, cfg_type, bar, id,
/// padding, offset, length, and then the notify offset multiplier or the
/// PCI_CFG data window.
fn virtio_cap(cfg_type: u8, offset: u64, len: u64) -> Vec<u8> {
    let cap_len: u8 = if matches!(cfg_type, CFG_NOTIFY | CFG_PCI) {
        20
    } else {
        16
    };
    let mut body = vec![cap_len, cfg_type, BAR, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(len as u32).to_le_bytes());
    match cfg_type {
        CFG_NOTIFY => body.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes()),
        CFG_PCI => body.extend_from_slice(&[0; 4]),
        _ => {}
    }
    body
}

/// MSI-X vectors for a device with `queues` queues: one per queue plus one
/// for configuration changes.
pub fn msix_vectors(queues: usize) -> u16 {
    u16::try_from(queues + 1).unwrap_or(u16::MAX)
}

fn notify_addr(bar: u64, queue: usize) -> u64 {
    bar + NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER) * queue as u64
}

pub struct VirtioPciDevice<D: VirtioDevice> {
    device: D,
    config: ConfigSpace,
    msix: Msix,
    msix_cap: usize,
    /// Where the VIRTIO_PCI_CAP_PCI_CFG capability starts.
    pci_cfg_cap: usize,
    ioevents: Box<dyn IoEventRegistry>,
    kicks: Vec<EventFd>,
    /// Calls of queues without an MSI-X vector: nobody listens (INTx is
    /// not offered), but a backend needs some eventfd.
    unrouted_calls: Vec<EventFd>,
    /// The BAR address the kick ioeventfds are registered at, if any.
    notify_base: Option<u64>,
    common: CommonConfig,
    /// ISR, config vector and DEVICE_NEEDS_RESET, shared with the device.
    interrupt: VirtioInterrupt,
    memory: GuestMemoryMmap,
    /// One error line per burst of failed config accesses.
    config_failing: bool,
    /// The device's `activate` was called since the last reset (whether
    /// or not it succeeded: a device that failed half way may run some
    /// of its queues).
    activated: bool,
    /// The device was paused (it was running when the VM paused).
    paused: bool,
    /// A restored running device: where its queues stood, for the
    /// activation its resume brings.
    restored_places: Option<Vec<QueuePlace>>,
    counts: TransportCounts,
}

/// What the transport counts for `vm.counters`.
#[derive(Debug, Default, Clone, Copy)]
struct TransportCounts {
    config_reads: u64,
    config_writes: u64,
    config_failures: u64,
    activations: u64,
    resets: u64,
}

impl<D: VirtioDevice> VirtioPciDevice<D> {
    pub fn new(
        mut device: D,
        memory: GuestMemoryMmap,
        vectors: Arc<dyn MsiInterruptGroup>,
        ioevents: Box<dyn IoEventRegistry>,
    ) -> Result<Self, TransportError> {
        let queue_count = device.queue_sizes().len();
        let vector_count = msix_vectors(queue_count);
        let interrupt = VirtioInterrupt::new(vectors.clone());
        interrupt.set_id(device.id());
        device.attach(interrupt.clone());
        let msix = Msix::new(vectors, vector_count);
        if MSIX_TABLE_OFFSET + msix.table_len() > MSIX_PBA_OFFSET
            || MSIX_PBA_OFFSET + msix.pba_len() > BAR_SIZE
        {
            return Err(TransportError::TooManyQueues {
                queues: queue_count,
            });
        }
        let id = device.device_type();
        // VIRTIO 1.3, 4.1.2: drivers bind to 0x1000..=0x107f only.
        let pci_id = u16::try_from(id)
            .ok()
            .and_then(|id| VIRTIO_DEVICE_BASE.checked_add(id))
            .filter(|pci_id| *pci_id <= VIRTIO_DEVICE_LAST)
            .ok_or(TransportError::DeviceId { id })?;

        let mut config = ConfigSpace::new(VIRTIO_VENDOR, pci_id, class_of(id), 1);
        config.set_u16(SUBSYSTEM_VENDOR_ID, VIRTIO_VENDOR);
        config.set_u16(SUBSYSTEM_ID, VIRTIO_SUBSYSTEM_ID);
        config
            .add_mem_bar64(usize::from(BAR), BAR_SIZE)
            .map_err(TransportError::ConfigSpace)?;
        let cfg_len = u64::from(device.config_len()).min(DEVICE_CFG_MAX);
        let notify_len = u64::from(NOTIFY_MULTIPLIER) * queue_count as u64;
        let mut caps = vec![
            virtio_cap(CFG_COMMON, COMMON_OFFSET, common::COMMON_LEN as u64),
            virtio_cap(CFG_NOTIFY, NOTIFY_OFFSET, notify_len),
            virtio_cap(CFG_ISR, ISR_OFFSET, ISR_LEN),
        ];
        if cfg_len > 0 {
            caps.push(virtio_cap(CFG_DEVICE, DEVICE_CFG_OFFSET, cfg_len));
        }
        for cap in caps {
            config
                .add_capability(CAP_VENDOR, &cap)
                .map_err(TransportError::ConfigSpace)?;
        }
        // VIRTIO 1.3, 4.1.4.9: every device has one, for drivers (firmware,
        // mostly) that reach the BAR through configuration space.
        let pci_cfg_cap = config
            .add_capability(CAP_VENDOR, &virtio_cap(CFG_PCI, 0, 0))
            .map_err(TransportError::ConfigSpace)?;
        config.set_write_mask_u16(pci_cfg_cap + PCI_CFG_BAR, 0x00ff);
        for field in [PCI_CFG_OFFSET, PCI_CFG_LENGTH, PCI_CFG_DATA] {
            config.set_write_mask_u32(pci_cfg_cap + field, u32::MAX);
        }
        let msix_cap = config
            .add_capability(
                msix::CAPABILITY_ID,
                &msix.capability_body(BAR, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32),
            )
            .map_err(TransportError::ConfigSpace)?;

        let eventfds = |n: usize| {
            (0..n)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(TransportError::EventFd)
        };
        Ok(VirtioPciDevice {
            common: CommonConfig::new(device.features(), device.queue_sizes(), vector_count),
            kicks: eventfds(queue_count)?,
            unrouted_calls: eventfds(queue_count)?,
            device,
            config,
            msix,
            msix_cap,
            pci_cfg_cap,
            ioevents,
            notify_base: None,
            interrupt,
            memory,
            config_failing: false,
            activated: false,
            paused: false,
            restored_places: None,
            counts: TransportCounts::default(),
        })
    }

    pub fn id(&self) -> &str {
        self.device.id()
    }

    /// Places the BAR and turns memory decoding on, as firmware would
    /// before the guest runs; the guest may move it later.
    pub fn place_bar(&mut self, addr: u64) {
        self.config.set_bar_address(usize::from(BAR), addr);
        let command = self.config.u16_at(COMMAND) | COMMAND_MEMORY;
        // Through the normal write path, so that the kicks follow.
        self.config_write(COMMAND as u16, &command.to_le_bytes());
    }

    /// Moves the kick ioeventfds with the BAR, or takes them away while it
    /// is not decoded.
    fn move_notify(&mut self, new: Option<u64>) {
        if new == self.notify_base {
            return;
        }
        if let Some(old) = self.notify_base.take() {
            for (i, kick) in self.kicks.iter().enumerate() {
                let addr = notify_addr(old, i);
                if let Err(e) = self.ioevents.unregister(kick, addr) {
                    log::error!("{}: {}", self.id(), error_chain(&e));
                }
            }
        }
        if let Some(base) = new {
            for (i, kick) in self.kicks.iter().enumerate() {
                let addr = notify_addr(base, i);
                if let Err(e) = self.ioevents.register(kick, addr) {
                    // Kicks of this queue then exit to `bar_write`.
                    log::error!("{}: {}", self.id(), error_chain(&e));
                }
            }
            log::debug!("{}: notify at {:#x}", self.id(), notify_addr(base, 0));
        }
        self.notify_base = new;
    }

    fn needs_reset(&mut self) {
        self.interrupt.set_needs_reset();
        self.sync_device_state();
    }

    /// What the device said from a thread of its own since the driver
    /// last looked: a reset it needs (device_status shows it) and changes
    /// to its config (config_generation moves).
    fn sync_device_state(&mut self) {
        if self.interrupt.needs_reset() {
            self.common.set_needs_reset();
        }
        let changes = self.interrupt.take_config_changes();
        self.common.generation = self.common.generation.wrapping_add(changes);
    }

    /// DRIVER_OK: the device gets the enabled queues, from their start
    /// or, restored, at `places`.
    fn activate(&mut self, places: &[QueuePlace]) {
        let queues = self
            .common
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
            .map(|(index, q)| self.active_queue(index, q, places))
            .collect::<Result<Vec<_>, _>>();
        let result = match queues {
            Ok(queues) => {
                self.activated = true;
                self.counts.activations += 1;
                self.device
                    .activate(ActivateContext {
                        mem: self.memory.clone(),
                        features: self.common.driver_features,
                        queues,
                        interrupt: self.interrupt.clone(),
                    })
                    .map_err(|e| error_chain(&e))
            }
            Err(e) => Err(error_chain(&e)),
        };
        match result {
            Ok(()) => crate::events::emit("virtio-device", "activated", &[("id", self.id())]),
            Err(e) => {
                log::error!(
                    "{}: activation failed; device needs reset: {e}",
                    self.device.id()
                );
                self.needs_reset();
            }
        }
    }

    /// Queue `index` as the driver set it up, with its kick and call, at
    /// its place in `places` if there (a restore) and else at its start.
    fn active_queue(
        &self,
        index: usize,
        q: &QueueState,
        places: &[QueuePlace],
    ) -> Result<ActiveQueue, ActivateError> {
        let invalid = |source| ActivateError::Queue { index, source };
        let mut queue = Queue::new(q.max).map_err(invalid)?;
        queue.try_set_size(q.size).map_err(invalid)?;
        queue
            .try_set_desc_table_address(GuestAddress(q.desc))
            .map_err(invalid)?;
        queue
            .try_set_avail_ring_address(GuestAddress(q.avail))
            .map_err(invalid)?;
        queue
            .try_set_used_ring_address(GuestAddress(q.used))
            .map_err(invalid)?;
        queue.set_event_idx(self.common.driver_features & VIRTIO_RING_F_EVENT_IDX != 0);
        if let Some(place) = places.iter().find(|p| p.index == index) {
            queue.set_next_avail(place.next_avail);
            queue.set_next_used(place.next_used);
        }
        queue.set_ready(true);
        let call = self
            .msix
            .irqfd(q.vector)
            .unwrap_or(&self.unrouted_calls[index]);
        let share = |fd: &EventFd| {
            fd.try_clone()
                .map_err(|source| ActivateError::EventFd { index, source })
        };
        Ok(ActiveQueue {
            index,
            queue,
            kick: share(&self.kicks[index])?,
            call: share(call)?,
        })
    }

    fn reset(&mut self) {
        // Said first: what the reset brings about (a reconnect) follows.
        crate::events::emit("virtio-device", "reset", &[("id", self.id())]);
        self.counts.resets += 1;
        let was_running = self.common.driver_ok();
        if let Err(e) = self.device.reset() {
            log::error!("{}: reset: {}", self.id(), error_chain(&e));
        }
        self.common.reset(self.device.features());
        // After the device's reset: a failure its old connection reported
        // while it was stopping is stale.
        self.interrupt.reset();
        self.config_failing = false;
        self.activated = false;
        self.paused = false;
        self.restored_places = None;
        // Stale kicks would reach the backend at the next activation.
        for fd in self.kicks.iter().chain(&self.unrouted_calls) {
            let _ = fd.read();
        }
        log::debug!("{}: reset (was running: {was_running})", self.id());
    }
}

#[cfg(test)]
mod tests;
