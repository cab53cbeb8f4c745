//! VIRTIO devices: the device type table, the virtio-pci transport and the
//! generic vhost-user device behind it.

pub mod pci;
pub mod vhost_user;

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern interface, which our transport is.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// How a device tells its transport, from a thread of its own, that it
/// failed while the guest was not touching it (its backend hung up). The
/// call returns false while the transport is busy; the caller retries.
pub type FailureSignal = Arc<dyn Fn() -> bool + Send + Sync>;

/// A queue the guest enabled, as the transport hands it to the device at
/// DRIVER_OK: guest-physical ring addresses and the eventfds that carry
/// kicks (KVM ioeventfd) and calls (KVM irqfd of the queue's MSI-X vector).
pub struct QueueSetup<'a> {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: &'a EventFd,
    pub call: &'a EventFd,
}

/// What a transport needs from a device: its identity, features and queue
/// layout, its config window, and the three moments of its life (config
/// access, DRIVER_OK, reset). The generic vhost-user device is one; tests
/// use others.
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
    /// DRIVER_OK: `features` are the driver's, `queues` the enabled ones.
    fn activate(&mut self, features: u64, queues: &[QueueSetup<'_>]) -> Result<(), Self::Error>;
    /// The driver wrote 0 to device_status: stop and be ready to negotiate
    /// again.
    fn reset(&mut self) -> Result<(), Self::Error>;
    /// Where to signal failures found between guest accesses; devices that
    /// only fail when asked something ignore it.
    fn set_failure_signal(&mut self, _signal: FailureSignal) {}
}
