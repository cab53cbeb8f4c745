//! A snapshot on disk: a directory in Cloud Hypervisor's layout, with
//! `config.json` (the VM's configuration), `state.json` (what the VMM and
//! its devices save, and every other file's size and checksum) and
//! `memory-ranges` (guest RAM, sparse: pages of zeros are holes).
//!
//! It is written into a temporary sibling, fsynced and renamed into place,
//! so that a snapshot directory is whole or absent, and an existing one is
//! never written over. It is checked whole (format version, `state.json`'s
//! own checksum, each file's size and checksum) before anything is read
//! for a restore, and never modified by reading it.
//!
//! Checksums are CRC-32 (crc32fast): they find a damaged or truncated
//! file, which is what a snapshot meets, at memory speed; they are no
//! defence against a forged one. Memory's checksum covers its pages that
//! are not all zeros, each with its page number, so it does not depend on
//! how the file system keeps holes.

mod memory;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::device_manager::DevicesSnapshot;
use crate::vstate::memory::GuestMemory;
/// What KVM holds of the VM and its vCPUs, as a snapshot saves it.
pub use crate::vstate::saved::{StateError, VcpuState, VmState};

/// `state.json`'s state: KVM's VM and every vCPU (by id), and the devices.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DevicesSnapshot,
}

/// The directory a `file://` URL names (Cloud Hypervisor's
/// `destination_url` and `source_url`); None for any other URL or a
/// relative path.
pub fn file_url_path(url: &str) -> Option<PathBuf> {
    let path = Path::new(url.strip_prefix("file://")?);
    path.is_absolute().then(|| path.to_owned())
}

/// What this VMM writes and reads; another version is refused by name.
pub const FORMAT_VERSION: u32 = 1;
pub const CONFIG_FILE: &str = "config.json";
pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory-ranges";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0} exists: a snapshot is never written over")]
    Exists(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not valid JSON for what it should hold")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: format version {found}, this vmm reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: checksum {found:08x}, the snapshot says {expected:08x}: the file is damaged")]
    Checksum {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("{path}: {found} bytes, the snapshot says {expected}: the file is truncated or grown")]
    Size {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: not listed in {STATE_FILE}")]
    Unlisted { path: PathBuf },
    #[error("{path}: holds {saved} bytes of guest memory, this VM has {present}")]
    MemorySize {
        path: PathBuf,
        saved: u64,
        present: u64,
    },
    #[error("guest memory at {gpa:#x} cannot be reached")]
    GuestMemory { gpa: u64 },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A file's size and checksum, as `state.json` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    // In name order, as every map in the body: the body's JSON is then
    // canonical (keys sorted, compact), and any JSON tool that writes it
    // so computes the same checksum.
    pub crc32: u32,
    pub size: u64,
}

/// `state.json`: the version, what the VMM saved, every other file's
/// digest, and a checksum of all that (written last, checked first).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    crc32: u32,
    body: StateBody,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    files: BTreeMap<String, FileDigest>,
    state: serde_json::Value,
}

impl StateBody {
    /// The checksum of the body's canonical JSON: compact, every key in
    /// name order (serde_json's maps are sorted; the structs' fields are
    /// declared in name order), so the same body always serialises the
    /// same way.
    fn crc32(&self) -> u32 {
        crc32fast::hash(&serde_json::to_vec(self).unwrap_or_default())
    }
}

fn crc32_and_size(bytes: &[u8]) -> FileDigest {
    FileDigest {
        size: bytes.len() as u64,
        crc32: crc32fast::hash(bytes),
    }
}

/// Makes what was written durable: the file's data, or a directory's
/// entries.
fn sync(path: &Path) -> Result<(), SnapshotError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(path))
}

/// A snapshot being written; dropped before `finish`, it leaves nothing.
pub struct SnapshotWriter {
    destination: PathBuf,
    partial: PathBuf,
    files: BTreeMap<String, FileDigest>,
    finished: bool,
}

impl SnapshotWriter {
    /// Starts a snapshot that will be `destination`, which must not exist.
    pub fn create(destination: &Path) -> Result<Self, SnapshotError> {
        if destination.symlink_metadata().is_ok() {
            return Err(SnapshotError::Exists(destination.to_owned()));
        }
        let name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".into());
        let partial = destination.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        fs::create_dir(&partial).map_err(io_error(&partial))?;
        Ok(Self {
            destination: destination.to_owned(),
            partial,
            files: BTreeMap::new(),
            finished: false,
        })
    }

    fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), SnapshotError> {
        let path = self.partial.join(name);
        let mut file = File::create(&path).map_err(io_error(&path))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&path))?;
        self.files.insert(name.to_owned(), crc32_and_size(bytes));
        Ok(())
    }

    /// `value` as the JSON file `name` (`config.json`, or a device's own).
    pub fn write_json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<(), SnapshotError> {
        let path = self.partial.join(name);
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|source| SnapshotError::Json { path, source })?;
        self.write_file(name, &bytes)
    }

    /// Guest RAM, every region in turn, pages of zeros left as holes.
    pub fn write_memory(&mut self, memory: &GuestMemory) -> Result<(), SnapshotError> {
        let path = self.partial.join(MEMORY_FILE);
        let digest = memory::save(memory, &path)?;
        self.files.insert(MEMORY_FILE.to_owned(), digest);
        Ok(())
    }

    /// Writes `state.json` with `state` and every file's digest, then
    /// puts the snapshot in place.
    pub fn finish(mut self, state: serde_json::Value) -> Result<PathBuf, SnapshotError> {
        let body = StateBody {
            files: self.files.clone(),
            state,
        };
        let file = StateFile {
            version: FORMAT_VERSION,
            crc32: body.crc32(),
            body,
        };
        let path = self.partial.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|source| SnapshotError::Json { path, source })?;
        let state_path = self.partial.join(STATE_FILE);
        let mut out = File::create(&state_path).map_err(io_error(&state_path))?;
        out.write_all(&bytes)
            .and_then(|()| out.sync_all())
            .map_err(io_error(&state_path))?;
        sync(&self.partial)?;
        // Refused rather than replaced, should it have appeared meanwhile.
        if self.destination.symlink_metadata().is_ok() {
            return Err(SnapshotError::Exists(self.destination.clone()));
        }
        fs::rename(&self.partial, &self.destination).map_err(io_error(&self.destination))?;
        self.finished = true;
        if let Some(parent) = self
            .destination
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            sync(parent)?;
        }
        Ok(self.destination.clone())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// A snapshot checked whole: its version, `state.json`, and every file
/// it lists.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    files: BTreeMap<String, FileDigest>,
    state: serde_json::Value,
}

impl Snapshot {
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let version = serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|source| SnapshotError::Json {
                path: path.clone(),
                source,
            })?
            .get("version")
            .and_then(serde_json::Value::as_u64);
        match version {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(SnapshotError::Version {
                    path,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                })
            }
            None => {}
        }
        let file: StateFile =
            serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Json {
                path: path.clone(),
                source,
            })?;
        let found = file.body.crc32();
        if found != file.crc32 {
            return Err(SnapshotError::Checksum {
                path,
                expected: file.crc32,
                found,
            });
        }
        for (name, expected) in &file.body.files {
            let path = dir.join(name);
            let found = if name == MEMORY_FILE {
                memory::digest(&path)?
            } else {
                crc32_and_size(&fs::read(&path).map_err(io_error(&path))?)
            };
            check_digest(&path, *expected, found)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            files: file.body.files,
            state: file.body.state,
        })
    }

    /// What the VMM saved in `state.json`.
    pub fn state(&self) -> &serde_json::Value {
        &self.state
    }

    /// `state.json`'s state as the VM's.
    pub fn vm_state(&self) -> Result<VmSnapshot, SnapshotError> {
        VmSnapshot::deserialize(&self.state).map_err(|source| SnapshotError::Json {
            path: self.dir.join(STATE_FILE),
            source,
        })
    }

    /// The file `name`, which `open` checked, as it is.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, SnapshotError> {
        let path = self.dir.join(name);
        if !self.files.contains_key(name) {
            return Err(SnapshotError::Unlisted { path });
        }
        fs::read(&path).map_err(io_error(&path))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The JSON file `name`, which `open` checked.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T, SnapshotError> {
        let path = self.dir.join(name);
        if !self.files.contains_key(name) {
            return Err(SnapshotError::Unlisted { path });
        }
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Json { path, source })
    }

    /// Guest RAM back into `memory`, which must be the size it was.
    pub fn load_memory(&self, memory: &GuestMemory) -> Result<(), SnapshotError> {
        let path = self.dir.join(MEMORY_FILE);
        let saved = self
            .files
            .get(MEMORY_FILE)
            .ok_or_else(|| SnapshotError::Unlisted { path: path.clone() })?;
        memory::load(memory, &path, saved.size)
    }
}

fn check_digest(path: &Path, expected: FileDigest, found: FileDigest) -> Result<(), SnapshotError> {
    if found.size != expected.size {
        return Err(SnapshotError::Size {
            path: path.to_owned(),
            expected: expected.size,
            found: found.size,
        });
    }
    if found.crc32 != expected.crc32 {
        return Err(SnapshotError::Checksum {
            path: path.to_owned(),
            expected: expected.crc32,
            found: found.crc32,
        });
    }
    Ok(())
}
