//! Just enough of the i8042 keyboard controller for the guest to pull the
//! CPU reset line (command 0xfe), the way Linux reboots with `reboot=k`.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_exit::{ExitReason, VmExit};

/// Offsets from port 0x60: data at 0, command/status at 4.
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<VmExit>,
}

impl I8042 {
    pub fn new(exit: Arc<VmExit>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: no data, input buffer empty, so drivers give up quickly.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_resets_and_data_port_does_not() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
