//! Test harness: finds the binaries, detects the host, boots the probe guest
//! under `vmm` or QEMU, and turns its serial output into typed records.

pub mod api;
pub mod conformance;
pub mod conformance_linux;
pub mod console;
pub mod created;
pub mod digest;
pub mod disk;
pub mod disk_image;
pub mod guest;
pub mod host;
pub mod linux;
pub mod mock;
pub mod nested;
pub mod paths;
pub mod probe;
pub mod process;
pub mod qemu;
pub mod reaper;
pub mod scenario;
pub mod seed;
pub mod static_c;
pub mod virtiofsd;
pub mod vmm;

pub use console::Console;
pub use disk::Disk;
pub use guest::{Guest, Hypervisor, RunningGuest};
pub use host::{HostKind, KvmHost};
pub use mock::{MockBackend, MockOptions};
pub use probe::{ProbeReport, Record};
pub use process::{Output, RunError};
pub use scenario::{LinuxTier, Scenario, ScenarioRun};

/// One test's own temporary directory, removed when dropped: every test
/// keeps its sockets, images and logs apart from every other's.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"))
}
