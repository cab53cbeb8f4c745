//! The API a running VM is driven by, in Cloud Hypervisor's names, bodies
//! and codes: HTTP on a Unix socket (`http`, `routes`) in front, and the
//! requests the VMM thread answers behind. A client's thread hands its
//! request over a channel, wakes the VMM thread through an eventfd and
//! waits for the answer; the VMM thread serves requests between guest
//! events, so no request ever runs on a vCPU or device thread.

mod http;
mod routes;
mod socket;

#[cfg(feature = "fuzzing")]
pub use self::http::parse_stream;
#[cfg(feature = "fuzzing")]
pub use self::routes::HttpError;

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

pub use self::socket::SocketError;
use crate::files::PathOrFd;
use crate::util::lock;

/// What a client asks of the VMM thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    VmmPing,
    VmInfo,
    VmCounters,
    VmPause,
    VmResume,
    VmShutdown,
    VmReboot,
    VmPowerButton,
    VmBoot,
    VmmShutdown,
    /// A configuration in Cloud Hypervisor's JSON, checked as it came.
    VmCreate(Box<crate::config::VmConfig>),
    VmDelete,
    /// Cloud Hypervisor's `VmSnapshotConfig`.
    VmSnapshot {
        destination_url: String,
    },
    /// Cloud Hypervisor's `RestoreConfig`, checked as it came.
    VmRestore(crate::config::RestoreConfig),
}

/// An HTTP status and, unless empty, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiReply {
    pub status: u16,
    pub body: Option<String>,
}

impl ApiReply {
    pub fn no_content() -> ApiReply {
        ApiReply {
            status: 204,
            body: None,
        }
    }

    pub fn json(value: &serde_json::Value) -> ApiReply {
        ApiReply {
            status: 200,
            body: Some(value.to_string()),
        }
    }

    /// Cloud Hypervisor's error body: the error chain, outermost first.
    pub fn error(status: u16, chain: &[String]) -> ApiReply {
        ApiReply {
            status,
            body: Some(serde_json::Value::from(chain.to_vec()).to_string()),
        }
    }
}

type Exchange = (ApiRequest, mpsc::SyncSender<ApiReply>);

/// How long the VMM, as it ends, waits for answers still being written
/// (the reply to `vmm.shutdown` among them).
const LAST_ANSWERS: Duration = Duration::from_secs(5);

/// Requests handed over and not yet answered on their sockets.
#[derive(Debug, Default)]
struct InFlight {
    count: Mutex<usize>,
    done: Condvar,
}

impl InFlight {
    fn finished(&self) {
        let mut count = lock(&self.count);
        *count = count.saturating_sub(1);
        self.done.notify_all();
    }
}

/// The client threads' end: how a request reaches the VMM thread.
#[derive(Clone)]
pub struct Requests {
    queue: Arc<Mutex<mpsc::Sender<Exchange>>>,
    wake: Arc<EventFd>,
    in_flight: Arc<InFlight>,
}

impl Requests {
    /// Hands `request` to the VMM thread and waits for its answer. The
    /// caller says `answered` once the answer is on its socket.
    pub fn ask(&self, request: ApiRequest) -> ApiReply {
        *lock(&self.in_flight.count) += 1;
        let (answer, reply) = mpsc::sync_channel(1);
        let gone = || {
            ApiReply::error(
                503,
                &["the VMM is shutting down and takes no more requests".into()],
            )
        };
        if lock(&self.queue).send((request, answer)).is_err() {
            return gone();
        }
        if let Err(e) = self.wake.write(1) {
            log::error!("API socket: cannot wake the VMM thread: {e}");
        }
        reply.recv().unwrap_or_else(|_| gone())
    }

    /// The answer `ask` gave is written (or could not be).
    pub fn answered(&self) {
        self.in_flight.finished();
    }
}

/// The VMM thread's end: an eventfd to wait on and the requests behind it.
pub struct ApiEndpoint {
    wake: Arc<EventFd>,
    /// None once the VMM ends: requests that come then are told so.
    queue: Option<mpsc::Receiver<Exchange>>,
    in_flight: Arc<InFlight>,
    /// The socket file vmm created, removed when the VMM ends.
    created: Option<PathBuf>,
}

impl Drop for ApiEndpoint {
    /// Requests still queued are told the VMM is ending; answers being
    /// written get a few seconds to reach their clients.
    fn drop(&mut self) {
        drop(self.queue.take());
        let deadline = Instant::now() + LAST_ANSWERS;
        let mut count = lock(&self.in_flight.count);
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("{} API answers not written as the VMM ends", *count);
                break;
            }
            count = match self.in_flight.done.wait_timeout(count, left) {
                Ok((count, _)) => count,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(count);
        if let Some(path) = &self.created {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("Cannot remove the API socket {}: {e}", path.display());
            }
        }
    }
}

impl ApiEndpoint {
    /// The requests that came since the last call, each with where its
    /// answer goes.
    pub fn take(&self) -> Vec<(ApiRequest, Answer)> {
        let _ = self.wake.read();
        self.queue
            .iter()
            .flat_map(mpsc::Receiver::try_iter)
            .map(|(request, to)| (request, Answer(to)))
            .collect()
    }
}

impl AsRawFd for ApiEndpoint {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// Where one request's answer goes; a client that left is no error.
pub struct Answer(mpsc::SyncSender<ApiReply>);

impl Answer {
    pub fn send(self, reply: ApiReply) {
        let _ = self.0.send(reply);
    }
}

/// Opens the socket and starts serving it. Until the VMM thread takes
/// requests from the endpoint, clients wait for their answers.
pub fn start(socket: &PathOrFd) -> Result<ApiEndpoint, SocketError> {
    let listener = socket::listen(socket)?;
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(SocketError::EventFd)?);
    let (queue, requests) = mpsc::channel();
    let in_flight = Arc::new(InFlight::default());
    let handle = Requests {
        queue: Arc::new(Mutex::new(queue)),
        wake: wake.clone(),
        in_flight: in_flight.clone(),
    };
    std::thread::Builder::new()
        .name("api-accept".into())
        .spawn(move || http::serve(listener, handle))
        .map_err(SocketError::Thread)?;
    let created = match socket {
        PathOrFd::Path(path) => Some(path.clone()),
        PathOrFd::Fd(_) => None,
    };
    Ok(ApiEndpoint {
        wake,
        queue: Some(requests),
        in_flight,
        created,
    })
}
