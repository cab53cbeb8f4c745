//! The transport's part in the VM's lifecycle: pause and resume reach
//! the device only while the driver has it running, and `vm.counters`
//! gets the transport's counts before the device's.

use serde::Deserialize;

use super::persist::TransportSnapshot;
use super::VirtioPciDevice;
use crate::lifecycle::{Counter, ManagedDevice, PersistError};
use crate::util::error_chain;
use crate::virtio::VirtioDevice;

/// Only a device the driver set running has anything to pause: before
/// DRIVER_OK (or when DRIVER_OK found the rings unusable and never reached
/// the device) no ring is in use.
impl<D: VirtioDevice> ManagedDevice for VirtioPciDevice<D> {
    fn pause(&mut self) {
        if self.paused || !self.activated {
            return;
        }
        self.paused = true;
        if let Err(e) = self.device.pause() {
            log::error!(
                "{}: pause failed; device needs reset: {}",
                self.id(),
                error_chain(&e)
            );
            self.needs_reset();
        }
    }

    /// The transport's own counts, then the device's.
    fn counters(&self) -> Vec<Counter> {
        let c = self.counts;
        let (config_interrupts, needs_reset) = self.interrupt.counts();
        let mut counters = vec![
            ("config_reads", c.config_reads),
            ("config_writes", c.config_writes),
            ("config_failures", c.config_failures),
            ("activations", c.activations),
            ("resets", c.resets),
            ("needs_reset", needs_reset),
            ("config_interrupts", config_interrupts),
        ];
        counters.extend(self.device.counters());
        counters
    }

    fn save(&mut self) -> Result<serde_json::Value, PersistError> {
        Ok(serde_json::to_value(self.save_transport()?)?)
    }

    fn restore(&mut self, saved: &serde_json::Value) -> Result<(), PersistError> {
        let saved = TransportSnapshot::deserialize(saved)?;
        self.restore_transport(&saved)?;
        Ok(())
    }

    /// A restored device's resume is its activation where it was saved.
    fn resume(&mut self) {
        if !std::mem::take(&mut self.paused) {
            return;
        }
        if let Some(places) = self.restored_places.take() {
            self.activate(&places);
            // What the driver made available and kicked before the
            // snapshot is served now, as after a pause.
            for (kick, _) in self
                .kicks
                .iter()
                .zip(&self.common.queues)
                .filter(|(_, q)| q.enabled)
            {
                let _ = kick.write(1);
            }
            return;
        }
        if let Err(e) = self.device.resume() {
            log::error!(
                "{}: resume failed; device needs reset: {}",
                self.id(),
                error_chain(&e)
            );
            self.needs_reset();
        }
    }
}
