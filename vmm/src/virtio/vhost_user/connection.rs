//! One connection to a backend: the socket, the vhost crate's frontend on
//! it, the watchdog that guards it, and how long we wait.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;

use super::watchdog::Watchdog;
use super::{Error, VhostUserParams};
use crate::files::type_name;
use crate::signals;

/// How long we wait for a backend.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the socket to accept a connection (start-up and reconnects).
    pub connect: Duration,
    /// For each reply; a vCPU waits this long at most, once.
    pub reply: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            reply: Duration::from_secs(3),
        }
    }
}

/// What requests go through: the vhost crate's frontend, and its socket
/// for the requests we send ourselves.
pub(super) struct Link {
    pub frontend: Frontend,
    pub socket: UnixStream,
}

/// One connection to the backend and the watchdog on its socket.
pub(super) struct Connection {
    pub link: Link,
    pub watchdog: Watchdog,
}

/// Connects, retrying while the socket does not exist or nobody accepts
/// yet (a backend starting next to us), until `deadline` has passed or a
/// termination signal comes.
/// Returns the frontend and a second handle on its socket for the watchdog.
pub(super) fn connect(
    params: &VhostUserParams,
    deadline: Duration,
) -> Result<(Frontend, UnixStream), Error> {
    let path = &params.socket;
    let start = Instant::now();
    let failed = |source| Error::Connect {
        path: path.clone(),
        waited: start.elapsed(),
        source,
    };
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && start.elapsed() < deadline =>
            {
                // Refused by something no backend will ever listen on:
                // waiting out the deadline would only delay the error.
                if let Some(kind) = not_a_socket(path) {
                    return Err(Error::NotASocket {
                        path: path.clone(),
                        kind,
                    });
                }
                // SIGINT and SIGTERM are blocked: without this, vmm would
                // stop only when the deadline passed.
                if signals::pending().is_some() {
                    return Err(Error::Interrupted { path: path.clone() });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(failed(e)),
        }
    };
    let watched = stream.try_clone().map_err(failed)?;
    log::debug!(
        "{}: connected to {} after {:?}",
        params.id,
        path.display(),
        start.elapsed()
    );
    Ok((
        Frontend::from_stream(stream, params.queue_sizes.len() as u64),
        watched,
    ))
}

/// What is at `path` if it is there and not a socket.
fn not_a_socket(path: &Path) -> Option<&'static str> {
    let file_type = std::fs::metadata(path).ok()?.file_type();
    (!file_type.is_socket()).then(|| type_name(file_type))
}

/// Whether the backend closed its end: `socket` polls as hung up. Only
/// meaningful when we have not shut it down ourselves.
pub(super) fn peer_hung_up(socket: &UnixStream) -> bool {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd that outlives the call; a zero timeout never
    // blocks.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n == 1 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
