//! The thread that guards one connection to a backend. It does two jobs
//! that both come down to watching the socket:
//!
//! - A deadline on every request. The vhost crate retries a socket read
//!   that timed out (EAGAIN is its `SocketRetry`), so SO_RCVTIMEO cannot
//!   stop a hung backend from blocking a vCPU forever. When a request
//!   outlives its deadline this thread shuts the socket down; the blocked
//!   read then sees end-of-file and the request fails.
//! - Noticing the backend hang up between requests (it crashed or closed
//!   the connection while the guest was only using the rings). Nothing in
//!   the VMM would read the socket until the guest next touches the device,
//!   so this thread tells the transport at once through a `FailureSignal`.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::util::lock;
use crate::virtio::FailureSignal;

/// How often a failure signal that found the transport busy is retried.
const SIGNAL_RETRY: Duration = Duration::from_millis(1);

struct State {
    deadline: Option<Instant>,
    /// The current request's deadline passed and the socket was shut down.
    fired: bool,
    /// The socket hung up or failed; it will not carry a request again.
    lost: bool,
    /// Where to report `lost`, and whether that was done.
    signal: Option<FailureSignal>,
    signalled: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread when a deadline is armed or it must stop.
    wake: EventFd,
    socket: UnixStream,
}

/// Owns its thread: dropping the watchdog stops and joins it.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Watches `socket` (a clone of the connection's socket).
    pub fn new(name: &str, socket: UnixStream) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                deadline: None,
                fired: false,
                lost: false,
                signal: None,
                signalled: false,
                stop: false,
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            socket,
        });
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
            let shared = shared.clone();
            move || watch(&shared)
        })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs `request` with a deadline; the bool says whether the deadline
    /// passed and the socket was shut down.
    pub fn run<T>(&self, timeout: Duration, request: impl FnOnce() -> T) -> (T, bool) {
        {
            let mut state = lock(&self.shared.state);
            state.deadline = Some(Instant::now() + timeout);
            state.fired = false;
        }
        self.wake();
        let result = request();
        let mut state = lock(&self.shared.state);
        state.deadline = None;
        (result, std::mem::take(&mut state.fired))
    }

    /// `signal` is called, from the watchdog's thread, once the socket
    /// hangs up (at once if it already has).
    pub fn set_signal(&self, signal: FailureSignal) {
        lock(&self.shared.state).signal = Some(signal);
        self.wake();
    }

    /// Whether the socket hung up: nothing sent on it can be answered.
    pub fn lost(&self) -> bool {
        lock(&self.shared.state).lost
    }

    fn wake(&self) {
        if let Err(e) = self.shared.wake.write(1) {
            log::error!("vhost-user watchdog: cannot wake its thread: {e}");
        }
    }
}

/// What the thread waits for next.
enum Wait {
    Stop,
    /// Up to this long (None: for ever), and for a hang-up if `socket`.
    For {
        timeout: Option<Duration>,
        socket: bool,
    },
}

fn next_wait(shared: &Shared) -> Wait {
    let mut state = lock(&shared.state);
    if state.stop {
        return Wait::Stop;
    }
    let timeout = match state.deadline {
        None => None,
        Some(deadline) => {
            let now = Instant::now();
            if now >= deadline {
                if let Err(e) = shared.socket.shutdown(Shutdown::Both) {
                    log::debug!("vhost-user watchdog: shutdown: {e}");
                }
                state.deadline = None;
                state.fired = true;
                None
            } else {
                Some(deadline - now)
            }
        }
    };
    Wait::For {
        timeout,
        socket: !state.lost,
    }
}

/// Waits on the wake eventfd and, if asked, for the socket to hang up.
/// Returns whether it hung up.
fn poll(shared: &Shared, timeout: Option<Duration>, socket: bool) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: shared.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shared.socket.as_raw_fd(),
            // Only the hang-up: replies are the requester's to read.
            events: libc::POLLRDHUP,
            revents: 0,
        },
    ];
    let count: libc::nfds_t = if socket { 2 } else { 1 };
    let timeout_ms = timeout.map_or(-1, |t| {
        // Rounded up, so that the deadline has passed when poll returns.
        i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    // SAFETY: `fds` is a valid array of at least `count` pollfds that lives
    // across the call; the descriptors belong to `shared`.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            log::error!("vhost-user watchdog: poll: {e}");
            // Do not spin on a persistent failure.
            std::thread::sleep(SIGNAL_RETRY);
        }
        return false;
    }
    if fds[0].revents & libc::POLLIN != 0 {
        // Only the wake-up matters, not how many.
        let _ = shared.wake.read();
    }
    socket && fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn watch(shared: &Shared) {
    loop {
        let (timeout, socket) = match next_wait(shared) {
            Wait::Stop => return,
            Wait::For { timeout, socket } => (timeout, socket),
        };
        if poll(shared, timeout, socket) {
            log::debug!("vhost-user watchdog: the backend hung up");
            lock(&shared.state).lost = true;
        }
        let pending = {
            let state = lock(&shared.state);
            match &state.signal {
                Some(signal) if state.lost && !state.signalled => Some(signal.clone()),
                _ => None,
            }
        };
        if let Some(signal) = pending {
            // The transport may be busy with a guest access (possibly one
            // that is about to drop this watchdog and join this thread), so
            // never block on it: retry until it takes the signal or we are
            // told to stop.
            while !signal() {
                if lock(&shared.state).stop {
                    return;
                }
                std::thread::sleep(SIGNAL_RETRY);
            }
            lock(&shared.state).signalled = true;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.wake();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("vhost-user watchdog thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_request_past_its_deadline_is_cut_off() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let dog = Watchdog::new("test-watchdog", ours.try_clone().unwrap()).unwrap();
        let start = Instant::now();
        let ((n, _), fired) = dog.run(Duration::from_millis(100), || {
            let mut buf = [0u8; 8];
            // The peer never writes: without the watchdog this blocks forever.
            let n = (&ours).read(&mut buf).unwrap();
            (n, buf)
        });
        assert_eq!(n, 0, "end-of-file after shutdown");
        assert!(fired);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_request_in_time_is_left_alone() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let dog = Watchdog::new("test-watchdog", ours.try_clone().unwrap()).unwrap();
        for _ in 0..3 {
            let (_, fired) = dog.run(Duration::from_millis(200), || {
                std::io::Write::write_all(&mut &peer, b"x").unwrap();
                (&ours).read_exact(&mut [0u8; 1]).unwrap();
            });
            assert!(!fired);
        }
        // The socket still works after the deadlines passed unarmed.
        std::thread::sleep(Duration::from_millis(300));
        std::io::Write::write_all(&mut &peer, b"y").unwrap();
        let mut b = [0u8; 1];
        (&ours).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"y");
        drop(dog); // joins its thread
    }

    fn counting_signal(answer: bool) -> (FailureSignal, Arc<std::sync::atomic::AtomicU32>) {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let signal: FailureSignal = Arc::new({
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                answer
            }
        });
        (signal, calls)
    }

    fn wait_for(what: impl Fn() -> bool) {
        let start = Instant::now();
        while !what() {
            assert!(start.elapsed() < Duration::from_secs(5), "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_hang_up_between_requests_is_signalled_once() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (signal, calls) = counting_signal(true);
        let dog = Watchdog::new("test-watchdog", ours.try_clone().unwrap()).unwrap();
        dog.set_signal(signal);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!dog.lost());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(peer);
        wait_for(|| dog.lost());
        wait_for(|| calls.load(std::sync::atomic::Ordering::SeqCst) == 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn replies_are_not_mistaken_for_a_hang_up() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (signal, calls) = counting_signal(true);
        let dog = Watchdog::new("test-watchdog", ours.try_clone().unwrap()).unwrap();
        dog.set_signal(signal);
        // Data waiting on the socket, unread for a while.
        std::io::Write::write_all(&mut &peer, b"reply").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!dog.lost());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_busy_transport_is_retried_until_the_watchdog_stops() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (signal, calls) = counting_signal(false);
        let dog = Watchdog::new("test-watchdog", ours.try_clone().unwrap()).unwrap();
        dog.set_signal(signal);
        drop(peer);
        wait_for(|| calls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
        // Dropping joins the thread: it must leave its retry loop.
        drop(dog);
        let after = calls.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), after);
    }

    #[test]
    fn a_hang_up_before_the_signal_is_set_is_still_signalled() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (signal, calls) = counting_signal(true);
        let dog = Watchdog::new("test-watchdog", ours.try_clone().unwrap()).unwrap();
        drop(peer);
        wait_for(|| dog.lost());
        dog.set_signal(signal);
        wait_for(|| calls.load(std::sync::atomic::Ordering::SeqCst) == 1);
    }

    #[test]
    fn a_cut_off_request_also_counts_as_lost() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let (signal, calls) = counting_signal(true);
        let dog = Watchdog::new("test-watchdog", ours.try_clone().unwrap()).unwrap();
        dog.set_signal(signal);
        let (_, fired) = dog.run(Duration::from_millis(30), || {
            let _ = (&ours).read(&mut [0u8; 1]);
        });
        assert!(fired);
        wait_for(|| dog.lost());
        wait_for(|| calls.load(std::sync::atomic::Ordering::SeqCst) == 1);
    }
}
