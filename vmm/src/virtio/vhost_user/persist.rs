//! What a snapshot keeps of the generic vhost-user device beyond its
//! queues' places: the features the driver acked, the config window as
//! the backend served it, and the backend's own state, transferred with
//! `SET_DEVICE_STATE_FD` and checked with `CHECK_DEVICE_STATE` when the
//! backend offers `VHOST_USER_PROTOCOL_F_DEVICE_STATE`.
//!
//! A restore gives all of it to the new backend before anything runs
//! (features, memory, the state, then the config window with
//! `SET_CONFIG`'s migration flag where it differs), so that a backend that
//! refuses any of it fails the restore by name; the rings start at their
//! saved places when the VM resumes. A backend without device state is
//! still restored at its saved places (no request skipped) and the
//! snapshot says its own state was not saved.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
};
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use super::{get_config, Error, GenericVhostUser, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::util::{parse_hex, to_hex};

/// How long a backend may take to hand over or take back its state: a
/// hang detector (virtiofsd's state is its open files' paths, kilobytes).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserSnapshot {
    /// What SET_FEATURES gave the backend at DRIVER_OK.
    pub acked_features: u64,
    /// The config window as the backend (or `config=`) served it.
    #[serde(with = "crate::util::hex_bytes")]
    pub config: Vec<u8>,
    /// The backend's own state, hex; None: the backend offers no
    /// DEVICE_STATE, and its state was not saved.
    pub backend_state: Option<String>,
}

/// A restore's state, given to the backend at `restore_state` and kept
/// for the activation.
pub(super) struct Restored {
    pub acked_features: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("Failed to make a pipe for the state")]
    Pipe(#[source] std::io::Error),
    #[error("the state did not pass within {0:?}")]
    Deadline(Duration),
    #[error("Failed to move the state through the pipe")]
    Io(#[source] std::io::Error),
    #[error("the pipe's thread panicked")]
    Thread,
}

impl GenericVhostUser {
    fn has(&self, feature: VhostUserProtocolFeatures) -> bool {
        self.negotiated.protocol.contains(feature)
    }

    /// The paused device's state: its rings are stopped (GET_VRING_BASE),
    /// so the backend's state is the stopped device's.
    pub(super) fn save(&mut self) -> Result<VhostUserSnapshot, Error> {
        let config = self.config_window()?;
        let backend_state = if self.has(VhostUserProtocolFeatures::DEVICE_STATE) {
            let bytes = self.transfer_out()?;
            log::info!(
                "{}: backend state saved ({} bytes)",
                self.params.id,
                bytes.len()
            );
            Some(to_hex(&bytes))
        } else {
            log::warn!(
                "{}: the backend offers no DEVICE_STATE: its own state is not in the snapshot (its rings are, at their places)",
                self.params.id
            );
            None
        };
        Ok(VhostUserSnapshot {
            acked_features: self.acked,
            config,
            backend_state,
        })
    }

    /// Before anything runs: the new backend takes the saved features,
    /// the guest's memory, its saved state and its config window, or the
    /// restore fails here.
    pub(super) fn restore(&mut self, saved: &VhostUserSnapshot) -> Result<(), Error> {
        let offered = self.negotiated.backend_features | VHOST_USER_F_PROTOCOL_FEATURES;
        if saved.acked_features & !offered != 0 {
            return Err(Error::RestoreRefused(format!(
                "the driver acked features {:#x}, the backend offers {:#x}",
                saved.acked_features, self.negotiated.backend_features
            )));
        }
        let acked = saved.acked_features;
        self.request("SET_FEATURES", |f| f.set_features(acked))?;
        self.set_mem_table()?;
        if let Some(state) = &saved.backend_state {
            if !self.has(VhostUserProtocolFeatures::DEVICE_STATE) {
                return Err(Error::RestoreRefused(
                    "the snapshot has the backend's state, and this backend offers no DEVICE_STATE to load it".into(),
                ));
            }
            let bytes = parse_hex(state).ok_or_else(|| {
                Error::RestoreRefused("the saved backend state is not hex".into())
            })?;
            self.transfer_in(&bytes)?;
            log::info!(
                "{}: backend state loaded ({} bytes)",
                self.params.id,
                bytes.len()
            );
        }
        self.restore_config_window(&saved.config)?;
        self.restored = Some(Restored {
            acked_features: acked,
        });
        Ok(())
    }

    /// The whole window, as the guest reads it.
    fn config_window(&mut self) -> Result<Vec<u8>, Error> {
        if let Some(bytes) = &self.config_bytes {
            return Ok(bytes.clone());
        }
        if !self.has(VhostUserProtocolFeatures::CONFIG) {
            return Ok(Vec::new());
        }
        let len = self.params.config_len.min(get_config::MAX_SIZE);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.request_on("GET_CONFIG", |link| {
            get_config::get_config(&link.socket, 0, len)
        })
    }

    /// The saved window, where the new backend's differs, written back
    /// with SET_CONFIG's migration flag (which may set fields the guest
    /// cannot).
    fn restore_config_window(&mut self, saved: &[u8]) -> Result<(), Error> {
        if let Some(bytes) = &mut self.config_bytes {
            *bytes = saved.to_vec();
            return Ok(());
        }
        let now = self.config_window()?;
        if now == saved || saved.is_empty() {
            return Ok(());
        }
        log::info!(
            "{}: the backend's config window differs from the snapshot's: writing the saved one back",
            self.params.id
        );
        self.request("SET_CONFIG", |f| {
            f.set_config(0, VhostUserConfigFlags::LIVE_MIGRATION, saved)
        })
    }

    /// SET_DEVICE_STATE_FD (save), the state read to its end, then
    /// CHECK_DEVICE_STATE. The pipe is read from a thread started first:
    /// a backend may write before it replies.
    fn transfer_out(&mut self) -> Result<Vec<u8>, Error> {
        let (read, write) = pipe().map_err(Error::StateTransfer)?;
        let reader = spawn_pipe_thread(move || read_to_end(read));
        let theirs = self.request("SET_DEVICE_STATE_FD", |f| {
            f.set_device_state_fd(
                VhostTransferStateDirection::SAVE,
                VhostTransferStatePhase::STOPPED,
                write,
            )
        });
        let ours = join(reader)?;
        let bytes = match theirs? {
            // The backend's own pipe: ours saw EOF once it dropped its end.
            Some(file) => read_to_end(file).map_err(Error::StateTransfer)?,
            None => ours.map_err(Error::StateTransfer)?,
        };
        self.request("CHECK_DEVICE_STATE", |f| f.check_device_state())?;
        Ok(bytes)
    }

    /// SET_DEVICE_STATE_FD (load), the state written and the pipe closed,
    /// then CHECK_DEVICE_STATE.
    fn transfer_in(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let (read, write) = pipe().map_err(Error::StateTransfer)?;
        let owned = bytes.to_vec();
        let writer = spawn_pipe_thread(move || write_all(write, &owned));
        let theirs = self.request("SET_DEVICE_STATE_FD", |f| {
            f.set_device_state_fd(
                VhostTransferStateDirection::LOAD,
                VhostTransferStatePhase::STOPPED,
                OwnedFd::from(read),
            )
        })?;
        match theirs {
            Some(file) => {
                // Ours went nowhere: the backend reads its own pipe.
                let _ = join(writer)?;
                write_all(file, bytes).map_err(Error::StateTransfer)?;
            }
            None => join(writer)?.map_err(Error::StateTransfer)?,
        }
        self.request("CHECK_DEVICE_STATE", |f| f.check_device_state())?;
        Ok(())
    }
}

fn pipe() -> Result<(File, OwnedFd), TransferError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(TransferError::Pipe(std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned by nobody
    // else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((read, write))
}

fn spawn_pipe_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<JoinHandle<Result<T, TransferError>>, TransferError> {
    std::thread::Builder::new()
        .name("vhost-user-state".into())
        .spawn(work)
        .map_err(TransferError::Io)
}

fn join<T>(
    thread: Result<JoinHandle<Result<T, TransferError>>, TransferError>,
) -> Result<Result<T, TransferError>, Error> {
    let thread = thread.map_err(Error::StateTransfer)?;
    thread
        .join()
        .map_err(|_| Error::StateTransfer(TransferError::Thread))
}

/// Waits until `fd` is ready for `events`, or the deadline passes.
fn wait_ready(fd: i32, events: libc::c_short, deadline: Instant) -> Result<(), TransferError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransferError::Deadline(TRANSFER_DEADLINE));
        }
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd for the call's duration.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready > 0 {
            return Ok(());
        }
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(TransferError::Io(e));
            }
        }
    }
}

fn read_to_end(mut file: File) -> Result<Vec<u8>, TransferError> {
    let deadline = Instant::now() + TRANSFER_DEADLINE;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        wait_ready(file.as_raw_fd(), libc::POLLIN, deadline)?;
        match file.read(&mut chunk) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TransferError::Io(e)),
        }
    }
}

fn write_all(fd: impl Into<OwnedFd>, mut bytes: &[u8]) -> Result<(), TransferError> {
    let mut file = File::from(fd.into());
    let deadline = Instant::now() + TRANSFER_DEADLINE;
    while !bytes.is_empty() {
        wait_ready(file.as_raw_fd(), libc::POLLOUT, deadline)?;
        match file.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TransferError::Io(e)),
        }
    }
    Ok(())
}
