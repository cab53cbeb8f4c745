//! `vmm` as a library: the rooms of the program, so that `main.rs` stays
//! the process (arguments -> configuration -> build -> run -> status) and
//! the fuzz targets in `fuzz/` can drive the device models and parsers
//! without KVM. Public are only the modules `main` uses, `snapshot` (the
//! on-disk format that `vm.snapshot` and `--restore` are being built on,
//! complete and tested on its own) and, with the `fuzzing` feature,
//! `fuzzing`: what the fuzz targets need.

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
pub mod snapshot;
mod terminal;
pub mod util;
mod virtio;
pub mod vm_exit;
mod vmm;
mod vstate;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
