//! The ACPI Generic Event Device (`ACPI0013`) of a hardware-reduced
//! platform, which has no fixed power button: the VMM sets an event bit
//! and raises the device's interrupt; the guest's `_EVT` method (in the
//! DSDT) reads the status byte, which clears it, and notifies the power
//! button device (`PNP0C0C`) for the bit it finds.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The status byte's bit for a power-button press (the DSDT's `_EVT`
/// tests the same).
pub const EVENT_POWER_BUTTON: u8 = 1 << 0;

/// The guest's side: the status byte on the I/O bus.
pub struct AcpiGed {
    pending: Arc<AtomicU8>,
}

impl BusDevice for AcpiGed {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (0, Some(first)) = (offset, data.first_mut()) {
            *first = self.pending.swap(0, Ordering::AcqRel);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        log::debug!("Ignored ACPI GED write {data:x?} at offset {offset}");
    }
}

/// The VMM's side: what raises an event.
pub struct GedEvents {
    pending: Arc<AtomicU8>,
    irq: EventFd,
}

impl GedEvents {
    /// The events the guest has not read yet.
    pub fn pending(&self) -> u8 {
        self.pending.load(Ordering::Acquire)
    }

    /// Events a snapshot saved as not read: the guest reads them when it
    /// takes the interrupt, which its IOAPIC state (restored by KVM) has
    /// pending or not.
    pub fn restore_pending(&self, pending: u8) {
        self.pending.store(pending, Ordering::Release);
    }

    /// A press of the power button: the event bit, then the edge.
    pub fn power_button(&self) -> std::io::Result<()> {
        self.pending.fetch_or(EVENT_POWER_BUTTON, Ordering::AcqRel);
        self.irq.write(1)
    }
}

/// The device and its handle, sharing the status byte; `irq` is the
/// interrupt line's irqfd.
pub fn acpi_ged(irq: EventFd) -> (AcpiGed, GedEvents) {
    let pending = Arc::new(AtomicU8::new(0));
    (
        AcpiGed {
            pending: pending.clone(),
        },
        GedEvents { pending, irq },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_press_raises_the_line_and_the_guest_reads_it_once() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (mut ged, events) = acpi_ged(irq.try_clone().unwrap());
        let read = |ged: &mut AcpiGed| {
            let mut byte = [0xff];
            ged.read(0, &mut byte);
            byte[0]
        };
        assert_eq!(read(&mut ged), 0, "no event yet");
        assert!(irq.read().is_err(), "no edge yet");
        events.power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read(&mut ged), EVENT_POWER_BUTTON);
        assert_eq!(read(&mut ged), 0, "reading cleared it");
        let mut wide = [0xff; 4];
        events.power_button().unwrap();
        ged.read(0, &mut wide);
        assert_eq!(wide, [EVENT_POWER_BUTTON, 0, 0, 0]);
    }
}
