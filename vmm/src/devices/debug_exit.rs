//! The guest's way to end the VM with a status: a write of V to the port
//! stops `vmm` with exit status (V << 1) | 1, exactly like QEMU's
//! `isa-debug-exit`, so that one test guest serves both VMMs.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_exit::{ExitReason, VmExit};

pub struct DebugExit {
    exit: Arc<VmExit>,
}

impl DebugExit {
    pub fn new(exit: Arc<VmExit>) -> Self {
        Self { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut value = [0u8; 4];
        let n = data.len().min(4);
        value[..n].copy_from_slice(&data[..n]);
        self.exit
            .request(ExitReason::DebugExit(u32::from_le_bytes(value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requests_exit_with_value() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut dev = DebugExit::new(exit.clone());
        dev.write(0, &[0x01]);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(1)));
        assert_eq!(exit.reason().unwrap().exit_status(), 3);
    }

    #[test]
    fn wide_writes_are_little_endian() {
        let exit = Arc::new(VmExit::new().unwrap());
        DebugExit::new(exit.clone()).write(0, &[0x10, 0, 0, 0]);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(0x10)));
    }
}
