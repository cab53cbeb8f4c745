//! VIRTIO devices: the device type table and, later, the virtio-pci
//! transport and the generic vhost-user device.

pub mod device_type;
