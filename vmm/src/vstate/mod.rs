//! Every KVM ioctl the VMM makes lives below here: the VM, its vCPUs and
//! guest memory. Device emulation does not call KVM directly.

pub mod interrupts;
pub mod memory;
pub mod saved;
pub mod vcpu;
pub mod vcpu_control;
pub mod vm;
