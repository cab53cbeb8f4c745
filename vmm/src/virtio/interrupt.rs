//! A device's way to interrupt its driver outside the queues: a config
//! change, or DEVICE_NEEDS_RESET when it fails on a thread of its own.
//! Lock-free, so a device thread never waits for the transport (which may
//! be waiting for that very thread to stop).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

use crate::interrupt::MsiInterruptGroup;
use crate::util::error_chain;

/// ISR bit 1: configuration change (bit 0, queue interrupt, is INTx only).
pub const ISR_CONFIG: u8 = 2;
/// The vector number that means "no MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

struct State {
    msi: Arc<dyn MsiInterruptGroup>,
    /// The vector the driver chose for config changes.
    config_vector: AtomicU16,
    isr: AtomicU8,
    needs_reset: AtomicBool,
    /// Changes the device made to its config since the transport last
    /// looked: each bumps config_generation.
    config_changes: AtomicU8,
    /// Config interrupts asked for, and times the device asked for a
    /// reset: for `vm.counters`.
    config_interrupts: AtomicU64,
    needs_reset_count: AtomicU64,
    /// The device's id, for the events it causes.
    id: OnceLock<String>,
}

/// Shared by the transport and the device it activated; clones are handles
/// to the same state.
#[derive(Clone)]
pub struct VirtioInterrupt {
    state: Arc<State>,
}

impl VirtioInterrupt {
    pub fn new(msi: Arc<dyn MsiInterruptGroup>) -> Self {
        Self {
            state: Arc::new(State {
                msi,
                config_vector: AtomicU16::new(NO_VECTOR),
                isr: AtomicU8::new(0),
                needs_reset: AtomicBool::new(false),
                config_changes: AtomicU8::new(0),
                config_interrupts: AtomicU64::new(0),
                needs_reset_count: AtomicU64::new(0),
                id: OnceLock::new(),
            }),
        }
    }

    /// Tells the driver the device's configuration changed: the ISR's
    /// config bit and the config vector (kept pending while masked).
    pub fn trigger_config(&self) {
        self.state.config_interrupts.fetch_add(1, Ordering::Relaxed);
        self.state.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        let vector = self.state.config_vector.load(Ordering::SeqCst);
        if vector != NO_VECTOR {
            if let Err(e) = self.state.msi.trigger(usize::from(vector)) {
                log::error!("Config interrupt: {}", error_chain(&e));
            }
        }
    }

    /// The device changed its config on its own (a console resized): the
    /// generation moves, so a driver reading several fields sees one
    /// state, and the driver is told.
    pub fn config_changed(&self) {
        self.state.config_changes.fetch_add(1, Ordering::SeqCst);
        self.trigger_config();
    }

    /// How many changes `config_changed` announced since the last call.
    pub(super) fn take_config_changes(&self) -> u8 {
        self.state.config_changes.swap(0, Ordering::SeqCst)
    }

    /// Sets DEVICE_NEEDS_RESET and tells the driver by a config interrupt,
    /// once until the driver resets the device. True if it was not set.
    pub fn set_needs_reset(&self) -> bool {
        let first = !self.state.needs_reset.swap(true, Ordering::SeqCst);
        if first {
            self.state.needs_reset_count.fetch_add(1, Ordering::Relaxed);
            let id = self.state.id.get().map_or("", String::as_str);
            crate::events::emit("virtio-device", "needs-reset", &[("id", id)]);
            self.trigger_config();
        }
        first
    }

    /// Names the device in the events it causes; once.
    pub(super) fn set_id(&self, id: &str) {
        let _ = self.state.id.set(id.to_owned());
    }

    /// Config interrupts asked for, and reset requests, since creation.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.state.config_interrupts.load(Ordering::Relaxed),
            self.state.needs_reset_count.load(Ordering::Relaxed),
        )
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.state.needs_reset.load(Ordering::SeqCst)
    }

    /// The transport follows the driver's config_msix_vector.
    pub(super) fn set_config_vector(&self, vector: u16) {
        self.state.config_vector.store(vector, Ordering::SeqCst);
    }

    /// Reading the ISR acknowledges it.
    pub(super) fn take_isr(&self) -> u8 {
        self.state.isr.swap(0, Ordering::SeqCst)
    }

    /// The ISR and whether the device asked for a reset, for a snapshot.
    pub(super) fn saved(&self) -> (u8, bool) {
        (
            self.state.isr.load(Ordering::SeqCst),
            self.state.needs_reset.load(Ordering::SeqCst),
        )
    }

    /// A snapshot's ISR and reset request, in a transport being restored
    /// (the guest was told of both before the snapshot).
    pub(super) fn restore(&self, isr: u8, needs_reset: bool) {
        self.state.isr.store(isr, Ordering::SeqCst);
        self.state.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// The driver reset the device: nothing is pending any more.
    pub(super) fn reset(&self) {
        self.state.isr.store(0, Ordering::SeqCst);
        self.state.needs_reset.store(false, Ordering::SeqCst);
        self.state.config_vector.store(NO_VECTOR, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::fake::FakeMsiGroup;
    use crate::interrupt::MsiMessage;

    #[test]
    fn needs_reset_raises_the_config_vector_once() {
        let msi = FakeMsiGroup::new(2);
        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        msi.update(1, message, false).unwrap();
        let interrupt = VirtioInterrupt::new(Arc::new(msi.clone()));
        interrupt.set_config_vector(1);
        assert!(interrupt.set_needs_reset());
        assert!(!interrupt.set_needs_reset(), "once until reset");
        assert_eq!(msi.delivered(), vec![(1, 0xfee0_0000, 0x41)]);
        assert_eq!(interrupt.take_isr(), ISR_CONFIG);
        assert_eq!(interrupt.take_isr(), 0, "read clears the ISR");
        interrupt.reset();
        assert!(!interrupt.needs_reset());
        interrupt.trigger_config();
        assert_eq!(msi.delivered().len(), 1, "no vector after reset");
        assert_eq!(interrupt.take_isr(), ISR_CONFIG);
    }

    #[test]
    fn a_config_change_is_counted_and_signalled() {
        let msi = FakeMsiGroup::new(1);
        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x42,
        };
        msi.update(0, message, false).unwrap();
        let interrupt = VirtioInterrupt::new(Arc::new(msi.clone()));
        interrupt.set_config_vector(0);
        interrupt.config_changed();
        assert_eq!(msi.delivered(), vec![(0, 0xfee0_0000, 0x42)]);
        interrupt.config_changed();
        assert_eq!(msi.delivered().len(), 2);
        assert_eq!(interrupt.take_isr(), ISR_CONFIG);
        assert_eq!(interrupt.take_config_changes(), 2);
        assert_eq!(interrupt.take_config_changes(), 0, "taken");
        assert!(!interrupt.needs_reset());
    }
}
