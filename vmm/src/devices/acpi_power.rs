//! ACPI hardware-reduced sleep control and reset registers, described in the
//! FADT: the guest powers off by writing SLP_TYP=5 with SLP_EN, and resets by
//! writing the FADT's reset value.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_exit::{ExitReason, VmExit};

/// Offsets inside the device's port range.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Sleep status reads zero: we never wake from a sleep state.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
/// S5 (soft off); the DSDT's `\_S5` package names the same value.
pub const SLP_TYP_S5: u8 = 5;
pub const RESET_VALUE: u8 = 0x06;
const SLP_EN: u8 = 1 << 5;

pub struct AcpiPower {
    exit: Arc<VmExit>,
}

impl AcpiPower {
    pub fn new(exit: Arc<VmExit>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let slp_typ = (value >> 2) & 0x7;
                if slp_typ == SLP_TYP_S5 {
                    self.exit.request(ExitReason::PowerOff);
                } else {
                    log::warn!("Guest asked for sleep state {slp_typ}, which is not supported");
                }
            }
            RESET_OFFSET if value == RESET_VALUE => self.exit.request(ExitReason::Reset),
            _ => log::debug!("Ignored ACPI power write {value:#x} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut dev = AcpiPower::new(exit.clone());
        dev.write(SLEEP_CONTROL_OFFSET, &[SLP_TYP_S5 << 2]);
        assert_eq!(exit.reason(), None, "no SLP_EN, no power-off");
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_value_resets() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut dev = AcpiPower::new(exit.clone());
        dev.write(RESET_OFFSET, &[0x01]);
        assert_eq!(exit.reason(), None);
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
