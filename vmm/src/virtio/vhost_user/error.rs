//! How the generic device fails, and which request failures cost the
//! connection.

use std::path::PathBuf;
use std::time::Duration;

use super::get_config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Nothing listens on vhost-user socket {path} (waited {waited:?})")]
    Connect {
        path: PathBuf,
        waited: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user socket {path} is a {kind}, not a socket")]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("Stopped waiting for vhost-user socket {path}: SIGINT or SIGTERM came")]
    Interrupted { path: PathBuf },
    #[error("Failed to watch vhost-user socket {path}")]
    Watchdog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user {what} failed")]
    Backend {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user GET_CONFIG failed")]
    GetConfig(#[source] get_config::Error),
    #[error("vhost-user {what}: no reply within {after:?}; connection closed")]
    NoReply { what: &'static str, after: Duration },
    #[error("vhost-user {what}: no reply, or only part of one, within {after:?} (a header announcing more bytes than came, or a reply with more file descriptors than the 32 a message may bring, whose bytes the vhost crate then loses?); connection closed")]
    IncompleteReply { what: &'static str, after: Duration },
    #[error("vhost-user {what}: the backend at {path} closed the connection")]
    HungUp { path: PathBuf, what: &'static str },
    #[error("vhost-user connection to {path} is down until the device is reset")]
    Disconnected { path: PathBuf },
    #[error(
        "device {id}: {asked} queues were asked for (queue_sizes) but the backend offers {offered} (VHOST_USER_GET_QUEUE_NUM)"
    )]
    TooManyQueues {
        id: String,
        asked: usize,
        offered: u64,
    },
    #[error(
        "device {id}: the backend refuses queue {index} with {size} entries (SET_VRING_NUM): it has fewer queues or a smaller maximum queue size"
    )]
    QueueRefused {
        id: String,
        index: usize,
        size: u16,
        #[source]
        source: Box<Error>,
    },
    #[error(
        "device {id}: {ty} has a config space but the backend lacks VHOST_USER_PROTOCOL_F_CONFIG; give its bytes with config=HEX"
    )]
    NoConfigFeature { id: String, ty: String },
    #[error("guest memory region at {addr:#x} is not shared (use --memory shared=on)")]
    NotShared { addr: u64 },
    #[error("queue {queue}: ring at {addr:#x}+{len:#x} is not in guest memory")]
    BadRingAddress { queue: usize, addr: u64, len: u64 },
    #[error("queue {queue} was not stopped by the pause: where it stands is not known")]
    NotStopped { queue: usize },
    #[error("the restore is refused: {0}")]
    RestoreRefused(String),
    #[error("the backend's state transfer failed")]
    StateTransfer(#[source] super::persist::TransferError),
}

/// How a request can fail: the vhost crate's frontend, or our own
/// GET_CONFIG.
pub(super) trait RequestError: std::error::Error {
    /// Whether the byte stream cannot be trusted any more (lost, cut, or
    /// out of step with our requests); a refusal from a live backend is
    /// not such a failure.
    fn breaks_connection(&self) -> bool;
    /// Whether the reader found less than a whole message when the
    /// deadline cut it off: no reply at all, or a malformed one (a header
    /// announcing more than came, or more than 32 file descriptors: the
    /// vhost crate's reader takes the kernel's "truncated" for a retry and
    /// drops the bytes it read). The crate reports all as a partial
    /// message, and only the reader sees the bytes it consumed, so they
    /// cannot be told apart here; the error says each.
    fn incomplete_reply(&self) -> bool {
        false
    }
    fn into_error(self, what: &'static str) -> Error;
}

impl RequestError for vhost::Error {
    fn breaks_connection(&self) -> bool {
        use vhost::vhost_user::Error as E;
        match self {
            vhost::Error::VhostUserProtocol(inner) => !matches!(
                inner,
                E::InvalidParam
                    | E::InvalidOperation(_)
                    | E::InactiveFeature(_)
                    | E::InactiveOperation(_)
                    | E::BackendInternalError
                    | E::FeatureMismatch
            ),
            _ => false,
        }
    }

    fn incomplete_reply(&self) -> bool {
        matches!(
            self,
            vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::PartialMessage)
        )
    }

    fn into_error(self, what: &'static str) -> Error {
        Error::Backend { what, source: self }
    }
}

impl RequestError for get_config::Error {
    fn breaks_connection(&self) -> bool {
        get_config::Error::breaks_connection(self)
    }

    fn into_error(self, _: &'static str) -> Error {
        Error::GetConfig(self)
    }
}
