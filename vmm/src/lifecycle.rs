//! What a running VM's devices offer the VMM beyond the guest's accesses:
//! they pause and resume with it, and say what they counted. The device
//! manager holds every device as one of these, by id, from boot to the end.

/// Why a device's state could not be saved or restored: each device's own
/// error, whatever its type.
pub type PersistError = Box<dyn std::error::Error + Send + Sync>;

/// A counter's name (Cloud Hypervisor's where it has one) and value.
pub type Counter = (&'static str, u64);

/// A device as the VMM manages it after boot.
pub trait ManagedDevice: Send {
    /// From return until `resume` the device neither writes guest memory
    /// nor interrupts the guest. A device that cannot pause or resume
    /// cleanly (its backend is gone) says so in the log and asks the guest
    /// for a reset; the VM pauses all the same.
    fn pause(&mut self);
    fn resume(&mut self);
    /// What `vm.counters` shows for the device, since it was created.
    fn counters(&self) -> Vec<Counter>;
    /// The device's state for a snapshot, taken while the VM is paused.
    fn save(&mut self) -> Result<serde_json::Value, PersistError>;
    /// A snapshot's state, into the device as built from the same
    /// configuration, before the guest runs.
    fn restore(&mut self, saved: &serde_json::Value) -> Result<(), PersistError>;
}
