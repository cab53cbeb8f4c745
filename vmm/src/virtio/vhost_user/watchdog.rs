//! A deadline on every request to the backend. The vhost crate retries a
//! socket read that timed out (EAGAIN is its `SocketRetry`), so
//! SO_RCVTIMEO cannot stop a hung backend from blocking a vCPU forever.
//! This thread shuts the socket down instead when a request outlives its
//! deadline: the blocked read then sees end-of-file and the request fails.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bus::lock;

struct State {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
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
                stop: false,
            }),
            wake: Condvar::new(),
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
        self.shared.wake.notify_one();
        let result = request();
        let mut state = lock(&self.shared.state);
        state.deadline = None;
        (result, std::mem::take(&mut state.fired))
    }
}

fn wait<'a>(
    cond: &Condvar,
    guard: MutexGuard<'a, State>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, State> {
    match timeout {
        Some(t) => match cond.wait_timeout(guard, t) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        },
        None => cond.wait(guard).unwrap_or_else(|p| p.into_inner()),
    }
}

fn watch(shared: &Shared) {
    let mut state = lock(&shared.state);
    loop {
        if state.stop {
            return;
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
                    continue;
                }
                Some(deadline - now)
            }
        };
        state = wait(&shared.wake, state, timeout);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
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
}
