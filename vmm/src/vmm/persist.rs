//! `vm.snapshot`: a paused VM written to a snapshot directory, every vCPU
//! saved by its own (parked) thread, KVM's VM state, every device's, the
//! configuration and guest memory.

use std::path::Path;

use super::{InvalidState, VmState as RunState, Vmm};
use crate::config::schema::VmConfigJson;
use crate::device_manager::SaveError;
use crate::events;
use crate::snapshot::{
    SnapshotError, SnapshotWriter, StateError, VmSnapshot, VmState, CONFIG_FILE,
};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFailed {
    #[error(transparent)]
    State(#[from] InvalidState),
    #[error("{0:?} is not a file:// URL of an absolute path")]
    Url(String),
    #[error("vCPU {0} gave no state: its thread has ended")]
    VcpuGone(u8),
    #[error("Failed to save a vCPU")]
    Vcpu(#[source] StateError),
    #[error("Failed to save the VM's interrupt controllers, PIT or clock")]
    Vm(#[source] StateError),
    #[error("Failed to save the devices")]
    Devices(#[source] SaveError),
    #[error("Failed to write the snapshot")]
    Write(#[source] SnapshotError),
    #[error(
        "Failed to read vmm's working directory, which the configuration's relative paths are in"
    )]
    WorkingDirectory(#[source] std::io::Error),
}

impl SnapshotFailed {
    /// The API's status: the request was wrong (400), the VM is not
    /// paused (409), or saving failed (500).
    pub fn status(&self) -> u16 {
        match self {
            SnapshotFailed::State(_) => 409,
            SnapshotFailed::Url(_) => 400,
            SnapshotFailed::Write(SnapshotError::Exists(_)) => 409,
            _ => 500,
        }
    }
}

impl Vmm {
    /// Writes the paused VM to `destination_url` (`file:///DIR`, which
    /// must not exist). The VM stays paused.
    pub fn snapshot(&mut self, destination_url: &str) -> Result<(), SnapshotFailed> {
        if self.state != RunState::Paused {
            return Err(InvalidState {
                state: self.state,
                action: "snapshot (vm.pause first)",
            }
            .into());
        }
        let destination = crate::snapshot::file_url_path(destination_url)
            .ok_or_else(|| SnapshotFailed::Url(destination_url.to_owned()))?;
        events::emit("vm", "snapshotting", &[]);
        let state = VmSnapshot {
            vcpus: self.save_vcpus()?,
            vm: VmState::save(self.vm.fd()).map_err(SnapshotFailed::Vm)?,
            devices: self.devices.save().map_err(SnapshotFailed::Devices)?,
        };
        // Relative paths were the vmm's working directory's; the restore
        // may run anywhere.
        let cwd = std::env::current_dir().map_err(SnapshotFailed::WorkingDirectory)?;
        let config = VmConfigJson::from(&self.config.with_absolute_paths(&cwd));
        write(&destination, &config, &self.memory, &state).map_err(SnapshotFailed::Write)?;
        log::info!("Snapshot written to {}", destination.display());
        events::emit("vm", "snapshotted", &[]);
        Ok(())
    }

    /// Every vCPU's state, by id: the threads save their own while parked
    /// (vCPUs never started are saved here).
    fn save_vcpus(&mut self) -> Result<Vec<crate::snapshot::VcpuState>, SnapshotFailed> {
        let mut saved: Vec<_> = self.control.save_parked();
        for vcpu in &mut self.vcpus {
            saved.push((vcpu.id(), vcpu.save_state()));
        }
        saved.sort_by_key(|(id, _)| *id);
        let mut states = Vec::with_capacity(saved.len());
        for id in 0..self.config.cpus.boot {
            let position = saved.iter().position(|(saved_id, _)| *saved_id == id);
            let Some(position) = position else {
                return Err(SnapshotFailed::VcpuGone(id));
            };
            let (_, state) = saved.swap_remove(position);
            states.push(state.map_err(SnapshotFailed::Vcpu)?);
        }
        Ok(states)
    }
}

fn write(
    destination: &Path,
    config: &VmConfigJson,
    memory: &crate::vstate::memory::GuestMemory,
    state: &VmSnapshot,
) -> Result<(), SnapshotError> {
    let mut writer = SnapshotWriter::create(destination)?;
    writer.write_json(CONFIG_FILE, config)?;
    writer.write_memory(memory)?;
    let state = serde_json::to_value(state).map_err(|source| SnapshotError::Json {
        path: destination.join(crate::snapshot::STATE_FILE),
        source,
    })?;
    writer.finish(state)?;
    Ok(())
}
