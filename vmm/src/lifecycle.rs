//! What a running VM's devices offer the VMM beyond the guest's accesses:
//! they pause and resume with it. The device manager holds every device
//! as one of these, by id, from boot to the end.

/// A device the VM's pause reaches. From `pause`'s return until `resume`
/// it neither writes guest memory nor interrupts the guest. A device that
/// cannot pause or resume cleanly (its backend is gone) says so in the
/// log and asks the guest for a reset; the VM pauses all the same.
pub trait Pausable: Send {
    fn pause(&mut self);
    fn resume(&mut self);
}
