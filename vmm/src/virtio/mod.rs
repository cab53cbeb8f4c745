//! VIRTIO devices: the interface every device offers its transport, what
//! a device is handed when the driver sets DRIVER_OK, the virtio-pci
//! transport, the worker thread devices serve their events on, and the
//! generic vhost-user device.

pub mod block;
pub mod console;
pub mod interrupt;
pub mod pci;
pub mod vhost_user;
pub mod worker;

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub use self::interrupt::VirtioInterrupt;

/// VIRTIO_F_VERSION_1: the modern interface, which our transport is.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_EVENT_IDX: used_event and avail_event in the rings.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A device's config access served from its bytes: what the transport
/// asks for is inside the window, and a window shorter than the bytes
/// leaves the rest zero.
pub fn read_config_bytes(config: &[u8], offset: u32, data: &mut [u8]) {
    let start = offset as usize;
    match config.get(start..start + data.len()) {
        Some(bytes) => data.copy_from_slice(bytes),
        None => data.fill(0),
    }
}

/// The next chain the driver made available, if any. Unlike
/// `QueueT::pop_descriptor_chain`, which logs and says "none", a ring
/// that says there is a chain but cannot give it is an error: an
/// available index no ring can hold (more entries than the queue has), or
/// an entry outside guest memory. A worker that took those for "none
/// yet" while `enable_notification` says "more" would spin forever.
pub fn pop_chain<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, virtio_queue::Error> {
    let available = queue
        .avail_idx(mem, Ordering::Acquire)?
        .0
        .wrapping_sub(queue.next_avail());
    if available == 0 {
        return Ok(None);
    }
    // `iter` reads the index again and refuses more than the queue holds.
    match queue.iter(mem)?.next() {
        Some(chain) => Ok(Some(chain)),
        None => Err(virtio_queue::Error::FindMemoryRegion),
    }
}

/// A queue the driver enabled: the ring as the driver laid it out, and the
/// eventfds that carry its kicks (a KVM ioeventfd on the notify address)
/// and its calls (the irqfd of the queue's MSI-X vector).
pub struct ActiveQueue {
    pub index: usize,
    pub queue: virtio_queue::Queue,
    pub kick: EventFd,
    pub call: EventFd,
}

/// Where a running queue stands: the next available entry the device
/// takes and the next used entry it writes. A paused device says it for a
/// snapshot; a restore activates the device at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePlace {
    pub index: usize,
    pub next_avail: u16,
    pub next_used: u16,
}

/// Where a paused worker leaves its queue's place for the device to read
/// (None until it has paused since the slot was cleared).
pub type PlaceSlot = std::sync::Arc<std::sync::Mutex<Option<QueuePlace>>>;

/// A queue's place as it stands.
pub fn place_of(index: usize, queue: &Queue) -> QueuePlace {
    QueuePlace {
        index,
        next_avail: queue.next_avail(),
        next_used: queue.next_used(),
    }
}

/// Everything a device needs once the driver is ready, in one value.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    /// The features the driver acked.
    pub features: u64,
    /// The enabled queues, by index.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: VirtioInterrupt,
}

/// What a transport needs from a device: its identity, features and queue
/// layout, its config window, and the three moments of its life (config
/// access, DRIVER_OK, reset). In-VMM devices and the generic vhost-user
/// device alike; tests use others.
pub trait VirtioDevice: Send {
    type Error: std::error::Error + 'static;

    /// For log lines: the user's device id.
    fn id(&self) -> &str;
    /// The VIRTIO device ID (26 for fs).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the guest may choose smaller.
    fn queue_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Length of the device configuration window; accesses beyond it read
    /// zero and never reach the device.
    fn config_len(&self) -> u32;
    /// `offset` and `data` are inside the window.
    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), Self::Error>;
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;
    /// The transport's interrupt handle, given once when the device is
    /// put behind it, for a device that can fail before DRIVER_OK (a
    /// backend connection that hangs up while the driver negotiates).
    /// The same handle comes again in every `ActivateContext`.
    fn attach(&mut self, _interrupt: VirtioInterrupt) {}
    /// DRIVER_OK. A device that fails later, on a thread of its own, says so
    /// through `context.interrupt.set_needs_reset()`.
    fn activate(&mut self, context: ActivateContext) -> Result<(), Self::Error>;
    /// The driver wrote 0 to device_status: stop and be ready to negotiate
    /// again.
    fn reset(&mut self) -> Result<(), Self::Error>;
    /// The VM is pausing (only ever between `activate` and `reset`): from
    /// return until `resume` the device neither writes guest memory nor
    /// interrupts the guest, and it keeps what it needs to go on where it
    /// stopped. What the driver made available meanwhile waits.
    fn pause(&mut self) -> Result<(), Self::Error>;
    /// Goes on from where `pause` stopped.
    fn resume(&mut self) -> Result<(), Self::Error>;
    /// While paused: where each queue it runs stands, by index.
    fn queue_places(&self) -> Result<Vec<QueuePlace>, Self::Error>;
    /// While paused: what the device holds beyond its queues' places (the
    /// console's input not yet delivered), for a snapshot; `Null` for a
    /// device that holds nothing more.
    fn save_state(&mut self) -> Result<serde_json::Value, Self::Error>;
    /// Before an activation at saved places: what `save_state` gave.
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), Self::Error>;
    /// What the device counts of its own (requests, bytes, reconnects),
    /// for `vm.counters`; the transport adds config accesses, resets and
    /// config interrupts to it.
    fn counters(&self) -> Vec<crate::lifecycle::Counter> {
        Vec::new()
    }
}
