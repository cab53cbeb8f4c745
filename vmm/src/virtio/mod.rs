//! VIRTIO devices: the device type table, the virtio-pci transport and the
//! generic vhost-user device behind it.

pub mod device_type;
pub mod pci;
pub mod vhost_user;

use vmm_sys_util::eventfd::EventFd;

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
