//! Why the VM stopped, and the one place that decides it: the first reason
//! reported wins, later ones (a vCPU seeing the stop, a second device) are
//! only logged.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::util::lock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI power-off.
    PowerOff,
    /// ACPI reset register or i8042 reset line: we stop rather than reboot.
    Reset,
    /// The guest wrote `value` to the debug exit port.
    DebugExit(u32),
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault { vcpu: u8 },
    /// A vCPU could not go on (KVM error, emulation failure, ...).
    VcpuError { vcpu: u8, message: String },
    /// One of `signals::TERMINATING` (SIGINT, SIGTERM, SIGHUP, ...).
    Signal(i32),
    /// `vmm.shutdown` through the API.
    ApiShutdown,
    /// `vm.shutdown` through the API: the VM ends, vmm stays.
    ApiVmShutdown,
    /// `vm.reboot` through the API: the VM ends and boots again.
    ApiVmReboot,
    /// `vm.delete` through the API: the VM ends and its configuration is
    /// forgotten; vmm stays.
    ApiVmDelete,
}

impl ExitReason {
    /// The process exit status for this reason. Documented in `--help`.
    pub fn exit_status(&self) -> i32 {
        match self {
            ExitReason::PowerOff
            | ExitReason::Reset
            | ExitReason::ApiShutdown
            | ExitReason::ApiVmShutdown
            | ExitReason::ApiVmReboot
            | ExitReason::ApiVmDelete => 0,
            // Same as QEMU's isa-debug-exit, so one guest serves both VMMs.
            ExitReason::DebugExit(value) => (((value & 0x7f) << 1) | 1) as i32,
            ExitReason::TripleFault { .. } | ExitReason::VcpuError { .. } => 1,
            ExitReason::Signal(signo) => 128 + signo,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::DebugExit(v) => write!(f, "guest wrote {v:#x} to the debug exit port"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "guest triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu} failed: {message}"),
            ExitReason::Signal(signo) => write!(f, "stopped by signal {signo}"),
            ExitReason::ApiShutdown => write!(f, "vmm.shutdown asked through the API"),
            ExitReason::ApiVmShutdown => write!(f, "vm.shutdown asked through the API"),
            ExitReason::ApiVmReboot => write!(f, "vm.reboot asked through the API"),
            ExitReason::ApiVmDelete => write!(f, "vm.delete asked through the API"),
        }
    }
}

/// Shared by every device and vCPU that can end the VM; the main loop polls `event`.
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl VmExit {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn request(&self, reason: ExitReason) {
        let mut slot = lock(&self.reason);
        match &*slot {
            None => {
                log::info!("VM stopping: {reason}");
                *slot = Some(reason);
                if let Err(e) = self.event.write(1) {
                    log::error!("Failed to signal VM exit: {e}");
                }
            }
            Some(first) => log::debug!("Ignoring exit request ({reason}) after: {first}"),
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    pub fn is_requested(&self) -> bool {
        lock(&self.reason).is_some()
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let exit = VmExit::new().unwrap();
        assert!(!exit.is_requested());
        exit.request(ExitReason::DebugExit(1));
        exit.request(ExitReason::PowerOff);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(1)));
        assert_eq!(exit.event().read().unwrap(), 1);
    }

    #[test]
    fn exit_status_matches_qemu_debug_exit() {
        assert_eq!(ExitReason::DebugExit(0).exit_status(), 1);
        assert_eq!(ExitReason::DebugExit(1).exit_status(), 3);
        assert_eq!(ExitReason::DebugExit(0x10).exit_status(), 0x21);
        assert_eq!(ExitReason::PowerOff.exit_status(), 0);
        assert_eq!(ExitReason::Reset.exit_status(), 0);
        assert_eq!(ExitReason::TripleFault { vcpu: 0 }.exit_status(), 1);
        assert_eq!(ExitReason::Signal(15).exit_status(), 143);
    }
}
