//! Opening a snapshot for a restore: the whole snapshot is checked
//! (version, every file's size and checksum) and its configuration and
//! state read before any VM is built, so that a bad one is refused with
//! one line naming the file and field, and nothing is modified.

use crate::config::{schema::SchemaError, RestoreConfig, VmConfig};
use crate::snapshot::{Snapshot, SnapshotError, CONFIG_FILE};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("Cannot restore from {0}")]
    Snapshot(String, #[source] SnapshotError),
    #[error("Cannot restore from {dir}: {CONFIG_FILE}")]
    Config {
        dir: String,
        #[source]
        source: SchemaError,
    },
    #[error("Cannot restore from {dir}: vhost_user_sockets")]
    Socket {
        dir: String,
        #[source]
        source: crate::config::NoSuchVhostUserDevice,
    },
}

/// A snapshot opened and checked, and how to start from it.
pub struct Restore {
    pub snapshot: Snapshot,
    pub resume: bool,
    pub prefault: bool,
}

/// The snapshot `restore` names, checked, and the VM configuration it holds.
pub fn open(restore: &RestoreConfig) -> Result<(VmConfig, Restore), RestoreError> {
    let dir = restore.source.display().to_string();
    let snapshot =
        Snapshot::open(&restore.source).map_err(|e| RestoreError::Snapshot(dir.clone(), e))?;
    let bytes = snapshot
        .read_file(CONFIG_FILE)
        .map_err(|e| RestoreError::Snapshot(dir.clone(), e))?;
    let mut config = VmConfig::from_json(&bytes).map_err(|source| RestoreError::Config {
        dir: dir.clone(),
        source,
    })?;
    for (id, socket) in &restore.sockets {
        config
            .set_socket(id, socket.clone())
            .map_err(|e| RestoreError::Socket {
                dir: dir.clone(),
                source: e,
            })?;
    }
    // The state must read as this vmm's before anything is built.
    snapshot
        .vm_state()
        .map_err(|e| RestoreError::Snapshot(dir, e))?;
    Ok((
        config,
        Restore {
            snapshot,
            resume: restore.resume,
            prefault: restore.prefault,
        },
    ))
}
