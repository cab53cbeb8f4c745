//! The worker that guards one connection to a backend. It does two jobs
//! that both come down to watching the socket:
//!
//! - A deadline on every request. The vhost crate retries a socket read
//!   that timed out (EAGAIN is its `SocketRetry`), so SO_RCVTIMEO cannot
//!   stop a hung backend from blocking a vCPU forever. When a request
//!   outlives its deadline the worker shuts the socket down; the blocked
//!   read then sees end-of-file and the request fails.
//! - Noticing the backend hang up between requests (it crashed or closed
//!   the connection while the guest was only using the rings). Nothing in
//!   the VMM would read the socket until the guest next touches the device,
//!   so the worker sets DEVICE_NEEDS_RESET through the device's interrupt
//!   handle at once.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::util::lock;
use crate::virtio::worker::{EventHandler, Source, Worker};
use crate::virtio::VirtioInterrupt;

const WAKE: u64 = 0;
const SOCKET: u64 = 1;

struct State {
    deadline: Option<Instant>,
    /// The current request's deadline passed and the socket was shut down.
    fired: bool,
    /// The socket hung up or failed; it will not carry a request again.
    lost: bool,
    /// Where to report `lost`, and whether that was done.
    interrupt: Option<VirtioInterrupt>,
    signalled: bool,
}

struct Shared {
    /// The device's id, for the log.
    id: String,
    state: Mutex<State>,
    /// Wakes the worker when a deadline is armed or an interrupt handle set.
    wake: EventFd,
    socket: UnixStream,
}

/// Dropping the watchdog stops and joins its worker.
pub struct Watchdog {
    shared: Arc<Shared>,
    _worker: Worker,
}

impl Watchdog {
    /// Watches `socket` (a clone of the connection's socket) on a worker
    /// named after device `id`.
    pub fn new(id: &str, socket: UnixStream) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            id: id.to_owned(),
            state: Mutex::new(State {
                deadline: None,
                fired: false,
                lost: false,
                interrupt: None,
                signalled: false,
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            socket,
        });
        let sources = [
            Source {
                fd: shared.wake.as_raw_fd(),
                token: WAKE,
                events: EventSet::IN,
            },
            // Only the hang-up, and only once (edge-triggered): replies are
            // the requester's to read.
            Source {
                fd: shared.socket.as_raw_fd(),
                token: SOCKET,
                events: EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
            },
        ];
        let worker = Worker::spawn(&format!("vu-watch-{id}"), &sources, Guard(shared.clone()))?;
        Ok(Watchdog {
            shared,
            _worker: worker,
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

    /// Once the socket hangs up (at once if it already has), `interrupt`
    /// is told the device needs a reset.
    pub fn set_interrupt(&self, interrupt: VirtioInterrupt) {
        lock(&self.shared.state).interrupt = Some(interrupt);
        self.wake();
    }

    /// Whether the socket hung up: nothing sent on it can be answered.
    pub fn lost(&self) -> bool {
        lock(&self.shared.state).lost
    }

    fn wake(&self) {
        if let Err(e) = self.shared.wake.write(1) {
            log::error!(
                "{}: cannot wake the vhost-user watchdog: {e}",
                self.shared.id
            );
        }
    }
}

/// The worker's side.
struct Guard(Arc<Shared>);

impl EventHandler for Guard {
    fn ready(&mut self, token: u64, events: EventSet) {
        match token {
            // Only the wake-up matters, not how many.
            WAKE => drop(self.0.wake.read()),
            SOCKET => {
                let gone = EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
                if events.intersects(gone) {
                    log::debug!("{}: the vhost-user backend hung up", self.0.id);
                    let mut state = lock(&self.0.state);
                    if !state.lost {
                        state.lost = true;
                        crate::events::emit(
                            "vhost-user",
                            "disconnected",
                            &[("id", self.0.id.as_str())],
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Cuts off a request past its deadline, reports a lost socket, and
    /// sleeps until the next deadline.
    fn before_wait(&mut self) -> Option<Duration> {
        let shared = &self.0;
        let mut state = lock(&shared.state);
        if state.lost && !state.signalled {
            if let Some(interrupt) = state.interrupt.clone() {
                state.signalled = true;
                if interrupt.set_needs_reset() {
                    log::error!("{}: the backend went away; device needs reset", shared.id);
                }
            }
        }
        let deadline = state.deadline?;
        let now = Instant::now();
        if now < deadline {
            return Some(deadline - now);
        }
        if let Err(e) = shared.socket.shutdown(Shutdown::Both) {
            log::debug!("{}: vhost-user watchdog: shutdown: {e}", shared.id);
        }
        state.deadline = None;
        state.fired = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::fake::FakeMsiGroup;
    use std::io::Read;

    fn interrupt() -> VirtioInterrupt {
        VirtioInterrupt::new(Arc::new(FakeMsiGroup::new(1)))
    }

    fn wait_for(what: impl Fn() -> bool) {
        let start = Instant::now();
        while !what() {
            assert!(start.elapsed() < Duration::from_secs(30), "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_request_past_its_deadline_is_cut_off() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let dog = Watchdog::new("test", ours.try_clone().unwrap()).unwrap();
        let start = Instant::now();
        let ((n, _), fired) = dog.run(Duration::from_millis(100), || {
            let mut buf = [0u8; 8];
            // The peer never writes: without the watchdog this blocks forever.
            let n = (&ours).read(&mut buf).unwrap();
            (n, buf)
        });
        assert_eq!(n, 0, "end-of-file after shutdown");
        assert!(fired);
        assert!(start.elapsed() < Duration::from_secs(30), "hung");
    }

    #[test]
    fn a_request_in_time_is_left_alone() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let dog = Watchdog::new("test", ours.try_clone().unwrap()).unwrap();
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

    #[test]
    fn a_hang_up_between_requests_is_signalled_once() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let irq = interrupt();
        let dog = Watchdog::new("test", ours.try_clone().unwrap()).unwrap();
        dog.set_interrupt(irq.clone());
        std::thread::sleep(Duration::from_millis(20));
        assert!(!dog.lost());
        assert!(!irq.needs_reset());
        drop(peer);
        wait_for(|| dog.lost());
        wait_for(|| irq.needs_reset());
        // The driver resets the device; this connection says nothing more.
        irq.reset();
        dog.wake();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!irq.needs_reset());
    }

    #[test]
    fn replies_are_not_mistaken_for_a_hang_up() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let irq = interrupt();
        let dog = Watchdog::new("test", ours.try_clone().unwrap()).unwrap();
        dog.set_interrupt(irq.clone());
        // Data waiting on the socket, unread for a while.
        std::io::Write::write_all(&mut &peer, b"reply").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!dog.lost());
        assert!(!irq.needs_reset());
    }

    #[test]
    fn a_hang_up_before_the_interrupt_is_set_is_still_signalled() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let irq = interrupt();
        let dog = Watchdog::new("test", ours.try_clone().unwrap()).unwrap();
        drop(peer);
        wait_for(|| dog.lost());
        dog.set_interrupt(irq.clone());
        wait_for(|| irq.needs_reset());
    }

    #[test]
    fn a_cut_off_request_also_counts_as_lost() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let irq = interrupt();
        let dog = Watchdog::new("test", ours.try_clone().unwrap()).unwrap();
        dog.set_interrupt(irq.clone());
        let (_, fired) = dog.run(Duration::from_millis(30), || {
            let _ = (&ours).read(&mut [0u8; 1]);
        });
        assert!(fired);
        wait_for(|| dog.lost());
        wait_for(|| irq.needs_reset());
    }
}
