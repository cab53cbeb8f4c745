//! `vmm` as a library: the rooms of the program, so that `main.rs` stays
//! the process (arguments -> configuration -> build -> run -> status) and
//! the fuzz targets in `fuzz/` can drive the device models and parsers
//! without KVM. Public are only the modules `main` uses and, with the
//! `fuzzing` feature, `fuzzing`: what the fuzz targets need.

pub mod api;
mod arch;
pub mod builder;
mod bus;
pub mod cli;
pub mod config;
pub mod control;
mod device_manager;
mod devices;
mod event_loop;
pub mod events;
pub mod files;
mod interrupt;
mod lifecycle;
pub mod logger;
mod pci;
pub mod signals;
mod terminal;
pub mod util;
mod virtio;
pub mod vm_exit;
mod vmm;
mod vstate;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
